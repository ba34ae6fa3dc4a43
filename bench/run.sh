#!/usr/bin/env bash
# Updraft's performance benchmarks. See docs/PERFORMANCE.md.
#
#   bench/run.sh                      # all of them (ALL below), about 15 minutes
#   bench/run.sh download idle        # only these
#   bench/run.sh soak                 # the 1-hour soak (bench/soak.sh): never part of the default
#                                     # list, only run when named (`--quick soak`: ~2 minutes)
#   bench/run.sh --quick [names...]   # every benchmark at a tiny size, on a debug build:
#                                     # proves the scripts still work (.ci/run calls it);
#                                     # its figures mean nothing and go to bench/out/quick/
#   UPDRAFT_BIN=/path/to/updraft bench/run.sh
#   BENCH_WAIT_QUIET=600 bench/run.sh # before each, wait up to 600 s for idle CPUs
#   BENCH_LABEL="commit abc1234" ...  # what the binary is, recorded in bench/out/machine.txt
#
# Without UPDRAFT_BIN, the release binary is built first (`cargo build --release`, honouring
# CARGO_TARGET_DIR). Raw outputs go to bench/out/<benchmark>/, the figures to
# bench/out/results.tsv and bench/out/results.md (a dated copy in bench/out/history/), and a
# table is printed at the end. Only one run at a time: a second waits (flock on bench/out/.lock).
# Every server is started on a free 127.0.0.1 port with a fresh temp data dir and stopped by
# PID when its benchmark ends. Exit status: 0 when every benchmark ran (whether or not its
# targets were met), 1 when one could not run.
set -euo pipefail

QUICK=
if [[ ${1:-} == --quick ]]; then
  QUICK=1
  shift
  export BENCH_OUT_DIR=${BENCH_OUT_DIR:-$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)/out/quick}
fi
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

