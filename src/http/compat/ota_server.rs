//! Seed 001, the "ESP32 OTA Update Server" (FastAPI, `panic-button-esp`): its device API
//! `GET /api/firmware` with the djb2 `X-Device-Auth` token, the unauthenticated
//! `GET /firmware/{filename}`, and its admin API under `/admin/api` with `X-Admin-API-Key`.
//!
//! Wire forms are the original's, nulls included. The device API answers errors as
//! `{"error": "..."}`, the admin API as `{"detail": ...}` (it was a mounted sub-app with
//! FastAPI's default handler). Where the original returned 500 by mistake (an unknown device,
//! a bad version, listing firmware), the intended status is returned.
//!
//! Mapping: a seed-001 device is an Updraft device of the default product
//! (`UPDRAFT_COMPAT_DEFAULT_PRODUCT`); its `target_version` is a pin; `device_id`,
//! `hardware_version`, `firmware_url`, `checksum` are kept in `metadata.ota_server`. A
//! firmware file is a build plus its file name (`compat_file`).

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::{AppState, default_product, failure, python_isoformat};
use crate::domain::compat::{ota_server_token_matches, ota_server_version_valid};
use crate::domain::device::Device;
use crate::domain::firmware::{Artifact, UploadMeta};
use crate::domain::mac::Mac;
use crate::domain::{Error, secret};
use crate::http::device_api::ClientIp;
use crate::http::download::serve_artifact;
use crate::services::compat::{self as service, MacCheckin, OTA_SERVER_METADATA, OtaServerDevice};
use crate::services::devices as device_service;
use crate::services::firmware as firmware_service;
use crate::storage::{DeviceFilter, DevicePatch};

pub fn router(downloads: bool) -> Router<AppState> {
    let mut router = Router::new()
        .route("/api/firmware", get(check))
        .route("/admin/api/devices", get(list_devices).post(add_device))
        .route("/admin/api/devices/{mac}", get(get_device).put(put_device).delete(delete_device))
        // The upload streams the file and enforces UPDRAFT_MAX_UPLOAD_BYTES itself.
        .route("/admin/api/firmware", get(list_firmware).post(upload_firmware).layer(DefaultBodyLimit::disable()))
        .route("/admin/api/firmware/{filename}", get(download_admin).delete(delete_firmware))
        .route("/admin/api/firmware/{filename}/info", get(firmware_info));
    if downloads {
        // `/firmware_files` was the original's static mount of the same folder.
        router = router.route("/firmware/{filename}", get(download)).route("/firmware_files/{filename}", get(download));
    }
    router.route("/status", get(status))
}

/// The original's liveness route: `{"status":"ok","timestamp":...,"version":"1.0.0"}`.
async fn status() -> Response {
    Json(json!({"status": "ok", "timestamp": python_isoformat(chrono::Utc::now()), "version": "1.0.0"})).into_response()
}

// ---- error bodies ----

/// `{"error": "..."}` of the device API, with the original's `WWW-Authenticate` on 401.
fn device_error(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("DeviceAuth"));
    }
    response
}

/// `{"detail": ...}` of the admin API.
fn admin_error(status: StatusCode, detail: impl Into<Value>) -> Response {
    (status, Json(json!({ "detail": detail.into() }))).into_response()
}

fn admin_failure(error: Error) -> Response {
    let (status, message) = failure(&error);
    admin_error(status, message)
}

/// FastAPI's 422 for missing or invalid fields (pydantic 1 shape).
fn validation_error(location: &str, problems: &[(&str, &str, &str)]) -> Response {
    let detail: Vec<Value> =
        problems.iter().map(|(field, msg, kind)| json!({"loc": [location, field], "msg": msg, "type": kind})).collect();
    (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "detail": detail }))).into_response()
}

/// The original's MAC check: six pairs separated by `:` or `-`, or twelve hex digits.
fn mac_format_valid(mac: &str) -> bool {
    let hex = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if mac.len() == 12 {
        return mac.bytes().all(|b| b.is_ascii_hexdigit());
    }
    mac.len() == 17 && (mac.split(':').filter(|p| hex(p)).count() == 6 || mac.split('-').filter(|p| hex(p)).count() == 6)
}

// ---- device API ----

