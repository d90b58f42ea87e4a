#!/bin/bash
# firmware-sim --impl rust vs --impl c against one gateway build, alternating,
# standard workload (100 devices, 128 B, JSON, AES, QoS 1, 10 s), gateway on
# core 0, firmware-sim on core 1, device rate limit off. RATE as --rate.
# usage: REPS=5 benches/impl_ab.sh TARGET_DIR [RATE]   (TARGET_DIR: target/release)
set -euo pipefail
BIN=$(cd "$1" && pwd); RATE=${2:-0}; REPS=${REPS:-5}
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
export SEALGATE_ADMIN_TOKEN=bench-token-0123456789 SEALGATE_ADMIN_URL=http://127.0.0.1:18083
run() {
  rm -rf "$W/data"; printf '[limits]\ndevice_rate = 0.0\n' > "$W/c.toml"
  SEALGATE_CONFIG=$W/c.toml SEALGATE_DATA_DIR=$W/data SEALGATE_MQTT_LISTEN=127.0.0.1:18833 \
    SEALGATE_HTTP_LISTEN=127.0.0.1:18083 SEALGATE_USERS=dash:pw RUST_LOG=warn \
    taskset -c 0 "$BIN/sealgate" > "$W/server.log" 2>&1 &
  local server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18083/healthz > /dev/null && break; sleep 0.1; done
  rm -f "$W/fleet.json"
  "$BIN/sealgate" device add-bulk --prefix sim- --count 100 --out "$W/fleet.json" > /dev/null
  local out
  out=$(taskset -c 1 "$BIN/firmware-sim" --mqtt 127.0.0.1:18833 --devices-file "$W/fleet.json" \
    --subscriber dash:pw --rate "$RATE" --duration 10s --encrypt --qos 1 --payload-bytes 128 \
    --impl "$1" --json 2> /dev/null | tail -1)
  kill $server; wait $server 2> /dev/null || true
  echo "$out" | python3 -c "import json,sys; r=json.load(sys.stdin); l=r.get('latency_ms') or {}; print(json.dumps({'impl':'$1','delivered_per_sec':r['delivered_per_sec'],'lost':r['lost'],'p50':l.get('p50'),'p99':l.get('p99')}))"
}
for i in $(seq $REPS); do
  if (( i % 2 )); then run rust; run c; else run c; run rust; fi
done
