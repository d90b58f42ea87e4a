#!/bin/bash
# CPU per delivered message by thread (tokio workers, verifier, commit,
# checkpoint, router, sled-io ...) at one offered rate, from
# /proc/PID/task/*/stat over the middle of the run: the standard workload
# (100 devices, 128 B, JSON, AES, QoS 1, one subscriber), gateway on core 0,
# firmware-sim on core 1.
#
# usage: benches/threads.sh RATE [SECS]      (release build in target/release)
#        CONFIG='[database]\ndurability = "process-crash"\n' benches/threads.sh 1000
set -euo pipefail
RATE=${1:?rate}; SECS=${2:-12}
. "$(dirname "$0")/standard_load.sh"
snap() { for t in /proc/$S/task/*; do echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done; }
sleep 2; snap > "$W/a"; sleep $((SECS - 4)); snap > "$W/b"; wait $F
python3 - "$W/a" "$W/b" "$RATE" $((SECS - 4)) "$W/load.json" <<'PY'
import collections, json, os, sys
tck = os.sysconf("SC_CLK_TCK")
def read(p):
    d = collections.Counter()
    for line in open(p):
        name, ticks = line.split()
        d[name.rstrip("0123456789-")] += int(ticks)
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
msgs = float(sys.argv[3]) * float(sys.argv[4])
total = 0.0
for k in sorted(b, key=lambda k: -(b[k] - a[k])):
    us = (b[k] - a[k]) / tck / msgs * 1e6
    total += us
    if us >= 0.5:
        print(f"{k:<20} {us:7.1f} us/msg")
print(f"{'TOTAL':<20} {total:7.1f} us/msg")
r = json.load(open(sys.argv[5]))
print(f"delivered {r['delivered']}, lost {r['lost']}, p50 {r['latency_ms']['p50']} ms")
PY