/// The original's `UpdateCheckResponse`, in its field order, nulls included.
#[derive(serde::Serialize)]
struct UpdateCheckResponse {
    update_available: bool,
    firmware_version: Option<String>,
    /// A signed link to the build (works without headers, as the device fetches it).
    firmware_url: Option<String>,
    /// MD5 of the build: the device passes it to `Update.setMD5()`.
    checksum: Option<String>,
}

/// `GET /api/firmware?device_id=&hardware=&version=&mac=` with `X-Device-Auth`.
async fn check(State(state): State<AppState>, ClientIp(ip): ClientIp, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let params: BTreeMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let missing: Vec<(&str, &str, &str)> = ["device_id", "hardware", "version", "mac"]
        .into_iter()
        .filter(|name| !params.contains_key(*name))
        .map(|name| (name, "field required", "value_error.missing"))
        .collect();
    // The token check needs `mac`; without it FastAPI rejected the request before any check.
    if !params.contains_key("mac") {
        return validation_error("query", &missing);
    }
    let mac_text = params["mac"].to_ascii_uppercase();
    let Some(token) = headers.get("x-device-auth").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
        return device_error(StatusCode::UNAUTHORIZED, "Authentication header required");
    };
    if !mac_format_valid(&mac_text) {
        return device_error(StatusCode::BAD_REQUEST, "Invalid MAC address format");
    }
    let limiter = &state.core.devices.limiter;
    if let Err(e) = limiter.check(ip) {
        let (status, message) = failure(&e);
        return device_error(status, &message);
    }
    let authenticated = match &state.settings.compat.shared_secret {
        Some(secret) => ota_server_token_matches(token, &mac_text, secret.expose()),
        None => {
            tracing::warn!("a seed-001 device asked for updates, but UPDRAFT_COMPAT_SHARED_SECRET is not set");
            false
        }
    };
    if !authenticated {
        limiter.record_failure(ip);
        return device_error(StatusCode::UNAUTHORIZED, "Authentication failed");
    }
    if !missing.is_empty() {
        return validation_error("query", &missing);
    }
    let (device_id, hardware, version) = (&params["device_id"], &params["hardware"], &params["version"]);
    if device_id.is_empty() || hardware.is_empty() || version.is_empty() {
        return device_error(StatusCode::BAD_REQUEST, "Missing required parameters");
    }
    if !ota_server_version_valid(version) {
        return device_error(StatusCode::BAD_REQUEST, "Invalid version format");
    }
    let Ok(mac) = Mac::parse(&mac_text) else {
        return device_error(StatusCode::BAD_REQUEST, "Invalid MAC address format");
    };
    let product = match default_product(&state).await {
        Ok(product) => product,
        Err(e) => return device_error(failure(&e).0, "Internal server error"),
    };
    let request = MacCheckin {
        mac,
        product,
        register: false,
        version: Some(version.clone()),
        sketch_sha256: None,
        sketch_md5: None,
        attributes: Some(json!({"board": hardware, "device_id": device_id})),
    };
    let answer = match service::checkin_by_mac(&state.core, request, Some(ip)).await {
        Ok(answer) => answer,
        Err(Error::Forbidden(_)) => return device_error(StatusCode::FORBIDDEN, "Device not authorized"),
        Err(e) => {
            let (status, message) = failure(&e);
            return device_error(status, &message);
        }
    };
    let body = match answer.answer.offer {
        Some(offer) => {
            let signed = device_service::sign_download(&state.core, &offer.artifact.id, &answer.device.id);
            UpdateCheckResponse {
                update_available: true,
                firmware_version: Some(offer.artifact.version),
                firmware_url: Some(format!("{}/api/v1/device/firmware/{}?{signed}", state.base_url(Some(&headers)), offer.artifact.id)),
                checksum: Some(offer.artifact.md5),
            }
        }
        None => UpdateCheckResponse { update_available: false, firmware_version: None, firmware_url: None, checksum: None },
    };
    Json(body).into_response()
}

/// `GET /firmware/{filename}`: unauthenticated, as in the original.
async fn download(State(state): State<AppState>, method: Method, headers: HeaderMap, Path(filename): Path<String>) -> Response {
    match named_build(&state, &filename).await {
        Ok(Some(artifact)) => match serve_artifact(&state.core.blobs, &artifact, &method, &headers).await {
            Ok(response) => response,
            Err(e) => {
                let (status, message) = failure(&e.0);
                device_error(status, &message)
            }
        },
        Ok(None) => device_error(StatusCode::NOT_FOUND, "Firmware file not found"),
        Err(Error::Invalid { .. }) => device_error(StatusCode::BAD_REQUEST, "Invalid filename"),
        Err(e) => {
            let (status, message) = failure(&e);
            device_error(status, &message)
        }
    }
}

