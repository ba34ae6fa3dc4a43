//! The `updraft` binary itself: its help, refusing bad settings, the generated admin key,
//! layered settings, graceful shutdown on SIGTERM, and the maintenance subcommands.
//!
//! Every run gets a fresh temporary working directory (the binary reads `.env` from there)
//! and an environment without any `UPDRAFT_*` variable of the developer's shell.

#![allow(
    clippy::print_stderr,
    clippy::disallowed_methods,
    reason = "tests report figures on stderr and drive blocking helpers from plain threads"
)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN_KEY: &str = "cli-test-admin-key-0123456789abcdef";

#[test]
fn serve_help_mentions_every_setting_s_environment_variable() {
    let workdir = tempfile::tempdir().unwrap();

    let output = run_to_exit(updraft(workdir.path()).args(["serve", "--help"]));

    assert!(output.status.success(), "{}", output.stderr);
    assert!(updraft::config::SETTINGS.len() >= 70, "the declarations are incomplete");
    for name in updraft::config::SETTINGS.iter().map(|setting| setting.env()) {
        assert!(output.stdout.contains(&name), "`updraft serve --help` does not mention {name}:\n{}", output.stdout);
    }
}

#[tokio::test]
async fn start_up_names_unknown_settings_in_one_warning() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let dotenv = "UPDRAFT_MAX_UPLOD_BYTES=1000\nUPDRAFT_LOG=info\nOTA_SERVER_ADMIN_API_KEY=their-old-key\nNOT_AN_UPDRAFT_SETTING=1\n";
    std::fs::write(workdir.path().join(".env"), dotenv).unwrap();
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_LISTN", "127.0.0.1:9").env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);

    let server = Server::start(command, &data_dir).await;
    let (status, stderr) = server.stop().await;

    assert!(status.success(), "{status}\n{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|line| line.contains("unknown settings")).collect();
    assert_eq!(warnings.len(), 1, "expected one warning naming the unknown settings:\n{stderr}");
    let warning = warnings[0];
    assert!(warning.contains("WARN"), "{warning}");
    for unknown in [
        "UPDRAFT_LISTN (environment; did you mean UPDRAFT_LISTEN?)",
        "UPDRAFT_MAX_UPLOD_BYTES (.env; did you mean UPDRAFT_MAX_UPLOAD_BYTES?)",
        "NOT_AN_UPDRAFT_SETTING (.env)",
    ] {
        assert!(warning.contains(unknown), "the warning does not name {unknown}: {warning}");
    }
    for known in
        ["UPDRAFT_LOG (", "UPDRAFT_ADMIN_API_KEY", "OTA_SERVER_ADMIN_API_KEY", "UPDRAFT_MQTT_LISTEN", "127.0.0.1:9", "their-old-key"]
    {
        assert!(!warning.contains(known), "the warning names {known}: {warning}");
    }
}

#[test]
fn maintenance_commands_list_only_the_settings_they_use() {
    let workdir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &[&str]); 2] = [
        (&["reset-admin-key", "--help"], &["--data-dir", "--database-url", "--config", "UPDRAFT_DATA_DIR"]),
        (&["import", "ota-server", "--help"], &["--devices", "--data-dir", "--database-url", "--blob-url", "--s3-endpoint"]),
    ];
    for (args, expected) in cases {
        let output = run_to_exit(updraft(workdir.path()).args(args));

        assert!(output.status.success(), "{args:?}: {}", output.stderr);
        for option in expected {
            assert!(output.stdout.contains(option), "`updraft {}` does not list {option}:\n{}", args.join(" "), output.stdout);
        }
        for unused in ["--listen", "UPDRAFT_LISTEN", "MQTT", "--public-url", "--tls-cert", "--compat-", "--rollout-", "--admin-api-key"] {
            assert!(
                !output.stdout.contains(unused),
                "`updraft {}` lists {unused}, which it does not use:\n{}",
                args.join(" "),
                output.stdout
            );
        }
    }
}

#[test]
fn maintenance_commands_never_create_a_data_folder_or_database_and_name_the_path_they_looked_at() {
    let workdir = tempfile::tempdir().unwrap();
    std::fs::write(workdir.path().join("devices.json"), "{}").unwrap();
    std::fs::create_dir(workdir.path().join("empty")).unwrap();
    let commands: [&[&str]; 4] = [
        &["reset-admin-key", "--data-dir", "dta"],
        &["reset-admin-key", "--data-dir", "empty"],
        &["reset-admin-key", "--database-url", "sqlite://dta/other.db"],
        &["import", "ota-server", "--devices", "devices.json", "--data-dir", "dta"],
    ];
    for args in commands {
        let output = run_to_exit(updraft(workdir.path()).args(args));

        assert!(!output.status.success(), "`updraft {}` succeeded:\n{}", args.join(" "), output.stderr);
        let looked_at = if args.contains(&"--database-url") {
            "dta/other.db"
        } else if args.contains(&"empty") {
            "empty/updraft.db"
        } else {
            "dta/updraft.db"
        };
        assert!(output.stderr.contains(looked_at), "`updraft {}` does not name {looked_at}:\n{}", args.join(" "), output.stderr);
        assert!(!output.stdout.contains("upd_admin_") && !output.stderr.contains("upd_admin_"), "a key was printed");
        assert!(!workdir.path().join("dta").exists(), "`updraft {}` created a data folder", args.join(" "));
        assert!(files_under(&workdir.path().join("empty")).is_empty(), "`updraft {}` created a database", args.join(" "));
    }
}

