//! `updraft simulate`, the real binary, against a real server on random ports: a small fleet
//! of each protocol through a rollout, its report compared with the server's own counts
//! (`GET /api/v1/rollouts/{id}`) and each device's history (`GET /api/v1/devices/{id}/updates`),
//! the failure knobs seen in what the server recorded, and every bad input refused in one line.

#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "tests report figures on stderr and drive blocking helpers from plain threads"
)]

#[path = "api/helpers.rs"]
#[allow(dead_code, reason = "the simulator's tests use only part of the API tests' harness")]
mod helpers;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::{TestApp, esp_image, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

const SHARED_SECRET: &str = "fleet-shared-secret-0001";
const PROVISION_KEY: &str = "sim-provision-key";
const PROVISION_SECRET: &str = "sim-provision-secret-0001";
/// The rollout's counts compared with the report's totals.
const COUNTED: [&str; 6] = ["offered", "downloading", "installing", "installed", "succeeded", "failed"];

async fn server() -> TestApp {
    spawn_app_with(|settings| {
        settings.rollouts.evaluate_every = Duration::from_secs(1);
        settings.rollouts.recount_every = Duration::from_secs(1);
        settings.compat.shared_secret = Some(SHARED_SECRET.into());
    })
    .await
}

async fn admin_json(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut request = app.admin(method.clone(), path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path}: {status} {body}");
    body
}

/// Puts the product in `key` mode (ThingsBoard provisioning names the product by its key).
async fn key_mode(app: &TestApp, product: &str) {
    let policy = json!({"provisioning": "key", "provision_key": PROVISION_KEY, "provision_secret": PROVISION_SECRET});
    admin_json(app, Method::PUT, &format!("/api/v1/products/{product}"), Some(policy)).await;
}

/// Uploads build 2.0.0 of `product` and makes it a release (held for rollouts): its id.
async fn release(app: &TestApp, product: &str) -> String {
    let artifact = app.create_artifact(esp_image(product, "2.0.0", 0), &format!("product={product}&version=2.0.0&hardware=esp32")).await;
    let body = json!({"product": product, "version": "2.0.0", "artifact_ids": [artifact["id"]]});
    let release = admin_json(app, Method::POST, "/api/v1/releases", Some(body)).await;
    release["id"].as_str().unwrap().to_string()
}

/// A rollout that neither halts (whatever share fails) nor waits: every stage opens once a
/// tenth of its devices succeeded.
async fn start_rollout(app: &TestApp, release_id: &str, percents: &[u32]) -> String {
    let stages: Vec<Value> = percents
        .iter()
        // No success needed to open the next stage: which devices fall in the first stage
        // depends on the rollout's random id, and with the failure knobs they may all fail.
        .map(|percent| json!({"percent": percent, "success_threshold": 0, "error_threshold": {"count": 100_000}, "min_soak_s": 0}))
        .collect();
    let body = json!({"release_id": release_id, "stages": stages, "start": true});
    let rollout = admin_json(app, Method::POST, "/api/v1/rollouts", Some(body)).await;
    rollout["id"].as_str().unwrap().to_string()
}

/// A running `updraft simulate`, with its standard error collected.
struct Simulator {
    child: Child,
    stderr: Arc<Mutex<String>>,
    report: PathBuf,
    _dir: tempfile::TempDir,
}

impl Simulator {
    fn start(app: &TestApp, args: &[&str]) -> Simulator {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.json");
        let mqtt = app.mqtt_addr.expect("the embedded broker").to_string();
        let mut command = simulate(dir.path());
        command
            .args(["--server", &app.base, "--mqtt", &mqtt, "--poll", "1s", "--duration", "10m", "--summary-every", "1s"])
            .arg("--report")
            .arg(&report)
            .args(args);
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start updraft simulate");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut stream = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Simulator { child, stderr, report, _dir: dir }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("updraft simulate exited early ({status}):\n{}", self.stderr());
        }
    }

