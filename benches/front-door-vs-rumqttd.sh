#!/bin/bash
# Issue 4's benchmark: sealgate's front door against rumqttd's own listener.
#
# Both servers forward sealed/... to clean/... without crypto or store:
# sealgate with [verifier] passthrough = true, and
# examples/rumqttd_listener_baseline.rs (same rumqttd router and settings,
# rumqttd's MQTT 3.1.1 listener, a local-link relay). Only who serves the
# sockets differs. Same firmware-sim run and devices for both; the server is
# pinned to core 0 and firmware-sim to core 1.
#
# usage: [REPS=n] benches/front-door-vs-rumqttd.sh [RATE ...]  (default 20000 30000 40000; 0 = as fast as the inflight window allows)
#        benches/front-door-vs-rumqttd.sh idle [N]         (memory per idle device connection, default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --examples >&2
BIN=target/release
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
TOKEN=bench-token-0123456789
export SEALGATE_ADMIN_TOKEN=$TOKEN SEALGATE_ADMIN_URL=http://127.0.0.1:18083

start_sealgate() {
    printf '[verifier]\npassthrough = true\n[limits]\ndevice_rate = 0.0\nmax_connections = 100000\n' > "$W/c.toml"
    SEALGATE_CONFIG=$W/c.toml SEALGATE_DATA_DIR=$W/data SEALGATE_MQTT_LISTEN=127.0.0.1:18833 \
        SEALGATE_HTTP_LISTEN=127.0.0.1:18083 SEALGATE_USERS=dash:pw RUST_LOG=warn \
        taskset -c 0 $BIN/sealgate > "$W/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18083/healthz > /dev/null && return; sleep 0.1; done
    echo "sealgate did not start" >&2; exit 1
}
start_baseline() {
    RUST_LOG=warn taskset -c 0 $BIN/examples/rumqttd_listener_baseline --listen 127.0.0.1:18843 > "$W/server.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/18843) 2> /dev/null && return; sleep 0.1; done
    echo "baseline did not start" >&2; exit 1
}
stop() { kill $SERVER; wait $SERVER 2> /dev/null || true; }
rss() { grep "$1" /proc/$SERVER/status | awk '{print $2}'; }

# One fleet for both: registered once in sealgate's data directory.
start_sealgate
$BIN/sealgate device add-bulk --prefix sim- --count 100 --out "$W/fleet.json" > /dev/null
stop

sim() {
    taskset -c 1 $BIN/firmware-sim --mqtt "$1" --devices-file "$W/fleet.json" --subscriber dash:pw \
        --rate "$2" --duration 10s --encrypt --qos 1 --payload-bytes 128 --json 2> /dev/null | tail -1
}

if [ "${1:-}" = idle ]; then
    N=${2:-2000}
    start_sealgate
    $BIN/sealgate device add-bulk --prefix idle- --count "$N" --out "$W/idle.json" > /dev/null
    stop
    for server in sealgate baseline; do
        if [ $server = sealgate ]; then start_sealgate; port=18833; else start_baseline; port=18843; fi
        before=$(rss VmRSS)
        : > "$W/idle.out"
        taskset -c 1 python3 benches/idle_connections.py 127.0.0.1 $port "$W/idle.json" > "$W/idle.out" &
        IDLE=$!
        until grep -q ready "$W/idle.out"; do
            kill -0 $IDLE 2> /dev/null || { echo "idle_connections.py failed" >&2; exit 1; }
            sleep 0.2
        done
        ready=$(cat "$W/idle.out")
        after=$(rss VmRSS)
        kill $IDLE; wait $IDLE 2> /dev/null || true
        echo "$server: $ready, RSS ${before} kB before, ${after} kB with them, $(( (after - before) * 1000 / N )) B per connection"
        stop
    done
    exit 0
fi

for rate in "${@:-20000 30000 40000}"; do
    for rep in $(seq "${REPS:-1}"); do
        for server in sealgate baseline; do
            if [ $server = sealgate ]; then start_sealgate; port=18833; else start_baseline; port=18843; fi
            out=$(sim 127.0.0.1:$port "$rate")
            extra=""
            if [ $server = sealgate ]; then
                extra=$(curl -s http://127.0.0.1:18083/metrics | grep -E '^sealgate_dropped_total' | tr '\n' ' ')
            fi
            echo "$server rate=$rate rep=$rep peak_rss_kb=$(rss VmHWM) $extra$out"
            stop
        done
    done
done
