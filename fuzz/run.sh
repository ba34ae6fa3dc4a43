#!/usr/bin/env bash
# Runs fuzz targets one after another, each for MINUTES (default 1), and prints the figures
# that docs/RELIABILITY.md records: executions, coverage (libFuzzer's `cov:` edges and `ft:`
# features) and the corpus size.
#
#   fuzz/run.sh TARGET|all [MINUTES]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The committed seeds
# in corpus/TARGET are read, never written: what a run finds goes to target/corpus/TARGET, a
# crash to artifacts/TARGET/ (reproduce it with `cargo +nightly fuzz run TARGET FILE`). Logs
# are in target/logs/TARGET.log. One target at a time, on one core: fuzzing is meant to share
# the machine.
set -euo pipefail
cd "$(dirname "$0")"

what=${1:?usage: fuzz/run.sh TARGET|all [MINUTES]}
minutes=${2:-1}
if [ "$what" = all ]; then
    targets=$(cargo +nightly fuzz list)
else
    targets=$what
fi

cargo +nightly fuzz build $([ "$what" = all ] || echo "$what")
mkdir -p target/logs
printf '%-18s %12s %10s %8s %8s %8s\n' target executions exec/s cov ft corpus
for target in $targets; do
    mkdir -p "target/corpus/$target"
    extra=()
    # Decoding runs under Updraft's own limits (fuzzing::IMAGE_MAX_PIXELS pixels, hence at
    # most about 17 MiB per allocation): any single allocation above 64 MiB is a crash.
    [ "$target" = image_decode ] && extra+=(-malloc_limit_mb=64)
    log="target/logs/$target.log"
    status=0
    cargo +nightly fuzz run "$target" "$PWD/target/corpus/$target" "$PWD/corpus/$target" -- \
        -max_total_time=$((minutes * 60)) -rss_limit_mb=1024 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(sed -E -n 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -E -n 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corpus=$(sed -E -n 's/.* corp: ([0-9]+).*/\1/p' <<<"$last")
    printf '%-18s %12s %10s %8s %8s %8s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corpus:-?}"
    if [ "$status" -ne 0 ]; then
        echo "$target FAILED (exit $status): see fuzz/$log and fuzz/artifacts/$target/" >&2
        grep -E -m3 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" >&2 || true
    fi
done
