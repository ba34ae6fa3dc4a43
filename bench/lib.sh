# shellcheck shell=bash
# Shared helpers of the benchmarks in bench/. Sourced, never run.
#
# Everything here targets 127.0.0.1 only. Every server a benchmark starts is recorded in
# BENCH_PIDS and stopped by PID (TERM, then KILL after 10 s) by `bench_cleanup`, which the
# benchmark scripts install as their EXIT trap.

BENCH_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "$BENCH_DIR/.." && pwd)
OUT_DIR=${BENCH_OUT_DIR:-$BENCH_DIR/out}
RESULTS=$OUT_DIR/results.tsv
# The admin key of every benchmark server (only ever on loopback).
BENCH_KEY=${BENCH_KEY:-bench-admin-key-0123456789abcdef}
mkdir -p "$OUT_DIR"

BENCH_PIDS=()
BENCH_TMPS=()
# Extra NAME=value settings of the next servers `start_updraft` starts (e.g. UPDRAFT_COMPAT_*).
BENCH_SERVER_ENV=()

# One benchmark run at a time on this machine: two at once skew each other's figures and
# write over each other's results in bench/out. The lock (fd 9 on bench/out/.lock) is taken
# by the first script of a run and inherited by the scripts it starts; servers get fd 9 closed.
if [[ -z "${BENCH_LOCK_HELD:-}" ]] && command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT_DIR/.lock"
  if ! flock -n 9; then
    printf '[%s] another benchmark run holds %s; waiting for it\n' "$(date +%H:%M:%S)" "$OUT_DIR/.lock" >&2
    flock 9
  fi
  export BENCH_LOCK_HELD=$$
fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The updraft binary: $UPDRAFT_BIN, else a release build of this checkout.
updraft_bin() {
  if [[ -n "${UPDRAFT_BIN:-}" ]]; then
    [[ -x "$UPDRAFT_BIN" ]] || die "UPDRAFT_BIN=$UPDRAFT_BIN is not an executable"
    printf '%s\n' "$UPDRAFT_BIN"
    return
  fi
  local target=${CARGO_TARGET_DIR:-$REPO_DIR/target}
  log "UPDRAFT_BIN not set: building the release binary (cargo build --release, target dir $target)"
  (cd "$REPO_DIR" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
  printf '%s\n' "$target/release/updraft"
}

# Makes sure the tools are there (Debian packages), installing the missing ones.
need_tools() {
  local missing=() tool pkg
  for tool in "$@"; do
    case $tool in
      nginx) pkg=nginx-light ;;
      *) pkg=$tool ;;
    esac
    command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]} (apt-get)"
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  if ! { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2; then
    die "could not install ${missing[*]}"
  fi
}

# bench_tmpdir: a new temp dir in $TMP, removed by bench_cleanup (not in a subshell: the
# registration must reach the caller).
bench_tmpdir() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/updraft-bench.XXXXXX")
  BENCH_TMPS+=("$TMP")
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Stops one process by PID: TERM, up to 10 s of grace, then KILL.
stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "pid $pid did not stop in 10 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
  local pid dir
  for pid in "${BENCH_PIDS[@]}"; do stop_pid "$pid"; done
  BENCH_PIDS=()
  if [[ -z "${BENCH_KEEP_TMP:-}" ]]; then
    for dir in "${BENCH_TMPS[@]}"; do rm -rf -- "$dir"; done
  fi
  BENCH_TMPS=()
}

# start_updraft BIN PORT DATA_DIR LOG  -> sets SERVER_PID
# The server runs in DATA_DIR's parent (so no .env of the repo is read), with no UPDRAFT_*
# setting of the caller's shell except those given here.
start_updraft() {
  local bin=$1 port=$2 data=$3 logfile=$4
  local unset_args=() name
  while IFS= read -r name; do unset_args+=(-u "$name"); done < <(env | sed -n 's/^\(UPDRAFT_[A-Za-z0-9_]*\)=.*/\1/p')
  mkdir -p "$data"
  (
    cd "$(dirname -- "$data")" &&
      exec env "${unset_args[@]}" UPDRAFT_ADMIN_API_KEY="$BENCH_KEY" UPDRAFT_LOG="${BENCH_SERVER_LOG:-warn}" "${BENCH_SERVER_ENV[@]}" \
        "$bin" serve --listen "127.0.0.1:$port" --mqtt-listen "127.0.0.1:${BENCH_MQTT_PORT:-$(free_port)}" --data-dir "$data" \
        ${BENCH_SERVER_ARGS:-}
  ) >"$logfile" 2>&1 9>&- &
  SERVER_PID=$!
  BENCH_PIDS+=("$SERVER_PID")
}

