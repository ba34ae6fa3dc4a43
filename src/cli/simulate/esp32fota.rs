//! esp32FOTA with `useDeviceId(true)`: `GET /api/v1/esp32fota/{product}.json?id=<eFuse MAC>`
//! answers `{"type", "version", "url"}` (or `204`); the library installs the image when the
//! version is newer than its own and checks `x-MD5` when the server sends it. esp32FOTA
//! reports nothing, not even its version: the server keeps such updates `offered`.

use serde::Deserialize;

use super::fleet::{Device, Next, Shared, semver_like};
use super::update::{self, Offer, Via};
use super::wire;

#[derive(Deserialize)]
struct Manifest {
    version: String,
    url: String,
}

pub async fn wake(shared: &Shared, device: &mut Device) -> Next {
    if !wire::ensure_provisioned(shared, device).await {
        return Next::After(device.poll_wait(shared));
    }
    update::reboot(shared, device);
    let url = format!("{}/api/v1/esp32fota/{}.json?id={}", shared.plan.base, shared.plan.product, device.mac_efuse());
    let response = match wire::send(shared, shared.http.get(url)).await {
        Ok(response) => response,
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    if response.status() == reqwest::StatusCode::NO_CONTENT {
        return Next::After(device.poll_wait(shared));
    }
    let manifest: Manifest = match wire::json_answer(response).await.map(|(_, body)| serde_json::from_value(body)) {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(_)) => {
            shared.stats.error("unexpected_answer");
            return Next::After(device.poll_wait(shared));
        }
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    // esp32FOTA installs only a newer version.
    let newer =
        matches!((semver_like(&manifest.version), semver_like(&device.version)), (Some(offered), Some(running)) if offered > running);
    let offer =
        Offer { version: manifest.version, url: manifest.url, size: None, sha256: None, md5: None, release_id: None, authorization: None };
    // The manifest fetch was a check-in that offered the build, whatever the device does.
    if *offer.version != *device.version {
        update::track(shared, device, &offer);
    }
    if !newer {
        return Next::After(device.poll_wait(shared));
    }
    update::apply(shared, device, &offer, &mut Via::Quiet).await
}
