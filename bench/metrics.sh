#!/usr/bin/env bash
# Memory when nobody scrapes /metrics: every request records a latency sample, and before the
# recorder's upkeep ran on a timer those samples were kept until a scrape rendered them
# (about 20 bytes a request, for ever, on a server without Prometheus).
#
# One server, no scraper: VmRSS idle, then wrk against /api/health for METRICS_SECONDS
# (default 60) with 2 threads and 50 connections, VmRSS right after, and again after
# METRICS_IDLE (default 15) s of idling. The growth per million requests is the figure to
# watch (target: flat, i.e. not growing with the number of requests).
#
#   bench/metrics.sh
#   UPDRAFT_BIN_BEFORE=/path/to/old/updraft bench/metrics.sh   # the same run with an old build too
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SECONDS_LOAD=${METRICS_SECONDS:-60}
IDLE=${METRICS_IDLE:-15}
need_tools wrk curl
RAW=$OUT_DIR/metrics
rm -rf "$RAW" && mkdir -p "$RAW"

measure() {
  local label=$1 bin=$2
  bench_tmpdir
  local port
  port=$(free_port)
  start_updraft "$bin" "$port" "$TMP/data" "$RAW/server-$label.log"
  local pid=$SERVER_PID
  wait_ready "$port" "$pid"
  sleep 2
  local idle_kb
  idle_kb=$(proc_kb "$pid" VmRSS)
  wrk -t2 -c50 -d"${SECONDS_LOAD}s" "http://127.0.0.1:$port/api/health" >"$RAW/wrk-$label.txt" 2>&1
  local requests after_kb later_kb
  requests=$(awk '/requests in/ { print $1 }' "$RAW/wrk-$label.txt")
  after_kb=$(proc_kb "$pid" VmRSS)
  sleep "$IDLE"
  later_kb=$(proc_kb "$pid" VmRSS)
  local per_million
  per_million=$(calc "($later_kb - $idle_kb) / 1024 / ($requests / 1000000)" 2)
  log "$label: idle $idle_kb kB; $requests requests in ${SECONDS_LOAD}s, no scrape; $after_kb kB right after; $later_kb kB after ${IDLE}s idle"
  result metrics "$label: VmRSS idle | after $requests requests | after ${IDLE}s idle (MiB)" \
    "$(calc "$idle_kb / 1024" 1) | $(calc "$after_kb / 1024" 1) | $(calc "$later_kb / 1024" 1)" "flat" "-"
  result metrics "$label: growth per million unscraped requests (MiB)" "$per_million" "~0" "$(pass_if "$per_million < 2")"
  stop_pid "$pid"
}

wait_quiet "${BENCH_WAIT_QUIET:-0}"
measure current "$(updraft_bin)"
if [[ -n "${UPDRAFT_BIN_BEFORE:-}" ]]; then
  wait_quiet "${BENCH_WAIT_QUIET:-0}"
  measure before "$UPDRAFT_BIN_BEFORE"
fi
