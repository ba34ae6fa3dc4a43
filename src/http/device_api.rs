//! The native device protocol: provisioning, pairing, setup reports, check-in, update
//! reports and firmware downloads. Documented for device developers in docs/CLIENT.md.

use std::net::IpAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::bearer_or_header;
use super::devices::AttemptView;
use super::download::serve_artifact;
use super::error::{ApiError, ApiJson, ApiQuery, ApiResult, ErrorBody};
use crate::config::ClientIdentity;
use crate::domain::{ArtifactId, Error};
use crate::net::ClientAddr;
use crate::services::devices::CertificateIdentity;
use crate::services::devices::{self as service, CheckinAnswer, CheckinReport, ProvisionRequest, StatusReport};
use crate::services::fleet::ActiveDevice;
use crate::tls::ClientCert;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provision))
        .routes(routes!(checkin_post, checkin_get))
        .routes(routes!(update_status))
        .routes(routes!(pair))
        .routes(routes!(setup_status))
        .routes(routes!(download))
}

/// The caller's address: the peer, or behind a trusted proxy the client it forwarded for
/// (`http::forwarded`).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(view) = parts.extensions.get::<super::forwarded::ClientView>() {
            return Ok(ClientIp(view.ip));
        }
        let peer =
            parts.extensions.get::<ConnectInfo<ClientAddr>>().map(|ConnectInfo(addr)| addr.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        Ok(ClientIp(peer))
    }
}

/// An authenticated device: `Authorization: Bearer <token>` or `X-Device-Token: <token>`, or
/// a verified client certificate of the connection (mutual TLS, `UPDRAFT_TLS_CLIENT_CA`).
pub struct DeviceAuth(pub std::sync::Arc<ActiveDevice>, pub IpAddr);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let token = bearer_or_header(parts, "x-device-token");
        let device = device_of(state, parts.extensions.get::<ClientCert>(), token, ip).await?;
        Ok(DeviceAuth(device, ip))
    }
}

/// The device of a request: its connection's client certificate (with a token, if one is
/// sent, of the same device), else its token.
pub async fn device_of(
    state: &AppState,
    certificate: Option<&ClientCert>,
    token: Option<&str>,
    ip: IpAddr,
) -> Result<std::sync::Arc<ActiveDevice>, Error> {
    match certificate {
        None => service::authenticate(&state.core, token, ip).await,
        Some(certificate) => certificate_device(state, certificate, token, ip).await,
    }
}

/// The device a connection's client certificate names (it must be registered). A token sent
/// with it must be that same device's: a certificate never acts for another device.
async fn certificate_device(
    state: &AppState,
    certificate: &ClientCert,
    token: Option<&str>,
    ip: IpAddr,
) -> Result<std::sync::Arc<ActiveDevice>, Error> {
    let field = match state.settings.tls_policy.client_identity {
        ClientIdentity::Cn => "subject common name",
        ClientIdentity::San => "subject alternative name",
    };
    let named = CertificateIdentity { identity: certificate.identity.as_deref(), field };
    let device = service::authenticate_certificate(&state.core, named, ip).await?;
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        let by_header = service::authenticate(&state.core, Some(token), ip).await?;
        if by_header.id != device.id {
            return Err(Error::Forbidden("the device token and the client certificate name different devices".into()));
        }
    }
    Ok(device)
}

/// Refuses a request whose client certificate names another device than `device_id` (or
/// `mac`): a path, query or body naming device B is refused on a connection of device A.
async fn certificate_names(
    state: &AppState,
    certificate: Option<&ClientCert>,
    ip: IpAddr,
    device_id: Option<&str>,
    mac: Option<&str>,
) -> Result<(), Error> {
    let Some(certificate) = certificate else { return Ok(()) };
    let other = || Error::Forbidden("the client certificate names another device".into());
    // A MAC in the certificate and in the request: compared as MACs, registered or not (a
    // device may provision itself with its certificate).
    if let (Some(mac), Some(named)) = (mac, certificate.identity.as_deref())
        && let (Ok(mac), Ok(named)) = (crate::domain::mac::Mac::parse(mac), crate::domain::mac::Mac::parse(named))
    {
        return if mac == named { Ok(()) } else { Err(other()) };
    }
    let device = certificate_device(state, certificate, None, ip).await?;
    let same_id = device_id.is_none_or(|id| *device.id == *id);
    let same_mac = mac.is_none_or(|mac| crate::domain::mac::Mac::parse(mac).is_ok_and(|mac| Some(mac) == device.mac));
    if same_id && same_mac { Ok(()) } else { Err(other()) }
}

