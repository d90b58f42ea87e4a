#!/bin/bash
# Two builds of sealgate against each other, alternating run by run, on the
# standard workload (docs/benchmarks.md: 100 devices, 128 B, JSON, AES, QoS 1,
# one subscriber on clean/#, 10 s, sealed mode), gateway pinned to core 0 and
# one firmware-sim (B's) to core 1. Prints one JSON line per run, then the
# medians per build and rate.
#
# usage: REPS=5 benches/ab.sh DIR_A DIR_B [RATE ...]
#   DIR_A, DIR_B: target/release directories of the two builds (each with
#   sealgate); RATE as firmware-sim --rate (0 = closed loop, default).
#   SIM_ARGS: more firmware-sim flags, e.g. --persistent-subscriber.
#   SIM_ARGS_A, SIM_ARGS_B: per side, instead of SIM_ARGS; with one build
#   twice this compares firmware-sim settings, e.g. the two sealers:
#     SIM_ARGS_A="--impl rust" SIM_ARGS_B="--impl c" \
#       CONFIG='[limits]\ndevice_rate = 0.0\n' benches/ab.sh target/release target/release
#   CONFIG: the gateway's configuration file, e.g. '[limits]\ndevice_rate = 0.0\n'
#   (the default limit, 1,000 msgs/s per device, is near what 100 devices
#   reach in a closed loop, and a 3.1.1 device gets no PUBACK over it).
set -euo pipefail
A=$(cd "$1" && pwd); B=$(cd "$2" && pwd); shift 2
RATES=${*:-0}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
export SEALGATE_ADMIN_TOKEN=bench-token-0123456789 SEALGATE_ADMIN_URL=http://127.0.0.1:18083

run() { # BIN RATE SIM_ARGS -> JSON line
    rm -rf "$W/data"; printf '%b' "${CONFIG:-}" > "$W/c.toml"
    SEALGATE_CONFIG=$W/c.toml SEALGATE_DATA_DIR=$W/data SEALGATE_MQTT_LISTEN=127.0.0.1:18833 \
        SEALGATE_HTTP_LISTEN=127.0.0.1:18083 SEALGATE_USERS=dash:pw RUST_LOG=warn \
        taskset -c 0 "$1/sealgate" > "$W/server.log" 2>&1 &
    local server=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18083/healthz > /dev/null && break; sleep 0.1; done
    rm -f "$W/fleet.json"
    "$1/sealgate" device add-bulk --prefix sim- --count 100 --out "$W/fleet.json" > /dev/null
    local out
    out=$(taskset -c 1 "$B/firmware-sim" --mqtt 127.0.0.1:18833 --devices-file "$W/fleet.json" \
        --subscriber dash:pw --rate "$2" --duration 10s --encrypt --qos 1 --payload-bytes 128 \
        --json $3 2> /dev/null | tail -1)
    local hwm
    hwm=$(grep VmHWM /proc/$server/status | awk '{print $2}')
    kill $server; wait $server 2> /dev/null || true
    echo "$out" | python3 -c "import json,sys; r=json.load(sys.stdin); l=r.get('latency_ms') or {}; print(json.dumps({'delivered_per_sec':r['delivered_per_sec'],'lost':r['lost'],'duplicates':r['duplicates'],'p50':l.get('p50'),'p99':l.get('p99'),'peak_rss_kb':$hwm}))"
}

for rate in $RATES; do
    for rep in $(seq "${REPS:-5}"); do
        for side in A B; do
            bin=$A; args=${SIM_ARGS_A:-${SIM_ARGS:-}}
            [ $side = B ] && bin=$B && args=${SIM_ARGS_B:-${SIM_ARGS:-}}
            echo "{\"build\":\"$side\",\"rate\":$rate,\"rep\":$rep,\"result\":$(run "$bin" "$rate" "$args")}" | tee -a "$W/all.jsonl"
        done
    done
done
python3 - "$W/all.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for rate in sorted({r["rate"] for r in rows}):
    med = {}
    for side in "AB":
        rs = [r["result"] for r in rows if r["rate"] == rate and r["build"] == side]
        m = lambda k: statistics.median(x[k] for x in rs if x[k] is not None)
        med[side] = {k: m(k) for k in ("delivered_per_sec", "p50", "p99", "peak_rss_kb")}
        med[side]["lost"] = sum(x["lost"] for x in rs)
        print(f"rate={rate} build={side} runs={len(rs)} median {med[side]}")
    print(f"rate={rate} B/A delivered {med['B']['delivered_per_sec'] / med['A']['delivered_per_sec']:.3f}"
          f" p99 {med['B']['p99'] / med['A']['p99']:.3f}")
EOF
