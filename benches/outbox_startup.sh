#!/bin/bash
# Startup time of the gateway on a data directory whose outbox holds COUNT
# entries that an offline persistent session has not read (the worst case:
# nothing can be trimmed), against an empty data directory. Time is from
# exec to the "sealgate ready." log line; REPS runs each, medians printed.
#
# usage: REPS=5 benches/outbox_startup.sh RELEASE_DIR [COUNT]
#   RELEASE_DIR: target/release of a build with sealgate and the
#   fill_outbox example (cargo build --release --example fill_outbox).
set -euo pipefail
BIN=$(cd "$1" && pwd); COUNT=${2:-1000000}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export SEALGATE_MASTER_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
export SEALGATE_ADMIN_TOKEN=bench-token-0123456789 SEALGATE_USERS=dash:pw
export SEALGATE_MQTT_LISTEN=127.0.0.1:0 SEALGATE_HTTP_LISTEN=127.0.0.1:0 RUST_LOG=info

mkdir -p "$W/full" "$W/empty"
/usr/bin/time -f "fill: %e s, %M KB" "$BIN/examples/fill_outbox" "$W/full" "$COUNT"
du -sh "$W/full/db"

start() { # DATA_DIR -> seconds to ready
    python3 - "$BIN/sealgate" "$1" <<'PY'
import os, subprocess, sys, time
env = dict(os.environ, SEALGATE_DATA_DIR=sys.argv[2])
t = time.monotonic()
p = subprocess.Popen([sys.argv[1]], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
for line in p.stderr:
    if "sealgate ready." in line:
        print(f"{time.monotonic() - t:.3f}")
        break
    if "restored" in line:
        sys.stderr.write(line)
p.terminate(); p.wait()
PY
}
for dir in empty full; do
    times=()
    for _ in $(seq "${REPS:-5}"); do times+=("$(start "$W/$dir")"); done
    printf '%s: %s -> median %s s\n' "$dir" "${times[*]}" \
        "$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
done
