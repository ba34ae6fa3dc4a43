//! Slow and hostile clients (issue 18): slow-loris on headers and bodies, silent and half-open
//! connections beyond `UPDRAFT_MAX_CONNECTIONS`, oversized request heads, MQTT connections that
//! never finish CONNECT or fall silent after it, and compressed uploads. During each attack a
//! device's check-in, on a new connection, still answers. These tests bound it generously
//! (`CHECKIN_BOUND`) so that they are not timed; bench/hostile.sh measures the latency.
//!
//! Related tests elsewhere: security.rs, `during_a_slow_body_and_slow_connect_flood_a_check_in_still_answers_at_once`
//! and `a_body_trickling_a_byte_at_a_time_is_cut_off_after_the_grace_period` (slow bodies);
//! mqtt.rs, `a_connection_that_sends_no_connect_is_closed_after_the_handshake_timeout`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// How long a check-in may take during an attack before the test fails (the contract is 1 s;
/// the bench measures it, the test only proves it is not stuck behind the attack).
const CHECKIN_BOUND: Duration = Duration::from_secs(5);

/// A check-in on a new connection (never one kept alive from before the attack); returns how
/// long it took.
async fn checkin_answers(app: &TestApp, token: &str, during: &str) -> Duration {
    let client = reqwest::Client::builder().no_proxy().timeout(CHECKIN_BOUND).pool_max_idle_per_host(0).build().unwrap();
    let started = Instant::now();
    let response = client
        .post(app.url("/api/v1/device/checkin"))
        .bearer_auth(token)
        .json(&json!({"version": "1.0.0"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{during}: a check-in got no answer: {e}"));
    assert_eq!(response.status(), 200, "{during}");
    let took = started.elapsed();
    eprintln!("{during}: a check-in answered in {took:?}");
    took
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closes `stream` within `within` (whatever it sends first is skipped).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    read_until_closed(stream, within).await.is_some()
}

// ---- HTTP: slow-loris on headers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_trickled_a_byte_at_a_time_are_cut_off_at_the_header_timeout_and_check_ins_still_answer() {
    let app = spawn_app_with(|s| s.header_read_timeout = Duration::from_secs(2)).await;
    let (_, token) = provisioned(&app, "02:00:00:18:01:01", "lamp", "esp32").await;
    // 50 connections, 5 addresses, each sending a header byte every 300 ms and never the end.
    let mut loris = Vec::new();
    for n in 0..50u8 {
        let mut stream = connect_from([127, 0, 0, 10 + n % 5], app.addr).await;
        stream.write_all(b"POST /api/v1/device/checkin HTTP/1.1\r\nHost: updraft\r\nX-Slow: ").await.unwrap();
        loris.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut buffer = [0u8; 256];
            loop {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return Some(started.elapsed()),
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {
                        if stream.write_all(b"a").await.is_err() {
                            return Some(started.elapsed());
                        }
                    }
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return None;
                }
            }
        }));
    }
    checkin_answers(&app, &token, "during a header slow-loris").await;
    for connection in loris {
        let closed = connection.await.unwrap();
        assert!(closed.is_some(), "a connection trickling its headers is closed");
    }
    checkin_answers(&app, &token, "after a header slow-loris").await;
    app.stop().await;
}

/// A connection that opens and sends nothing, or only the start of HTTP/2's preface (so that
/// the server cannot tell which protocol it speaks), is closed after the header timeout. Before
/// UPDRAFT_HEADER_READ_TIMEOUT_SECS also counted from the moment a connection opens, hyper's
/// timeout only started once the first bytes named the protocol: such connections stayed open
/// for ever, each holding a slot and a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s| s.header_read_timeout = Duration::from_secs(1)).await;
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let mut preface = TcpStream::connect(app.addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut one_byte = TcpStream::connect(app.addr).await.unwrap();
    one_byte.write_all(b"G").await.unwrap();
    for (name, stream) in [("silent", &mut silent), ("half an HTTP/2 preface", &mut preface), ("one byte", &mut one_byte)] {
        assert!(closed_within(stream, Duration::from_secs(15)).await, "{name}: the connection is closed");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_idle_between_requests_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|s| s.header_read_timeout = Duration::from_secs(1)).await;
    let mut connection = crate::raw::RawConnection::open(&app).await;
    connection.send("GET /api/health HTTP/1.1\r\nHost: updraft\r\n\r\n").await;
    assert_eq!(connection.response(false).await.status, 200);
    // No second request: the connection does not stay open for ever.
    assert!(connection.closed_by_server().await, "an idle keep-alive connection is closed");
    app.stop().await;
}

