#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup & helpers are called from traps / run_logged
# The one command that runs Updraft's whole test suite, on a developer's machine
# or a fresh CI machine (Debian 12).
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh firmware     # extra arguments go to both `cargo nextest run`s
#
# What it does:
#   1. installs what is missing: the PostgreSQL server, Mosquitto and nginx from apt (their
#      own services are kept from starting: they would take ports 1883 and 80), moto[server] (the S3
#      stand-in), the ThingsBoard device SDK, paho-mqtt 2.1.0 and schemathesis 4.32.5 from PyPI,
#      each in a venv under target/, the test OpenID provider (npm package oidc-provider, with npm ci under
#      target/oidc-provider; node and npm from apt when missing), Chromium for the dashboard's
#      browser tests (apt), and cargo-nextest (cargo install). Installing from apt needs root or
#      passwordless sudo; without either, it lists what to install and stops before
#      starting anything,
#   2. starts a throwaway PostgreSQL cluster and a moto S3 server on free loopback ports,
#   3. builds the tests once,
#   4. suite 1/2: all tests (unit + integration) on the embedded backends (SQLite + local folder),
#   5. suite 2/2: only the integration tests and the crash harness (`--test api --test crash`) on the
#      scale-out backends (PostgreSQL + S3),
#   6. stops both servers and deletes their temp dirs on exit, whatever happened.
#
# Not root: the one test that mounts a tmpfs (a full disk) needs root and is skipped.
#
# The tests read:
#   UPDRAFT_TEST_DATABASE     "sqlite", or a postgres:// URL of a database they may create databases/schemas in
#   UPDRAFT_TEST_BLOB         "fs" or "s3"
#   UPDRAFT_TEST_S3_ENDPOINT  S3 endpoint (moto), when UPDRAFT_TEST_BLOB=s3
#   UPDRAFT_TEST_S3_BUCKET    an existing bucket, when UPDRAFT_TEST_BLOB=s3
#   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION
#
# Logs (installs, postgres, moto) go to $UPDRAFT_TEST_LOG_DIR (default: target/test-logs);
# they are printed only when something fails.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

START_SECONDS=$SECONDS
# rustup's default location, for shells (cron, CI agents) whose PATH lacks it.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if [[ "${CI:-}" == "true" ]]; then
  export CARGO_TERM_COLOR=never
fi
# rust-toolchain.toml pins the toolchain. A machine whose rustup cannot download it, but whose
# `stable` is that same version, uses its `stable` under the pinned name.
PINNED=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if command -v rustup >/dev/null 2>&1 && [[ -n "$PINNED" ]] && ! rustup toolchain list 2>/dev/null | grep -q "^$PINNED"; then
  if rustc +stable --version 2>/dev/null | grep -q " $PINNED "; then
    rustup toolchain link "$PINNED" "$(rustc +stable --print sysroot)" >/dev/null
  fi
fi

LOG_DIR=${UPDRAFT_TEST_LOG_DIR:-$ROOT/target/test-logs}
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"

# Settings of the developer's shell must not leak into the servers that the tests start.
while IFS= read -r var; do
  case "$var" in
    UPDRAFT_TEST_* | UPDRAFT_CRASH_*) ;; # the tests' own knobs (tests/crash.rs), not server settings
    UPDRAFT_*) unset "$var" ;;
  esac
done < <(compgen -e)

