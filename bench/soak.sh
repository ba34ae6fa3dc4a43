#!/usr/bin/env bash
# Soak (issue 18): a fresh release server under a sustained fleet for an hour. Not in the
# default list of bench/run.sh (it takes SOAK_MINUTES); run it as `bench/run.sh soak` or alone.
#
# The load, all of it `updraft simulate` (the simulator of the CLI, docs/DEVELOPMENT.md):
#   - SOAK_DEVICES (10,000) native-http devices polling every SOAK_POLL (45 s, ±10 %);
#   - SOAK_MQTT_SESSIONS (2,000) native-mqtt devices, each holding one MQTT session to the
#     embedded broker for the whole run (offers pushed on updraft/{id}/ota, check-ins at poll);
#   - every SOAK_ROLLOUT_EVERY (900 s), from SOAK_FIRST_ROLLOUT (300 s) on, a new build
#     (SOAK_FIRMWARE_KIB, 256 KiB of random bytes) of product `soak` is uploaded, released and
#     rolled out to the whole fleet with the default stages (1 %, 10 %, 50 %, 100 %), so every
#     device downloads it for real (signed URL, streamed into SHA-256 and MD5) and reports.
#     A new rollout starts only when the previous one has left `running`.
# Every SOAK_SAMPLE_SECS (15 s): the server's VmRSS, its open file descriptors
# (/proc/PID/fd), and from /metrics updraft_presence_backlog, updraft_mqtt_sessions,
# updraft_mqtt_connected_devices, updraft_http_connections, updraft_fleet_index_devices,
# plus the simulators' VmRSS and the load average. The soak scrapes /metrics to read these
# gauges (the server's memory must stay flat without a scraper too; the idle benchmark and
# docs/PERFORMANCE.md cover that case).
#
# Criteria (after SOAK_WARMUP_MINUTES of warm-up, over the samples that follow):
#   - errors seen by devices: the sum of `errors` in both simulators' reports = 0;
#   - RSS slope (least squares) < 1 MiB per 10 minutes;
#   - open fds flat: least-squares slope within ±10 per 10 minutes;
#   - updraft_presence_backlog flat: never above one second of writes (1,000);
#   - MQTT sessions held: updraft_mqtt_connected_devices after warm-up, median and last sample,
#     = SOAK_MQTT_SESSIONS (a device is away for a second or two while it reboots into a new
#     version; updraft_mqtt_sessions also counts the server's own sessions);
#   - every rollout started has completed.
# Raw samples and reports go to bench/out/soak/, the figures to bench/out/results.tsv and
# bench/out/soak/results.txt.
#
#   bench/soak.sh                       # 10,000 + 2,000 devices, 60 minutes
#   SOAK_QUICK=1 bench/soak.sh          # 300 + 50 devices, about 2 minutes: proves the script works
#   SOAK_MINUTES=20 SOAK_WARMUP_MINUTES=5 bench/soak.sh
set -euo pipefail
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
trap bench_cleanup EXIT

if [[ -n "${SOAK_QUICK:-}" ]]; then
  DEVICES=${SOAK_DEVICES:-300} MQTT_SESSIONS=${SOAK_MQTT_SESSIONS:-50}
  MINUTES=${SOAK_MINUTES:-2} WARMUP_MINUTES=${SOAK_WARMUP_MINUTES:-0.5}
  POLL=${SOAK_POLL:-10s} SAMPLE=${SOAK_SAMPLE_SECS:-5}
  FIRST_ROLLOUT=${SOAK_FIRST_ROLLOUT:-15} ROLLOUT_EVERY=${SOAK_ROLLOUT_EVERY:-45} FIRMWARE_KIB=${SOAK_FIRMWARE_KIB:-64}
else
  DEVICES=${SOAK_DEVICES:-10000} MQTT_SESSIONS=${SOAK_MQTT_SESSIONS:-2000}
  MINUTES=${SOAK_MINUTES:-60} WARMUP_MINUTES=${SOAK_WARMUP_MINUTES:-10}
  POLL=${SOAK_POLL:-45s} SAMPLE=${SOAK_SAMPLE_SECS:-15}
  FIRST_ROLLOUT=${SOAK_FIRST_ROLLOUT:-300} ROLLOUT_EVERY=${SOAK_ROLLOUT_EVERY:-900} FIRMWARE_KIB=${SOAK_FIRMWARE_KIB:-256}
