//! Crash consistency: the real binary under mixed load (firmware and asset uploads and
//! deletions, device check-ins and update reports, configuration writes, MQTT sessions,
//! rollout transitions), killed with SIGKILL at random points and restarted, again and again.
//! After every kill:
//! - SQLite's `PRAGMA integrity_check` passes (with the server down);
//! - after the restart and a run of the orphan-blob collector (grace 0 s here), the blobs in
//!   the folder or bucket are exactly those the database points at: no orphan, none missing,
//!   no staging file left;
//! - every write that got a 2xx is there: artifacts (with their bytes), deletions, asset
//!   versions, configuration versions, update reports, device versions, rollout transitions;
//! - the rollout history is one chain (no transition recorded twice), and the running rollout
//!   resumes: a device that joins after the restart is offered its release, over HTTP and MQTT.
//!
//! No request may ever answer 5xx. `UPDRAFT_CRASH_KILLS` sets the number of kills (10 by
//! default, the CI size; docs/RELIABILITY.md records a 100-kill run), `UPDRAFT_CRASH_SEED` the
//! random seed (printed, to replay a failure). The backend is the suite's, as in
//! `tests/api/helpers.rs`: `UPDRAFT_TEST_DATABASE` and `UPDRAFT_TEST_BLOB`.

#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "the harness reports its progress and seed on stderr and reads the server's log file"
)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

