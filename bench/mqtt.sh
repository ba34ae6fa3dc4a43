#!/usr/bin/env bash
# MQTT benchmark (issue 6): Updraft's embedded broker against Mosquitto, same machine, same run.
# Figures only; nothing here asserts. The load comes from bench/mqtt-load (a standalone Rust
# package: raw tokio sockets and a tiny MQTT 3.1.1 codec, so 10,000 client connections are cheap).
#
#  1. Idle sessions: MQTT_DEVICES (10,000) devices, each logged in with its own device token
#     (username = device id, password = token), each subscribed to updraft/{id}/ota at QoS 1,
#     held open MQTT_HOLD_SECS. Server VmRSS before connecting, with every session held
#     (target < 300 MiB), per-session cost, peak while connecting. Mosquitto with as many
#     anonymous sessions is the reference. Every second of the hold the VmRSS is read; the
#     highest reading counts.
#  2. OTA push: the same sessions, then one trigger (a new firmware build for product `bench`,
#     see trigger_ota below) makes the server publish updraft/{id}/ota to every device. Time
#     from the trigger to the last device's live (retain = 0) message (target < 2 s), p50/p99
#     per device, devices that got nothing within MQTT_PUSH_TIMEOUT. Reference: Mosquitto
#     with one client publishing the 10,000 messages (mqtt-load publish-each).
#  3. Publish throughput, QoS 1, MQTT_SIZE (64) byte payloads, MQTT_PUBLISHERS (100)
#     publishers, each keeping at most MQTT_WINDOW (20) publishes unacknowledged.
#     MQTT_PUB_MODE=pair (default): publisher i publishes to its own topic, which exactly one
#     subscriber connection (QoS 1, PUBACKs every delivery) receives: 200 connections, every
#     message delivered once. `self`: each publisher subscribes to its own topic (100
#     connections). `wildcard`: MQTT_SUBSCRIBERS connections on one wildcard (bounded by the
#     broker's per-subscriber inflight window, so not the default). The setup (client ids,
#     credentials, topics, window) is identical for both brokers; MQTT_PUB_RUNS (3) runs of
#     MQTT_PUB_SECONDS (10) s each after 3 s of warm-up, alternating brokers; the median of
#     delivered msgs/s is compared (target Updraft / Mosquitto >= 0.5). Besides, over every
#     run: the QoS 1 messages a publisher got a PUBACK for that no subscriber received
#     (acked_total - delivered_total of mqtt-load, both brokers), and Updraft's
#     updraft_mqtt_messages_dropped_total (target 0 for both).
#
#   bench/mqtt.sh                                   # Mosquitto only (UPDRAFT_BIN unset)
#   UPDRAFT_BIN=target/release/updraft bench/mqtt.sh
#   MQTT_DEVICES=2000 MQTT_PUB_SECONDS=5 bench/mqtt.sh
#   BENCH_WAIT_QUIET=600 bench/mqtt.sh               # first wait up to 600 s for idle CPUs
#
# Unlike the other benchmarks this one does not build updraft itself: without UPDRAFT_BIN only
# the Mosquitto parts run (bench/run.sh always sets UPDRAFT_BIN). Raw JSON lines of every
# measurement go to bench/out/mqtt/results.jsonl, the figures to bench/out/results.tsv.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

DEVICES=${MQTT_DEVICES:-10000}
HOLD=${MQTT_HOLD_SECS:-15}
((HOLD >= 5)) || HOLD=5 # the RSS is read every second while the sessions are held
PUSH_TIMEOUT=${MQTT_PUSH_TIMEOUT:-30}
PUBLISHERS=${MQTT_PUBLISHERS:-100}
PUB_MODE=${MQTT_PUB_MODE:-pair}
SUBSCRIBERS=${MQTT_SUBSCRIBERS:-1}
PUB_SECONDS=${MQTT_PUB_SECONDS:-10}
PUB_RUNS=${MQTT_PUB_RUNS:-3}
WINDOW=${MQTT_WINDOW:-20}
SIZE=${MQTT_SIZE:-64}
# Topic of publisher i in the throughput test ({i} index, {u} username = device id, {c} client
# id). Must be a topic Updraft's ACL lets a device publish to and another device (pair mode)
# or the same device (self mode) subscribe to; change it here if the broker's ACL refuses it.
PUB_TOPIC=${MQTT_PUB_TOPIC:-'bench/{i}'}
CONCURRENCY=${MQTT_CONNECT_CONCURRENCY:-200}