fi
RUN_SECS=$(calc "$MINUTES * 60" 0)
WARMUP_SECS=$(calc "$WARMUP_MINUTES * 60" 0)
# No rollout starts in the last LATE_SECS: each must have time to complete before the end.
LATE_SECS=${SOAK_ROLLOUT_LATEST:-$(calc "$RUN_SECS / 6" 0)}
BIN=$(updraft_bin)
need_tools curl python3
RAW=$OUT_DIR/soak
rm -rf "$RAW" && mkdir -p "$RAW"
touch "$RESULTS"
awk -F'\t' '$1 != "soak"' "$RESULTS" >"$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"

need_fds=$((MQTT_SESSIONS + 2048))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= need_fds)) || die "ulimit -n is $(ulimit -n) (hard $(ulimit -Hn)); $need_fds file descriptors are needed"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "binary: $BIN (built $(date -u -Is -r "$BIN"))"
  echo "checkout: $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_DIR" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "load: $DEVICES native-http devices (poll $POLL), $MQTT_SESSIONS native-mqtt devices, $MINUTES min, warm-up $WARMUP_MINUTES min"
  echo "rollouts: first at ${FIRST_ROLLOUT} s, every ${ROLLOUT_EVERY} s, none in the last ${LATE_SECS} s; firmware ${FIRMWARE_KIB} KiB"
  echo "sample every: ${SAMPLE} s"
  echo "loadavg at start: $(cat /proc/loadavg)"
} >"$RAW/info.txt"
cat "$RAW/info.txt" >&2

api() { curl -sS -H "Authorization: Bearer $BENCH_KEY" -H 'Content-Type: application/json' "$@"; }

# ---- the server ----
bench_tmpdir
PORT=$(free_port) MQTT_PORT=$(free_port)
BASE=http://127.0.0.1:$PORT
BENCH_MQTT_PORT=$MQTT_PORT start_updraft "$BIN" "$PORT" "$TMP/data" "$RAW/server.log"
wait_ready "$PORT" "$SERVER_PID"
log "soak: server pid $SERVER_PID on $PORT (MQTT $MQTT_PORT)"

# The product is managed by rollouts from its first release on (docs/API.md, "How builds
# relate to releases"): release 1.0.0, the fleet's own version, is made before any device
# exists, so that every later build is held until its rollout offers it. (Without it, the
# first build would be open, offered by the newest-build rule, until its release is created.)
head -c $((FIRMWARE_KIB * 1024)) /dev/urandom >"$TMP/fw.bin"
code=$(curl -sS -o "$RAW/artifact-0.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" \
  -H 'Content-Type: application/octet-stream' -X POST --data-binary @"$TMP/fw.bin" \
  "$BASE/api/v1/firmware?product=soak&version=1.0.0&hardware=esp32")
[[ $code == 201 ]] || die "upload of 1.0.0 answered $code: $(cat "$RAW/artifact-0.json")"
code=$(api -o "$RAW/release-0.json" -w '%{http_code}' -X POST \
  -d "{\"product\":\"soak\",\"version\":\"1.0.0\",\"artifact_ids\":[\"$(json_field "$RAW/artifact-0.json" id)\"]}" "$BASE/api/v1/releases")
[[ $code == 201 ]] || die "release 1.0.0 answered $code: $(cat "$RAW/release-0.json")"

# ---- the fleet: two simulators, one per protocol (different seeds, so different MACs) ----
# The simulators outlive the sampling by 30 s, so that every sample sees the whole fleet.
SIM_SECS=$((RUN_SECS + 30))
"$BIN" simulate --server "$BASE" --mqtt "127.0.0.1:$MQTT_PORT" --devices "$DEVICES" --product soak --protocol native-http \
  --poll "$POLL" --duration "${SIM_SECS}s" --seed 1 --summary-every 60s --report "$RAW/http-report.json" \
  >"$RAW/simulator-http.log" 2>&1 9>&- &
SIM_HTTP=$!
BENCH_PIDS+=("$SIM_HTTP")
"$BIN" simulate --server "$BASE" --mqtt "127.0.0.1:$MQTT_PORT" --devices "$MQTT_SESSIONS" --product soak --protocol native-mqtt \
  --poll "$POLL" --duration "${SIM_SECS}s" --seed 2 --summary-every 60s --report "$RAW/mqtt-report.json" \
  >"$RAW/simulator-mqtt.log" 2>&1 9>&- &
SIM_MQTT=$!
BENCH_PIDS+=("$SIM_MQTT")
START=$SECONDS