#[tokio::test]
async fn a_taken_port_stops_the_first_start_before_anything_is_stored_and_the_next_start_prints_the_key() {
    for setting in ["UPDRAFT_LISTEN", "UPDRAFT_MQTT_LISTEN", "UPDRAFT_MQTT_WS_LISTEN"] {
        let workdir = tempfile::tempdir().unwrap();
        let data_dir = workdir.path().join("data");
        let occupant = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = occupant.local_addr().unwrap();
        let pick = |name: &str| if name == setting { taken } else { free_addr() };
        let (http, mqtt, ws) = (pick("UPDRAFT_LISTEN"), pick("UPDRAFT_MQTT_LISTEN"), pick("UPDRAFT_MQTT_WS_LISTEN"));
        let command = |workdir: &Path| {
            let mut command = updraft(workdir);
            command.args(["serve", "--listen", &http.to_string(), "--mqtt-listen", &mqtt.to_string()]);
            command.args(["--mqtt-ws-listen", &ws.to_string(), "--data-dir"]).arg(&data_dir);
            command
        };

        let output = run_to_exit(&mut command(workdir.path()));

        assert!(!output.status.success(), "{setting}: start-up went on with a taken port:\n{}", output.stderr);
        let naming: Vec<&str> = output.stderr.lines().filter(|line| line.contains(setting)).collect();
        assert_eq!(naming.len(), 1, "{setting}: expected one line naming the setting:\n{}", output.stderr);
        assert!(naming[0].contains(&taken.to_string()), "{setting}: the line does not name {taken}: {}", naming[0]);
        assert_eq!(output.stderr.matches("ERROR").count(), 1, "{setting}: expected one error line:\n{}", output.stderr);
        assert!(!output.stderr.contains(" ready in "), "{setting}: `ready` was logged before a listener failed:\n{}", output.stderr);
        assert!(!output.stderr.contains("upd_admin_"), "{setting}: a key was printed by a start that failed:\n{}", output.stderr);
        assert!(!data_dir.exists(), "{setting}: a start that failed created the data folder");

        drop(occupant);
        let server = Server::spawn(command(workdir.path()), http).await;
        let key = server.generated_key().await;
        assert_eq!(server.get("/api/v1/firmware", Some(&key)).await.status(), 200, "{setting}");
        let (status, stderr) = server.stop().await;
        assert!(status.success(), "{setting}: {status}\n{stderr}");
        let ready = stderr.find(" ready in ").expect("ready is logged");
        assert!(stderr.find("embedded MQTT broker listening").is_some_and(|at| at < ready), "{setting}: ready before MQTT:\n{stderr}");
    }
}

#[tokio::test]
async fn a_device_on_mqtt_is_offered_a_download_url_it_can_reach_and_start_up_says_which() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let port = free_addr().port();
    let mqtt = free_addr();
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    // The README's defaults: every address (0.0.0.0), no UPDRAFT_PUBLIC_URL.
    command.args(["serve", "--listen", &format!("0.0.0.0:{port}"), "--mqtt-listen", &mqtt.to_string(), "--data-dir"]).arg(&data_dir);
    let server = Server::spawn(command, SocketAddr::from(([127, 0, 0, 1], port))).await;
    server.wait_for_stderr("devices are given download URLs under ").await;
    let log = server.stderr_text();
    let line = log.lines().find(|line| line.contains("devices are given download URLs under ")).unwrap().to_string();
    let base = line.split("download URLs under ").nth(1).unwrap().split_whitespace().next().unwrap().trim_end_matches(',').to_string();
    assert!(line.contains("UPDRAFT_PUBLIC_URL"), "start-up does not say how to change it: {line}");
    assert!(!base.contains("0.0.0.0") && base.ends_with(&format!(":{port}")), "{line}");

    let build = firmware_bytes(40_000);
    let upload = server
        .client
        .post(format!("http://{}/api/v1/firmware?product=lamp&version=1.1.0&hardware=esp32", server.addr))
        .bearer_auth(ADMIN_KEY)
        .header("content-type", "application/octet-stream")
        .body(build.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 201);
    let provisioned: Value = server
        .client
        .post(format!("http://{}/api/v1/device/provision", server.addr))
        .json(&serde_json::json!({"mac": "24:0A:C4:00:00:01", "product": "lamp", "hardware": "esp32", "version": "1.0.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, token) = (provisioned["device_id"].as_str().unwrap(), provisioned["token"].as_str().unwrap());
    let mut options = rumqttc::MqttOptions::new(id, mqtt.ip().to_string(), mqtt.port());
    options.set_credentials(id, token);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client.subscribe(format!("updraft/{id}/ota"), rumqttc::QoS::AtLeastOnce).await.unwrap();
    let offer: Value = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("an ota message").expect("MQTT");
        if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(message)) = event
            && !message.payload.is_empty()
        {
            break serde_json::from_slice(&message.payload).unwrap();
        }
    };
    let url = offer["update"]["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{base}/")), "the offer's URL {url} is not under {base}");
    let download = server.client.get(url).send().await.expect("the offered URL is reachable");
    assert_eq!(download.status(), 200);
    assert!(download.bytes().await.unwrap()[..] == build[..]);
    server.expect_clean_stop().await;
}