async fn named_build(state: &AppState, filename: &str) -> crate::domain::Result<Option<Artifact>> {
    if filename.contains('/') || filename.contains('\\') {
        return Err(Error::invalid("invalid_filename", "Invalid filename"));
    }
    service::build_by_file_url(&state.core, filename).await
}

// ---- admin API ----

/// The seed-001 admin API's credential: `X-Admin-API-Key` with Updraft's admin key or
/// `UPDRAFT_COMPAT_ADMIN_API_KEY`. Refusals answer in that API's own form (`{"detail"}`): 401
/// without a key, 403 with a wrong one, 429 (`Retry-After`) for an address that sent too
/// many wrong keys (the limiter every credential shares).
struct OtaAdmin;

impl FromRequestParts<AppState> for OtaAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let ip = crate::http::auth::client_ip(parts);
        let limiter = &state.core.devices.limiter;
        let refuse = |status: StatusCode, detail: &str| {
            let mut response = admin_error(status, detail);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("APIKey"));
            response
        };
        if let Err(Error::TooManyRequests { retry_after_secs }) = limiter.check(ip) {
            let mut response = admin_error(StatusCode::TOO_MANY_REQUESTS, "Too many failed attempts; try again later");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return Err(response);
        }
        let Some(key) = parts.headers.get("x-admin-api-key").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
            return Err(refuse(StatusCode::UNAUTHORIZED, "API key is required"));
        };
        let compat_key = state.settings.compat.admin_api_key.as_ref().is_some_and(|k| secret::constant_time_eq(key, k.expose()));
        if compat_key || crate::http::auth::is_admin_key(state, key) {
            return Ok(OtaAdmin);
        }
        limiter.record_failure(ip);
        tracing::info!(%ip, "wrong seed-001 admin API key");
        Err(refuse(StatusCode::FORBIDDEN, "Invalid API key"))
    }
}

/// The seed-001 product, or an answer saying it is not set up.
async fn ota_product(state: &AppState) -> Result<String, Response> {
    match default_product(state).await {
        Ok(Some(product)) => Ok(product),
        Ok(None) => Err(admin_error(
            StatusCode::CONFLICT,
            "no default product: set UPDRAFT_COMPAT_DEFAULT_PRODUCT (several products exist, or none yet)",
        )),
        Err(e) => Err(admin_failure(e)),
    }
}

/// A device as `devices.json` held it.
async fn device_view(state: &AppState, device: &Device, headers: &HeaderMap) -> Value {
    let stored = device.metadata.get(OTA_SERVER_METADATA).cloned().unwrap_or(Value::Null);
    let text = |key: &str| stored.get(key).and_then(Value::as_str).map(str::to_string);
    let pinned = match (&device.product, &device.target_version) {
        (Some(product), Some(target)) => match crate::domain::version::Version::parse(target) {
            Ok(v) => state.core.store.find_artifacts_by_version(product, &v.canonical()).await.ok().and_then(|b| b.into_iter().next()),
            Err(_) => None,
        },
        _ => None,
    };
    let mut firmware_url = text("firmware_url");
    let mut checksum = text("checksum");
    if let Some(build) = &pinned {
        checksum = Some(build.md5.clone());
        if let Ok(names) = state.core.store.compat_file_names(&build.id).await
            && let Some(name) = names.first()
        {
            firmware_url = Some(format!("{}/firmware/{name}", state.base_url(Some(headers))));
        }
    }
    let runtime = &state.core.devices;
    json!({
        "device_id": text("device_id").unwrap_or_else(|| device.name.clone()),
        "hardware_version": text("hardware_version").unwrap_or_else(|| "1.0".into()),
        "target_version": device.target_version,
        "firmware_url": firmware_url,
        "checksum": checksum,
        "last_check": runtime.last_seen(device).map(python_isoformat),
        "last_update": text("last_update"),
        "current_version": device.version,
        "ip_address": runtime.ip(device),
    })
}