# ---- sampling ----
gauge() { awk -v n="$1" '$1 == n { v = $2 } END { print (v == "" ? "-" : v) }' "$2"; }
sample() {
  local t=$((SECONDS - START)) rss fds m=$RAW/metrics.last
  rss=$(proc_kb "$SERVER_PID" VmRSS 2>/dev/null || echo -)
  fds=$(find "/proc/$SERVER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  curl -s -m 10 -o "$m" "$BASE/metrics" || : >"$m"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$rss" "$fds" \
    "$(gauge updraft_presence_backlog "$m")" "$(gauge updraft_mqtt_sessions "$m")" \
    "$(gauge updraft_mqtt_connected_devices "$m")" "$(gauge updraft_http_connections "$m")" \
    "$(gauge updraft_fleet_index_devices "$m")" \
    "$(proc_kb "$SIM_HTTP" VmRSS 2>/dev/null || echo -)" "$(proc_kb "$SIM_MQTT" VmRSS 2>/dev/null || echo -)" \
    "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW/samples.tsv"
}
printf 't_s\trss_kb\tfds\tpresence_backlog\tmqtt_sessions\tmqtt_connected_devices\thttp_connections\tfleet_index_devices\tsim_http_rss_kb\tsim_mqtt_rss_kb\tload1\n' >"$RAW/samples.tsv"

# ---- rollouts ----
printf 'n\tversion\trollout\tstarted_s\tended_s\tstate\tsucceeded\tfailed\n' >"$RAW/rollouts.tsv"
ROLLOUT_N=0 ROLLOUT_ID= ROLLOUT_STARTED=0 NEXT_ROLLOUT=$FIRST_ROLLOUT
start_rollout() {
  local version code artifact release
  ROLLOUT_N=$((ROLLOUT_N + 1))
  version=1.$ROLLOUT_N.0
  # Each build differs (its first bytes), so each is a new artifact.
  printf '%08d' "$ROLLOUT_N" | dd of="$TMP/fw.bin" bs=1 seek=0 conv=notrunc status=none
  code=$(curl -sS -o "$RAW/artifact-$ROLLOUT_N.json" -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" \
    -H 'Content-Type: application/octet-stream' -X POST --data-binary @"$TMP/fw.bin" \
    "$BASE/api/v1/firmware?product=soak&version=$version&hardware=esp32")
  [[ $code == 201 ]] || die "upload of $version answered $code: $(cat "$RAW/artifact-$ROLLOUT_N.json")"
  artifact=$(json_field "$RAW/artifact-$ROLLOUT_N.json" id)
  code=$(api -o "$RAW/release-$ROLLOUT_N.json" -w '%{http_code}' -X POST \
    -d "{\"product\":\"soak\",\"version\":\"$version\",\"artifact_ids\":[\"$artifact\"]}" "$BASE/api/v1/releases")
  [[ $code == 201 ]] || die "release $version answered $code: $(cat "$RAW/release-$ROLLOUT_N.json")"
  release=$(json_field "$RAW/release-$ROLLOUT_N.json" id)
  code=$(api -o "$RAW/rollout-$ROLLOUT_N.json" -w '%{http_code}' -X POST \
    -d "{\"release_id\":\"$release\",\"name\":\"soak $version\",\"start\":true}" "$BASE/api/v1/rollouts")
  [[ $code == 201 ]] || die "rollout of $version answered $code: $(cat "$RAW/rollout-$ROLLOUT_N.json")"
  ROLLOUT_ID=$(json_field "$RAW/rollout-$ROLLOUT_N.json" id)
  ROLLOUT_VERSION=$version
  ROLLOUT_STARTED=$((SECONDS - START))
  log "soak: t=${ROLLOUT_STARTED}s rollout $ROLLOUT_N ($version, ${FIRMWARE_KIB} KiB) started: $ROLLOUT_ID"
}
# Records the current rollout once it has left `running` (or, with "final", whatever its state).
check_rollout() {
  local state counts
  [[ -n $ROLLOUT_ID ]] || return 0
  api "$BASE/api/v1/rollouts/$ROLLOUT_ID" >"$RAW/rollout-$ROLLOUT_N-status.json" || return 0
  state=$(json_field "$RAW/rollout-$ROLLOUT_N-status.json" state 2>/dev/null || echo unknown)
  [[ $state == running && ${1:-} != final ]] && return 0
  counts=$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))["counts"]; print(c["succeeded"], c["failed"], sep="\t")' \
    "$RAW/rollout-$ROLLOUT_N-status.json" 2>/dev/null || printf -- '-\t-')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROLLOUT_N" "$ROLLOUT_VERSION" "$ROLLOUT_ID" "$ROLLOUT_STARTED" "$((SECONDS - START))" \
    "$state" "$counts" >>"$RAW/rollouts.tsv"
  log "soak: t=$((SECONDS - START))s rollout $ROLLOUT_N ($ROLLOUT_VERSION): $state ($(tr '\t' ' ' <<<"$counts") succeeded/failed)"
  ROLLOUT_ID=
}