#[test]
fn an_invalid_setting_stops_start_up_with_one_line_naming_the_setting_and_the_problem() {
    struct Case {
        env: &'static [(&'static str, &'static str)],
        args: &'static [&'static str],
        dotenv: Option<&'static str>,
        setting: &'static str,
        problem: &'static str,
    }
    let cases = [
        Case { env: &[("UPDRAFT_LISTEN", "nonsense")], args: &[], dotenv: None, setting: "UPDRAFT_LISTEN", problem: "nonsense" },
        Case {
            env: &[("UPDRAFT_MQTT_URL", "http://broker:1883")],
            args: &[],
            dotenv: None,
            setting: "UPDRAFT_MQTT_URL",
            problem: "mqtt://",
        },
        Case {
            env: &[("UPDRAFT_MQTT_MAX_INFLIGHT", "0")],
            args: &[],
            dotenv: None,
            setting: "UPDRAFT_MQTT_MAX_INFLIGHT",
            problem: "between",
        },
        Case {
            env: &[("UPDRAFT_MAX_UPLOAD_BYTES", "lots")],
            args: &[],
            dotenv: None,
            setting: "UPDRAFT_MAX_UPLOAD_BYTES",
            problem: "lots",
        },
        Case { env: &[], args: &["--database-url", "mysql://x"], dotenv: None, setting: "UPDRAFT_DATABASE_URL", problem: "mysql://x" },
        Case {
            env: &[],
            args: &[],
            dotenv: Some("UPDRAFT_SHUTDOWN_TIMEOUT_SECS=soon\n"),
            setting: "UPDRAFT_SHUTDOWN_TIMEOUT_SECS",
            problem: "soon",
        },
        Case { env: &[("UPDRAFT_LOG_FORMAT", "xml")], args: &[], dotenv: None, setting: "UPDRAFT_LOG_FORMAT", problem: "xml" },
    ];
    for case in cases {
        let workdir = tempfile::tempdir().unwrap();
        if let Some(dotenv) = case.dotenv {
            std::fs::write(workdir.path().join(".env"), dotenv).unwrap();
        }
        let mut command = updraft(workdir.path());
        command.arg("serve").args(case.args).envs(case.env.iter().copied());
        if case.setting != "UPDRAFT_LISTEN" {
            // Should the setting be accepted after all, do not take a shared port.
            command.env("UPDRAFT_LISTEN", "127.0.0.1:0");
        }

        let output = run_to_exit(&mut command);

        assert_eq!(output.status.code(), Some(2), "{}: {}", case.setting, output.stderr);
        let lines: Vec<&str> = output.stderr.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "{}: expected one line on stderr, got:\n{}", case.setting, output.stderr);
        assert!(lines[0].contains(case.setting), "the line does not name {}: {}", case.setting, lines[0]);
        assert!(lines[0].contains(case.problem), "the line does not show the value `{}`: {}", case.problem, lines[0]);
        assert!(!workdir.path().join("data").exists(), "{}: start-up went on to create the data folder", case.setting);
    }
}

#[tokio::test]
async fn a_first_start_prints_a_generated_admin_key_once_and_a_restart_keeps_it() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let first = Server::start(updraft(workdir.path()), &data_dir).await;
    let key = first.generated_key().await;
    assert!(key.len() > "upd_admin_".len() + 20, "{key}");

    assert_eq!(first.get("/api/v1/firmware", Some(&key)).await.status(), 200);
    assert_eq!(first.get("/api/v1/firmware", Some("upd_admin_not-the-right-key-at-all")).await.status(), 401);
    let (status, stderr) = first.stop().await;
    assert!(status.success(), "SIGTERM should exit 0: {status}\n{stderr}");
    assert_eq!(stderr.matches("upd_admin_").count(), 1, "the key should be printed exactly once:\n{stderr}");

    let second = Server::start(updraft(workdir.path()), &data_dir).await;
    assert_eq!(second.get("/api/v1/firmware", Some(&key)).await.status(), 200);
    let (status, stderr) = second.stop().await;
    assert!(status.success(), "{status}\n{stderr}");
    assert!(!stderr.contains("upd_admin_"), "a restart printed a new key:\n{stderr}");
}

