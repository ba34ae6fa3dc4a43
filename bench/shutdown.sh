#!/usr/bin/env bash
# Shutdown benchmark: how long `updraft serve` takes to stop at SHUTDOWN_DEVICES devices
# (default 1,000,000), with SHUTDOWN_ROLLOUTS live rollouts (default 10) and the presence
# buffer filled by SHUTDOWN_CHECKIN_SECONDS of check-ins, under check-in load when SIGTERM
# arrives. Measures SIGTERM -> exit, and the phases the server logs (requests drained,
# background tasks stopped, buffered presence written), against UPDRAFT_SHUTDOWN_TIMEOUT_SECS
# (the default, 30 s, unless SHUTDOWN_TIMEOUT_SECS is set).
#
#   SHUTDOWN_DEVICES=100000 bench/shutdown.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

N=${SHUTDOWN_DEVICES:-1000000}
COUNT=${SHUTDOWN_ROLLOUTS:-10}
SECS=${SHUTDOWN_CHECKIN_SECONDS:-30}
TIMEOUT=${SHUTDOWN_TIMEOUT_SECS:-30}
BIN=$(updraft_bin)
need_tools wrk python3 curl
RAW=$OUT_DIR/shutdown
rm -rf "$RAW" && mkdir -p "$RAW"
echo "loadavg at start: $(cat /proc/loadavg)" >"$RAW/info.txt"

bench_tmpdir
PORT=$(free_port)
DATA=$TMP/data
BASE=http://127.0.0.1:$PORT
log "fleet of $N devices: schema, builds 1.0.0 and 2.0.0, release 2.0.0"
seed_release_fleet "$BIN" "$PORT" "$DATA" "$N" "$COUNT" "$RAW/server-setup.log"
# The server under test logs its shutdown phases (INFO) and reads the timeout from a setting
# file, since start_updraft passes no UPDRAFT_* variable of this shell.
printf 'shutdown_timeout_secs = %s\n' "$TIMEOUT" >"$TMP/updraft.toml"
BENCH_SERVER_LOG=info BENCH_SERVER_ARGS="--config $TMP/updraft.toml" start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server.log"
started=$(now)
wait_ready "$PORT" "$SERVER_PID" 300
READY_S=$(calc "$(now) - $started" 1)
log "ready in $READY_S s; $COUNT rollouts of release 2.0.0"
start_ring_rollouts "$PORT" "$RELEASE" "$COUNT"

log "check-ins for $SECS s (fills the presence buffer), then SIGTERM under load"
BENCH_DEVICES=$N wrk -t2 -c64 -d"$((SECS + 20))s" -s "$BENCH_DIR/checkin.lua" "$BASE" >"$RAW/checkin.txt" 2>&1 &
WRK=$!
sleep "$SECS"
RSS_MB=$(calc "$(proc_kb "$SERVER_PID" VmRSS) / 1024" 0)
term_at=$(now)
kill -TERM "$SERVER_PID"
for ((i = 0; i < (TIMEOUT + 60) * 100; i++)); do
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.01
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
  STOP_S="> $((TIMEOUT + 60))"
  log "the server did not stop within $((TIMEOUT + 60)) s; killing it"
  kill -KILL "$SERVER_PID" 2>/dev/null || true
else
  STOP_S=$(calc "$(now) - $term_at" 2)
fi
wait "$SERVER_PID" 2>/dev/null || true
kill "$WRK" 2>/dev/null || true
wait "$WRK" 2>/dev/null || true

phase() { # the after_ms of a log line, in s
  { grep -E "updraft::startup: $1 after_ms=" "$RAW/server.log" || true; } | tail -n 1 | sed -n 's/.*after_ms=\([0-9]*\).*/\1/p' | awk '{ printf "%.2f", $1 / 1000 }'
}
WRITTEN=$(grep -F -e 'device presence written' -e 'shutdown deadline reached' "$RAW/server.log" | sed -n 's/.*written=\([0-9]*\).*/\1/p' | tail -n 1 || true)
LOST=$(grep -F 'shutdown deadline reached' "$RAW/server.log" | sed -n 's/.*left=\([0-9]*\).*/\1/p' | tail -n 1 || true)
log "SIGTERM -> exit: $STOP_S s (drained $(phase 'requests drained') s, tasks stopped $(phase 'background tasks stopped') s, stopped $(phase 'stopped') s)"
result shutdown "$N devices, $COUNT live rollouts, RSS $RSS_MB MiB: ready after start (s)" "$READY_S" "-" "-"
result shutdown "SIGTERM under check-in load -> exit (s)" "$STOP_S" "< $TIMEOUT" "$( [[ $STOP_S != '>'* ]] && pass_if "$STOP_S < $TIMEOUT" || echo FAIL)"
result shutdown "phases after SIGTERM: requests drained | tasks stopped | stopped (s)" \
  "$(phase 'requests drained') | $(phase 'background tasks stopped') | $(phase 'stopped')" "-" "-"
result shutdown "presence rows written at shutdown | left unwritten" "${WRITTEN:-0} | ${LOST:-0}" "-" "-"