RAW=$OUT_DIR/mqtt
rm -rf "$RAW" && mkdir -p "$RAW"
# This run's rows replace the previous run's (bench/run.sh does the same before it starts us).
touch "$RESULTS"
awk -F'\t' '$1 != "mqtt"' "$RESULTS" >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
JSONL=$RAW/results.jsonl
need_tools mosquitto python3 curl

# 10,000 client sockets in mqtt-load, as many in the broker (they inherit this limit).
need_fds=$((DEVICES + 2048))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= need_fds)) || die "ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)); $need_fds file descriptors are needed"
log "ulimit -n $(ulimit -n)"

# ---------------------------------------------------------------- the load tool
LOAD_TARGET=${MQTT_LOAD_TARGET:-/tmp/mqtt-load-target}
log "building bench/mqtt-load (release, target dir $LOAD_TARGET)"
CARGO_TARGET_DIR=$LOAD_TARGET cargo build --release --quiet --manifest-path "$BENCH_DIR/mqtt-load/Cargo.toml" >&2 ||
  die "building bench/mqtt-load failed"
LOAD=$LOAD_TARGET/release/mqtt-load

# record NAME JSON: keeps one raw result.
record() { printf '{"bench":"%s","result":%s}\n' "$1" "$2" >>"$JSONL"; }
# jget JSON KEY: one field of a JSON line.
jget() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("-" if v is None else v)' "$1" "$2"; }
mib() { calc "$1 / 1024" 1; }

# ---------------------------------------------------------------- brokers

# start_mosquitto LOGFILE -> MOSQ_PORT, MOSQ_PID. Stock settings but for: loopback only,
# anonymous, no connection limit, no persistence, a queue long enough that no QoS 1 message is
# dropped, and TCP_NODELAY (as the embedded broker's sockets).
start_mosquitto() {
  MOSQ_PORT=$(free_port)
  cat >"$TMP/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
max_queued_messages 100000
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
  mosquitto -c "$TMP/mosquitto.conf" >"$1" 2>&1 9>&- &
  MOSQ_PID=$!
  BENCH_PIDS+=("$MOSQ_PID")
  local i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$MOSQ_PID" 2>/dev/null || die "mosquitto exited at startup: $(cat "$1")"
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$MOSQ_PORT" 2>/dev/null && return 0
    sleep 0.05
  done
  die "mosquitto did not listen on $MOSQ_PORT"
}

# start_updraft_mqtt BIN DATA_DIR LOG -> HTTP_PORT, MQTT_PORT, SERVER_PID. As lib.sh's
# start_updraft, plus UPDRAFT_MQTT_LISTEN and the KEY=VALUE words of $MQTT_SERVER_ENV (e.g.
# MQTT_SERVER_ENV="UPDRAFT_MQTT_FOO=1 UPDRAFT_LOG=info").
start_updraft_mqtt() {
  local bin=$1 data=$2 logfile=$3 unset_args=() name
  while IFS= read -r name; do unset_args+=(-u "$name"); done < <(env | sed -n 's/^\(UPDRAFT_[A-Za-z0-9_]*\)=.*/\1/p')
  HTTP_PORT=${HTTP_PORT:-$(free_port)}
  MQTT_PORT=${MQTT_PORT:-$(free_port)}
  mkdir -p "$data"
  # shellcheck disable=SC2086 # MQTT_SERVER_ENV is split into words on purpose
  (
    cd "$(dirname -- "$data")" &&
      exec env "${unset_args[@]}" UPDRAFT_ADMIN_API_KEY="$BENCH_KEY" UPDRAFT_LOG=warn \
        UPDRAFT_LISTEN="127.0.0.1:$HTTP_PORT" UPDRAFT_MQTT_LISTEN="127.0.0.1:$MQTT_PORT" \
        ${MQTT_SERVER_ENV:-} "$bin" serve --listen "127.0.0.1:$HTTP_PORT" --data-dir "$data"
  ) >>"$logfile" 2>&1 9>&- &
  SERVER_PID=$!
  BENCH_PIDS+=("$SERVER_PID")
  wait_ready "$HTTP_PORT" "$SERVER_PID" 60
  local i
  for ((i = 0; i < 200; i++)); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$MQTT_PORT" 2>/dev/null && return 0
    sleep 0.05
  done
  die "updraft is ready on HTTP port $HTTP_PORT but nothing listens on MQTT port $MQTT_PORT (UPDRAFT_MQTT_LISTEN)"
}