say() { printf '== %s\n' "$*"; }
# Free space where the build and the test databases live: a full disk fails tests in ways that
# look like bugs, so the log says how much there was at each step.
disk_free() {
  local where
  for where in "$ROOT/target" "${TMPDIR:-/tmp}"; do
    [[ -d $where ]] || continue
    printf '%s: %s free; ' "$where" "$(df -h --output=avail "$where" 2>/dev/null | tail -n 1 | tr -d ' ')"
  done
}
die() { printf '== ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command with its output in $LOG_DIR/<name>.log; prints that log and exits if it fails.
run_logged() {
  local name=$1; shift
  local log="$LOG_DIR/$name.log"
  if ! "$@" >>"$log" 2>&1; then
    printf '== ERROR: %s failed; its log (%s):\n' "$name" "$log" >&2
    cat "$log" >&2
    exit 1
  fi
}

print_log_tail() {
  local file=$1
  if [[ -s "$file" ]]; then
    printf -- '---- last lines of %s ----\n' "$file" >&2
    tail -n 50 "$file" >&2
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------
# cleanup: runs on every exit (success, failure, Ctrl-C, TERM)
# ---------------------------------------------------------------------------
PG_TMP=""
PG_BIN=""
PG_PID=""
MOTO_PID=""
MOTO_TMP=""
CHILD_PID=""
FAILED_SETUP=1

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM HUP
  if [[ -n "$CHILD_PID" ]] && kill -0 "$CHILD_PID" 2>/dev/null; then
    kill -TERM "$CHILD_PID" 2>/dev/null
    wait "$CHILD_PID" 2>/dev/null
  fi
  if [[ -n "$MOTO_PID" ]]; then
    kill "$MOTO_PID" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$MOTO_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$MOTO_PID" 2>/dev/null
    wait "$MOTO_PID" 2>/dev/null
  fi
  if [[ -n "$PG_TMP" && -d "$PG_TMP" ]]; then
    if [[ -f "$PG_TMP/data/postmaster.pid" ]]; then
      PG_PID=$(head -n 1 "$PG_TMP/data/postmaster.pid" 2>/dev/null)
      as_postgres "$PG_BIN/pg_ctl" -D "$PG_TMP/data" stop -m immediate -w -t 30 >/dev/null 2>&1
      if [[ -n "$PG_PID" ]] && kill -0 "$PG_PID" 2>/dev/null; then
        kill -9 "$PG_PID" 2>/dev/null
      fi
    fi
    cp "$PG_TMP/postgres.log" "$LOG_DIR/postgres.log" 2>/dev/null
  fi
  if [[ $rc -ne 0 && $FAILED_SETUP -eq 1 ]]; then
    print_log_tail "$LOG_DIR/postgres.log"
    print_log_tail "$LOG_DIR/moto.log"
  fi
  [[ -n "$PG_TMP" ]] && rm -rf "$PG_TMP"
  [[ -n "$MOTO_TMP" ]] && rm -rf "$MOTO_TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Runs a long command as a child that we can stop when we are interrupted.
run_child() {
  "$@" &
  CHILD_PID=$!
  local rc=0
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

# ---------------------------------------------------------------------------
# installs
# ---------------------------------------------------------------------------
SUDO=()
if [[ $EUID -ne 0 ]] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
fi
CAN_APT=0
if [[ $EUID -eq 0 || ${#SUDO[@]} -gt 0 ]]; then CAN_APT=1; fi
APT_UPDATED=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [[ $APT_UPDATED -eq 0 ]]; then
    run_logged apt-install "${SUDO[@]}" apt-get update -q
    APT_UPDATED=1
  fi
  run_logged apt-install "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@" </dev/null
}

find_pg_bin() {
  local dir found=""
  for dir in /usr/lib/postgresql/*/bin; do
    [[ -x "$dir/initdb" ]] && found+="$dir"$'\n'
  done
  [[ -n "$found" ]] && printf '%s' "$found" | sort -V | tail -n 1
  return 0
}

PG_BIN=$(find_pg_bin)
HAVE_MOSQUITTO=0
if command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]]; then HAVE_MOSQUITTO=1; fi
HAVE_NGINX=0
if command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]; then HAVE_NGINX=1; fi
HAVE_VENV=0
if python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then HAVE_VENV=1; fi

# Without root or sudo nothing can come from apt: say everything that is missing at once.
if [[ $CAN_APT -eq 0 ]]; then
  missing=()
  [[ -n "$PG_BIN" ]] || missing+=(postgresql)
  [[ $HAVE_MOSQUITTO -eq 1 ]] || missing+=(mosquitto)
  [[ $HAVE_NGINX -eq 1 ]] || missing+=(nginx-light)
  [[ $HAVE_VENV -eq 1 ]] || missing+=(python3-venv)
  [[ -x ${CHROMIUM:-/usr/bin/chromium} ]] || missing+=(chromium)
  if [[ ${#missing[@]} -gt 0 ]]; then
    printf '== ERROR: the tests need %s, and installing them needs root (or passwordless sudo).\n' "${missing[*]}" >&2
    printf '   Install them, then run this script again:\n\n' >&2
    printf '     sudo apt-get install %s\n' "${missing[*]}" >&2
    [[ " ${missing[*]} " == *" mosquitto "* ]] &&
      printf '     sudo systemctl disable --now mosquitto   # its service would take port 1883\n' >&2
    [[ " ${missing[*]} " == *" nginx-light "* ]] &&
      printf '     sudo systemctl disable --now nginx       # its service would take port 80\n' >&2
    printf '\n' >&2
    exit 1
  fi
fi

if [[ -z "$PG_BIN" ]]; then
  say "installing PostgreSQL server (apt)"
  # Install postgresql-common first and tell it not to create (and start) the
  # distribution's default cluster: we only want the binaries.
  apt_install postgresql-common
  if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
    "${SUDO[@]}" sed -i -E 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf
  fi
  apt_install postgresql
  PG_BIN=$(find_pg_bin)
  [[ -n "$PG_BIN" ]] || die "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found (see $LOG_DIR/apt-install.log)"
fi

# Installs Debian packages whose service must not start (it would take a port the tests or
# Updraft use), and keeps it off.
apt_install_without_service() {
  local service=$1; shift
  local policy_created=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null \
      && "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d && policy_created=1
  fi
  apt_install "$@"
  [[ -n "$policy_created" ]] && "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null 2>&1; then "${SUDO[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true; fi
}

# Mosquitto: the MQTT tests run every scenario against it too (each test starts its own on
# a free port). Its service would take port 1883, the default of Updraft's embedded broker.
if [[ $HAVE_MOSQUITTO -eq 0 ]]; then
  say "installing mosquitto (apt)"
  apt_install_without_service mosquitto mosquitto mosquitto-clients
fi
# nginx: a test runs the forwarding headers of deployment/nginx.conf in a real nginx. Its
# service would take port 80.
if [[ $HAVE_NGINX -eq 0 ]]; then
  say "installing nginx (apt)"
  apt_install_without_service nginx nginx-light
fi
if [[ $HAVE_VENV -eq 0 ]]; then
  say "installing python3-venv (apt)"
  apt_install python3-venv
fi
# SWUpdate (suricatta, hawkBit mode) and cpio: the hawkBit DDI acceptance test runs the
# unmodified Debian client against the server (tests/clients/swupdate/).
if ! command -v swupdate >/dev/null 2>&1 || ! command -v cpio >/dev/null 2>&1; then
  if [[ $CAN_APT -eq 1 ]]; then
    say "installing swupdate and cpio (apt)"
    apt_install swupdate cpio
  else
    die "the DDI tests need swupdate and cpio: sudo apt-get install swupdate cpio"
  fi
fi

# A venv under target/ with `packages` importable as `module`; made (again) when missing.
make_venv() {
  local venv=$1 module=$2; shift 2
  if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then return 0; fi
  say "installing $* (pip, in $venv)"
  rm -rf "$venv"
  run_logged pip-install python3 -m venv "$venv"
  run_logged pip-install "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "$@"
}

# The real ThingsBoard device SDK (tests/clients/tb_device.py) in its own venv: it ships its
# own paho, which must not meet another one.
TB_VENV="$ROOT/target/venv-tb"
make_venv "$TB_VENV" 'tb_device_mqtt, mmh3' tb-mqtt-client mmh3
export UPDRAFT_TEST_TB_PYTHON="$TB_VENV/bin/python"
# paho-mqtt 2.1.0, as seed 000's device mock pins it (tests/clients/seed000_mock.py).
PAHO_VENV="$ROOT/target/venv-paho"
make_venv "$PAHO_VENV" 'paho.mqtt.client' paho-mqtt==2.1.0
export UPDRAFT_TEST_PAHO_PYTHON="$PAHO_VENV/bin/python"
# schemathesis, pinned (the version of tests/api/properties.rs): the API property tests run it
# against the OpenAPI document. Another version in the venv is replaced.
ST_VENV="$ROOT/target/venv-st"
ST_VERSION=4.32.5
if [[ -x "$ST_VENV/bin/python" ]] && ! "$ST_VENV/bin/python" -c "import importlib.metadata as m; assert m.version('schemathesis') == '$ST_VERSION'" >/dev/null 2>&1; then
  rm -rf "$ST_VENV"
fi
make_venv "$ST_VENV" schemathesis "schemathesis==$ST_VERSION"
export UPDRAFT_TEST_SCHEMATHESIS_PYTHON="$ST_VENV/bin/python"

# moto, the S3 stand-in: the one on PATH, else its own venv (no system-wide pip install,
# which Debian refuses anyway).
MOTO_SERVER=$(command -v moto_server || true)
if [[ -z "$MOTO_SERVER" ]]; then
  MOTO_VENV="$ROOT/target/venv-moto"
  make_venv "$MOTO_VENV" 'moto.server' 'moto[server]'
  MOTO_SERVER="$MOTO_VENV/bin/moto_server"
  [[ -x "$MOTO_SERVER" ]] || die "moto installed but $MOTO_SERVER not found (see $LOG_DIR/pip-install.log)"
fi

# The OpenID provider of the single sign-on tests (tests/oidc: the npm package oidc-provider,
# run by node): its node modules in target/oidc-provider, installed again only when
# tests/oidc/package-lock.json changes. The tests need it: no node or npm is an error.
OIDC_DIR="$ROOT/target/oidc-provider"
if { ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; } && [[ $CAN_APT -eq 1 ]]; then
  say "installing node and npm (apt)"
  apt_install nodejs npm
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  die "the single sign-on tests need node (20 or later) and npm: install them (e.g. apt-get install nodejs npm, or from nodejs.org)"
fi
if ! cmp -s "$ROOT/tests/oidc/package-lock.json" "$OIDC_DIR/package-lock.json" || [[ ! -f "$OIDC_DIR/node_modules/oidc-provider/package.json" ]]; then
  say "installing the test OpenID provider (npm ci, in $OIDC_DIR)"
  mkdir -p "$OIDC_DIR"
  cp "$ROOT/tests/oidc/package.json" "$ROOT/tests/oidc/package-lock.json" "$OIDC_DIR/"
  run_logged npm-install flock "$OIDC_DIR.lock" npm ci --prefix "$OIDC_DIR" --no-audit --no-fund
fi

# The dashboard's browser tests (tests/browser.rs: playwright-core, from web/node_modules, which
# `cargo build` installs with npm ci) drive Debian's Chromium.
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x "$CHROMIUM" ]]; then
  [[ $CAN_APT -eq 1 ]] || die "the browser tests need Chromium: sudo apt-get install chromium (or set CHROMIUM to a Chromium binary)"
  say "installing chromium (apt)"
  apt_install chromium
fi
export CHROMIUM

# cargo-nextest runs the suites (no retries: flaky tests are fixed, see .config/nextest.toml).
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest (cargo install; a few minutes)"
  run_child cargo install --locked cargo-nextest >>"$LOG_DIR/cargo-install.log" 2>&1 \
    || say "cargo-nextest could not be installed (see $LOG_DIR/cargo-install.log)"
fi

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
# initdb refuses to run as root: as root, run the server as the postgres system user.
if [[ $EUID -eq 0 ]]; then
  if ! id -u postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  as_postgres() { runuser -u postgres -- "$@"; }
else
  as_postgres() { "$@"; }
fi

PG_PORT=$(free_port)
say "starting postgres on 127.0.0.1:$PG_PORT ($PG_BIN)"
if [[ $EUID -eq 0 ]]; then
  # /tmp, not $TMPDIR: the postgres user must be able to reach it.
  PG_TMP=$(mktemp -d /tmp/updraft-test-pg.XXXXXX)
  chown postgres: "$PG_TMP"
else
  PG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/updraft-test-pg.XXXXXX")
fi
as_postgres mkdir "$PG_TMP/socket"
run_logged postgres-initdb as_postgres "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres \
  --auth=trust --encoding=UTF8 --locale=C --no-sync
# -w: wait for startup; the server keeps running after pg_ctl exits (stopped in cleanup).
run_logged postgres-start as_postgres "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/postgres.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_TMP/socket -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 -c max_wal_size=128MB -c min_wal_size=32MB" \
  start
PG_PID=$(head -n 1 "$PG_TMP/data/postmaster.pid")
for i in $(seq 1 120); do
  if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres; then break; fi
  [[ $i -eq 120 ]] && die "postgres did not become ready on 127.0.0.1:$PG_PORT"
  sleep 0.5
done
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"

# ---------------------------------------------------------------------------
# moto (S3)
# ---------------------------------------------------------------------------
MOTO_PORT=$(free_port)
S3_ENDPOINT="http://127.0.0.1:$MOTO_PORT"
S3_BUCKET=updraft-test
say "starting moto S3 on 127.0.0.1:$MOTO_PORT"
MOTO_TMP=$(mktemp -d "${TMPDIR:-/tmp}/updraft-test-moto.XXXXXX")
(cd "$MOTO_TMP" && exec "$MOTO_SERVER" -H 127.0.0.1 -p "$MOTO_PORT") >"$LOG_DIR/moto.log" 2>&1 </dev/null &
MOTO_PID=$!

# http METHOD URL -> exits 0 on a 2xx answer
http() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
req = urllib.request.Request(sys.argv[2], method=sys.argv[1], data=b"" if sys.argv[1] == "PUT" else None)
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception as e:
    print(e, file=sys.stderr)
    sys.exit(1)
PY
}
for i in $(seq 1 120); do
  kill -0 "$MOTO_PID" 2>/dev/null || die "moto_server exited early (log: $LOG_DIR/moto.log)"
  if http GET "$S3_ENDPOINT/" 2>/dev/null; then break; fi
  [[ $i -eq 120 ]] && die "moto_server did not answer on $S3_ENDPOINT"
  sleep 0.5
done
run_logged moto-bucket http PUT "$S3_ENDPOINT/$S3_BUCKET"
run_logged moto-bucket http HEAD "$S3_ENDPOINT/$S3_BUCKET"
FAILED_SETUP=0

# ---------------------------------------------------------------------------
# build + suites
# ---------------------------------------------------------------------------
FULL_DISK_TEST=a_full_disk_gets_507_and_leaves_nothing
if cargo nextest --version >/dev/null 2>&1; then
  BUILD=(cargo nextest run --no-run)
  RUN=(cargo nextest run)
  # A filter may match nothing in one of the suites: that is not a failure then.
  (($# > 0)) && RUN+=(--no-tests=warn)
  [[ $EUID -eq 0 ]] || RUN+=(-E "not test(/$FULL_DISK_TEST/)")
else
  say "cargo-nextest is missing: falling back to cargo test (tests run one binary at a time, slower)"
  say "install it with: cargo install --locked cargo-nextest"
  BUILD=(cargo test --no-run)
  RUN=(cargo test)
fi
SKIP=()
if [[ $EUID -ne 0 ]]; then
  say "not root: skipping $FULL_DISK_TEST (it mounts a tmpfs)"
  [[ ${RUN[1]} == test ]] && SKIP=(-- --skip "$FULL_DISK_TEST")
fi

if (($# == 0)); then
  # The code's own rules, as CI checks them: formatted, and clean under Cargo.toml's [lints].
  say "checking format and lints (cargo fmt --check; cargo clippy --all-targets -- -D warnings)"
  cargo fmt --check || die "the code is not formatted: run cargo fmt"
  run_child cargo clippy --all-targets --quiet -- -D warnings || die "clippy found problems (above)"
  # The one unsafe crate (a path dependency, not a workspace member), with Updraft's features.
  say "testing crates/alloc-trim (cargo test -p alloc-trim)"
  run_child cargo test --quiet -p alloc-trim || die "crates/alloc-trim's tests failed"
fi

say "disk before the build: $(disk_free)"
say "building tests (${BUILD[*]})"
run_child "${BUILD[@]}" || die "build failed"

SUITE1=failed
SUITE2=failed

say "disk after the build: $(disk_free)"
say "suite 1/2: sqlite + local folder (all tests)"
if run_child env UPDRAFT_TEST_DATABASE=sqlite UPDRAFT_TEST_BLOB=fs "${RUN[@]}" "$@" "${SKIP[@]}"; then
  SUITE1=passed
fi

say "disk after suite 1: $(disk_free)"
say "suite 2/2: postgres + s3 (integration tests and the crash harness: --test api --test crash)"
if run_child env \
    UPDRAFT_TEST_DATABASE="$DATABASE_URL" \
    UPDRAFT_TEST_BLOB=s3 \
    UPDRAFT_TEST_S3_ENDPOINT="$S3_ENDPOINT" \
    UPDRAFT_TEST_S3_BUCKET="$S3_BUCKET" \
    AWS_ACCESS_KEY_ID=test \
    AWS_SECRET_ACCESS_KEY=test \
    AWS_DEFAULT_REGION=us-east-1 \
    "${RUN[@]}" --test api --test crash "$@" "${SKIP[@]}"; then
  SUITE2=passed
fi

# Each test drops its database when it ends (tests/api/helpers.rs, DataDir); only a test that
# was killed leaves one behind.
LEFT=$("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
  "SELECT count(*) FROM pg_database WHERE datname LIKE 'updraft_test_%'" 2>/dev/null || echo "?")
PG_SIZE=$(du -sh "$PG_TMP/data" 2>/dev/null | cut -f1)
say "disk after suite 2: $(disk_free)test databases left behind: $LEFT (PostgreSQL's data folder: ${PG_SIZE:-?})"
ELAPSED=$((SECONDS - START_SECONDS))
if [[ $SUITE1 == passed && $SUITE2 == passed ]]; then
  say "OK: suite 1/2 (sqlite + local folder) passed, suite 2/2 (postgres + s3) passed, in ${ELAPSED}s"
  exit 0
fi
printf '== FAILED: suite 1/2 (sqlite + local folder) %s, suite 2/2 (postgres + s3) %s, in %ss (logs: %s)\n' \
  "$SUITE1" "$SUITE2" "$ELAPSED" "$LOG_DIR" >&2
exit 1