# wait_ready PORT PID [TIMEOUT_S]: polls /api/ready until 200.
wait_ready() {
  local port=$1 pid=$2 timeout=${3:-30} i
  for ((i = 0; i < timeout * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || die "the server (pid $pid) exited during startup"
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/ready") == 200 ]]; then
      return 0
    fi
    sleep 0.05
  done
  die "the server on port $port was not ready within ${timeout} s"
}

# proc_kb PID FIELD: a field of /proc/PID/status in kB (VmRSS, VmHWM, ...).
proc_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# Resets the peak RSS (VmHWM) of PID to its current RSS (Linux >= 4.0, needs ptrace rights).
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null; }

# upload FILE VERSION PORT OUTJSON: streams FILE with `curl -T` (no buffering in curl) and
# prints "http_code time_total_s size_upload" on stdout.
upload() {
  local file=$1 version=$2 port=$3 out=$4
  curl -sS -o "$out" -X POST -T "$file" \
    -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' -H 'Expect:' \
    -w '%{http_code} %{time_total} %{size_upload}\n' \
    "http://127.0.0.1:$port/api/v1/firmware?product=bench&version=$version&hardware=esp32"
}

json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# result BENCH METRIC VALUE TARGET STATUS: one row of the results table.
result() {
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RESULTS"
  log "result: $2 = $3 (target: $4) $5"
}

# Arithmetic helpers (awk, so no bc needed).
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
max_of() { printf '%s\n' "$@" | sort -g | tail -n 1; }
# pass_if "EXPR": PASS when the awk expression is true, else FAIL.
pass_if() { awk "BEGIN { exit !($1) }" && echo PASS || echo FAIL; }

# CPU seconds (user + system) that PID has used so far.
cpu_seconds() {
  local tck
  tck=$(getconf CLK_TCK)
  # Fields 14 and 15 of /proc/PID/stat, counted after the ")" that closes the command name.
  sed 's/^.*) //' "/proc/$1/stat" | awk -v t="$tck" '{ printf "%.2f", ($12 + $13) / t }'
}

# now: seconds since the epoch with nanoseconds.
now() { date +%s.%N; }

# busy_pct SECONDS: how busy all CPUs were over the next SECONDS, in percent (from /proc/stat).
busy_pct() {
  local a b
  a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
  sleep "$1"
  b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); busy = y[1] - x[1]; idle = y[2] - x[2];
    printf "%.0f", (busy + idle) ? 100 * busy / (busy + idle) : 0 }'
}

# wait_quiet MAX_S: waits up to MAX_S seconds until the CPUs are less than BENCH_QUIET_PCT
# (default 10) percent busy over BENCH_QUIET_SECS (default 5) seconds, so that other work on the machine (builds, tests) does
# not skew the figures. Logs what it saw either way; never fails.
wait_quiet() {
  local max=${1:-0} limit=${BENCH_QUIET_PCT:-10} sample=${BENCH_QUIET_SECS:-5} start=$SECONDS busy
  while :; do
    busy=$(busy_pct "$sample")
    if ((busy < limit)); then
      log "CPUs ${busy}% busy over $sample s (< ${limit}%): machine quiet; load average $(cut -d' ' -f1-3 /proc/loadavg)"
      return 0
    fi
    if ((SECONDS - start >= max)); then
      log "WARNING: CPUs ${busy}% busy over $sample s before this benchmark: other work on this machine may skew the figures"
      return 0
    fi
    sleep 5
  done
}

# perf_report DATA OUT: the flat profile of a `perf record -g` file (by DSO, by symbol, and the
# callers of the hottest symbols), as bench/profile.sh and bench/hotpaths.sh write it.
perf_report() {
  local data=$1 out=$2
  {
    perf report -i "$data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -E '^ +[0-9]'
    echo
    perf report -i "$data" --no-children --sort symbol --stdio -g none --percent-limit 0.3 2>/dev/null | grep -E '^ +[0-9]'
    echo
    perf report -i "$data" --no-children --sort symbol --stdio -g caller --percent-limit 5 2>/dev/null | grep -v '^#' | grep -v '^$'
  } | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | cut -c1-160 >"$out"
}

# seed_release_fleet BIN PORT DATA_DIR N RINGS LOG -> RELEASE: a server on DATA_DIR gets the
# schema, builds 1.0.0 and 2.0.0 of product `bench` (hardware esp32) and release 2.0.0 of the
# second; it is stopped, and N devices on 1.0.0 are seeded (tags ring-0 .. ring-<RINGS-1>).
seed_release_fleet() {
  local bin=$1 port=$2 data=$3 n=$4 rings=$5 logfile=$6 v code build2 dir
  local base=http://127.0.0.1:$port
  dir=$(dirname -- "$data")
  start_updraft "$bin" "$port" "$data" "$logfile"
  wait_ready "$port" "$SERVER_PID"
  for v in 1 2; do
    head -c 100000 /dev/urandom >"$dir/fw$v.bin"
    code=$(curl -s -o "$dir/build$v.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
      --data-binary @"$dir/fw$v.bin" "$base/api/v1/firmware?product=bench&version=$v.0.0&hardware=esp32")
    [[ $code == 201 ]] || die "upload answered $code"
  done
  build2=$(json_field "$dir/build2.json" id)
  code=$(curl -s -o "$dir/release.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
    -d "{\"product\":\"bench\",\"version\":\"2.0.0\",\"artifact_ids\":[\"$build2\"]}" "$base/api/v1/releases")
  [[ $code == 201 ]] || die "creating the release answered $code"
  RELEASE=$(json_field "$dir/release.json" id)
  stop_pid "$SERVER_PID"
  python3 "$BENCH_DIR/checkin_seed.py" "$data/updraft.db" "$n" "$rings" 2>>"$(dirname -- "$logfile")/seed.log"
}

# start_ring_rollouts PORT RELEASE COUNT -> ROLLOUTS: rollout k of RELEASE targets tag ring-k
# and hardware esp32, started at creation.
start_ring_rollouts() {
  local port=$1 release=$2 count=$3 k code dir
  dir=$(mktemp -d "${TMP:-/tmp}/rollouts.XXXXXX")
  ROLLOUTS=()
  for ((k = 0; k < count; k++)); do
    code=$(curl -s -o "$dir/rollout$k.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' \
      -d "{\"release_id\":\"$release\",\"name\":\"ring $k\",\"target\":{\"tags\":[\"ring-$k\"],\"hardware\":[\"esp32\"]},\"start\":true}" \
      "http://127.0.0.1:$port/api/v1/rollouts")
    [[ $code == 201 ]] || die "creating rollout $k answered $code: $(cat "$dir/rollout$k.json")"
    ROLLOUTS+=("$(json_field "$dir/rollout$k.json" id)")
  done
}
