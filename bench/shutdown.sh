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
api() { curl -s -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' "$@"; }

bench_tmpdir
PORT=$(free_port)
DATA=$TMP/data
BASE=http://127.0.0.1:$PORT
export BENCH_SERVER_LOG=info
# The timeout is passed as a setting file, since start_updraft passes no UPDRAFT_* variable.
printf 'shutdown_timeout_secs = %s\n' "$TIMEOUT" >"$TMP/updraft.toml"

log "fleet of $N devices: schema, builds 1.0.0 and 2.0.0, release 2.0.0"
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server-setup.log"
wait_ready "$PORT" "$SERVER_PID"
head -c 100000 /dev/urandom >"$TMP/fw1.bin"
head -c 100000 /dev/urandom >"$TMP/fw2.bin"
for v in 1 2; do
  code=$(curl -s -o "$TMP/build$v.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' --data-binary @"$TMP/fw$v.bin" \
    "$BASE/api/v1/firmware?product=bench&version=$v.0.0&hardware=esp32")
  [[ $code == 201 ]] || die "upload answered $code"
done
BUILD2=$(json_field "$TMP/build2.json" id)
code=$(api -o "$TMP/release.json" -w '%{http_code}' -d "{\"product\":\"bench\",\"version\":\"2.0.0\",\"artifact_ids\":[\"$BUILD2\"]}" "$BASE/api/v1/releases")
[[ $code == 201 ]] || die "creating the release answered $code"
RELEASE=$(json_field "$TMP/release.json" id)
stop_pid "$SERVER_PID"
python3 "$BENCH_DIR/checkin_seed.py" "$DATA/updraft.db" "$N" "$COUNT" 2>>"$RAW/seed.log"

# The server under test reads the timeout from its setting file (--config).
start_updraft_with_config() {
  local unset_args=() name
  while IFS= read -r name; do unset_args+=(-u "$name"); done < <(env | sed -n 's/^\(UPDRAFT_[A-Za-z0-9_]*\)=.*/\1/p')
  (
    cd "$TMP" &&
      exec env "${unset_args[@]}" UPDRAFT_ADMIN_API_KEY="$BENCH_KEY" UPDRAFT_LOG=info \
        "$BIN" serve --config "$TMP/updraft.toml" --listen "127.0.0.1:$PORT" --mqtt-listen "127.0.0.1:$(free_port)" --data-dir "$DATA"
  ) >"$RAW/server.log" 2>&1 9>&- &
  SERVER_PID=$!
  BENCH_PIDS+=("$SERVER_PID")
}
start_updraft_with_config
started=$(now)
wait_ready "$PORT" "$SERVER_PID" 300
READY_S=$(calc "$(now) - $started" 1)
log "ready in $READY_S s; $COUNT rollouts of release 2.0.0"
for ((k = 0; k < COUNT; k++)); do
  code=$(api -o "$TMP/rollout$k.json" -w '%{http_code}' \
    -d "{\"release_id\":\"$RELEASE\",\"name\":\"ring $k\",\"target\":{\"tags\":[\"ring-$k\"],\"hardware\":[\"esp32\"]},\"start\":true}" \
    "$BASE/api/v1/rollouts")
  [[ $code == 201 ]] || die "creating rollout $k answered $code: $(cat "$TMP/rollout$k.json")"
done

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