const ADMIN_KEY: &str = "crash-test-admin-key-0123456789abcdef";
const DEVICES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_at_random_points_under_load_loses_no_acknowledged_write_and_leaves_no_orphan() {
    let kills: usize = std::env::var("UPDRAFT_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let seed: u64 = std::env::var("UPDRAFT_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash harness: {kills} kills, UPDRAFT_CRASH_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let workdir = tempfile::tempdir().unwrap();
    let backend = Backend::from_test_env(workdir.path()).await;
    let started = Instant::now();

    let mut server = Server::start(workdir.path(), &backend).await;
    let fleet = setup(&server).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut kill_after = Vec::new();
    for cycle in 0..kills {
        let stop = Arc::new(AtomicBool::new(false));
        let load = start_load(&server, &fleet, &ledger, &stop, cycle, rng.random());
        let delay = Duration::from_millis(rng.random_range(300..2500));
        kill_after.push(delay);
        tokio::time::sleep(delay).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for worker in load {
            worker.await.unwrap();
        }
        backend.check_integrity().await;
        // A kill between an upload's blob commit and its record insert is a window of
        // microseconds that random kills seldom hit: leave such a blob behind every time.
        let planted = backend.plant_orphan().await;
        server = Server::start(workdir.path(), &backend).await;
        // S3 may date an object to the whole second, after the first run's cutoff: allow a run more.
        let deadline = Instant::now() + Duration::from_secs(30);
        while backend.stored_blobs().await.0.contains(&planted) {
            assert!(Instant::now() < deadline, "the orphan blob {planted} was not collected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let counted = server.metric("updraft_orphan_blobs_deleted_total").await;
        assert!(counted >= 1.0, "the collected orphan is not counted in updraft_orphan_blobs_deleted_total ({counted})");
        check_after_restart(&server, &backend, &fleet, &ledger).await;
        eprintln!("crash harness: kill {} of {kills} after {delay:?}: all checks passed", cycle + 1);
    }
    server.stop().await;
    backend.check_integrity().await;
    let ledger = ledger.lock().unwrap();
    eprintln!(
        "crash harness: {kills} kills in {:.0?} (seed {seed}); acknowledged: {} uploads, {} deletions, {} asset versions, \
         {} configuration versions, {} update reports, {} check-ins, {} rollout transitions; {} orphan blobs collected; \
         requests cut off by a kill: {}",
        started.elapsed(),
        ledger.artifacts.len() + ledger.deleted.len(),
        ledger.deleted.len(),
        ledger.assets.len(),
        ledger.configs.len(),
        ledger.reports_acknowledged,
        ledger.checkins,
        ledger.transitions,
        ledger.orphans_collected,
        ledger.cut_off,
    );
}

// ---- the backend the suite selected ----------------------------------------------------------

struct Backend {
    data_dir: PathBuf,
    /// None for the embedded SQLite database in the data folder.
    postgres_url: Option<String>,
    s3: Option<S3>,
}

struct S3 {
    endpoint: String,
    bucket: String,
    prefix: String,
    store: object_store::aws::AmazonS3,
}

impl Backend {
    /// SQLite and a local folder, or what `UPDRAFT_TEST_DATABASE` / `UPDRAFT_TEST_BLOB` say.
    async fn from_test_env(workdir: &Path) -> Backend {
        sqlx::any::install_default_drivers();
        let postgres_url = match std::env::var("UPDRAFT_TEST_DATABASE").ok().filter(|v| v != "sqlite") {
            Some(admin_url) => Some(create_postgres_database(&admin_url).await),
            None => None,
        };
        let s3 = (std::env::var("UPDRAFT_TEST_BLOB").is_ok_and(|v| v == "s3")).then(|| {
            let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set when UPDRAFT_TEST_BLOB=s3"));
            let (endpoint, bucket) = (var("UPDRAFT_TEST_S3_ENDPOINT"), var("UPDRAFT_TEST_S3_BUCKET"));
            let store = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&bucket)
                .with_region("us-east-1")
                .with_endpoint(&endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_access_key_id(var("AWS_ACCESS_KEY_ID"))
                .with_secret_access_key(var("AWS_SECRET_ACCESS_KEY"))
                .build()
                .unwrap();
            S3 { endpoint, bucket, prefix: format!("crash-{}", uuid::Uuid::new_v4()), store }
        });
        Backend { data_dir: workdir.join("data"), postgres_url, s3 }
    }

    fn database_url(&self) -> String {
        self.postgres_url.clone().unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("updraft.db").display()))
    }

    fn configure(&self, command: &mut Command) {
        command.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.postgres_url {
            command.env("UPDRAFT_DATABASE_URL", url);
        }
        if let Some(s3) = &self.s3 {
            command
                .env("UPDRAFT_BLOB_URL", format!("s3://{}/{}", s3.bucket, s3.prefix))
                .env("UPDRAFT_S3_ENDPOINT", &s3.endpoint)
                .env("UPDRAFT_S3_ACCESS_KEY_ID", std::env::var("AWS_ACCESS_KEY_ID").unwrap())
                .env("UPDRAFT_S3_SECRET_ACCESS_KEY", std::env::var("AWS_SECRET_ACCESS_KEY").unwrap());
        }
    }

    /// Writes a blob through `BlobStore`, as an upload does, with no record: what a kill
    /// between the blob's commit and its record's insert leaves.
    async fn plant_orphan(&self) -> String {
        let settings = match &self.s3 {
            Some(s3) => updraft::config::BlobSettings::S3(updraft::config::S3Settings {
                bucket: s3.bucket.clone(),
                prefix: s3.prefix.clone(),
                endpoint: Some(s3.endpoint.clone()),
                region: "us-east-1".into(),
                access_key_id: Some(std::env::var("AWS_ACCESS_KEY_ID").unwrap().into()),
                secret_access_key: Some(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap().into()),
                allow_http: true,
            }),
            None => updraft::config::BlobSettings::Local { root: self.data_dir.join("blobs") },
        };
        let blobs = updraft::blob::BlobStore::open(&settings, 0).await.unwrap();
        let key = format!("artifacts/{}", uuid::Uuid::now_v7());
        let mut writer = blobs.create(&key).await.unwrap();
        writer.write(random_bytes(10_000, 99).into()).await.unwrap();
        drop(writer.commit().await.unwrap());
        assert!(self.stored_blobs().await.0.contains(&key));
        key
    }

    /// SQLite's own check of the database file, with the server down (PostgreSQL has none).
    async fn check_integrity(&self) {
        if self.postgres_url.is_some() {
            return;
        }
        let mut connection = sqlx::AnyConnection::connect(&self.database_url()).await.unwrap();
        let rows = sqlx::query("PRAGMA integrity_check").fetch_all(&mut connection).await.unwrap();
        let answers: Vec<String> = rows.iter().map(|row| row.get::<String, _>(0)).collect();
        assert_eq!(answers, ["ok"], "PRAGMA integrity_check");
        connection.close().await.unwrap();
    }

    /// Every blob key a record points at, read from the database itself.
    async fn referenced_blobs(&self) -> HashSet<String> {
        let mut connection = sqlx::AnyConnection::connect(&self.database_url()).await.unwrap();
        let rows = sqlx::query("SELECT blob_key FROM artifact UNION SELECT blob_key FROM asset UNION SELECT blob_key FROM asset_file")
            .fetch_all(&mut connection)
            .await
            .unwrap();
        connection.close().await.unwrap();
        rows.iter().map(|row| row.get::<String, _>(0)).collect()
    }

    /// The stored blobs, read from the folder or the bucket itself, and the staging files left.
    async fn stored_blobs(&self) -> (HashSet<String>, Vec<PathBuf>) {
        match &self.s3 {
            Some(s3) => {
                use futures::TryStreamExt;
                use object_store::ObjectStore;
                let prefix = object_store::path::Path::from(s3.prefix.as_str());
                let objects: Vec<_> = s3.store.list(Some(&prefix)).try_collect().await.unwrap();
                let keys = objects
                    .iter()
                    .map(|object| object.location.as_ref().strip_prefix(&format!("{}/", s3.prefix)).unwrap().to_string())
                    .collect();
                (keys, Vec::new())
            }
            None => {
                let root = self.data_dir.join("blobs");
                let mut keys = HashSet::new();
                let mut staging = Vec::new();
                for file in files_under(&root) {
                    let relative = file.strip_prefix(&root).unwrap();
                    if relative.starts_with(".staging") {
                        staging.push(file.clone());
                    } else {
                        keys.insert(relative.to_str().unwrap().to_string());
                    }
                }
                (keys, staging)
            }
        }
    }
}

async fn create_postgres_database(admin_url: &str) -> String {
    let name = format!("updraft_crash_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::AnyConnection::connect(admin_url).await.expect("connect to the PostgreSQL admin URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut connection).await.unwrap();
    let mut url = url::Url::parse(admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { folders.push(path) } else { files.push(path) }
        }
    }
    files
}

