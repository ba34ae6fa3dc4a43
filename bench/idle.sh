#!/usr/bin/env bash
# Startup and idle benchmark: 5 starts of `updraft serve` on an empty data dir, each timed from
# exec to the first 200 of /api/ready (polled every 5 ms; target < 1000 ms), and the idle VmRSS
# 2 s after ready (target < 30 MiB). bench/ready_timer.py starts and stops each server.
#
#   IDLE_RUNS=5 bench/idle.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

RUNS=${IDLE_RUNS:-5}
BIN=$(updraft_bin)
need_tools python3
RAW=$OUT_DIR/idle
rm -rf "$RAW" && mkdir -p "$RAW"
echo "loadavg at start: $(cat /proc/loadavg)" >"$RAW/info.txt"

# Whether the start-up functions sit together in this binary (build.rs, link/startup.order):
# a stale list or a build without it costs several MiB of idle RSS.
if command -v nm >/dev/null; then
  ORDER=$(python3 "$REPO_DIR/scripts/startup_order.py" --check "$REPO_DIR/link/startup.order" "$BIN")
  log "start-up order: $ORDER"
  echo "start-up order: $ORDER" >>"$RAW/info.txt"
fi

ready=() rss=()
for ((i = 1; i <= RUNS; i++)); do
  bench_tmpdir
  PORT=$(free_port)
  line=$(python3 "$(dirname -- "${BASH_SOURCE[0]}")/ready_timer.py" --bin "$BIN" --port "$PORT" \
    --data-dir "$TMP/data" --key "$BENCH_KEY" --log "$RAW/server-$i.log")
  echo "$line" >>"$RAW/runs.jsonl"
  read -r ms kb < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["ready_ms"], r["idle_rss_kb"])' "$line")
  ready+=("$ms") rss+=("$kb")
  log "idle run $i: ready in $ms ms, idle VmRSS $kb kB"
  result idle "run $i: exec -> ready (ms) | idle RSS (MiB)" "$ms | $(calc "$kb / 1024" 1)" "-" "-"
done

MED=$(median "${ready[@]}") MAX=$(max_of "${ready[@]}")
RSS_MAX=$(calc "$(max_of "${rss[@]}") / 1024" 1)
RSS_MED=$(calc "$(median "${rss[@]}") / 1024" 1)
result idle "exec -> first 200 /api/ready, median of $RUNS (ms)" "$MED" "< 1000" "$(pass_if "$MED < 1000")"
result idle "exec -> first 200 /api/ready, worst (ms)" "$MAX" "< 1000" "$(pass_if "$MAX < 1000")"
result idle "idle VmRSS 2 s after ready, median (MiB)" "$RSS_MED" "< 30" "$(pass_if "$RSS_MED < 30")"
result idle "idle VmRSS 2 s after ready, worst (MiB)" "$RSS_MAX" "< 30" "$(pass_if "$RSS_MAX < 30")"
