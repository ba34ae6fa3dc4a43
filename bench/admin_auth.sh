#!/usr/bin/env bash
# Admin authentication (issue 14): server CPU per request of an admin GET with the original
# admin key, with a named API key (Bearer and X-Admin-API-Key) and with a session cookie, on
# one server in one run. Each gets a warm-up and a measured `wrk -t2 -c32` run against
#
#   whoami     GET /api/v1/session        (authentication only: no database read)
#   firmware   GET /api/v1/firmware?limit=10   (a typical admin read)
#
# and prints requests, server CPU µs per request (utime + stime from /proc/PID/stat) and the
# ratio to the original admin key. The target: a key or a cookie costs about what the admin
# key costs (verified credentials are cached in memory; Argon2 runs only at login).
#
#   bench/admin_auth.sh              # 10 s per run
#   bench/admin_auth.sh --quick      # 3 s per run (ADMIN_AUTH_SECONDS overrides both)
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SECS=${ADMIN_AUTH_SECONDS:-10}
WARM=2
if [[ ${1:-} == --quick ]]; then SECS=${ADMIN_AUTH_SECONDS:-3}; WARM=1; fi
need_tools wrk python3 curl
RAW=$OUT_DIR/admin_auth
rm -rf "$RAW" && mkdir -p "$RAW"
BIN=$(updraft_bin)

bench_tmpdir
PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
start_updraft "$BIN" "$PORT" "$TMP/data" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"
head -c 100000 /dev/urandom >"$TMP/fw.bin"
curl -sf -o /dev/null -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
  --data-binary @"$TMP/fw.bin" "$BASE/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32" || die "upload failed"
KEY=$(curl -sf -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
  -d '{"name":"bench","role":"admin"}' "$BASE/api/v1/api-keys" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
curl -sf -o /dev/null -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
  -d '{"username":"bench","password":"a bench password 123","role":"admin"}' "$BASE/api/v1/users" || die "user creation failed"
COOKIE=$(curl -sf -D - -o /dev/null -H 'Content-Type: application/json' -d '{"username":"bench","password":"a bench password 123"}' \
  "$BASE/api/v1/session" | awk -F'[:;]' 'tolower($1) == "set-cookie" { gsub(/^ /, "", $2); c = c (c ? "; " : "") $2 } END { print c }')
[[ $COOKIE == *updraft_session=* ]] || die "no session cookie"

# run NAME PATH HEADER: prints "requests cpu_s non2xx".
run() {
  local name=$1 path=$2 header=$3 out=$RAW/$1.txt before after
  wrk -t2 -c32 -d"${WARM}s" -H "$header" "$BASE$path" >"$RAW/$name-warmup.txt" 2>&1
  before=$(cpu_seconds "$SERVER_PID")
  wrk -t2 -c32 -d"${SECS}s" -H "$header" "$BASE$path" >"$out" 2>&1
  after=$(cpu_seconds "$SERVER_PID")
  echo "$(awk '/requests in/ { print $1 }' "$out") $(calc "$after - $before" 2) $(awk '/Non-2xx/ { print $NF }' "$out")"
}

printf '%-10s %-22s %10s %8s %10s %8s\n' route credential requests cpu_s "µs/req" "÷ admin"
for route in whoami firmware; do
  case $route in whoami) path=/api/v1/session ;; firmware) path="/api/v1/firmware?limit=10" ;; esac
  base_us=
  for credential in admin-key named-bearer named-header cookie; do
    case $credential in
      admin-key) header="Authorization: Bearer $BENCH_KEY" ;;
      named-bearer) header="Authorization: Bearer $KEY" ;;
      named-header) header="X-Admin-API-Key: $KEY" ;;
      cookie) header="Cookie: $COOKIE" ;;
    esac
    read -r requests cpu bad < <(run "$route-$credential" "$path" "$header")
    [[ -z $bad ]] || die "$route $credential: $bad answers were not 2xx"
    us=$(calc "$cpu * 1000000 / $requests" 1)
    base_us=${base_us:-$us}
    printf '%-10s %-22s %10s %8s %10s %8s\n' "$route" "$credential" "$requests" "$cpu" "$us" "$(calc "$us / $base_us" 2)"
    result admin_auth "$route $credential: server CPU µs/request" "$us ($requests requests)" "-" "-"
  done
done