#[tokio::test]
async fn settings_layer_file_then_dotenv_then_environment_then_flags() {
    let workdir = tempfile::tempdir().unwrap();
    let [a, b, c, d] = [free_addr(), free_addr(), free_addr(), free_addr()];
    std::fs::write(workdir.path().join("updraft.toml"), format!("listen = \"{a}\"\nadmin_api_key = \"{ADMIN_KEY}\"\n")).unwrap();
    let layered = |env: Option<SocketAddr>, flag: Option<SocketAddr>| {
        let mut command = updraft(workdir.path());
        command.args(["serve", "--config", "updraft.toml"]);
        if let Some(env) = env {
            command.env("UPDRAFT_LISTEN", env.to_string());
        }
        if let Some(flag) = flag {
            command.args(["--listen", &flag.to_string()]);
        }
        command
    };

    // The file alone.
    Server::spawn(layered(None, None), a).await.expect_clean_stop().await;
    // .env beats the file.
    std::fs::write(workdir.path().join(".env"), format!("UPDRAFT_LISTEN={b}\n")).unwrap();
    Server::spawn(layered(None, None), b).await.expect_clean_stop().await;
    // The environment beats .env.
    Server::spawn(layered(Some(c), None), c).await.expect_clean_stop().await;
    // The flag beats the environment.
    Server::spawn(layered(Some(c), Some(d)), d).await.expect_clean_stop().await;
}

#[tokio::test]
async fn sigterm_lets_an_upload_in_flight_finish_and_then_exits_cleanly() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY).env("UPDRAFT_SHUTDOWN_TIMEOUT_SECS", "30");
    let server = Server::start(command, &data_dir).await;
    let body = firmware_bytes(1 << 20);
    let pieces: Vec<&[u8]> = body.chunks(body.len() / 8).collect();
    let mut upload = TcpStream::connect(server.addr).await.unwrap();
    upload.write_all(upload_head(server.addr, body.len()).as_bytes()).await.unwrap();

    for (i, piece) in pieces.iter().enumerate() {
        if i == 4 {
            server.terminate();
            server.wait_for_stderr("shutting down").await;
            // A fresh client: the server's own client may hold a pooled keep-alive connection
            // from before the shutdown, which is not a new connection.
            let fresh = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap();
            let newcomer = fresh.get(format!("http://{}/api/health", server.addr)).send().await;
            assert!(newcomer.is_err(), "a new connection was served during shutdown");
        }
        upload.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = read_status(&mut upload).await;

    assert_eq!(status, 201, "the upload in flight during shutdown did not complete");
    let (exit, stderr) = server.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}\n{stderr}");
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let restarted = Server::start(command, &data_dir).await;
    let list: Value = restarted.get("/api/v1/firmware", Some(ADMIN_KEY)).await.json().await.unwrap();
    assert_eq!(list["total"], 1, "{list}");
    restarted.expect_clean_stop().await;
}

