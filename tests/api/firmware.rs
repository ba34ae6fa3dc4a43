//! The firmware store: uploads (multipart and raw), automatic versioning from ESP images,
//! idempotency and conflicts, listing, editing, deleting, and every kind of bad input.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn a_multipart_esp_image_upload_fills_missing_metadata_from_the_image() {
    let app = spawn_app().await;
    let image = esp_image("thermostat", "2.4.1", 0x0009);

    let response = app.upload_form(image.clone(), &[("notes", "first build")]).await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["product"], "thermostat");
    assert_eq!(body["version"], "2.4.1");
    assert_eq!(body["hardware"], serde_json::json!(["esp32s3"]));
    assert_eq!(body["channel"], "stable");
    assert_eq!(body["notes"], "first build");
    assert_eq!(body["size"], image.len());
    assert_eq!(body["sha256"], sha256_hex(&image));
    assert_eq!(body["md5"].as_str().unwrap().len(), 32);
    assert_eq!(body["sha1"].as_str().unwrap().len(), 40);
    assert_eq!(body["image"]["chip"], "esp32s3");
    assert_eq!(body["image"]["project_name"], "thermostat");
    assert_eq!(body["image"]["hash_appended"], true);
    assert!(body["image"]["idf_ver"].as_str().unwrap().starts_with('v'));
    assert!(body["id"].as_str().unwrap().len() >= 32);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    app.stop().await;
}

#[tokio::test]
async fn multipart_and_raw_uploads_larger_than_the_json_body_limit_are_accepted() {
    let app = spawn_app().await;
    // Well above the 1 MiB limit of JSON bodies: firmware images are routinely a few MiB.
    let big = random_bytes(3 * 1024 * 1024 + 17, 42);
    let response = app.upload_form(big.clone(), &[("product", "bigfw"), ("version", "1.0.0"), ("hardware", "esp32")]).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(body["size"], big.len());
    assert_eq!(body["sha256"], sha256_hex(&big));

    let raw = random_bytes(3 * 1024 * 1024 + 18, 43);
    let response = app.upload_raw(raw.clone(), "product=bigfw&version=1.0.1&hardware=esp32").await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["size"], raw.len());
    app.stop().await;
}

#[tokio::test]
async fn a_raw_upload_takes_metadata_from_the_query_string() {
    let app = spawn_app().await;
    let bytes = random_bytes(10_000, 1);

    let body = app.create_artifact(bytes.clone(), "product=gateway&version=v1.2&hardware=rpi4,RPi5&channel=beta&notes=hi").await;

    assert_eq!(body["product"], "gateway");
    assert_eq!(body["version"], "v1.2");
    assert_eq!(body["version_canonical"], "1.2.0");
    assert_eq!(body["hardware"], serde_json::json!(["rpi4", "rpi5"]));
    assert_eq!(body["channel"], "beta");
    assert_eq!(body["image"], Value::Null);
    let fetched: Value =
        app.admin(Method::GET, &format!("/api/v1/firmware/{}", body["id"].as_str().unwrap())).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched["sha256"], body["sha256"]);
    app.stop().await;
}

#[tokio::test]
async fn uploading_the_same_bytes_twice_is_idempotent() {
    let app = spawn_app().await;
    let bytes = random_bytes(5000, 2);
    let first = app.create_artifact(bytes.clone(), "product=p&version=1.0.0&hardware=esp32").await;

    let again = app.upload_raw(bytes, "product=p&version=1.0&hardware=esp32").await;

    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.list_artifacts("").await["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn the_same_version_with_different_bytes_is_a_conflict() {
    let app = spawn_app().await;
    app.create_artifact(random_bytes(5000, 3), "product=p&version=1.0.0&hardware=esp32,esp32s3").await;

    let conflict = app.upload_raw(random_bytes(5000, 4), "product=p&version=1.0.0&hardware=esp32s3").await;
    assert_eq!(conflict.status(), 409);
    let body: Value = conflict.json().await.unwrap();
    assert_eq!(body["error"]["code"], "version_exists");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("hardware set (esp32, esp32s3)"), "the hardware ids as an operator wrote them: {message}");

    // Another board's build of the same version does not overlap and is stored.
    app.create_artifact(random_bytes(5000, 5), "product=p&version=1.0.0&hardware=esp32c3").await;
    assert_eq!(app.list_artifacts("").await["total"], 2);
    if uses_local_blobs() {
        assert_eq!(app.blob_files().len(), 2, "the refused upload left a file: {:?}", app.blob_files());
    }
    app.stop().await;
}