// ---- the server process ----------------------------------------------------------------------

struct Server {
    child: Child,
    addr: SocketAddr,
    mqtt: SocketAddr,
    log: PathBuf,
    client: reqwest::Client,
}

impl Server {
    /// `updraft serve` on fresh loopback ports, with the orphan-blob collector at a grace of 0 s
    /// running every second (this server's own uploads are protected by their leases); ready,
    /// and its collector has run once.
    async fn start(workdir: &Path, backend: &Backend) -> Server {
        let (addr, mqtt) = (free_addr(), free_addr());
        let log = workdir.join("server.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_updraft"));
        command.env_clear().current_dir(workdir);
        for name in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .args(["serve", "--listen", &addr.to_string()])
            .env("UPDRAFT_MQTT_LISTEN", mqtt.to_string())
            .env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY)
            .env("UPDRAFT_ORPHAN_BLOB_GRACE_SECS", "0")
            .env("UPDRAFT_ORPHAN_BLOB_SCAN_SECS", "1")
            .env("UPDRAFT_LIMIT_UPLOADS_PER_MIN", "1000000")
            .env("UPDRAFT_LIMIT_UPLOADS_BURST", "1000000")
            .env("UPDRAFT_LIMIT_ROLLOUTS_PER_MIN", "1000000")
            .env("UPDRAFT_LIMIT_ROLLOUTS_BURST", "1000000")
            .env("UPDRAFT_LOG", "info");
        backend.configure(&mut command);
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file).spawn().expect("start updraft");
        let server = Server { child, addr, mqtt, log, client: reqwest::Client::builder().no_proxy().build().unwrap() };
        server.wait_until("the server is ready", |server| async move { server.get("/api/ready").await.status() == 200 }).await;
        server
            .wait_until(
                "the orphan-blob collector ran",
                |server| async move { server.metric("updraft_orphan_blob_scans_total").await >= 1.0 },
            )
            .await;
        server
    }

    async fn wait_until<'a, F, Fut>(&'a self, what: &str, condition: F)
    where
        F: Fn(&'a Server) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if condition(self).await {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}; server log:\n{}", self.log_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(ADMIN_KEY).timeout(Duration::from_secs(30))
    }

    /// A GET that must reach the server.
    async fn get(&self, path: &str) -> reqwest::Response {
        loop {
            match self.admin(reqwest::Method::GET, path).send().await {
                Ok(response) => return response,
                Err(e) if e.is_connect() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("GET {path}: {e}"),
            }
        }
    }

    async fn json(&self, path: &str) -> Value {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM; the server must exit 0.
    async fn stop(mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "updraft did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "updraft exited with {status}:\n{}", self.log_tail());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

// ---- the fleet and what the server acknowledged ------------------------------------------------

struct Fleet {
    devices: Vec<Device>,
    rollout_id: String,
}

#[derive(Clone)]
struct Device {
    id: String,
    token: String,
}

/// Every write the server acknowledged (2xx), and what a kill may have cut off.
#[derive(Default)]
struct Ledger {
    /// Artifact id → (SHA-256, size, acknowledged since the last restart).
    artifacts: HashMap<String, (String, u64, bool)>,
    deleted: HashSet<String>,
    /// Uploads and deletions whose answer a kill cut off: either outcome is right.
    unsure_artifacts: usize,
    unsure_deletions: HashSet<String>,
    /// Asset names written to (acknowledged or not).
    asset_names: HashSet<String>,
    /// (asset name, version) → SHA-256.
    assets: HashMap<(String, i64), String>,
    unsure_assets: usize,
    /// Configuration version → the `n` it holds.
    configs: HashMap<i64, u64>,
    unsure_configs: usize,
    /// (device, attempt id, state reported) since the last restart.
    reports: Vec<(String, String, String)>,
    reports_acknowledged: usize,
    /// Device id → (last acknowledged check-in version, version of a check-in cut off).
    versions: HashMap<String, (String, Option<String>)>,
    checkins: usize,
    /// Devices registered after a restart, to see the rollout resume.
    joined: usize,
    /// Operator pause and resume transitions acknowledged, and cut off.
    transitions: usize,
    unsure_transitions: usize,
    /// 5xx answers (never allowed).
    server_errors: Vec<String>,
    cut_off: usize,
    orphans_collected: f64,
}

async fn setup(server: &Server) -> Fleet {
    let base = upload(server, "lamp", "1.0.0", &random_bytes(20_000, 1)).await.unwrap();
    assert_eq!(base.status(), 201);
    let new = upload(server, "lamp", "2.0.0", &random_bytes(30_000, 2)).await.unwrap();
    assert_eq!(new.status(), 201);
    let new: Value = new.json().await.unwrap();
    let mut devices = Vec::new();
    for n in 0..DEVICES {
        devices.push(register(server, n).await);
    }
    let release = server
        .admin(reqwest::Method::POST, "/api/v1/releases")
        .json(&json!({"product": "lamp", "version": "2.0.0", "artifact_ids": [new["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(release.status(), 201);
    let release: Value = release.json().await.unwrap();
    // One stage over the whole fleet that never completes by itself (success threshold 100 %,
    // a long soak) nor halts: the rollout stays running, paused and resumed by operators.
    let rollout = server
        .admin(reqwest::Method::POST, "/api/v1/rollouts")
        .json(&json!({
            "release_id": release["id"], "name": "crash",
            "stages": [{"percent": 100, "success_threshold": 100, "min_soak_s": 864000, "error_threshold": {"percent": 100}}],
            "start": true,
        }))
        .send()
        .await
        .unwrap();
    let status = rollout.status();
    let rollout: Value = rollout.json().await.unwrap();
    assert_eq!(status, 201, "{rollout}");
    Fleet { devices, rollout_id: rollout["id"].as_str().unwrap().to_string() }
}

async fn register(server: &Server, n: usize) -> Device {
    let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", (n >> 24) & 0xff, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    let response = server
        .admin(reqwest::Method::POST, "/api/v1/devices")
        .json(&json!({"mac": mac, "product": "lamp", "hardware": "esp32", "version": "1.0.0", "issue_token": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let device: Value = response.json().await.unwrap();
    Device { id: device["id"].as_str().unwrap().to_string(), token: device["token"].as_str().unwrap().to_string() }
}

async fn upload(server: &Server, product: &str, version: &str, bytes: &[u8]) -> reqwest::Result<reqwest::Response> {
    server
        .admin(reqwest::Method::POST, &format!("/api/v1/firmware?product={product}&version={version}&hardware=esp32"))
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---- the load ------------------------------------------------------------------------------------

/// What one request came to: acknowledged, refused (4xx), or cut off by the kill.
enum Outcome {
    Done(reqwest::StatusCode, Value),
    CutOff,
}

async fn send(ledger: &Mutex<Ledger>, what: &str, request: reqwest::RequestBuilder) -> Outcome {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let Ok(body) = response.bytes().await else { return cut_off(ledger) };
            if status.is_server_error() {
                ledger.lock().unwrap().server_errors.push(format!("{what}: {status} {}", String::from_utf8_lossy(&body)));
            }
            Outcome::Done(status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        }
        Err(_) => cut_off(ledger),
    }
}

fn cut_off(ledger: &Mutex<Ledger>) -> Outcome {
    ledger.lock().unwrap().cut_off += 1;
    Outcome::CutOff
}

fn start_load(
    server: &Server,
    fleet: &Fleet,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
    cycle: usize,
    seed: u64,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut workers = Vec::new();
    let context = |n: u64| Load {
        client: server.client.clone(),
        base: server.url(""),
        mqtt: server.mqtt,
        ledger: ledger.clone(),
        stop: stop.clone(),
        cycle,
        rng: StdRng::seed_from_u64(seed.wrapping_add(n)),
    };
    workers.push(tokio::spawn(context(1).uploads()));
    workers.push(tokio::spawn(context(2).assets()));
    workers.push(tokio::spawn(context(3).configs()));
    workers.push(tokio::spawn(context(4).transitions(fleet.rollout_id.clone())));
    for (n, device) in fleet.devices.iter().enumerate() {
        workers.push(tokio::spawn(context(10 + n as u64).device(device.clone())));
    }
    workers.push(tokio::spawn(context(5).mqtt_session(fleet.devices[0].clone())));
    workers
}

struct Load {
    client: reqwest::Client,
    base: String,
    mqtt: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    cycle: usize,
    rng: StdRng,
}

impl Load {
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN_KEY).timeout(Duration::from_secs(30))
    }

    fn as_device(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base)).bearer_auth(token).timeout(Duration::from_secs(30))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Firmware uploads of random sizes (some large enough to be cut off mid-body), every
    /// third one deleted again.
    async fn uploads(mut self) {
        for n in 0.. {
            if self.stopped() {
                return;
            }
            let size =
                if self.rng.random_bool(0.2) { self.rng.random_range(1_000_000..4_000_000) } else { self.rng.random_range(1..200_000) };
            let bytes = random_bytes(size, self.rng.random());
            let path = format!("/api/v1/firmware?product=tool&version=1.{}.{n}&hardware=esp32", self.cycle);
            let request = self.admin(reqwest::Method::POST, &path).header("content-type", "application/octet-stream").body(bytes.clone());
            let id = match send(&self.ledger, "upload", request).await {
                Outcome::Done(status, body) if status == 201 => {
                    let id = body["id"].as_str().unwrap().to_string();
                    assert_eq!(body["sha256"].as_str(), Some(sha256(&bytes).as_str()));
                    self.ledger.lock().unwrap().artifacts.insert(id.clone(), (sha256(&bytes), size as u64, true));
                    id
                }
                Outcome::Done(status, body) => panic!("upload answered {status}: {body}"),
                Outcome::CutOff => {
                    self.ledger.lock().unwrap().unsure_artifacts += 1;
                    return;
                }
            };
            if n % 3 == 2 {
                match send(&self.ledger, "delete", self.admin(reqwest::Method::DELETE, &format!("/api/v1/firmware/{id}"))).await {
                    Outcome::Done(status, _) if status == 204 => {
                        let mut ledger = self.ledger.lock().unwrap();
                        ledger.artifacts.remove(&id);
                        ledger.deleted.insert(id);
                    }
                    Outcome::Done(status, body) => panic!("delete answered {status}: {body}"),
                    Outcome::CutOff => {
                        self.ledger.lock().unwrap().unsure_deletions.insert(id);
                        return;
                    }
                }
            }
        }
    }

    /// Native asset versions, half of them repeating earlier bytes (content addressing).
    async fn assets(mut self) {
        while !self.stopped() {
            // A few names per cycle, so that no name has more versions than its list shows.
            let name = format!("data-{}-{}.bin", self.cycle, self.rng.random_range(0..3));
            self.ledger.lock().unwrap().asset_names.insert(name.clone());
            // Eight contents in all: most uploads repeat bytes stored before.
            let pick = self.rng.random_range(0..8);
            let bytes = random_bytes(1000 + pick * 7000, pick as u64);
            let request = self.admin(reqwest::Method::POST, &format!("/api/v1/assets/tool/{name}")).body(bytes.clone());
            match send(&self.ledger, "asset", request).await {
                Outcome::Done(status, body) if status == 201 => {
                    let version = body["version"].as_i64().unwrap();
                    self.ledger.lock().unwrap().assets.insert((name, version), sha256(&bytes));
                }
                Outcome::Done(status, body) => panic!("asset upload answered {status}: {body}"),
                Outcome::CutOff => {
                    self.ledger.lock().unwrap().unsure_assets += 1;
                    return;
                }
            }
        }
    }

    /// Versions of one configuration document, each self-consistent.
    async fn configs(mut self) {
        while !self.stopped() {
            let n: u64 = self.rng.random_range(0..1_000_000_000);
            let body = json!({"content": {"n": n, "fill": vec![n; 500]}});
            match send(&self.ledger, "config", self.admin(reqwest::Method::PUT, "/api/v1/configs/product/lamp").json(&body)).await {
                Outcome::Done(status, body) if status == 200 => {
                    let version = body["version"].as_i64().unwrap();
                    self.ledger.lock().unwrap().configs.insert(version, n);
                }
                Outcome::Done(status, body) => panic!("configuration write answered {status}: {body}"),
                Outcome::CutOff => {
                    self.ledger.lock().unwrap().unsure_configs += 1;
                    return;
                }
            }
        }
    }

    /// Pauses and resumes the rollout, a few times a second.
    async fn transitions(mut self, rollout_id: String) {
        while !self.stopped() {
            let rollout =
                match send(&self.ledger, "rollout", self.admin(reqwest::Method::GET, &format!("/api/v1/rollouts/{rollout_id}"))).await {
                    Outcome::Done(status, body) if status == 200 => body,
                    Outcome::Done(status, body) => panic!("GET rollout answered {status}: {body}"),
                    Outcome::CutOff => return,
                };
            let action = if rollout["state"] == "running" { "pause" } else { "resume" };
            let request = self
                .admin(reqwest::Method::POST, &format!("/api/v1/rollouts/{rollout_id}/{action}"))
                .json(&json!({"reason": "crash test"}));
            match send(&self.ledger, action, request).await {
                Outcome::Done(status, _) if status == 200 => self.ledger.lock().unwrap().transitions += 1,
                Outcome::Done(status, body) => panic!("{action} answered {status}: {body}"),
                Outcome::CutOff => {
                    self.ledger.lock().unwrap().unsure_transitions += 1;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(50..300))).await;
        }
    }

    /// A device: checks in; when offered the release, reports downloading, installing and
    /// installed, then checks in with the new version; then is flashed back to 1.0.0.
    async fn device(mut self, device: Device) {
        let mut version = self.ledger.lock().unwrap().versions.get(&device.id).map(|(v, _)| v.clone()).unwrap_or_else(|| "1.0.0".into());
        // Set once a check-in with the new version was acknowledged (the update succeeded): the
        // device may then be flashed back, to be offered the release again.
        let mut updated = false;
        while !self.stopped() {
            if updated && self.rng.random_bool(0.5) {
                version = "1.0.0".into();
            }
            self.ledger.lock().unwrap().versions.entry(device.id.clone()).or_insert_with(|| ("1.0.0".into(), None)).1 =
                Some(version.clone());
            let request = self.as_device(reqwest::Method::POST, "/api/v1/device/checkin", &device.token).json(&json!({"version": version}));
            let answer = match send(&self.ledger, "check-in", request).await {
                Outcome::Done(status, body) if status == 200 => {
                    let mut ledger = self.ledger.lock().unwrap();
                    ledger.versions.insert(device.id.clone(), (version.clone(), None));
                    ledger.checkins += 1;
                    updated = version == "2.0.0";
                    body
                }
                Outcome::Done(status, body) => panic!("check-in answered {status}: {body}"),
                Outcome::CutOff => return,
            };
            let Some(offer) = answer["update"].as_object() else {
                tokio::time::sleep(Duration::from_millis(self.rng.random_range(20..100))).await;
                continue;
            };
            let (release_id, to) = (offer["release_id"].clone(), offer["version"].as_str().unwrap().to_string());
            for state in ["downloading", "installing", "installed"] {
                let body = json!({"release_id": release_id, "version": to, "state": state});
                let request = self.as_device(reqwest::Method::POST, "/api/v1/device/update-status", &device.token).json(&body);
                match send(&self.ledger, "report", request).await {
                    Outcome::Done(status, body) if status == 200 => {
                        let attempt = body["id"].as_str().unwrap().to_string();
                        let mut ledger = self.ledger.lock().unwrap();
                        ledger.reports.push((device.id.clone(), attempt, state.to_string()));
                        ledger.reports_acknowledged += 1;
                    }
                    // A report about an update that a crash left behind is refused: start over.
                    Outcome::Done(status, _) if status == 409 => break,
                    Outcome::Done(status, body) => panic!("report answered {status}: {body}"),
                    Outcome::CutOff => return,
                }
                if state == "installed" {
                    version = to.clone();
                }
            }
        }
    }

    /// A device's MQTT session: online, subscribed to its topics, sending telemetry.
    async fn mqtt_session(self, device: Device) {
        let mut options = rumqttc::MqttOptions::new(&device.id, self.mqtt.ip().to_string(), self.mqtt.port());
        options.set_credentials(&device.id, &device.token);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        let _ = client.subscribe(format!("updraft/{}/#", device.id), rumqttc::QoS::AtLeastOnce).await;
        let _ = client.publish(format!("updraft/{}/status", device.id), rumqttc::QoS::AtLeastOnce, true, "online").await;
        let mut n = 0u64;
        while !self.stopped() {
            tokio::select! {
                event = eventloop.poll() => if event.is_err() { return },
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    n += 1;
                    let payload = json!({"n": n}).to_string();
                    let _ = client.try_publish(format!("updraft/{}/telemetry", device.id), rumqttc::QoS::AtLeastOnce, false, payload);
                }
            }
        }
    }
}

// ---- the checks after a restart --------------------------------------------------------------------

async fn check_after_restart(server: &Server, backend: &Backend, fleet: &Fleet, ledger: &Arc<Mutex<Ledger>>) {
    let errors = std::mem::take(&mut ledger.lock().unwrap().server_errors);
    assert!(errors.is_empty(), "the server answered 5xx:\n{}", errors.join("\n"));

    // Blobs: the collector ran (grace 0 s) before any new write; the folder or bucket now holds
    // exactly what the records point at (S3 may date an object to the whole second, after the
    // first run's cutoff: a run more is allowed).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (stored, staging) = backend.stored_blobs().await;
        let referenced = backend.referenced_blobs().await;
        assert!(staging.is_empty(), "staging files survived the restart: {staging:?}");
        let orphans: Vec<_> = stored.difference(&referenced).collect();
        let missing: Vec<_> = referenced.difference(&stored).collect();
        assert!(missing.is_empty(), "records without blobs: {missing:?}");
        if orphans.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "orphan blobs: {orphans:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let collected = server.metric("updraft_orphan_blobs_deleted_total").await;
    ledger.lock().unwrap().orphans_collected += collected;

    check_artifacts(server, ledger).await;
    check_assets(server, ledger).await;
    check_configs(server, ledger).await;
    check_devices(server, fleet, ledger).await;
    check_rollout(server, fleet, ledger).await;
}

async fn check_artifacts(server: &Server, ledger: &Arc<Mutex<Ledger>>) {
    let mut listed = HashMap::new();
    for offset in (0..).step_by(500) {
        let page = server.json(&format!("/api/v1/firmware?product=tool&limit=500&offset={offset}")).await;
        let items = page["items"].as_array().unwrap();
        for item in items {
            listed.insert(item["id"].as_str().unwrap().to_string(), item["sha256"].as_str().unwrap().to_string());
        }
        if items.len() < 500 {
            break;
        }
    }
    let (artifacts, deleted, unsure_uploads) = {
        let mut ledger = ledger.lock().unwrap();
        // A deletion cut off by a kill happened or not: the listing says which.
        for id in std::mem::take(&mut ledger.unsure_deletions) {
            if !listed.contains_key(&id) {
                ledger.artifacts.remove(&id);
                ledger.deleted.insert(id);
            }
        }
        let snapshot = (ledger.artifacts.clone(), ledger.deleted.clone(), ledger.unsure_artifacts);
        for entry in ledger.artifacts.values_mut() {
            entry.2 = false;
        }
        snapshot
    };
    for (id, (sha, size, fresh)) in &artifacts {
        assert_eq!(listed.get(id), Some(sha), "acknowledged artifact {id} is missing or changed");
        if *fresh {
            let download = server.get(&format!("/api/v1/firmware/{id}/download")).await;
            assert_eq!(download.status(), 200, "download of {id}");
            let bytes = download.bytes().await.unwrap();
            assert_eq!((bytes.len() as u64, sha256(&bytes)), (*size, sha.clone()), "the bytes of {id}");
        }
    }
    for id in &deleted {
        assert!(!listed.contains_key(id), "artifact {id} came back after its deletion was acknowledged");
    }
    let unknown = listed.keys().filter(|id| !artifacts.contains_key(*id)).count();
    assert!(unknown <= unsure_uploads, "{unknown} artifacts nobody was told about, {unsure_uploads} uploads cut off");
}

async fn check_assets(server: &Server, ledger: &Arc<Mutex<Ledger>>) {
    let (assets, unsure) = {
        let ledger = ledger.lock().unwrap();
        (ledger.assets.clone(), ledger.unsure_assets)
    };
    let names = ledger.lock().unwrap().asset_names.clone();
    let mut unknown = 0;
    for name in names {
        let response = server.get(&format!("/api/v1/assets/tool/{name}")).await;
        let listed: HashMap<i64, String> = match response.status().as_u16() {
            404 => HashMap::new(),
            200 => {
                let versions: Value = response.json().await.unwrap();
                let items = versions["items"].as_array().unwrap();
                // The list holds at most 1000 versions: stay below, so that none is hidden.
                assert!(items.len() < 1000, "{name} has too many versions for this check");
                items.iter().map(|item| (item["version"].as_i64().unwrap(), item["sha256"].as_str().unwrap().to_string())).collect()
            }
            status => panic!("GET versions of {name}: {status}"),
        };
        for ((asset, version), sha) in assets.iter().filter(|((asset, _), _)| *asset == name) {
            assert_eq!(listed.get(version), Some(sha), "acknowledged asset {asset} version {version}");
        }
        unknown += listed.keys().filter(|version| !assets.contains_key(&(name.clone(), **version))).count();
    }
    assert!(unknown <= unsure, "{unknown} asset versions nobody was told about, {unsure} uploads cut off");
}

async fn check_configs(server: &Server, ledger: &Arc<Mutex<Ledger>>) {
    let (configs, unsure) = {
        let ledger = ledger.lock().unwrap();
        (ledger.configs.clone(), ledger.unsure_configs)
    };
    let Some(&newest) = configs.keys().max() else { return };
    let current = server.json("/api/v1/configs/product/lamp").await;
    let version = current["version"].as_i64().unwrap();
    assert!(version >= newest && version <= newest + unsure as i64, "version {version}, newest acknowledged {newest}");
    let n = current["content"]["n"].as_u64().unwrap();
    assert!(current["content"]["fill"].as_array().unwrap().iter().all(|v| v.as_u64() == Some(n)), "a torn document");
    let history = server.json("/api/v1/configs/product/lamp/history?limit=1").await;
    assert_eq!(history["total"].as_i64(), Some(version), "one version per write, without gaps");
    // The newest acknowledged versions hold what was written.
    let mut recent: Vec<_> = configs.iter().collect();
    recent.sort();
    for (version, n) in recent.iter().rev().take(5) {
        let stored = server.json(&format!("/api/v1/configs/product/lamp/versions/{version}")).await;
        assert_eq!(stored["content"]["n"].as_u64(), Some(**n), "configuration version {version}");
    }
}

async fn check_devices(server: &Server, fleet: &Fleet, ledger: &Arc<Mutex<Ledger>>) {
    let (reports, versions) = {
        let mut ledger = ledger.lock().unwrap();
        (std::mem::take(&mut ledger.reports), ledger.versions.clone())
    };
    for device in &fleet.devices {
        let record = server.json(&format!("/api/v1/devices/{}", device.id)).await;
        if let Some((acknowledged, cut_off)) = versions.get(&device.id) {
            let version = record["version"].as_str().unwrap();
            assert!(
                version == acknowledged || Some(version) == cut_off.as_deref(),
                "device {} runs {version}; acknowledged {acknowledged}, cut off {cut_off:?}",
                device.id
            );
        }
        let updates = server.json(&format!("/api/v1/devices/{}/updates?limit=500", device.id)).await;
        let attempts: HashMap<&str, &Value> =
            updates["items"].as_array().unwrap().iter().map(|a| (a["id"].as_str().unwrap(), &a["events"])).collect();
        for (_, attempt, state) in reports.iter().filter(|(id, _, _)| *id == device.id) {
            let events = attempts.get(attempt.as_str()).unwrap_or_else(|| panic!("acknowledged update {attempt} is missing"));
            assert!(
                events.as_array().unwrap().iter().any(|e| e["state"] == state.as_str()),
                "acknowledged report {state} of update {attempt} is missing: {events}"
            );
        }
    }
}

async fn check_rollout(server: &Server, fleet: &Fleet, ledger: &Arc<Mutex<Ledger>>) {
    let id = &fleet.rollout_id;
    let history = server.json(&format!("/api/v1/rollouts/{id}/history")).await;
    let items = history["items"].as_array().unwrap();
    for pair in items.windows(2) {
        assert_eq!(pair[1]["from"], pair[0]["to"], "a transition recorded twice, or one missing: {history}");
    }
    // A resume after a halt adds how many failures it excused to the reason.
    let operator = items.iter().filter(|t| t["reason"].as_str().is_some_and(|r| r.starts_with("crash test"))).count();
    let (acknowledged, unsure) = {
        let ledger = ledger.lock().unwrap();
        (ledger.transitions, ledger.unsure_transitions)
    };
    assert!(
        operator >= acknowledged && operator <= acknowledged + unsure,
        "{operator} transitions recorded, {acknowledged} acknowledged, {unsure} cut off: {history}"
    );
    // Whatever the cut-off requests did count now.
    {
        let mut ledger = ledger.lock().unwrap();
        ledger.transitions = operator;
        ledger.unsure_transitions = 0;
    }
    let rollout = server.json(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(rollout["state"], items.last().unwrap()["to"], "the rollout's state is its last transition's");
    if rollout["state"] != "running" {
        // Halted: a kill cut off an `installed` report, and the device's next check-in with
        // the old version counted as a boot failure.
        assert!(rollout["state"] == "paused" || rollout["state"] == "halted", "{rollout}");
        let resumed = server
            .admin(reqwest::Method::POST, &format!("/api/v1/rollouts/{id}/resume"))
            .json(&json!({"reason": "crash test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resumed.status(), 200);
        ledger.lock().unwrap().transitions += 1;
    }
    // The running rollout resumes: a device that joins now is offered its release.
    let n = {
        let mut ledger = ledger.lock().unwrap();
        ledger.joined += 1;
        DEVICES + ledger.joined
    };
    let device = register(server, n).await;
    let checkin = server
        .client
        .post(server.url("/api/v1/device/checkin"))
        .bearer_auth(&device.token)
        .json(&json!({"version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(checkin.status(), 200);
    let checkin: Value = checkin.json().await.unwrap();
    assert_eq!(checkin["update"]["version"], "2.0.0", "the rollout did not resume: {checkin}");
    let offer = mqtt_offer(server, &device).await;
    assert_eq!(offer["update"]["version"], "2.0.0", "the rollout's offer over MQTT: {offer}");
}

/// The retained offer a device finds when it connects over MQTT.
async fn mqtt_offer(server: &Server, device: &Device) -> Value {
    let mut options = rumqttc::MqttOptions::new(&device.id, server.mqtt.ip().to_string(), server.mqtt.port());
    options.set_credentials(&device.id, &device.token);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    client.subscribe(format!("updraft/{}/ota", device.id), rumqttc::QoS::AtLeastOnce).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(!remaining.is_zero(), "no offer over MQTT; server log:\n{}", server.log_tail());
        match tokio::time::timeout(remaining, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)))) if !publish.payload.is_empty() => {
                let _ = client.disconnect().await;
                return serde_json::from_slice(&publish.payload).unwrap();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("MQTT session of a new device: {e}"),
            Err(_) => {}
        }
    }
}
