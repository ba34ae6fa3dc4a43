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
use std::marker::PhantomData;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::{AppState, default_product, failure, python_isoformat};
use crate::domain::auth::{Principal, PrincipalKind, Role};
use crate::domain::compat::{CompatFile, ota_server_token_matches, ota_server_version_valid};
use crate::domain::device::{Device, DeviceFilter, DevicePatch};
use crate::domain::firmware::{Artifact, UploadMeta};
use crate::domain::mac::Mac;
use crate::domain::{Error, secret};
use crate::http::auth::{ActorSlot, NeedOperate, NeedRead, RouteNeed};
use crate::http::device_api::ClientIp;
use crate::http::download::serve_artifact;
use crate::http::roles::authorize;
use crate::services::compat::{self as service, MacCheckin, OTA_SERVER_METADATA, OtaServerDevice};
use crate::services::devices as device_service;
use crate::services::firmware as firmware_service;

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

// ---- errors ----

/// FastAPI's 422 for missing or invalid fields (pydantic 1 shape), in both APIs.
struct Validation(Vec<Value>);

impl Validation {
    fn new(location: &str, problems: &[(&str, &str, &str)]) -> Validation {
        Validation(problems.iter().map(|(field, msg, kind)| json!({"loc": [location, field], "msg": msg, "type": kind})).collect())
    }

    fn missing(location: &str, fields: &[&str]) -> Validation {
        let problems: Vec<(&str, &str, &str)> = fields.iter().map(|field| (*field, "field required", "value_error.missing")).collect();
        Validation::new(location, &problems)
    }

    fn not_a_dict() -> Validation {
        Validation::new("body", &[("__root__", "value is not a valid dict", "type_error.dict")])
    }
}

impl IntoResponse for Validation {
    fn into_response(self) -> Response {
        (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "detail": self.0 }))).into_response()
    }
}

/// A device API answer that is not a success, in that API's form: `{"error": "..."}` (with
/// the original's `WWW-Authenticate: DeviceAuth` on 401), or FastAPI's 422.
enum DeviceError {
    /// `{"error": message}` with this status.
    Refused(StatusCode, &'static str),
    Invalid(Validation),
    /// Any other error: its status and message (`failure`: generic for 5xx).
    Failed(Error),
}

impl From<Error> for DeviceError {
    fn from(error: Error) -> Self {
        DeviceError::Failed(error)
    }
}

impl From<Validation> for DeviceError {
    fn from(validation: Validation) -> Self {
        DeviceError::Invalid(validation)
    }
}

impl IntoResponse for DeviceError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            DeviceError::Refused(status, message) => (status, message.to_string()),
            DeviceError::Invalid(validation) => return validation.into_response(),
            DeviceError::Failed(error) => failure(&error),
        };
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("DeviceAuth"));
        }
        response
    }
}

