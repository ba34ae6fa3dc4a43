//! Compatibility protocols: adapters for devices flashed to talk to other servers (the seed
//! servers) or to the stock updaters (Arduino `HTTPUpdate`, esp32FOTA). Documented for
//! device owners in docs/CLIENT.md.
//!
//! Each adapter decodes its wire form, calls the same services as the native protocol
//! (`services::compat` fills in what these devices do not say, then `services::devices`
//! identifies them, decides and records), and encodes the answer in its own form. Each
//! owns its error bodies: `http::error` maps errors for the native API only, so each
//! module has its own error type implementing `IntoResponse` (handlers return it and use
//! `?`), which takes the status from `http::error::status_of` and writes that protocol's
//! body (see `failure`); where a protocol authenticates, an extractor does it and refuses in
//! the same form. Seed 004's provisioning call defined no error form and answers with the
//! native one. Every surface can be switched off in the settings (`UPDRAFT_COMPAT_*`).

pub mod arduino;
pub mod cyberdeck;
pub mod ddi;
pub mod esp32fota;
pub mod esphome;
pub mod ota_server;
pub mod provisioning;
pub mod thingsboard;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::status_of;
use crate::config::CompatSettings;
use crate::domain::Error;

/// The routes of every enabled surface (not part of the OpenAPI document: their wire
/// forms are other servers' and are documented in docs/CLIENT.md and docs/API.md).
pub fn router(settings: &CompatSettings) -> Router<AppState> {
    let mut router = Router::new();
    if settings.ota_server {
        router = router.merge(ota_server::router(settings.ota_server_downloads));
    }
    if settings.cyberdeck {
        router = router.merge(cyberdeck::router());
    }
    if settings.arduino {
        router = router.merge(arduino::router());
    }
    if settings.esp32fota {
        router = router.merge(esp32fota::router());
    }
    if settings.esphome {
        router = router.merge(esphome::router());
    }
    if settings.thingsboard_http {
        router = router.merge(thingsboard::router());
    }
    if settings.seed004_debug {
        router = router.merge(provisioning::router());
    }
    if settings.ddi {
        router = router.merge(ddi::router(&settings.ddi_tenant));
    }
    router
}

/// The status of an error and the message a compatibility body carries: the error's own
/// for 4xx, a generic one for 5xx (whose cause is logged here, as `http::error` does).
pub fn failure(error: &Error) -> (StatusCode, String) {
    let status = status_of(error);
    if status.is_server_error() {
        tracing::error!(status = status.as_u16(), code = error.code(), error = format!("{error:#}"), cause = ?error, "request failed");
        (status, "Internal server error".to_string())
    } else {
        tracing::info!(status = status.as_u16(), code = error.code(), message = %error, "request refused");
        (status, error.to_string())
    }
}

/// The error form of the esp32FOTA and ESPHome adapters: `{"error": {"code", "message"}}`
/// with the error's status (those clients read only the status; the message is for people,
/// generic for 5xx, see [`failure`]).
pub struct CodedError(Error);

impl From<Error> for CodedError {
    fn from(error: Error) -> Self {
        CodedError(error)
    }
}

impl IntoResponse for CodedError {
    fn into_response(self) -> Response {
        let (status, message) = failure(&self.0);
        (status, axum::Json(serde_json::json!({"error": {"code": self.0.code(), "message": message}}))).into_response()
    }
}

/// Checks a download link signed for a device (`device_id`, `expires`, `signature`) against a
/// build; a wrong signature counts as a failure of the caller's address, and an address that
/// failed too often is refused first.
pub fn check_signed_link(
    state: &AppState,
    ip: std::net::IpAddr,
    artifact_id: &str,
    link: &(String, i64, String),
) -> crate::domain::Result<()> {
    let limiter = &state.core.devices.limiter;
    limiter.check(ip)?;
    let (device_id, expires, signature) = link;
    crate::services::devices::verify_download(&state.core, artifact_id, device_id, *expires, signature)
        .inspect_err(|_| limiter.record_failure(ip))
}

/// A query string's parameters, in order, percent-decoded (repeated names kept).
pub fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// A header's text value (names are case-insensitive), trimmed, if present and not empty.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

/// The product of protocols that name none (see `services::compat::default_product`).
pub async fn default_product(state: &AppState) -> crate::domain::Result<Option<String>> {
    crate::services::compat::default_product(&state.core, state.settings.compat.default_product.as_deref()).await
}

/// A timestamp as Python's `datetime.isoformat()` writes a naive UTC time, as the seed
/// servers did: `2025-05-21T09:00:00.123456`.
pub fn python_isoformat(time: chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}
