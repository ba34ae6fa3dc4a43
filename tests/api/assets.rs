//! Assets: seed 003's signed uploads (RSA PKCS#1 v1.5 SHA-256 over the timestamp) and
//! downloads, and native versioned assets signed with the server's Ed25519 key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{Duration, SecondsFormat, Utc};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::config_seed003::seed_error;
use crate::helpers::*;

const PRIVATE_KEY: &str = include_str!("../fixtures/seed003_signing_key.pem");

fn key_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// What a seed-003 client sends: base64 RSA PKCS#1 v1.5 SHA-256 of the timestamp string.
fn sign(timestamp: &str) -> String {
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(PRIVATE_KEY).unwrap();
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    STANDARD.encode(signer.sign(timestamp.as_bytes()).to_bytes())
}

fn form(file: Option<(&str, Vec<u8>)>, timestamp: Option<&str>, signature: Option<&str>) -> Form {
    let mut form = Form::new();
    if let Some(ts) = timestamp {
        form = form.text("timestamp", ts.to_string());
    }
    if let Some(sig) = signature {
        form = form.text("signature", sig.to_string());
    }
    if let Some((name, bytes)) = file {
        form = form.part("file", Part::bytes(bytes).file_name(name.to_string()));
    }
    form
}

async fn upload(app: &TestApp, form: Form) -> reqwest::Response {
    app.client.post(app.url("/api/assets")).multipart(form).send().await.unwrap()
}

async fn seed_app(key: &str) -> TestApp {
    let path = key_path(key);
    spawn_app_with(move |s| s.content.signing_key_path = Some(path)).await
}