    /// SIGTERM: the simulator stops its devices and writes the report.
    async fn stop(mut self) -> Value {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "updraft simulate did not stop on SIGTERM:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "updraft simulate exited with {status}:\n{}", self.stderr());
        let text = std::fs::read_to_string(&self.report).unwrap_or_else(|e| panic!("no report ({e}):\n{}", self.stderr()));
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `updraft simulate` in `workdir`, with no environment but PATH and HOME.
fn simulate(workdir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_updraft"));
    command.env_clear().current_dir(workdir);
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.arg("simulate");
    command
}

/// Waits until the server registered `n` devices of `product`.
async fn wait_for_devices(app: &TestApp, simulator: &mut Simulator, product: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        simulator.running();
        let summary = admin_json(app, Method::GET, &format!("/api/v1/devices/summary?product={product}"), None).await;
        if summary["total"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} devices did not register: {summary}\n{}", simulator.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every device of the rollout has an outcome that no longer changes: all stages
/// open, nobody in flight, and the counts the same for three seconds (a device the server
/// still shows `offered` then stopped talking, or cannot report).
async fn wait_until_settled(app: &TestApp, simulator: &mut Simulator, rollout_id: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stable_since: Option<(Value, Instant)> = None;
    loop {
        simulator.running();
        let rollout = admin_json(app, Method::GET, &format!("/api/v1/rollouts/{rollout_id}"), None).await;
        let counts = &rollout["counts"];
        let all_stages_open = rollout["current_stage"].as_u64() == rollout["stages"].as_array().map(|s| s.len() as u64);
        let quiet = all_stages_open
            && counts["pending"] == 0
            && counts["downloading"] == 0
            && counts["installing"] == 0
            && counts["installed"] == 0
            && rollout["target_size"] == n;
        if quiet {
            match &stable_since {
                Some((seen, since)) if seen == counts && since.elapsed() >= Duration::from_secs(3) => return rollout,
                Some((seen, _)) if seen == counts => {}
                _ => stable_since = Some((counts.clone(), Instant::now())),
            }
        } else {
            stable_since = None;
        }
        assert!(Instant::now() < deadline, "the rollout did not settle: {rollout}\n{}", simulator.stderr());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The report agrees with the server: its totals are the rollout's counts, and each device's
/// state is the one of its current update in its history.
async fn assert_report_matches(app: &TestApp, report: &Value, rollout: &Value) {
    for device in report["device_reports"].as_array().unwrap() {
        let mac = device["mac"].as_str().unwrap();
        let history = admin_json(app, Method::GET, &format!("/api/v1/devices/{mac}/updates"), None).await;
        let state = history["items"][0]["state"].as_str().unwrap_or("none");
        assert_eq!(device["state"], state, "device {mac}: report {device} vs history {}", history["items"][0]);
    }
    for key in COUNTED {
        assert_eq!(report["totals"][key], rollout["counts"][key], "totals.{key}: report {} vs rollout {rollout}", report["totals"]);
    }
}

/// A fleet of one protocol through a one-stage rollout: everyone ends on 2.0.0 (or, for
/// esp32FOTA, which reports nothing, the server keeps everyone `offered`).
async fn one_protocol_through_a_rollout(protocol: &str, extra: &[&str], key: bool) -> (Value, Value) {
    let app = server().await;
    let product = format!("sim-{protocol}");
    if key {
        key_mode(&app, &product).await;
    }
    let release_id = release(&app, &product).await;
    let mut args = vec!["--devices", "4", "--product", &product, "--protocol", protocol, "--seed", "11"];
    args.extend_from_slice(extra);
    let mut simulator = Simulator::start(&app, &args);
    wait_for_devices(&app, &mut simulator, &product, 4).await;
    let rollout_id = start_rollout(&app, &release_id, &[100]).await;
    let rollout = wait_until_settled(&app, &mut simulator, &rollout_id, 4).await;
    let report = simulator.stop().await;
    assert_report_matches(&app, &report, &rollout).await;
    (report, rollout)
}

fn assert_everyone_updated(report: &Value, rollout: &Value) {
    assert_eq!(rollout["counts"]["succeeded"], 4, "{rollout}");
    assert_eq!(report["versions"], json!({"2.0.0": 4}), "{report}");
    assert_eq!(report["errors"], json!({}), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_http_devices_go_through_a_rollout_and_report_what_the_server_counts() {
    let (report, rollout) = one_protocol_through_a_rollout("native-http", &[], false).await;
    assert_everyone_updated(&report, &rollout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_mqtt_devices_go_through_a_rollout_and_report_what_the_server_counts() {
    let (report, rollout) = one_protocol_through_a_rollout("native-mqtt", &[], false).await;
    assert_everyone_updated(&report, &rollout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arduino_devices_go_through_a_rollout_and_report_what_the_server_counts() {
    let (report, rollout) = one_protocol_through_a_rollout("arduino", &[], false).await;
    assert_everyone_updated(&report, &rollout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_devices_go_through_a_rollout_and_report_what_the_server_counts() {
    let (report, rollout) = one_protocol_through_a_rollout("seed-001", &["--shared-secret", SHARED_SECRET], false).await;
    assert_everyone_updated(&report, &rollout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thingsboard_devices_provision_over_mqtt_and_go_through_a_rollout() {
    let extra = ["--provision-key", PROVISION_KEY, "--provision-secret", PROVISION_SECRET];
    let (report, rollout) = one_protocol_through_a_rollout("thingsboard", &extra, true).await;
    assert_everyone_updated(&report, &rollout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddi_devices_go_through_a_rollout_and_report_what_the_server_counts() {
    let (report, rollout) = one_protocol_through_a_rollout("ddi", &[], false).await;
    assert_everyone_updated(&report, &rollout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esp32fota_devices_install_but_the_server_keeps_them_offered_since_esp32fota_reports_nothing() {
    let (report, rollout) = one_protocol_through_a_rollout("esp32fota", &[], false).await;
    assert_eq!(rollout["counts"]["offered"], 4, "{rollout}");
    assert_eq!(rollout["counts"]["succeeded"], 0, "{rollout}");
    assert_eq!(report["versions"], json!({"2.0.0": 4}), "the devices installed the build: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_in_key_mode_speaks_every_protocol_through_one_rollout() {
    let extra = ["--shared-secret", SHARED_SECRET, "--provision-key", PROVISION_KEY, "--provision-secret", PROVISION_SECRET];
    let app = server().await;
    key_mode(&app, "sim-mix").await;
    let release_id = release(&app, "sim-mix").await;
    let mut args = vec!["--devices", "14", "--product", "sim-mix", "--protocol", "mix", "--seed", "5"];
    args.extend_from_slice(&extra);
    let mut simulator = Simulator::start(&app, &args);
    wait_for_devices(&app, &mut simulator, "sim-mix", 14).await;
    let rollout_id = start_rollout(&app, &release_id, &[100]).await;
    let rollout = wait_until_settled(&app, &mut simulator, &rollout_id, 14).await;
    let report = simulator.stop().await;

    assert_report_matches(&app, &report, &rollout).await;
    let protocols: std::collections::BTreeSet<&str> =
        report["device_reports"].as_array().unwrap().iter().map(|d| d["protocol"].as_str().unwrap()).collect();
    assert_eq!(protocols.len(), 7, "{protocols:?}");
    // Two devices of each protocol; esp32FOTA's stay `offered` on the server.
    assert_eq!(rollout["counts"]["succeeded"], 12, "{rollout}");
    assert_eq!(rollout["counts"]["offered"], 2, "{rollout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_knobs_show_in_the_server_s_counts_through_a_staged_rollout() {
    let app = server().await;
    let release_id = release(&app, "sim-knobs").await;
    let args = [
        "--devices",
        "40",
        "--product",
        "sim-knobs",
        "--seed",
        "3",
        "--fail-download",
        "15%",
        "--fail-install",
        "15%",
        "--fail-boot",
        "15%",
        "--silent",
        "15%",
    ];
    let mut simulator = Simulator::start(&app, &args);
    wait_for_devices(&app, &mut simulator, "sim-knobs", 40).await;
    let rollout_id = start_rollout(&app, &release_id, &[10, 50, 100]).await;
    let rollout = wait_until_settled(&app, &mut simulator, &rollout_id, 40).await;
    let report = simulator.stop().await;

    assert_report_matches(&app, &report, &rollout).await;
    assert_eq!(rollout["state"], "completed", "{rollout}");
    let counts = &rollout["counts"];
    let silent = report["silent"].as_u64().unwrap();
    assert!(silent > 0, "{report}");
    assert_eq!(counts["offered"], silent, "silent devices stay offered: {rollout}");
    let failed = counts["failed"].as_u64().unwrap();
    let succeeded = counts["succeeded"].as_u64().unwrap();
    assert_eq!(failed + succeeded + silent, 40, "{rollout}");
    // Each kind of failure reached the server, with its reason.
    let failures = admin_json(&app, Method::GET, "/api/v1/updates?state=failed&product=sim-knobs&limit=100", None).await;
    let messages: Vec<String> =
        failures["items"].as_array().unwrap().iter().map(|u| u["message"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(messages.len() as u64, failed, "{failures}");
    let broke_off = messages.iter().filter(|m| m.contains("broke off")).count();
    let flash = messages.iter().filter(|m| m.contains("writing the image to flash failed")).count();
    let boot = messages.len() - broke_off - flash;
    assert!(broke_off > 0 && flash > 0 && boot > 0, "download {broke_off}, install {flash}, boot {boot}: {messages:?}");
    // Boot failures came back on 1.0.0 after reporting `installed`.
    let versions = &report["versions"];
    assert_eq!(versions["2.0.0"], succeeded, "{report}");
    assert_eq!(versions["1.0.0"].as_u64().unwrap(), 40 - succeeded, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_macs_and_another_seed_others() {
    let app = server().await;
    let mut reports = Vec::new();
    for (product, seed) in [("sim-seed-a", "7"), ("sim-seed-b", "7"), ("sim-seed-c", "8")] {
        // Each run names its own product: a run whose devices have the MACs of an earlier
        // run's is refused (`product_mismatch`), one with other MACs is not.
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.json");
        let output = simulate(dir.path())
            .args(["--server", &app.base, "--devices", "3", "--product", product, "--seed", seed, "--duration", "1s", "--poll", "1h"])
            .arg("--report")
            .arg(&report)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        reports.push((output.status, stderr, std::fs::read_to_string(&report).ok()));
    }
    let macs = |text: &Option<String>| -> Vec<String> {
        let report: Value = serde_json::from_str(text.as_deref().unwrap_or("{}")).unwrap_or(Value::Null);
        report["device_reports"].as_array().map(|d| d.iter().map(|d| d["mac"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
    };
    let (first, second, third) = (&reports[0], &reports[1], &reports[2]);
    assert!(first.0.success(), "{}", first.1);
    let first_macs = macs(&first.2);
    assert_eq!(first_macs.len(), 3);
    for mac in &first_macs {
        let first_byte = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first_byte & 0x03, 0x02, "{mac} is not a locally administered unicast MAC");
    }
    // The same seed names the same devices: the server refuses to give them to another product.
    assert_eq!(second.0.code(), Some(1), "{}", second.1);
    assert!(second.1.contains("product_mismatch"), "{}", second.1);
    assert!(third.0.success(), "{}", third.1);
    let third_macs = macs(&third.2);
    assert!(first_macs.iter().all(|mac| !third_macs.contains(mac)), "{first_macs:?} {third_macs:?}");
}

/// Runs `updraft simulate` with `args` to its exit.
fn refused(args: &[&str]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = simulate(dir.path()).args(args).stdin(Stdio::null()).output().expect("run updraft simulate");
    (output.status, String::from_utf8_lossy(&output.stderr).to_string())
}

fn assert_one_line(stderr: &str, naming: &str) {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(lines[0].contains(naming), "the line does not name {naming}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_non_zero_with_one_line_naming_the_problem() {
    let app = server().await;
    key_mode(&app, "sim-locked").await;
    let base = app.base.clone();

    let (status, stderr) = refused(&["--server", &base, "--devices", "0", "--product", "lamp"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_one_line(&stderr, "--devices");

    let (status, stderr) = refused(&["--server", &base, "--devices", "5", "--product", "lamp", "--protocol", "zigbee"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_one_line(&stderr, "zigbee");

    let (status, stderr) = refused(&["--server", &base, "--devices", "5", "--product", "lamp", "--fail-boot", "60%", "--silent", "50%"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_one_line(&stderr, "more than 100%");

    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nobody = format!("http://{unused}");
    let (status, stderr) = refused(&["--server", &nobody, "--devices", "5", "--product", "lamp"]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert_one_line(&stderr, "cannot reach the server");

    let wrong_key = ["--provision-key", PROVISION_KEY, "--provision-secret", "not-the-secret-at-all"];
    let mut args = vec!["--server", base.as_str(), "--devices", "5", "--product", "sim-locked"];
    args.extend_from_slice(&wrong_key);
    let (status, stderr) = refused(&args);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_one_line(&stderr, "provision_key");

    let (status, stderr) = refused(&["--server", &base, "--devices", "5", "--product", "sim-locked"]);
    assert_eq!(status.code(), Some(1), "without a key: {stderr}");
    assert_one_line(&stderr, "refused");

    let mut args = vec!["--server", base.as_str(), "--devices", "5", "--product", "sim-locked", "--protocol", "thingsboard"];
    args.extend_from_slice(&wrong_key);
    let mqtt = app.mqtt_addr.unwrap().to_string();
    args.extend_from_slice(&["--mqtt", &mqtt]);
    let (status, stderr) = refused(&args);
    assert_eq!(status.code(), Some(1), "ThingsBoard provisioning with a wrong key: {stderr}");
    assert_one_line(&stderr, "refused");

    let (status, stderr) = refused(&["--server", &base, "--devices", "5", "--product", "lamp", "--protocol", "thingsboard"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_one_line(&stderr, "--provision-key");

    let (status, stderr) =
        refused(&["--server", &base, "--devices", "2", "--product", "lamp", "--protocol", "native-mqtt", "--mqtt", &unused.to_string()]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert_one_line(&stderr, "MQTT broker");
}