#[tokio::test]
async fn after_the_shutdown_deadline_a_stalled_upload_is_abandoned_and_leaves_nothing() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY).env("UPDRAFT_SHUTDOWN_TIMEOUT_SECS", "1");
    let server = Server::start(command, &data_dir).await;
    let body = firmware_bytes(1 << 20);
    let mut upload = TcpStream::connect(server.addr).await.unwrap();
    upload.write_all(upload_head(server.addr, body.len()).as_bytes()).await.unwrap();
    upload.write_all(&body[..body.len() / 4]).await.unwrap();
    // The upload is being staged; from now on the client sends nothing but keeps the socket open.
    wait_until("a staging file exists", || !files_under(&data_dir.join("blobs")).is_empty()).await;

    server.terminate();
    let (exit, stderr) = server.wait_exit(Duration::from_secs(5)).await;

    assert!(exit.success(), "{exit}\n{stderr}");
    let left = files_under(&data_dir.join("blobs"));
    assert!(left.is_empty(), "the abandoned upload left files behind: {left:?}");
    drop(upload);
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let restarted = Server::start(command, &data_dir).await;
    let list: Value = restarted.get("/api/v1/firmware", Some(ADMIN_KEY)).await.json().await.unwrap();
    assert_eq!(list["total"], 0, "{list}");
    restarted.expect_clean_stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_hold_up_shutdown() {
    let workdir = tempfile::tempdir().unwrap();
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY).env("UPDRAFT_SHUTDOWN_TIMEOUT_SECS", "60");
    let server = Server::start(command, &workdir.path().join("data")).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(format!("GET /api/health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).await.unwrap();
    assert_eq!(read_status(&mut idle).await, 200);

    server.terminate();
    let (exit, stderr) = server.wait_exit(Duration::from_secs(10)).await;

    assert!(exit.success(), "{exit}\n{stderr}");
    drop(idle);
}

#[tokio::test]
async fn a_refused_mqtt_login_is_logged_as_one_line_without_the_credentials() {
    let workdir = tempfile::tempdir().unwrap();
    let mqtt = free_addr();
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY).env("UPDRAFT_MQTT_LISTEN", mqtt.to_string());
    let server = Server::start(command, &workdir.path().join("data")).await;

    // A ThingsBoard-style login (the token as the username) and a user name and password.
    for (client_id, username, password) in
        [("probe-one", "upd_dev_NotARealToken0123456789", None), ("probe-two", "someone", Some("hunter2-secret-password"))]
    {
        let mut socket = TcpStream::connect(mqtt).await.unwrap();
        socket.write_all(&mqtt_connect(client_id, username, password)).await.unwrap();
        let mut connack = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut connack)).await.unwrap().unwrap();
        assert_eq!(connack, [0x20, 2, 0, 4], "CONNACK 4: bad user name or password");
    }
    // A device's right token with a client id that is not its own: refused and logged too.
    let provisioned: Value = server
        .client
        .post(format!("http://{}/api/v1/device/provision", server.addr))
        .json(&serde_json::json!({"mac": "24:0A:C4:00:00:09", "product": "lamp"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, token) = (provisioned["device_id"].as_str().unwrap(), provisioned["token"].as_str().unwrap());
    let mut socket = TcpStream::connect(mqtt).await.unwrap();
    socket.write_all(&mqtt_connect("probe-three", id, Some(token))).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut connack)).await.unwrap().unwrap();
    assert_eq!(connack, [0x20, 2, 0, 2], "CONNACK 2: identifier rejected");
    server.wait_for_stderr("probe-three").await;
    let (_, stderr) = server.stop().await;

    for (client_id, reason) in [
        ("probe-one", "bad user name or password"),
        ("probe-two", "bad user name or password"),
        ("probe-three", "a device's client id must be empty or start with its id or MAC"),
    ] {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(client_id)).collect();
        assert_eq!(lines.len(), 1, "one line per refused login:\n{stderr}");
        assert!(lines[0].contains("INFO") && lines[0].contains(reason) && lines[0].contains("127.0.0.1"), "{}", lines[0]);
    }
    for credential in ["NotARealToken", "hunter2", "someone", token] {
        assert!(!stderr.contains(credential), "no credential is logged ({credential}):\n{stderr}");
    }
    assert!(!stderr.contains("Connection Refused"), "the broker library's own dump is not logged:\n{stderr}");
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s).
fn mqtt_connect(client_id: &str, username: &str, password: Option<&str>) -> Vec<u8> {
    let flags = 0b1000_0010 | if password.is_some() { 0b0100_0000 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 30];
    for field in [Some(client_id), Some(username), password].into_iter().flatten() {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[test]
fn openapi_prints_the_document() {
    let workdir = tempfile::tempdir().unwrap();

    let output = run_to_exit(updraft(workdir.path()).arg("openapi"));

    assert!(output.status.success(), "{}", output.stderr);
    let document: Value = serde_json::from_str(&output.stdout).expect("stdout is JSON");
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", document["openapi"]);
    assert_eq!(document, serde_json::to_value(updraft::http::openapi()).unwrap());
}

#[tokio::test]
async fn reset_admin_key_prints_a_new_key_that_replaces_the_generated_one() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let first = Server::start(updraft(workdir.path()), &data_dir).await;
    let old_key = first.generated_key().await;
    first.expect_clean_stop().await;

    let output = run_to_exit(updraft(workdir.path()).args(["reset-admin-key", "--data-dir"]).arg(&data_dir));

    assert!(output.status.success(), "{}", output.stderr);
    let new_key = output.stdout.trim().to_string();
    assert!(new_key.starts_with("upd_admin_") && !new_key.contains(char::is_whitespace), "stdout is not one key: {:?}", output.stdout);
    assert_ne!(new_key, old_key);
    let server = Server::start(updraft(workdir.path()), &data_dir).await;
    assert_eq!(server.get("/api/v1/firmware", Some(&new_key)).await.status(), 200);
    assert_eq!(server.get("/api/v1/firmware", Some(&old_key)).await.status(), 401);
    let (status, stderr) = server.stop().await;
    assert!(status.success(), "{status}\n{stderr}");
    assert!(!stderr.contains("upd_admin_"), "a start after the reset printed a key:\n{stderr}");
}

#[tokio::test]
async fn import_ota_server_brings_devices_pins_and_files_and_the_devices_keep_working() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let firmware_dir = workdir.path().join("firmware");
    std::fs::create_dir(&firmware_dir).unwrap();
    let current = updraft::domain::esp_image::builder::EspImageBuilder::new("PanicButton", "1.3.8").payload_len(20_000).build();
    std::fs::write(firmware_dir.join("panic_1.3.8.bin"), &current).unwrap();
    // Not an ESP image (no embedded version): its version comes from the device naming it.
    std::fs::write(firmware_dir.join("legacy.bin"), firmware_bytes(5000)).unwrap();
    let devices = serde_json::json!({
        "AA:BB:CC:DD:EE:FF": {"device_id": "PanicAlarm_EEFF", "hardware_version": "1.0", "target_version": "1.3.8",
            "firmware_url": "http://10.0.0.5:5000/firmware/panic_1.3.8.bin", "checksum": "ignored", "last_check": null,
            "last_update": null, "current_version": "1.3.7", "ip_address": "10.0.0.9"},
        "11:22:33:44:55:66": {"device_id": "PanicAlarm_5566", "target_version": "1.2",
            "firmware_url": "http://10.0.0.5:5000/firmware/legacy.bin", "checksum": "ignored"}
    });
    std::fs::write(workdir.path().join("devices.json"), devices.to_string()).unwrap();
    // The import works on an existing installation: start the server once.
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    Server::start(command, &data_dir).await.expect_clean_stop().await;
    let import = |workdir: &Path| {
        let mut command = updraft(workdir);
        command
            .args(["import", "ota-server", "--devices", "devices.json", "--firmware-dir", "firmware", "--product", "panic", "--data-dir"])
            .arg(&data_dir);
        run_to_exit(&mut command)
    };

    let first = import(workdir.path());
    assert!(first.status.success(), "{}\n{}", first.stdout, first.stderr);
    assert!(first.stdout.contains("file panic_1.3.8.bin: build panic 1.3.8"), "{}", first.stdout);
    assert!(first.stdout.contains("file legacy.bin: build panic 1.2"), "{}", first.stdout);
    assert!(first.stdout.contains("devices: 2 created, 0 updated"), "{}", first.stdout);
    let again = import(workdir.path());
    assert!(again.status.success(), "{}", again.stderr);
    assert!(again.stdout.contains("devices: 0 created, 2 updated"), "{}", again.stdout);

    // The seed-001 server's own variable names work, and its devices get their pinned builds.
    let mut command = updraft(workdir.path());
    command
        .env("OTA_SERVER_SHARED_SECRET_KEY", "sekret")
        .env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY)
        .env("UPDRAFT_COMPAT_DEFAULT_PRODUCT", "panic");
    let server = Server::start(command, &data_dir).await;
    let token = format!("{:x}", updraft::domain::compat::djb2(0, "AABBCCDDEEFFsekret"));
    let check: serde_json::Value = server
        .client
        .get(format!("http://{}/api/firmware?device_id=PanicAlarm_EEFF&hardware=esp32&version=1.3.7&mac=AA:BB:CC:DD:EE:FF", server.addr))
        .header("X-Device-Auth", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(check["update_available"], true, "{check}");
    assert_eq!(check["firmware_version"], "1.3.8");
    let file = server.get("/firmware/panic_1.3.8.bin", None).await;
    assert_eq!(file.status(), 200);
    assert!(file.bytes().await.unwrap()[..] == current[..]);
    let device: serde_json::Value = server.get("/api/v1/devices/11:22:33:44:55:66", Some(ADMIN_KEY)).await.json().await.unwrap();
    assert_eq!((device["target_version"].as_str(), device["hardware"].as_str()), (Some("1.2"), Some("esp32")));
    server.expect_clean_stop().await;
}

