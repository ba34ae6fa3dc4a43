#!/usr/bin/env bash
# Regenerates link/startup.order: the functions a server runs from exec through its first
# minute idle, then those that devices at work add. build.rs hands the file to the linker, which
# lays those functions out side by side (docs/PERFORMANCE.md, "idle"; docs/DEVELOPMENT.md,
# "Start-up code order").
#
# It builds the release binary and runs it twice under valgrind's callgrind (every instruction
# executed, not a sample), started as the benchmarks start it:
#   1. on an empty data folder, as bench/idle.sh does, until 3 s after ready;
#   2. on that folder with 2,000 devices seeded (bench/checkin_seed.py), through 65 s idle
#      (the background tasks that run each minute); then devices at work: 20 s of check-ins
#      over 64 connections (wrk, bench/checkin.lua), a build rolled out to 20 simulated
#      devices of every protocol that needs no secret (`updraft simulate --protocol mix`,
#      40 s), and operators' reads.
# It maps the traces to symbols, writes the file and relinks. Run it before a release, or when
# `bench/idle.sh` reports that few of the listed functions are still in the binary. About
# 15 minutes, most of it the release builds.
#
#   scripts/startup-order.sh
set -euo pipefail
ROOT=$(cd "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source bench/lib.sh
trap bench_cleanup EXIT

need_tools curl python3 valgrind wrk
command -v nm >/dev/null || die "nm is needed: apt-get install binutils"

cargo build --release --quiet --bin updraft
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/updraft
bench_tmpdir
# start_updraft runs `$1 serve ...`: here, the binary under callgrind. Dump n of process PID
# goes to callgrind.PID.n.
printf '#!/bin/sh\nexec valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=%q %q "$@"\n' \
  "$TMP/callgrind.%p" "$BIN" >"$TMP/under-callgrind"
chmod +x "$TMP/under-callgrind"
PORT=$(free_port) MQTT_PORT=$(free_port)
URL=http://127.0.0.1:$PORT
api() { curl -sS --fail-with-body -H "Authorization: Bearer $BENCH_KEY" "$@"; }
upload() { # PRODUCT VERSION OUT
  head -c $((256 * 1024)) /dev/urandom >"$TMP/fw.bin"
  api -H 'Content-Type: application/octet-stream' --data-binary @"$TMP/fw.bin" \
    "$URL/api/v1/firmware?product=$1&version=$2&hardware=esp32" >"$3"
}
# traced_start: starts the server under callgrind and waits until it is ready.
traced_start() {
  BENCH_MQTT_PORT=$MQTT_PORT start_updraft "$TMP/under-callgrind" "$PORT" "$TMP/data" "$TMP/server.log"
  wait_ready "$PORT" "$SERVER_PID" 120
}
# dump: writes what ran since the last dump, and zeroes the counts.
dump() { callgrind_control --dump "$SERVER_PID" >/dev/null; }

log "1. a fresh server"
traced_start
sleep 3
dump
FRESH=$TMP/callgrind.$SERVER_PID.1
upload bench 1.0.0 /dev/null
stop_pid "$SERVER_PID"

log "2. a server with 2,000 devices: one minute idle, then at work"
python3 bench/checkin_seed.py "$TMP/data/updraft.db" 2000 2>/dev/null
traced_start
sleep 65
dump
BENCH_DEVICES=2000 wrk -t2 -c64 -d20s -s bench/checkin.lua "$URL" >"$TMP/wrk.txt" 2>&1
upload trace 2.0.0 "$TMP/artifact.json"
api -H 'Content-Type: application/json' -d "{\"product\":\"trace\",\"version\":\"2.0.0\",\"artifact_ids\":[\"$(json_field "$TMP/artifact.json" id)\"]}" \
  "$URL/api/v1/releases" >"$TMP/release.json"
api -H 'Content-Type: application/json' \
  -d "{\"release_id\":\"$(json_field "$TMP/release.json" id)\",\"stages\":[{\"percent\":100,\"min_soak_s\":0}],\"start\":true}" \
  "$URL/api/v1/rollouts" >/dev/null
"$BIN" simulate --server "$URL" --mqtt "127.0.0.1:$MQTT_PORT" --devices 20 --product trace --protocol mix --poll 2s \
  --duration 40s --summary-every 20s >"$TMP/simulate.log" 2>&1 || { cat "$TMP/simulate.log" >&2; die "the simulator failed"; }
for path in /api/health /api/ready /metrics "/api/v1/devices?limit=50" /api/v1/rollouts /api/v1/firmware; do
  api -o /dev/null "$URL$path"
done
dump
SEEDED=$TMP/callgrind.$SERVER_PID
stop_pid "$SERVER_PID"

mkdir -p link
python3 scripts/startup_order.py "$BIN" --startup "$FRESH" "$SEEDED.1" --work "$SEEDED.2" >link/startup.order.new
mv link/startup.order.new link/startup.order
log "link/startup.order: $(grep -E '^# (start-up|devices)' link/startup.order | tr '\n' ' '); relinking"
cargo build --release --quiet --bin updraft