/// An admin API answer that is not a success, in that API's form: `{"detail": ...}` (it was
/// a mounted sub-app with FastAPI's default handler), or FastAPI's 422.
enum AdminError {
    /// `{"detail": message}` with this status.
    Refused(StatusCode, String),
    /// A missing (401) or wrong (403) API key: `{"detail": message}` and `WWW-Authenticate: APIKey`.
    BadKey(StatusCode, &'static str),
    /// 429 with `Retry-After`: this address sent too many wrong keys.
    TooManyAttempts {
        retry_after_secs: u64,
    },
    Invalid(Validation),
    /// Any other error: its status and message (`failure`: generic for 5xx).
    Failed(Error),
}

impl AdminError {
    fn refused(status: StatusCode, detail: impl Into<String>) -> AdminError {
        AdminError::Refused(status, detail.into())
    }
}

impl From<Error> for AdminError {
    fn from(error: Error) -> Self {
        AdminError::Failed(error)
    }
}

impl From<Validation> for AdminError {
    fn from(validation: Validation) -> Self {
        AdminError::Invalid(validation)
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let detail = |status: StatusCode, detail: &str| (status, Json(json!({ "detail": detail }))).into_response();
        match self {
            AdminError::Refused(status, message) => detail(status, &message),
            AdminError::BadKey(status, message) => {
                let mut response = detail(status, message);
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("APIKey"));
                response
            }
            AdminError::TooManyAttempts { retry_after_secs } => {
                let mut response = detail(StatusCode::TOO_MANY_REQUESTS, "Too many failed attempts; try again later");
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            AdminError::Invalid(validation) => validation.into_response(),
            AdminError::Failed(error) => {
                let (status, message) = failure(&error);
                detail(status, &message)
            }
        }
    }
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

/// A device that proved it knows the shared secret: `X-Device-Auth` is the djb2 token of its
/// `mac` (upper-cased) and `UPDRAFT_COMPAT_SHARED_SECRET`. Refusals come in the original's
/// order: no `mac` (422, as FastAPI rejected the request before any check), no token (401),
/// a malformed MAC (400), an address with too many failures (429), a wrong token (401).
struct OtaDevice {
    /// The MAC as the token covers it (upper-cased, as sent).
    mac_text: String,
    /// The query parameters.
    params: BTreeMap<String, String>,
}

/// The parameters `GET /api/firmware` requires.
const CHECK_PARAMETERS: [&str; 4] = ["device_id", "hardware", "version", "mac"];

impl FromRequestParts<AppState> for OtaDevice {
    type Rejection = DeviceError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, DeviceError> {
        let params: BTreeMap<String, String> = url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let Some(mac) = params.get("mac") else {
            let missing: Vec<&str> = CHECK_PARAMETERS.into_iter().filter(|name| !params.contains_key(*name)).collect();
            return Err(Validation::missing("query", &missing).into());
        };
        let mac_text = mac.to_ascii_uppercase();
        let Some(token) = parts.headers.get("x-device-auth").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) else {
            return Err(DeviceError::Refused(StatusCode::UNAUTHORIZED, "Authentication header required"));
        };
        if !mac_format_valid(&mac_text) {
            return Err(DeviceError::Refused(StatusCode::BAD_REQUEST, "Invalid MAC address format"));
        }
        let ip = crate::http::auth::client_ip(parts);
        let limiter = &state.core.devices.limiter;
        limiter.check(ip)?;
        let authenticated = match &state.settings.compat.shared_secret {
            Some(secret) => ota_server_token_matches(token, &mac_text, secret.expose()),
            None => {
                tracing::warn!("a seed-001 device asked for updates, but UPDRAFT_COMPAT_SHARED_SECRET is not set");
                false
            }
        };
        if !authenticated {
            limiter.record_failure(ip);
            return Err(DeviceError::Refused(StatusCode::UNAUTHORIZED, "Authentication failed"));
        }
        Ok(OtaDevice { mac_text, params })
    }
}

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
async fn check(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    OtaDevice { mac_text, params }: OtaDevice,
) -> Result<Json<UpdateCheckResponse>, DeviceError> {
    let missing: Vec<&str> = CHECK_PARAMETERS.into_iter().filter(|name| !params.contains_key(*name)).collect();
    if !missing.is_empty() {
        return Err(Validation::missing("query", &missing).into());
    }
    let (device_id, hardware, version) = (&params["device_id"], &params["hardware"], &params["version"]);
    if device_id.is_empty() || hardware.is_empty() || version.is_empty() {
        return Err(DeviceError::Refused(StatusCode::BAD_REQUEST, "Missing required parameters"));
    }
    if !ota_server_version_valid(version) {
        return Err(DeviceError::Refused(StatusCode::BAD_REQUEST, "Invalid version format"));
    }
    let mac = Mac::parse(&mac_text).map_err(|_| DeviceError::Refused(StatusCode::BAD_REQUEST, "Invalid MAC address format"))?;
    let product = default_product(&state).await.map_err(|e| DeviceError::Refused(failure(&e).0, "Internal server error"))?;
    let request = MacCheckin {
        mac,
        product,
        register: false,
        version: Some(version.clone()),
        sketch_sha256: None,
        sketch_md5: None,
        attributes: Some(json!({"board": hardware, "device_id": device_id})),
    };
    let answer = service::checkin_by_mac(&state.core, request, Some(ip)).await.map_err(|e| match e {
        Error::Forbidden(_) => DeviceError::Refused(StatusCode::FORBIDDEN, "Device not authorized"),
        other => other.into(),
    })?;
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
    Ok(Json(body))
}

/// `GET /firmware/{filename}`: unauthenticated, as in the original.
async fn download(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(filename): Path<String>,
) -> Result<Response, DeviceError> {
    let artifact = named_build(&state, &filename)
        .await
        .map_err(|e| match e {
            Error::Invalid { .. } => DeviceError::Refused(StatusCode::BAD_REQUEST, "Invalid filename"),
            other => other.into(),
        })?
        .ok_or(DeviceError::Refused(StatusCode::NOT_FOUND, "Firmware file not found"))?;
    Ok(serve_artifact(&state.core.blobs, &artifact, &method, &headers).await.map_err(|e| e.0)?)
}

async fn named_build(state: &AppState, filename: &str) -> crate::domain::Result<Option<Artifact>> {
    if filename.contains('/') || filename.contains('\\') {
        return Err(Error::invalid("invalid_filename", "Invalid filename"));
    }
    service::build_by_file_url(&state.core, filename).await
}

// ---- admin API ----

/// The seed-001 admin API's credential, with the role `N` needs: `X-Admin-API-Key` with
/// `UPDRAFT_COMPAT_ADMIN_API_KEY` (the key `compat-admin`, role operator, on these routes
/// only), or any operator credential (`X-Admin-API-Key` or `Authorization: Bearer` with an
/// API key or the admin key, a session cookie). Refusals answer in that API's own form
/// (`{"detail"}`): 401 without a credential, 403 with a wrong one or a role too weak, 429
/// (`Retry-After`) for an address that sent too many wrong keys (the limiter every
/// credential shares).
struct OtaAdmin<N: RouteNeed>(Principal, PhantomData<N>);

/// Reading the seed-001 devices and files: any role.
type OtaViewer = OtaAdmin<NeedRead>;
/// Changing them (devices with their pins, firmware files): operator or admin.
type OtaOperator = OtaAdmin<NeedOperate>;

/// The principal of `UPDRAFT_COMPAT_ADMIN_API_KEY`.
pub const COMPAT_ADMIN_KEY_NAME: &str = "compat-admin";

impl<N: RouteNeed> OtaAdmin<N> {
    fn actor(&self) -> String {
        self.0.actor()
    }
}

impl<N: RouteNeed> FromRequestParts<AppState> for OtaAdmin<N> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        let ip = crate::http::auth::client_ip(parts);
        let limiter = &state.core.devices.limiter;
        if let Err(Error::TooManyRequests { retry_after_secs }) = limiter.check(ip) {
            return Err(AdminError::TooManyAttempts { retry_after_secs });
        }
        let key = parts.headers.get("x-admin-api-key").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        if let Some(key) = key
            && state.settings.compat.admin_api_key.as_ref().is_some_and(|k| secret::constant_time_eq(key, k.expose()))
        {
            let principal = Principal::new(PrincipalKind::ApiKey, COMPAT_ADMIN_KEY_NAME, Role::Operator);
            ActorSlot::fill(parts, &principal);
            principal.require(N::NEED).map_err(|e| AdminError::Refused(StatusCode::FORBIDDEN, e.to_string()))?;
            return Ok(OtaAdmin(principal, PhantomData));
        }
        let presented = key.is_some() || parts.headers.contains_key(header::AUTHORIZATION) || parts.headers.contains_key(header::COOKIE);
        match authorize(parts, state, N::NEED).await {
            Ok(principal) => Ok(OtaAdmin(principal, PhantomData)),
            Err(Error::TooManyRequests { retry_after_secs }) => Err(AdminError::TooManyAttempts { retry_after_secs }),
            Err(Error::Unauthenticated(_)) if !presented => Err(AdminError::BadKey(StatusCode::UNAUTHORIZED, "API key is required")),
            Err(Error::Unauthenticated(_)) => {
                tracing::info!(%ip, "wrong seed-001 admin API key");
                Err(AdminError::BadKey(StatusCode::FORBIDDEN, "Invalid API key"))
            }
            Err(Error::Forbidden(message)) => Err(AdminError::Refused(StatusCode::FORBIDDEN, message)),
            Err(other) => Err(other.into()),
        }
    }
}

