#!/usr/bin/env bash
# The simulator as the load (`updraft simulate`, native HTTP devices), two figures:
#   1. 50,000 simulated polling devices (poll 60 s) for SIMULATE_SECONDS: the simulator's own
#      peak RSS (target < 100 MiB) and the server's, with the check-ins it served;
#   2. 10,000 devices through a 4-stage rollout (1 %, 10 %, 50 %, 100 %, no soak, default
#      thresholds, devices poll every 10 s): time from the rollout's start to `completed`, the
#      server's peak RSS meanwhile, and the simulator's report (succeeded/failed).
# Server and simulator share the machine (2 cores here); the server is a fresh one each time.
#
#   bench/simulate.sh
#   SIMULATE_QUICK=1 bench/simulate.sh     # 1,000 devices each, 20 s: proves the script works
#   SIMULATE_DEVICES=50000 SIMULATE_ROLLOUT_DEVICES=10000 SIMULATE_SECONDS=120 bench/simulate.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

if [[ -n "${SIMULATE_QUICK:-}" ]]; then
  DEVICES=${SIMULATE_DEVICES:-1000} ROLLOUT_DEVICES=${SIMULATE_ROLLOUT_DEVICES:-1000} SECONDS_RUN=${SIMULATE_SECONDS:-20}
else
  DEVICES=${SIMULATE_DEVICES:-50000} ROLLOUT_DEVICES=${SIMULATE_ROLLOUT_DEVICES:-10000} SECONDS_RUN=${SIMULATE_SECONDS:-120}
fi
BIN=$(updraft_bin)
need_tools curl python3
RAW=$OUT_DIR/simulate
rm -rf "$RAW" && mkdir -p "$RAW"
echo "loadavg at start: $(cat /proc/loadavg)" >"$RAW/info.txt"

api() { curl -sS -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' "$@"; }

# Samples VmRSS of PID every second into FILE ("seconds rss_kb") until it exits.
sample_rss() {
  local pid=$1 file=$2 start=$SECONDS kb
  while kill -0 "$pid" 2>/dev/null; do
    kb=$(proc_kb "$pid" VmRSS 2>/dev/null || true)
    [[ -n "$kb" ]] && echo "$((SECONDS - start)) $kb" >>"$file"
    sleep 1
  done
}

# start_simulator LOG ARGS...: sets SIM_PID.
start_simulator() {
  local logfile=$1
  shift
  "$BIN" simulate --server "http://127.0.0.1:$PORT" --mqtt "127.0.0.1:$MQTT_PORT" --summary-every 10s "$@" >"$logfile" 2>&1 9>&- &
  SIM_PID=$!
  BENCH_PIDS+=("$SIM_PID")
}

new_server() {
  bench_tmpdir
  PORT=$(free_port) MQTT_PORT=$(free_port)
  BENCH_MQTT_PORT=$MQTT_PORT start_updraft "$BIN" "$PORT" "$TMP/data" "$1"
  wait_ready "$PORT" "$SERVER_PID"
}

# ---- 1. many polling devices: the simulator's memory ----
log "simulate: $DEVICES devices polling every 60 s for $SECONDS_RUN s"
new_server "$RAW/server-fleet.log"
start_simulator "$RAW/simulator-fleet.log" --devices "$DEVICES" --product fleet --poll 60s --duration "${SECONDS_RUN}s" \
  --report "$RAW/fleet-report.json" --concurrency 128
sample_rss "$SIM_PID" "$RAW/simulator-fleet-rss.txt" &
SAMPLER=$!
sample_rss "$SERVER_PID" "$RAW/server-fleet-rss.txt" &
wait "$SIM_PID" || die "the simulator failed: $(tail -n 3 "$RAW/simulator-fleet.log")"
SIM_HWM=$(awk '{ if ($2 > m) m = $2 } END { print m + 0 }' "$RAW/simulator-fleet-rss.txt")
SERVER_FLEET_RSS=$(proc_kb "$SERVER_PID" VmRSS)
SERVER_FLEET_HWM=$(proc_kb "$SERVER_PID" VmHWM)
stop_pid "$SERVER_PID"
wait "$SAMPLER" 2>/dev/null || true
REGISTERED=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(1 for d in r["device_reports"] if d["device_id"]), r["requests"], sum(r["errors"].values()))' "$RAW/fleet-report.json")
read -r PROVISIONED REQUESTS ERRORS <<<"$REGISTERED"
result simulate "simulator peak RSS, $DEVICES devices polling (MiB)" "$(calc "$SIM_HWM / 1024" 1)" "< 100" "$(pass_if "$SIM_HWM < 102400")"
result simulate "server RSS with $DEVICES simulated polling devices, end | peak (MiB)" "$(calc "$SERVER_FLEET_RSS / 1024" 1) | $(calc "$SERVER_FLEET_HWM / 1024" 1)" "-" "-"
result simulate "devices provisioned | requests | errors in $SECONDS_RUN s" "$PROVISIONED | $REQUESTS | $ERRORS" "-" "-"

