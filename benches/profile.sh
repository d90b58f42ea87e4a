#!/bin/bash
# Samples where the gateway's CPU goes at one offered rate: the standard
# workload (100 devices, 128 B, JSON, AES, QoS 1, one subscriber), gateway
# on core 0, firmware-sim on core 1, perf sampling cpu-clock (these VMs have
# no hardware counters) for 6 s in the middle of a 12 s run.
#
# usage: benches/profile.sh RATE [OUT.perf]     (release build in target/release)
# then:  perf report -i OUT.perf --no-children --sort comm,sym --stdio
#        perf script -i OUT.perf | inferno-collapse-perf | inferno-flamegraph > OUT.svg
#        (flame graph; `cargo install inferno`)
set -euo pipefail
RATE=${1:?rate}; OUT=${2:-/tmp/sealgate.perf}
SECS=12
. "$(dirname "$0")/standard_load.sh"
sleep 3
perf record -e cpu-clock -g -p $S -o "$OUT" -- sleep 6
wait $F
cat "$W/load.json"