/// The seed-001 product, or an answer saying it is not set up.
async fn ota_product(state: &AppState) -> Result<String, AdminError> {
    default_product(state).await?.ok_or_else(|| {
        AdminError::refused(
            StatusCode::CONFLICT,
            "no default product: set UPDRAFT_COMPAT_DEFAULT_PRODUCT (several products exist, or none yet)",
        )
    })
}

/// A device as `devices.json` held it.
async fn device_view(state: &AppState, device: &Device, headers: &HeaderMap) -> Value {
    let stored = device.metadata.get(OTA_SERVER_METADATA).cloned().unwrap_or(Value::Null);
    let text = |key: &str| stored.get(key).and_then(Value::as_str).map(str::to_string);
    let pinned = service::pinned_build(&state.core, device).await.ok().flatten();
    let mut firmware_url = text("firmware_url");
    let mut checksum = text("checksum");
    if let Some(build) = &pinned {
        checksum = Some(build.md5.clone());
        if let Ok(Some(name)) = service::first_file_name(&state.core, &build.id).await {
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

async fn list_devices(State(state): State<AppState>, _who: OtaViewer, headers: HeaderMap) -> Result<Json<Value>, AdminError> {
    let product = default_product(&state).await?;
    let mut all = Map::new();
    let mut offset = 0;
    loop {
        let filter = DeviceFilter { product: product.clone(), limit: 500, offset, ..Default::default() };
        let (page, total) = device_service::find_devices(&state.core, &filter).await?;
        offset += page.len() as u64;
        // Seed 001 names devices by MAC: devices known only by a name are not its.
        for device in page.iter().filter(|d| d.mac.is_some()) {
            all.insert(device.label(), device_view(&state, device, &headers).await);
        }
        if page.is_empty() || offset >= total {
            break;
        }
    }
    Ok(Json(Value::Object(all)))
}

async fn get_device(
    State(state): State<AppState>,
    _who: OtaViewer,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let device = find_device(&state, &mac).await?;
    Ok(Json(device_view(&state, &device, &headers).await))
}

async fn find_device(state: &AppState, mac: &str) -> Result<Device, AdminError> {
    if !mac_format_valid(mac) {
        return Err(AdminError::refused(StatusCode::BAD_REQUEST, "Invalid MAC address format"));
    }
    let mac = Mac::parse(mac).map_err(|_| AdminError::refused(StatusCode::BAD_REQUEST, "Invalid MAC address format"))?;
    device_service::find_by_mac(&state.core, &mac).await?.ok_or_else(|| AdminError::refused(StatusCode::NOT_FOUND, "Device not found"))
}

/// The JSON object of a request body, or FastAPI's 422 for anything else.
fn object_body(body: &[u8]) -> Result<Map<String, Value>, Validation> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(Validation::not_a_dict()),
    }
}

/// `POST /admin/api/devices` `{mac_address, device_id, target_version, firmware_url, checksum, hardware_version?}`.
async fn add_device(State(state): State<AppState>, who: OtaOperator, body: axum::body::Bytes) -> Result<Json<Value>, AdminError> {
    let fields = object_body(&body)?;
    let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string);
    let required = ["device_id", "target_version", "firmware_url", "checksum", "mac_address"];
    let missing: Vec<&str> = required.into_iter().filter(|k| text(k).is_none()).collect();
    if !missing.is_empty() {
        return Err(Validation::missing("body", &missing).into());
    }
    let mac_address = text("mac_address").unwrap_or_default();
    if !mac_format_valid(&mac_address) || Mac::parse(&mac_address).is_err() {
        return Err(Validation::new("body", &[("mac_address", "Invalid MAC address format", "value_error")]).into());
    }
    if !ota_server_version_valid(&text("target_version").unwrap_or_default()) {
        return Err(Validation::new("body", &[("target_version", "Invalid target version format", "value_error")]).into());
    }
    let product = ota_product(&state).await?;
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
    let (device, _) =
        service::put_ota_server_device(&state.core, &product, &entry, None, false, &who.actor()).await.map_err(|e| match e {
            Error::Conflict { .. } => AdminError::refused(StatusCode::CONFLICT, "Device already exists"),
            other => other.into(),
        })?;
    Ok(Json(json!({
        "success": true,
        "mac_address": device.label(),
        "device": {
            "device_id": entry.device_id,
            "hardware_version": entry.hardware_version,
            "target_version": entry.target_version,
            "firmware_url": entry.firmware_url,
            "checksum": entry.checksum,
        },
    })))
}

