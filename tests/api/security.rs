//! Regression tests of the holes found by testing the server as an attacker would (issue 12):
//! each test failed before its fix.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn device(app: &TestApp, id: &str) -> Value {
    app.admin(Method::GET, &format!("/api/v1/devices/{id}")).send().await.unwrap().json().await.unwrap()
}

async fn put_product(app: &TestApp, name: &str, body: Value) {
    let response = app.admin(Method::PUT, &format!("/api/v1/products/{name}")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn put_config(app: &TestApp, kind: &str, name: &str, content: Value) {
    let response =
        app.admin(Method::PUT, &format!("/api/v1/configs/{kind}/{name}")).json(&json!({"content": content})).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
}

async fn device_config(app: &TestApp, token: &str) -> String {
    app.client.get(app.url("/api/v1/device/config")).bearer_auth(token).send().await.unwrap().text().await.unwrap()
}

// ---- 1. product hopping ----

#[tokio::test]
async fn a_device_cannot_move_itself_into_another_product_by_checking_in() {
    let app = spawn_app().await;
    put_product(
        &app,
        "vault",
        json!({"provisioning": "key", "provision_key": "vault-key-01", "provision_secret": "vault-secret-0123456789"}),
    )
    .await;
    let build = app.create_artifact(random_bytes(8_000, 1), "product=vault&version=2.0.0&hardware=esp32").await;
    put_config(&app, "product", "vault", json!({"wifi": {"$secret": "vault-wifi-password"}})).await;
    let asset = app
        .admin(Method::POST, "/api/v1/assets/vault/logo.bin")
        .header("content-type", "application/octet-stream")
        .body("vault-asset-bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), 201, "{}", asset.text().await.unwrap());

    // A device provisioned in an open product.
    let (id, token) = provisioned(&app, "02:00:00:12:01:01", "lamp", "esp32").await;

    // It names the other product in a check-in: refused, and nothing changes.
    let hop = checkin(&app, &token, json!({"product": "vault", "hardware": "esp32", "version": "1.0.0"})).await;
    assert_eq!(error_code(hop, 409).await, "product_mismatch");
    assert_eq!(device(&app, &id).await["product"], "lamp", "the product stays");
    let answer: Value = checkin(&app, &token, json!({"version": "1.0.0"})).await.json().await.unwrap();
    assert!(answer["update"].is_null(), "nothing of vault's is offered: {answer}");
    let download = app
        .client
        .get(app.url(&format!("/api/v1/device/firmware/{}", build["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(download.status().is_client_error(), "vault's build is not served: {}", download.status());
    assert!(!device_config(&app, &token).await.contains("vault-wifi-password"), "vault's secrets are not served");
    let asset = app.client.get(app.url("/api/v1/assets/vault/logo.bin/latest")).bearer_auth(&token).send().await.unwrap();
    assert!(asset.status().is_client_error(), "vault's assets are not served: {}", asset.status());

    // Repeating its own product is fine.
    assert_eq!(checkin(&app, &token, json!({"product": "lamp"})).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_product_that_restricts_hardware_fixes_each_devices_hardware() {
    let app = spawn_app().await;
    put_product(&app, "lamp", json!({"provisioning": "open", "hardware": ["esp32", "esp32s3"]})).await;
    let view: Value = app.admin(Method::GET, "/api/v1/products/lamp").send().await.unwrap().json().await.unwrap();
    assert_eq!(view["hardware"], json!(["esp32", "esp32s3"]));
    let (id, token) = provisioned(&app, "02:00:00:12:02:01", "lamp", "esp32").await;
    // Another admitted hardware, or one the product does not admit: refused.
    for hardware in ["esp32s3", "esp8266"] {
        let response = checkin(&app, &token, json!({"hardware": hardware})).await;
        assert_eq!(error_code(response, 409).await, "hardware_mismatch", "{hardware}");
    }
    assert_eq!(device(&app, &id).await["hardware"], "esp32");
    // Provisioning refuses hardware the product does not admit.
    let refused = provision(&app, json!({"mac": "02:00:00:12:02:02", "product": "lamp", "hardware": "esp8266"})).await;
    assert_eq!(error_code(refused, 409).await, "hardware_mismatch");
    // A product that admits one hardware gives it to devices that name none.
    put_product(&app, "meter", json!({"provisioning": "open", "hardware": ["esp32c3"]})).await;
    let response = provision(&app, json!({"mac": "02:00:00:12:02:03", "product": "meter"})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(device(&app, body["device_id"].as_str().unwrap()).await["hardware"], "esp32c3");
    // An operator can still change it.
    let patched = app.admin(Method::PATCH, &format!("/api/v1/devices/{id}")).json(&json!({"hardware": "esp32s3"})).send().await.unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(checkin(&app, &token, json!({"hardware": "esp32s3"})).await.status(), 200);
    app.stop().await;
}

// ---- 4. open provisioning and existing identities ----

#[tokio::test]
async fn knowing_a_devices_mac_does_not_give_its_identity_away() {
    let app = spawn_app_with(|s| s.compat.seed004_debug = true).await;
    let mac = "02:00:00:12:04:01";
    let (id, token) = provisioned(&app, mac, "lamp", "esp32").await;
    put_config(&app, "device", &id, json!({"wifi": {"$secret": "device-wifi-password"}})).await;

    // No credential: refused, and the device's own token keeps working.
    let stolen = provision(&app, json!({"mac": mac, "product": "lamp"})).await;
    assert_eq!(error_code(stolen, 409).await, "device_has_token");
    let debug = app.client.get(app.url(&format!("/debug/provisioning?mac-address={mac}"))).send().await.unwrap();
    assert_eq!(error_code(debug, 409).await, "device_has_token", "seed 004's path follows the same rule");
    assert_eq!(checkin(&app, &token, json!({})).await.status(), 200);
    assert!(device_config(&app, &token).await.contains("device-wifi-password"));
    // Another device's token is no proof either.
    let (_, other_token) = provisioned(&app, "02:00:00:12:04:02", "lamp", "esp32").await;
    let wrong =
        app.client.post(app.url("/api/v1/device/provision")).bearer_auth(&other_token).json(&json!({"mac": mac})).send().await.unwrap();
    assert_eq!(error_code(wrong, 401).await, "unauthenticated");

    // Its current token: a new token, the old one revoked.
    let own = app.client.post(app.url("/api/v1/device/provision")).bearer_auth(&token).json(&json!({"mac": mac})).send().await.unwrap();
    assert_eq!(own.status(), 200);
    let token2 = own.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    assert_eq!(checkin(&app, &token, json!({})).await.status(), 401);

    // An operator's window: used once.
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let patched =
        app.admin(Method::PATCH, &format!("/api/v1/devices/{id}")).json(&json!({"reprovision_until": until})).send().await.unwrap();
    assert_eq!(patched.status(), 200);
    assert!(patched.json::<Value>().await.unwrap()["reprovision_until"].is_string());
    let reset = provision(&app, json!({"mac": mac})).await;
    assert_eq!(reset.status(), 200);
    let token3 = reset.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    assert_eq!(checkin(&app, &token2, json!({})).await.status(), 401);
    assert!(device(&app, &id).await["reprovision_until"].is_null(), "the window is used up");
    assert_eq!(error_code(provision(&app, json!({"mac": mac})).await, 409).await, "device_has_token");
    let past = app
        .admin(Method::PATCH, &format!("/api/v1/devices/{id}"))
        .json(&json!({"reprovision_until": "2020-01-01T00:00:00Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(past, 400).await, "invalid_reprovision_until");

    // A pair key: the device is paired with its owner.
    let pairing: Value =
        app.admin(Method::POST, "/api/v1/pairing").json(&json!({"owner": "alice"})).send().await.unwrap().json().await.unwrap();
    let paired = provision(&app, json!({"mac": mac, "pair_key": pairing["pair_key"]})).await;
    assert_eq!(paired.status(), 200);
    assert_eq!(device(&app, &id).await["owner"], "alice");
    assert_eq!(checkin(&app, &token3, json!({})).await.status(), 401);
    let reused = provision(&app, json!({"mac": mac, "pair_key": pairing["pair_key"]})).await;
    assert_eq!(error_code(reused, 409).await, "invalid_pair_key");

    // Unknown devices are still created as seed 004 expects.
    let new = app.client.get(app.url("/debug/provisioning?mac-address=02:00:00:12:04:09&product=lamp")).send().await.unwrap();
    assert_eq!(new.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn seed_004s_debug_path_is_off_unless_asked_for() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/debug/provisioning?mac-address=02:00:00:12:04:10")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_stops_working_at_once() {
    let app = spawn_app().await;
    let (id, token) = provisioned(&app, "02:00:00:12:09:01", "lamp", "esp32").await;
    let revoked = app.admin(Method::DELETE, &format!("/api/v1/devices/{id}/token")).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    assert_eq!(checkin(&app, &token, json!({})).await.status(), 401);
    assert_eq!(device(&app, &id).await["has_token"], false);
    let unknown = app.admin(Method::DELETE, "/api/v1/devices/02:00:00:12:09:99/token").send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    app.stop().await;
}

// ---- 5. secrets in public configuration files ----

#[tokio::test]
async fn anonymous_readers_of_configuration_files_do_not_get_secrets() {
    let app = spawn_app().await;
    let (_, token) = provisioned(&app, "02:00:00:12:05:01", "lamp", "esp32").await;
    put_config(&app, "product", "lamp", json!({"wifi": {"ssid": "plant-floor", "password": {"$secret": "product-wifi-secret"}}})).await;
    let put = app
        .admin(Method::PUT, "/api/configs/02-00-00-12-05-01")
        .json(&json!({"content": {"deviceName": "lamp-1", "mqtt_password": {"$secret": "device-mqtt-secret"}}}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.text().await.unwrap());
    let url = app.url("/api/configs/02-00-00-12-05-01.json");

    let anonymous = app.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 200);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body, json!({"deviceName": "lamp-1", "wifi": {"ssid": "plant-floor"}}), "secrets are left out");
    // The device, with its token, gets the whole document.
    let whole: Value = app.client.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(whole["wifi"]["password"], "product-wifi-secret");
    assert_eq!(whole["mqtt_password"], "device-mqtt-secret");
    // A wrong credential is refused, not served the public view.
    let wrong = app.client.get(&url).bearer_auth("upd_dev_not-a-token").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    // Another device's token does not read this one's.
    let (_, other) = provisioned(&app, "02:00:00:12:05:02", "lamp", "esp32").await;
    assert_eq!(app.client.get(&url).bearer_auth(&other).send().await.unwrap().status(), 403);

    // A product that still has seed-003 devices needing Wi-Fi credentials without a token opts in.
    put_product(&app, "lamp", json!({"provisioning": "open", "public_secrets": true})).await;
    let opted_in: Value = app.client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(opted_in["wifi"]["password"], "product-wifi-secret");
    app.stop().await;
}

// ---- 7. X-Forwarded-For spoofing ----

/// A child process killed when dropped (also when a test panics).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real nginx in front of `app` with the forwarding headers of the shipped
/// deployment/nginx.conf (its `proxy_set_header` lines, copied at run time). Returns its
/// address and the process.
fn nginx_in_front_of(app: &TestApp, dir: &std::path::Path) -> (String, KillOnDrop) {
    let shipped = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deployment/nginx.conf")).unwrap();
    let headers: String = shipped
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("proxy_set_header") || l.starts_with("proxy_http_version"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(headers.contains("X-Forwarded-For $proxy_add_x_forwarded_for"), "the shipped config forwards the client: {headers}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; user root; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{}}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; \
         uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         upstream updraft_http {{ server {}; }}\n\
         server {{ listen 127.0.0.1:{port}; {headers}\n location / {{ proxy_pass http://updraft_http; }} }} }}\n",
        app.addr
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is installed (scripts/test.sh installs it)");
    let child = KillOnDrop(
        std::process::Command::new(nginx).arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(dir).spawn().expect("nginx starts"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (format!("http://127.0.0.1:{port}"), child)
}

#[tokio::test]
async fn behind_the_shipped_nginx_a_forged_x_forwarded_for_changes_nothing() {
    let app = spawn_app_with(|s| s.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, nginx) = nginx_in_front_of(&app, dir.path());
    let (id, token) = provisioned(&app, "02:00:00:12:07:01", "lamp", "esp32").await;
    // The device connects from 127.0.0.2, an address that is not a trusted proxy.
    let device_client = reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();

    // The device checks in through nginx with a forged header: nginx appends the real
    // client (127.0.0.2, as nginx sees it), and that is what is recorded.
    let response = device_client
        .post(format!("{proxy}/api/v1/device/checkin"))
        .bearer_auth(&token)
        .header("X-Forwarded-For", "198.51.100.66")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(device(&app, &id).await["ip"], "127.0.0.2", "the forged address is not recorded");

    // Failed authentications with a new forged address each time are still one client.
    let mut last = 0;
    for n in 0..12 {
        let response = device_client
            .post(format!("{proxy}/api/v1/device/checkin"))
            .bearer_auth("upd_dev_wrong")
            .header("X-Forwarded-For", format!("198.51.100.{n}"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        last = response.status().as_u16();
    }
    assert_eq!(last, 429, "the limiter trips whatever address the client claims");
    drop(nginx);
    app.stop().await;
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = spawn_app().await;
    let (id, token) = provisioned(&app, "02:00:00:12:07:02", "lamp", "esp32").await;
    let build = app.create_artifact(random_bytes(4_000, 2), "product=lamp&version=1.1.0&hardware=esp32").await;
    let answer: Value = app
        .client
        .post(app.url("/api/v1/device/checkin"))
        .bearer_auth(&token)
        .header("X-Forwarded-For", "198.51.100.7")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Forwarded-Proto", "https")
        .json(&json!({"version": "1.0.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(device(&app, &id).await["ip"], "127.0.0.1");
    let url = answer["update"]["url"].as_str().unwrap_or_else(|| panic!("an offer of {}: {answer}", build["id"]));
    assert!(url.starts_with(&format!("http://{}/", app.addr)), "links are not built from forged headers: {url}");
    app.stop().await;
}

// ---- 3. slow bodies and one client holding every connection ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_slow_body_and_slow_connect_flood_a_check_in_still_answers_at_once() {
    let app = spawn_app_with(|s| {
        s.max_connections = 200;
        s.max_connections_per_ip = 100;
        s.body_read_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let (_, token) = provisioned(&app, "02:00:00:12:03:01", "lamp", "esp32").await;

    // Two clients fill 190 of the 200 HTTP slots with bodies that never come.
    let mut flood = Vec::new();
    for _ in 0..100 {
        flood.push(slow_body(&app, [127, 0, 0, 2]).await);
    }
    for _ in 0..90 {
        flood.push(slow_body(&app, [127, 0, 0, 3]).await);
    }
    // And 200 MQTT connections that never send CONNECT.
    let mqtt = app.mqtt_addr.expect("the embedded broker");
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(mqtt).await.unwrap());
    }
    // The first client's next connection is closed at once: it holds its share.
    let mut refused = slow_body(&app, [127, 0, 0, 2]).await;
    let answer = read_until_closed(&mut refused, std::time::Duration::from_secs(5)).await;
    assert_eq!(answer.as_deref(), Some(""), "closed without an answer");

    // A normal check-in still answers, and quickly.
    let started = std::time::Instant::now();
    let checkin = tokio::time::timeout(std::time::Duration::from_secs(1), checkin(&app, &token, json!({"version": "1.0.0"}))).await;
    assert!(checkin.is_ok_and(|r| r.status() == 200), "a check-in during the flood answered in {:?}", started.elapsed());

    // The slow bodies end with 408 once they have been silent for the body read timeout.
    let mut timed_out = 0;
    for stream in flood.iter_mut().take(20) {
        if let Some(text) = read_until_closed(stream, std::time::Duration::from_secs(10)).await
            && text.starts_with("HTTP/1.1 408")
        {
            timed_out += 1;
        }
    }
    assert_eq!(timed_out, 20, "every slow body is answered 408 and closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_a_byte_at_a_time_is_cut_off_after_the_grace_period() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|s| s.body_read_timeout = std::time::Duration::from_secs(2)).await;
    let mut stream = slow_body(&app, [127, 0, 0, 1]).await;
    // One byte every 500 ms never trips the read timeout; the average rate does.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if stream.write_all(b" ").await.is_err() {
                break;
            }
        }
        read_until_closed(&mut stream, std::time::Duration::from_secs(5)).await
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(15), trickle).await.expect("the server ends it").unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout") && answer.contains("too slowly"), "{answer}");
    app.stop().await;
}

// ---- 10. failed admin keys ----

fn client_from(last_octet: u8) -> reqwest::Client {
    reqwest::Client::builder().no_proxy().local_address(std::net::IpAddr::from([127, 0, 0, last_octet])).build().unwrap()
}

#[tokio::test]
async fn repeated_wrong_admin_keys_are_throttled_per_address_on_every_admin_surface() {
    let app = spawn_app().await;
    let surfaces: [(u8, &str, &str); 3] =
        [(4, "/api/v1/devices", "authorization"), (5, "/api/v1/firmware", "x-admin-api-key"), (6, "/admin/api/devices", "x-admin-api-key")];
    for (octet, path, header) in surfaces {
        let client = client_from(octet);
        let send = |key: &str| {
            let value = if header == "authorization" { format!("Bearer {key}") } else { key.to_string() };
            client.get(app.url(path)).header(header, value).send()
        };
        let mut statuses = Vec::new();
        for n in 0..12 {
            statuses.push(send(&format!("wrong-admin-key-{n:04}")).await.unwrap().status().as_u16());
        }
        assert!(statuses[..10].iter().all(|s| *s == 401 || *s == 403), "{path}: {statuses:?}");
        assert_eq!(statuses[10..], [429, 429], "{path}: {statuses:?}");
        // Even the right key waits now, from this address.
        let right = send(ADMIN_KEY).await.unwrap();
        assert_eq!(right.status(), 429, "{path}");
        let retry_after: u64 = right.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry_after));
    }
    // Other addresses are unaffected.
    assert_eq!(client_from(7).get(app.url("/api/v1/devices")).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 200);
    app.stop().await;
}

// ---- 11. page parameters ----

#[tokio::test]
async fn page_parameters_out_of_range_answer_400_on_every_list() {
    let app = spawn_app().await;
    let (id, _) = provisioned(&app, "02:00:00:12:11:01", "lamp", "esp32").await;
    put_config(&app, "device", &id, json!({"a": 1})).await;
    let lists = [
        "/api/v1/devices".to_string(),
        "/api/v1/firmware".to_string(),
        format!("/api/v1/configs/device/{id}/history"),
        format!("/api/v1/devices/{id}/commands"),
    ];
    for list in &lists {
        for query in ["offset=9223372036854775808", "offset=18446744073709551616", "offset=-1", "limit=0", "limit=100000", "limit=abc"] {
            let response = app.admin(Method::GET, &format!("{list}?{query}")).send().await.unwrap();
            assert_eq!(error_code(response, 400).await, "invalid_query", "{list}?{query}");
        }
        let last = app.admin(Method::GET, &format!("{list}?offset=1099511627776")).send().await.unwrap();
        assert_eq!(last.status(), 200, "{list}: the largest offset is an empty page");
    }
    app.stop().await;
}

// ---- 14. smaller input checks ----

#[tokio::test]
async fn reserved_product_names_repeated_fields_and_seed_001_upload_fields_are_refused() {
    let app = spawn_app().await;
    for name in ["..", ".staging", ".x"] {
        let response =
            app.admin(Method::PUT, &format!("/api/v1/products/{name}")).json(&json!({"provisioning": "open"})).send().await.unwrap();
        assert!(response.status() == 400 || response.status() == 404, "{name}: {}", response.status());
        let upload = app.upload_raw(random_bytes(100, 3), &format!("product={name}&version=1.0.0")).await;
        assert_eq!(error_code(upload, 400).await, "invalid_product", "{name}");
    }
    // A repeated single-valued form field is refused, not silently the last one.
    let mut form = reqwest::multipart::Form::new().text("product", "lamp").text("product", "other").text("version", "1.0.0");
    form = form.part("file", reqwest::multipart::Part::bytes(random_bytes(100, 4)).file_name("a.bin"));
    let response = app.admin(Method::POST, "/api/v1/firmware").multipart(form).send().await.unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_multipart");
    assert_eq!(app.list_artifacts("").await["total"], 0, "nothing stored");

    // Seed 001's upload: a bad version, an unknown field, an oversized note, a field after the file.
    let app = spawn_app_with(|s| s.compat.default_product = Some("lamp".into())).await;
    let seed001 = |fields: Vec<(&'static str, String)>| {
        let mut form = reqwest::multipart::Form::new();
        let mut file_added = false;
        for (name, value) in fields {
            if name == "file" {
                form = form.part("file", reqwest::multipart::Part::bytes(random_bytes(1000, 5)).file_name("lamp-1.2.0.bin"));
                file_added = true;
            } else {
                form = form.text(name, value);
            }
        }
        assert!(file_added);
        app.client.post(app.url("/admin/api/firmware")).header("X-Admin-API-Key", ADMIN_KEY).multipart(form).send()
    };
    let bad_version = seed001(vec![("version", "not a version".into()), ("file", String::new())]).await.unwrap();
    assert!(bad_version.status().is_client_error(), "{}", bad_version.status());
    let version_after_file = seed001(vec![("file", String::new()), ("version", "also not a version".into())]).await.unwrap();
    assert!(version_after_file.status().is_client_error(), "a field after the file counts too: {}", version_after_file.status());
    let unknown = seed001(vec![("file", String::new()), ("colour", "blue".into())]).await.unwrap();
    assert_eq!(unknown.status(), 422);
    let long_notes = seed001(vec![("notes", "n".repeat(2 << 20)), ("file", String::new())]).await.unwrap();
    assert_eq!(long_notes.status(), 422);
    assert_eq!(app.list_artifacts("").await["total"], 0, "nothing stored");
    let good = seed001(vec![("file", String::new()), ("version", "1.2.0".into()), ("hardware", "esp32".into()), ("notes", "fixes".into())])
        .await
        .unwrap();
    assert_eq!(good.status(), 200, "{}", good.text().await.unwrap());
    let stored = app.list_artifacts("").await;
    assert_eq!(stored["items"][0]["version"], "1.2.0");
    assert_eq!(stored["items"][0]["notes"], "fixes");
    app.stop().await;
}

// ---- 15. /metrics ----

#[tokio::test]
async fn with_a_metrics_token_scrapes_need_it() {
    let app = spawn_app_with(|s| s.metrics_token = Some("metrics-token-0123456789".into())).await;
    let anonymous = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(error_code(anonymous, 401).await, "unauthenticated");
    let wrong = app.client.get(app.url("/metrics")).bearer_auth("metrics-token-wrong-0000").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let admin = app.client.get(app.url("/metrics")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(admin.status(), 401, "only the metrics token: least privilege both ways");
    let scrape = app.client.get(app.url("/metrics")).bearer_auth("metrics-token-0123456789").send().await.unwrap();
    assert_eq!(scrape.status(), 200);
    assert!(scrape.text().await.unwrap().contains("updraft_uptime_seconds"));
    app.stop().await;
    // Without the setting, /metrics stays public (the documented default).
    let app = spawn_app().await;
    assert_eq!(app.client.get(app.url("/metrics")).send().await.unwrap().status(), 200);
    app.stop().await;
}
