#!/usr/bin/env bash
# Hot paths (issue 13): server CPU per request of the requests devices send all day, against
# an up-to-date native check-in on the same server, in the same run.
#
# One release server, HOTPATHS_DEVICES (default 1,000) devices of product `bench` on 1.0.0
# (bench/checkin_seed.py: token upd_dev_bench_<i>, MAC 02:..:<i>), hardware esp32, for which
# only 1.0.0 exists, and as many more on hardware esp32s3, for which a build 2.0.0 exists
# (they are offered it). Every device 1..N has a seed-003 configuration (a product layer and
# its own document with one secret). The seed-001 shared secret is set. Then, one after the
# other, each scenario gets a warm-up and a measured `wrk -t2 -c64` run:
#
#   health          GET /api/health
#   nginx           nginx (Debian's nginx-light, in one process: master_process off) serving a
#                   static copy of /api/health's body, in the same run (nginx's own CPU)
#   checkin         an up-to-date native check-in (GET /api/v1/device/checkin?version=1.0.0)
#   offered         the same check-in of a device that is offered 2.0.0 (signed URL, attempt)
#   seed001         the seed-001 check-in: GET /api/firmware?...&mac= with X-Device-Auth (djb2)
#   seed003         GET /api/configs/<mac>.json without credential (secrets left out)
#   seed003-token   the same with the device's token (secrets included)
#
# For each: requests (wrk's), server CPU (utime + stime from /proc/PID/stat before and after
# the measured run), CPU µs per request, and the ratio to `checkin`; also the server's VmRSS
# after each run (caches must keep it flat). The load comes from wrk only.
#
#   bench/hotpaths.sh                    # 20 s per scenario
#   bench/hotpaths.sh --quick            # 5 s per scenario (HOTPATHS_SECONDS overrides both)
#   UPDRAFT_BIN_BEFORE=/path/to/old/updraft bench/hotpaths.sh   # an old build too, same run
#   HOTPATHS_SCENARIOS="checkin offered" bench/hotpaths.sh      # only some (checkin always runs)
#   HOTPATHS_PERF=1 bench/hotpaths.sh    # also a perf profile of each measured run (the CPU
#                                        # figures then include perf's own overhead)
#
# Target (issue 13): offered, seed001 and both seed003 runs within 2x the up-to-date check-in.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SECS=${HOTPATHS_SECONDS:-20}
WARM=${HOTPATHS_WARMUP:-5}
if [[ ${1:-} == --quick ]]; then
  SECS=${HOTPATHS_SECONDS:-5}
  WARM=${HOTPATHS_WARMUP:-2}
fi
N=${HOTPATHS_DEVICES:-1000}
CONNECTIONS=${HOTPATHS_CONNECTIONS:-64}
ALL_SCENARIOS="health nginx checkin offered seed001 seed003 seed003-token"
SCENARIOS=${HOTPATHS_SCENARIOS:-$ALL_SCENARIOS}
[[ " $SCENARIOS " == *" checkin "* ]] || SCENARIOS="checkin $SCENARIOS"
# The seed-001 fleet's shared secret (only ever on loopback).
SECRET=bench-shared-secret
LUA=$BENCH_DIR/hotpaths.lua
need_tools wrk python3 curl nginx
if [[ -n "${HOTPATHS_PERF:-}" ]]; then need_tools perf; fi
RAW=$OUT_DIR/hotpaths
rm -rf "$RAW" && mkdir -p "$RAW"

requests_of() { awk '/requests in/ { print $1 }' "$1"; }
errors_of() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' "$1"; }

