#!/usr/bin/env bash
# Check-in benchmark (the devices issue): authenticated check-ins against a trivial
# GET /api/health on the same server, same run, 64 connections.
#
# For each fleet size (CHECKIN_SIZES, default "1000 100000 1000000"): seed that many devices
# into a fresh SQLite database (bench/checkin_seed.py), start the server, warm up, then
#   - wrk -t2 -c64 on /api/health            -> health req/s
#   - wrk -t2 -c64 on random devices' GET /api/v1/device/checkin?version=1.0.0 -> check-in req/s
# At 100,000 devices also: check-ins paced at half the health rate, with wrk's latency
# percentiles (p99 target < 10 ms).
# Memory: the server's RSS sampled every second during the measured check-in run (after the
# warm-up, with the flood running; the highest sample), less the idle RSS of the same binary
# (the first start of each size, on an empty data dir, 2 s after ready), per device.
# Targets: check-in >= 50% of health at 100,000 devices; check-in cost flat from 1,000 to
# 1,000,000 devices (req/s ratio < 1.3); <= 256 bytes per device at 100,000 and 1,000,000.
#
#   CHECKIN_SIZES="1000 100000" CHECKIN_SECONDS=15 bench/checkin.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SIZES=${CHECKIN_SIZES:-"1000 100000 1000000"}
SECS=${CHECKIN_SECONDS:-15}
BIN=$(updraft_bin)
need_tools wrk python3 curl
RAW=$OUT_DIR/checkin
rm -rf "$RAW" && mkdir -p "$RAW"
LUA=$BENCH_DIR/checkin.lua

rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
p99_of() { awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }; print v }' "$1"; }
errors_of() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' "$1"; }

declare -A CHECKIN_RPS
for n in $SIZES; do
  bench_tmpdir
  PORT=$(free_port)
  DATA=$TMP/data
  log "fleet of $n devices: creating the schema and one build"
  start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server-$n.log"
  wait_ready "$PORT" "$SERVER_PID"
  sleep 2
  IDLE_KB=$(proc_kb "$SERVER_PID" VmRSS)
  head -c 100000 /dev/urandom >"$TMP/fw.bin"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$TMP/fw.bin" "http://127.0.0.1:$PORT/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32")
  [[ $code == 201 ]] || die "upload answered $code"
  stop_pid "$SERVER_PID"
  python3 "$BENCH_DIR/checkin_seed.py" "$DATA/updraft.db" "$n" 2>>"$RAW/seed.log"
  start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server-$n.log"
  wait_ready "$PORT" "$SERVER_PID"
  BASE=http://127.0.0.1:$PORT
  # Sanity: one check-in answers 200 with no update (every device runs 1.0.0).
  answer=$(curl -s -H "Authorization: Bearer upd_dev_bench_1" "$BASE/api/v1/device/checkin?version=1.0.0")
  [[ $answer == *'"update":null'* ]] || die "unexpected check-in answer: $answer"

  # Warm up long enough for about every device to check in several times, 5 s at least, 330 s
  # at most. At 1,000,000 devices that is longer than one presence period (half of the 600 s
  # offline period), so the measured window carries the steady-state `last_seen` writes
  # (about 1/300 s of the devices per second), not the lull before the first ones fall due.
  WARM=$(( n / 3000 )); ((WARM < 5)) && WARM=5; ((WARM > 330)) && WARM=330
  log "warm-up (${WARM} s)"
  BENCH_DEVICES=$n wrk -t2 -c64 -d"${WARM}s" -s "$LUA" "$BASE" >"$RAW/warmup-$n.txt" 2>&1
  wrk -t2 -c64 -d"${SECS}s" --latency "$BASE/api/health" >"$RAW/health-$n.txt" 2>&1
  BENCH_DEVICES=$n wrk -t2 -c64 -d"${SECS}s" --latency -s "$LUA" "$BASE" >"$RAW/checkin-$n.txt" 2>&1 &
  WRK_PID=$!
  FLOOD_KB=0
  while kill -0 "$WRK_PID" 2>/dev/null; do
    kb=$(proc_kb "$SERVER_PID" VmRSS)
    ((kb > FLOOD_KB)) && FLOOD_KB=$kb
    sleep 1
  done
  wait "$WRK_PID"
  H=$(rps_of "$RAW/health-$n.txt") C=$(rps_of "$RAW/checkin-$n.txt")
  CHECKIN_RPS[$n]=$C
  RATIO=$(calc "$C / $H" 2)
  ERR=$(errors_of "$RAW/checkin-$n.txt")
  RSS_MIB=$(calc "$(proc_kb "$SERVER_PID" VmRSS) / 1024" 1)
  result checkin "$n devices: server RSS after the runs (MiB)" "$RSS_MIB" "-" "-"
  PER_DEVICE=$(calc "($FLOOD_KB - $IDLE_KB) * 1024 / $n" 0)
  log "$n devices: idle RSS $(calc "$IDLE_KB / 1024" 1) MiB, RSS under the check-in flood $(calc "$FLOOD_KB / 1024" 1) MiB: $PER_DEVICE bytes per device"
  echo "$n $IDLE_KB $FLOOD_KB $PER_DEVICE" >>"$RAW/memory.txt"
  if ((n >= 100000)); then
    result checkin "$n devices: (RSS under the check-in flood - idle RSS) / devices (bytes)" "$PER_DEVICE" "<= 256" "$(pass_if "$PER_DEVICE <= 256")"
  else
    result checkin "$n devices: (RSS under the check-in flood - idle RSS) / devices (bytes)" "$PER_DEVICE" "-" "-"
  fi
  log "$n devices: health $H req/s, check-in $C req/s (ratio $RATIO), errors $ERR, server RSS $(calc "$(proc_kb "$SERVER_PID" VmRSS) / 1024" 1) MiB"
  result checkin "$n devices: health req/s | check-in req/s | errors" "$H | $C | $ERR" "-" "$( ((ERR == 0)) && echo - || echo FAIL)"
  if [[ $n == 100000 ]]; then
    result checkin "100,000 devices: check-in / health throughput" "$RATIO" ">= 0.50" "$(pass_if "$RATIO >= 0.5")"
    HALF=$(calc "$H / 2" 0)
    BENCH_DEVICES=$n BENCH_RATE=$HALF BENCH_CONNECTIONS=64 wrk -t2 -c64 -d"${SECS}s" --latency -s "$LUA" "$BASE" >"$RAW/paced-$n.txt" 2>&1
    P99=$(p99_of "$RAW/paced-$n.txt") ACHIEVED=$(rps_of "$RAW/paced-$n.txt")
    result checkin "100,000 devices: p99 latency at half the health rate ($HALF req/s asked, $ACHIEVED achieved) (ms)" "$P99" "< 10" "$(pass_if "$P99 < 10")"
  fi
  stop_pid "$SERVER_PID"
done

first=$(echo "$SIZES" | awk '{ print $1 }') last=$(echo "$SIZES" | awk '{ print $NF }')
if [[ $first != "$last" ]]; then
  FLAT=$(calc "${CHECKIN_RPS[$first]} / ${CHECKIN_RPS[$last]}" 2)
  result checkin "check-in req/s at $first devices / at $last devices (cost flatness)" "$FLAT" "< 1.30" "$(pass_if "$FLAT < 1.3")"
fi