#[tokio::test]
async fn an_embedded_version_that_contradicts_the_given_one_is_refused() {
    let app = spawn_app().await;
    let image = esp_image("app", "1.0.0", 0x0000);

    let response = app.upload_raw(image.clone(), "version=1.0.1").await;
    assert_eq!(error_code(response, 422).await, "version_mismatch");

    // The same version written differently agrees.
    let agreed = app.create_artifact(image, "version=v1.0").await;
    assert_eq!(agreed["version_canonical"], "1.0.0");
    assert_eq!(agreed["hardware"], serde_json::json!(["esp32"]));
    app.stop().await;
}

#[tokio::test]
async fn corrupt_esp_images_are_refused_with_the_reason_and_leave_nothing() {
    let app = spawn_app().await;
    let image = esp_image("app", "1.0.0", 0x0005);

    let mut flipped = image.clone();
    flipped[400] ^= 0x55;
    let response = app.upload_raw(flipped, "").await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["code"].as_str().unwrap().starts_with("esp_image_"), "{body}");

    let truncated = image[..image.len() / 2].to_vec();
    let response = app.upload_raw(truncated, "").await;
    assert_eq!(error_code(response, 422).await, "esp_image_truncated");

    assert_eq!(app.list_artifacts("").await["total"], 0);
    assert!(app.blob_files().is_empty(), "left behind: {:?}", app.blob_files());
    app.stop().await;
}

