#!/usr/bin/env bash
# Dashboard API benchmark (the web dashboard issue): p95 latency of the admin reads behind
# the dashboard's pages at DASHBOARD_DEVICES (default 100,000) registered devices on SQLite.
#
# The fleet is seeded by bench/checkin_seed.py (tags ring-0 .. ring-9) and varied by
# bench/dashboard_seed.py (two products, two hardware ids, five versions, 100 owners,
# last_seen spread over 20 minutes so about half are online), with a release 2.0.0 of
# product `bench`. Then, for each request, one connection sends it back to back for
# DASHBOARD_SECONDS (default 10) seconds (wrk -t1 -c1, bench/dashboard.lua), after one
# warm-up request:
#   - GET /api/v1/devices with each filter, each sort and a search (`q`);
#   - GET /api/v1/devices/summary (whole fleet and one product);
#   - POST /api/v1/rollouts/preview (the default stages on the whole product, and a tag).
# Target: p95 < 100 ms for each.
#
#   DASHBOARD_DEVICES=100000 DASHBOARD_SECONDS=10 bench/dashboard.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

N=${DASHBOARD_DEVICES:-100000}
SECS=${DASHBOARD_SECONDS:-10}
BIN=$(updraft_bin)
need_tools wrk python3 curl
RAW=$OUT_DIR/dashboard
rm -rf "$RAW" && mkdir -p "$RAW"
LUA=$BENCH_DIR/dashboard.lua

bench_tmpdir
PORT=$(free_port)
DATA=$TMP/data
BASE=http://127.0.0.1:$PORT
log "fleet of $N devices: schema, builds 1.0.0 and 2.0.0, release 2.0.0"
seed_release_fleet "$BIN" "$PORT" "$DATA" "$N" 10 "$RAW/server.log"
python3 "$BENCH_DIR/dashboard_seed.py" "$DATA/updraft.db" 2>>"$RAW/seed.log"
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID" 120
wait_quiet "${BENCH_WAIT_QUIET:-0}"

ten_min_ago=$(date -u -d '-10 min' +%Y-%m-%dT%H:%M:%SZ)
five_min_ago=$(date -u -d '-5 min' +%Y-%m-%dT%H:%M:%SZ)
preview_all="{\"release_id\":\"$RELEASE\"}"
preview_tag="{\"release_id\":\"$RELEASE\",\"target\":{\"tags\":[\"ring-3\"]},\"stages\":[{\"count\":100},{\"percent\":50},{\"percent\":100}]}"

# name | method | path | body
CASES=(
  "devices, default sort (-created_at)|GET|/api/v1/devices|"
  "devices, sort=created_at|GET|/api/v1/devices?sort=created_at|"
  "devices, sort=-last_seen|GET|/api/v1/devices?sort=-last_seen|"
  "devices, sort=name|GET|/api/v1/devices?sort=name|"
  "devices, sort=mac|GET|/api/v1/devices?sort=mac|"
  "devices, product=lamp|GET|/api/v1/devices?product=lamp|"
  "devices, hardware=esp32s3|GET|/api/v1/devices?hardware=esp32s3|"
  "devices, version=1.0.3|GET|/api/v1/devices?version=1.0.3|"
  "devices, tag=ring-3|GET|/api/v1/devices?tag=ring-3|"
  "devices, status=online|GET|/api/v1/devices?status=online|"
  "devices, status=offline|GET|/api/v1/devices?status=offline|"
  "devices, owner=owner-7|GET|/api/v1/devices?owner=owner-7|"
  "devices, last_seen_before (10 min ago)|GET|/api/v1/devices?last_seen_before=$ten_min_ago|"
  "devices, last_seen_after (5 min ago)|GET|/api/v1/devices?last_seen_after=$five_min_ago|"
  "devices, q=bench-4242 (search)|GET|/api/v1/devices?q=bench-4242|"
  "devices, q=02:00:00:00:10 (search, MAC prefix)|GET|/api/v1/devices?q=02:00:00:00:10|"
  "devices, product=lamp&status=online&sort=name|GET|/api/v1/devices?product=lamp&status=online&sort=name|"
  "devices, tag=ring-3&sort=-last_seen&offset=5000|GET|/api/v1/devices?tag=ring-3&sort=-last_seen&offset=5000|"
  "summary, whole fleet|GET|/api/v1/devices/summary|"
  "summary, product=lamp|GET|/api/v1/devices/summary?product=lamp|"
  "rollout preview, whole product, default stages|POST|/api/v1/rollouts/preview|$preview_all"
  "rollout preview, tag ring-3, three stages|POST|/api/v1/rollouts/preview|$preview_tag"
)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$2"; }
i=0
for case in "${CASES[@]}"; do
  IFS='|' read -r name method path body <<<"$case"
  i=$((i + 1))
  out=$RAW/case-$i.txt
  # One request first: caches (the rollout target index) fill as after any first use.
  curl -s -o /dev/null -X "$method" -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
    ${body:+-d "$body"} "$BASE$path"
  BENCH_KEY=$BENCH_KEY BENCH_METHOD=$method BENCH_PATH=$path BENCH_BODY=$body \
    wrk -t1 -c1 -d"${SECS}s" -s "$LUA" "$BASE" >"$out" 2>&1 || die "wrk failed for $name: $(cat "$out")"
  P95=$(field p95 "$out") P50=$(field p50 "$out") REQS=$(field requests "$out") BAD=$(field non2xx "$out")
  log "$name: p50 $P50 ms, p95 $P95 ms, $REQS requests, $BAD not 200"
  status=$(pass_if "$P95 < 100")
  ((BAD == 0)) || status=FAIL
  result dashboard "$N devices: $name: p95 (ms) [p50]" "$P95 [$P50]" "< 100" "$status"
done
RSS_MIB=$(calc "$(proc_kb "$SERVER_PID" VmRSS) / 1024" 1)
result dashboard "$N devices: server RSS after the runs (MiB)" "$RSS_MIB" "-" "-"
stop_pid "$SERVER_PID"
