//! Test harness: spawns the real application on a random port, with a fresh database and
//! blob store per test. The backends come from the environment (see scripts/test.sh):
//! - `UPDRAFT_TEST_DATABASE`: `sqlite` (default) or a PostgreSQL admin URL; each test gets
//!   its own new database on that server;
//! - `UPDRAFT_TEST_BLOB`: `fs` (default) or `s3` (with `UPDRAFT_TEST_S3_ENDPOINT`,
//!   `UPDRAFT_TEST_S3_BUCKET` and `AWS_*` credentials); each test gets its own prefix.

use std::net::SocketAddr;
use std::path::PathBuf;

use sqlx::Connection;
use tokio::sync::oneshot;
use updraft::config::{BlobSettings, S3Settings, ServeArgs, Settings};
use updraft::startup::Application;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

pub struct TestApp {
    pub addr: SocketAddr,
    /// The embedded MQTT broker's listener (None with MQTT off or an external broker).
    pub mqtt_addr: Option<SocketAddr>,
    /// Its MQTT-over-TLS and MQTT-over-WebSocket listeners, when configured.
    pub mqtt_tls_addr: Option<SocketAddr>,
    pub mqtt_ws_addr: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    /// Kept so the folder lives as long as the server.
    #[allow(dead_code, reason = "kept so that the folder lives as long as the server")]
    pub data_dir: DataDir,
    pub settings: Settings,
    /// The server's background loops (for tests that check they stop).
    pub tasks: updraft::services::tasks::Tasks,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn uses_local_blobs() -> bool {
    std::env::var("UPDRAFT_TEST_BLOB").map(|v| v != "s3").unwrap_or(true)
}

/// A test's data folder and, when the suite runs on PostgreSQL, its database. Both go when
/// this is dropped, that is after the last restart of the test's app: a suite of hundreds of
/// tests would otherwise leave a database of several MiB behind per test and fill a CI disk.
pub struct DataDir {
    dir: tempfile::TempDir,
    database: Option<TestDatabase>,
}

impl DataDir {
    /// A data folder of its own for a second replica of a test's app, which shares the
    /// first one's database (and leaves dropping it to the first).
    pub fn for_replica() -> DataDir {
        DataDir { dir: tempfile::tempdir().expect("temp dir"), database: None }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A PostgreSQL database made for one test, dropped with it.
pub struct TestDatabase {
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create(admin_url: &str) -> TestDatabase {
        sqlx::any::install_default_drivers();
        let name = format!("updraft_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::AnyConnection::connect(admin_url).await.expect("connect to the PostgreSQL admin URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create a test database");
        TestDatabase { admin_url: admin_url.to_string(), name }
    }

    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.admin_url).expect("admin URL");
        url.set_path(&self.name);
        url.to_string()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its
        // own does the work. `WITH (FORCE)` ends the connections a server still holds.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let mut conn = sqlx::AnyConnection::connect(&admin_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut conn).await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("the test database {} was not dropped: {error}", self.name);
        }
    }
}

/// Settings for a fresh, isolated server on a random loopback port.
pub async fn test_settings() -> (Settings, DataDir) {
    let mut data_dir = DataDir { dir: tempfile::tempdir().expect("temp dir"), database: None };
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".into()),
        mqtt_listen: Some("127.0.0.1:0".into()),
        mqtt_tls_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.path().display().to_string()),
        admin_api_key: Some(ADMIN_KEY.into()),
        ..Default::default()
    };
    let mut settings = Settings::load_with_dotenv(&args, &data_dir.path().join(".env")).expect("test settings are valid");
    settings.shutdown_timeout = std::time::Duration::from_secs(5);
    // Tests send bursts of uploads, conversions and rollouts on purpose; the limits have
    // their own tests (audit.rs), which set them low.
    let unlimited = updraft::config::Rate { per_minute: 1_000_000, burst: 1_000_000 };
    settings.limits = updraft::config::LimitSettings { uploads: unlimited, lvgl: unlimited, rollouts: unlimited };

    if let Some(admin_url) = std::env::var("UPDRAFT_TEST_DATABASE").ok().filter(|v| v != "sqlite") {
        let database = TestDatabase::create(&admin_url).await;
        settings.database_url = database.url().into();
        data_dir.database = Some(database);
    }
    if !uses_local_blobs() {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set when UPDRAFT_TEST_BLOB=s3"));
        settings.blob = BlobSettings::S3(S3Settings {
            bucket: var("UPDRAFT_TEST_S3_BUCKET"),
            prefix: format!("test-{}", uuid::Uuid::new_v4()),
            endpoint: Some(var("UPDRAFT_TEST_S3_ENDPOINT")),
            region: "us-east-1".into(),
            access_key_id: Some(var("AWS_ACCESS_KEY_ID").into()),
            secret_access_key: Some(var("AWS_SECRET_ACCESS_KEY").into()),
            allow_http: true,
        });
    }
    (settings, data_dir)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let (mut settings, data_dir) = test_settings().await;
    configure(&mut settings);
    start(settings, data_dir).await
}

