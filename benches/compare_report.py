"""The report side of benches/compare.py: medians, ratios, the table and the
chart descriptions `firmware-sim plot` draws. Standard library only."""
import statistics

REFERENCE = "mosquitto"
# Row order of the table.
ORDER = ["sealgate-json-aes", "sealgate-json", "sealgate-binary-aes", "sealgate-binary",
         "passthrough", "mosquitto", "mosquitto-python"]


METRICS = ["delivered_per_sec", "p50_ms", "p99_ms", "cpu_us_per_msg", "peak_rss_kb"]


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def summarise(runs, keys):
    """Medians per cell (the fields in `keys` name a cell), losses summed."""
    cells = {}
    for r in runs:
        cells.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for cell, rs in cells.items():
        s = dict(zip(keys, cell))
        s["runs"] = len(rs)
        for m in METRICS + [k for k in rs[0] if k.endswith(("_ms", "_kb", "_b", "_secs"))
                            and k not in METRICS]:
            s[m] = median_of(rs, m)
        s["lost"] = sum(r.get("lost", 0) for r in rs)
        s["duplicates"] = sum(r.get("duplicates", 0) for r in rs)
        out.append(s)
    return out


def add_ratios(summary, by, ref=REFERENCE):
    """Each figure over the reference system's in the same cell."""
    refs = {tuple(s[k] for k in by): s for s in summary if s["system"] == ref}
    for s in summary:
        r = refs.get(tuple(s[k] for k in by))
        s["ratio"] = {m: (s[m] / r[m] if r and s.get(m) is not None and r.get(m) else None)
                      for m in METRICS}


# ---------------------------------------------------------------- the table

def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def ratio(v):
    return "" if v is None else f" ({v:.2f}x)"


def print_table(results):
    if results["kind"] == "compare":
        rows = sorted(results["summary"],
                      key=lambda s: (s["rate"] == 0, s["rate"], ORDER.index(s["system"])
                                     if s["system"] in ORDER else 99))
        head = ["offered msgs/s", "system", "delivered msgs/s", "p50 ms", "p99 ms",
                "CPU us/msg", "peak RSS MiB", "lost", "runs"]
        lines = []
        for s in rows:
            rt = s.get("ratio", {})
            lines.append([
                "closed loop" if s["rate"] == 0 else fmt(s["rate"]), s["system"],
                fmt(s["delivered_per_sec"]) + ratio(rt.get("delivered_per_sec")),
                fmt(s["p50_ms"], 2) + ratio(rt.get("p50_ms")),
                fmt(s["p99_ms"], 2) + ratio(rt.get("p99_ms")),
                fmt(s["cpu_us_per_msg"], 1) + ratio(rt.get("cpu_us_per_msg")),
                fmt(s["peak_rss_kb"] and s["peak_rss_kb"] / 1024, 1) + ratio(rt.get("peak_rss_kb")),
                fmt(s["lost"]), str(s["runs"])])
        print_rows(head, lines)
        print(f"\nMedians of the runs per cell; (Nx) = this figure / {REFERENCE}'s in the "
              f"same row group. Lost: summed over the runs.")
        return
    c = results["curves"]
    for name, x, unit in (("devices", "devices", ""), ("payload", "payload_bytes", " B")):
        if c.get(name):
            print(f"\n{name} (offered {results['settings']['curve_rate']} msgs/s):")
            print_rows([x, "system", "delivered msgs/s", "p50 ms", "p99 ms", "CPU us/msg",
                        "peak RSS MiB", "lost"],
                       [[fmt(s[x]) + unit, s["system"], fmt(s["delivered_per_sec"]),
                         fmt(s["p50_ms"], 2), fmt(s["p99_ms"], 2), fmt(s["cpu_us_per_msg"], 1),
                         fmt(s["peak_rss_kb"] and s["peak_rss_kb"] / 1024, 1), fmt(s["lost"])]
                        for s in sorted(c[name], key=lambda s: (s["system"], s[x]))])
    if c.get("idle"):
        print("\nidle connections:")
        print_rows(["connections", "system", "RSS before MiB", "RSS with them MiB",
                    "bytes per connection"],
                   [[fmt(s["connections"]), s["system"], fmt(s["rss_before_kb"] / 1024, 1),
                     fmt(s["rss_after_kb"] / 1024, 1), fmt(s["bytes_per_connection"])]
                    for s in c["idle"]])
    if c.get("registry"):
        print("\nregistry:")
        print_rows(["devices", "startup ms", "RSS at ready MiB", "API lookup p50 ms",
                    "MQTT p50 ms", "MQTT p99 ms", "CPU us/msg"],
                   [[fmt(s["registry_devices"]), fmt(s["startup_ms"]),
                     fmt(s["rss_ready_kb"] and s["rss_ready_kb"] / 1024, 1), fmt(s["lookup_p50_ms"], 2),
                     fmt(s["p50_ms"], 2), fmt(s["p99_ms"], 2), fmt(s["cpu_us_per_msg"], 1)]
                    for s in sorted(c["registry"], key=lambda s: s["registry_devices"])])


