#!/usr/bin/env bash
# shellcheck disable=SC2317  # cleanup & helpers are called from traps / run_logged
# The one command that runs Updraft's whole test suite, on a developer's machine
# or a fresh CI machine (Debian 12).
#
#   ./scripts/test.sh              # everything
#   ./scripts/test.sh firmware     # extra arguments go to both `cargo nextest run`s
#
# What it does:
#   1. installs what is missing (PostgreSQL server from apt, moto[server] from PyPI),
#   2. starts a throwaway PostgreSQL cluster and a moto S3 server on free loopback ports,
#   3. builds the tests once,
#   4. suite 1/2: all tests (unit + integration) on the embedded backends (SQLite + local folder),
#   5. suite 2/2: the integration tests (`--test api`) on the scale-out backends (PostgreSQL + S3),
#   6. stops both servers and deletes their temp dirs on exit, whatever happened.
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

LOG_DIR=${UPDRAFT_TEST_LOG_DIR:-$ROOT/target/test-logs}
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"

# Settings of the developer's shell must not leak into the servers that the tests start.
while IFS= read -r var; do
  case "$var" in
    UPDRAFT_TEST_*) ;;
    UPDRAFT_*) unset "$var" ;;
  esac
done < <(compgen -e)

say() { printf '== %s\n' "$*"; }
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
if [[ $EUID -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); fi
fi
APT_UPDATED=0
apt_install() {
  [[ $EUID -eq 0 || ${#SUDO[@]} -gt 0 ]] || die "need root (or sudo) to install: $*"
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

# Mosquitto: the MQTT tests run every scenario against it too (each test starts its own on
# a free port). The package must not start its system service: that would take port 1883,
# the default of Updraft's embedded broker.
if ! command -v mosquitto >/dev/null 2>&1 && [[ ! -x /usr/sbin/mosquitto ]]; then
  say "installing mosquitto (apt)"
  policy_created=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
  fi
  apt_install mosquitto mosquitto-clients
  [[ -n "$policy_created" ]] && rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
fi

# nginx: a test runs the forwarding headers of deployment/nginx.conf in a real nginx. Its
# service must not start (it would take port 80).
if ! command -v nginx >/dev/null 2>&1 && [[ ! -x /usr/sbin/nginx ]]; then
  say "installing nginx (apt)"
  policy_created=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_created=1
  fi
  apt_install nginx-light
  [[ -n "$policy_created" ]] && rm -f /usr/sbin/policy-rc.d
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
fi

# The real ThingsBoard device SDK (tests/clients/tb_device.py) in its own venv: it ships its
# own paho, which must not meet another one.
TB_VENV="$ROOT/target/venv-tb"
if [[ ! -x "$TB_VENV/bin/python" ]] || ! "$TB_VENV/bin/python" -c 'import tb_device_mqtt, mmh3' >/dev/null 2>&1; then
  say "installing tb-mqtt-client (pip, in $TB_VENV)"
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then apt_install python3-venv; fi
  rm -rf "$TB_VENV"
  run_logged pip-install python3 -m venv "$TB_VENV"
  run_logged pip-install "$TB_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input tb-mqtt-client mmh3
fi
export UPDRAFT_TEST_TB_PYTHON="$TB_VENV/bin/python"
# paho-mqtt 2.1.0, as seed 000's device mock pins it (tests/clients/seed000_mock.py).
PAHO_VENV="$ROOT/target/venv-paho"
if [[ ! -x "$PAHO_VENV/bin/python" ]] || ! "$PAHO_VENV/bin/python" -c 'import paho.mqtt.client' >/dev/null 2>&1; then
  say "installing paho-mqtt 2.1.0 (pip, in $PAHO_VENV)"
  rm -rf "$PAHO_VENV"
  run_logged pip-install python3 -m venv "$PAHO_VENV"
  run_logged pip-install "$PAHO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input paho-mqtt==2.1.0
fi
export UPDRAFT_TEST_PAHO_PYTHON="$PAHO_VENV/bin/python"

MOTO_SERVER=$(command -v moto_server || true)
if [[ -z "$MOTO_SERVER" ]]; then
  say "installing moto[server] (pip)"
  run_logged pip-install python3 -m pip install --quiet --disable-pip-version-check --no-input 'moto[server]'
  hash -r
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
  MOTO_SERVER=$(command -v moto_server || true)
  if [[ -z "$MOTO_SERVER" ]]; then
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [[ -x "$scripts_dir/moto_server" ]] && MOTO_SERVER="$scripts_dir/moto_server"
  fi
  [[ -n "$MOTO_SERVER" ]] || die "moto installed but moto_server not found (see $LOG_DIR/pip-install.log)"
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
  -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_TMP/socket -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
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
if cargo nextest --version >/dev/null 2>&1; then
  BUILD=(cargo nextest run --no-run)
  RUN=(cargo nextest run)
  # A filter may match nothing in one of the suites: that is not a failure then.
  (($# > 0)) && RUN+=(--no-tests=warn)
else
  say "cargo-nextest not found: falling back to cargo test"
  BUILD=(cargo test --no-run)
  RUN=(cargo test)
fi

say "building tests (${BUILD[*]})"
run_child "${BUILD[@]}" || die "build failed"

SUITE1=failed
SUITE2=failed

say "suite 1/2: sqlite + local folder (all tests)"
if run_child env UPDRAFT_TEST_DATABASE=sqlite UPDRAFT_TEST_BLOB=fs "${RUN[@]}" "$@"; then
  SUITE1=passed
fi

say "suite 2/2: postgres + s3 (integration tests: --test api)"
if run_child env \
    UPDRAFT_TEST_DATABASE="$DATABASE_URL" \
    UPDRAFT_TEST_BLOB=s3 \
    UPDRAFT_TEST_S3_ENDPOINT="$S3_ENDPOINT" \
    UPDRAFT_TEST_S3_BUCKET="$S3_BUCKET" \
    AWS_ACCESS_KEY_ID=test \
    AWS_SECRET_ACCESS_KEY=test \
    AWS_DEFAULT_REGION=us-east-1 \
    "${RUN[@]}" --test api "$@"; then
  SUITE2=passed
fi

ELAPSED=$((SECONDS - START_SECONDS))
if [[ $SUITE1 == passed && $SUITE2 == passed ]]; then
  say "OK: suite 1/2 (sqlite + local folder) passed, suite 2/2 (postgres + s3) passed, in ${ELAPSED}s"
  exit 0
fi
printf '== FAILED: suite 1/2 (sqlite + local folder) %s, suite 2/2 (postgres + s3) %s, in %ss (logs: %s)\n' \
  "$SUITE1" "$SUITE2" "$ELAPSED" "$LOG_DIR" >&2
exit 1
