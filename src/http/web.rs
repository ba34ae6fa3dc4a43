//! The web dashboard: the `web/` single-page app, built by `build.rs` and embedded into the
//! binary (or read from `UPDRAFT_WEB_DIR`), served at `/`; and seed 001's offline API
//! documentation paths, `/admin/docs` (Swagger UI) and `/admin/redoc` (ReDoc).
//!
//! - `/` and every GET for an unknown path outside `/api/` and `/metrics` from a browser
//!   (`Accept: text/html`) get `index.html` (`Cache-Control: no-cache`), so the app's own
//!   routes (`/devices/…`) survive a reload. Devices and scripts keep their JSON 404.
//! - `/assets/*` are Vite's content-hashed files: `Cache-Control: immutable`.
//! - `/vendor/*` are files copied as they are from npm packages (esp-web-tools, ReDoc),
//!   loaded only by the pages that use them: revalidated with their ETag.
//! - Without a built dashboard (no npm at build time), `/` says how to build it.

use std::borrow::Cow;
use std::path::Path;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};
use tower_http::compression::CompressionLayer;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::AppState;

#[derive(RustEmbed)]
#[folder = "$OUT_DIR/web"]
struct Dist;

/// The page's Content-Security-Policy: everything from this server only (no CDN), inline
/// style attributes allowed (progress bars), no framing.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'; \
                   connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Immutable caching for content-hashed files.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Whether the dashboard is built into this binary.
pub fn embedded() -> bool {
    Dist::get("index.html").is_some()
}

/// The dashboard's routes (empty when `UPDRAFT_DASHBOARD_ENABLED=false`), plus the offline API
/// documentation paths of seed 001.
pub fn router(enabled: bool) -> Router<AppState> {
    let docs: Router<AppState> = SwaggerUi::new("/admin/docs").config(Config::from("/api/openapi.json").validator_url("none")).into();
    let docs = docs.route("/admin/redoc", get(redoc));
    if !enabled {
        return docs;
    }
    Router::new()
        .route("/", get(index))
        .route(
            "/assets/{*path}",
            get(|state: State<AppState>, headers: HeaderMap, UrlPath(path): UrlPath<String>| file(state, headers, "assets", path)),
        )
        .route(
            "/vendor/{*path}",
            get(|state: State<AppState>, headers: HeaderMap, UrlPath(path): UrlPath<String>| file(state, headers, "vendor", path)),
        )
        .layer(CompressionLayer::new().gzip(true))
        .merge(docs)
}

/// The fallback's question: should this unmatched request get the app's `index.html`?
/// Browsers navigating to one of the app's routes, yes; API clients and devices, no.
pub fn wants_app(state: &AppState, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
    let path = uri.path();
    state.settings.dashboard_enabled
        && (method == Method::GET || method == Method::HEAD)
        && !(path == "/api"
            || path.starts_with("/api/")
            || path == "/metrics"
            || path.starts_with("/assets/")
            || path.starts_with("/vendor/"))
        && headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

/// `index.html`, never cached without revalidation (it names the current hashed assets).
pub async fn index(State(state): State<AppState>) -> Response {
    match read(&state, "index.html").await {
        Some((bytes, _)) => {
            let mut response = (StatusCode::OK, bytes).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            page_headers(headers);
            response
        }
        None => not_built(),
    }
}

async fn file(State(state): State<AppState>, headers: HeaderMap, folder: &str, path: String) -> Response {
    let name = format!("{folder}/{path}");
    let Some((bytes, digest)) = read(&state, &name).await else {
        return super::ApiError(crate::domain::Error::not_found("file", &name)).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&digest[..12]));
    let cache = if folder == "assets" { IMMUTABLE } else { "no-cache" };
    let mime = mime_guess::from_path(&name).first_or_octet_stream();
    let fresh = super::conditional::none_match(&headers, &etag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { (StatusCode::OK, bytes).into_response() };
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
        out.insert(header::CONTENT_TYPE, value);
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        out.insert(header::ETAG, value);
    }
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// A file of the dashboard and its SHA-256 (the ETag): from `UPDRAFT_WEB_DIR` when set,
/// else from the binary, whose digests rust-embed computed at build time.
async fn read(state: &AppState, name: &str) -> Option<(Cow<'static, [u8]>, [u8; 32])> {
    if !safe(name) {
        return None;
    }
    match &state.settings.web_dir {
        Some(dir) => {
            let bytes = tokio::fs::read(dir.join(name)).await.ok()?;
            let digest = Sha256::digest(&bytes).into();
            Some((Cow::Owned(bytes), digest))
        }
        None => Dist::get(name).map(|f| (f.data, f.metadata.sha256_hash())),
    }
}

/// Whether the dashboard has a file, without reading it.
async fn exists(state: &AppState, name: &str) -> bool {
    safe(name)
        && match &state.settings.web_dir {
            Some(dir) => tokio::fs::try_exists(dir.join(name)).await.unwrap_or(false),
            None => Dist::get(name).is_some(),
        }
}

/// A relative path of plain segments: no `..`, no hidden files, no backslashes or NULs.
fn safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
        && !Path::new(name).is_absolute()
}

fn page_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
}

/// `/` of a server built without npm.
fn not_built() -> Response {
    let body = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Updraft</title></head><body>\
        <h1>Updraft</h1><p>The server is running, but this binary was built without its web dashboard \
        (npm was not found when it was built).</p><p>To get the dashboard, install Node.js 20 or newer and npm, then run \
        <code>cargo build --release</code> again; or serve a dashboard built with <code>npm ci &amp;&amp; npm run build</code> \
        in <code>web/</code> by setting <code>UPDRAFT_WEB_DIR=web/dist</code>.</p>\
        <p>The REST API works: its documentation is at <a href=\"/api/docs/\">/api/docs/</a>.</p></body></html>";
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    page_headers(headers);
    response
}

/// Seed 001's ReDoc page, with ReDoc served by this server (no CDN).
async fn redoc(State(state): State<AppState>) -> Response {
    let have = exists(&state, "vendor/redoc/redoc.standalone.js").await;
    let body = if have {
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Updraft API (ReDoc)</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"></head><body>\
         <redoc spec-url=\"/api/openapi.json\"></redoc><script src=\"/vendor/redoc/redoc.standalone.js\"></script></body></html>"
    } else {
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Updraft API</title></head><body>\
         <p>ReDoc is part of the web dashboard, which this binary was built without. The same documentation is at \
         <a href=\"/admin/docs/\">/admin/docs/</a>, and the OpenAPI document at <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p></body></html>"
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // ReDoc styles itself inline and runs its search in a blob worker.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; worker-src 'self' blob:; \
             frame-ancestors 'none'",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::safe;

    #[test]
    fn only_plain_relative_paths_are_read() {
        assert!(safe("assets/index-Cb0vpiMF.js"));
        assert!(safe("vendor/esp-web-tools/install-button.js"));
        for bad in ["", "../etc/passwd", "assets/../../x", "/etc/passwd", "assets/.env", "a//b", "a\\b", "a\0b", "assets/%2e%2e"] {
            assert!(!safe(bad), "{bad:?}");
        }
    }
}
