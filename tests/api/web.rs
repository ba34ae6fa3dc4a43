//! The dashboard's delivery: the SPA and its fallback, cache headers, the page's security
//! headers, the page of a server built without the dashboard, seed 001's documentation paths,
//! and the USB flasher's manifest. (The pages themselves are tested in a real browser:
//! tests/browser.rs.)

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

async fn get_html(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).header("accept", "text/html,application/xhtml+xml").send().await.unwrap()
}

#[tokio::test]
async fn the_dashboard_is_served_at_the_root_and_at_its_own_routes_with_the_api_untouched() {
    let app = spawn_app().await;
    assert!(updraft::http::web::embedded(), "the dashboard is built into the test binary (build.rs with npm)");

    let root = get_html(&app, "/").await;
    assert_eq!(root.status(), 200);
    assert_eq!(root.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(root.headers()["cache-control"], "no-cache");
    let csp = root.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(root.headers()["x-frame-options"], "DENY");
    let html = root.text().await.unwrap();
    assert!(html.contains("<div id=\"app\">"), "{html}");
    // No CDN, no external font: every script and stylesheet comes from this server.
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import"] {
        assert!(!html.contains(external), "{external} in {html}");
    }

    // The app's own routes survive a reload.
    for path in ["/devices", "/devices/0191abcd", "/rollouts/new", "/login?next=%2F"] {
        let response = get_html(&app, path).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.text().await.unwrap(), html, "{path}");
    }
    // API paths, metrics and device clients (no `Accept: text/html`) keep their answers.
    let api = get_html(&app, "/api/v1/no-such-route").await;
    assert_eq!(api.status(), 404);
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let device = app.client.get(app.url("/some/device/path")).send().await.unwrap();
    assert_eq!(device.status(), 404);
    assert!(device.headers()["content-type"].to_str().unwrap().contains("json"));
    let post = app.client.post(app.url("/devices")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(post.status(), 404, "only GET and HEAD get the app");
    assert_eq!(get_html(&app, "/metrics").await.headers()["content-type"].to_str().unwrap().split(';').next(), Some("text/plain"));
    let health: Value = get_html(&app, "/api/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn hashed_assets_are_immutable_and_revalidated_by_etag_and_compressed() {
    let app = spawn_app().await;
    let html = get_html(&app, "/").await.text().await.unwrap();
    let script = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("a script in index.html");
    assert!(script.starts_with("/assets/"), "{script}");

    let response = app.client.get(app.url(script)).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert!(response.headers()["content-type"].to_str().unwrap().contains("javascript"));
    let etag = response.headers()["etag"].clone();
    let again = app.client.get(app.url(script)).header("if-none-match", etag).send().await.unwrap();
    assert_eq!(again.status(), 304);

    // Files copied from npm packages: revalidated, not immutable.
    let vendor = app.client.get(app.url("/vendor/esp-web-tools/install-button.js")).send().await.unwrap();
    assert_eq!(vendor.status(), 200);
    assert_eq!(vendor.headers()["cache-control"], "no-cache");

    for missing in ["/assets/nope.js", "/assets/../index.html", "/vendor/%2e%2e/%2e%2e/Cargo.toml", "/assets/.hidden"] {
        let response = app.client.get(app.url(missing)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{missing}");
    }
}

#[tokio::test]
async fn a_server_without_a_built_dashboard_says_how_to_build_it() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_path_buf();
    let app = spawn_app_with(|s| s.web_dir = Some(dir)).await;
    let root = get_html(&app, "/").await;
    assert_eq!(root.status(), 200);
    let text = root.text().await.unwrap();
    assert!(text.contains("built without its web dashboard") && text.contains("npm"), "{text}");
    // The API works as ever.
    let devices = app.admin(Method::GET, "/api/v1/devices").send().await.unwrap();
    assert_eq!(devices.status(), 200);
}

#[tokio::test]
async fn a_folder_given_in_web_dir_is_served_instead_of_the_built_in_copy_and_nothing_outside_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("assets")).unwrap();
    std::fs::write(dir.path().join("index.html"), "<!doctype html><div id=\"app\">dev copy</div>").unwrap();
    std::fs::write(dir.path().join("assets/app-1234.js"), "console.log(1)").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "not served").unwrap();
    let path = dir.path().join("assets");
    let app = spawn_app_with(|s| s.web_dir = Some(path.parent().unwrap().to_path_buf())).await;
    assert!(get_html(&app, "/").await.text().await.unwrap().contains("dev copy"));
    assert_eq!(app.client.get(app.url("/assets/app-1234.js")).send().await.unwrap().text().await.unwrap(), "console.log(1)");
    for outside in ["/assets/../secret.txt", "/assets/%2e%2e/secret.txt", "/vendor/..%2fsecret.txt"] {
        assert_eq!(app.client.get(app.url(outside)).send().await.unwrap().status(), 404, "{outside}");
    }
}