# prepare LABEL BIN: a server with the fleet, its builds and configurations; sets PORT, BASE, SERVER_PID.
prepare() {
  local label=$1 bin=$2
  bench_tmpdir
  PORT=$(free_port)
  BASE=http://127.0.0.1:$PORT
  local data=$TMP/data logfile=$RAW/server-$label.log
  BENCH_SERVER_ENV=(UPDRAFT_COMPAT_SHARED_SECRET="$SECRET")
  start_updraft "$bin" "$PORT" "$data" "$logfile"
  wait_ready "$PORT" "$SERVER_PID"
  head -c 100000 /dev/urandom >"$TMP/fw1.bin"
  head -c 100000 /dev/urandom >"$TMP/fw2.bin"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$TMP/fw1.bin" "$BASE/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32")
  [[ $code == 201 ]] || die "upload of 1.0.0 answered $code"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$TMP/fw2.bin" "$BASE/api/v1/firmware?product=bench&version=2.0.0&hardware=esp32s3")
  [[ $code == 201 ]] || die "upload of 2.0.0 answered $code"
  stop_pid "$SERVER_PID"
  # Devices 1..N stay on esp32 (up to date); N+1..2N become esp32s3 (offered 2.0.0).
  python3 "$BENCH_DIR/checkin_seed.py" "$data/updraft.db" "$((2 * N))" 2>>"$RAW/seed.log"
  python3 - "$data/updraft.db" "$N" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE device SET hardware = 'esp32s3' WHERE CAST(substr(name, 7) AS INTEGER) > ?", (int(sys.argv[2]),))
db.commit()
PY
  start_updraft "$bin" "$PORT" "$data" "$logfile"
  wait_ready "$PORT" "$SERVER_PID"
  # Seed-003 configurations: a product layer, and a document with one secret per device 1..N.
  python3 - "$PORT" "$BENCH_KEY" "$N" <<'PY'
import http.client, json, sys
port, key, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
def put(path, body):
    conn.request("PUT", path, json.dumps(body), {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read()
    if response.status != 200:
        sys.exit(f"PUT {path} answered {response.status}: {text[:300]!r}")
put("/api/v1/configs/product/bench", {"content": {"enableOTA": True, "mqtt": {"host": "mqtt.example.org", "port": 8883, "keepalive": 60},
    "telemetry": {"interval": 300, "sensors": ["temperature", "humidity", "pressure"]}, "timezone": "Europe/Amsterdam"}})
for i in range(1, n + 1):
    mac = "02-" + "-".join(f"{(i >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0))
    put(f"/api/configs/{mac}", {"content": {"deviceName": f"bench-{i}", "deviceEntityId": f"sensor.bench_{i}",
        "wifi": {"ssid": "bench-net", "password": {"$secret": f"password-{i}"}},
        "display": {"brightness": 80, "rotation": 90, "layout": ["clock", "weather", "calendar"]}}})
PY
  # Sanity: one request of each kind answers as expected.
  local answer
  answer=$(curl -s -H "Authorization: Bearer upd_dev_bench_1" "$BASE/api/v1/device/checkin?version=1.0.0")
  [[ $answer == *'"update":null'* ]] || die "unexpected up-to-date check-in answer: $answer"
  answer=$(curl -s -H "Authorization: Bearer upd_dev_bench_$((N + 1))" "$BASE/api/v1/device/checkin?version=1.0.0")
  [[ $answer == *'"version":"2.0.0"'* ]] || die "unexpected offered check-in answer: $answer"
  answer=$(curl -s "$BASE/api/configs/02-00-00-00-00-01.json")
  [[ $answer == *'"deviceName":"bench-1"'* && $answer != *password-1* ]] || die "unexpected anonymous seed-003 answer: $answer"
  answer=$(curl -s -H "X-Device-Token: upd_dev_bench_1" "$BASE/api/configs/02-00-00-00-00-01.json")
  [[ $answer == *'"password":"password-1"'* ]] || die "unexpected seed-003 answer with the token: $answer"
  if [[ " $SCENARIOS " == *" nginx "* ]]; then start_nginx "$label"; fi
}

# start_nginx LABEL: nginx in one process (no master, one worker, so that its PID's CPU time is
# all of nginx's) serving a static copy of /api/health's body; sets NGINX_PID, NGINX_URL.
start_nginx() {
  local label=$1 conf=$TMP/nginx/nginx.conf port i
  port=$(free_port)
  mkdir -p "$TMP/nginx/logs" "$TMP/www"
  chmod 755 "$TMP" "$TMP/www"
  curl -s "$BASE/api/health" >"$TMP/www/health.json"
  chmod 644 "$TMP/www/health.json"
  cat >"$conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 100000;
    access_log off;
    default_type application/json;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$port;
        root $TMP/www;
    }
}
NGINX
  nginx -t -q -p "$TMP/nginx" -c "$conf" 2>"$RAW/nginx-check-$label.log" || die "nginx -t failed: $(cat "$RAW/nginx-check-$label.log")"
  nginx -p "$TMP/nginx" -c "$conf" >"$RAW/nginx-$label.log" 2>&1 9>&- &
  NGINX_PID=$!
  BENCH_PIDS+=("$NGINX_PID")
  NGINX_URL=http://127.0.0.1:$port/health.json
  for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$NGINX_URL") == 200 ]] && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$RAW/nginx-$label.log" "$TMP/nginx/logs/error.log")"
    sleep 0.05
  done
  die "nginx did not answer on port $port"
}

