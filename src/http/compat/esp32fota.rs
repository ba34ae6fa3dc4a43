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

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::{AppState, failure};
use crate::domain::Error;
use crate::domain::compat::esp32fota_version;
use crate::domain::device::Provisioning;
use crate::domain::firmware::{Artifact, Product as ProductName};
use crate::domain::mac::Mac;
use crate::domain::version::Version;
use crate::http::device_api::ClientIp;
use crate::http::download::{serve_artifact, serve_with_prefix};
use crate::services::compat::{self as service, MacCheckin};
use crate::services::devices as device_service;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/esp32fota/{manifest}", get(manifest)).route("/api/v1/esp32fota/{product}/{file}", get(image))
}

fn failed(error: &Error) -> Response {
    let (status, message) = failure(error);
    (status, axum::Json(json!({"error": {"code": error.code(), "message": message}}))).into_response()
}

fn query_params(query: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
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
) -> Response {
    let name = manifest.strip_suffix(".json").unwrap_or(&manifest);
    let product = match ProductName::parse(name) {
        Ok(product) => product.as_str().to_string(),
        Err(e) => return failed(&e),
    };
    let params = query_params(query);
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let base = state.base_url(Some(&headers));

    let (offer, signed_query) = match param("id") {
        Some(id) => {
            let mac = match Mac::parse(id) {
                Ok(mac) => mac,
                Err(e) => return failed(&e),
            };
            let request = MacCheckin {
                mac,
                product: Some(product.clone()),
                register: true,
                version: None,
                sketch_sha256: None,
                sketch_md5: None,
                attributes: None,
            };
            match service::checkin_by_mac(&state.core, request, Some(ip)).await {
                Ok(answer) => match answer.answer.offer {
                    Some(offer) => {
                        let signed = device_service::sign_download(&state.core, &offer.artifact.id, &answer.device.id);
                        (Some(offer.artifact), Some(signed))
                    }
                    None => (None, None),
                },
                Err(e) => return failed(&e),
            }
        }
        None => match anonymous_offer(&state, &product, param("hardware")).await {
            Ok(offer) => (offer, None),
            Err(e) => return failed(&e),
        },
    };
    let Some(artifact) = offer else { return StatusCode::NO_CONTENT.into_response() };
    // A device's product may differ from the manifest's name; the image route checks it.
    let Some(version) = Version::parse(&artifact.version_key).ok().as_ref().and_then(esp32fota_version) else {
        tracing::info!(version = %artifact.version, "esp32FOTA cannot express a pre-release version; no update offered");
        return StatusCode::NO_CONTENT.into_response();
    };
    let mut url = format!("{base}/api/v1/esp32fota/{}/{}.bin", artifact.product, artifact.id);
    if let Some(signed) = signed_query {
        url.push('?');
        url.push_str(&signed);
    }
    axum::Json(Manifest { kind: name, version: &version, url: &url }).into_response()
}

/// `GET /api/v1/esp32fota/{product}/{artifact_id}.bin`.
async fn image(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    headers: HeaderMap,
    Path((product, file)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let id = file.strip_suffix(".bin").unwrap_or(&file);
    let artifact = match authorised_build(&state, ip, &product, id, query_params(query)).await {
        Ok(artifact) => artifact,
        Err(e) => return failed(&e),
    };
    let served = match state.fota_signer.signature(&artifact) {
        Ok(Some(signature)) => serve_with_prefix(&state.core.blobs, &artifact, &signature, &method).await,
        Ok(None) => serve_artifact(&state.core.blobs, &artifact, &method, &headers).await,
        Err(e) => return failed(&e),
    };
    served.unwrap_or_else(|e| failed(&e.0))
}

/// The build, if the link is signed for a device of its product, or if its product lets
/// any device in (`open`).
async fn authorised_build(
    state: &AppState,
    ip: std::net::IpAddr,
    product: &str,
    id: &str,
    params: Vec<(String, String)>,
) -> crate::domain::Result<Artifact> {
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let artifact =
        state.core.store.find_artifact(id).await?.filter(|a| a.product == product).ok_or_else(|| Error::not_found("artifact", id))?;
    match (param("device"), param("expires").and_then(|e| e.parse::<i64>().ok()), param("signature")) {
        (Some(device_id), Some(expires), Some(signature)) => {
            let limiter = &state.core.devices.limiter;
            limiter.check(ip)?;
            if let Err(e) = device_service::verify_download(&state.core, &artifact.id, &device_id, expires, &signature) {
                limiter.record_failure(ip);
                return Err(e);
            }
        }
        _ => {
            // Unsigned: only what the manifest offers a device nobody knows, for the build's
            // hardware (never a build held for a rollout, never another channel's).
            let hardware: Vec<Option<&str>> =
                if artifact.hardware.is_empty() { vec![None] } else { artifact.hardware.iter().map(|h| Some(h.as_str())).collect() };
            let mut offered = false;
            for hardware in hardware {
                if anonymous_offer(state, product, hardware).await?.is_some_and(|offer| offer.id == artifact.id) {
                    offered = true;
                    break;
                }
            }
            if !offered {
                return Err(Error::Forbidden(format!(
                    "build `{id}` is not what product `{product}` offers devices it does not know: fetch the manifest with \
                     `?id=<eFuse MAC>` for a signed link"
                )));
            }
        }
    }
    Ok(artifact)
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
