#!/usr/bin/env bash
# CPU profile of the server under one of the benchmark loads, with `perf` (Debian: linux-perf).
# Not part of run.sh: it is the tool behind the analysis in docs/PERFORMANCE.md.
#
#   bench/profile.sh upload     # perf while a 1 GiB file is uploaded (curl -T)
#   bench/profile.sh download   # perf during `wrk -t2 -c64 -d10s` on the 4 MiB download
#
# Writes bench/out/profile-<load>.txt (perf report, flat, by symbol) and .data.
# The hot paths of devices (check-ins, seed-001, seed-003) are profiled by bench/hotpaths.sh:
#   HOTPATHS_PERF=1 bench/hotpaths.sh   # bench/out/hotpaths/perf-<binary>-<scenario>.txt
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

LOAD=${1:-}
[[ $LOAD == upload || $LOAD == download ]] || die "usage: bench/profile.sh upload|download"
BIN=$(updraft_bin)
need_tools curl python3 perf wrk
bench_tmpdir
PORT=$(free_port)
start_updraft "$BIN" "$PORT" "$TMP/data" "$OUT_DIR/profile-$LOAD-server.log"
wait_ready "$PORT" "$SERVER_PID"
DATA=$OUT_DIR/profile-$LOAD.data

if [[ $LOAD == upload ]]; then
  head -c $((1024 * 1024 * 1024)) /dev/urandom >"$TMP/file.bin"
  cat "$TMP/file.bin" >/dev/null
  perf record -q -F 999 -g -o "$DATA" -p "$SERVER_PID" 2>/dev/null 9>&- &
  PERF_PID=$!
  sleep 0.5
  upload "$TMP/file.bin" 1.0.0 "$PORT" "$TMP/response.json" >&2
else
  head -c $((4 * 1024 * 1024)) /dev/urandom >"$TMP/file.bin"
  read -r code _ _ < <(upload "$TMP/file.bin" 1.0.0 "$PORT" "$TMP/response.json")
  [[ $code == 201 ]] || die "upload answered $code"
  ID=$(json_field "$TMP/response.json" id)
  perf record -q -F 999 -g -o "$DATA" -p "$SERVER_PID" 2>/dev/null 9>&- &
  PERF_PID=$!
  sleep 0.5
  wrk -t2 -c64 -d10s -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$PORT/api/v1/firmware/$ID/download" >&2
fi
kill -INT "$PERF_PID"
wait "$PERF_PID" || true
perf_report "$DATA" "$OUT_DIR/profile-$LOAD.txt"
head -30 "$OUT_DIR/profile-$LOAD.txt" >&2
log "profile: bench/out/profile-$LOAD.txt"