# scenario LABEL NAME: warm-up, then the measured run; prints "requests cpu_s errors rss_kb".
scenario() {
  local label=$1 name=$2 out=$RAW/$1-$2.txt
  local args=(-t2 -c"$CONNECTIONS")
  local env=(BENCH_DEVICES="$N" BENCH_FIRST=1 BENCH_SECRET="$SECRET")
  case $name in
    health | nginx) ;;
    checkin) env+=(BENCH_SCENARIO=checkin) ;;
    offered) env+=(BENCH_SCENARIO=checkin BENCH_FIRST=$((N + 1))) ;;
    seed001 | seed003 | seed003-token) env+=(BENCH_SCENARIO="$name") ;;
    *) die "unknown scenario $name" ;;
  esac
  local target=(-s "$LUA" "$BASE") pid=$SERVER_PID
  case $name in
    health) target=("$BASE/api/health") ;;
    nginx) target=("$NGINX_URL") pid=$NGINX_PID ;;
  esac
  env "${env[@]}" wrk "${args[@]}" -d"${WARM}s" "${target[@]}" >"$RAW/$label-$name-warmup.txt" 2>&1
  local before after perf_pid=
  if [[ -n "${HOTPATHS_PERF:-}" ]]; then
    perf record -q -F 999 -g -o "$RAW/perf-$label-$name.data" -p "$pid" 2>/dev/null 9>&- &
    perf_pid=$!
    sleep 0.5
  fi
  before=$(cpu_seconds "$pid")
  env "${env[@]}" wrk "${args[@]}" -d"${SECS}s" --latency "${target[@]}" >"$out" 2>&1
  after=$(cpu_seconds "$pid")
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    perf_report "$RAW/perf-$label-$name.data" "$RAW/perf-$label-$name.txt"
  fi
  echo "$(requests_of "$out") $(calc "$after - $before" 2) $(errors_of "$out") $(proc_kb "$pid" VmRSS)"
}

# measure LABEL BIN: every scenario on one server; results rows.
measure() {
  local label=$1 bin=$2
  log "$label: preparing $N up-to-date + $N offered devices, configurations ($bin)"
  prepare "$label" "$bin"
  declare -A US
  local name requests cpu errors rss us
  for name in $SCENARIOS; do
    read -r requests cpu errors rss < <(scenario "$label" "$name")
    us=$(calc "$cpu * 1000000 / $requests" 1)
    US[$name]=$us
    log "$label $name: $requests requests in ${SECS} s, server CPU $cpu s, $us µs/request, errors $errors, VmRSS $(calc "$rss / 1024" 1) MiB"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$name" "$requests" "$cpu" "$us" "$errors" >>"$RAW/figures.tsv"
    result hotpaths "$label $name: server CPU µs/request (requests, CPU s, errors; VmRSS after)" \
      "$us ($requests, $cpu s, $errors; $(calc "$rss / 1024" 1) MiB)" "-" "$( ((errors == 0)) && echo - || echo FAIL)"
  done
  for name in $SCENARIOS; do
    [[ $name == checkin ]] && continue
    local ratio
    ratio=$(calc "${US[$name]} / ${US[checkin]}" 2)
    case $name in
      offered | seed001 | seed003 | seed003-token) result hotpaths "$label $name ÷ checkin (CPU per request)" "$ratio" "<= 2.0" "$(pass_if "$ratio <= 2.0")" ;;
      *) result hotpaths "$label $name ÷ checkin (CPU per request)" "$ratio" "-" "-" ;;
    esac
  done
  stop_pid "$SERVER_PID"
  if [[ -n "${NGINX_PID:-}" ]]; then stop_pid "$NGINX_PID"; NGINX_PID=; fi
}

wait_quiet "${BENCH_WAIT_QUIET:-0}"
log "load before: $(cat /proc/loadavg)"
CURRENT_BIN=$(updraft_bin)
if [[ -n "${UPDRAFT_BIN_BEFORE:-}" ]]; then
  [[ -x $UPDRAFT_BIN_BEFORE ]] || die "UPDRAFT_BIN_BEFORE=$UPDRAFT_BIN_BEFORE is not an executable"
  measure before "$UPDRAFT_BIN_BEFORE"
  wait_quiet "${BENCH_WAIT_QUIET:-0}"
  log "load between: $(cat /proc/loadavg)"
fi
measure current "$CURRENT_BIN"
log "load after: $(cat /proc/loadavg)"

# The table: µs/request of each scenario and its ratio to the up-to-date check-in, per binary.
python3 - "$RAW/figures.tsv" "$SECS" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
labels = list(dict.fromkeys(r[0] for r in rows))
names = list(dict.fromkeys(r[1] for r in rows))
us = {(r[0], r[1]): float(r[4]) for r in rows}
errors = {(r[0], r[1]): r[5] for r in rows}
head = ["scenario"] + [f"{label} µs/req" for label in labels] + [f"{label} ÷ checkin" for label in labels]
table = [head]
for name in names:
    line = [name]
    line += [f"{us[(l, name)]:.1f}" + ("" if errors.get((l, name), "0") == "0" else f" ({errors[(l, name)]} errors)") if (l, name) in us else "-" for l in labels]
    line += [f"{us[(l, name)] / us[(l, 'checkin')]:.2f}" if (l, name) in us and (l, "checkin") in us else "-" for l in labels]
    table.append(line)
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
print(f"server CPU per request, wrk -t2, {sys.argv[2]} s per scenario")
for i, r in enumerate(table):
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if i == 0:
        print("  ".join("-" * w for w in widths))
PY
