//! ESPHome's `http_request` update platform (and ESP Web Tools):
//! `GET /api/v1/esphome/{product}/manifest.json[?channel=&device=<MAC>]` returns the ESP Web
//! Tools manifest with ESPHome's `ota` extension,
//! `{"name", "version", "builds": [{"chipFamily", "parts": [{"path", "offset"}], "ota":
//! {"path", "md5", "summary"}}]}`, and `ota.path` serves the build.
//!
//! ESPHome fetches the manifest, takes the build whose `chipFamily` is its own chip, and
//! offers an update when `version` differs from the version it runs (it compares the text,
//! nothing more); installing downloads `ota.path` and checks it against `md5`. `parts` (the
//! same file at its flash offset) makes the manifest one ESP Web Tools can install over USB.
//!
//! With `device` (a MAC), the device is identified, registered per its product's
//! provisioning mode and checked in, as esp32FOTA's `?id=`: the manifest names its offer
//! (its own channel, pin and rollouts) and `ota.path` is a download link signed for it.
//! Without `device`, only products in `open` provisioning mode answer (others: 403), with
//! what `update::decide` gives a device of unknown version on `channel` (default `stable`):
//! never a build held for a rollout; the image route serves that same build without a
//! signed link. No offer: `204`. A product without builds: `404`.

use std::net::IpAddr;

use axum::Router;
use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, CodedError, query_params};
use crate::domain::device::Provisioning;
use crate::domain::esp_image::chip_family;
use crate::domain::firmware::{Artifact, Channel, ProductName};
use crate::domain::mac::Mac;
use crate::domain::{ArtifactId, Error};
use crate::http::device_api::ClientIp;
use crate::http::download::serve_artifact;
use crate::http::flash::APP_OFFSET;
use crate::services::compat::{self as service, MacCheckin};
use crate::services::devices as device_service;
use crate::services::firmware as firmware_service;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/esphome/{product}/manifest.json", get(manifest)).route("/api/v1/esphome/{product}/{file}", get(image))
}

/// ESP Web Tools' `Manifest`, with ESPHome's `ota` in each build.
#[derive(serde::Serialize)]
struct Manifest {
    name: String,
    version: String,
    builds: Vec<Build>,
}

#[derive(serde::Serialize)]
struct Build {
    #[serde(rename = "chipFamily")]
    chip_family: &'static str,
    parts: Vec<Part>,
    ota: Ota,
}

#[derive(serde::Serialize)]
struct Part {
    path: String,
    offset: u64,
}

#[derive(serde::Serialize)]
struct Ota {
    path: String,
    md5: String,
    summary: String,
}

/// `GET /api/v1/esphome/{product}/manifest.json`.
async fn manifest(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(product): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, CodedError> {
    let product = ProductName::parse(&product)?;
    let params = query_params(query.as_deref());
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let channel = Channel::parse(param("channel").unwrap_or(Channel::DEFAULT))?;
    let device = param("device").map(Mac::parse).transpose()?;
    let builds = device_service::builds_of(&state.core, product.as_str()).await?;
    if builds.is_empty() {
        return Err(Error::not_found("product", product.as_str()).into());
    }

    let (offer, link_query) = match device {
        Some(mac) => {
            let request = MacCheckin {
                mac,
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
                    (Some(offer.artifact), signed)
                }
                None => (None, String::new()),
            }
        }
        None => {
            let offer = anonymous_offer(&state, &product, channel.as_str(), None).await?;
            let query = if channel.as_str() == Channel::DEFAULT { String::new() } else { format!("channel={channel}") };
            (offer, query)
        }
    };
    let Some(artifact) = offer else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    let chip = chip_of(&artifact).ok_or_else(|| {
        Error::unprocessable(
            "unknown_chip",
            format!(
                "build `{}` does not say its chip (it is not an ESP32 app image and its hardware is no chip name): \
                 ESPHome needs one",
                artifact.id
            ),
        )
    })?;
    let mut url = format!("{}/api/v1/esphome/{}/{}.bin", state.base_url(Some(&headers)), artifact.product, artifact.id);
    if !link_query.is_empty() {
        url.push('?');
        url.push_str(&link_query);
    }
    let offset = if artifact.image.is_some() { APP_OFFSET } else { 0 };
    let manifest = Manifest {
        name: artifact.product.to_string(),
        version: artifact.version.clone(),
        builds: vec![Build {
            chip_family: chip,
            parts: vec![Part { path: url.clone(), offset }],
            ota: Ota { path: url, md5: artifact.md5.clone(), summary: artifact.notes.clone() },
        }],
    };
    Ok(axum::Json(manifest).into_response())
}

