#!/bin/bash
# CPU and context switches (voluntary: it blocked; involuntary: it was
# preempted) per delivered message by thread (tokio workers, verifier,
# commit, checkpoint, router, sled-io ...) at one offered rate, from
# /proc/PID/task/*/stat and status over the middle of the run: the standard workload
# (100 devices, 128 B, JSON, AES, QoS 1, one subscriber), gateway on core 0,
# firmware-sim on core 1.
#
# usage: benches/threads.sh RATE [SECS]      (release build in target/release)
#        CONFIG='[database]\ndurability = "process-crash"\n' benches/threads.sh 1000
set -euo pipefail
RATE=${1:?rate}; SECS=${2:-12}
. "$(dirname "$0")/standard_load.sh"
snap() {
  for t in /proc/$S/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14+$15}' "$t/stat")" \
      "$(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' "$t/status")"
  done
}
sleep 2; snap > "$W/a"; sleep $((SECS - 4)); snap > "$W/b"; wait $F
python3 - "$W/a" "$W/b" "$RATE" $((SECS - 4)) "$W/load.json" <<'PY'
import collections, json, os, sys
tck = os.sysconf("SC_CLK_TCK")
def read(p):
    d = collections.defaultdict(lambda: [0, 0, 0])
    for line in open(p):
        name, *counts = line.split()
        row = d[name.rstrip("0123456789-")]
        for i, c in enumerate(counts):
            row[i] += int(c)
    return d
a, b = read(sys.argv[1]), read(sys.argv[2])
msgs = float(sys.argv[3]) * float(sys.argv[4])
per = {k: [(b[k][i] - a[k][i]) / msgs for i in range(3)] for k in b}
total = [0.0, 0.0, 0.0]
print(f"{'thread':<20} {'us/msg':>8} {'vol sw/msg':>11} {'invol sw/msg':>13}")
for k in sorted(per, key=lambda k: -per[k][0]):
    cpu, vol, invol = per[k][0] / tck * 1e6, per[k][1], per[k][2]
    total = [total[0] + cpu, total[1] + vol, total[2] + invol]
    if cpu >= 0.5 or vol + invol >= 0.05:
        print(f"{k:<20} {cpu:8.1f} {vol:11.2f} {invol:13.2f}")
print(f"{'TOTAL':<20} {total[0]:8.1f} {total[1]:11.2f} {total[2]:13.2f}")
r = json.load(open(sys.argv[5]))
print(f"delivered {r['delivered']}, lost {r['lost']}, p50 {r['latency_ms']['p50']} ms")
PY
