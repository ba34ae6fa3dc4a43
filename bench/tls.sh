#!/usr/bin/env bash
# TLS benchmark (issue 14): what client certificates (mutual TLS) cost a handshake and a
# check-in, and whether the certificate reload watcher costs anything on the request path.
#
# A fleet of TLS_DEVICES (default 1000) seeded devices with tokens (bench/checkin_seed.py),
# a test PKI made with openssl (server CA, server certificate for localhost, device CA, a
# certificate naming device 1 by its MAC), and one server per configuration:
#   plain-reload  HTTPS, UPDRAFT_TLS_RELOAD_SECS=1 (the watcher checks the files every second)
#   plain-static  HTTPS, UPDRAFT_TLS_RELOAD_SECS=0 (no watcher)
#   mtls          HTTPS with UPDRAFT_TLS_CLIENT_CA (optional client certificates), reload 1 s
# Measured (client and server share this machine's cores, so each figure also has the
# server's own CPU time per request or connection, from /proc, which the client's share
# does not skew):
#   - keep-alive token check-ins: wrk -t2 -c64 (bench/checkin.lua), TLS_ROUNDS rounds
#     alternating the three configurations, medians: the watcher's cost, and what offering
#     client certificates costs token devices;
#   - new TLS connections (`openssl s_time -new`, one client): without a client certificate
#     on each configuration, and with the device certificate on mtls;
#   - a check-in per new connection with the certificate (`s_time -new -www`), mtls;
#   - keep-alive check-ins from one Python client (bench/tls_keepalive.py): token vs
#     certificate on mtls (same client, so the ratio is the server's difference).
#
#   TLS_SECONDS=10 TLS_ROUNDS=3 bench/tls.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

N=${TLS_DEVICES:-1000}
SECS=${TLS_SECONDS:-10}
ROUNDS=${TLS_ROUNDS:-3}
BIN=$(updraft_bin)
need_tools wrk python3 curl openssl
RAW=$OUT_DIR/tls
rm -rf "$RAW" && mkdir -p "$RAW"
bench_tmpdir
PKI=$TMP/pki
mkdir -p "$PKI"
EC=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
(
  cd "$PKI"
  openssl req -x509 "${EC[@]}" -days 2 -subj "/CN=Bench server CA" -keyout server-ca.key -out server-ca.pem
  openssl req "${EC[@]}" -subj "/CN=localhost" -keyout server.key -out server.csr
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
  openssl x509 -req -in server.csr -CA server-ca.pem -CAkey server-ca.key -CAcreateserial -days 1 -extfile server.ext -out server.pem
  openssl req -x509 "${EC[@]}" -days 2 -subj "/CN=Bench device CA" -keyout device-ca.key -out device-ca.pem
  openssl req "${EC[@]}" -subj "/CN=02:00:00:00:00:01" -keyout device.key -out device.csr
  printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' >client.ext
  openssl x509 -req -in device.csr -CA device-ca.pem -CAkey device-ca.key -CAcreateserial -days 1 -extfile client.ext -out device.pem
) >"$RAW/pki.log" 2>&1 || die "openssl failed: $(cat "$RAW/pki.log")"

PORT=$(free_port)
DATA=$TMP/data
log "fleet of $N devices: schema and one build"
start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server-seed.log"
wait_ready "$PORT" "$SERVER_PID"
head -c 100000 /dev/urandom >"$TMP/fw.bin"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/octet-stream' \
  --data-binary @"$TMP/fw.bin" "http://127.0.0.1:$PORT/api/v1/firmware?product=bench&version=1.0.0&hardware=esp32")
[[ $code == 201 ]] || die "upload answered $code"
stop_pid "$SERVER_PID"
python3 "$BENCH_DIR/checkin_seed.py" "$DATA/updraft.db" "$N" 2>>"$RAW/seed.log"