#[tokio::test]
async fn a_signed_upload_is_stored_served_and_replaced_by_the_next() {
    let app = seed_app("seed003_signing_key.pem").await;
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let bytes = random_bytes(1_500_000, 1);
    let response = upload(&app, form(Some(("logo.bin", bytes.clone())), Some(&now), Some(&sign(&now)))).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["filename"].as_str(), body["size"].as_u64()), (Some("logo.bin"), Some(1_500_000)));
    assert!(body["uploaded_at"].as_str().unwrap().ends_with("+00:00"), "{body}");

    let download = app.client.get(app.url("/api/assets/logo.bin")).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["cache-control"], "no-cache");
    assert_eq!(download.headers()["content-type"], "application/octet-stream");
    let etag = download.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(download.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let unchanged = app.client.get(app.url("/api/assets/logo.bin")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(unchanged.status(), 304);

    // The same name again replaces the file; the old blob goes.
    let replacement = random_bytes(1000, 2);
    let response = upload(&app, form(Some(("logo.bin", replacement.clone())), Some(&now), Some(&sign(&now)))).await;
    assert_eq!(response.status(), 200);
    let download = app.client.get(app.url("/api/assets/logo.bin")).send().await.unwrap();
    assert_eq!(download.bytes().await.unwrap().as_ref(), replacement.as_slice());
    if uses_local_blobs() {
        assert_eq!(app.blob_files().len(), 1, "{:?}", app.blob_files());
    }
    assert_eq!(seed_error(app.client.get(app.url("/api/assets/other.bin")).send().await.unwrap(), 404).await, "RECORD_NOT_FOUND");
    app.stop().await;
}

#[tokio::test]
async fn timestamps_without_a_zone_are_utc_and_must_be_within_300_seconds() {
    // A public key works as well as seed 003's private one.
    let app = seed_app("seed003_signing_key.pub.pem").await;
    let file = || Some(("a.txt", b"hello".to_vec()));
    let zoneless = Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    assert_eq!(upload(&app, form(file(), Some(&zoneless), Some(&sign(&zoneless)))).await.status(), 200);
    let offset = (Utc::now() + Duration::hours(2)).naive_utc().format("%Y-%m-%dT%H:%M:%S+02:00").to_string();
    assert_eq!(upload(&app, form(file(), Some(&offset), Some(&sign(&offset)))).await.status(), 200);
    let nearly_stale = (Utc::now() - Duration::seconds(280)).to_rfc3339();
    assert_eq!(upload(&app, form(file(), Some(&nearly_stale), Some(&sign(&nearly_stale)))).await.status(), 200);

    for timestamp in [(Utc::now() - Duration::seconds(400)).to_rfc3339(), (Utc::now() + Duration::seconds(400)).to_rfc3339()] {
        let response = upload(&app, form(file(), Some(&timestamp), Some(&sign(&timestamp)))).await;
        assert_eq!(seed_error(response, 400).await, "VALIDATION_FAILED", "{timestamp}");
    }
    let response = upload(&app, form(file(), Some("not a time"), Some(&sign("not a time")))).await;
    assert_eq!(seed_error(response, 400).await, "VALIDATION_FAILED");
    app.stop().await;
}

#[tokio::test]
async fn a_bad_signature_filename_or_missing_field_is_refused_and_nothing_is_stored() {
    let app = seed_app("seed003_signing_key.pem").await;
    let now = Utc::now().to_rfc3339();
    let file = |name: &str| Some((name.to_string(), b"data".to_vec()));
    let other = (Utc::now() - Duration::seconds(1)).to_rfc3339();
    let cases: Vec<(Form, &str)> = vec![
        (form(file("a.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), Some(&now), Some(&sign(&other))), "signature"),
        (form(file("a.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), Some(&now), Some("bm90IGEgc2lnbmF0dXJl")), "signature"),
        (form(file("a.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), Some(&now), Some("%%%")), "signature"),
        (form(file("../a.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), Some(&now), Some(&sign(&now))), "filename"),
        (form(file("a\\b.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), Some(&now), Some(&sign(&now))), "filename"),
        (form(None, Some(&now), Some(&sign(&now))), "'file'"),
        (form(file("a.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), None, Some(&sign(&now))), "'timestamp'"),
        (form(file("a.bin").as_ref().map(|(n, b)| (n.as_str(), b.clone())), Some(&now), None), "'signature'"),
    ];
    for (form, what) in cases {
        let response = upload(&app, form).await;
        assert_eq!(response.status(), 400, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "VALIDATION_FAILED", "{what}: {body}");
        assert!(body["error"].as_str().unwrap().to_lowercase().contains(&what.to_lowercase()), "{what}: {body}");
    }
    // A signature made in time but for a file posted first is checked after the bytes, and the bytes are dropped.
    let mut late = Form::new().part("file", Part::bytes(random_bytes(50_000, 3)).file_name("late.bin"));
    late = late.text("timestamp", now.clone()).text("signature", sign(&other));
    assert_eq!(upload(&app, late).await.status(), 400);
    if uses_local_blobs() {
        assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    }
    let not_multipart = app.client.post(app.url("/api/assets")).json(&json!({"file": "x"})).send().await.unwrap();
    assert_eq!(seed_error(not_multipart, 400).await, "VALIDATION_FAILED");
    app.stop().await;
}

#[tokio::test]
async fn without_a_signing_key_uploads_are_refused() {
    let app = spawn_app().await;
    let now = Utc::now().to_rfc3339();
    let response = upload(&app, form(Some(("a.bin", b"x".to_vec())), Some(&now), Some(&sign(&now)))).await;
    assert_eq!(seed_error(response, 403).await, "FORBIDDEN");
    app.stop().await;
}

#[tokio::test]
async fn native_assets_are_versioned_content_addressed_and_signed_with_the_published_key() {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let app = spawn_app().await;
    let bytes = random_bytes(70_000, 4);
    let post = |body: Vec<u8>, comment: &str| {
        app.admin(Method::POST, &format!("/api/v1/assets/lamp/font.bin?comment={comment}"))
            .header("content-type", "font/ttf")
            .body(body)
            .send()
    };
    let first = post(bytes.clone(), "first").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        (first["version"].as_i64(), first["size"].as_u64(), first["content_type"].as_str()),
        (Some(1), Some(70_000), Some("font/ttf"))
    );
    let second: Value = post(bytes.clone(), "same bytes").await.unwrap().json().await.unwrap();
    assert_eq!(second["version"], 2);
    assert_eq!(second["sha256"], first["sha256"]);
    if uses_local_blobs() {
        assert_eq!(app.blob_files().len(), 1, "identical bytes are stored once");
    }
    let third: Value = post(random_bytes(10, 5), "new").await.unwrap().json().await.unwrap();
    assert_eq!(third["version"], 3);

    // The signature verifies with the public key of /api/v1/keys over the signed statement.
    let keys: Value = app.client.get(app.url("/api/v1/keys")).send().await.unwrap().json().await.unwrap();
    let public: [u8; 32] = STANDARD.decode(keys["keys"][0]["public_key"].as_str().unwrap()).unwrap().try_into().unwrap();
    let verifying = VerifyingKey::from_bytes(&public).unwrap();
    let sha256 = first["sha256"].as_str().unwrap();
    assert_eq!(first["signed"], format!("updraft-asset-v1\nlamp\nfont.bin\n1\n70000\n{sha256}\n"));
    let signature: [u8; 64] = STANDARD.decode(first["signature"].as_str().unwrap()).unwrap().try_into().unwrap();
    verifying.verify(first["signed"].as_str().unwrap().as_bytes(), &Signature::from_bytes(&signature)).expect("the signature verifies");
    let served: Value = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin/1/signature").send().await.unwrap().json().await.unwrap();
    assert_eq!((served["signature"].clone(), served["key_id"].clone()), (first["signature"].clone(), keys["keys"][0]["key_id"].clone()));

    // Downloads: the admin, or a device of the product; the bytes hash to the signed digest.
    let latest = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin/latest").send().await.unwrap();
    assert_eq!(latest.headers()["x-updraft-asset-version"], "3");
    let device: Value = app
        .client
        .post(app.url("/api/v1/device/provision"))
        .json(&json!({"mac": "02:00:00:20:00:01", "product": "lamp"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = device["token"].as_str().unwrap();
    let download = app.client.get(app.url("/api/v1/assets/lamp/font.bin/1")).bearer_auth(token).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["x-updraft-signature"].to_str().unwrap(), first["signature"].as_str().unwrap());
    let etag = download.headers()["etag"].to_str().unwrap().to_string();
    let body = download.bytes().await.unwrap();
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&body)), sha256);
    let cached =
        app.client.get(app.url("/api/v1/assets/lamp/font.bin/1")).bearer_auth(token).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    let stranger: Value = app
        .client
        .post(app.url("/api/v1/device/provision"))
        .json(&json!({"mac": "02:00:00:20:00:02", "product": "meter"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refused =
        app.client.get(app.url("/api/v1/assets/lamp/font.bin/1")).bearer_auth(stranger["token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(error_code(refused, 404).await, "not_found");

    let versions: Value = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin").send().await.unwrap().json().await.unwrap();
    assert_eq!(versions["items"].as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect::<Vec<_>>(), [3, 2, 1]);
    assert_eq!(versions["items"][1]["comment"], "same bytes");
    assert_eq!((versions["total"].as_u64(), versions["limit"].as_u64(), versions["offset"].as_u64()), (Some(3), Some(1000), Some(0)));
    // A page at a time: `total` tells a client that more versions exist than it was given.
    let page: Value = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin?limit=2&offset=1").send().await.unwrap().json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().iter().map(|v| v["version"].as_i64().unwrap()).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(page["total"], 3);
    let beyond: Value = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin?offset=3").send().await.unwrap().json().await.unwrap();
    assert_eq!((beyond["items"].as_array().map(Vec::len), beyond["total"].as_u64()), (Some(0), Some(3)));
    for bad in ["limit=0", "limit=1001", "offset=-1", "offset=1099511627777", "colour=red"] {
        let response = app.admin(Method::GET, &format!("/api/v1/assets/lamp/font.bin?{bad}")).send().await.unwrap();
        assert_eq!(error_code(response, 400).await, "invalid_query", "{bad}");
    }
    let all: Value = app.admin(Method::GET, "/api/v1/assets?product=lamp").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert_eq!(all["items"][0]["version"], 3);

    // Bad input.
    assert_eq!(
        error_code(app.admin(Method::POST, "/api/v1/assets/lamp/.hidden").body("x").send().await.unwrap(), 400).await,
        "invalid_asset_name"
    );
    assert_eq!(error_code(app.admin(Method::GET, "/api/v1/assets/lamp/font.bin/0").send().await.unwrap(), 400).await, "invalid_version");
    assert_eq!(error_code(app.admin(Method::GET, "/api/v1/assets/lamp/font.bin/9").send().await.unwrap(), 404).await, "not_found");
    assert_eq!(error_code(app.client.post(app.url("/api/v1/assets/lamp/x")).body("x").send().await.unwrap(), 401).await, "unauthenticated");
    app.stop().await;
}

#[tokio::test]
async fn an_asset_upload_over_the_limit_is_refused_and_leaves_nothing() {
    let app = spawn_app_with(|s| s.max_upload_bytes = 1000).await;
    let response = app.admin(Method::POST, "/api/v1/assets/lamp/big.bin").body(random_bytes(5000, 6)).send().await.unwrap();
    assert_eq!(error_code(response, 413).await, "payload_too_large");
    if uses_local_blobs() {
        assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    }
    app.stop().await;
}

#[tokio::test]
async fn empty_asset_uploads_are_refused_on_both_routes_and_leave_nothing() {
    let app = seed_app("seed003_signing_key.pem").await;
    let native = app.admin(Method::POST, "/api/v1/assets/lamp/empty.bin").body(Vec::<u8>::new()).send().await.unwrap();
    assert_eq!(error_code(native, 400).await, "empty_file");
    let versions = app.admin(Method::GET, "/api/v1/assets/lamp/empty.bin").send().await.unwrap();
    assert_eq!(versions.status(), 404);

    let now = Utc::now().to_rfc3339();
    let seed = upload(&app, form(Some(("empty.bin", Vec::new())), Some(&now), Some(&sign(&now)))).await;
    assert_eq!(seed.status(), 400);
    let body: Value = seed.json().await.unwrap();
    assert_eq!(body["code"], "VALIDATION_FAILED");
    assert!(body["error"].as_str().unwrap().contains("empty"), "{body}");
    assert_eq!(app.client.get(app.url("/api/assets/empty.bin")).send().await.unwrap().status(), 404);
    if uses_local_blobs() {
        assert!(app.blob_files().is_empty(), "{:?}", app.blob_files());
    }
    app.stop().await;
}

#[tokio::test]
async fn seed_003_asset_names_with_dot_dot_or_backslashes_are_a_400_and_blank_names_are_refused() {
    let app = seed_app("seed003_signing_key.pem").await;
    let now = Utc::now().to_rfc3339();
    assert_eq!(upload(&app, form(Some(("a.bin", b"x".to_vec())), Some(&now), Some(&sign(&now)))).await.status(), 200);
    for path in ["/api/assets/file..name.bin", "/api/assets/a%5Cb.bin", "/api/assets/%2E%2E%5Ca.bin", "/api/assets/x%2F..%2Fa.bin"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(seed_error(response, 400).await, "VALIDATION_FAILED", "{path}");
    }
    // A raw backslash, as curl sends it, and a bare `..` (reqwest would rewrite both).
    for path in ["/api/assets/subdir\\a.bin", "/api/assets/.."] {
        let raw = crate::raw::exchange(&app, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).await;
        assert_eq!(raw.status, 400, "{path}: {}", raw.head);
        let body: Value = serde_json::from_slice(&raw.body).unwrap();
        assert_eq!(body["code"], "VALIDATION_FAILED", "{path}");
    }

    // An upload whose filename is only spaces.
    let blank = upload(&app, form(Some(("   ", b"x".to_vec())), Some(&now), Some(&sign(&now)))).await;
    assert_eq!(seed_error(blank, 400).await, "VALIDATION_FAILED");
    app.stop().await;
}

#[tokio::test]
async fn uploaded_at_is_the_signed_timestamp_and_downloads_carry_content_disposition() {
    let app = seed_app("seed003_signing_key.pem").await;
    // With an offset, and without a zone (UTC), as Python's isoformat() writes them back.
    let local = (Utc::now() + Duration::hours(2)).naive_utc().format("%Y-%m-%dT%H:%M:%S+02:00").to_string();
    let zoneless = Utc::now().naive_utc().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    for (timestamp, name) in [(local.clone(), "logo v2.png"), (zoneless.clone(), "fonts.bin")] {
        let response = upload(&app, form(Some((name, b"bytes".to_vec())), Some(&timestamp), Some(&sign(&timestamp)))).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let expected = if timestamp.ends_with("+02:00") {
            timestamp.clone()
        } else {
            format!("{}+00:00", timestamp.trim_end_matches("000000").trim_end_matches('.'))
        };
        assert_eq!(body["uploaded_at"].as_str().unwrap().trim_end_matches("+00:00"), expected.trim_end_matches("+00:00"), "{body}");
        assert!(body["uploaded_at"].as_str().unwrap().ends_with(if timestamp.ends_with("+02:00") { "+02:00" } else { "+00:00" }));
    }
    let spaced = app.client.get(app.url("/api/assets/logo%20v2.png")).send().await.unwrap();
    assert_eq!(spaced.headers()["content-disposition"], "inline; filename=\"logo v2.png\"");
    let plain = app.client.get(app.url("/api/assets/fonts.bin")).send().await.unwrap();
    assert_eq!(plain.headers()["content-disposition"], "inline; filename=fonts.bin");

    // Native downloads name their asset too.
    app.admin(Method::POST, "/api/v1/assets/lamp/font.bin").body("x").send().await.unwrap();
    let native = app.admin(Method::GET, "/api/v1/assets/lamp/font.bin/latest").send().await.unwrap();
    assert_eq!(native.headers()["content-disposition"], "inline; filename=font.bin");
    app.stop().await;
}
