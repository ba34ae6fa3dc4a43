//! Arduino `HTTPUpdate` (arduino-esp32) and `ESP8266httpUpdate`, unmodified:
//! `GET /api/v1/arduino/update` or `GET /api/v1/arduino/{product}/update`.
//!
//! The updater sends one `GET` (HTTP/1.0) with `x-ESP32-*` or `x-ESP8266-*` headers. The
//! device is identified by `STA-MAC` (else `BASE-MAC`) and registered when its product's
//! provisioning mode is `open`; its version is `x-ESP32-version`, else the version of the
//! known build whose digest matches `x-ESP32-sketch-sha256`/`sketch-md5`. Answers:
//! - an update: `200`, the raw image with `Content-Length` (never chunked), `x-MD5`
//!   (32 lower-case hex) and `x-SHA256`, from the shared download contract;
//! - no update: `304`; an unknown device in a strict mode: `403`;
//! - a build larger than `x-ESP32-free-space`: `304`, and the offer is closed as
//!   `rejected` in the device's history with the reason;
//! - `x-ESP8266-mode: version`: `200` with `x-version` (the version it would get);
//! - `spiffs`/`littlefs`/`fatfs`/`flashfs` modes: the newest filesystem image uploaded as
//!   product `<product>.<mode>` newer than the reported version (not recorded as an update).

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{AppState, default_product, failure, header as header_text};
use crate::domain::Error;
use crate::domain::mac::Mac;
use crate::domain::version::Version;
use crate::http::device_api::ClientIp;
use crate::http::download::serve_artifact;
use crate::services::compat::{self as service, MacCheckin, MacCheckinAnswer};
use crate::services::devices as device_service;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/arduino/update", get(update_default)).route("/api/v1/arduino/{product}/update", get(update_product))
}

/// What the updater says about the device, from either core's headers.
#[derive(Debug, Default)]
pub struct DeviceHeaders {
    /// `x-ESP32-STA-MAC`, else `x-ESP32-BASE-MAC`, else `x-ESP8266-STA-MAC`, as sent.
    pub mac: Option<String>,
    pub version: Option<String>,
    pub free_space: Option<u64>,
    pub sketch_sha256: Option<String>,
    pub sketch_md5: Option<String>,
    /// `sketch` when absent.
    pub mode: String,
    pub sdk_version: Option<String>,
    pub chip_size: Option<String>,
}

impl DeviceHeaders {
    pub fn read(headers: &HeaderMap) -> DeviceHeaders {
        let either = |suffix: &str| {
            header_text(headers, &format!("x-esp32-{suffix}"))
                .or_else(|| header_text(headers, &format!("x-esp8266-{suffix}")))
                .map(str::to_string)
        };
        DeviceHeaders {
            mac: header_text(headers, "x-esp32-sta-mac")
                .or_else(|| header_text(headers, "x-esp32-base-mac"))
                .or_else(|| header_text(headers, "x-esp8266-sta-mac"))
                .map(str::to_string),
            version: either("version"),
            free_space: either("free-space").and_then(|v| v.parse().ok()),
            sketch_sha256: header_text(headers, "x-esp32-sketch-sha256").map(str::to_string),
            sketch_md5: either("sketch-md5"),
            mode: either("mode").unwrap_or_else(|| "sketch".into()).to_ascii_lowercase(),
            sdk_version: either("sdk-version"),
            chip_size: either("chip-size"),
        }
    }
}

/// Identifies the device of an updater request and checks it in (see `services::compat`).
pub async fn mac_checkin(
    state: &AppState,
    device: &DeviceHeaders,
    product: Option<String>,
    version: Option<String>,
    ip: IpAddr,
) -> crate::domain::Result<MacCheckinAnswer> {
    let mac = Mac::parse(device.mac.as_deref().unwrap_or_default())?;
    let mut attributes = serde_json::Map::new();
    if let Some(sdk) = &device.sdk_version {
        attributes.insert("sdk_version".into(), json!(sdk));
    }
    if let Some(size) = &device.chip_size {
        attributes.insert("flash_chip_size".into(), json!(size));
    }
    let request = MacCheckin {
        mac,
        product,
        register: true,
        version: version.or_else(|| device.version.clone()),
        sketch_sha256: device.sketch_sha256.clone(),
        sketch_md5: device.sketch_md5.clone(),
        attributes: (!attributes.is_empty()).then_some(serde_json::Value::Object(attributes)),
    };
    service::checkin_by_mac(&state.core, request, Some(ip)).await
}

