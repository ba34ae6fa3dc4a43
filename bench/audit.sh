#!/usr/bin/env bash
# Audit log and limits (issue 14): what the audit middleware costs the requests it does not
# record (device check-ins, admin reads) and the writes it records, against a build without
# it, on the same machine in the same run.
#
# Each binary (UPDRAFT_BIN_BEFORE, e.g. a build of the commit before the audit log, and the
# current one) serves AUDIT_DEVICES (default 1,000) seeded devices (bench/checkin_seed.py);
# then, for each scenario, a warm-up and a measured `wrk -t2 -c32` run:
#
#   checkin   GET /api/v1/device/checkin?version=1.0.0 of random devices (not audited)
#   admin-get GET /api/v1/mqtt with the admin key (not audited)
#   patch     PATCH /api/v1/devices/{id} with the admin key, a new owner each time (audited:
#             one record each)
#
# Binaries alternate for AUDIT_ROUNDS rounds (default 2), so that load from elsewhere on the
# machine falls on both. Prints req/s and server CPU µs per request of each.
#
#   UPDRAFT_BIN_BEFORE=/path/to/updraft-before bench/audit.sh   # without it: the current build only
#   AUDIT_SECONDS=10 AUDIT_ROUNDS=3 UPDRAFT_BIN_BEFORE=... bench/audit.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SECS=${AUDIT_SECONDS:-10}
WARM=${AUDIT_WARMUP:-3}
ROUNDS=${AUDIT_ROUNDS:-2}
N=${AUDIT_DEVICES:-1000}
need_tools wrk python3 curl
RAW=$OUT_DIR/audit
rm -rf "$RAW" && mkdir -p "$RAW"

rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
requests_of() { awk '/requests in/ { print $1 }' "$1"; }
errors_of() { awk '/Non-2xx or 3xx responses:/ { n += $NF } /Socket errors:/ { n += 1 } END { print n + 0 }' "$1"; }

# prepare LABEL BIN: a server with N devices; sets PORT, BASE, SERVER_PID, DEVICE_ID.
prepare() {
  local label=$1 bin=$2
  bench_tmpdir
  PORT=$(free_port)
  BASE=http://127.0.0.1:$PORT
  local data=$TMP/data logfile=$RAW/server-$label.log code
  start_updraft "$bin" "$PORT" "$data" "$logfile"
  wait_ready "$PORT" "$SERVER_PID"
  head -c 100000 /dev/urandom >"$TMP/fw.bin"
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
    --data-binary @"$TMP/fw.bin" "$BASE/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32")
  [[ $code == 201 ]] || die "upload answered $code"
  stop_pid "$SERVER_PID"
  python3 "$BENCH_DIR/checkin_seed.py" "$data/updraft.db" "$N" 2>>"$RAW/seed.log"
  start_updraft "$bin" "$PORT" "$data" "$logfile"
  wait_ready "$PORT" "$SERVER_PID"
  DEVICE_ID=$(curl -s -H "Authorization: Bearer $BENCH_KEY" "$BASE/api/v1/devices?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
  [[ -n $DEVICE_ID ]] || die "no device id"
}

# scenario LABEL NAME ROUND: warm-up, then the measured run; prints "rps cpu_us_per_request errors".
scenario() {
  local label=$1 name=$2 round=$3 out=$RAW/$1-$2-$3.txt
  local target=(-s "$BENCH_DIR/audit.lua" "$BASE") env=(BENCH_KEY="$BENCH_KEY" BENCH_DEVICE_ID="$DEVICE_ID")
  case $name in
    checkin) target=(-s "$BENCH_DIR/checkin.lua" "$BASE") env+=(BENCH_DEVICES="$N") ;;
    admin-get) env+=(BENCH_SCENARIO=get) ;;
    patch) env+=(BENCH_SCENARIO=patch) ;;
    *) die "unknown scenario $name" ;;
  esac
  env "${env[@]}" wrk -t2 -c32 -d"${WARM}s" "${target[@]}" >"$RAW/$label-$name-$round-warmup.txt" 2>&1
  local before after
  before=$(cpu_seconds "$SERVER_PID")
  env "${env[@]}" wrk -t2 -c32 -d"${SECS}s" "${target[@]}" >"$out" 2>&1
  after=$(cpu_seconds "$SERVER_PID")
  echo "$(rps_of "$out") $(calc "($after - $before) * 1000000 / $(requests_of "$out")" 1) $(errors_of "$out")"
}

# Without UPDRAFT_BIN_BEFORE only the current build is measured (no comparison).
BEFORE=${UPDRAFT_BIN_BEFORE:-}
LABELS=(current)
if [[ -n $BEFORE ]]; then
  [[ -x $BEFORE ]] || die "UPDRAFT_BIN_BEFORE=$BEFORE is not an executable"
  LABELS=(before current)
else
  log "UPDRAFT_BIN_BEFORE not set: measuring the current build only (no before/after comparison)"
fi
CURRENT=$(updraft_bin)
log "load before: $(cat /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
  for label in "${LABELS[@]}"; do
    bin=$BEFORE
    [[ $label == current ]] && bin=$CURRENT
    prepare "$label" "$bin"
    for name in checkin admin-get patch; do
      read -r rps us errors < <(scenario "$label" "$name" "$round")
      log "round $round $label $name: $rps req/s, $us µs CPU/request, $errors errors"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$name" "$rps" "$us" "$errors" >>"$RAW/figures.tsv"
    done
    if [[ $label == current ]]; then
      records=$(curl -s -H "Authorization: Bearer $BENCH_KEY" "$BASE/api/v1/audit?action=patch_device&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
      log "round $round: the audit log holds $records patch_device records"
    fi
    stop_pid "$SERVER_PID"
  done
done
log "load after: $(cat /proc/loadavg)"

python3 - "$RAW/figures.tsv" "$SECS" <<'PY'
import sys, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print(f"wrk -t2 -c32, {sys.argv[2]} s per run; median over rounds (each round's figures in brackets)")
print(f"{'scenario':<10} {'before req/s':>24} {'current req/s':>24} {'before µs/req':>22} {'current µs/req':>22}")
for name in dict.fromkeys(r[2] for r in rows):
    cells = []
    for column in (3, 4):
        for label in ("before", "current"):
            values = [float(r[column]) for r in rows if r[1] == label and r[2] == name]
            cells.append(f"{statistics.median(values):.0f} [{', '.join(f'{v:.0f}' for v in values)}]" if values else "-")
    print(f"{name:<10} {cells[0]:>24} {cells[1]:>24} {cells[2]:>22} {cells[3]:>22}")
PY
