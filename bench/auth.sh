#!/usr/bin/env bash
# Authentication off the hot path (issue 14): server CPU per request of a device check-in and of
# one admin read with each operator credential, on one server, in the same run; and what one
# password login costs (Argon2id runs there, and only there).
#
# One release server, AUTH_DEVICES (default 1,000) devices seeded by bench/checkin_seed.py
# (token upd_dev_bench_<i>), one build of product `bench`. Then, one after the other, a warm-up
# and a measured `wrk -t2 -c64` run of:
#
#   checkin     GET /api/v1/device/checkin?version=1.0.0 with a device token (up to date)
#   admin-key   GET /api/v1/mqtt (the broker status: authentication, no database read) with
#               the original admin key (X-Admin-API-Key)
#   api-key     the same with a named viewer API key (Authorization: Bearer)
#   cookie      the same with a browser session cookie (a user's password login)
#   login       POST /api/v1/session with a user's password (Argon2id), -c2
#
# For each: requests, server CPU (utime + stime from /proc/PID/stat around the measured run),
# CPU µs per request and the ratio to `admin-key`. With UPDRAFT_BIN_BEFORE (a build before
# issue 14), `checkin` and `admin-key` run on it too, in the same run, so that the new build's
# figures can be compared with the old ones.
#
#   bench/auth.sh                 # 20 s per scenario
#   bench/auth.sh --quick         # 5 s per scenario (AUTH_SECONDS overrides both)
#   AUTH_ROUNDS=5 bench/auth.sh   # rounds per scenario (default 3; medians compared)
#   UPDRAFT_BIN_BEFORE=/path/to/old/updraft bench/auth.sh
#
# Targets (issue 14): check-ins, and admin reads with an API key or a session cookie, keep their
# rates within noise (within 10% of the CPU per request of the admin key / the build before);
# a login costs milliseconds of CPU (Argon2id), a keyed request microseconds.
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SECS=${AUTH_SECONDS:-20}
WARM=${AUTH_WARMUP:-5}
if [[ ${1:-} == --quick ]]; then
  SECS=${AUTH_SECONDS:-5}
  WARM=${AUTH_WARMUP:-2}
fi
N=${AUTH_DEVICES:-1000}
# Every scenario runs this many times on its server, in turn; the medians are compared.
ROUNDS=${AUTH_ROUNDS:-3}
CONNECTIONS=${AUTH_CONNECTIONS:-64}
PASSWORD=bench-password-0123456789
need_tools wrk python3 curl
RAW=$OUT_DIR/auth
rm -rf "$RAW" && mkdir -p "$RAW"

requests_of() { awk '/requests in/ { print $1 }' "$1"; }
errors_of() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' "$1"; }

# prepare LABEL BIN: a server with the fleet and one build; sets PORT, BASE, SERVER_PID and,
# when the build has accounts, API_KEY and COOKIE.
prepare() {
  local label=$1 bin=$2
  bench_tmpdir
  PORT=$(free_port)
  BASE=http://127.0.0.1:$PORT
  local data=$TMP/data logfile=$RAW/server-$label.log
  start_updraft "$bin" "$PORT" "$data" "$logfile"
  wait_ready "$PORT" "$SERVER_PID"
  head -c 100000 /dev/urandom >"$TMP/fw1.bin"
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$TMP/fw1.bin" "$BASE/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32")
  [[ $code == 201 ]] || die "upload of 1.0.0 answered $code"
  stop_pid "$SERVER_PID"
  python3 "$BENCH_DIR/checkin_seed.py" "$data/updraft.db" "$N" 2>>"$RAW/seed.log"
  start_updraft "$bin" "$PORT" "$data" "$logfile"
  wait_ready "$PORT" "$SERVER_PID"
  local answer
  answer=$(curl -s -H "Authorization: Bearer upd_dev_bench_1" "$BASE/api/v1/device/checkin?version=1.0.0")
  [[ $answer == *'"update":null'* ]] || die "unexpected up-to-date check-in answer: $answer"
  API_KEY= COOKIE=
  [[ $label == before ]] && return 0
  answer=$(curl -s -H "X-Admin-API-Key: $BENCH_KEY" -H 'Content-Type: application/json' \
    -d '{"name":"bench-admin","role":"admin"}' "$BASE/api/v1/api-keys")
  API_KEY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"])' "$answer") || die "cannot create an API key: $answer"
  code=$(curl -s -o "$RAW/user.json" -w '%{http_code}' -H "X-Admin-API-Key: $BENCH_KEY" -H 'Content-Type: application/json' \
    -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\",\"role\":\"admin\"}" "$BASE/api/v1/users")
  [[ $code == 201 ]] || die "cannot create a user: $code $(cat "$RAW/user.json")"
  curl -s -o /dev/null -c "$TMP/jar" -H 'Content-Type: application/json' \
    -d "{\"username\":\"bench\",\"password\":\"$PASSWORD\"}" "$BASE/api/v1/session"
  COOKIE=$(awk '!/^#/ || /^#HttpOnly_/ { if (NF >= 7) printf "%s%s=%s", (n++ ? "; " : ""), $6, $7 }' "$TMP/jar")
  [[ -n $COOKIE ]] || die "the login set no cookie"
  for credential in "Authorization: Bearer $API_KEY" "Cookie: $COOKIE"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "$credential" "$BASE/api/v1/mqtt")
    [[ $code == 200 ]] || die "an admin read with ${credential%%:*} answered $code"
  done
}

