//! No secret in the log: the real binary runs with `UPDRAFT_LOG=debug` while devices are
//! provisioned, tokens rotated, keys and users created, logins succeed and fail, and devices
//! and operators connect over MQTT; then its whole output (stdout and stderr) is searched for
//! every token, key, password, session cookie and CSRF token.

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet};
use serde_json::{Value, json};

const ADMIN_KEY: &str = "logs-test-admin-key-0123456789abcdef";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn collect(mut stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
}

struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The connection's CONNACK code.
async fn mqtt_connect(broker: SocketAddr, client_id: &str, username: &str, password: &str) -> ConnectReturnCode {
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options.set_credentials(username, password);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("CONNACK in time") {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => break ack.code,
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => break code,
            Err(e) => panic!("no CONNACK: {e}"),
        }
    };
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    code
}

#[tokio::test]
async fn no_token_key_password_cookie_or_csrf_token_appears_in_the_debug_log() {
    let data = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_addr(), free_addr());
    let mut command = Command::new(env!("CARGO_BIN_EXE_updraft"));
    command.env_clear().current_dir(data.path());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .arg("serve")
        .env("UPDRAFT_LOG", "debug")
        .env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY)
        .env("UPDRAFT_LISTEN", http.to_string())
        .env("UPDRAFT_MQTT_LISTEN", mqtt.to_string())
        .env("UPDRAFT_DATA_DIR", data.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start updraft");
    let output = Arc::new(Mutex::new(String::new()));
    let readers = vec![collect(child.stdout.take().unwrap(), output.clone()), collect(child.stderr.take().unwrap(), output.clone())];
    let mut server = Running { child, output, readers };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://{http}{path}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !client.get(url("/api/ready")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(Instant::now() < deadline, "not ready:\n{}", server.output.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = |method: Method, path: &str| client.request(method, url(path)).bearer_auth(ADMIN_KEY);
    let mut secrets: Vec<String> = vec![ADMIN_KEY.to_string()];

    // Provisioning, a check-in, a token rotation.
    let provisioned: Value = client
        .post(url("/api/v1/device/provision"))
        .json(&json!({"mac": "02:00:00:00:09:01", "product": "lamp", "hardware": "esp32", "version": "1.0.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_id = provisioned["device_id"].as_str().unwrap().to_string();
    let first_token = provisioned["token"].as_str().unwrap().to_string();
    let checkin = client.post(url("/api/v1/device/checkin")).bearer_auth(&first_token).json(&json!({"version": "1.0.0"}));
    assert_eq!(checkin.send().await.unwrap().status(), 200);
    let rotated: Value = admin(Method::POST, &format!("/api/v1/devices/{device_id}/token")).send().await.unwrap().json().await.unwrap();
    let token = rotated["token"].as_str().unwrap().to_string();
    let stale = client.post(url("/api/v1/device/checkin")).bearer_auth(&first_token).json(&json!({}));
    assert_eq!(stale.send().await.unwrap().status(), 401);
    secrets.extend([first_token.clone(), token.clone()]);

    // A key, a user, logins that succeed and fail, a wrong key.
    let key: Value =
        admin(Method::POST, "/api/v1/api-keys").json(&json!({"name": "ci", "role": "admin"})).send().await.unwrap().json().await.unwrap();
    let key = key["key"].as_str().unwrap().to_string();
    let password = "a password nobody may log 42";
    let user = admin(Method::POST, "/api/v1/users").json(&json!({"username": "alice", "password": password, "role": "operator"}));
    assert_eq!(user.send().await.unwrap().status(), 201);
    let wrong_password = "the wrong password, also secret";
    let wrong_key = "upd_0123456789abcdef_WrongWrongWrongWrongWrongWrongWrongWrongWro";
    secrets.extend([key.clone(), password.to_string(), wrong_password.to_string(), wrong_key.to_string()]);
    for body in [
        json!({"username": "alice", "password": wrong_password}),
        json!({"username": "nobody", "password": wrong_password}),
        json!({"api_key": wrong_key}),
    ] {
        assert_eq!(client.post(url("/api/v1/session")).json(&body).send().await.unwrap().status(), 401);
    }
    assert_eq!(client.get(url("/api/v1/firmware")).bearer_auth(wrong_key).send().await.unwrap().status(), 401);
    for body in [json!({"username": "alice", "password": password}), json!({"api_key": key})] {
        let response = client.post(url("/api/v1/session")).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        for cookie in response.headers().get_all("set-cookie") {
            let value = cookie.to_str().unwrap().split(';').next().unwrap().split_once('=').unwrap().1.to_string();
            secrets.push(value);
        }
        let session: Value = response.json().await.unwrap();
        let csrf = session["csrf_token"].as_str().unwrap().to_string();
        assert!(secrets.contains(&csrf));
        let cookie = secrets[secrets.len() - 2..].to_vec();
        let me = client
            .delete(url("/api/v1/session"))
            .header("cookie", format!("updraft_session={}; updraft_csrf={}", cookie[0], cookie[1]))
            .header("x-csrf-token", &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), 204);
    }
    assert_eq!(client.get(url("/api/v1/firmware")).header("x-admin-api-key", &key).send().await.unwrap().status(), 200);

    // MQTT: the device with its token (and a wrong one), an operator credential.
    let mqtt_password = "an operator password for mqtt";
    let put = admin(Method::PUT, "/api/v1/mqtt/users/nodered").json(&json!({"password": mqtt_password, "role": "fleet-read"}));
    assert!(put.send().await.unwrap().status().is_success());
    secrets.push(mqtt_password.to_string());
    assert_eq!(mqtt_connect(mqtt, &device_id, &device_id, &token).await, ConnectReturnCode::Success);
    assert_ne!(mqtt_connect(mqtt, &device_id, &device_id, &first_token).await, ConnectReturnCode::Success);
    assert_eq!(mqtt_connect(mqtt, "nodered-1", "nodered", mqtt_password).await, ConnectReturnCode::Success);
    assert_ne!(mqtt_connect(mqtt, "nodered-2", "nodered", wrong_password).await, ConnectReturnCode::Success);

    // ThingsBoard's HTTP device API has the token in the path: served, refused, unknown
    // routes, an unknown token; then the bodies and the metrics must not hold it either.
    let unknown_token = "upd_dev_ThisTokenIsUnknownButStillASecret0123";
    secrets.push(unknown_token.to_string());
    let mut bodies = String::new();
    for (method, path) in [
        (Method::POST, format!("/api/v1/{token}/telemetry")),
        (Method::GET, format!("/api/v1/{token}/attributes?sharedKeys=a")),
        (Method::GET, format!("/api/v1/{token}/firmware?title=lamp&version=9")),
        (Method::GET, format!("/api/v1/{token}/nothing-here")),
        (Method::DELETE, format!("/api/v1/{token}/telemetry")),
        (Method::POST, format!("/api/v1/{unknown_token}/telemetry")),
        (Method::POST, format!("/api/v1/{first_token}/telemetry")),
    ] {
        let response = client.request(method, url(&path)).json(&json!({"temperature": 20})).send().await.unwrap();
        bodies.push_str(&response.text().await.unwrap());
    }
    bodies.push_str(&client.get(url("/metrics")).send().await.unwrap().text().await.unwrap());
    for secret in [&token, &first_token, &unknown_token.to_string()] {
        assert!(!bodies.contains(&secret[8..]), "a body or the metrics hold a token:\n{bodies}");
    }
    assert!(bodies.contains("route=\"/api/v1/{token}/telemetry\""), "the metric label is the template");

    // Stop, and read everything it wrote.
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "updraft did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in server.readers.drain(..) {
        reader.join().unwrap();
    }
    let log = server.output.lock().unwrap().clone();
    assert!(
        log.contains("DEBUG") && log.contains("failed login") && log.contains("session opened"),
        "the log is not what was expected:\n{log}"
    );
    for secret in &secrets {
        assert!(secret.len() >= 16, "a test secret is too short to search for: {secret}");
        assert!(!log.contains(secret.as_str()), "the log holds the secret {secret}:\n{log}");
        // Nor a long piece of it (a truncated or prefixed form).
        let middle = &secret[secret.len() / 4..secret.len() / 4 + 12];
        assert!(!log.contains(middle), "the log holds part of the secret {secret} ({middle})");
    }
}