// ---- HTTP: silent connections beyond UPDRAFT_MAX_CONNECTIONS ----

/// 60 connections that never send anything, on a server with 40 slots: every slot is taken
/// and 20 more wait. A check-in on a new connection answers at once: the connections idle the
/// longest are closed to make room (before, it waited until the header timeout freed a slot,
/// 30 s by default). Afterwards the server serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_beyond_the_connection_limit_is_shed_and_check_ins_still_answer() {
    let app = spawn_app_with(|s| {
        s.max_connections = 40;
        s.max_connections_per_ip = 10;
    })
    .await;
    let (_, token) = provisioned(&app, "02:00:00:18:02:01", "lamp", "esp32").await;
    // From 6 addresses, 10 each (the most one address may hold): 60 half-open connections.
    let mut flood = Vec::new();
    for n in 0..60u8 {
        flood.push(connect_from([127, 0, 0, 20 + n / 10], app.addr).await);
    }
    checkin_answers(&app, &token, "during 60 silent connections on 40 slots").await;
    checkin_answers(&app, &token, "during 60 silent connections on 40 slots (again)").await;
    // An eleventh from the last address is refused at once (the per-address limit).
    let mut eleventh = connect_from([127, 0, 0, 25], app.addr).await;
    assert!(closed_within(&mut eleventh, Duration::from_secs(10)).await, "an address holds at most 10");

    // The oldest silent connections were closed to make room: 20 for the flood's own
    // connections beyond the limit, and one for the first check-in (the second may find the
    // first one's slot free).
    let mut closed = 0;
    for stream in &mut flood {
        if closed_within(stream, Duration::from_millis(20)).await {
            closed += 1;
        }
    }
    assert!(closed >= 21, "at least 60 - 40 + 1 silent connections were shed, {closed} were");
    drop(flood);
    for _ in 0..5 {
        checkin_answers(&app, &token, "after the flood").await;
    }
    app.stop().await;
}

// ---- HTTP: oversized request heads ----

/// hyper reads a request head into an 8 KiB buffer and reads at most 100 headers: a head
/// beyond either is answered `431 Request Header Fields Too Large` (no body; no route saw the
/// request) and the connection is closed. Never a 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_are_answered_431_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let (_, token) = provisioned(&app, "02:00:00:18:03:01", "lamp", "esp32").await;
    let large_header = format!("X-Large: {}\r\n", "a".repeat(10 * 1024));
    let many_headers: String = (0..200).map(|n| format!("X-Many-{n}: {n}\r\n")).collect();
    let many_large_headers: String = (0..50).map(|n| format!("X-Big-{n}: {}\r\n", "b".repeat(1000))).collect();
    let long_path = format!("/api/v1/device/checkin?{}", "q".repeat(10 * 1024));
    let cases = [
        ("one 10 KiB header", "/api/v1/device/checkin", large_header),
        ("200 headers", "/api/v1/device/checkin", many_headers),
        ("50 headers of 1 KiB", "/api/v1/device/checkin", many_large_headers),
        ("a 10 KiB request line", long_path.as_str(), String::new()),
    ];
    for (name, path, headers) in &cases {
        let mut connection = crate::raw::RawConnection::open(&app).await;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: updraft\r\nAuthorization: Bearer {token}\r\n{headers}Content-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        );
        connection.send(&request).await;
        let response = connection.response(false).await;
        assert_eq!(response.status, 431, "{name}: {}", response.head);
        assert!(response.body.is_empty(), "{name}");
        assert!(connection.closed_by_server().await, "{name}: the connection is closed");
        checkin_answers(&app, &token, &format!("after {name}")).await;
    }
    // 95 small headers are fine.
    let headers: String = (0..90).map(|n| format!("X-Fine-{n}: {n}\r\n")).collect();
    let request = format!(
        "POST /api/v1/device/checkin HTTP/1.1\r\nHost: updraft\r\nAuthorization: Bearer {token}\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    assert_eq!(crate::raw::exchange(&app, &request).await.status, 200);
    app.stop().await;
}