// ---------------------------------------------------------------------------------------------

/// The binary, in `workdir`, with no environment but PATH and HOME.
fn updraft(workdir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_updraft"));
    command.env_clear().current_dir(workdir);
    for name in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    // Tests run servers side by side: none may take the default MQTT port.
    command.env("UPDRAFT_MQTT_LISTEN", "127.0.0.1:0");
    command
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command that should exit by itself; kills it (and fails) if it runs on.
fn run_to_exit(command: &mut Command) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start updraft");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("updraft did not exit by itself; stderr:\n{}", stderr.text());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: stdout.finish(), stderr: stderr.finish() }
}

/// A stream read to its end on a thread, readable at any time.
struct Collected {
    text: Arc<Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_in_background(mut stream: impl Read + Send + 'static) -> Collected {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let thread = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    Collected { text, thread: Some(thread) }
}

impl Collected {
    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything, once the stream has ended.
    fn finish(mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.text()
    }
}

/// A loopback address that was free a moment ago.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A running `updraft serve`; killed if a test fails before stopping it.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Option<Collected>,
    client: reqwest::Client,
}

impl Server {
    /// `updraft serve --listen <free port> --data-dir <data_dir>`, ready.
    async fn start(mut command: Command, data_dir: &Path) -> Server {
        let addr = free_addr();
        command.args(["serve", "--listen", &addr.to_string(), "--data-dir"]).arg(data_dir);
        Server::spawn(command, addr).await
    }

    /// Runs `command` and waits until `/api/ready` answers 200 on `addr`.
    async fn spawn(mut command: Command, addr: SocketAddr) -> Server {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start updraft");
        let stderr = read_in_background(child.stderr.take().unwrap());
        let mut server = Server { child, addr, stderr: Some(stderr), client: reqwest::Client::builder().no_proxy().build().unwrap() };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("updraft exited during start-up ({status}):\n{}", server.stderr_text());
            }
            let ready = server.client.get(format!("http://{addr}/api/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return server;
            }
            assert!(Instant::now() < deadline, "updraft was not ready on {addr} within 10 s:\n{}", server.stderr_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.as_ref().map(Collected::text).unwrap_or_default()
    }

    async fn get(&self, path: &str, key: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("http://{}{path}", self.addr));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.expect("request to updraft")
    }