#[tokio::test]
async fn admin_requests_need_the_key_in_either_header() {
    let app = spawn_app().await;
    let missing = app.client.get(app.url("/api/v1/firmware")).send().await.unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_code(missing, 401).await, "unauthenticated");

    let wrong = app.client.get(app.url("/api/v1/firmware")).bearer_auth("not-the-key-at-all").send().await.unwrap();
    assert_eq!(error_code(wrong, 401).await, "unauthenticated");
    let wrong_header = app.client.get(app.url("/api/v1/firmware")).header("x-admin-api-key", "nope").send().await.unwrap();
    assert_eq!(error_code(wrong_header, 401).await, "unauthenticated");

    let by_header = app.client.get(app.url("/api/v1/firmware")).header("X-Admin-API-Key", ADMIN_KEY).send().await.unwrap();
    assert_eq!(by_header.status(), 200);
    let by_bearer = app.client.get(app.url("/api/v1/firmware")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(by_bearer.status(), 200);

    let upload = app.client.post(app.url("/api/v1/firmware?product=p&version=1.0.0&hardware=x")).body(vec![1u8; 10]).send().await.unwrap();
    assert_eq!(upload.status(), 401);
    assert_eq!(app.list_artifacts("").await["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn the_list_is_filtered_sorted_and_paginated() {
    let app = spawn_app().await;
    for (i, (product, version, hardware)) in [
        ("a", "1.0.0", "esp32"),
        ("a", "1.1.0", "esp32"),
        ("a", "1.1.0", "esp32s3"),
        ("b", "0.1.0", "esp32"),
        ("b", "0.2.0-beta.1", "esp32c3"),
    ]
    .iter()
    .enumerate()
    {
        app.create_artifact(random_bytes(100, i as u64 + 10), &format!("product={product}&version={version}&hardware={hardware}")).await;
    }

    assert_eq!(app.list_artifacts("").await["total"], 5);
    assert_eq!(app.list_artifacts("product=a").await["total"], 3);
    assert_eq!(app.list_artifacts("hardware=ESP32").await["total"], 3);
    assert_eq!(app.list_artifacts("product=a&version=1.1").await["total"], 2);
    assert_eq!(app.list_artifacts("product=b&hardware=esp32c3").await["items"][0]["version"], "0.2.0-beta.1");

    let newest = app.list_artifacts("limit=2").await;
    assert_eq!(newest["items"].as_array().unwrap().len(), 2);
    assert_eq!(newest["total"], 5);
    assert_eq!(newest["items"][0]["product"], "b");
    let oldest = app.list_artifacts("sort=created_at&limit=1&offset=1").await;
    assert_eq!(oldest["items"][0]["version"], "1.1.0");
    assert_eq!(oldest["offset"], 1);

    for bad in ["limit=0", "limit=501", "sort=size", "version=x.y", "offset=-1", "unknown=1"] {
        let response = app.admin(Method::GET, &format!("/api/v1/firmware?{bad}")).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn notes_and_channel_can_be_edited() {
    let app = spawn_app().await;
    let artifact = app.create_artifact(random_bytes(100, 20), "product=p&version=1.0.0&hardware=x").await;
    let path = format!("/api/v1/firmware/{}", artifact["id"].as_str().unwrap());

    let response =
        app.admin(Method::PATCH, &path).json(&serde_json::json!({"notes": "fixed wifi", "channel": "Beta"})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let patched: Value = response.json().await.unwrap();
    assert_eq!((patched["notes"].as_str(), patched["channel"].as_str()), (Some("fixed wifi"), Some("beta")));

    let malformed = app.admin(Method::PATCH, &path).header("content-type", "application/json").body("{notes:").send().await.unwrap();
    assert_eq!(error_code(malformed, 400).await, "invalid_json");
    let unknown_field = app.admin(Method::PATCH, &path).json(&serde_json::json!({"size": 1})).send().await.unwrap();
    assert_eq!(error_code(unknown_field, 400).await, "invalid_json");
    let bad_channel = app.admin(Method::PATCH, &path).json(&serde_json::json!({"channel": "no spaces"})).send().await.unwrap();
    assert_eq!(error_code(bad_channel, 400).await, "invalid_channel");
    let not_json = app.admin(Method::PATCH, &path).body("notes=x").send().await.unwrap();
    assert_eq!(error_code(not_json, 415).await, "unsupported_media_type");
    let unknown = app.admin(Method::PATCH, "/api/v1/firmware/nope").json(&serde_json::json!({})).send().await.unwrap();
    assert_eq!(error_code(unknown, 404).await, "not_found");
    app.stop().await;
}

#[tokio::test]
async fn deleting_an_artifact_removes_its_file() {
    let app = spawn_app().await;
    let artifact = app.create_artifact(random_bytes(1000, 30), "product=p&version=1.0.0&hardware=x").await;
    let id = artifact["id"].as_str().unwrap();
    if uses_local_blobs() {
        assert_eq!(app.blob_files().len(), 1);
    }

    let deleted = app.admin(Method::DELETE, &format!("/api/v1/firmware/{id}")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);

    let gone = app.admin(Method::GET, &format!("/api/v1/firmware/{id}/download")).send().await.unwrap();
    assert_eq!(error_code(gone, 404).await, "not_found");
    let again = app.admin(Method::DELETE, &format!("/api/v1/firmware/{id}")).send().await.unwrap();
    assert_eq!(again.status(), 404);
    assert!(app.blob_files().is_empty(), "left behind: {:?}", app.blob_files());
    // The slot is free again: the version can be uploaded with other bytes.
    app.create_artifact(random_bytes(1000, 31), "product=p&version=1.0.0&hardware=x").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_metadata_is_refused_before_anything_is_stored() {
    let app = spawn_app().await;
    let cases = [
        ("version=1.0.0&hardware=x", "missing_product"),
        ("product=p&hardware=x", "missing_version"),
        ("product=p&version=1.0.0", "missing_hardware"),
        ("product=p&version=one&hardware=x", "invalid_version"),
        ("product=bad%20name&version=1.0.0&hardware=x", "invalid_product"),
        ("product=p&version=1.0.0&hardware=a;b", "invalid_hardware"),
        ("product=p&version=1.0.0&hardware=x&channel=a%20b", "invalid_channel"),
        ("product=p&version=1.0.0&hardware=x&colour=red", "invalid_query"),
    ];
    for (query, code) in cases {
        let response = app.upload_raw(random_bytes(100, 40), query).await;
        assert_eq!(error_code(response, 400).await, code, "{query}");
    }
    let empty = app.upload_raw(Vec::new(), "product=p&version=1.0.0&hardware=x").await;
    assert_eq!(error_code(empty, 400).await, "empty_file");
    let wrong_type = app
        .admin(Method::POST, "/api/v1/firmware?product=p&version=1.0.0&hardware=x")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(wrong_type, 415).await, "unsupported_media_type");
    assert_eq!(app.list_artifacts("").await["total"], 0);
    assert!(app.blob_files().is_empty(), "left behind: {:?}", app.blob_files());
    app.stop().await;
}

#[tokio::test]
async fn malformed_multipart_forms_are_refused() {
    let app = spawn_app().await;
    let no_file = reqwest::multipart::Form::new().text("product", "p");
    let response = app.admin(Method::POST, "/api/v1/firmware").multipart(no_file).send().await.unwrap();
    assert_eq!(error_code(response, 400).await, "missing_file");

    let unknown = reqwest::multipart::Form::new().text("colour", "red").part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]));
    let response = app.admin(Method::POST, "/api/v1/firmware").multipart(unknown).send().await.unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_multipart");

    let two_files = reqwest::multipart::Form::new()
        .text("product", "p")
        .text("version", "1.0.0")
        .text("hardware", "x")
        .part("file", reqwest::multipart::Part::bytes(vec![1, 2, 3]))
        .part("file", reqwest::multipart::Part::bytes(vec![4, 5, 6]));
    let response = app.admin(Method::POST, "/api/v1/firmware").multipart(two_files).send().await.unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_multipart");

    let broken = app
        .admin(Method::POST, "/api/v1/firmware")
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);

    // Metadata fields may come after the file.
    let late_fields = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(random_bytes(64, 41)))
        .text("product", "p")
        .text("version", "1.0.0")
        .text("hardware", "x")
        .text("hardware", "y");
    let response = app.admin(Method::POST, "/api/v1/firmware").multipart(late_fields).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["hardware"], serde_json::json!(["x", "y"]));
    assert_eq!(app.list_artifacts("").await["total"], 1);
    app.stop().await;
}