// ---- HTTP: slow bodies on the upload routes ----

/// Uploads (firmware, assets) stream their bodies past the JSON body limit: trickled, they end
/// with `408` like every other body, and check-ins answer meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_bodies_trickled_a_byte_at_a_time_end_with_408_and_check_ins_still_answer() {
    let app = spawn_app_with(|s| s.body_read_timeout = Duration::from_secs(2)).await;
    let (_, token) = provisioned(&app, "02:00:00:18:04:01", "lamp", "esp32").await;
    let routes = ["/api/v1/firmware?product=lamp&version=9.9.9", "/api/v1/assets/lamp/slow.bin"];
    let mut trickles = Vec::new();
    for n in 0..20u8 {
        let route = routes[n as usize % 2];
        let mut stream = connect_from([127, 0, 0, 40 + n % 4], app.addr).await;
        let head = format!(
            "POST {route} HTTP/1.1\r\nHost: updraft\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        trickles.push(tokio::spawn(async move {
            let mut received = Vec::new();
            let mut buffer = [0u8; 1024];
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(30) {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => received.extend_from_slice(&buffer[..n]),
                    },
                    _ = tokio::time::sleep(Duration::from_millis(400)) => {
                        let _ = stream.write_all(b"x").await;
                    }
                }
            }
            (route, String::from_utf8_lossy(&received).into_owned())
        }));
    }
    checkin_answers(&app, &token, "during 20 trickled uploads").await;
    for trickle in trickles {
        let (route, answer) = trickle.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{route}: {answer}");
    }
    assert_eq!(app.list_artifacts("").await["total"], 0, "nothing was stored");
    app.stop().await;
}

// ---- HTTP: compressed uploads ----

/// `gzip -c` of `bytes`.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    output.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A body sent with `Content-Encoding: gzip` is stored exactly as sent: no layer inflates it
/// (so a small "zip bomb" stays small), and it is served back byte for byte, without a
/// `Content-Encoding` that would make a client inflate it. A device that wants compressed
/// firmware uploads it compressed and inflates it itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_encoded_upload_is_stored_exactly_as_sent_and_never_inflated() {
    let app = spawn_app().await;
    // 8 MiB of zeros: about 8 KiB compressed.
    let inflated = vec![0u8; 8 << 20];
    let sent = gzip(&inflated);
    assert!(sent.len() < 64 * 1024);
    let sent_sha = sha256_hex(&sent);

    // Firmware (raw body) and an asset: each stored and served back as sent.
    for (path, url_field) in
        [("/api/v1/firmware?product=lamp&version=1.0.1&hardware=esp32", "download_url"), ("/api/v1/assets/lamp/sounds.bin", "url")]
    {
        let response = app
            .admin(Method::POST, path)
            .header("content-type", "application/octet-stream")
            .header("content-encoding", "gzip")
            .body(sent.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let stored: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "{path}: {stored}");
        assert_eq!((stored["sha256"].as_str(), stored["size"].as_u64()), (Some(sent_sha.as_str()), Some(sent.len() as u64)), "{path}");
        let url = stored[url_field].as_str().unwrap().trim_start_matches(&app.base);
        let download = app.admin(Method::GET, url).send().await.unwrap();
        assert_eq!(download.status(), 200, "{path}");
        assert!(download.headers().get("content-encoding").is_none(), "{path}: served as stored, not as an encoding");
        assert_eq!(sha256_hex(&download.bytes().await.unwrap()), sent_sha, "{path}");
    }

    // What is on disk is the compressed bytes too.
    if uses_local_blobs() {
        let stored: Vec<_> = app.blob_files().iter().map(|f| std::fs::metadata(f).unwrap().len()).collect();
        assert!(stored.iter().all(|len| *len == sent.len() as u64), "{stored:?}");
    }
    app.stop().await;
}

// ---- MQTT ----

