//! The update flow every protocol shares: take an offer, report `downloading`, download and
//! check it, report `downloaded`, `installing`, `installed`, "reboot", and come back with
//! the new version (or the old one after a boot failure). The protocol decides how reports
//! travel (`Via`); protocols that report nothing (Arduino, seed 001, esp32FOTA) use `Quiet`.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use serde_json::json;

use super::download::{self, Expect, Fetched};
use super::fleet::{Device, Fate, Next, Phase, Shared, UpdateState};
use super::mqtt::Session;
use super::wire::{self, JsonBody};

/// An update offered to a device: the native check-in's `update` object, and what the other
/// protocols say in their own words.
#[derive(Deserialize, Clone, Debug)]
pub struct Offer {
    pub version: String,
    pub url: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub md5: Option<String>,
    pub release_id: Option<String>,
    /// The `Authorization` header the download needs (DDI); signed links need none.
    #[serde(skip)]
    pub authorization: Option<String>,
}

/// How a protocol reports update progress.
pub enum Via<'a> {
    /// `POST /api/v1/device/update-status`.
    Native,
    /// `updraft/{id}/ota/status` on the device's session.
    Mqtt(&'a mut Session),
    /// DDI feedback on the action.
    Ddi { feedback: String },
    /// The protocol has no way to report.
    Quiet,
}

impl Via<'_> {
    /// Reports `state`; true when the server took it (the device then records it).
    pub async fn report(&mut self, shared: &Shared, device: &mut Device, state: UpdateState, message: Option<&str>) -> bool {
        let sent = match self {
            Via::Quiet => return true,
            Via::Native => wire::update_status(shared, device, state, message).await,
            Via::Mqtt(session) => {
                let topic = format!("updraft/{}/ota/status", device.device_id.as_deref().unwrap_or_default());
                let body = wire::status_body(device, state, message).to_string();
                session.publish(shared, topic, body.into_bytes(), false).await
            }
            Via::Ddi { feedback } => {
                let Some(body) = ddi_feedback(device, state, message) else { return true };
                let request = shared
                    .http
                    .post(feedback.as_str())
                    .header(reqwest::header::AUTHORIZATION, format!("TargetToken {}", device.token.as_deref().unwrap_or_default()))
                    .json_body(&body);
                match wire::send(shared, request).await {
                    Ok(response) => wire::json_answer(response).await.map(drop),
                    Err(e) => Err(e),
                }
            }
        };
        match sent {
            Ok(()) => {
                device.set_state(shared, state);
                true
            }
            Err(e) => {
                wire::failed(shared, device, &e);
                false
            }
        }
    }

    /// Downloads the offer, on the session's clock for MQTT devices (their session stays
    /// alive meanwhile) and under an HTTP permit.
    async fn fetch(&mut self, shared: &Shared, offer: &Offer, breaks: bool) -> Result<Fetched, String> {
        let expect = Expect { size: offer.size, sha256: offer.sha256.as_deref(), md5: offer.md5.as_deref() };
        let fetch = download::fetch(shared, &offer.url, offer.authorization.as_deref(), expect, breaks);
        match self {
            Via::Mqtt(session) => {
                let guarded = async {
                    let _permit = shared.slots.acquire().await;
                    fetch.await
                };
                session.during(guarded).await
            }
            _ => fetch.await,
        }
    }
}

/// The DDI feedback for a native state (None: DDI has no such step).
fn ddi_feedback(device: &Device, state: UpdateState, message: Option<&str>) -> Option<serde_json::Value> {
    let (execution, finished) = match state {
        UpdateState::Downloading => ("download", "none"),
        UpdateState::Downloaded => ("downloaded", "none"),
        UpdateState::Installing => ("proceeding", "none"),
        UpdateState::Succeeded => ("closed", "success"),
        UpdateState::Failed => ("closed", "failure"),
        _ => return None,
    };
    let details: Vec<&str> = message.into_iter().collect();
    Some(json!({
        "id": device.release_id.as_deref().unwrap_or_default(),
        "status": {"execution": execution, "result": {"finished": finished}, "details": details},
    }))
}

/// Whether an offer starts a new attempt: not the version the device runs, and not the
/// attempt it is already in or has just finished (an MQTT offer can arrive twice: retained,
/// and in the check-in's answer).
pub fn is_new(device: &Device, offer: &Offer) -> bool {
    if *device.version == *offer.version {
        return false;
    }
    let same = device.target.as_deref() == Some(offer.version.as_str()) && device.release_id.as_deref() == offer.release_id.as_deref();
    !(same && device.state != UpdateState::None)
}

/// Records an offer a check-in answered: a new attempt unless it is the one in progress
/// (a device that lost track mid-way takes it up again).
pub fn track(shared: &Shared, device: &mut Device, offer: &Offer) {
    if is_new(device, offer) || device.state.is_final() {
        device.offered(shared, offer.release_id.as_deref(), &offer.version);
    }
}

/// Takes an offer through download, check and install. Ends with the device about to
/// reboot (`Phase::Reboot`), silent, or back to polling after a failure it reported.
pub async fn apply(shared: &Shared, device: &mut Device, offer: &Offer, via: &mut Via<'_>) -> Next {
    let fate = device.fate(shared);
    if fate == Fate::Silent {
        device.phase = Phase::Silent;
        return Next::Never;
    }
    if !via.report(shared, device, UpdateState::Downloading, None).await {
        return Next::After(device.poll_wait(shared));
    }
    match via.fetch(shared, offer, fate == Fate::FailDownload).await {
        Ok(_) => {}
        Err(message) => {
            shared.stats.error("download");
            device.errors += 1;
            via.report(shared, device, UpdateState::Failed, Some(&message)).await;
            return Next::After(device.poll_wait(shared));
        }
    }
    for state in [UpdateState::Downloaded, UpdateState::Installing] {
        if !via.report(shared, device, state, None).await {
            return Next::After(device.poll_wait(shared));
        }
    }
    if fate == Fate::FailInstall {
        via.report(shared, device, UpdateState::Failed, Some("simulated: writing the image to flash failed")).await;
        return Next::After(device.poll_wait(shared));
    }
    if !via.report(shared, device, UpdateState::Installed, None).await {
        return Next::After(device.poll_wait(shared));
    }
    device.phase = Phase::Reboot { boots: fate != Fate::FailBoot };
    Next::After(reboot_time())
}

/// A reboot takes one to two seconds.
pub fn reboot_time() -> Duration {
    Duration::from_millis(rand::rng().random_range(1000..2000))
}

/// At the first wake after an install: the device now runs the new version, or still the
/// old one when its bootloader went back. Returns whether it booted the new one (None: it
/// did not reboot).
pub fn reboot(shared: &Shared, device: &mut Device) -> Option<bool> {
    let Phase::Reboot { boots } = device.phase else { return None };
    device.phase = Phase::Poll;
    if boots && let Some(target) = device.target.clone() {
        device.set_version(shared, &target);
    }
    Some(boots)
}