def print_rows(head, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))


# ---------------------------------------------------------------- charts

def series(summary, key_x, key_y, scale=1.0, where=lambda s: True):
    out = {}
    for s in sorted(summary, key=lambda s: s[key_x]):
        if where(s) and s.get(key_y) is not None:
            out.setdefault(s["system"], []).append([s[key_x], s[key_y] * scale])
    return [{"name": k, "points": v} for k, v in out.items()]


def bars(summary, systems, key_y, group, scale=1.0):
    """Categories = systems; one series per value of `group`."""
    out = {}
    for s in summary:
        if s["system"] in systems and s.get(key_y) is not None:
            name = group(s)
            out.setdefault(name, []).append([systems.index(s["system"]), s[key_y] * scale])
    return [{"name": k, "points": v} for k, v in out.items()]


def compare_plots(summary, systems):
    def rate_name(s):
        return "closed loop" if s["rate"] == 0 else f"{s['rate']:,} msgs/s"
    fixed = lambda s: s["rate"] > 0
    plots = []
    for key, label in (("p50_ms", "p50 latency, ms"), ("p99_ms", "p99 latency, ms")):
        plots.append({"file": f"compare-{key[:3]}.png", "title": f"{label} at fixed offered loads",
                      "x_label": "offered msgs/s", "y_label": label, "x_log": True, "y_log": True,
                      "series": series(summary, "rate", key, where=fixed)})
    plots.append({"file": "compare-delivered.png", "title": "delivered vs offered",
                  "x_label": "offered msgs/s", "y_label": "delivered msgs/s", "x_log": True,
                  "series": series(summary, "rate", "delivered_per_sec", where=fixed)})
    # CPU per message spans three orders of magnitude (a collapsed baseline
    # spends seconds per delivered message): a log axis over offered load.
    plots.append({"file": "compare-cpu.png", "title": "CPU us per delivered message",
                  "x_label": "offered msgs/s", "y_label": "CPU us per delivered message",
                  "x_log": True, "y_log": True,
                  "series": series(summary, "rate", "cpu_us_per_msg", where=fixed)})
    for key, label, scale, f in (
            ("delivered_per_sec", "delivered msgs/s", 1.0, "compare-throughput.png"),
            ("peak_rss_kb", "peak RSS, MiB", 1 / 1024, "compare-rss.png")):
        plots.append({"file": f, "title": label, "x_label": "system", "y_label": label,
                      "categories": systems, "series": bars(summary, systems, key, rate_name, scale)})
    return plots


def curve_plots(c):
    plots = []
    for name, x, xl in (("devices", "devices", "connected devices"),
                        ("payload", "payload_bytes", "plaintext bytes")):
        if not c.get(name):
            continue
        for key, label, scale, ylog in (("cpu_us_per_msg", "CPU us per message", 1, False),
                                        ("p99_ms", "p99 latency, ms", 1, True),
                                        ("peak_rss_kb", "peak RSS, MiB", 1 / 1024, False)):
            plots.append({"file": f"curve-{name}-{key.split('_')[0]}.png",
                          "title": f"{label} by {xl}", "x_label": xl, "y_label": label,
                          "x_log": True, "y_log": ylog, "series": series(c[name], x, key, scale)})
    if c.get("idle"):
        systems = sorted({s["system"] for s in c["idle"]})
        plots.append({"file": "curve-idle.png", "title": "memory per idle connection",
                      "x_label": "system", "y_label": "bytes per connection",
                      "categories": systems,
                      "series": bars(c["idle"], systems, "bytes_per_connection",
                                     lambda s: f"{s['connections']:,} idle connections")})
    if c.get("registry"):
        for key, label, scale in (("startup_ms", "startup to /readyz, ms", 1),
                                  ("rss_ready_kb", "RSS at ready, MiB", 1 / 1024),
                                  ("lookup_p50_ms", "admin API lookup p50, ms", 1),
                                  ("p50_ms", "MQTT p50 latency, ms", 1),
                                  ("cpu_us_per_msg", "CPU us per message", 1)):
            plots.append({"file": f"curve-registry-{key.split('_')[0]}.png",
                          "title": f"{label} by registry size", "x_label": "registered devices",
                          "y_label": label, "x_log": True,
                          "series": series(c["registry"], "registry_devices", key, scale)})
    return plots