async fn list_devices(State(state): State<AppState>, _admin: OtaAdmin, headers: HeaderMap) -> Response {
    let product = match default_product(&state).await {
        Ok(product) => product,
        Err(e) => return admin_failure(e),
    };
    let mut all = Map::new();
    let mut offset = 0;
    loop {
        let filter = DeviceFilter { product: product.clone(), limit: 500, offset, ..Default::default() };
        let (page, total) = match state.core.store.list_devices(&filter).await {
            Ok(page) => page,
            Err(e) => return admin_failure(e),
        };
        offset += page.len() as u64;
        for device in &page {
            all.insert(device.mac.canonical(), device_view(&state, device, &headers).await);
        }
        if page.is_empty() || offset >= total {
            break;
        }
    }
    Json(Value::Object(all)).into_response()
}

async fn get_device(State(state): State<AppState>, _admin: OtaAdmin, headers: HeaderMap, Path(mac): Path<String>) -> Response {
    match find_device(&state, &mac).await {
        Ok(device) => Json(device_view(&state, &device, &headers).await).into_response(),
        Err(response) => response,
    }
}

async fn find_device(state: &AppState, mac: &str) -> Result<Device, Response> {
    if !mac_format_valid(mac) {
        return Err(admin_error(StatusCode::BAD_REQUEST, "Invalid MAC address format"));
    }
    let mac = Mac::parse(mac).map_err(|_| admin_error(StatusCode::BAD_REQUEST, "Invalid MAC address format"))?;
    match state.core.store.find_device_by_mac(&mac).await {
        Ok(Some(device)) => Ok(device),
        Ok(None) => Err(admin_error(StatusCode::NOT_FOUND, "Device not found")),
        Err(e) => Err(admin_failure(e)),
    }
}

/// `POST /admin/api/devices` `{mac_address, device_id, target_version, firmware_url, checksum, hardware_version?}`.
async fn add_device(State(state): State<AppState>, _admin: OtaAdmin, body: axum::body::Bytes) -> Response {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return validation_error("body", &[("__root__", "value is not a valid dict", "type_error.dict")]);
    };
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string);
    let required = ["device_id", "target_version", "firmware_url", "checksum", "mac_address"];
    let missing: Vec<(&str, &str, &str)> =
        required.iter().filter(|k| text(k).is_none()).map(|k| (*k, "field required", "value_error.missing")).collect();
    if !missing.is_empty() {
        return validation_error("body", &missing);
    }
    let mac_address = text("mac_address").unwrap_or_default();
    if !mac_format_valid(&mac_address) || Mac::parse(&mac_address).is_err() {
        return validation_error("body", &[("mac_address", "Invalid MAC address format", "value_error")]);
    }
    if !ota_server_version_valid(&text("target_version").unwrap_or_default()) {
        return validation_error("body", &[("target_version", "Invalid target version format", "value_error")]);
    }
    let product = match ota_product(&state).await {
        Ok(product) => product,
        Err(response) => return response,
    };
    let entry = OtaServerDevice {
        mac: mac_address,
        device_id: text("device_id"),
        hardware_version: Some(text("hardware_version").unwrap_or_else(|| "1.0".into())),
        target_version: text("target_version"),
        firmware_url: text("firmware_url"),
        checksum: text("checksum"),
        current_version: None,
        last_update: None,
    };
    match service::put_ota_server_device(&state.core, &product, &entry, None, false).await {
        Ok((device, _)) => Json(json!({
            "success": true,
            "mac_address": device.mac.canonical(),
            "device": {
                "device_id": entry.device_id,
                "hardware_version": entry.hardware_version,
                "target_version": entry.target_version,
                "firmware_url": entry.firmware_url,
                "checksum": entry.checksum,
            },
        }))
        .into_response(),
        Err(Error::Conflict { .. }) => admin_error(StatusCode::CONFLICT, "Device already exists"),
        Err(e) => admin_failure(e),
    }
}