async fn update_default(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ArduinoError> {
    let product = default_product(&state).await?;
    update(state, ip, method, headers, product).await
}

async fn update_product(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    headers: HeaderMap,
    Path(product): Path<String>,
) -> Result<Response, ArduinoError> {
    update(state, ip, method, headers, Some(product)).await
}

/// An updater request that gets no image and no `304`, in the form the updater logs: plain
/// text with the status.
enum ArduinoError {
    /// This status and text.
    Text(StatusCode, String),
    /// Any other error: its status and message (`failure`: generic for 5xx).
    Failed(Error),
}

impl From<Error> for ArduinoError {
    fn from(error: Error) -> Self {
        ArduinoError::Failed(error)
    }
}

impl IntoResponse for ArduinoError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ArduinoError::Text(status, text) => (status, text),
            ArduinoError::Failed(error) => failure(&error),
        };
        (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
    }
}

fn not_modified() -> Response {
    StatusCode::NOT_MODIFIED.into_response()
}

async fn update(
    state: AppState,
    ip: IpAddr,
    method: Method,
    headers: HeaderMap,
    product: Option<String>,
) -> Result<Response, ArduinoError> {
    let device = DeviceHeaders::read(&headers);
    if device.mac.is_none() {
        return Err(ArduinoError::Text(
            StatusCode::BAD_REQUEST,
            "no x-ESP32-STA-MAC, x-ESP32-BASE-MAC or x-ESP8266-STA-MAC header: is this Arduino HTTPUpdate?".into(),
        ));
    }
    match device.mode.as_str() {
        "sketch" => sketch(&state, ip, &method, &headers, &device, product).await,
        "version" => version_probe(&state, ip, &device, product).await,
        "spiffs" | "littlefs" | "fatfs" | "flashfs" => filesystem(&state, &method, &headers, &device, product).await,
        other => Err(ArduinoError::Text(StatusCode::BAD_REQUEST, format!("unknown update mode `{other}`"))),
    }
}

async fn sketch(
    state: &AppState,
    ip: IpAddr,
    method: &Method,
    headers: &HeaderMap,
    device: &DeviceHeaders,
    product: Option<String>,
) -> Result<Response, ArduinoError> {
    let answer = mac_checkin(state, device, product, None, ip).await?;
    let Some(offer) = answer.answer.offer else { return Ok(not_modified()) };
    if let Some(free) = device.free_space
        && offer.artifact.size > free
    {
        let reason = format!(
            "the build ({} bytes) does not fit the device's free sketch space ({free} bytes, x-ESP32-free-space)",
            offer.artifact.size
        );
        device_service::refuse_offer(&state.core, &answer.device.id, &offer, &reason).await?;
        tracing::info!(device_id = %answer.device.id, version = %offer.artifact.version, "{reason}");
        return Ok(not_modified());
    }
    Ok(serve_artifact(&state.core.blobs, &offer.artifact, method, headers).await.map_err(|e| e.0)?)
}

/// `x-ESP8266-mode: version` (`ESPhttpUpdate.getAvailableVersion()`): `200` with `x-version`.
async fn version_probe(state: &AppState, ip: IpAddr, device: &DeviceHeaders, product: Option<String>) -> Result<Response, ArduinoError> {
    let answer = mac_checkin(state, device, product, None, ip).await?;
    let version = answer.answer.offer.map(|offer| offer.artifact.version).or(answer.version);
    Ok(match version.and_then(|v| HeaderValue::from_str(&v).ok()) {
        Some(value) => {
            let mut response = StatusCode::OK.into_response();
            response.headers_mut().insert("x-version", value);
            response
        }
        None => not_modified(),
    })
}

/// Filesystem images: builds of the product `<product>.<mode>`.
async fn filesystem(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    device: &DeviceHeaders,
    product: Option<String>,
) -> Result<Response, ArduinoError> {
    let mac = Mac::parse(device.mac.as_deref().unwrap_or_default())?;
    let registered = match product.as_deref() {
        Some(product) => device_service::identify_by_mac(&state.core, &mac, product, None, None).await?,
        None => {
            device_service::find_by_mac(&state.core, &mac).await?.ok_or_else(|| Error::Forbidden(format!("{mac} is not registered")))?
        }
    };
    let Some(app_product) = registered.product.as_ref().map(ToString::to_string).or(product) else { return Ok(not_modified()) };
    let fs_product = format!("{app_product}.{}", device.mode);
    let builds = device_service::builds_of(&state.core, &fs_product).await?;
    let version = device.version.as_deref().and_then(|v| Version::parse(v).ok());
    let held = crate::services::rollouts::of_product(&state.core, &fs_product);
    match service::decide_anonymous(
        &builds,
        held.as_ref().map(|h| &h.held),
        &fs_product,
        version.as_ref(),
        registered.hardware.as_deref(),
        None,
    ) {
        Some(image) => Ok(serve_artifact(&state.core.blobs, image, method, headers).await.map_err(|e| e.0)?),
        None => Ok(not_modified()),
    }
}