ALL=(upload download concurrent idle checkin rollouts mqtt metrics hotpaths shutdown auth admin_auth oidc tls audit web dashboard ddi simulate hostile)
# Run only when named: too long for the default list.
NAMED_ONLY=(soak)
if (($# == 0)); then
  selected=("${ALL[@]}")
else
  selected=()
  for name in "$@"; do
    if [[ $name == -h || $name == --help ]]; then
      sed -n '2,21p' "$0"
      exit 0
    fi
    [[ " ${ALL[*]} ${NAMED_ONLY[*]} " == *" $name "* ]] || die "unknown benchmark '$name' (expected: ${ALL[*]} ${NAMED_ONLY[*]})"
    selected+=("$name")
  done
fi

# Each only where the caller did not choose one.
default() { local name=${1%%=*}; [[ -n ${!name:-} ]] || export "$1"; }
if [[ -z $QUICK ]]; then
  # The suite's sizes, chosen so that all of it runs in about 15 minutes on 2 cores. Each
  # script run alone keeps its own, larger defaults (e.g. bench/checkin.sh measures 1,000,000
  # devices; see docs/PERFORMANCE.md for those figures).
  for setting in BENCH_QUIET_SECS=2 UPLOAD_MIB=512 UPLOAD_RUNS=2 DOWNLOAD_DURATION=6s CHECKIN_SIZES="1000 100000" \
    CHECKIN_SECONDS=5 ROLLOUT_DEVICES=100000 ROLLOUT_COUNT=10 ROLLOUT_WARM_AFTER=10 MQTT_PUB_RUNS=1 MQTT_HOLD_SECS=5 \
    METRICS_SECONDS=15 METRICS_IDLE=10 HOTPATHS_SECONDS=3 HOTPATHS_WARMUP=2 SHUTDOWN_DEVICES=100000 \
    SHUTDOWN_CHECKIN_SECONDS=15 AUTH_SECONDS=4 AUTH_WARMUP=2 AUTH_ROUNDS=1 ADMIN_AUTH_SECONDS=3 OIDC_SECONDS=4 \
    TLS_ROUNDS=1 TLS_SECONDS=2 AUDIT_SECONDS=4 AUDIT_ROUNDS=1 DASHBOARD_SECONDS=1 DDI_SECONDS=5 GOOSEBIT_DEVICES=300 \
    SIMULATE_SECONDS=15 HOSTILE_SECONDS=4; do
    default "$setting"
  done
fi
if [[ -n $QUICK ]]; then
  # Tiny sizes (each only where the caller did not choose one) and a debug build: a check
  # that every script runs end to end, not a measurement.
  for setting in BENCH_QUIET_SECS=1 UPLOAD_MIB=8 UPLOAD_RUNS=1 DOWNLOAD_DURATION=2s DOWNLOAD_ROUNDS=1 DOWNLOAD_CONNECTIONS=8 \
    CONCURRENT_CLIENTS=50 CONCURRENT_HOLD=1 IDLE_RUNS=1 CHECKIN_SIZES=1000 CHECKIN_SECONDS=2 \
    ROLLOUT_DEVICES=1000 ROLLOUT_COUNT=2 ROLLOUT_WARM_AFTER=2 MQTT_DEVICES=200 MQTT_HOLD_SECS=2 MQTT_PUB_RUNS=1 MQTT_PUB_SECONDS=2 \
    MQTT_PUBLISHERS=10 METRICS_IDLE=2 METRICS_SECONDS=5 HOTPATHS_SECONDS=2 HOTPATHS_WARMUP=1 HOTPATHS_DEVICES=100 \
    SHUTDOWN_DEVICES=1000 SHUTDOWN_ROLLOUTS=2 SHUTDOWN_CHECKIN_SECONDS=3 AUTH_SECONDS=2 AUTH_WARMUP=1 AUTH_ROUNDS=1 \
    AUTH_DEVICES=100 ADMIN_AUTH_SECONDS=2 OIDC_SECONDS=2 TLS_DEVICES=100 TLS_ROUNDS=1 TLS_SECONDS=2 \
    AUDIT_DEVICES=100 AUDIT_ROUNDS=1 AUDIT_SECONDS=2 AUDIT_WARMUP=1 WEB_RUNS=1 DASHBOARD_DEVICES=1000 \
    DASHBOARD_SECONDS=2 DDI_DEVICES=1000 DDI_SECONDS=2 GOOSEBIT_DEVICES=20 SIMULATE_QUICK=1 \
    HOSTILE_CONNS=50 HOSTILE_FLOOD=80 HOSTILE_MAX_CONNECTIONS=60 HOSTILE_SECONDS=2 SOAK_QUICK=1; do
    default "$setting"
  done
  if [[ -z ${UPDRAFT_BIN:-} ]]; then
    log "quick run: building the debug binary (cargo build)"
    (cd "$REPO_DIR" && cargo build --quiet) >&2 || die "cargo build failed"
    UPDRAFT_BIN=${CARGO_TARGET_DIR:-$REPO_DIR/target}/debug/updraft
  fi
fi

UPDRAFT_BIN=$(updraft_bin)
export UPDRAFT_BIN

# Keep the rows of benchmarks not run now; replace those of the selected ones.
touch "$RESULTS"
for name in "${selected[@]}"; do
  awk -F'\t' -v b="$name" '$1 != b' "$RESULTS" >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
done

{
  echo "date: $(date -Is)"
  echo "binary: $UPDRAFT_BIN ($(stat -c %s "$UPDRAFT_BIN") bytes, built $(date -Is -r "$UPDRAFT_BIN"))"
  echo "binary sha256: $(sha256sum <"$UPDRAFT_BIN" | cut -d' ' -f1)"
  if [[ -n "${BENCH_LABEL:-}" ]]; then
    echo "build: $BENCH_LABEL"
  else
    echo "checkout: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_DIR" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
  fi
  echo "cpu: $(nproc) x $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "kernel: $(uname -sr)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "loadavg: $(cat /proc/loadavg)"
} >"$OUT_DIR/machine.txt"
cat "$OUT_DIR/machine.txt" >&2

failed=()
for name in "${selected[@]}"; do
  log "=== $name ==="
  wait_quiet "${BENCH_WAIT_QUIET:-0}"
  echo "$name: loadavg before: $(cat /proc/loadavg)" >>"$OUT_DIR/machine.txt"
  if ! bash "$BENCH_DIR/$name.sh" 2>&1 | tee "$OUT_DIR/$name.log" >&2; then
    failed+=("$name")
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "benchmark did not complete (see bench/out/$name.log)" "-" "-" ERROR >>"$RESULTS"
  fi
  echo "$name: loadavg after: $(cat /proc/loadavg)" >>"$OUT_DIR/machine.txt"
done

python3 - "$RESULTS" "$OUT_DIR/results.md" "$OUT_DIR/machine.txt" "$QUICK" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
if sys.argv[4]:
    # Tiny sizes on a debug build: targets are not judged.
    rows = [r[:4] + ["(quick)" if r[4] in ("PASS", "FAIL") else r[4]] for r in rows]
order = {"upload": 0, "download": 1, "concurrent": 2, "idle": 3}
rows.sort(key=lambda r: order.get(r[0], 9))  # stable: keeps each benchmark's own order
head = ["benchmark", "metric", "measured", "target", "result"]
widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
print()
print(line(head))
print("  ".join("-" * w for w in widths))
for r in rows:
    print(line(r))
# Memory under load, in one table: the server's RSS in each situation this run measured.
def find(bench, *words):
    for r in rows:
        if r[0] == bench and all(w in r[1] for w in words):
            return r
memory = [
    ("idle, fresh server", find("idle", "idle VmRSS", "median")),
    ("stalled downloads, CONCURRENT_CLIENTS (peak)", find("concurrent", "server RSS peak")),
    ("idle MQTT sessions (held)", find("mqtt", "Updraft: VmRSS with", "idle sessions")),
    ("simulated polling devices (end | peak)", find("simulate", "server RSS with", "simulated polling devices")),
    ("check-in flood, 100,000 devices (bytes per device above idle, not MiB)", find("checkin", "100000 devices: (RSS under")),
    ("check-in flood, 1,000,000 devices (bytes per device above idle, not MiB)", find("checkin", "1000000 devices: (RSS under")),
]
memory = [(label, r) for label, r in memory if r]
with open(sys.argv[2], "w") as md:
    md.write("```\n" + open(sys.argv[3]).read() + "```\n\n")
    md.write("| " + " | ".join(head) + " |\n|" + "---|" * 5 + "\n")
    for r in rows:
        md.write("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n")
    if memory:
        md.write("\n## Server memory under load (the latest figure of each)\n\n| situation | measured as | MiB |\n|---|---|---|\n")
        for label, r in memory:
            md.write(f"| {label} | {r[0]}: {r[1]} | {r[2].replace('|', '/')} |\n")
if memory:
    print()
    print("server memory under load (the latest figure of each, from results.tsv):")
    for label, r in memory:
        print(f"  {label:<42} {r[2]:<16} ({r[0]}: {r[1]})")
PY

# A dated copy, so that a later run (of other benchmarks) does not hide this one's figures.
mkdir -p "$OUT_DIR/history"
cp "$OUT_DIR/results.md" "$OUT_DIR/history/results-$(date +%Y%m%d-%H%M%S)-$(IFS=-; echo "${selected[*]}").md"

if ((${#failed[@]})); then
  log "benchmarks that did not complete: ${failed[*]}"
  exit 1
fi