/// ESP Web Tools' name of the build's chip: the one its image header names, else its only
/// hardware id when that is a chip name (`esp8266`).
fn chip_of(artifact: &Artifact) -> Option<&'static str> {
    match artifact.image.as_ref().and_then(|image| image.chip.as_deref()) {
        Some(chip) => chip_family(chip),
        None => match artifact.hardware.as_slice() {
            [hardware] => chip_family(hardware.as_str()),
            _ => None,
        },
    }
}

/// The credential of an image request: a download link signed for a device (`?device=&
/// expires=&signature=`, from a manifest fetched with `?device=`), or the channel of an
/// anonymous manifest, and the caller's address, whose failures the limiter counts.
struct ImageLink {
    ip: IpAddr,
    signed: Option<(String, i64, String)>,
    channel: Option<String>,
}

impl FromRequestParts<AppState> for ImageLink {
    type Rejection = CodedError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, CodedError> {
        let params = query_params(parts.uri.query());
        let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        let signed = match (param("device"), param("expires").and_then(|e| e.parse::<i64>().ok()), param("signature")) {
            (Some(device_id), Some(expires), Some(signature)) => Some((device_id, expires, signature)),
            _ => None,
        };
        Ok(ImageLink { ip: crate::http::auth::client_ip(parts), signed, channel: param("channel") })
    }
}

/// `GET /api/v1/esphome/{product}/{artifact_id}.bin` (and `HEAD`, ranges): the build, as it
/// was uploaded.
async fn image(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((product, file)): Path<(String, String)>,
    link: ImageLink,
) -> Result<Response, CodedError> {
    let id = file.strip_suffix(".bin").unwrap_or(&file);
    let artifact = Some(firmware_service::find(&state.core, &ArtifactId::from(id)).await?)
        .filter(|a| a.product == product.as_str())
        .ok_or_else(|| Error::not_found("artifact", id))?;
    link.admits(&state, &artifact).await?;
    Ok(serve_artifact(&state.core.blobs, &artifact, &method, &headers).await.map_err(|e| e.0)?)
}

impl ImageLink {
    /// Accepts a link signed for this build (a wrong signature counts as a failure of the
    /// caller's address), or an unsigned request for what an anonymous manifest of the
    /// build's product offers on the link's channel, for the build's hardware.
    async fn admits(&self, state: &AppState, artifact: &Artifact) -> crate::domain::Result<()> {
        if let Some(link) = &self.signed {
            return super::check_signed_link(state, self.ip, &artifact.id, link);
        }
        let channel = Channel::parse(self.channel.as_deref().unwrap_or(Channel::DEFAULT))?;
        let hardware: Vec<Option<&str>> =
            if artifact.hardware.is_empty() { vec![None] } else { artifact.hardware.iter().map(|h| Some(h.as_str())).collect() };
        for hardware in hardware {
            if anonymous_offer(state, &artifact.product, channel.as_str(), hardware).await?.is_some_and(|offer| offer.id == artifact.id) {
                return Ok(());
            }
        }
        Err(Error::Forbidden(format!(
            "build `{}` is not what product `{}` offers devices it does not know: fetch the manifest with `?device=<MAC>` \
             for a signed link",
            artifact.id, artifact.product
        )))
    }
}

/// What the manifest offers a device that does not say who it is: the same decision as a
/// check-in of a device of unknown version on `channel`, and only for products that let any
/// device in (`open`).
async fn anonymous_offer(
    state: &AppState,
    product: &str,
    channel: &str,
    hardware: Option<&str>,
) -> crate::domain::Result<Option<Artifact>> {
    let policy = device_service::product_policy(&state.core, product).await?;
    if policy.provisioning != Provisioning::Open {
        return Err(Error::Forbidden(format!(
            "product `{product}` serves only registered devices: add `?device=<MAC>` to the manifest URL"
        )));
    }
    let builds = device_service::builds_of(&state.core, product).await?;
    let held = crate::services::rollouts::of_product(&state.core, product);
    Ok(service::decide_anonymous_on(&builds, held.as_ref().map(|h| &h.held), product, channel, None, hardware, None).cloned())
}
