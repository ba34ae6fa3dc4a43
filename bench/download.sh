#!/usr/bin/env bash
# Download benchmark: a 4 MiB random artifact, served by updraft (authenticated download URL)
# and by nginx (static file, sendfile on), each hit by `wrk -t2 -c64 -d15s`, alternating
# updraft, nginx, updraft, nginx in the same run. Reports requests/s and MB/s of each and the
# ratio updraft/nginx (target >= 0.70).
#
#   DOWNLOAD_DURATION=15s DOWNLOAD_CONNECTIONS=64 DOWNLOAD_ROUNDS=2 bench/download.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

DURATION=${DOWNLOAD_DURATION:-15s}
CONNS=${DOWNLOAD_CONNECTIONS:-64}
ROUNDS=${DOWNLOAD_ROUNDS:-2}
BIN=$(updraft_bin)
need_tools curl python3 wrk nginx
RAW=$OUT_DIR/download
rm -rf "$RAW" && mkdir -p "$RAW"

bench_tmpdir
chmod 755 "$TMP"
mkdir -p "$TMP/www"
FILE=$TMP/www/firmware.bin
BYTES=$((4 * 1024 * 1024))
head -c "$BYTES" /dev/urandom >"$FILE"
chmod 644 "$FILE"
echo "loadavg at start: $(cat /proc/loadavg)" >"$RAW/info.txt"

# updraft, with the artifact uploaded.
PORT=$(free_port)
start_updraft "$BIN" "$PORT" "$TMP/data" "$RAW/server.log"
UPDRAFT_PID=$SERVER_PID
wait_ready "$PORT" "$UPDRAFT_PID"
read -r code _ _ < <(upload "$FILE" 1.0.0 "$PORT" "$RAW/upload.json")
[[ $code == 201 ]] || die "upload answered HTTP $code: $(cat "$RAW/upload.json")"
ID=$(json_field "$RAW/upload.json" id)
UPDRAFT_URL="http://127.0.0.1:$PORT/api/v1/firmware/$ID/download"

# nginx, with a minimal configuration of our own.
NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes auto;
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
    default_type application/octet-stream;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/www;
    }
}
EOF
nginx -t -q -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" 2>"$RAW/nginx-check.log" || die "nginx -t failed: $(cat "$RAW/nginx-check.log")"
nginx -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" >"$RAW/nginx.log" 2>&1 9>&- &
NGINX_PID=$!
BENCH_PIDS+=("$NGINX_PID")
NGINX_URL="http://127.0.0.1:$NGINX_PORT/firmware.bin"
for ((i = 0; i < 100; i++)); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$NGINX_URL") == 200 ]] && break
  kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$RAW/nginx.log" "$TMP/nginx/logs/error.log")"
  sleep 0.05
done

# Both must serve exactly the same bytes.
want=$(sha256sum <"$FILE" | cut -d' ' -f1)
for url in "$UPDRAFT_URL" "$NGINX_URL"; do
  got=$(curl -sS -f -H "Authorization: Bearer $BENCH_KEY" "$url" | sha256sum | cut -d' ' -f1)
  [[ $got == "$want" ]] || die "$url served different bytes ($got, want $want)"
done

# wrk_run NAME URL OUTFILE: echoes "req_per_s MB_per_s".
wrk_run() {
  local name=$1 url=$2 out=$3
  wrk -t2 -c"$CONNS" -d"$DURATION" --latency -H "Authorization: Bearer $BENCH_KEY" "$url" >"$out" 2>&1 \
    || die "wrk against $name failed: $(cat "$out")"
  if grep -q 'Non-2xx or 3xx responses' "$out"; then die "$name answered errors under load: $(grep 'Non-2xx' "$out")"; fi
  python3 - "$out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
reqs = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", text).group(1))
m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m), ([\d.]+)(B|KB|MB|GB|TB) read", text)
secs = float(m.group(2)) * {"ms": 1e-3, "s": 1, "m": 60}[m.group(3)]
read = float(m.group(4)) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}[m.group(5)]
print(f"{rps:.1f} {read / secs / 1e6:.1f}")
PY
}

log "download: warm-up (3 s each)"
wrk -t2 -c"$CONNS" -d3s -H "Authorization: Bearer $BENCH_KEY" "$UPDRAFT_URL" >"$RAW/warmup-updraft.txt" 2>&1
wrk -t2 -c"$CONNS" -d3s "$NGINX_URL" >"$RAW/warmup-nginx.txt" 2>&1

u_rps=() u_mbs=() n_rps=() n_mbs=()
reset_hwm "$UPDRAFT_PID" || true
for ((r = 1; r <= ROUNDS; r++)); do
  log "download: round $r/$ROUNDS: updraft ($DURATION)"
  cpu0=$(cpu_seconds "$UPDRAFT_PID")
  read -r rps mbs < <(wrk_run updraft "$UPDRAFT_URL" "$RAW/wrk-updraft-$r.txt")
  cpu1=$(cpu_seconds "$UPDRAFT_PID")
  u_rps+=("$rps") u_mbs+=("$mbs")
  echo "round $r updraft: $rps req/s, $mbs MB/s, server CPU $(calc "$cpu1 - $cpu0" 1) s" | tee -a "$RAW/summary.txt" >&2
  log "download: round $r/$ROUNDS: nginx ($DURATION)"
  read -r rps mbs < <(wrk_run nginx "$NGINX_URL" "$RAW/wrk-nginx-$r.txt")
  n_rps+=("$rps") n_mbs+=("$mbs")
  echo "round $r nginx: $rps req/s, $mbs MB/s" | tee -a "$RAW/summary.txt" >&2
  result download "round $r updraft req/s | MB/s" "${u_rps[-1]} | ${u_mbs[-1]}" "-" "-"
  result download "round $r nginx req/s | MB/s" "${n_rps[-1]} | ${n_mbs[-1]}" "-" "-"
done
U_HWM=$(proc_kb "$UPDRAFT_PID" VmHWM)

U_RPS=$(median "${u_rps[@]}") U_MBS=$(median "${u_mbs[@]}")
N_RPS=$(median "${n_rps[@]}") N_MBS=$(median "${n_mbs[@]}")
RATIO=$(calc "$U_RPS / $N_RPS" 2)
result download "updraft req/s | MB/s (median of $ROUNDS)" "$U_RPS | $U_MBS" "-" "-"
result download "nginx req/s | MB/s (median of $ROUNDS)" "$N_RPS | $N_MBS" "-" "-"
result download "updraft/nginx ratio (req/s)" "$RATIO" ">= 0.70" "$(pass_if "$RATIO >= 0.70")"
result download "updraft peak RSS under wrk (MiB)" "$(calc "$U_HWM / 1024" 1)" "-" "-"
