#!/bin/bash
# Samples where the gateway's CPU goes at one offered rate: the standard
# workload (100 devices, 128 B, JSON, AES, QoS 1, one subscriber), gateway
# on core 0, firmware-sim on core 1, perf sampling cpu-clock (these VMs have
# no hardware counters) for 6 s in the middle of a 12 s run.
#
# usage: benches/profile.sh RATE [OUT.perf]     (release build in target/release)
# then:  perf report -i OUT.perf --no-children --sort comm,sym --stdio
set -euo pipefail
RATE=${1:?rate}; OUT=${2:-/tmp/sealgate.perf}
BIN=${BIN:-target/release}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
export SEALGATE_ADMIN_TOKEN=bench-token-0123456789 SEALGATE_ADMIN_URL=http://127.0.0.1:18093
: > "$W/c.toml"
SEALGATE_CONFIG=$W/c.toml SEALGATE_DATA_DIR=$W/data SEALGATE_MQTT_LISTEN=127.0.0.1:18843 \
  SEALGATE_HTTP_LISTEN=127.0.0.1:18093 SEALGATE_USERS=dash:pw RUST_LOG=warn \
  taskset -c 0 "$BIN/sealgate" > "$W/server.log" 2>&1 &
S=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18093/healthz > /dev/null && break; sleep 0.1; done
"$BIN/sealgate" device add-bulk --prefix sim- --count 100 --out "$W/fleet.json" > /dev/null
taskset -c 1 "$BIN/firmware-sim" --mqtt 127.0.0.1:18843 --devices-file "$W/fleet.json" \
  --subscriber dash:pw --rate "$RATE" --duration 12s --encrypt --qos 1 --payload-bytes 128 \
  --json > "$W/load.json" 2>&1 &
F=$!
sleep 3
perf record -e cpu-clock -g -p $S -o "$OUT" -- sleep 6
wait $F
tail -1 "$W/load.json"