/// `PUT /admin/api/devices/{mac}` with any partial object, merged into the device.
async fn put_device(
    State(state): State<AppState>,
    _admin: OtaAdmin,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return validation_error("body", &[("__root__", "value is not a valid dict", "type_error.dict")]);
    };
    if let Some(target) = fields.get("target_version")
        && !target.as_str().is_some_and(ota_server_version_valid)
    {
        return admin_error(StatusCode::BAD_REQUEST, "Invalid target version format");
    }
    let device = match find_device(&state, &mac).await {
        Ok(device) => device,
        Err(response) => return response,
    };
    let mut metadata = device.metadata.clone();
    let Some(object) = metadata.as_object_mut() else {
        return admin_failure(Error::Internal(anyhow::anyhow!("metadata is not an object")));
    };
    let stored = object.entry(OTA_SERVER_METADATA).or_insert_with(|| json!({}));
    if !stored.is_object() {
        *stored = json!({});
    }
    for (key, value) in &fields {
        if key != "target_version" {
            stored[key.as_str()] = value.clone();
        }
    }
    let patch = DevicePatch {
        name: fields.get("device_id").and_then(Value::as_str).map(str::to_string),
        target_version: fields.get("target_version").map(|v| v.as_str().map(str::to_string)),
        metadata: Some(metadata),
        ..Default::default()
    };
    match device_service::update(&state.core, &device.id, patch).await {
        Ok(device) => Json(json!({"success": true, "device": device_view(&state, &device, &headers).await})).into_response(),
        Err(e) => admin_failure(e),
    }
}

async fn delete_device(State(state): State<AppState>, _admin: OtaAdmin, Path(mac): Path<String>) -> Response {
    let device = match find_device(&state, &mac).await {
        Ok(device) => device,
        Err(response) if response.status() == StatusCode::NOT_FOUND => {
            return admin_error(StatusCode::NOT_FOUND, "Device not found or could not be deleted");
        }
        Err(response) => return response,
    };
    match device_service::delete(&state.core, &device.id).await {
        Ok(()) => Json(json!({"success": true})).into_response(),
        Err(e) => admin_failure(e),
    }
}

fn file_view(name: &str, artifact: &Artifact, uploaded_at: chrono::DateTime<chrono::Utc>) -> Value {
    json!({"filename": name, "checksum": artifact.md5, "size": artifact.size, "uploaded_at": python_isoformat(uploaded_at)})
}

/// `GET /admin/api/firmware`: `[{filename, checksum, size, uploaded_at}]` (the original's
/// intended answer; it returned 500).
async fn list_firmware(State(state): State<AppState>, _admin: OtaAdmin) -> Response {
    let files = match state.core.store.list_compat_files().await {
        Ok(files) => files,
        Err(e) => return admin_failure(e),
    };
    let mut views = Vec::new();
    for file in files {
        match state.core.store.find_artifact(&file.artifact_id).await {
            Ok(Some(artifact)) => views.push(file_view(&file.name, &artifact, file.created_at)),
            Ok(None) => {}
            Err(e) => return admin_failure(e),
        }
    }
    Json(Value::Array(views)).into_response()
}

/// `POST /admin/api/firmware`, multipart field `file` (and optionally `version`,
/// `hardware`, which the original did not have: without them both come from the ESP image).
async fn upload_firmware(
    State(state): State<AppState>,
    _admin: OtaAdmin,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let Ok(mut multipart) = multipart else {
        return validation_error("body", &[("file", "field required", "value_error.missing")]);
    };
    let limit = state.settings.max_upload_bytes;
    let product = match default_product(&state).await {
        Ok(product) => product,
        Err(e) => return admin_failure(e),
    };
    let mut meta = UploadMeta { product, ..Default::default() };
    // The file is staged as it streams in and committed once every field was read, so that a
    // field sent after it still counts, and a bad one stores nothing.
    let mut staged: Option<(String, firmware_service::StagedUpload)> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return admin_error(e.status(), e.body_text()),
        };
        let field_name = field.name().unwrap_or("").to_string();
        match field_name.as_str() {
            "file" => {
                if staged.is_some() {
                    return validation_error("body", &[("file", "only one file may be uploaded", "value_error")]);
                }
                let name = field.file_name().unwrap_or("").to_string();
                if name.is_empty() || name.contains('/') || name.contains('\\') || service::check_file_name(&name).is_err() {
                    return admin_error(StatusCode::BAD_REQUEST, "Invalid filename");
                }
                let body = field.map(|chunk| chunk.map_err(crate::http::firmware::multipart_body_error));
                match firmware_service::stage(&state.core, body, limit).await {
                    Ok(upload) => staged = Some((name, upload)),
                    Err(e) => return admin_failure(e),
                }
            }
            "version" | "hardware" | "notes" => {
                let value = match read_text_field(field).await {
                    Ok(value) => value,
                    Err(problem) => return validation_error("body", &[(field_name.as_str(), problem, "value_error")]),
                };
                let repeated = match field_name.as_str() {
                    "version" => meta.version.replace(value).is_some(),
                    "notes" => meta.notes.replace(value).is_some(),
                    _ => {
                        meta.hardware.push(value);
                        false
                    }
                };
                if repeated {
                    return validation_error("body", &[(field_name.as_str(), "this field may appear only once", "value_error")]);
                }
            }
            other => {
                let other = other.to_string();
                return validation_error(
                    "body",
                    &[(other.as_str(), "extra fields not permitted; the fields are file, version, hardware, notes", "value_error.extra")],
                );
            }
        }
    }
    let Some((name, upload)) = staged else {
        return validation_error("body", &[("file", "field required", "value_error.missing")]);
    };
    let artifact = match service::commit_named_file(&state.core, &name, upload, meta, None).await {
        Ok(artifact) => artifact,
        Err(e) => return admin_failure(e),
    };
    Json(json!({
        "filename": name,
        "checksum": artifact.md5,
        "size": artifact.size,
        "success": true,
        "url": format!("{}/firmware/{name}", state.base_url(Some(&headers))),
    }))
    .into_response()
}

