#!/usr/bin/env bash
# Rollout benchmark (the rollouts issue): the check-in benchmark at ROLLOUT_DEVICES devices
# (default 1,000,000) on one server, without rollouts, with ROLLOUT_COUNT (default 10)
# running rollouts, and without again (after cancelling them), in the same run.
#
# The fleet is seeded with tags ring-0 .. ring-9 (bench/checkin_seed.py); rollout k targets
# tag ring-k and hardware esp32 with stages 1%, 10%, 50%, 100% (in stage 1), so every
# check-in evaluates a live rollout (target filter, membership hash, window) and about 1% of
# devices are offered the release (their check-ins read and write update attempts).
# Target: check-in req/s with rollouts >= 0.8 x without (mean of the two runs without).
#
#   ROLLOUT_DEVICES=100000 CHECKIN_SECONDS=15 bench/rollouts.sh
#   ROLLOUT_WARM_AFTER=30: the warm-up (s) after the rollouts start and after they are cancelled
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

N=${ROLLOUT_DEVICES:-1000000}
COUNT=${ROLLOUT_COUNT:-10}
SECS=${CHECKIN_SECONDS:-15}
BIN=$(updraft_bin)
need_tools wrk python3 curl
RAW=$OUT_DIR/rollouts
rm -rf "$RAW" && mkdir -p "$RAW"
LUA=$BENCH_DIR/checkin.lua

rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
errors_of() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' "$1"; }
api() { curl -s -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' "$@"; }

bench_tmpdir
PORT=$(free_port)
DATA=$TMP/data
BASE=http://127.0.0.1:$PORT
log "fleet of $N devices: schema, build 1.0.0, release 2.0.0"
seed_release_fleet "$BIN" "$PORT" "$DATA" "$N" "$COUNT" "$RAW/server.log"
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID" 120
answer=$(curl -s -H "Authorization: Bearer upd_dev_bench_1" "$BASE/api/v1/device/checkin?version=1.0.0")
[[ $answer == *'"update":null'* ]] || die "unexpected check-in answer: $answer"

WARM=$(( N / 5000 )); ((WARM < 5)) && WARM=5; ((WARM > 120)) && WARM=120
# The warm-up after the rollouts start, and after they are cancelled (every device's offer
# changes at each: its first check-ins then compute it).
WARM_AFTER=${ROLLOUT_WARM_AFTER:-30}
run() { # run LABEL WARM_S
  log "$1: warm-up ($2 s), then ${SECS} s of check-ins"
  BENCH_DEVICES=$N wrk -t2 -c64 -d"$2s" -s "$LUA" "$BASE" >"$RAW/warmup-$1.txt" 2>&1
  BENCH_DEVICES=$N wrk -t2 -c64 -d"${SECS}s" --latency -s "$LUA" "$BASE" >"$RAW/checkin-$1.txt" 2>&1
  log "$1: $(rps_of "$RAW/checkin-$1.txt") req/s, errors $(errors_of "$RAW/checkin-$1.txt")"
}

run without "$WARM"
started=$(now)
start_ring_rollouts "$PORT" "$RELEASE" "$COUNT"
CREATE_S=$(calc "$(now) - $started" 1)
log "$COUNT rollouts created and started in $CREATE_S s (each start counts its target: a scan of the fleet)"
run with "$WARM_AFTER"
for id in "${ROLLOUTS[@]}"; do
  api -o /dev/null -X POST "$BASE/api/v1/rollouts/$id/cancel"
done
run after "$WARM_AFTER"
OFFERED=$(api "$BASE/api/v1/rollouts/${ROLLOUTS[0]}" | python3 -c 'import json,sys; c = json.load(sys.stdin)["counts"]; print(sum(v for k, v in c.items() if k != "pending"))')
stop_pid "$SERVER_PID"

A=$(rps_of "$RAW/checkin-without.txt") B=$(rps_of "$RAW/checkin-with.txt") C=$(rps_of "$RAW/checkin-after.txt")
ERR=$(( $(errors_of "$RAW/checkin-without.txt") + $(errors_of "$RAW/checkin-with.txt") + $(errors_of "$RAW/checkin-after.txt") ))
RATIO=$(calc "$B / (($A + $C) / 2)" 2)
result rollouts "$N devices: check-in req/s without | with $COUNT rollouts | without again (errors)" "$A | $B | $C ($ERR)" "-" "$( ((ERR == 0)) && echo - || echo FAIL)"
result rollouts "$COUNT rollouts: creating and starting them (s); devices offered by rollout 1" "$CREATE_S; $OFFERED" "-" "-"
result rollouts "check-in req/s with $COUNT rollouts / without" "$RATIO" ">= 0.80" "$(pass_if "$RATIO >= 0.8")"