#[tokio::test]
async fn an_oversize_upload_gets_413_and_leaves_nothing() {
    let app = spawn_app_with(|s| s.max_upload_bytes = 10_000).await;

    let declared = app.upload_raw(random_bytes(10_001, 50), "product=p&version=1.0.0&hardware=x").await;
    assert_eq!(error_code(declared, 413).await, "payload_too_large");

    // A streamed body without Content-Length is cut off at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20).map(|i| Ok(random_bytes(1000, 60 + i))).collect();
    let streamed = app
        .admin(Method::POST, "/api/v1/firmware?product=p&version=1.0.0&hardware=x")
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(streamed, 413).await, "payload_too_large");

    let form = reqwest::multipart::Form::new()
        .text("product", "p")
        .text("version", "1.0.0")
        .text("hardware", "x")
        .part("file", reqwest::multipart::Part::bytes(random_bytes(20_000, 51)));
    let multipart = app.admin(Method::POST, "/api/v1/firmware").multipart(form).send().await.unwrap();
    assert_eq!(error_code(multipart, 413).await, "payload_too_large");

    app.create_artifact(random_bytes(10_000, 52), "product=p&version=1.0.0&hardware=x").await;
    assert_eq!(app.list_artifacts("").await["total"], 1);
    if uses_local_blobs() {
        assert_eq!(app.blob_files().len(), 1, "{:?}", app.blob_files());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;

    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/firmware?product=p&version=1.0.0&hardware=x HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n",
        app.addr
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&random_bytes(3_000_000, 70)).await.unwrap();
    socket.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(socket);

    // The server notices and cleans up; poll briefly.
    let mut leftovers = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        leftovers = app.blob_files();
        if leftovers.is_empty() {
            break;
        }
    }
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert_eq!(app.list_artifacts("").await["total"], 0);
    // The server is healthy and the slot is free.
    app.create_artifact(random_bytes(100, 71), "product=p&version=1.0.0&hardware=x").await;
    app.stop().await;
}

#[tokio::test]
async fn a_full_disk_gets_507_and_leaves_nothing() {
    if !uses_local_blobs() {
        return; // S3 has no local disk to fill; the local-folder run covers this.
    }
    // A 2 MiB tmpfs as the blob folder (the test suite runs as root, as CI does).
    let (mut settings, data_dir) = test_settings().await;
    let blob_root = data_dir.path().join("small-disk");
    std::fs::create_dir_all(&blob_root).unwrap();
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(&blob_root).status().expect("run mount");
    assert!(mounted.success(), "mounting a tmpfs failed; this test needs root");
    settings.blob = updraft::config::BlobSettings::Local { root: blob_root.clone() };
    let app = start(settings, data_dir).await;

    let response = app.upload_raw(random_bytes(4 << 20, 80), "product=p&version=1.0.0&hardware=x").await;
    let code = error_code(response, 507).await;
    assert_eq!(code, "insufficient_storage");
    assert!(app.blob_files().is_empty(), "left behind: {:?}", app.blob_files());
    assert_eq!(app.list_artifacts("").await["total"], 0);

    // Space is back for files that fit.
    app.create_artifact(random_bytes(100_000, 81), "product=p&version=1.0.0&hardware=x").await;
    app.stop().await;
    let _ = std::process::Command::new("umount").arg(&blob_root).status();
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = spawn_app().await;
    let missing = app.admin(Method::GET, "/api/v1/nothing-here").send().await.unwrap();
    assert_eq!(error_code(missing, 404).await, "not_found");
    let wrong_method = app.admin(Method::PUT, "/api/v1/firmware").send().await.unwrap();
    assert_eq!(error_code(wrong_method, 405).await, "method_not_allowed");
    app.stop().await;
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