pub async fn start(settings: Settings, data_dir: DataDir) -> TestApp {
    let app = Application::build(settings.clone()).await.expect("the application builds");
    let addr = app.local_addr();
    let mqtt_addr = app.mqtt_addr();
    let (mqtt_tls_addr, mqtt_ws_addr) = app.mqtt_extra_addrs();
    let tasks = app.tasks();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        mqtt_addr,
        mqtt_tls_addr,
        mqtt_ws_addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        data_dir,
        settings,
        tasks,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(ADMIN_KEY)
    }

    /// A request with the admin key from another loopback address (127.0.0.`octet`): for
    /// tests whose own address was throttled on purpose.
    pub fn admin_from(&self, octet: u8, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let client = reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, octet])).build().unwrap();
        client.request(method, self.url(path)).bearer_auth(ADMIN_KEY)
    }

    /// Uploads raw bytes with metadata in the query string.
    pub async fn upload_raw(&self, bytes: Vec<u8>, query: &str) -> reqwest::Response {
        self.admin(reqwest::Method::POST, &format!("/api/v1/firmware?{query}"))
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .expect("upload request")
    }

    /// Uploads with multipart form data.
    pub async fn upload_form(&self, bytes: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name("firmware.bin"));
        self.admin(reqwest::Method::POST, "/api/v1/firmware").multipart(form).send().await.expect("upload request")
    }

    /// Uploads and expects 201; returns the artifact JSON.
    pub async fn create_artifact(&self, bytes: Vec<u8>, query: &str) -> serde_json::Value {
        let response = self.upload_raw(bytes, query).await;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn list_artifacts(&self, query: &str) -> serde_json::Value {
        let response = self.admin(reqwest::Method::GET, &format!("/api/v1/firmware?{query}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Files in the local blob folder (staging included); empty for S3.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if path.is_dir() { walk(&path, out) } else { out.push(path) }
                }
            }
        }
        let mut files = Vec::new();
        if let BlobSettings::Local { root } = &self.settings.blob {
            walk(root, &mut files);
        }
        files
    }

    /// Stops the server gracefully and hands back its settings and data folder, to start it
    /// again on the same database (`start`).
    pub async fn stop_keeping_data(mut self) -> (Settings, DataDir) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
        (self.settings, self.data_dir)
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

/// Asserts the error shape `{"error":{"code","message"}}` and returns the code.
pub async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: serde_json::Value = response.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error.code in {body}")).to_string();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "no error.message in {body}");
    code
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A valid ESP32 app image.
pub fn esp_image(project: &str, version: &str, chip_id: u16) -> Vec<u8> {
    updraft::domain::esp_image::builder::EspImageBuilder::new(project, version).chip_id(chip_id).payload_len(4096).build()
}

/// The services of a second, in-process "replica" on `app`'s database and blobs, without a
/// listener or background tasks: for tests that drive many devices through the services
/// directly (far faster than over HTTP).
pub async fn core_of(app: &TestApp) -> updraft::services::Core {
    let settings = &app.settings;
    let store = updraft::storage::Store::connect(settings.database_url.expose(), 16).await.expect("the test database");
    let blobs = updraft::blob::BlobStore::open(&settings.blob, 0).await.expect("the test blobs");
    let core = updraft::services::Core::build(settings, store, blobs, [7; 32]).await.expect("the services");
    updraft::services::rollouts::refresh(&core, true).await.expect("the rollout view");
    core
}

pub async fn provision(app: &TestApp, body: serde_json::Value) -> reqwest::Response {
    app.client.post(app.url("/api/v1/device/provision")).json(&body).send().await.unwrap()
}

/// Provisions a device (the product must be open) and returns (device id, token).
pub async fn provisioned(app: &TestApp, mac: &str, product: &str, hardware: &str) -> (String, String) {
    let body = serde_json::json!({"mac": mac, "product": product, "hardware": hardware, "version": "1.0.0"});
    let response = provision(app, body).await;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    (body["device_id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

pub async fn checkin(app: &TestApp, token: &str, body: serde_json::Value) -> reqwest::Response {
    app.client.post(app.url("/api/v1/device/checkin")).bearer_auth(token).json(&body).send().await.unwrap()
}

// ---- slow and hostile clients (security.rs, hostile.rs) ----

/// A connection from `local` (a loopback address) that sends a provisioning request's headers
/// announcing a 100,000-byte body, then one byte.
pub async fn slow_body(app: &TestApp, local: [u8; 4]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((local, 0))).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/device/provision HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// What the server sends on `stream` until it closes it (bounded by `within`); None if it
/// keeps the connection open longer.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|_| String::from_utf8_lossy(&received).into_owned())
}