/// `PUT /admin/api/devices/{mac}` with any partial object, merged into the device.
async fn put_device(
    State(state): State<AppState>,
    who: OtaOperator,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AdminError> {
    let fields = object_body(&body)?;
    if let Some(target) = fields.get("target_version")
        && !target.as_str().is_some_and(ota_server_version_valid)
    {
        return Err(AdminError::refused(StatusCode::BAD_REQUEST, "Invalid target version format"));
    }
    let device = find_device(&state, &mac).await?;
    let mut metadata = device.metadata.clone();
    let object = metadata.as_object_mut().ok_or_else(|| Error::Internal(anyhow::anyhow!("metadata is not an object")))?;
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
    let device = device_service::update(&state.core, &device.id, patch, &who.actor()).await?;
    Ok(Json(json!({"success": true, "device": device_view(&state, &device, &headers).await})))
}

async fn delete_device(State(state): State<AppState>, _who: OtaOperator, Path(mac): Path<String>) -> Result<Json<Value>, AdminError> {
    let device = find_device(&state, &mac).await.map_err(|e| match e {
        AdminError::Refused(StatusCode::NOT_FOUND, _) => {
            AdminError::refused(StatusCode::NOT_FOUND, "Device not found or could not be deleted")
        }
        other => other,
    })?;
    device_service::delete(&state.core, &device.id).await?;
    Ok(Json(json!({"success": true})))
}

fn file_view(file: &CompatFile, artifact: &Artifact) -> Value {
    json!({"filename": file.name, "checksum": artifact.md5, "size": artifact.size, "uploaded_at": python_isoformat(file.created_at)})
}

/// `GET /admin/api/firmware`: `[{filename, checksum, size, uploaded_at}]` (the original's
/// intended answer; it returned 500).
async fn list_firmware(State(state): State<AppState>, _who: OtaViewer) -> Result<Json<Value>, AdminError> {
    let files = service::named_files(&state.core).await?;
    Ok(Json(Value::Array(files.iter().map(|(file, artifact)| file_view(file, artifact)).collect())))
}

/// `POST /admin/api/firmware`, multipart field `file` (and optionally `version`,
/// `hardware`, which the original did not have: without them both come from the ESP image).
async fn upload_firmware(
    State(state): State<AppState>,
    _who: OtaOperator,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Json<Value>, AdminError> {
    let mut multipart = multipart.map_err(|_| Validation::missing("body", &["file"]))?;
    let limit = state.settings.max_upload_bytes;
    let product = default_product(&state).await?;
    let mut meta = UploadMeta { product, ..Default::default() };
    // The file is staged as it streams in and committed once every field was read, so that a
    // field sent after it still counts, and a bad one stores nothing.
    let mut staged: Option<(String, firmware_service::StagedUpload)> = None;
    while let Some(field) = multipart.next_field().await.map_err(|e| AdminError::refused(e.status(), e.body_text()))? {
        let field_name = field.name().unwrap_or("").to_string();
        match field_name.as_str() {
            "file" => {
                if staged.is_some() {
                    return Err(Validation::new("body", &[("file", "only one file may be uploaded", "value_error")]).into());
                }
                let name = field.file_name().unwrap_or("").to_string();
                if name.is_empty() || name.contains('/') || name.contains('\\') || service::check_file_name(&name).is_err() {
                    return Err(AdminError::refused(StatusCode::BAD_REQUEST, "Invalid filename"));
                }
                let body = field.map(|chunk| chunk.map_err(crate::http::firmware::multipart_body_error));
                staged = Some((name, firmware_service::stage(&state.core, body, limit).await?));
            }
            "version" | "hardware" | "notes" => {
                let value = read_text_field(field)
                    .await
                    .map_err(|problem| Validation::new("body", &[(field_name.as_str(), problem, "value_error")]))?;
                let repeated = match field_name.as_str() {
                    "version" => meta.version.replace(value).is_some(),
                    "notes" => meta.notes.replace(value).is_some(),
                    _ => {
                        meta.hardware.push(value);
                        false
                    }
                };
                if repeated {
                    return Err(Validation::new("body", &[(field_name.as_str(), "this field may appear only once", "value_error")]).into());
                }
            }
            other => {
                return Err(Validation::new(
                    "body",
                    &[(other, "extra fields not permitted; the fields are file, version, hardware, notes", "value_error.extra")],
                )
                .into());
            }
        }
    }
    let (name, upload) = staged.ok_or_else(|| Validation::missing("body", &["file"]))?;
    let artifact = service::commit_named_file(&state.core, &name, upload, meta, None).await?;
    Ok(Json(json!({
        "filename": name,
        "checksum": artifact.md5,
        "size": artifact.size,
        "success": true,
        "url": format!("{}/firmware/{name}", state.base_url(Some(&headers))),
    })))
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

async fn firmware_info(State(state): State<AppState>, _who: OtaViewer, Path(filename): Path<String>) -> Result<Json<Value>, AdminError> {
    if filename.contains('/') || filename.contains('\\') {
        return Err(AdminError::refused(StatusCode::BAD_REQUEST, "Invalid filename"));
    }
    let (file, artifact) = service::named_file(&state.core, &filename)
        .await?
        .ok_or_else(|| AdminError::refused(StatusCode::NOT_FOUND, "Firmware file not found"))?;
    Ok(Json(file_view(&file, &artifact)))
}

/// `GET /admin/api/firmware/{filename}`: the file itself, for the operator.
async fn download_admin(
    State(state): State<AppState>,
    _who: OtaViewer,
    method: Method,
    headers: HeaderMap,
    Path(filename): Path<String>,
) -> Result<Response, AdminError> {
    let artifact = admin_named_build(&state, &filename).await?;
    Ok(serve_artifact(&state.core.blobs, &artifact, &method, &headers).await.map_err(|e| e.0)?)
}

/// The build a file name names, or the admin API's 400 or 404.
async fn admin_named_build(state: &AppState, filename: &str) -> Result<Artifact, AdminError> {
    named_build(state, filename)
        .await
        .map_err(|e| match e {
            Error::Invalid { .. } => AdminError::refused(StatusCode::BAD_REQUEST, "Invalid filename"),
            other => other.into(),
        })?
        .ok_or_else(|| AdminError::refused(StatusCode::NOT_FOUND, "Firmware file not found"))
}

/// `DELETE /admin/api/firmware/{filename}`: removes the name, and the build when no other
/// name refers to it (refused with 409 while devices are being updated to it).
async fn delete_firmware(
    State(state): State<AppState>,
    _who: OtaOperator,
    Path(filename): Path<String>,
) -> Result<Json<Value>, AdminError> {
    admin_named_build(&state, &filename).await?;
    if !service::delete_named_file(&state.core, &filename).await? {
        return Err(AdminError::refused(StatusCode::NOT_FOUND, "Firmware file not found"));
    }
    Ok(Json(json!({"success": true})))
}
