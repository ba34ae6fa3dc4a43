#!/usr/bin/env bash
# Upload benchmark: a 1 GiB random file, streamed with `curl -T` into a fresh server, 3 times
# (versions 1.0.1-1.0.3), against `sha256sum` of the same file with a warm page cache.
# Reports upload MB/s, sha256sum MB/s, their ratio (target >= 0.5) and the server's peak RSS
# during each upload (VmHWM, reset before each upload; target < 64 MiB).
#
#   UPLOAD_MIB=1024 UPLOAD_RUNS=3 bench/upload.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

SIZE_MIB=${UPLOAD_MIB:-1024}
RUNS=${UPLOAD_RUNS:-3}
BIN=$(updraft_bin)
need_tools curl python3
RAW=$OUT_DIR/upload
rm -rf "$RAW" && mkdir -p "$RAW"

bench_tmpdir
FILE=$TMP/upload.bin
BYTES=$((SIZE_MIB * 1024 * 1024))
log "upload: writing ${SIZE_MIB} MiB of random bytes to $FILE"
head -c "$BYTES" /dev/urandom >"$FILE"
cat "$FILE" >/dev/null # warm the page cache
{
  echo "binary: $BIN"
  echo "file: $FILE ($BYTES bytes)"
  echo "loadavg at start: $(cat /proc/loadavg)"
} >"$RAW/info.txt"

# sha256sum, warm cache, $RUNS times.
sha_rates=()
for ((i = 1; i <= RUNS; i++)); do
  t0=$(now)
  expected=$(sha256sum "$FILE" | cut -d' ' -f1)
  t1=$(now)
  secs=$(calc "$t1 - $t0" 3)
  rate=$(calc "$BYTES / ($t1 - $t0) / 1e6" 1)
  sha_rates+=("$rate")
  echo "sha256sum run $i: ${secs} s, ${rate} MB/s" | tee -a "$RAW/sha256sum.txt" >&2
done
SHA_RATE=$(median "${sha_rates[@]}")

# Reference: what the disk sustains for a plain copy + fsync of the same file (informational).
t0=$(now)
dd if="$FILE" of="$TMP/dd-reference.bin" bs=1M conv=fsync status=none
t1=$(now)
DD_RATE=$(calc "$BYTES / ($t1 - $t0) / 1e6" 1)
rm -f "$TMP/dd-reference.bin"
echo "dd copy + fsync reference: $(calc "$t1 - $t0" 3) s, ${DD_RATE} MB/s" | tee -a "$RAW/sha256sum.txt" >&2

PORT=$(free_port)
DATA=$TMP/data
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"
log "upload: server pid $SERVER_PID on 127.0.0.1:$PORT, RSS $(proc_kb "$SERVER_PID" VmRSS) kB"

up_rates=() ratios=() peaks=()
for ((i = 1; i <= RUNS; i++)); do
  version=1.0.$i
  sync # the previous run's blob is already fsynced by the server; this only settles the rest
  reset_hwm "$SERVER_PID" || log "cannot reset VmHWM; the peak is then the process's lifetime peak"
  rss_before=$(proc_kb "$SERVER_PID" VmRSS)
  cpu_before=$(cpu_seconds "$SERVER_PID")
  t0=$(now)
  read -r code curl_total sent < <(upload "$FILE" "$version" "$PORT" "$RAW/response-$i.json")
  t1=$(now)
  cpu_after=$(cpu_seconds "$SERVER_PID")
  hwm=$(proc_kb "$SERVER_PID" VmHWM)
  [[ $code == 201 ]] || die "upload $i answered HTTP $code: $(cat "$RAW/response-$i.json")"
  [[ ${sent%.*} == "$BYTES" ]] || die "curl sent $sent bytes, expected $BYTES"
  got=$(json_field "$RAW/response-$i.json" sha256)
  [[ $got == "$expected" ]] || die "the server's sha256 $got differs from sha256sum's $expected"
  wall=$(calc "$t1 - $t0" 3)
  rate=$(calc "$BYTES / ($t1 - $t0) / 1e6" 1)
  ratio=$(calc "$rate / $SHA_RATE" 2)
  peak_mib=$(calc "$hwm / 1024" 1)
  cpu=$(calc "$cpu_after - $cpu_before" 2)
  up_rates+=("$rate") ratios+=("$ratio") peaks+=("$peak_mib")
  echo "upload run $i (version $version): wall ${wall} s (curl time_total ${curl_total} s), ${rate} MB/s," \
    "ratio to sha256sum ${ratio}, server RSS before ${rss_before} kB, peak ${hwm} kB, server CPU ${cpu} s" |
    tee -a "$RAW/uploads.txt" >&2
  result upload "upload run $i: MB/s" "$rate" "-" "-"
  result upload "upload run $i: ratio to sha256sum" "$ratio" ">= 0.5" "$(pass_if "$ratio >= 0.5")"
  result upload "upload run $i: server peak RSS (MiB)" "$peak_mib" "< 64" "$(pass_if "$peak_mib < 64")"
  result upload "upload run $i: server CPU s / wall s" "$cpu / $wall" "-" "-"
done

UP_MED=$(median "${up_rates[@]}")
RATIO_MED=$(calc "$UP_MED / $SHA_RATE" 2)
PEAK_MAX=$(max_of "${peaks[@]}")
result upload "sha256sum MB/s (median of $RUNS, warm cache)" "$SHA_RATE" "-" "-"
result upload "dd copy+fsync MB/s (disk reference)" "$DD_RATE" "-" "-"
result upload "upload MB/s (median of $RUNS)" "$UP_MED" "-" "-"
result upload "upload/sha256sum ratio (medians)" "$RATIO_MED" ">= 0.5" "$(pass_if "$RATIO_MED >= 0.5")"
result upload "server peak RSS, worst run (MiB)" "$PEAK_MAX" "< 64" "$(pass_if "$PEAK_MAX < 64")"