# ---- 2. a rollout with the simulator as the fleet ----
log "simulate: $ROLLOUT_DEVICES devices through a 4-stage rollout"
BENCH_SERVER_ENV=(UPDRAFT_ROLLOUT_EVALUATE_SECS=1 UPDRAFT_ROLLOUT_RECOUNT_SECS=1)
new_server "$RAW/server-rollout.log"
head -c $((256 * 1024)) /dev/urandom >"$TMP/fw.bin"
curl -sS -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' -X POST --data-binary @"$TMP/fw.bin" \
  "http://127.0.0.1:$PORT/api/v1/firmware?product=bench-rollout&version=2.0.0&hardware=esp32" >"$RAW/artifact.json"
ARTIFACT=$(json_field "$RAW/artifact.json" id)
api -X POST -d "{\"product\":\"bench-rollout\",\"version\":\"2.0.0\",\"artifact_ids\":[\"$ARTIFACT\"]}" \
  "http://127.0.0.1:$PORT/api/v1/releases" >"$RAW/release.json"
RELEASE=$(json_field "$RAW/release.json" id)
start_simulator "$RAW/simulator-rollout.log" --devices "$ROLLOUT_DEVICES" --product bench-rollout --poll 10s \
  --report "$RAW/rollout-report.json"
for ((i = 0; i < 600; i++)); do
  total=$(api "http://127.0.0.1:$PORT/api/v1/devices/summary?product=bench-rollout" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  ((total >= ROLLOUT_DEVICES)) && break
  kill -0 "$SIM_PID" 2>/dev/null || die "the simulator exited: $(tail -n 3 "$RAW/simulator-rollout.log")"
  sleep 1
done
((total >= ROLLOUT_DEVICES)) || die "only $total of $ROLLOUT_DEVICES devices registered"
reset_hwm "$SERVER_PID" || true
STAGES='[{"percent":1,"min_soak_s":0},{"percent":10,"min_soak_s":0},{"percent":50,"min_soak_s":0},{"percent":100,"min_soak_s":0}]'
START=$(now)
api -X POST -d "{\"release_id\":\"$RELEASE\",\"stages\":$STAGES,\"start\":true}" "http://127.0.0.1:$PORT/api/v1/rollouts" >"$RAW/rollout.json"
ROLLOUT=$(json_field "$RAW/rollout.json" id)
state=running
for ((i = 0; i < 1200; i++)); do
  api "http://127.0.0.1:$PORT/api/v1/rollouts/$ROLLOUT" >"$RAW/rollout-status.json"
  state=$(json_field "$RAW/rollout-status.json" state)
  [[ $state == running ]] || break
  sleep 0.5
done
ELAPSED=$(calc "$(now) - $START" 1)
SERVER_ROLLOUT_HWM=$(proc_kb "$SERVER_PID" VmHWM)
SIM_ROLLOUT_HWM=$(proc_kb "$SIM_PID" VmHWM)
stop_pid "$SIM_PID"
read -r SUCCEEDED FAILED <<<"$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["counts"]; print(c["succeeded"], c["failed"])' "$RAW/rollout-status.json")"
result simulate "$ROLLOUT_DEVICES devices through 4 stages (poll 10 s): start -> $state (s)" "$ELAPSED" "-" "$([[ $state == completed ]] && echo OK || echo FAIL)"
result simulate "server peak RSS during that rollout (MiB)" "$(calc "$SERVER_ROLLOUT_HWM / 1024" 1)" "-" "-"
result simulate "succeeded | failed at completion | simulator peak RSS (MiB)" "$SUCCEEDED | $FAILED | $(calc "$SIM_ROLLOUT_HWM / 1024" 1)" "-" "-"
