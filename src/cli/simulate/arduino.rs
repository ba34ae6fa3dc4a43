//! Arduino `HTTPUpdate` (ESP32 core): `GET /api/v1/arduino/{product}/update` with the
//! updater's `x-ESP32-*` headers. `304` is no update; `200` is the image itself, checked
//! against `x-MD5` as `Update.setMD5()` does. The updater reports nothing: the server learns
//! the outcome from the version the device sends after its restart.

use super::download::{self, Expect, Hashes};
use super::fleet::{Device, Fate, Next, Phase, Shared, UpdateState};
use super::update::{self, Offer};
use super::wire;

/// What `ESP.getFreeSketchSpace()` and `ESP.getFlashChipSize()` say on a 4 MB board.
const FREE_SPACE: u64 = 1_966_080;
const CHIP_SIZE: u64 = 4_194_304;

pub async fn wake(shared: &Shared, device: &mut Device) -> Next {
    // The sketch provisions once (for products in `key` mode the server knows it only then).
    if !wire::ensure_provisioned(shared, device).await {
        return Next::After(device.poll_wait(shared));
    }
    let rebooted = update::reboot(shared, device);
    let mac = device.mac_colon();
    let mut ap_mac = device.mac;
    ap_mac[5] = ap_mac[5].wrapping_add(1);
    let ap_mac = ap_mac.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let request = shared
        .http
        .get(format!("{}/api/v1/arduino/{}/update", shared.plan.base, shared.plan.product))
        .header(reqwest::header::USER_AGENT, "ESP32-http-Update")
        .header(reqwest::header::CACHE_CONTROL, "no-cache")
        .header("x-ESP32-STA-MAC", mac)
        .header("x-ESP32-AP-MAC", ap_mac)
        .header("x-ESP32-free-space", FREE_SPACE.to_string())
        .header("x-ESP32-sketch-size", "1048576")
        .header("x-ESP32-sketch-md5", format!("{:032x}", u128::from(device.index) << 64 | 0x5eed))
        .header("x-ESP32-chip-size", CHIP_SIZE.to_string())
        .header("x-ESP32-sdk-version", "v4.4.7-dirty")
        .header("x-ESP32-mode", "sketch")
        .header("x-ESP32-version", &*device.version);
    let response = match wire::send(shared, request).await {
        Ok(response) => response,
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    if rebooted == Some(true) && device.state == UpdateState::Offered {
        // The version it sent after the restart is the offered one: the server counts a success.
        device.set_state(shared, UpdateState::Succeeded);
    }
    match response.status().as_u16() {
        304 => Next::After(device.poll_wait(shared)),
        200 => install(shared, device, response).await,
        _ => {
            let error = wire::json_answer(response).await.err();
            if let Some(error) = error {
                wire::failed(shared, device, &error);
            }
            Next::After(device.poll_wait(shared))
        }
    }
}

/// The answer is the image: stream it into the hashes (breaking off for a device fated to
/// lose its downloads: `HTTPUpdate` then gives up until the next try).
async fn install(shared: &Shared, device: &mut Device, response: reqwest::Response) -> Next {
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let md5 = header("x-md5");
    let size = response.content_length();
    let named = header("content-disposition").and_then(|d| version_of_file_name(&d, &shared.plan.product));
    // Until the image names its version, the offer is "the newest build": its version is
    // read from the image (the app descriptor) or the file name.
    let provisional = named.clone().unwrap_or_else(|| "unknown".into());
    let fate = shared.plan.fate(device.index, &provisional);
    let mut hashes = Hashes::new();
    let break_at = (fate == Fate::FailDownload).then(|| size.unwrap_or(2) / 2);
    if fate == Fate::Silent {
        track(shared, device, &provisional);
        device.phase = Phase::Silent;
        return Next::Never;
    }
    let complete = match download::read_body(response, &mut hashes, break_at).await {
        Ok(complete) => complete,
        Err(message) => {
            tracing::debug!("{message}");
            false
        }
    };
    if !complete {
        track(shared, device, &provisional);
        shared.stats.error("download");
        return Next::After(device.poll_wait(shared));
    }
    let fetched = match hashes.finish(&Expect { size, sha256: None, md5: md5.as_deref() }) {
        Ok(fetched) => fetched,
        Err(_) => {
            shared.stats.error("download");
            return Next::After(device.poll_wait(shared));
        }
    };
    let Some(version) = fetched.version.or(named) else {
        shared.stats.error("image_version");
        return Next::After(device.poll_wait(shared));
    };
    track(shared, device, &version);
    let fate = device.fate(shared);
    if fate == Fate::FailInstall {
        return Next::After(device.poll_wait(shared));
    }
    device.phase = Phase::Reboot { boots: fate != Fate::FailBoot };
    Next::After(update::reboot_time())
}

/// The server recorded an offer of `version`.
fn track(shared: &Shared, device: &mut Device, version: &str) {
    let offer =
        Offer { version: version.into(), url: String::new(), size: None, sha256: None, md5: None, release_id: None, authorization: None };
    update::track(shared, device, &offer);
}

/// `attachment; filename="<product>-<version>.bin"` → the version.
fn version_of_file_name(disposition: &str, product: &str) -> Option<String> {
    let name = disposition.split("filename=").nth(1)?.trim_matches('"');
    let version = name.strip_prefix(product)?.strip_prefix('-')?.strip_suffix(".bin")?;
    Some(version.to_string())
}
