# Sourced by profile.sh and threads.sh: the gateway on core 0 (config from
# $CONFIG, empty by default) with 100 registered devices, and the standard
# load on core 1 (100 devices, 128 B, JSON, AES, QoS 1, one subscriber) at
# $RATE msgs/s for $SECS s. Sets W (a work directory removed on exit), S (the
# gateway's pid) and F (the load's); the load's summary goes to $W/load.json.
# $SIM_ARGS adds options to firmware-sim's, e.g.
# SIM_ARGS="--latency-timeline /tmp/t.csv" (latency per 10 ms of the run).
BIN=${BIN:-target/release}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
export SEALGATE_ADMIN_TOKEN=bench-token-0123456789 SEALGATE_ADMIN_URL=http://127.0.0.1:18093
printf "%b" "${CONFIG:-}" > "$W/c.toml"
SEALGATE_CONFIG=$W/c.toml SEALGATE_DATA_DIR=$W/data SEALGATE_MQTT_LISTEN=127.0.0.1:18843 \
  SEALGATE_HTTP_LISTEN=127.0.0.1:18093 SEALGATE_USERS=dash:pw RUST_LOG=warn \
  taskset -c 0 "$BIN/sealgate" > "$W/server.log" 2>&1 &
S=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18093/healthz > /dev/null && break; sleep 0.1; done
"$BIN/sealgate" device add-bulk --prefix sim- --count 100 --out "$W/fleet.json" > /dev/null
taskset -c 1 "$BIN/firmware-sim" --mqtt 127.0.0.1:18843 --devices-file "$W/fleet.json" \
  --subscriber dash:pw --rate "$RATE" --duration "${SECS}s" --encrypt --qos 1 --payload-bytes 128 \
  --json ${SIM_ARGS:-} 2> /dev/null | tail -1 > "$W/load.json" &
F=$!
