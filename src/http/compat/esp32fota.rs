//! esp32FOTA (chrisjoyce911/esp32FOTA): `GET /api/v1/esp32fota/{product}.json[?id=<eFuse MAC>]`
//! returns the manifest `{"type", "version", "url"}` the library reads, and the `url` serves
//! the image, signed (`signature || image`) when the product has an RSA key.
//!
//! With `id` (the library's `use_device_id`, the decimal `ESP.getEfuseMac()`), the device
//! is identified, registered per its product's provisioning mode and checked in; the
//! manifest names its offer and the URL is signed for it. Without `id`, only products in
//! `open` provisioning mode answer (others: 403): the manifest names what `update::decide`
//! gives a device of unknown version (the newest build for the one hardware all builds
//! share, or `?hardware=`; never a build held for a rollout), and the image route serves
//! without a signed link only that same build. No offer: `204` (esp32FOTA then reports no
//! update). `version` is always plain `X.Y.Z` (anything else reads as 0.0.0 on
//! the device); a pre-release offer therefore gets `204` too.

use std::net::IpAddr;

use axum::Router;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, CodedError, query_params};
use crate::domain::compat::esp32fota_version;
use crate::domain::device::Provisioning;
use crate::domain::firmware::{Artifact, ProductName};
use crate::domain::mac::Mac;
use crate::domain::{ArtifactId, Error};
use crate::http::device_api::ClientIp;
use crate::http::download::{serve_artifact, serve_with_prefix};
use crate::services::compat::{self as service, MacCheckin};
use crate::services::devices as device_service;
use crate::services::firmware as firmware_service;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/esp32fota/{manifest}", get(manifest)).route("/api/v1/esp32fota/{product}/{file}", get(image))
}

/// The manifest esp32FOTA reads (`checkJSONManifest`): a single object.
#[derive(serde::Serialize)]
struct Manifest<'a> {
    /// Must equal the firmware type the device was built with: the manifest's name.
    #[serde(rename = "type")]
    kind: &'a str,
    /// Plain `X.Y.Z`.
    version: &'a str,
    /// A full URL, which esp32FOTA prefers over `host`/`port`/`bin`.
    url: &'a str,
}

