#!/usr/bin/env bash
# Single sign-on (issue 14): server CPU per request of an admin GET authenticated by an
# OpenID provider's access token (RS256, verified against the cached JWKS), against the same
# GET with the admin key, on the same server in the same run.
#
# One release server trusting the test OpenID provider (tests/oidc/provider.mjs, the npm
# package oidc-provider, installed under target/oidc-provider as scripts/test.sh does); one
# client-credentials token of `ops-admin` (role updraft-admin). Then, one after the other, a
# warm-up and a measured `wrk -t2 -c32` run of GET /api/v1/products with:
#
#   key   Authorization: Bearer <the admin key>
#   jwt   Authorization: Bearer <the access token>
#
# For each: requests, server CPU (utime + stime from /proc/PID/stat), CPU µs per request, and
# the ratio to `key`. The provider is not asked anything during the measured runs (its keys
# are cached): its CPU is not counted, and the server's count of key fetches is printed.
#
#   bench/oidc.sh            # 15 s per scenario
#   bench/oidc.sh --quick    # 5 s per scenario (OIDC_SECONDS overrides both)
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap 'bench_cleanup; [[ -n "${PROVIDER_PID:-}" ]] && stop_pid "$PROVIDER_PID"' EXIT

SECS=${OIDC_SECONDS:-15}
WARM=3
if [[ ${1:-} == --quick ]]; then SECS=${OIDC_SECONDS:-5}; WARM=2; fi
need_tools wrk python3 curl node npm
RAW=$OUT_DIR/oidc
rm -rf "$RAW" && mkdir -p "$RAW"

# The provider's node modules, as scripts/test.sh installs them.
PROVIDER_DIR=$REPO_DIR/target/oidc-provider
if ! cmp -s "$REPO_DIR/tests/oidc/package-lock.json" "$PROVIDER_DIR/package-lock.json" || [[ ! -f "$PROVIDER_DIR/node_modules/oidc-provider/package.json" ]]; then
  mkdir -p "$PROVIDER_DIR"
  cp "$REPO_DIR/tests/oidc/package.json" "$REPO_DIR/tests/oidc/package-lock.json" "$PROVIDER_DIR/"
  flock "$PROVIDER_DIR.lock" npm ci --prefix "$PROVIDER_DIR" --no-audit --no-fund >"$RAW/npm.log" 2>&1 || die "npm ci failed (see $RAW/npm.log)"
fi
cp "$REPO_DIR/tests/oidc/provider.mjs" "$PROVIDER_DIR/provider.mjs"

BIN=$(updraft_bin)
bench_tmpdir
(cd "$PROVIDER_DIR" && exec env PORT=0 node provider.mjs) >"$RAW/provider.out" 2>"$RAW/provider.log" 9>&- &
PROVIDER_PID=$!
for _ in $(seq 1 100); do [[ -s $RAW/provider.out ]] && break; sleep 0.1; done
ISSUER=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["issuer"])' "$RAW/provider.out")
log "provider at $ISSUER"

PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
BENCH_SERVER_ENV=(UPDRAFT_OIDC_ISSUER="$ISSUER" UPDRAFT_OIDC_AUDIENCE=urn:updraft)
start_updraft "$BIN" "$PORT" "$TMP/data" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"

TOKEN=$(curl -s -X POST "$ISSUER/token" -d grant_type=client_credentials -d client_id=ops-admin -d client_secret=ops-admin-secret \
  -d resource=urn:updraft | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for credential in "$BENCH_KEY" "$TOKEN"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $credential" "$BASE/api/v1/products")
  [[ $code == 200 ]] || die "GET /api/v1/products answered $code"
done

LUA=$RAW/header.lua
run() {
  local name=$1 credential=$2
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$credential" >"$LUA"
  wrk -t2 -c32 -d"${WARM}s" -s "$LUA" "$BASE/api/v1/products" >/dev/null
  local before after
  before=$(cpu_seconds "$SERVER_PID")
  wrk -t2 -c32 -d"${SECS}s" -s "$LUA" "$BASE/api/v1/products" >"$RAW/$name.txt"
  after=$(cpu_seconds "$SERVER_PID")
  local requests errors
  requests=$(awk '/requests in/ { print $1 }' "$RAW/$name.txt")
  errors=$(awk '/Non-2xx or 3xx responses:/ { n += $NF } END { print n + 0 }' "$RAW/$name.txt")
  ((errors == 0)) || die "$name: $errors requests were refused (see $RAW/$name.txt)"
  CPU_US[$name]=$(calc "($after - $before) * 1000000 / $requests" 1)
  REQS[$name]=$requests
}
declare -A CPU_US REQS
run key "$BENCH_KEY"
run jwt "$TOKEN"

printf '%-6s %10s %10s %14s %8s\n' scenario requests req/s 'CPU µs/req' ratio
for name in key jwt; do
  printf '%-6s %10s %10s %14s %8s\n' "$name" "${REQS[$name]}" "$(calc "${REQS[$name]} / $SECS" 0)" "${CPU_US[$name]}" \
    "$(calc "${CPU_US[$name]} / ${CPU_US[key]}" 2)"
done
log "key fetches by the server during the whole run: $(curl -s "$BASE/metrics" | awk '/^updraft_oidc_key_fetches_total/ { print $2 }')"