// ---- wire types ----

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionBody {
    /// Any common MAC form.
    #[schema(schema_with = super::schemas::mac)]
    pub mac: String,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub version: Option<String>,
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    /// A display name for a new device [default: the MAC].
    pub name: Option<String>,
    /// A pair key from an operator (`POST /api/v1/pairing`): lets a device that already holds a
    /// token provision again, and pairs it with the key's owner.
    pub pair_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProvisionAnswer {
    pub device_id: String,
    /// The device token: shown once, stored only as a hash. Any previous token is revoked.
    pub token: String,
    pub mqtt: MqttInfo,
    pub poll_interval_s: u32,
}

/// How the device connects to MQTT (docs/CLIENT.md). `enabled` is false when MQTT is off.
#[derive(Serialize, ToSchema)]
pub struct MqttInfo {
    pub enabled: bool,
    pub username: String,
    /// Use the device token as the password.
    pub password_is_token: bool,
    pub client_id: String,
    pub topic_prefix: String,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CheckinBody {
    #[schema(schema_with = super::schemas::optional_version)]
    pub version: Option<String>,
    #[schema(schema_with = super::schemas::optional_product)]
    pub product: Option<String>,
    #[schema(schema_with = super::schemas::optional_hardware)]
    pub hardware: Option<String>,
    /// Device-reported attributes, merged into the stored ones (`null` removes a key).
    #[schema(value_type = Option<Object>)]
    pub attributes: Option<Value>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CheckinQuery {
    #[param(schema_with = super::schemas::version)]
    pub version: Option<String>,
    #[param(schema_with = super::schemas::product)]
    pub product: Option<String>,
    #[param(schema_with = super::schemas::hardware)]
    pub hardware: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckinResponse {
    /// The build to install, or null.
    pub update: Option<UpdateOffer>,
    /// Seconds until the next check-in.
    pub poll_interval_s: u32,
}

#[derive(Serialize, ToSchema)]
pub struct UpdateOffer {
    pub version: String,
    /// Download URL; works with the device token or on its own (signed, expiring).
    pub url: String,
    pub size: u64,
    pub sha256: String,
    pub md5: String,
    /// Echo it in update-status reports. The release's id, or for a build that belongs to no
    /// release, the build's own id.
    pub release_id: String,
    /// True when an operator pinned this version (e.g. a rollback) or a forced rollout offers
    /// it: install without asking. False: a hint the device may defer (e.g. to ask its user).
    pub mandatory: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateStatusBody {
    /// The offer's `release_id` (not blank), or leave it out.
    #[schema(pattern = r"[^\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")]
    pub release_id: Option<String>,
    /// The version being installed.
    pub version: Option<String>,
    /// downloading, downloaded, installing, installed, failed, rejected.
    #[schema(schema_with = super::schemas::reported_state)]
    pub state: String,
    /// 0-100.
    #[schema(minimum = 0, maximum = 100)]
    pub progress: Option<i64>,
    pub message: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairBody {
    pub pair_key: String,
}

#[derive(Serialize, ToSchema)]
pub struct Paired {
    pub device_id: String,
    pub owner: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupStatusBody {
    /// 1 connecting to Wi-Fi, 2 connected to Wi-Fi, 3 connecting to server, 4 config
    /// finished, 5 error connecting to Wi-Fi, 6 error connecting to the server.
    #[serde(alias = "statusCode")]
    #[schema(minimum = 1, maximum = 6)]
    pub status_code: i64,
    /// For 5: WIFI_CONNECT_BAD_CREDENTIALS; for 6: MQTT_* or SERVER_* (see docs/CLIENT.md).
    pub title: Option<String>,
    pub description: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    pub device: Option<String>,
    pub expires: Option<i64>,
    pub signature: Option<String>,
}

// ---- handlers ----

/// Get a device token. Depending on the product's provisioning mode, an unknown device is
/// created (`open`), must present the product's key and secret (`key`), or must have been
/// registered by an operator (`preregistered`).
#[utoipa::path(
    post, path = "/api/v1/device/provision", tag = "device",
    request_body = ProvisionBody,
    responses(
        (status = 200, description = "A new token for a known device", body = ProvisionAnswer),
        (status = 201, description = "A new device", body = ProvisionAnswer),
        (status = 400, body = ErrorBody), (status = 403, description = "The mode refuses it", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody),
    )
)]
async fn provision(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    certificate: Option<Extension<ClientCert>>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ProvisionBody>,
) -> ApiResult<(StatusCode, Json<ProvisionAnswer>)> {
    certificate_names(&state, certificate.as_deref(), ip, None, Some(&body.mac)).await?;
    let current_token = super::auth::credential(&headers, "x-device-token").map(str::to_string);
    let provisioned = service::provision(
        &state.core,
        ProvisionRequest {
            device: crate::domain::device::DeviceKey::Mac(crate::domain::mac::Mac::parse(&body.mac)?),
            product: body.product,
            hardware: body.hardware,
            version: body.version,
            provision_key: body.provision_key,
            provision_secret: body.provision_secret,
            name: body.name,
            current_token,
            pair_key: body.pair_key,
        },
        ip,
    )
    .await?;
    let device = &provisioned.device;
    let answer = ProvisionAnswer {
        device_id: device.id.to_string(),
        token: provisioned.token,
        mqtt: MqttInfo {
            enabled: state.settings.mqtt.enabled,
            username: device.id.to_string(),
            password_is_token: true,
            client_id: device.id.to_string(),
            topic_prefix: format!("updraft/{}/", device.id),
        },
        poll_interval_s: provisioned.poll_interval_s,
    };
    let status = if provisioned.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(answer)))
}

/// Check in: report the running version (and optionally product, hardware, attributes);
/// the answer says whether to update and when to check in again.
#[utoipa::path(
    post, path = "/api/v1/device/checkin", tag = "device",
    request_body = CheckinBody,
    responses((status = 200, body = CheckinResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "The device belongs to another product (only an operator can move it)", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("device_token" = []))
)]
async fn checkin_post(
    State(state): State<AppState>,
    DeviceAuth(device, ip): DeviceAuth,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckinBody>,
) -> ApiResult<Json<CheckinResponse>> {
    let report = CheckinReport { version: body.version, product: body.product, hardware: body.hardware, attributes: body.attributes };
    let device_id = device.id.clone();
    let answer = service::checkin(&state.core, device, report, Some(ip)).await?;
    Ok(Json(checkin_response(&state, &device_id, answer, &headers)))
}

/// The same check-in for very small clients: `GET /api/v1/device/checkin?version=1.2.3`.
#[utoipa::path(
    get, path = "/api/v1/device/checkin", tag = "device",
    params(CheckinQuery),
    responses((status = 200, body = CheckinResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "The device belongs to another product (only an operator can move it)", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("device_token" = []))
)]
async fn checkin_get(
    State(state): State<AppState>,
    DeviceAuth(device, ip): DeviceAuth,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CheckinQuery>,
) -> ApiResult<Json<CheckinResponse>> {
    let report = CheckinReport { version: query.version, product: query.product, hardware: query.hardware, attributes: None };
    let device_id = device.id.clone();
    let answer = service::checkin(&state.core, device, report, Some(ip)).await?;
    Ok(Json(checkin_response(&state, &device_id, answer, &headers)))
}

fn checkin_response(state: &AppState, device_id: &str, answer: CheckinAnswer, headers: &HeaderMap) -> CheckinResponse {
    let update = answer.offer.map(|offer| {
        let artifact = &offer.artifact;
        let signed = service::sign_download(&state.core, &artifact.id, device_id);
        UpdateOffer {
            version: artifact.version.clone(),
            url: format!("{}/api/v1/device/firmware/{}?{signed}", state.base_url(Some(headers)), artifact.id),
            size: artifact.size,
            sha256: artifact.sha256.clone(),
            md5: artifact.md5.clone(),
            release_id: offer.release_id.clone(),
            mandatory: offer.mandatory,
        }
    });
    CheckinResponse { update, poll_interval_s: answer.poll_interval_s }
}

/// Report progress of the current update. A report about an update that is not the
/// device's current one is refused with 409.
#[utoipa::path(
    post, path = "/api/v1/device/update-status", tag = "device",
    request_body = UpdateStatusBody,
    responses((status = 200, body = AttemptView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("device_token" = []))
)]
async fn update_status(
    State(state): State<AppState>,
    DeviceAuth(device, _): DeviceAuth,
    ApiJson(body): ApiJson<UpdateStatusBody>,
) -> ApiResult<Json<AttemptView>> {
    let attempt = service::report_update(
        &state.core,
        &device,
        StatusReport {
            release_id: body.release_id,
            version: body.version,
            state: body.state,
            progress: body.progress,
            message: body.message,
        },
    )
    .await?;
    Ok(Json(super::devices::attempt_view(&attempt)))
}