# ---- the run ----
log "soak: $DEVICES HTTP + $MQTT_SESSIONS MQTT devices for $MINUTES min (results in $RAW)"
next_sample=0 last_log=0
while (( (t = SECONDS - START) < RUN_SECS )); do
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited during the soak: $(tail -n 5 "$RAW/server.log")"
  kill -0 "$SIM_HTTP" 2>/dev/null || die "the HTTP simulator exited early: $(tail -n 3 "$RAW/simulator-http.log")"
  kill -0 "$SIM_MQTT" 2>/dev/null || die "the MQTT simulator exited early: $(tail -n 3 "$RAW/simulator-mqtt.log")"
  if ((t >= next_sample)); then
    sample
    next_sample=$((next_sample + SAMPLE))
  fi
  check_rollout
  if [[ -z $ROLLOUT_ID ]] && ((t >= NEXT_ROLLOUT && t <= RUN_SECS - LATE_SECS)); then
    start_rollout
    NEXT_ROLLOUT=$((NEXT_ROLLOUT + ROLLOUT_EVERY))
    while ((NEXT_ROLLOUT <= t)); do NEXT_ROLLOUT=$((NEXT_ROLLOUT + ROLLOUT_EVERY)); done
  fi
  if ((t - last_log >= 300)); then
    last_log=$t
    log "soak: t=${t}s $(tail -n 1 "$RAW/samples.tsv" | awk -F'\t' '{ printf "RSS %.1f MiB, fds %s, backlog %s, MQTT devices %s, load %s", $2 / 1024, $3, $4, $6, $11 }')"
  fi
  sleep 1
done
sample
check_rollout final
log "soak: sampling done; waiting for the simulators to end and write their reports"
wait "$SIM_HTTP" || die "the HTTP simulator failed: $(tail -n 3 "$RAW/simulator-http.log")"
wait "$SIM_MQTT" || die "the MQTT simulator failed: $(tail -n 3 "$RAW/simulator-mqtt.log")"
tail -n 2 "$RAW/simulator-http.log" "$RAW/simulator-mqtt.log" >&2
echo "loadavg at end: $(cat /proc/loadavg)" >>"$RAW/info.txt"
stop_pid "$SERVER_PID"

# ---- the figures ----
python3 - "$RAW" "$WARMUP_SECS" "$MQTT_SESSIONS" "$DEVICES" <<'PY' >"$RAW/figures.tsv"
import json, sys
raw, warmup, sessions_wanted, devices = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [l.rstrip("\n").split("\t") for l in open(f"{raw}/samples.tsv")][1:]
def num(v):
    try:
        return float(v)
    except ValueError:
        return None
cols = ["t", "rss", "fds", "backlog", "sessions", "connected", "http", "index", "sim_http", "sim_mqtt", "load"]
samples = [dict(zip(cols, map(num, r))) for r in rows]
after = [s for s in samples if s["t"] >= warmup]
def slope(key, scale=1.0):
    pts = [(s["t"] / 600.0, s[key] * scale) for s in after if s[key] is not None]
    if len(pts) < 2:
        return float("nan")
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else float("nan")
def vals(key, rows=after):
    return [s[key] for s in rows if s[key] is not None]
errors, requests, offers, succeeded, failed, states = {}, 0, 0, 0, 0, {}
for name in ("http", "mqtt"):
    r = json.load(open(f"{raw}/{name}-report.json"))
    for k, v in r["errors"].items():
        errors[k] = errors.get(k, 0) + v
    requests += r["requests"]
    offers += r["offers"]
    for k, v in r["versions"].items():
        states[k] = states.get(k, 0) + v
