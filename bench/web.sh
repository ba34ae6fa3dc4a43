#!/usr/bin/env bash
# The web dashboard's cost: the size of its built assets (raw and gzipped, as served), and
# what serving it adds to the server's idle RSS.
#
# - Sizes: every file that index.html loads (the app: JS and CSS), fetched from a running
#   server; the files under /vendor/ that only one page loads (esp-web-tools for the USB
#   flasher, ReDoc for /admin/redoc) are listed apart. Target: the app under 500 KiB gzipped.
# - RSS: WEB_RUNS (3) pairs of fresh servers, one with the dashboard switched off
#   (UPDRAFT_DASHBOARD_ENABLED=false), one with it on after a browser's worth of requests
#   (index.html and every asset, gzipped, 20 times over, plus the flasher's script); VmRSS
#   2 s later. Target: the dashboard adds under 5 MiB.
#
#   WEB_RUNS=3 bench/web.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

RUNS=${WEB_RUNS:-3}
BIN=$(updraft_bin)
need_tools curl python3
RAW=$OUT_DIR/web
rm -rf "$RAW" && mkdir -p "$RAW"

start() { # start NAME [ENV...]: starts a server; sets PORT and SERVER_PID
  local name=$1; shift
  bench_tmpdir
  PORT=$(free_port)
  BENCH_SERVER_ENV=(UPDRAFT_MQTT_ENABLED=false "$@")
  start_updraft "$BIN" "$PORT" "$TMP/data" "$RAW/$name.log"
  wait_ready "$PORT" "$SERVER_PID"
}

# ---- sizes -------------------------------------------------------------------------
start sizes
python3 - "$PORT" "$REPO_DIR/web/node_modules/esp-web-tools/dist/web" >"$RAW/sizes.txt" <<'PY'
import gzip, os, re, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
def get(path):
    with urllib.request.urlopen(base + path) as r:
        return r.read()
index = get("/")
assets = sorted(set(re.findall(rb'(?:src|href)="(/assets/[^"]+)"', index)))
raw = len(index); gz = len(gzip.compress(index, 6))
for a in assets:
    body = get(a.decode())
    raw += len(body); gz += len(gzip.compress(body, 6))
def folder(prefix, names):
    r = g = 0
    for n in names:
        body = get(prefix + n)
        r += len(body); g += len(gzip.compress(body, 6))
    return r, g
print(f"app {raw} {gz} {len(assets)}")
r, g = folder("/vendor/esp-web-tools/", ["install-button.js"])
print(f"esp-web-tools-button {r} {g} 1")
# Everything the flasher may load on demand (its dialog, esptool-js, every chip's stub).
if os.path.isdir(sys.argv[2]):
    names = sorted(n for n in os.listdir(sys.argv[2]) if n.endswith(".js"))
    r, g = folder("/vendor/esp-web-tools/", names)
    print(f"esp-web-tools-all-{len(names)}-files {r} {g} {len(names)}")
r, g = folder("/vendor/redoc/", ["redoc.standalone.js"])
print(f"redoc {r} {g} 1")
PY
stop_pid "$SERVER_PID"
while read -r what raw gz files; do
  kib=$(calc "$gz / 1024" 1)
  case $what in
    app) result web "dashboard app: index.html + $files assets, gzipped (KiB; raw $(calc "$raw / 1024" 1))" "$kib" "< 500" "$(pass_if "$kib < 500")" ;;
    *) result web "$what (loaded only by its page), gzipped (KiB; raw $(calc "$raw / 1024" 1))" "$kib" "-" "-" ;;
  esac
  log "$what: $raw bytes, $gz gzipped"
done <"$RAW/sizes.txt"

# ---- RSS -----------------------------------------------------------------------------
off=() on=() added=()
for ((i = 1; i <= RUNS; i++)); do
  start "off-$i" UPDRAFT_DASHBOARD_ENABLED=false
  sleep 2
  a=$(proc_kb "$SERVER_PID" VmRSS)
  stop_pid "$SERVER_PID"

  start "on-$i"
  assets=$(curl -s "http://127.0.0.1:$PORT/" | grep -o '/assets/[^"]*' | sort -u)
  for ((n = 0; n < 20; n++)); do
    for path in / $assets /vendor/esp-web-tools/install-button.js /devices /rollouts/new; do
      curl -s -o /dev/null --compressed -H 'Accept: text/html' "http://127.0.0.1:$PORT$path"
    done
  done
  sleep 2
  b=$(proc_kb "$SERVER_PID" VmRSS)
  stop_pid "$SERVER_PID"
  off+=("$a") on+=("$b") added+=("$((b - a))")
  log "run $i: dashboard off $a kB, on after serving it $b kB"
done
OFF=$(calc "$(median "${off[@]}") / 1024" 1)
ON=$(calc "$(median "${on[@]}") / 1024" 1)
ADD=$(calc "$(median "${added[@]}") / 1024" 2)
result web "idle VmRSS, dashboard off, median of $RUNS (MiB)" "$OFF" "-" "-"
result web "idle VmRSS, dashboard served 20x, median of $RUNS (MiB)" "$ON" "-" "-"
result web "what the dashboard adds to idle RSS, median (MiB)" "$ADD" "< 5" "$(pass_if "$ADD < 5")"
