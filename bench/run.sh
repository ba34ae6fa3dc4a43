#!/usr/bin/env bash
# Updraft's performance benchmarks. See docs/PERFORMANCE.md.
#
#   bench/run.sh                      # all: upload, download, concurrent, idle
#   bench/run.sh download idle        # only these
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
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

ALL=(upload download concurrent idle checkin rollouts mqtt metrics hotpaths shutdown auth admin_auth oidc tls audit web dashboard ddi simulate)
if (($# == 0)); then
  selected=("${ALL[@]}")
else
  selected=()
  for name in "$@"; do
    case $name in
      upload | download | concurrent | idle | checkin | rollouts | mqtt | metrics | hotpaths | shutdown | auth | admin_auth | oidc | tls | audit | web | dashboard ddi | simulate) selected+=("$name") ;;
      -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
      *) die "unknown benchmark '$name' (expected: ${ALL[*]})" ;;
    esac
  done
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

python3 - "$RESULTS" "$OUT_DIR/results.md" "$OUT_DIR/machine.txt" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
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
with open(sys.argv[2], "w") as md:
    md.write("```\n" + open(sys.argv[3]).read() + "```\n\n")
    md.write("| " + " | ".join(head) + " |\n|" + "---|" * 5 + "\n")
    for r in rows:
        md.write("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n")
PY

# A dated copy, so that a later run (of other benchmarks) does not hide this one's figures.
mkdir -p "$OUT_DIR/history"
cp "$OUT_DIR/results.md" "$OUT_DIR/history/results-$(date +%Y%m%d-%H%M%S)-$(IFS=-; echo "${selected[*]}").md"

if ((${#failed[@]})); then
  log "benchmarks that did not complete: ${failed[*]}"
  exit 1
fi