/// Present a pair key (from the owner's app) to bind this device to its owner. Single use.
#[utoipa::path(
    post, path = "/api/v1/device/pair", tag = "device",
    request_body = PairBody,
    responses((status = 200, body = Paired), (status = 400, description = "Not a pairing request", body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, description = "Unknown, expired or used key", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("device_token" = []))
)]
async fn pair(
    State(state): State<AppState>,
    DeviceAuth(device, ip): DeviceAuth,
    ApiJson(body): ApiJson<PairBody>,
) -> ApiResult<Json<Paired>> {
    let owner = service::pair(&state.core, &device, &body.pair_key, ip).await?;
    Ok(Json(Paired { device_id: device.id.to_string(), owner }))
}

/// Report setup progress with the seed-004 status codes.
#[utoipa::path(
    post, path = "/api/v1/device/setup-status", tag = "device",
    request_body = SetupStatusBody,
    responses((status = 204, description = "Recorded"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("device_token" = []))
)]
async fn setup_status(
    State(state): State<AppState>,
    DeviceAuth(device, _): DeviceAuth,
    ApiJson(body): ApiJson<SetupStatusBody>,
) -> ApiResult<StatusCode> {
    service::report_setup(&state.core, &device, body.status_code, body.title.as_deref(), body.description.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a build of the device's product. Authorised by the device token, or by the
/// signed query (`device`, `expires`, `signature`) of the URL a check-in returned.
#[utoipa::path(
    get, path = "/api/v1/device/firmware/{id}", tag = "device",
    params(("id" = String, Path, description = "Artifact id"), DownloadQuery),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "A range", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 416, body = ErrorBody),
    ),
    security(("device_token" = []), ())
)]
async fn download(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    certificate: Option<Extension<ClientCert>>,
    method: Method,
    headers: HeaderMap,
    Path(id): Path<ArtifactId>,
    ApiQuery(query): ApiQuery<DownloadQuery>,
) -> ApiResult<Response> {
    let token = super::auth::credential(&headers, "x-device-token");
    let device = match (&query.device, query.expires, &query.signature) {
        (Some(device_id), Some(expires), Some(signature)) => {
            certificate_names(&state, certificate.as_deref(), ip, Some(device_id), None).await?;
            state.core.devices.limiter.check(ip)?;
            if let Err(e) = service::verify_download(&state.core, &id, device_id, expires, signature) {
                state.core.devices.limiter.record_failure(ip);
                return Err(e.into());
            }
            let device = service::find_by_id(&state.core, device_id)
                .await?
                .ok_or_else(|| Error::Forbidden("the device of this link no longer exists".into()))?;
            std::sync::Arc::new(ActiveDevice::of(&device))
        }
        _ => device_of(&state, certificate.as_deref(), token, ip).await?,
    };
    let artifact = crate::services::firmware::find(&state.core, &id).await?;
    // A device reaches only its own product's builds.
    if device.product.as_deref() != Some(artifact.product.as_str()) {
        return Err(Error::not_found("artifact", &id).into());
    }
    serve_artifact(&state.core.blobs, &artifact, &method, &headers).await
}
