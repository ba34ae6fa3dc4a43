//! Seed 002, the "Cyberdeck OTA Server" (Flask): `GET /ota?version=X` answers with the raw
//! image when the device is older than "latest", the text `Uptodate` otherwise, and `503 No
//! firmware available` when there is nothing; `GET /ota/info` describes "latest".
//!
//! "Latest" is the build of the default product (`UPDRAFT_COMPAT_DEFAULT_PRODUCT`, or the
//! only product) an operator marked with `PUT /api/v1/products/{name}/latest`, else its
//! newest stable build. A request without device headers (the device's plain `HTTPClient`
//! check) is decided against "latest" alone by `update::decide`. A request that carries
//! Arduino `HTTPUpdate`'s `x-ESP32-STA-MAC`/`x-ESP8266-STA-MAC` headers (the device's
//! `httpUpdate.update()` call) identifies the device and gets its own check-in decision,
//! recorded in its history.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::arduino::{DeviceHeaders, mac_checkin};
use super::{AppState, default_product, failure};
use crate::domain::Error;
use crate::domain::firmware::Artifact;
use crate::domain::version::Version;
use crate::http::auth::{Operator, Viewer};
use crate::http::device_api::ClientIp;
use crate::http::download::serve_artifact;
use crate::http::error::{ApiJson, ApiResult, ErrorBody};
use crate::services::compat as service;

pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/ota", get(ota)).route("/ota/info", get(info))
}

/// The operator's side: marking the build seed-002 devices receive (always served; part of
/// the OpenAPI document).
pub fn admin_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_latest, put_latest, delete_latest))
}

/// A `/ota` or `/ota/info` answer that is not a success, in seed 002's form: plain text.
enum CyberdeckError {
    /// This status and text.
    Text(StatusCode, &'static str),
    /// Any other error: its status and message (`failure`: generic for 5xx).
    Failed(Error),
}

/// `503 No firmware available`: nothing to serve.
const NO_FIRMWARE: CyberdeckError = CyberdeckError::Text(StatusCode::SERVICE_UNAVAILABLE, "No firmware available");

impl From<Error> for CyberdeckError {
    fn from(error: Error) -> Self {
        CyberdeckError::Failed(error)
    }
}

impl IntoResponse for CyberdeckError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            CyberdeckError::Text(status, text) => (status, text.to_string()),
            CyberdeckError::Failed(error) => failure(&error),
        };
        text(status, message)
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.into()).into_response()
}

/// `GET /ota?version=X`.
async fn ota(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, CyberdeckError> {
    let version =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).find(|(k, _)| k == "version").map(|(_, v)| v.into_owned());
    let version = version.ok_or(CyberdeckError::Text(StatusCode::BAD_REQUEST, "Missing version"))?;
    let parsed = Version::parse(&version).map_err(|_| CyberdeckError::Text(StatusCode::BAD_REQUEST, "Invalid version"))?;
    let Some(product) = default_product(&state).await? else {
        tracing::warn!("a seed-002 device asked for updates, but no default product is known (UPDRAFT_COMPAT_DEFAULT_PRODUCT)");
        return Err(NO_FIRMWARE);
    };
    let latest = service::cyberdeck_latest(&state.core, &product).await?.ok_or(NO_FIRMWARE)?;

    let device_headers = DeviceHeaders::read(&headers);
    let offered: Option<Artifact> = if device_headers.mac.is_some() {
        let answer = mac_checkin(&state, &device_headers, Some(product), Some(version), ip).await.map_err(|e| match e {
            Error::Forbidden(_) => CyberdeckError::Text(StatusCode::FORBIDDEN, "Forbidden"),
            other => other.into(),
        })?;
        answer.answer.offer.map(|offer| offer.artifact)
    } else {
        service::decide_anonymous(&[], None, &latest.product, Some(&parsed), None, Some(&latest)).cloned()
    };
    match offered {
        Some(artifact) => Ok(serve_artifact(&state.core.blobs, &artifact, &method, &headers).await.map_err(|e| e.0)?),
        None => Ok(text(StatusCode::OK, "Uptodate")),
    }
}

/// The answer of `/ota/info`, in the README's field order.
#[derive(Serialize)]
struct OtaInfo {
    latest: String,
    sha256: String,
    size: u64,
    /// `2025-02-21 09:00 UTC`.
    uploaded: String,
    notes: String,
}

/// `GET /ota/info`: `{latest, sha256, size, uploaded, notes}`.
async fn info(State(state): State<AppState>) -> Result<Json<OtaInfo>, CyberdeckError> {
    let product = default_product(&state).await?.ok_or(NO_FIRMWARE)?;
    let latest = service::cyberdeck_latest(&state.core, &product).await?.ok_or(NO_FIRMWARE)?;
    Ok(Json(OtaInfo {
        uploaded: latest.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        latest: latest.version,
        sha256: latest.sha256,
        size: latest.size,
        notes: latest.notes,
    }))
}

// ---- marking "latest" (admin, native error shape) ----

#[derive(Serialize, ToSchema)]
pub struct LatestView {
    pub product: String,
    /// The build seed-002 (`/ota`) devices receive; null when the product has no stable build.
    pub artifact_id: Option<String>,
    pub version: Option<String>,
    /// True when an operator marked it; false when it is simply the newest stable build.
    pub marked: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestBody {
    /// A version of the product that has a build, e.g. `1.02`.
    #[schema(schema_with = crate::http::schemas::version)]
    pub version: String,
}

async fn latest_view(state: &AppState, product: &str) -> ApiResult<LatestView> {
    let product = crate::domain::firmware::ProductName::parse(product)?;
    let latest = service::latest_with_mark(&state.core, &product).await?;
    Ok(LatestView {
        marked: latest.marked,
        artifact_id: latest.build.as_ref().map(|l| l.id.to_string()),
        version: latest.build.map(|l| l.version),
        product: product.into(),
    })
}

/// The build a product's seed-002 devices (`GET /ota`) receive.
#[utoipa::path(
    get, path = "/api/v1/products/{name}/latest", tag = "devices",
    params(("name" = String, Path, description = "Product", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    responses((status = 200, body = LatestView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn get_latest(State(state): State<AppState>, _viewer: Viewer, Path(name): Path<String>) -> ApiResult<Json<LatestView>> {
    Ok(Json(latest_view(&state, &name).await?))
}

/// Mark the build seed-002 devices receive (instead of the newest stable build).
#[utoipa::path(
    put, path = "/api/v1/products/{name}/latest", tag = "devices",
    params(("name" = String, Path, description = "Product", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    request_body = LatestBody,
    responses((status = 200, body = LatestView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, description = "No build of that version", body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn put_latest(
    State(state): State<AppState>,
    _who: Operator,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<LatestBody>,
) -> ApiResult<Json<LatestView>> {
    service::mark_latest(&state.core, &name, Some(&body.version)).await?;
    Ok(Json(latest_view(&state, &name).await?))
}

/// Remove the mark: seed-002 devices receive the newest stable build again.
#[utoipa::path(
    delete, path = "/api/v1/products/{name}/latest", tag = "devices",
    params(("name" = String, Path, description = "Product", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    responses((status = 204, description = "Unmarked"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
async fn delete_latest(State(state): State<AppState>, _who: Operator, Path(name): Path<String>) -> ApiResult<StatusCode> {
    service::mark_latest(&state.core, &name, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