#[tokio::test]
async fn the_dashboard_can_be_switched_off_while_the_api_documentation_stays() {
    let app = spawn_app_with(|s| s.dashboard_enabled = false).await;
    assert_eq!(get_html(&app, "/").await.status(), 404);
    assert_eq!(get_html(&app, "/devices").await.status(), 404);
    assert_eq!(get_html(&app, "/admin/docs/").await.status(), 200);
}

#[tokio::test]
async fn seed_001_documentation_paths_serve_the_api_documentation_offline() {
    let app = spawn_app().await;
    let swagger = get_html(&app, "/admin/docs/").await;
    assert_eq!(swagger.status(), 200);
    let page = swagger.text().await.unwrap();
    assert!(page.contains("swagger"), "{page}");
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "no CDN: {page}");
    let init = app.client.get(app.url("/admin/docs/swagger-initializer.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("\"url\": \"/api/openapi.json\""), "{init}");

    let redoc = get_html(&app, "/admin/redoc").await;
    assert_eq!(redoc.status(), 200);
    let page = redoc.text().await.unwrap();
    assert!(page.contains("spec-url=\"/api/openapi.json\"") && page.contains("/vendor/redoc/redoc.standalone.js"), "{page}");
    assert!(!page.contains("https://"), "no CDN: {page}");
    let script = app.client.get(app.url("/vendor/redoc/redoc.standalone.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.unwrap().len() > 100_000);
}

#[tokio::test]
async fn the_flash_manifest_names_the_chip_and_offset_and_its_part_is_the_build() {
    let app = spawn_app().await;
    let image = esp_image("lamp", "2.1.0", 0x0009);
    let artifact = app.create_artifact(image.clone(), "product=lamp").await;
    let id = artifact["id"].as_str().unwrap();

    let manifest: Value =
        app.admin(Method::GET, &format!("/api/v1/firmware/{id}/flash-manifest")).send().await.unwrap().json().await.unwrap();
    assert_eq!(manifest["name"], "lamp");
    assert_eq!(manifest["version"], "2.1.0");
    assert_eq!(manifest["new_install_prompt_erase"], true);
    let build = &manifest["builds"][0];
    assert_eq!(build["chipFamily"], "ESP32-S3");
    assert_eq!(build["parts"][0]["offset"], 0x10000);
    let path = build["parts"][0]["path"].as_str().unwrap();
    let bytes = app.admin(Method::GET, path).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), image.as_slice(), "the part is the build's file");

    let merged: Value = app
        .admin(Method::GET, &format!("/api/v1/firmware/{id}/flash-manifest?offset=0x0&chip=esp32c3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(merged["builds"][0]["chipFamily"], "ESP32-C3");
    assert_eq!(merged["builds"][0]["parts"][0]["offset"], 0);

    // A file that is not an app image does not say its chip.
    let raw = app.create_artifact(vec![0x42; 8192], "product=gateway&version=1.0.0&hardware=gw1").await;
    let raw_id = raw["id"].as_str().unwrap();
    let refused = app.admin(Method::GET, &format!("/api/v1/firmware/{raw_id}/flash-manifest")).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_chip");
    let given: Value =
        app.admin(Method::GET, &format!("/api/v1/firmware/{raw_id}/flash-manifest?chip=esp32")).send().await.unwrap().json().await.unwrap();
    assert_eq!(given["builds"][0]["parts"][0]["offset"], 0, "a file that is not an app image is a merged image at 0");

    for (query, code) in [
        ("offset=0x10001", "invalid_offset"),
        ("offset=0x1000000", "invalid_offset"),
        ("offset=ten", "invalid_offset"),
        ("chip=esp33", "unknown_chip"),
    ] {
        let response = app.admin(Method::GET, &format!("/api/v1/firmware/{id}/flash-manifest?{query}")).send().await.unwrap();
        assert_eq!(response.status(), 422, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{query}");
    }
    let unknown = app.admin(Method::GET, &format!("/api/v1/firmware/{id}/flash-manifest?colour=red")).send().await.unwrap();
    assert_eq!(unknown.status(), 400);
    let anonymous = app.client.get(app.url(&format!("/api/v1/firmware/{id}/flash-manifest"))).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
}