BASE=https://localhost:$PORT
CURL_TLS=(--cacert "$PKI/server-ca.pem" --resolve "localhost:$PORT:127.0.0.1")
# start_config NAME: starts the server in configuration NAME and waits until it answers.
start_config() {
  BENCH_SERVER_ENV=(UPDRAFT_TLS_CERT="$PKI/server.pem" UPDRAFT_TLS_KEY="$PKI/server.key" UPDRAFT_MQTT_ENABLED=false)
  case $1 in
    plain-reload) BENCH_SERVER_ENV+=(UPDRAFT_TLS_RELOAD_SECS=1) ;;
    plain-static) BENCH_SERVER_ENV+=(UPDRAFT_TLS_RELOAD_SECS=0) ;;
    mtls) BENCH_SERVER_ENV+=(UPDRAFT_TLS_RELOAD_SECS=1 UPDRAFT_TLS_CLIENT_CA="$PKI/device-ca.pem") ;;
  esac
  start_updraft "$BIN" "$PORT" "$DATA" "$RAW/server-$1.log"
  local i
  for ((i = 0; i < 600; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "${CURL_TLS[@]}" "$BASE/api/ready") == 200 ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited: $(tail -5 "$RAW/server-$1.log")"
    sleep 0.05
  done
  answer=$(curl -s "${CURL_TLS[@]}" -H "Authorization: Bearer upd_dev_bench_1" "$BASE/api/v1/device/checkin?version=1.0.0")
  [[ $answer == *'"update":null'* ]] || die "unexpected check-in answer: $answer"
}
rps_of() { awk '/^Requests\/sec:/ { print $2 }' "$1"; }
requests_of() { awk '/requests in/ { print $1 }' "$1"; }
# wrk_run OUT: keep-alive token check-ins for SECS; prints "req/s server-CPU-us-per-request".
wrk_run() {
  local out=$1 before after
  before=$(cpu_seconds "$SERVER_PID")
  BENCH_DEVICES=$N wrk -t2 -c64 -d"${SECS}s" -s "$BENCH_DIR/checkin.lua" "$BASE" >"$out" 2>&1
  after=$(cpu_seconds "$SERVER_PID")
  printf '%s %s\n' "$(rps_of "$out")" "$(calc "($after - $before) * 1000000 / $(requests_of "$out")" 1)"
}
# s_time_rate OUT ARGS...: `openssl s_time -new` (one client, a new TLS connection each
# time); prints "connections per real second, server CPU us per connection".
s_time_rate() {
  local out=$1 before after
  shift
  before=$(cpu_seconds "$SERVER_PID")
  openssl s_time -connect "127.0.0.1:$PORT" -new -time "$SECS" -CAfile "$PKI/server-ca.pem" "$@" >"$out" 2>&1 || true
  after=$(cpu_seconds "$SERVER_PID")
  awk -v cpu="$(calc "$after - $before" 3)" '/connections in [0-9]+ real seconds/ { printf "%.0f/s, %.0f us", $1 / $4, cpu * 1000000 / $1 }' "$out"
}

wait_quiet 60
declare -A KEEPALIVE CPU HANDSHAKES
for ((r = 1; r <= ROUNDS; r++)); do
  for config in plain-reload plain-static mtls; do
    start_config "$config"
    BENCH_DEVICES=$N wrk -t2 -c64 -d3s -s "$BENCH_DIR/checkin.lua" "$BASE" >/dev/null 2>&1 # warm-up (connections, fleet index)
    read -r rps us < <(wrk_run "$RAW/wrk-$config-$r.txt")
    KEEPALIVE[$config]+="$rps "
    CPU[$config]+="$us "
    HANDSHAKES[$config]+="$(s_time_rate "$RAW/s_time-$config-$r.txt") | "
    stop_pid "$SERVER_PID"
  done
done
# shellcheck disable=SC2086
for config in plain-reload plain-static mtls; do
  result tls "$config: keep-alive token check-ins over HTTPS, wrk -c64 (req/s median; runs: ${KEEPALIVE[$config]% })" "$(median ${KEEPALIVE[$config]})" "-" "-"
  result tls "$config: server CPU per keep-alive check-in (us median; runs: ${CPU[$config]% })" "$(median ${CPU[$config]})" "-" "-"
  result tls "$config: new TLS connections without a client certificate (s_time; per run: rate, server CPU per connection)" "${HANDSHAKES[$config]% | }" "-" "-"
done
# shellcheck disable=SC2086
result tls "watcher / no watcher: server CPU per keep-alive check-in" "$(calc "$(median ${CPU[plain-reload]}) / $(median ${CPU[plain-static]})" 3)" "within noise" "-"

start_config mtls
code=$(curl -s -o /dev/null -w '%{http_code}' "${CURL_TLS[@]}" --cert "$PKI/device.pem" --key "$PKI/device.key" "$BASE/api/v1/device/checkin?version=1.0.0")
[[ $code == 200 ]] || die "a check-in with the client certificate answered $code"
NEW_CERT=$(s_time_rate "$RAW/s_time-mtls-cert.txt" -cert "$PKI/device.pem" -key "$PKI/device.key")
NEW_CHECKIN=$(s_time_rate "$RAW/s_time-mtls-checkin.txt" -cert "$PKI/device.pem" -key "$PKI/device.key" -www '/api/v1/device/checkin?version=1.0.0')
read -r PY_TOKEN PY_TOKEN_BAD < <(python3 "$BENCH_DIR/tls_keepalive.py" "$PORT" "$PKI/server-ca.pem" token "$SECS" 4 "$N")
read -r PY_CERT PY_CERT_BAD < <(python3 "$BENCH_DIR/tls_keepalive.py" "$PORT" "$PKI/server-ca.pem" cert "$SECS" 4 "$N" "$PKI/device.pem" "$PKI/device.key")
stop_pid "$SERVER_PID"

result tls "mtls: new TLS connections with the device certificate (s_time: rate, server CPU per connection)" "$NEW_CERT" "-" "-"
result tls "mtls: a check-in on a new connection each, by certificate (s_time -www: rate, server CPU per check-in)" "$NEW_CHECKIN" "-" "-"
result tls "mtls: keep-alive check-ins, one Python client (4 processes), token | certificate (req/s; non-200: $PY_TOKEN_BAD | $PY_CERT_BAD)" "$PY_TOKEN | $PY_CERT" "-" "$( ((PY_TOKEN_BAD + PY_CERT_BAD == 0)) && echo - || echo FAIL)"
