#!/usr/bin/env bash
# hawkBit DDI benchmark (issue 16): DDI polls against native check-ins on the same server in
# the same run, and against gooseBit's DDI poll (PyPI `goosebit`, SQLite, one worker as it
# requires) on the same machine in the same run. 64 connections, wrk -t2.
#
#   1. Updraft, DDI_DEVICES (default 100,000) devices seeded by bench/checkin_seed.py, release
#      build: native `GET /api/v1/device/checkin?version=1.0.0` (bench/checkin.lua), then DDI
#      `GET /DEFAULT/controller/v1/<MAC>` with `TargetToken` (bench/ddi.lua).
#      Target: DDI polls >= 50% of the native check-in rate.
#   2. gooseBit in a venv under target/bench-goosebit (pip install goosebit, once), SQLite,
#      strict device auth (every poll sends its TargetToken, as Updraft's do): GOOSEBIT_DEVICES
#      (default 1,000: registering goes through its polls, at about 100/s) devices, registered
#      in its `setup` mode and then polled in `strict` mode with the same script.
#      Reported: Updraft's DDI req/s / gooseBit's DDI req/s (gooseBit with the smaller fleet).
#
#   DDI_DEVICES=100000 GOOSEBIT_DEVICES=1000 DDI_SECONDS=15 bench/ddi.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

N=${DDI_DEVICES:-100000}
GB_N=${GOOSEBIT_DEVICES:-1000}
SECS=${DDI_SECONDS:-15}
BIN=$(updraft_bin)
need_tools wrk python3 curl
RAW=$OUT_DIR/ddi
rm -rf "$RAW" && mkdir -p "$RAW"

rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
p99_of() { awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }; print v }' "$1"; }
errors_of() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' "$1"; }

# ---- Updraft ----
bench_tmpdir
PORT=$(free_port)
DATA=$TMP/data
log "Updraft: $N devices, schema and one build"
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"
head -c 100000 /dev/urandom >"$TMP/fw.bin"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
  --data-binary @"$TMP/fw.bin" "http://127.0.0.1:$PORT/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32")
[[ $code == 201 ]] || die "upload answered $code"
stop_pid "$SERVER_PID"
python3 "$BENCH_DIR/checkin_seed.py" "$DATA/updraft.db" "$N" 2>>"$RAW/seed.log"
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"
BASE=http://127.0.0.1:$PORT
answer=$(curl -s -H "Authorization: TargetToken upd_dev_bench_1" "$BASE/DEFAULT/controller/v1/02:00:00:00:00:01")
[[ $answer == *'"sleep"'* && $answer != *deploymentBase* ]] || die "unexpected DDI poll answer: $answer"

WARM=$(( N / 3000 )); ((WARM < 5)) && WARM=5; ((WARM > 60)) && WARM=60
log "Updraft: warm-up (${WARM} s of check-ins, 5 s of DDI polls)"
BENCH_DEVICES=$N wrk -t2 -c64 -d"${WARM}s" -s "$BENCH_DIR/checkin.lua" "$BASE" >"$RAW/warmup.txt" 2>&1
BENCH_DEVICES=$N wrk -t2 -c64 -d5s -s "$BENCH_DIR/ddi.lua" "$BASE" >"$RAW/warmup-ddi.txt" 2>&1
BENCH_DEVICES=$N wrk -t2 -c64 -d"${SECS}s" --latency -s "$BENCH_DIR/checkin.lua" "$BASE" >"$RAW/checkin.txt" 2>&1
BENCH_DEVICES=$N BENCH_ID=mac wrk -t2 -c64 -d"${SECS}s" --latency -s "$BENCH_DIR/ddi.lua" "$BASE" >"$RAW/ddi.txt" 2>&1
C=$(rps_of "$RAW/checkin.txt") D=$(rps_of "$RAW/ddi.txt")
CE=$(errors_of "$RAW/checkin.txt") DE=$(errors_of "$RAW/ddi.txt")
RATIO=$(calc "$D / $C" 2)
log "Updraft, $N devices: check-in $C req/s ($CE errors), DDI poll $D req/s ($DE errors, p99 $(p99_of "$RAW/ddi.txt") ms), ratio $RATIO"
result ddi "Updraft, $N devices: native check-in req/s | DDI poll req/s | errors" "$C | $D | $((CE + DE))" "-" "$( ((CE + DE == 0)) && echo - || echo FAIL)"
result ddi "Updraft, $N devices: DDI poll p99 latency, unpaced (ms)" "$(p99_of "$RAW/ddi.txt")" "-" "-"
result ddi "Updraft, $N devices: DDI poll / native check-in throughput" "$RATIO" ">= 0.50" "$(pass_if "$RATIO >= 0.5")"
stop_pid "$SERVER_PID"