# scenario LABEL NAME: warm-up, then the measured run; prints "requests cpu_s errors".
scenario() {
  local label=$1 name=$2 out=$RAW/$1-$2.txt
  local args=(-t2 -c"$CONNECTIONS") target
  case $name in
    checkin) target=(-s "$BENCH_DIR/hotpaths.lua" "$BASE") ;;
    admin-key) target=(-H "X-Admin-API-Key: $BENCH_KEY" "$BASE/api/v1/mqtt") ;;
    api-key) target=(-H "Authorization: Bearer $API_KEY" "$BASE/api/v1/mqtt") ;;
    cookie) target=(-H "Cookie: $COOKIE" "$BASE/api/v1/mqtt") ;;
    login) args=(-t1 -c2) target=(-s "$BENCH_DIR/auth-login.lua" "$BASE/api/v1/session") ;;
    *) die "unknown scenario $name" ;;
  esac
  local env=(BENCH_DEVICES="$N" BENCH_FIRST=1 BENCH_SCENARIO=checkin BENCH_USER=bench BENCH_PASSWORD="$PASSWORD")
  env "${env[@]}" wrk "${args[@]}" -d"${WARM}s" "${target[@]}" >"$RAW/$label-$name-warmup.txt" 2>&1
  local before after
  before=$(cpu_seconds "$SERVER_PID")
  env "${env[@]}" wrk "${args[@]}" -d"${SECS}s" --latency "${target[@]}" >"$out" 2>&1
  after=$(cpu_seconds "$SERVER_PID")
  echo "$(requests_of "$out") $(calc "$after - $before" 2) $(errors_of "$out")"
}

measure() {
  local label=$1 bin=$2 scenarios=$3
  log "$label: preparing $N devices ($bin)"
  prepare "$label" "$bin"
  local name requests cpu errors us round
  for ((round = 1; round <= ROUNDS; round++)); do
    for name in $scenarios; do
      read -r requests cpu errors < <(scenario "$label" "$name")
      us=$(calc "$cpu * 1000000 / $requests" 1)
      log "$label $name (round $round): $requests requests in ${SECS} s, server CPU $cpu s, $us µs/request, errors $errors"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$name" "$requests" "$cpu" "$us" "$errors" >>"$RAW/figures.tsv"
      result auth "$label $name (round $round): server CPU µs/request (requests, CPU s, errors)" "$us ($requests, $cpu s, $errors)" "-" \
        "$( ((errors == 0)) && echo - || echo FAIL)"
    done
  done
  stop_pid "$SERVER_PID"
}

wait_quiet "${BENCH_WAIT_QUIET:-0}"
log "load before: $(cat /proc/loadavg)"
if [[ -n "${UPDRAFT_BIN_BEFORE:-}" ]]; then
  [[ -x $UPDRAFT_BIN_BEFORE ]] || die "UPDRAFT_BIN_BEFORE=$UPDRAFT_BIN_BEFORE is not an executable"
  measure before "$UPDRAFT_BIN_BEFORE" "checkin admin-key"
fi
measure current "$(updraft_bin)" "checkin admin-key api-key cookie login"
log "load after: $(cat /proc/loadavg)"

python3 - "$RAW/figures.tsv" "$SECS" "$RESULTS" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
runs = {}
for label, name, requests, _cpu, us, _errors in rows:
    runs.setdefault((label, name), []).append((float(us), int(requests) / float(sys.argv[2])))
us = {k: statistics.median(u for u, _ in v) for k, v in runs.items()}
rate = {k: statistics.median(r for _, r in v) for k, v in runs.items()}
print(f"server CPU per request, wrk -t2 -c64 ({sys.argv[2]} s per run, medians of {len(next(iter(runs.values())))} rounds; login -t1 -c2)")
print(f"{'build':8} {'scenario':10} {'req/s':>9} {'µs/req':>8} {'min µs':>8} {'÷ admin-key':>11}  rounds (µs/req)")
for (label, name), value in us.items():
    base = us.get((label, "admin-key"))
    ratio = f"{value / base:.2f}" if base else "-"
    each = ", ".join(f"{u:.1f}" for u, _ in runs[(label, name)])
    low = min(u for u, _ in runs[(label, name)])
    print(f"{label:8} {name:10} {rate[(label, name)]:9.0f} {value:8.1f} {low:8.1f} {ratio:>11}  [{each}]")
checks = []
for name in ("api-key", "cookie"):
    if ("current", name) in us:
        r = us[("current", name)] / us[("current", "admin-key")]
        checks.append((f"current {name} ÷ admin-key (CPU per request, medians)", f"{r:.2f}", "<= 1.10", "PASS" if r <= 1.10 else "FAIL"))
for name in ("checkin", "admin-key"):
    if ("before", name) in us:
        r = us[("current", name)] / us[("before", name)]
        checks.append((f"{name} current ÷ before (CPU per request, medians)", f"{r:.2f}", "<= 1.10", "PASS" if r <= 1.10 else "FAIL"))
with open(sys.argv[3], "a") as results:
    for name, value, target, verdict in checks:
        print(f"{name}: {value} (target {target}) {verdict}")
        results.write(f"auth\t{name}\t{value}\t{target}\t{verdict}\n")
PY
