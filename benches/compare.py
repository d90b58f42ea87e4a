#!/usr/bin/env python3
"""One command against the alternatives (issue 11): sealgate against Mosquitto.

Measures one workload, in one run on one machine, against:
  sealgate-json-aes, sealgate-json, sealgate-binary-aes, sealgate-binary
      sealgate's full pipeline (verify, replay store, republish), QoS 1 in
      and out, JSON or binary envelopes, AES on or off;
  sealgate-json-aes-process-crash
                     sealgate-json-aes with [database] durability =
                     "process-crash": sled's flush only, no fdatasync (not in
                     the default set; for the cost of power-loss durability);
  passthrough        sealgate with [verifier] passthrough = true;
  mosquitto          Mosquitto 2 (Debian), plain passthrough: devices publish
                     sealed/..., the subscriber counts them on sealed/#;
  mosquitto-python   the baseline most teams run: Mosquitto plus
                     benches/baseline_verifier.py (paho-mqtt), which checks the
                     HMAC against an in-memory nonce and republishes on clean/.
Servers run on core 0 (--server-cpu), firmware-sim on core 1 (--load-cpu).
Prints one table (medians; every figure also as a ratio to mosquitto), writes
JSON, and draws PNG charts with `firmware-sim plot`. See docs/benchmarks.md,
"One command against the alternatives".

usage:
  benches/compare.py [--systems a,b] [--rates 1000,10000,40000,60000,0]
                     [--reps 5] [--duration 10s] [--out FILE.json] [--plots-dir DIR]
  benches/compare.py --curves [--curve-rate 10000] [--devices 10,100,1000,10000]
                     [--payloads 64,512,4096] [--idle 10000]
                     [--registry 1000,100000,1000000] [--reps 5] ...
  benches/compare.py --smoke [--curves]   every mode at a tiny scale, 1 rep
  benches/compare.py --table FILE.json    print the table of a results file again

Needs (installed with apt-get when missing): mosquitto, python3-paho-mqtt,
python3-cryptography (the baseline runs on /usr/bin/python3), fonts-dejavu-core
(chart labels). This script itself is standard-library Python 3.
"""
import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
from compare_report import (  # noqa: E402
    add_ratios, compare_plots, curve_plots, median_of, print_table, summarise)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-token-0123456789"
# A fixed master key: cached registries and fleet files stay valid across runs.
MASTER = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
SUBSCRIBER = "dash:pw"
SG_MQTT, SG_HTTP, MOSQ_PORT = 18833, 18083, 18853
DEBIAN_PYTHON = "/usr/bin/python3"
CLK_TCK = os.sysconf("SC_CLK_TCK")

