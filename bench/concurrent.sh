#!/usr/bin/env bash
# Concurrency benchmark: 1000 concurrent downloads of a 4 MiB artifact that read only the
# headers and 4 KiB of the body, then stall for 5 s (bench/slow_clients.py). Reports the
# server's RSS growth from just before the clients connect to the peak (VmHWM, reset before;
# target < 64 MiB), checks that all 1000 got a 200 status line, and closes them all.
#
#   CONCURRENT_CLIENTS=1000 CONCURRENT_HOLD=5 bench/concurrent.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

CLIENTS=${CONCURRENT_CLIENTS:-1000}
HOLD=${CONCURRENT_HOLD:-5}
BIN=$(updraft_bin)
need_tools curl python3
RAW=$OUT_DIR/concurrent
rm -rf "$RAW" && mkdir -p "$RAW"

# 1000 client sockets here plus 1000 connections (and open blob files) in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
((NOFILE >= 2 * CLIENTS + 200)) || die "open-file limit $NOFILE is too low for $CLIENTS clients (raise the hard limit)"
[[ $NOFILE == 65536 ]] || log "ulimit -n 65536 refused (hard limit $(ulimit -Hn)); using $NOFILE, which is enough"

bench_tmpdir
FILE=$TMP/firmware.bin
head -c $((4 * 1024 * 1024)) /dev/urandom >"$FILE"
{
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "ulimit -n: $NOFILE"
} >"$RAW/info.txt"

PORT=$(free_port)
start_updraft "$BIN" "$PORT" "$TMP/data" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"
read -r code _ _ < <(upload "$FILE" 1.0.0 "$PORT" "$RAW/upload.json")
[[ $code == 201 ]] || die "upload answered HTTP $code: $(cat "$RAW/upload.json")"
ID=$(json_field "$RAW/upload.json" id)
DL_PATH=/api/v1/firmware/$ID/download
# One complete download first, so that lazily initialised state is in the baseline.
curl -sS -f -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$PORT$DL_PATH"
sleep 1

reset_hwm "$SERVER_PID" || log "cannot reset VmHWM; the peak is then the process's lifetime peak"
log "concurrent: $CLIENTS stalled downloads for ${HOLD} s (server pid $SERVER_PID, RSS $(proc_kb "$SERVER_PID" VmRSS) kB)"
python3 "$(dirname -- "${BASH_SOURCE[0]}")/slow_clients.py" --port "$PORT" --path "$DL_PATH" --key "$BENCH_KEY" \
  --pid "$SERVER_PID" --count "$CLIENTS" --hold "$HOLD" >"$RAW/report.json"

# The server must still serve a complete, correct download afterwards.
after_sha=$(curl -sS -f -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$PORT$DL_PATH" | sha256sum | cut -d' ' -f1)
[[ $after_sha == "$(sha256sum <"$FILE" | cut -d' ' -f1)" ]] || die "a download after the test returned wrong bytes"

read -r ok before hwm sampled after threads0 threads all_in ttfb_max errors < <(python3 - "$RAW/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["ok_200"], r["rss_kb_before"], r["hwm_kb_at_end_of_hold"], r["rss_kb_peak_sampled"], r["rss_kb_after_close"],
      r["threads_before"], r["threads_peak"], r["seconds_until_all_in"], r["ttfb_ms_max"], r["errors"])
PY
)
peak=$((hwm > sampled ? hwm : sampled))
growth=$(calc "($peak - $before) / 1024" 1)
{
  echo "200 status lines: $ok / $CLIENTS (errors: $errors)"
  echo "all clients in after ${all_in} s; slowest time to first byte ${ttfb_max} ms"
  echo "server VmRSS before: $before kB; peak (VmHWM): $hwm kB; peak sampled VmRSS: $sampled kB; after close: $after kB"
  echo "server threads before: $threads0; peak: $threads"
} | tee "$RAW/summary.txt" >&2

result concurrent "clients that got a 200 status line" "$ok / $CLIENTS" "$CLIENTS / $CLIENTS" "$( ((ok == CLIENTS)) && echo PASS || echo FAIL)"
result concurrent "server RSS before (MiB)" "$(calc "$before / 1024" 1)" "-" "-"
result concurrent "server RSS peak (MiB)" "$(calc "$peak / 1024" 1)" "-" "-"
result concurrent "server RSS growth (MiB)" "$growth" "< 64" "$(pass_if "$growth < 64")"
result concurrent "server RSS 2 s after closing all (MiB)" "$(calc "$after / 1024" 1)" "-" "-"
result concurrent "server threads before -> peak" "$threads0 -> $threads" "-" "-"