    /// The admin key printed at start-up.
    async fn generated_key(&self) -> String {
        self.wait_for_stderr("upd_admin_").await;
        let text = self.stderr_text();
        let start = text.find("upd_admin_").unwrap();
        text[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect()
    }

    async fn wait_for_stderr(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stderr_text().contains(needle) {
            assert!(Instant::now() < deadline, "updraft never wrote {needle:?} on stderr:\n{}", self.stderr_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit on its own; returns its status and whole stderr.
    async fn wait_exit(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let stderr = self.stderr.take().map(Collected::finish).unwrap_or_default();
                return (status, stderr);
            }
            assert!(Instant::now() < deadline, "updraft did not exit within {limit:?}:\n{}", self.stderr_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then the exit status and the whole stderr.
    async fn stop(self) -> (ExitStatus, String) {
        self.terminate();
        self.wait_exit(Duration::from_secs(10)).await
    }

    async fn expect_clean_stop(self) {
        let (status, stderr) = self.stop().await;
        assert!(status.success(), "updraft did not exit 0 on SIGTERM ({status}):\n{stderr}");
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

/// Bytes accepted as a raw (non-ESP) upload.
fn firmware_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i >> 11) as u8).collect()
}

fn upload_head(addr: SocketAddr, length: usize) -> String {
    format!(
        "POST /api/v1/firmware?product=gateway&version=1.0.0&hardware=rpi4 HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Reads a response head and returns its status code.
async fn read_status(stream: &mut TcpStream) -> u16 {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await.expect("a response").expect("read");
        assert!(n > 0, "the connection closed without a response; got {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad response head {head:?}"))
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

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_server_killed_while_configurations_are_written_keeps_every_document_whole() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let mut server = Server::start(command, &data_dir).await;

    // Writers keep replacing one document with large, self-consistent versions: every
    // value of `fill` repeats `n`.
    let url = format!("http://{}/api/v1/configs/product/lamp", server.addr);
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..4usize {
        let (client, url, writes) = (server.client.clone(), url.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            for round in 0.. {
                let n = writer * 1_000_000 + round;
                let fill: Vec<usize> = vec![n; 2000];
                let body = serde_json::json!({"content": {"n": n, "fill": fill, "secret": {"$secret": n}}});
                let sent = client.put(&url).bearer_auth(ADMIN_KEY).json(&body).send().await;
                match sent {
                    Ok(response) if response.status() == 200 => {
                        writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }));
    }
    wait_until("20 configuration writes", || writes.load(std::sync::atomic::Ordering::Relaxed) >= 20).await;
    server.child.kill().unwrap();
    let _ = server.child.wait();
    for writer in writers {
        let _ = writer.await;
    }
    drop(server);

    let mut command = updraft(workdir.path());
    command.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let restarted = Server::start(command, &data_dir).await;
    let current: Value = restarted.get("/api/v1/configs/product/lamp", Some(ADMIN_KEY)).await.json().await.unwrap();
    let version = current["version"].as_i64().unwrap();
    assert!(version >= 20, "{version}");
    let content = &current["content"];
    let n = content["n"].as_u64().unwrap();
    assert!(content["fill"].as_array().unwrap().iter().all(|v| v.as_u64() == Some(n)), "a torn document survived");
    assert_eq!(content["secret"], serde_json::json!({"$secret": null}));
    // The history is complete: one version per accepted write, numbered without gaps.
    let history: Value = restarted.get("/api/v1/configs/product/lamp/history?limit=500", Some(ADMIN_KEY)).await.json().await.unwrap();
    assert_eq!(history["total"].as_i64(), Some(version));
    assert_eq!(history["items"][0]["version"].as_i64(), Some(version));
    // And the document still writes and reads after the crash.
    let response = restarted
        .client
        .put(format!("http://{}/api/v1/configs/product/lamp", restarted.addr))
        .bearer_auth(ADMIN_KEY)
        .header("if-match", format!("\"{version}\""))
        .json(&serde_json::json!({"content": {"n": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    restarted.expect_clean_stop().await;
}

#[test]
fn seed_003_s_signing_key_path_setting_is_honoured() {
    let workdir = tempfile::tempdir().unwrap();
    let output =
        run_to_exit(updraft(workdir.path()).args(["serve", "--listen", "127.0.0.1:0"]).env("SIGNING_KEY_PATH", "/nonexistent/key.pem"));
    assert_eq!(output.status.code(), Some(2), "{}", output.stderr);
    assert!(output.stderr.contains("UPDRAFT_SIGNING_KEY_PATH") && output.stderr.contains("/nonexistent/key.pem"), "{}", output.stderr);
}

#[tokio::test]
async fn start_up_warns_once_for_each_weak_setting_in_use_and_not_for_closed_ones() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let defaults = Server::start(updraft(workdir.path()), &data_dir).await;
    let (_, stderr) = defaults.stop().await;
    for setting in [
        "UPDRAFT_TLS_CERT",
        "UPDRAFT_PUBLIC_CONFIG_FILES",
        "UPDRAFT_METRICS_TOKEN",
        "UPDRAFT_COMPAT_ARDUINO",
        "UPDRAFT_DEFAULT_PROVISIONING",
    ] {
        let lines = stderr.lines().filter(|l| l.contains("weak setting in use") && l.contains(setting)).count();
        assert_eq!(lines, 1, "one warning for {setting}:\n{stderr}");
    }
    assert!(!stderr.contains("UPDRAFT_COMPAT_SEED004_DEBUG"), "seed 004's debug path is off by default:\n{stderr}");

    // A deployment on an untrusted network closes them, and hears nothing.
    let mut command = updraft(workdir.path());
    command.envs([
        ("UPDRAFT_TRUSTED_PROXIES", "127.0.0.1"),
        ("UPDRAFT_DEFAULT_PROVISIONING", "preregistered"),
        ("UPDRAFT_PUBLIC_CONFIG_FILES", "false"),
        ("UPDRAFT_METRICS_TOKEN", "metrics-token-0123456789"),
        ("UPDRAFT_COMPAT_OTA_SERVER", "false"),
        ("UPDRAFT_COMPAT_CYBERDECK", "false"),
        ("UPDRAFT_COMPAT_ARDUINO", "false"),
        ("UPDRAFT_COMPAT_ESP32FOTA", "false"),
        ("UPDRAFT_COMPAT_ESPHOME", "false"),
    ]);
    let closed = Server::start(command, &data_dir).await;
    let (_, stderr) = closed.stop().await;
    assert!(!stderr.contains("weak setting in use"), "{stderr}");
}

/// Runs a command with `input` on its standard input.
fn run_with_stdin(command: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start updraft");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn users_and_keys_are_managed_from_the_command_line_with_the_server_stopped() {
    let workdir = tempfile::tempdir().unwrap();
    let data_dir = workdir.path().join("data");
    let cli = |args: &[&str]| {
        let mut command = updraft(workdir.path());
        command.args(args).arg("--data-dir").arg(&data_dir);
        command
    };
    // Nothing is created before the first start.
    let early = run_with_stdin(&mut cli(&["user", "add", "alice", "--role", "operator"]), "a long enough password\n");
    assert!(!early.status.success() && !data_dir.exists(), "{}", early.stderr);
    let mut first = updraft(workdir.path());
    first.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    Server::start(first, &data_dir).await.expect_clean_stop().await;

    let password = "a long enough password";
    let added = run_with_stdin(&mut cli(&["user", "add", "alice", "--role", "operator"]), &format!("{password}\n"));
    assert!(added.status.success(), "{}", added.stderr);
    let short = run_with_stdin(&mut cli(&["user", "add", "bob", "--role", "viewer"]), "short\n");
    assert!(!short.status.success() && short.stderr.contains("password"), "{}", short.stderr);
    let created = run_to_exit(&mut cli(&["key", "create", "ci", "--role", "viewer", "--expires-in-days", "30"]));
    assert!(created.status.success(), "{}", created.stderr);
    let key = created.stdout.trim().to_string();
    assert!(key.starts_with("upd_") && !key.contains(char::is_whitespace), "stdout is not one key: {:?}", created.stdout);
    let users = run_to_exit(&mut cli(&["user", "list"]));
    assert!(users.stdout.contains("alice\toperator\tenabled"), "{}", users.stdout);
    let keys = run_to_exit(&mut cli(&["key", "list"]));
    assert!(keys.stdout.contains("ci\t") && keys.stdout.contains("admin\t") && !keys.stdout.contains(&key), "{}", keys.stdout);
    for output in [&added, &created, &users, &keys] {
        assert!(!output.stdout.contains(password) && !output.stderr.contains(password), "the password was printed");
    }

    let mut serve = updraft(workdir.path());
    serve.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let server = Server::start(serve, &data_dir).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let login = |addr: SocketAddr, body: Value| {
        let client = client.clone();
        async move { client.post(format!("http://{addr}/api/v1/session")).json(&body).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(login(server.addr, serde_json::json!({"username": "alice", "password": password})).await, 201);
    assert_eq!(server.get("/api/v1/session", Some(&key)).await.status(), 200);
    server.expect_clean_stop().await;

    let new_password = "another long enough password";
    let changed = run_with_stdin(&mut cli(&["user", "passwd", "alice"]), &format!("{new_password}\n"));
    assert!(changed.status.success(), "{}", changed.stderr);
    let mut serve = updraft(workdir.path());
    serve.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let server = Server::start(serve, &data_dir).await;
    assert_eq!(login(server.addr, serde_json::json!({"username": "alice", "password": password})).await, 401);
    assert_eq!(login(server.addr, serde_json::json!({"username": "alice", "password": new_password})).await, 201);
    server.expect_clean_stop().await;

    assert!(run_to_exit(&mut cli(&["user", "disable", "alice"])).status.success());
    let revoked = run_to_exit(&mut cli(&["key", "revoke", "ci"]));
    assert!(revoked.status.success(), "{}", revoked.stderr);
    assert!(run_to_exit(&mut cli(&["user", "list"])).stdout.contains("alice\toperator\tdisabled"));
    let mut serve = updraft(workdir.path());
    serve.env("UPDRAFT_ADMIN_API_KEY", ADMIN_KEY);
    let server = Server::start(serve, &data_dir).await;
    assert_eq!(login(server.addr, serde_json::json!({"username": "alice", "password": new_password})).await, 401);
    assert_eq!(server.get("/api/v1/session", Some(&key)).await.status(), 401);
    assert_eq!(server.get("/api/v1/session", Some(ADMIN_KEY)).await.status(), 200);
    server.expect_clean_stop().await;
}