/// `GET /api/v1/esp32fota/{product}.json`.
async fn manifest(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(manifest): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, CodedError> {
    let name = manifest.strip_suffix(".json").unwrap_or(&manifest);
    let product = ProductName::parse(name)?;
    let params = query_params(query.as_deref());
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let base = state.base_url(Some(&headers));

    let (offer, signed_query) = match param("id") {
        Some(id) => {
            let request = MacCheckin {
                mac: Mac::parse_esp32fota_id(id)?,
                product: Some(product.to_string()),
                register: true,
                version: None,
                sketch_sha256: None,
                sketch_md5: None,
                attributes: None,
            };
            let answer = service::checkin_by_mac(&state.core, request, Some(ip)).await?;
            match answer.answer.offer {
                Some(offer) => {
                    let signed = device_service::sign_download(&state.core, &offer.artifact.id, &answer.device.id);
                    (Some(offer.artifact), Some(signed))
                }
                None => (None, None),
            }
        }
        None => (anonymous_offer(&state, &product, param("hardware")).await?, None),
    };
    let Some(artifact) = offer else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    // A device's product may differ from the manifest's name; the image route checks it.
    let Some(version) = esp32fota_version(&artifact.version_key) else {
        tracing::info!(version = %artifact.version, "esp32FOTA cannot express a pre-release version; no update offered");
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut url = format!("{base}/api/v1/esp32fota/{}/{}.bin", artifact.product, artifact.id);
    if let Some(signed) = signed_query {
        url.push('?');
        url.push_str(&signed);
    }
    Ok(axum::Json(Manifest { kind: name, version: &version, url: &url }).into_response())
}

/// The credential of an image request: a download link signed for a device
/// (`?device=&expires=&signature=`, from a manifest fetched with `?id=`), if the request
/// carries one, and the caller's address, whose failures the limiter counts. It is checked
/// against the build (`verify`) once the build is known: an unknown build is a 404 whatever
/// the link says.
struct FotaLink {
    ip: IpAddr,
    signed: Option<(String, i64, String)>,
}

impl FromRequestParts<AppState> for FotaLink {
    type Rejection = CodedError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, CodedError> {
        let params = query_params(parts.uri.query());
        let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let signed = match (param("device"), param("expires").and_then(|e| e.parse::<i64>().ok()), param("signature")) {
            (Some(device_id), Some(expires), Some(signature)) => Some((device_id, expires, signature)),
            _ => None,
        };
        Ok(FotaLink { ip: crate::http::auth::client_ip(parts), signed })
    }
}

/// `GET /api/v1/esp32fota/{product}/{artifact_id}.bin`.
async fn image(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((product, file)): Path<(String, String)>,
    link: FotaLink,
) -> Result<Response, CodedError> {
    let id = file.strip_suffix(".bin").unwrap_or(&file);
    let artifact = authorised_build(&state, &link, &product, id).await?;
    let served = match state.fota_signer.signature(&artifact)? {
        Some(signature) => serve_with_prefix(&state.core.blobs, &artifact, &signature, &method).await,
        None => serve_artifact(&state.core.blobs, &artifact, &method, &headers).await,
    };
    Ok(served.map_err(|e| e.0)?)
}

/// The build, if the link is signed for a device of its product, or if its product lets
/// any device in (`open`).
async fn authorised_build(state: &AppState, link: &FotaLink, product: &str, id: &str) -> crate::domain::Result<Artifact> {
    let artifact = Some(firmware_service::find(&state.core, &ArtifactId::from(id)).await?)
        .filter(|a| a.product == product)
        .ok_or_else(|| Error::not_found("artifact", id))?;
    link.admits(state, &artifact).await?;
    Ok(artifact)
}

impl FotaLink {
    /// Accepts a link signed for this build (a wrong signature counts as a failure of the
    /// caller's address), or an unsigned request for what the manifest offers a device
    /// nobody knows, for the build's hardware (never a build held for a rollout, never
    /// another channel's).
    async fn admits(&self, state: &AppState, artifact: &Artifact) -> crate::domain::Result<()> {
        if let Some(link) = &self.signed {
            return super::check_signed_link(state, self.ip, &artifact.id, link);
        }
        let product = &artifact.product;
        let hardware: Vec<Option<&str>> =
            if artifact.hardware.is_empty() { vec![None] } else { artifact.hardware.iter().map(|h| Some(h.as_str())).collect() };
        for hardware in hardware {
            if anonymous_offer(state, product, hardware).await?.is_some_and(|offer| offer.id == artifact.id) {
                return Ok(());
            }
        }
        Err(Error::Forbidden(format!(
            "build `{}` is not what product `{product}` offers devices it does not know: fetch the manifest with \
             `?id=<eFuse MAC>` for a signed link",
            artifact.id
        )))
    }
}

/// What the manifest offers a device that does not say who it is (no `id`): the same decision
/// as a check-in of a device of unknown version, and only for products that let any device
/// in (`open`); other products need the device to identify itself.
async fn anonymous_offer(state: &AppState, product: &str, hardware: Option<&str>) -> crate::domain::Result<Option<Artifact>> {
    let policy = device_service::product_policy(&state.core, product).await?;
    if policy.provisioning != Provisioning::Open {
        return Err(Error::Forbidden(format!(
            "product `{product}` serves only registered devices: ask with `?id=<eFuse MAC>` (`use_device_id` in esp32FOTA)"
        )));
    }
    let builds = device_service::builds_of(&state.core, product).await?;
    let held = crate::services::rollouts::of_product(&state.core, product);
    Ok(service::decide_anonymous(&builds, held.as_ref().map(|h| &h.held), product, None, hardware, None).cloned())
}