# ---------------------------------------------------------------- Updraft specifics

# provision N CREDS_FILE: registers N devices of product `bench` (hardware esp32, reported
# version 1.0.0) with a token each (POST /api/v1/devices, issue_token), 32 requests at once.
# Writes `client_id username password` = `id id token` per device.
provision() {
  python3 - "$HTTP_PORT" "$BENCH_KEY" "$1" "$2" <<'PY'
import http.client, json, sys, threading
from concurrent.futures import ThreadPoolExecutor
port, key, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
local = threading.local()
def create(i):
    if not hasattr(local, "c"):
        local.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    mac = "02:00:%02X:%02X:%02X:%02X" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255, i & 255)
    body = json.dumps({"mac": mac, "name": "bench-%d" % i, "product": "bench", "hardware": "esp32",
                       "version": "1.0.0", "issue_token": True})
    local.c.request("POST", "/api/v1/devices", body, {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = local.c.getresponse()
    data = r.read()
    if r.status != 201:
        raise SystemExit("POST /api/v1/devices answered %d: %s" % (r.status, data[:300]))
    d = json.loads(data)
    return "%s %s %s" % (d["id"], d["id"], d["token"])
with ThreadPoolExecutor(32) as pool:
    lines = list(pool.map(create, range(n)))
open(out, "w").write("\n".join(lines) + "\n")
PY
}

# ---- THE PUSH TRIGGER -----------------------------------------------------------------------
# trigger_ota: one API call after which the server publishes updraft/{id}/ota to every
# connected device of product `bench`. Now: upload a build 2.0.0 (hardware esp32) of product
# `bench`, newer than the 1.0.0 every device reported. Change only this function if the
# broker's trigger turns out different (a pin, a release, a rollout).
trigger_ota() {
  head -c 4096 /dev/urandom >"$TMP/fw-2.0.0.bin"
  curl -sS -o "$RAW/trigger-answer.json" -w '%{http_code}' \
    -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$TMP/fw-2.0.0.bin" \
    "http://127.0.0.1:$HTTP_PORT/api/v1/firmware?product=bench&version=2.0.0&hardware=esp32"
}
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------- measurements

# wait_file FILE PID SECONDS: waits for FILE while PID lives.
wait_file() {
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [[ -s $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# idle_sessions NAME PORT PID CREDS: opens the sessions, reads the broker's RSS before, at the
# peak while connecting, and while they are held. Sets IDLE_JSON, RSS_BEFORE, RSS_HELD, RSS_PEAK (kB).
idle_sessions() {
  local name=$1 port=$2 pid=$3 creds=$4 ready=$TMP/ready-$1 out=$RAW/idle-$1.json lp
  rm -f "$ready"
  RSS_BEFORE=$(proc_kb "$pid" VmRSS)
  reset_hwm "$pid" || true
  "$LOAD" idle --port "$port" --creds "$creds" --hold "$HOLD" --concurrency "$CONCURRENCY" \
    --ready-file "$ready" >"$out" 2>"$RAW/idle-$name.log" &
  lp=$!
  wait_file "$ready" "$lp" 600 || { wait "$lp" || true; die "$name: mqtt-load idle never got ready (see $RAW/idle-$name.log)"; }
  RSS_PEAK=$(proc_kb "$pid" VmHWM)
  local t samples=()
  for ((t = 0; t < HOLD - 2; t++)); do
    sleep 1
    samples+=("$(proc_kb "$pid" VmRSS)")
  done
  RSS_HELD=$(max_of "${samples[@]}")
  echo "$name VmRSS (kB) every second while held: ${samples[*]}" >>"$RAW/info.txt"
  wait "$lp" || die "$name: mqtt-load idle failed (see $RAW/idle-$name.log)"
  IDLE_JSON=$(cat "$out")
  record "idle-$name" "$IDLE_JSON"
  log "$name idle: $IDLE_JSON"
  log "$name VmRSS before $(mib "$RSS_BEFORE") MiB, with the sessions $(mib "$RSS_HELD") MiB, peak while connecting $(mib "$RSS_PEAK") MiB"
}

# push NAME PORT CREDS TRIGGER_FN: sessions up, then the trigger; sets PUSH_JSON.
push() {
  local name=$1 port=$2 creds=$3 trigger=$4 ready=$TMP/push-ready-$1 start=$TMP/push-start-$1 out=$RAW/push-$1.json lp code
  rm -f "$ready" "$start"
  "$LOAD" push-wait --port "$port" --creds "$creds" --concurrency "$CONCURRENCY" --timeout "$PUSH_TIMEOUT" \
    --ready-file "$ready" --start-file "$start" >"$out" 2>"$RAW/push-$name.log" &
  lp=$!
  wait_file "$ready" "$lp" 600 || { wait "$lp" || true; die "$name: mqtt-load push-wait never got ready (see $RAW/push-$name.log)"; }
  sleep 2 # let retained messages of the subscriptions arrive (they do not count anyway)
  now >"$start.tmp" && mv "$start.tmp" "$start"
  code=$("$trigger")
  log "$name: trigger answered $code"
  wait "$lp" || die "$name: mqtt-load push-wait failed (see $RAW/push-$name.log)"
  PUSH_JSON=$(cat "$out")
  record "push-$name" "$PUSH_JSON"
  log "$name push: $PUSH_JSON"
}

# dropped_metric: the embedded broker's updraft_mqtt_messages_dropped_total (all reasons).
dropped_metric() {
  curl -sS "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^updraft_mqtt_messages_dropped_total/ { n += $NF } END { printf "%d", n }'
}

trigger_mosquitto() {
  "$LOAD" publish-each --port "$MOSQ_PORT" --creds "$MOSQ_CREDS" >"$RAW/publish-each.json" 2>>"$RAW/push-mosquitto.log"
  echo "publish-each $(cat "$RAW/publish-each.json")"
}

# pub_run NAME PORT PID [CREDS]: one throughput run; prints delivered msgs/s. The raw record
# adds the broker's CPU use over the whole run (connect, warm-up, measurement, teardown).
pub_run() {
  local name=$1 port=$2 pid=$3 creds=${4:-} args=() json c0 t0 cpu
  [[ -n $creds ]] && args=(--creds "$creds")
  c0=$(cpu_seconds "$pid") t0=$(now)
  json=$("$LOAD" pub --port "$port" --publishers "$PUBLISHERS" --sub-mode "$PUB_MODE" --subscribers "$SUBSCRIBERS" \
    --qos 1 --size "$SIZE" --window "$WINDOW" --seconds "$PUB_SECONDS" --warmup 3 --topic-fmt "$PUB_TOPIC" \
    --client-prefix "bench-$name" "${args[@]}" 2>>"$RAW/pub-$name.log") || die "$name: mqtt-load pub failed (see $RAW/pub-$name.log)"
  cpu=$(calc "100 * ($(cpu_seconds "$pid") - $c0) / ($(now) - $t0)" 0)
  json="${json%\}},\"broker_cpu_pct\":$cpu}"
  # Acknowledged to a publisher and never delivered, over the whole run (each message has one
  # subscriber in pair and self mode); Updraft also counts what its broker dropped.
  echo "$name $(calc "$(jget "$json" acked_total) - $(jget "$json" delivered_total)" 0) $(jget "$json" acked_total)" >>"$RAW/lost.txt"
  record "pub-$name" "$json"
  log "$name pub: $json"
  jget "$json" delivered_per_s
}

# ---------------------------------------------------------------- run
bench_tmpdir
wait_quiet "${BENCH_WAIT_QUIET:-0}"
echo "loadavg at start: $(cat /proc/loadavg)" >"$RAW/info.txt"
mosquitto -h 2>/dev/null | head -n 1 >>"$RAW/info.txt" || true

# Mosquitto: the same client ids/usernames shape as the devices (it ignores the passwords).
MOSQ_CREDS=$TMP/mosquitto-creds.txt
python3 -c 'import sys; print("\n".join("bench-dev-%d bench-dev-%d secret-%d" % (i, i, i) for i in range(int(sys.argv[1]))))' "$DEVICES" >"$MOSQ_CREDS"
start_mosquitto "$RAW/mosquitto.log"
log "mosquitto (pid $MOSQ_PID) on 127.0.0.1:$MOSQ_PORT"

idle_sessions mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$MOSQ_CREDS"
M_OK=$(jget "$IDLE_JSON" connected)
result mqtt "Mosquitto: $M_OK idle sessions: VmRSS before | with the sessions | per session (MiB | MiB | KiB)" \
  "$(mib "$RSS_BEFORE") | $(mib "$RSS_HELD") | $(calc "($RSS_HELD - $RSS_BEFORE) / ($M_OK > 0 ? $M_OK : 1)" 1)" "-" "-"
push mosquitto "$MOSQ_PORT" "$MOSQ_CREDS" trigger_mosquitto
result mqtt "Mosquitto: one client publishes to $(jget "$PUSH_JSON" connected) device topics: last | p50 | p99 delivered (ms), missing" \
  "$(jget "$PUSH_JSON" last_ms) | $(jget "$PUSH_JSON" p50_ms) | $(jget "$PUSH_JSON" p99_ms), $(jget "$PUSH_JSON" missing)" "-" "-"

UPD_CREDS=
if [[ -n "${UPDRAFT_BIN:-}" ]]; then
  BIN=$(updraft_bin)
  DATA=$TMP/updraft/data
  HTTP_PORT='' MQTT_PORT=''
  start_updraft_mqtt "$BIN" "$DATA" "$RAW/server.log"
  log "updraft (pid $SERVER_PID): HTTP 127.0.0.1:$HTTP_PORT, MQTT 127.0.0.1:$MQTT_PORT"
  UPD_CREDS=$TMP/updraft-creds.txt
  t=$(now)
  provision "$DEVICES" "$UPD_CREDS" || die "provisioning the devices failed"
  log "registered $DEVICES devices with tokens in $(calc "$(now) - $t" 1) s"
  # A fresh process for the figures (as after a restart with 10,000 devices in the database).
  stop_pid "$SERVER_PID"
  start_updraft_mqtt "$BIN" "$DATA" "$RAW/server.log"
  sleep 2

  idle_sessions updraft "$MQTT_PORT" "$SERVER_PID" "$UPD_CREDS"
  U_OK=$(jget "$IDLE_JSON" connected)
  U_FAIL=$(jget "$IDLE_JSON" failed)
  U_DROP=$(jget "$IDLE_JSON" dropped)
  result mqtt "Updraft: $U_OK of $DEVICES token-authenticated sessions up in $(jget "$IDLE_JSON" setup_s) s; failures; closed by the server while held" \
    "$U_FAIL $(jget "$IDLE_JSON" failures); $U_DROP" "0; 0" "$( ((U_FAIL == 0 && U_DROP == 0)) && echo PASS || echo FAIL)"
  result mqtt "Updraft: VmRSS before connecting (MiB)" "$(mib "$RSS_BEFORE")" "-" "-"
  result mqtt "Updraft: VmRSS with $U_OK idle sessions (MiB)" "$(mib "$RSS_HELD")" "< 300" "$(pass_if "$RSS_HELD / 1024 < 300 && $U_OK == $DEVICES")"
  result mqtt "Updraft: per session (KiB) | peak VmRSS while connecting (MiB)" \
    "$(calc "($RSS_HELD - $RSS_BEFORE) / ($U_OK > 0 ? $U_OK : 1)" 1) | $(mib "$RSS_PEAK")" "-" "-"

  push updraft "$MQTT_PORT" "$UPD_CREDS" trigger_ota

  # Throughput clients: devices may only use their own topic tree, so the broker comparison
  # uses an operator credential with the `admin` role (ACL-checked, not a superuser) on the
  # same bench/{i} topics as Mosquitto's anonymous clients.
  code=$(curl -sS -o "$RAW/mqtt-user.json" -w '%{http_code}' -X PUT -H "Authorization: Bearer $BENCH_KEY" \
    -H 'content-type: application/json' -d '{"password": "bench-admin-password", "role": "admin"}' \
    "http://127.0.0.1:$HTTP_PORT/api/v1/mqtt/users/bench-admin")
  [[ $code == 200 || $code == 201 ]] || die "creating the MQTT admin credential answered $code"
  UPD_PUB_CREDS=$TMP/updraft-pub-creds.txt
  for ((i = 0; i < 2 * PUBLISHERS + 50; i++)); do echo "bench-updraft-$i bench-admin bench-admin-password"; done >"$UPD_PUB_CREDS"
  LAST=$(jget "$PUSH_JSON" last_ms) MISSING=$(jget "$PUSH_JSON" missing)
  result mqtt "Updraft: ota push to $(jget "$PUSH_JSON" connected) devices: trigger -> last device (ms)" \
    "$LAST" "< 2000" "$( [[ $LAST != - && $MISSING == 0 ]] && pass_if "$LAST < 2000" || echo FAIL)"
  result mqtt "Updraft: ota push: p50 | p99 per device (ms), devices with nothing after ${PUSH_TIMEOUT} s" \
    "$(jget "$PUSH_JSON" p50_ms) | $(jget "$PUSH_JSON" p99_ms), $MISSING" "0 missing" "$( ((MISSING == 0)) && echo PASS || echo FAIL)"
else
  log "UPDRAFT_BIN not set: Mosquitto figures only"
fi

# Throughput: alternate the brokers run by run.
wait_quiet "${BENCH_WAIT_QUIET:-0}"
[[ -n $UPD_CREDS ]] && U_DROPPED_BEFORE=$(dropped_metric)
log "throughput: $PUBLISHERS publishers, mode $PUB_MODE, QoS 1, $SIZE B, window $WINDOW, $PUB_RUNS x $PUB_SECONDS s"
m_rates=() u_rates=()
for ((run = 1; run <= PUB_RUNS; run++)); do
  m_rates+=("$(pub_run mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$MOSQ_CREDS")")
  if [[ -n $UPD_CREDS ]]; then
    u_rates+=("$(pub_run updraft "$MQTT_PORT" "$SERVER_PID" "$UPD_PUB_CREDS")")
  fi
done
M_RATE=$(median "${m_rates[@]}")
# lost_of NAME: "not delivered of acknowledged", summed over the runs.
lost_of() { awk -v n="$1" '$1 == n { l += $2; a += $3 } END { printf "%d of %d", l, a }' "$RAW/lost.txt"; }
SETUP_DESC="$PUBLISHERS publishers, $PUB_MODE, QoS 1, $SIZE B, window $WINDOW"
result mqtt "Mosquitto: delivered msgs/s ($SETUP_DESC), median of $PUB_RUNS (runs: ${m_rates[*]})" "$M_RATE" "-" "-"
result mqtt "Mosquitto: QoS 1 messages acknowledged and not delivered, all runs" "$(lost_of mosquitto)" "-" "-"
if ((${#u_rates[@]})); then
  U_RATE=$(median "${u_rates[@]}")
  result mqtt "Updraft: delivered msgs/s ($SETUP_DESC), median of $PUB_RUNS (runs: ${u_rates[*]})" "$U_RATE" "-" "-"
  U_LOST=$(lost_of updraft)
  U_DROPPED=$(($(dropped_metric) - U_DROPPED_BEFORE))
  curl -sS "http://127.0.0.1:$HTTP_PORT/metrics" | grep '^updraft_mqtt_messages_dropped_total' >>"$RAW/info.txt" || true
  result mqtt "Updraft: QoS 1 messages acknowledged and not delivered, all runs; updraft_mqtt_messages_dropped_total during them" \
    "$U_LOST; $U_DROPPED" "0" "$( [[ ${U_LOST%% *} == 0 && $U_DROPPED == 0 ]] && echo PASS || echo FAIL)"
  RATIO=$(calc "$U_RATE / ($M_RATE > 0 ? $M_RATE : 1)" 2)
  result mqtt "Updraft / Mosquitto publish throughput" "$RATIO" ">= 0.50" "$(pass_if "$RATIO >= 0.5")"
fi
echo "loadavg at end: $(cat /proc/loadavg)" >>"$RAW/info.txt"

# Summary of this benchmark's rows.
echo >&2
awk -F'\t' '$1 == "mqtt" { printf "%-110s  %-28s  %-10s  %s\n", $2, $3, $4, $5 }' "$RESULTS" >&2