# ---- gooseBit ----
GB=$REPO_DIR/target/bench-goosebit
if [[ ! -x $GB/venv/bin/uvicorn ]] || ! "$GB/venv/bin/python" -c 'import goosebit' >/dev/null 2>&1; then
  log "installing goosebit (pip, in $GB/venv)"
  rm -rf "$GB/venv" && mkdir -p "$GB"
  python3 -m venv "$GB/venv"
  "$GB/venv/bin/pip" install -q goosebit >"$RAW/pip.log" 2>&1 || die "pip install goosebit failed (see $RAW/pip.log)"
fi
GB_VERSION=$("$GB/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("goosebit"))')
SITE=$("$GB/venv/bin/python" -c 'import goosebit, os; print(os.path.dirname(goosebit.__file__))')
bench_tmpdir
GB_DIR=$TMP/gb
mkdir -p "$GB_DIR/artifacts"
cat >"$GB_DIR/aerich.toml" <<TOML
[tool.aerich]
tortoise_orm = "goosebit.db.config.TORTOISE_CONF"
location = "$SITE/db/migrations"
src_folder = "./."
TOML
export GOOSEBIT_DB_URI="sqlite://$GB_DIR/db.sqlite3" GOOSEBIT_ARTIFACTS_DIR="$GB_DIR/artifacts" GOOSEBIT_DEVICE_AUTH__ENABLE=true
(cd "$GB_DIR" && "$GB/venv/bin/aerich" --config aerich.toml upgrade) >"$RAW/goosebit-migrate.log" 2>&1 || die "aerich upgrade failed (see $RAW/goosebit-migrate.log)"

start_goosebit() {
  local mode=$1
  (cd "$GB_DIR" && exec env GOOSEBIT_DEVICE_AUTH__MODE="$mode" "$GB/venv/bin/uvicorn" goosebit:app --host 127.0.0.1 --port "$GB_PORT" \
    --workers 1 --no-access-log --log-level warning) >>"$RAW/goosebit.log" 2>&1 9>&- &
  GB_PID=$!
  BENCH_PIDS+=("$GB_PID")
  local i
  for ((i = 0; i < 600; i++)); do
    kill -0 "$GB_PID" 2>/dev/null || die "gooseBit exited during startup (see $RAW/goosebit.log)"
    # Any answer will do (its UI redirects while no user is set up).
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GB_PORT/login") != 000 ]] && return 0
    sleep 0.1
  done
  die "gooseBit did not start"
}
GB_PORT=$(free_port)
log "gooseBit $GB_VERSION: registering $GB_N devices (setup mode)"
start_goosebit setup
seq 1 "$GB_N" | xargs -P 8 -I{} curl -s -o /dev/null -H 'Authorization: TargetToken gb-token-{}' \
  "http://127.0.0.1:$GB_PORT/DEFAULT/controller/v1/bench-{}"
stop_pid "$GB_PID"
start_goosebit strict
GB_BASE=http://127.0.0.1:$GB_PORT
answer=$(curl -s -H 'Authorization: TargetToken gb-token-1' "$GB_BASE/DEFAULT/controller/v1/bench-1")
[[ $answer == *'"sleep"'* ]] || die "unexpected gooseBit poll answer: $answer"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: TargetToken wrong' "$GB_BASE/DEFAULT/controller/v1/bench-1")
[[ $code == 401 ]] || die "gooseBit accepted a wrong token ($code): not in strict mode"
BENCH_DEVICES=$GB_N BENCH_ID=name wrk -t2 -c64 -d5s -s "$BENCH_DIR/ddi.lua" "$GB_BASE" >"$RAW/goosebit-warmup.txt" 2>&1
BENCH_DEVICES=$GB_N BENCH_ID=name wrk -t2 -c64 -d"${SECS}s" --latency -s "$BENCH_DIR/ddi.lua" "$GB_BASE" >"$RAW/goosebit.txt" 2>&1
G=$(rps_of "$RAW/goosebit.txt") GE=$(errors_of "$RAW/goosebit.txt")
stop_pid "$GB_PID"
VS=$(calc "$D / $G" 1)
log "gooseBit $GB_VERSION, $GB_N devices: DDI poll $G req/s ($GE errors, p99 $(p99_of "$RAW/goosebit.txt") ms); Updraft/gooseBit $VS"
result ddi "gooseBit $GB_VERSION (SQLite, 1 worker), $GB_N devices: DDI poll req/s | errors | p99 (ms)" "$G | $GE | $(p99_of "$RAW/goosebit.txt")" "-" "-"
result ddi "DDI poll req/s: Updraft at $N devices / gooseBit at $GB_N devices" "$VS" "-" "-"