/// A raw MQTT 3.1.1 CONNECT (clean session) with a username and password.
fn mqtt_connect(client_id: &str, username: &str, password: &str, keep_alive_secs: u16) -> Vec<u8> {
    let string = |s: &str| {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    };
    let mut rest = string("MQTT");
    rest.extend_from_slice(&[4, 0b1100_0010]);
    rest.extend_from_slice(&keep_alive_secs.to_be_bytes());
    for field in [client_id, username, password] {
        rest.extend(string(field));
    }
    let mut packet = vec![0x10];
    let mut len = rest.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(rest);
    packet
}

/// Reads exactly `n` bytes (bounded).
async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buffer)).await.expect("the broker answers").expect("read");
    buffer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_mqtt_connects_never_completed_are_closed_and_devices_still_connect_and_check_in() {
    let app = spawn_app_with(|s| s.mqtt.handshake_timeout = Duration::from_secs(2)).await;
    let broker = app.mqtt_addr.expect("the embedded broker");
    let (id, token) = provisioned(&app, "02:00:00:18:05:01", "lamp", "esp32").await;
    let mut stalled = Vec::new();
    for n in 0..300 {
        let mut stream = TcpStream::connect(broker).await.unwrap();
        match n % 3 {
            0 => {}
            // Half a CONNECT: its fixed header announces more than is ever sent.
            1 => stream.write_all(&mqtt_connect(&id, &id, &token, 60)[..12]).await.unwrap(),
            _ => stream.write_all(&[0x10]).await.unwrap(),
        }
        stalled.push(stream);
    }
    checkin_answers(&app, &token, "during 300 unfinished MQTT CONNECTs").await;
    // A device connects meanwhile.
    let mut device = TcpStream::connect(broker).await.unwrap();
    device.write_all(&mqtt_connect(&id, &id, &token, 60)).await.unwrap();
    assert_eq!(read_exact(&mut device, 4).await, [0x20, 2, 0, 0], "CONNACK, accepted");
    for (n, stream) in stalled.iter_mut().enumerate() {
        assert!(closed_within(stream, Duration::from_secs(20)).await, "unfinished CONNECT {n} is closed after the handshake timeout");
    }
    drop(device);
    app.stop().await;
}

/// After a good CONNECT with a keep-alive of 6 s, a client that sends nothing more is dropped
/// by the broker after 1.5 times the keep-alive (9 s; rmqtt's rule, for keep-alives under 6 s it
/// is the keep-alive + 3 s), and the server sees the device go offline. One that sends
/// PINGREQ in time is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_session_silent_past_one_and_a_half_keep_alives_is_dropped() {
    let s = crate::mqtt::setup(crate::mqtt::Broker::Embedded).await;
    let (id, token) = s.device("02:00:00:18:06:01", "lamp", "1.0.0").await;
    let (other, other_token) = s.device("02:00:00:18:06:02", "lamp", "1.0.0").await;

    let mut silent = TcpStream::connect(s.broker).await.unwrap();
    silent.write_all(&mqtt_connect(&id, &id, &token, 6)).await.unwrap();
    assert_eq!(read_exact(&mut silent, 4).await, [0x20, 2, 0, 0], "CONNACK, accepted");
    let connected = Instant::now();
    s.wait_for_status(&id, "online").await;

    // Another device pings every 2 s: it stays while the first one is dropped.
    let mut pinging = TcpStream::connect(s.broker).await.unwrap();
    pinging.write_all(&mqtt_connect(&other, &other, &other_token, 6)).await.unwrap();
    assert_eq!(read_exact(&mut pinging, 4).await, [0x20, 2, 0, 0]);
    let pings = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(14) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            pinging.write_all(&[0xC0, 0]).await.expect("the pinging device stays connected");
            assert_eq!(read_exact(&mut pinging, 2).await, [0xD0, 0], "PINGRESP");
        }
        pinging
    });

    let closed = closed_within(&mut silent, Duration::from_secs(30)).await;
    let after = connected.elapsed();
    eprintln!("a session silent after CONNECT (keep-alive 6 s) was dropped after {after:?}");
    assert!(closed, "the silent session is dropped");
    assert!(after >= Duration::from_secs(6), "not before its keep-alive ran out: {after:?}");
    s.wait_for_status(&id, "offline").await;
    let mut pinging = pings.await.unwrap();
    assert!(!closed_within(&mut pinging, Duration::from_millis(100)).await, "the pinging device is still connected");
    assert_eq!(s.device_view(&other).await["status"], "online");
    s.app.stop().await;
}