/// A text field of the upload form: UTF-8, at most `firmware::MAX_NOTES_LEN` bytes.
async fn read_text_field(mut field: axum::extract::multipart::Field<'_>) -> Result<String, &'static str> {
    let limit = crate::domain::firmware::MAX_NOTES_LEN;
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|_| "malformed form field")? {
        if bytes.len() + chunk.len() > limit {
            return Err("this field is too long");
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| "this field is not UTF-8")
}

async fn firmware_info(State(state): State<AppState>, _admin: OtaAdmin, Path(filename): Path<String>) -> Response {
    if filename.contains('/') || filename.contains('\\') {
        return admin_error(StatusCode::BAD_REQUEST, "Invalid filename");
    }
    let file = match state.core.store.find_compat_file(&filename).await {
        Ok(Some(file)) => file,
        Ok(None) => return admin_error(StatusCode::NOT_FOUND, "Firmware file not found"),
        Err(e) => return admin_failure(e),
    };
    match state.core.store.find_artifact(&file.artifact_id).await {
        Ok(Some(artifact)) => Json(file_view(&file.name, &artifact, file.created_at)).into_response(),
        Ok(None) => admin_error(StatusCode::NOT_FOUND, "Firmware file not found"),
        Err(e) => admin_failure(e),
    }
}

/// `GET /admin/api/firmware/{filename}`: the file itself, for the operator.
async fn download_admin(
    State(state): State<AppState>,
    _admin: OtaAdmin,
    method: Method,
    headers: HeaderMap,
    Path(filename): Path<String>,
) -> Response {
    match named_build(&state, &filename).await {
        Ok(Some(artifact)) => match serve_artifact(&state.core.blobs, &artifact, &method, &headers).await {
            Ok(response) => response,
            Err(e) => admin_failure(e.0),
        },
        Ok(None) => admin_error(StatusCode::NOT_FOUND, "Firmware file not found"),
        Err(Error::Invalid { .. }) => admin_error(StatusCode::BAD_REQUEST, "Invalid filename"),
        Err(e) => admin_failure(e),
    }
}

/// `DELETE /admin/api/firmware/{filename}`: removes the name, and the build when no other
/// name refers to it (refused with 409 while devices are being updated to it).
async fn delete_firmware(State(state): State<AppState>, _admin: OtaAdmin, Path(filename): Path<String>) -> Response {
    let artifact = match named_build(&state, &filename).await {
        Ok(Some(artifact)) => artifact,
        Ok(None) => return admin_error(StatusCode::NOT_FOUND, "Firmware file not found"),
        Err(Error::Invalid { .. }) => return admin_error(StatusCode::BAD_REQUEST, "Invalid filename"),
        Err(e) => return admin_failure(e),
    };
    let names = match state.core.store.compat_file_names(&artifact.id).await {
        Ok(names) => names,
        Err(e) => return admin_failure(e),
    };
    if names.iter().all(|n| *n == filename)
        && let Err(e) = crate::services::firmware::delete(&state.core, &artifact.id).await
    {
        return admin_failure(e);
    }
    match state.core.store.delete_compat_file(&filename).await {
        Ok(_) => Json(json!({"success": true})).into_response(),
        Err(e) => admin_failure(e),
    }
}