rollouts = [l.rstrip("\n").split("\t") for l in open(f"{raw}/rollouts.tsv")][1:]
completed = sum(1 for r in rollouts if r[5] == "completed")
rss_slope = slope("rss", 1 / 1024)
fd_slope = slope("fds")
backlog_after = vals("backlog")
backlog_all = vals("backlog", samples)
sess = vals("sessions")
conn = vals("connected")
rss = vals("rss")
fds = vals("fds")
err_total = sum(errors.values())
out = []
def row(metric, value, target, status):
    out.append((metric, value, target, status))
ok = lambda c: "PASS" if c else "FAIL"
row("errors seen by devices (both simulators' reports)", f"{err_total}" + (f" {errors}" if errors else ""), "0", ok(err_total == 0))
row(f"server RSS slope after warm-up, least squares over {len(rss)} samples (MiB per 10 min)", f"{rss_slope:.3f}", "< 1", ok(rss_slope < 1))
row("server RSS after warm-up: min | max | last (MiB)", f"{min(rss) / 1024:.1f} | {max(rss) / 1024:.1f} | {rss[-1] / 1024:.1f}" if rss else "-", "-", "-")
row("open fds after warm-up: slope per 10 min | min | max", f"{fd_slope:.2f} | {min(fds):.0f} | {max(fds):.0f}" if fds else "-", "|slope| <= 10", ok(abs(fd_slope) <= 10))
row("updraft_presence_backlog: max after warm-up | max overall", f"{max(backlog_after):.0f} | {max(backlog_all):.0f}" if backlog_after else "-", "<= 1000", ok(bool(backlog_after) and max(backlog_after) <= 1000))
# A device reconnects after its reboot into a new version, so a sample during a rollout may
# miss a few: the median and the last sample must be the whole fleet.
med = sorted(conn)[len(conn) // 2] if conn else None
row("MQTT devices connected (updraft_mqtt_connected_devices) after warm-up: median | last | min", f"{med:.0f} | {conn[-1]:.0f} | {min(conn):.0f}" if conn else "-", f"median = last = {sessions_wanted}", ok(bool(conn) and med == sessions_wanted and conn[-1] == sessions_wanted))
row("updraft_mqtt_sessions (the devices' and the server's own) after warm-up: min | max", f"{min(sess):.0f} | {max(sess):.0f}" if sess else "-", "-", "-")
row("rollouts completed | started", f"{completed} | {len(rollouts)}", "all, >= 1", ok(len(rollouts) >= 1 and completed == len(rollouts)))
row("device requests | offers | devices by version at the end", f"{requests} | {offers} | {json.dumps(dict(sorted(states.items())))}", "-", "-")
for metric, value, target, status in out:
    print(f"{metric}\t{value}\t{target}\t{status}")
# The timeline: one sample per 10 minutes (the last sample at or before each mark).
with open(f"{raw}/timeline.txt", "w") as tl:
    tl.write("min\tRSS MiB\tfds\tbacklog\tMQTT devices\tHTTP conns\tload1\n")
    step = 600 if samples and samples[-1]["t"] >= 1200 else 30
    mark = 0
    fmt = lambda v, f="{:.0f}": "-" if v is None else f.format(v)
    while samples and mark <= samples[-1]["t"]:
        s = [x for x in samples if x["t"] <= mark][-1] if [x for x in samples if x["t"] <= mark] else samples[0]
        tl.write(f"{mark / 60:g}\t{fmt(s['rss'] and s['rss'] / 1024, '{:.1f}')}\t{fmt(s['fds'])}\t{fmt(s['backlog'])}\t{fmt(s['connected'])}\t{fmt(s['http'])}\t{fmt(s['load'], '{:.2f}')}\n")
        mark += step
    s = samples[-1] if samples else None
    if s:
        tl.write(f"{s['t'] / 60:.1f} (end)\t{s['rss'] / 1024:.1f}\t{s['fds']:.0f}\t{fmt(s['backlog'])}\t{fmt(s['connected'])}\t{fmt(s['http'])}\t{fmt(s['load'], '{:.2f}')}\n")
PY
while IFS=$'\t' read -r metric value target status; do
  result soak "$metric" "$value" "$target" "$status"
done <"$RAW/figures.tsv"
{
  cat "$RAW/info.txt"
  echo
  column -t -s $'\t' "$RAW/figures.tsv"
  echo
  column -t -s $'\t' "$RAW/timeline.txt"
  echo
  column -t -s $'\t' "$RAW/rollouts.tsv"
} >"$RAW/results.txt"
cat "$RAW/results.txt" >&2