SYSTEMS = {
    "sealgate-json-aes": {"server": "sealgate", "format": "json", "aes": True},
    "sealgate-json": {"server": "sealgate", "format": "json", "aes": False},
    "sealgate-binary-aes": {"server": "sealgate", "format": "binary", "aes": True},
    "sealgate-binary": {"server": "sealgate", "format": "binary", "aes": False},
    "sealgate-json-aes-process-crash": {"server": "sealgate", "format": "json", "aes": True,
                                        "config": '[database]\ndurability = "process-crash"\n'},
    "passthrough": {"server": "passthrough", "format": "json", "aes": True},
    "mosquitto": {"server": "mosquitto", "format": "json", "aes": True},
    "mosquitto-python": {"server": "baseline", "format": "json", "aes": True},
}
DEBIAN_PACKAGES = {"mosquitto": "/usr/sbin/mosquitto", "python3-paho-mqtt": None,
                   "python3-cryptography": None, "fonts-dejavu-core":
                   "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def secs(s):
    units = {"ms": 0.001, "s": 1, "m": 60}
    for u in ("ms", "s", "m"):
        if s.endswith(u):
            return float(s[: -len(u)]) * units[u]
    return float(s)


# ---------------------------------------------------------------- processes

class Proc:
    """A process this script started, pinned to one core; stopped by pid."""

    def __init__(self, argv, cpu, env=None, stdout=None, log_path=None):
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.p = subprocess.Popen(["taskset", "-c", str(cpu)] + argv, env=env,
                                  stdout=stdout or self.log, stderr=self.log)
        self.pid = self.p.pid  # taskset execs the command: same pid

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def wait_port(port, proc, what, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise RuntimeError(f"{what} exited at start (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def port_free(port):
    """A server left from an earlier run would answer in place of the new one."""
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return
    raise RuntimeError(f"127.0.0.1:{port} is in use: stop what listens there first")


def http_ok(url, timeout=1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    """The system under test: one or more processes on the server core."""

    def __init__(self, procs, port, extra=None):
        self.procs, self.port, self.extra = procs, port, extra or {}

    def pids(self):
        return [p.pid for p in self.procs]

    def kb(self, field):
        vals = [status_kb(pid, field) for pid in self.pids()]
        return None if None in vals else sum(vals)

    def stop(self):
        for p in reversed(self.procs):
            p.stop()


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="sealgate-compare-")
        self.cache = os.path.abspath(args.cache)
        self.fleets = {}
        self.registry_creds = {}
        self.live = []
        self.failures = []
        os.makedirs(self.cache, exist_ok=True)
        self.sealgate = os.path.join(args.bin, "sealgate")
        self.sim = os.path.join(args.bin, "firmware-sim")
        for exe in (self.sealgate, self.sim):
            if not os.access(exe, os.X_OK):
                sys.exit(f"no {exe}: build it (without --no-build) or pass --bin")
        self.build_id = self._build_id()

    def _build_id(self):
        h = hashlib.sha256()
        with open(self.sealgate, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:12]

    def stop_all(self):
        for s in list(self.live):
            self.stop(s)

    def attempt(self, what, fn, *args, **kw):
        """One run; a failure is logged and recorded, and the session goes
        on (an hour's measurements are not lost to one bad run)."""
        try:
            return fn(*args, **kw)
        except (RuntimeError, OSError, ValueError, KeyError,
                subprocess.CalledProcessError) as e:
            log(f"  FAILED: {what}: {e}")
            self.failures.append({"run": what, "error": str(e)})
            self.stop_all()
            return None

    def close(self):
        self.stop_all()
        if self.failures:
            log(f"logs of the failed runs kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # ------------------------------------------------------------ sealgate
    def sealgate_env(self, data, passthrough, extra=""):
        conf = os.path.join(self.work, "sealgate.toml")
        with open(conf, "w") as f:
            # No per-device rate limit (a 3.1.1 device over it gets no PUBACK
            # and stalls, see docs/benchmarks.md); room for 10,000 devices.
            f.write("[limits]\ndevice_rate = 0.0\nmax_connections = 100000\n")
            if passthrough:
                f.write("[verifier]\npassthrough = true\n")
            f.write(extra)
        return dict(os.environ, SEALGATE_CONFIG=conf, SEALGATE_DATA_DIR=data,
                    SEALGATE_MQTT_LISTEN=f"127.0.0.1:{SG_MQTT}",
                    SEALGATE_HTTP_LISTEN=f"127.0.0.1:{SG_HTTP}",
                    SEALGATE_USERS=SUBSCRIBER, SEALGATE_ADMIN_TOKEN=TOKEN,
                    SEALGATE_MASTER_KEY=MASTER, RUST_LOG="warn")

    def start_sealgate(self, data, passthrough=False, timeout=600, extra=""):
        """Starts sealgate on `data`; returns (server, seconds to /readyz)."""
        port_free(SG_MQTT)
        port_free(SG_HTTP)
        t0 = time.monotonic()
        p = Proc([self.sealgate], self.args.server_cpu, self.sealgate_env(data, passthrough, extra),
                 log_path=os.path.join(self.work, "sealgate.log"))
        s = Server([p], SG_MQTT)
        self.live.append(s)
        end = t0 + timeout
        while not http_ok(f"http://127.0.0.1:{SG_HTTP}/readyz", 0.5):
            if not p.alive():
                raise RuntimeError(f"sealgate exited at start, see {self.work}/sealgate.log")
            if time.monotonic() > end:
                raise RuntimeError(f"sealgate not ready within {timeout} s")
            time.sleep(0.005)
        return s, time.monotonic() - t0

    def stop(self, server):
        server.stop()
        if server in self.live:
            self.live.remove(server)

    def fleet(self, n):
        """A registered fleet of n devices: (template data dir, credential
        files). Made once per build and size, kept in --cache: registering a
        million devices takes minutes."""
        if n in self.fleets:
            return self.fleets[n]
        d = os.path.join(self.cache, f"fleet-{n}-{self.build_id}")
        done = os.path.join(d, "complete")
        chunk = 100_000  # the most one add-bulk call registers
        files = [os.path.join(d, f"fleet-{i}.json") for i in range((n + chunk - 1) // chunk)]
        if not os.path.exists(done):
            # This size registered by other builds: stale, and up to 1 GB each.
            for old in os.listdir(self.cache):
                if old.startswith(f"fleet-{n}-"):
                    shutil.rmtree(os.path.join(self.cache, old), ignore_errors=True)
            os.makedirs(d)
            log(f"registering {n} devices (once per build; cached in {d})")
            t0 = time.monotonic()
            s, _ = self.start_sealgate(os.path.join(d, "data"))
            env = dict(os.environ, SEALGATE_ADMIN_URL=f"http://127.0.0.1:{SG_HTTP}",
                       SEALGATE_ADMIN_TOKEN=TOKEN)
            for i, path in enumerate(files):
                count = min(chunk, n - i * chunk)
                prefix = "sim-" if len(files) == 1 else f"r{i}-"
                subprocess.run([self.sealgate, "device", "add-bulk", "--prefix", prefix,
                                "--count", str(count), "--out", path], env=env, check=True,
                               stdout=subprocess.DEVNULL)
            self.stop(s)
            log(f"registered {n} devices in {time.monotonic() - t0:.1f} s")
            open(done, "w").close()
        self.fleets[n] = (os.path.join(d, "data"), files)
        return self.fleets[n]

    def fresh_data(self, n):
        """A copy of the n-device template: a registry, an empty replay store."""
        template, _ = self.fleet(n)
        data = os.path.join(self.work, "data")
        shutil.rmtree(data, ignore_errors=True)
        shutil.copytree(template, data)
        return data

    # ------------------------------------------------------------ mosquitto
    def start_mosquitto(self):
        conf = os.path.join(self.work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {MOSQ_PORT} 127.0.0.1\n"
                    "allow_anonymous true\npersistence false\n"
                    # Nagle off, as firmware-sim and sealgate have it.
                    "set_tcp_nodelay true\n"
                    # The default (1,000) drops a slow subscriber's messages;
                    # a bound this large only counts real loss.
                    "max_queued_messages 1000000\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\n")
        port_free(MOSQ_PORT)
        p = Proc(["/usr/sbin/mosquitto", "-c", conf], self.args.server_cpu,
                 log_path=os.path.join(self.work, "mosquitto.log"))
        s = Server([p], MOSQ_PORT)
        self.live.append(s)
        wait_port(MOSQ_PORT, p, "mosquitto")
        return s

    def start_baseline(self, fleet_file):
        s = self.start_mosquitto()
        py = Proc([DEBIAN_PYTHON, os.path.join(REPO, "benches", "baseline_verifier.py"),
                   "--fleet", fleet_file, "--port", str(MOSQ_PORT)], self.args.server_cpu,
                  stdout=subprocess.PIPE, log_path=os.path.join(self.work, "baseline.log"))
        s.procs.append(py)
        line = py.p.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError(f"baseline verifier did not start ({line!r}), "
                               f"see {self.work}/baseline.log")
        return s

    def start(self, system, n):
        """Starts `system` for an n-device fleet; returns (server, fleet file)."""
        kind = SYSTEMS[system]["server"]
        _, files = self.fleet(n)
        if kind in ("sealgate", "passthrough"):
            s, _ = self.start_sealgate(self.fresh_data(n), kind == "passthrough",
                                       extra=SYSTEMS[system].get("config", ""))
        elif kind == "mosquitto":
            s = self.start_mosquitto()
        else:
            s = self.start_baseline(files[0])
        return s, files[0]

    def stop_collect(self, server):
        """Peak RSS (VmHWM, summed) before stopping, and what the baseline
        verifier counted."""
        hwm = server.kb("VmHWM")
        extra = {}
        if len(server.procs) > 1:  # the baseline: its counts come on SIGTERM
            py = server.procs[1]
            py.p.send_signal(signal.SIGTERM)
            try:
                out, _ = py.p.communicate(timeout=15)
                extra = json.loads(out.decode().strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                extra = {"error": "no counts from the baseline verifier"}
        self.stop(server)
        return hwm, extra

    # ------------------------------------------------------------ load
    def load(self, server, system, fleet_file, rate, payload=128, duration=None):
        cfg = SYSTEMS[system]
        argv = [self.sim, "--mqtt", f"127.0.0.1:{server.port}", "--devices-file", fleet_file,
                "--subscriber", SUBSCRIBER, "--rate", str(rate),
                "--duration", f"{int((duration or self.args.duration) * 1000)}ms", "--qos", "1",
                "--payload-bytes", str(payload), "--format", cfg["format"],
                "--json", "--no-progress"]
        if cfg["aes"]:
            argv.append("--encrypt")
        if cfg["server"] == "mosquitto":
            argv += ["--clean-prefix", "sealed"]  # no republish: count on sealed/#
        for pid in server.pids():
            argv += ["--cpu-pid", str(pid)]
        with open(os.path.join(self.work, "firmware-sim.log"), "ab") as errlog:
            out = subprocess.run(["taskset", "-c", str(self.args.load_cpu)] + argv,
                                 stdout=subprocess.PIPE, stderr=errlog)
        if out.returncode != 0:
            raise RuntimeError(f"firmware-sim failed, see {self.work}/firmware-sim.log")
        return json.loads(out.stdout.decode().strip().splitlines()[-1])

    def measure(self, system, rate, n=100, payload=128, duration=None):
        server, fleet_file = self.start(system, n)
        try:
            r = self.load(server, system, fleet_file, rate, payload, duration)
        finally:
            hwm, extra = self.stop_collect(server)
        return figures(r, hwm, extra)


def cpu_secs(watched):
    """(seconds used, from ticks, from live threads) of the watched processes.
    The live threads' nanoseconds are precise; the ticks (10 ms each) also
    hold threads that ended inside the window. The precise figure is used
    unless the ticks show clearly more, i.e. ended threads did real work."""
    ticks = [w.get("cpu_ticks") for w in watched]
    ns = [w.get("cpu_ns") for w in watched]
    by_ticks = None if not ticks or None in ticks else sum(ticks) / CLK_TCK
    by_ns = None if not ns or None in ns else sum(ns) / 1e9
    if by_ns is None or (by_ticks is not None
                         and by_ticks > by_ns * 1.1 + 2 * len(ticks) / CLK_TCK):
        return by_ticks, by_ticks, by_ns
    return by_ns, by_ticks, by_ns


def figures(r, hwm_kb, extra):
    """One run's figures from firmware-sim's report."""
    lat = r.get("latency_ms") or {}
    cpu, cpu_ticks, cpu_ns = cpu_secs(r.get("watched_cpu", []))
    delivered = r["delivered"]
    window = max(r.get("active_secs", 0.0), r["publish_secs"])
    out = {
        "sent": r["sent"], "acknowledged": r["acknowledged"], "delivered": delivered,
        "lost": r["lost"], "duplicates": r["duplicates"], "rejected": r["rejected_total"],
        "drained": r["drained"], "publish_secs": r["publish_secs"], "window_secs": window,
        "delivered_per_sec": delivered / window if window > 0 else 0.0,
        "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
        "cpu_secs": cpu, "cpu_secs_ticks": cpu_ticks, "cpu_secs_threads": cpu_ns,
        "cpu_us_per_msg": cpu * 1e6 / delivered if cpu is not None and delivered else None,
        "peak_rss_kb": hwm_kb,
    }
    if extra:
        out["verifier"] = extra
    return out


# ---------------------------------------------------------------- modes

def run_compare(b, a):
    systems, rates = a.systems, a.rates
    runs = []
    total = a.reps * len(rates) * len(systems)
    for rep in range(1, a.reps + 1):
        for rate in rates:
            for system in systems:
                what = f"{system} rate={rate} rep={rep}"
                log(f"run {len(runs) + len(b.failures) + 1}/{total}: {what}")
                r = b.attempt(what, b.measure, system, rate)
                if r is None:
                    continue
                r.update(system=system, rate=rate, rep=rep)
                log(f"  delivered {r['delivered_per_sec']:,.0f}/s p50 {r['p50_ms']} "
                    f"p99 {r['p99_ms']} cpu {r['cpu_us_per_msg']} us/msg lost {r['lost']}")
                runs.append(r)
    summary = summarise(runs, ["system", "rate"])
    add_ratios(summary, ["rate"])
    return {"kind": "compare", "runs": runs, "summary": summary,
            "plots": compare_plots(summary, systems)}


def idle_run(b, system, n):
    server, _ = b.start(system, n)
    _, files = b.fleet(n)
    try:
        time.sleep(0.5)
        before = server.kb("VmRSS")
        out = subprocess.Popen(["taskset", "-c", str(b.args.load_cpu), sys.executable,
                                os.path.join(REPO, "benches", "idle_connections.py"),
                                "127.0.0.1", str(server.port), files[0]],
                               stdout=subprocess.PIPE)
        try:
            line = out.stdout.readline().decode()
            if not line.startswith("ready"):
                raise RuntimeError(f"idle_connections.py: {line!r}")
            time.sleep(0.5)
            after = server.kb("VmRSS")
        finally:
            out.kill()
            out.wait()
    finally:
        b.stop_collect(server)
    return {"system": system, "connections": n, "rss_before_kb": before, "rss_after_kb": after,
            "bytes_per_connection": (after - before) * 1024 / n}


def lookup_ms(ids, count):
    """Median and p99 of GET /api/v1/devices/{id} for random ids, one at a
    time (the admin API's rate limit allows a burst of 200)."""
    times = []
    for dev in random.sample(ids, min(count, len(ids))):
        req = urllib.request.Request(f"http://127.0.0.1:{SG_HTTP}/api/v1/devices/{dev}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
        t = time.monotonic()
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        times.append((time.monotonic() - t) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def registry_run(b, n, rate, sample):
    _, files = b.fleet(n)
    # Devices drawn from the whole registry, so lookups are not all hot.
    if n not in b.registry_creds:
        creds = []
        for path in files:
            creds += json.load(open(path))["devices"]
        b.registry_creds[n] = creds
    creds = b.registry_creds[n]
    picked = random.sample(creds, min(sample, len(creds)))
    ids = [c["device_id"] for c in creds]
    sub = os.path.join(b.work, "sample.json")
    with open(sub, "w") as f:
        json.dump({"devices": picked}, f)
    data = b.fresh_data(n)
    server, startup = b.start_sealgate(data)
    try:
        rss_ready = server.kb("VmRSS")
        p50, p99 = lookup_ms(ids, 100)
        r = b.load(server, "sealgate-json-aes", sub, rate)
    finally:
        hwm, _ = b.stop_collect(server)
    out = figures(r, hwm, None)
    out.update(system="sealgate-json-aes", registry_devices=n, startup_ms=startup * 1000,
               rss_ready_kb=rss_ready, lookup_p50_ms=p50, lookup_p99_ms=p99)
    return out


def run_curves(b, a):
    runs = {"devices": [], "payload": [], "idle": [], "registry": []}
    for rep in range(1, a.reps + 1):
        # (curve, its values, the label, the measure() argument, the field
        # the value is recorded as)
        for curve, values, label, arg, field in (
                ("devices", a.devices, "devices", "n", "devices"),
                ("payload", a.payloads, "payload", "payload", "payload_bytes")):
            for v in values:
                for system in a.systems:
                    what = f"{label}={v} {system} rep={rep}"
                    log(what)
                    r = b.attempt(what, b.measure, system, a.curve_rate, **{arg: v})
                    if r is None:
                        continue
                    r.update(system=system, rep=rep, **{field: v})
                    runs[curve].append(r)
        if a.idle:
            for system in a.systems:
                what = f"idle={a.idle} {system} rep={rep}"
                log(what)
                r = b.attempt(what, idle_run, b, system, a.idle)
                if r is None:
                    continue
                r["rep"] = rep
                runs["idle"].append(r)
        for n in a.registry:
            what = f"registry={n} rep={rep}"
            log(what)
            r = b.attempt(what, registry_run, b, n, a.registry_rate, 100)
            if r is None:
                continue
            r["rep"] = rep
            runs["registry"].append(r)
    curves = {
        "devices": summarise(runs["devices"], ["system", "devices"]),
        "payload": summarise(runs["payload"], ["system", "payload_bytes"]),
        "idle": [dict(system=s, connections=a.idle, runs=len(rs),
                      **{k: median_of(rs, k) for k in
                         ("rss_before_kb", "rss_after_kb", "bytes_per_connection")})
                 for s in a.systems
                 for rs in [[r for r in runs["idle"] if r["system"] == s]] if rs],
        "registry": [],
    }
    for n in a.registry:
        rs = [r for r in runs["registry"] if r["registry_devices"] == n]
        s = {"system": "sealgate-json-aes", "registry_devices": n, "runs": len(rs)}
        for k in ("startup_ms", "rss_ready_kb", "lookup_p50_ms", "lookup_p99_ms", "p50_ms",
                  "p99_ms", "cpu_us_per_msg", "peak_rss_kb", "delivered_per_sec"):
            s[k] = median_of(rs, k)
        s["lost"] = sum(r["lost"] for r in rs)
        curves["registry"].append(s)
    return {"kind": "curves", "runs": runs, "curves": curves, "plots": curve_plots(curves)}


# ---------------------------------------------------------------- setup

def raise_fd_limit(a):
    """firmware-sim holds a socket per device and the server one per client;
    children inherit this process's limit."""
    need = 2 * max([100] + a.devices * bool(a.curves) + [a.idle * bool(a.curves)]) + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            log(f"warning: open files limited to {hard}; {need} wanted (ulimit -Hn)")


def ensure_packages(systems):
    need = []
    if any(SYSTEMS[s]["server"] in ("mosquitto", "baseline") for s in systems):
        need.append("mosquitto")
    if any(SYSTEMS[s]["server"] == "baseline" for s in systems):
        need += ["python3-paho-mqtt", "python3-cryptography"]
    need.append("fonts-dejavu-core")
    missing = []
    for pkg in need:
        path = DEBIAN_PACKAGES[pkg]
        if path:
            ok = os.path.exists(path)
        else:
            mod = {"python3-paho-mqtt": "paho.mqtt", "python3-cryptography": "cryptography"}[pkg]
            ok = subprocess.run([DEBIAN_PYTHON, "-c", f"import {mod}"],
                                stderr=subprocess.DEVNULL).returncode == 0
        if not ok:
            missing.append(pkg)
    if missing:
        log(f"installing {' '.join(missing)} with apt-get")
        apt = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
        if subprocess.run(apt).returncode != 0:
            subprocess.run(["apt-get", "update"], check=True)
            subprocess.run(apt, check=True)


def self_test_baseline():
    vectors = os.path.join(REPO, "tests", "vectors", "vectors.json")
    out = subprocess.run([DEBIAN_PYTHON, os.path.join(REPO, "benches", "baseline_verifier.py"),
                          "--self-test", vectors], capture_output=True, text=True)
    log(out.stdout.strip())
    if out.returncode != 0:
        sys.exit("the baseline verifier fails its self-test; no comparison with it")
    return out.stdout.strip()


def host_info():
    def cmd(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": os.uname().release,
            "commit": cmd(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
            "dirty": bool(cmd(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"])),
            "mosquitto": cmd(["dpkg-query", "-W", "-f", "${Version}", "mosquitto"]),
            "paho": cmd(["dpkg-query", "-W", "-f", "${Version}", "python3-paho-mqtt"])}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--systems", help=f"comma-separated, of {', '.join(SYSTEMS)} "
                   "(default: all; with --curves: sealgate-json-aes,mosquitto)")
    p.add_argument("--rates", type=ints, default=[1000, 10000, 40000, 60000, 0],
                   help="offered msgs/s, 0 = closed loop (default 1000,10000,40000,60000,0)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--duration", type=secs, default=10.0, help="publishing per run (10s)")
    p.add_argument("--curves", action="store_true", help="part 2: how cost grows")
    p.add_argument("--curve-rate", type=int, default=10000,
                   help="offered msgs/s of the device and payload curves (10000)")
    p.add_argument("--devices", type=ints, default=[10, 100, 1000, 10000])
    p.add_argument("--payloads", type=ints, default=[64, 512, 4096])
    p.add_argument("--idle", type=int, default=10000, help="idle connections (0 = skip)")
    p.add_argument("--registry", type=ints, default=[1000, 100000, 1000000])
    p.add_argument("--registry-rate", type=int, default=1000,
                   help="offered msgs/s of the 100 devices of a registry run (1000)")
    p.add_argument("--smoke", action="store_true",
                   help="every mode at a tiny scale: 1 rep, 2 s, 500 msgs/s")
    p.add_argument("--out", help="results JSON (default bench-results/KIND-TIME.json)")
    p.add_argument("--plots-dir", help="PNG charts (default: beside --out, FILE without .json)")
    p.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR") or
                                                  os.path.join(REPO, "target"), "release"))
    p.add_argument("--no-build", action="store_true", help="use --bin as it is")
    p.add_argument("--cache", default=os.path.join(REPO, "bench-results", "cache"),
                   help="registered fleets, reused across runs of the same build")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--load-cpu", type=int, default=1)
    p.add_argument("--table", metavar="FILE.json", help="print the table of a results file")
    a = p.parse_args()

    if a.table:
        print_table(json.load(open(a.table)))
        return
    if a.smoke:
        a.reps, a.duration, a.rates = 1, 2.0, [500]
        a.curve_rate, a.registry_rate = 500, 500
        a.devices, a.payloads, a.idle, a.registry = [10, 100], [64, 4096], 200, [1000, 10000]
    default = (["sealgate-json-aes", "mosquitto"] if a.curves
               else [s for s in SYSTEMS if "config" not in SYSTEMS[s]])
    a.systems = a.systems.split(",") if a.systems else default
    for s in a.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}; known: {', '.join(SYSTEMS)}")
    kind = "curves" if a.curves else "compare"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    a.out = a.out or os.path.join(REPO, "bench-results", f"{kind}-{stamp}.json")
    if not a.plots_dir:
        a.plots_dir = a.out[:-5] if a.out.endswith(".json") else a.out + "-plots"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)

    ensure_packages(a.systems)
    raise_fd_limit(a)
    baseline_check = None
    if "mosquitto-python" in a.systems:
        baseline_check = self_test_baseline()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sealgate", "-p", "firmware-sim"],
                       cwd=REPO, check=True)
    b = Bench(a)
    started, load_start = time.time(), os.getloadavg()
    try:
        results = run_curves(b, a) if a.curves else run_compare(b, a)
    finally:
        b.close()
    results.update(
        failures=b.failures, version=1, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        wall_secs=round(time.time() - started, 1), host=dict(host_info(), loadavg_start=load_start,
                                                              loadavg_end=os.getloadavg()),
        baseline_self_test=baseline_check,
        settings={k: getattr(a, k) for k in ("systems", "rates", "reps", "duration", "curve_rate",
                                             "devices", "payloads", "idle", "registry",
                                             "registry_rate", "server_cpu", "load_cpu")}
        | {"clk_tck": CLK_TCK, "workload": "100 devices, 128 B plaintext, QoS 1, "
                                           "one subscriber, unless a curve says otherwise"})
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1)
    print_table(results)
    print(f"\nresults: {a.out}")
    plot = subprocess.run([os.path.join(a.bin, "firmware-sim"), "plot", a.out,
                           "--out-dir", a.plots_dir], capture_output=True, text=True)
    if plot.returncode == 0:
        print(f"charts: {a.plots_dir}/ ({len(plot.stdout.split())} PNG files)")
    else:
        print(f"charts not drawn: {plot.stderr.strip()}", file=sys.stderr)
    if b.failures:
        print(f"\n{len(b.failures)} runs FAILED (left out of the medians):", file=sys.stderr)
        for f in b.failures:
            print(f"  {f['run']}: {f['error']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
