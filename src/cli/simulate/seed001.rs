//! Seed 001 ("ESP32 OTA Update Server") firmware: `GET /api/firmware?device_id=&hardware=&version=&mac=`
//! with `X-Device-Auth`, the djb2 hash (from 0) of the MAC without colons, upper case, and the
//! fleet's shared secret, in lower-case hex. An update names a signed `firmware_url` and the
//! MD5 the firmware gives `Update.setMD5()`. The firmware reports nothing: the server learns
//! the outcome from the version of the next check.

use serde::Deserialize;

use super::fleet::{Device, Next, Shared, UpdateState};
use super::update::{self, Offer, Via};
use super::wire;

#[derive(Deserialize)]
struct Check {
    update_available: bool,
    firmware_version: Option<String>,
    firmware_url: Option<String>,
    checksum: Option<String>,
}

/// The firmware's token: djb2 from 0, printed as `String(hash, HEX)` (lower case, unpadded).
pub fn device_auth(mac: &str, secret: &str) -> String {
    let text = format!("{}{secret}", mac.replace(':', "").to_ascii_uppercase());
    let hash = text.bytes().fold(0u32, |hash, byte| hash.wrapping_mul(33).wrapping_add(u32::from(byte)));
    format!("{hash:x}")
}

pub async fn wake(shared: &Shared, device: &mut Device) -> Next {
    // Seed-001 devices are never registered on first contact: the device provisions first.
    if !wire::ensure_provisioned(shared, device).await {
        return Next::After(device.poll_wait(shared));
    }
    let rebooted = update::reboot(shared, device);
    let mac = device.mac_colon();
    let secret = shared.plan.shared_secret.as_deref().unwrap_or_default();
    let url = url::Url::parse_with_params(
        &format!("{}/api/firmware", shared.plan.base),
        [
            ("device_id", format!("esp32-{}", device.mac_hyphen().replace('-', ""))),
            ("hardware", shared.plan.hardware.clone()),
            ("version", device.version.to_string()),
            ("mac", mac.clone()),
        ],
    );
    let Ok(url) = url else { return Next::Never };
    let request = shared.http.get(url).header("X-Device-Auth", device_auth(&mac, secret));
    let answer = match wire::send(shared, request).await {
        Ok(response) => wire::json_answer(response).await,
        Err(e) => Err(e),
    };
    let check: Check = match answer.map(|(_, body)| serde_json::from_value(body)) {
        Ok(Ok(check)) => check,
        Ok(Err(_)) => {
            shared.stats.error("unexpected_answer");
            return Next::After(device.poll_wait(shared));
        }
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    if rebooted == Some(true) && device.state == UpdateState::Offered {
        device.set_state(shared, UpdateState::Succeeded);
    }
    let (true, Some(version), Some(url)) = (check.update_available, check.firmware_version, check.firmware_url) else {
        return Next::After(device.poll_wait(shared));
    };
    let offer = Offer { version, url, size: None, sha256: None, md5: check.checksum, release_id: None, authorization: None };
    if *offer.version == *device.version {
        return Next::After(device.poll_wait(shared));
    }
    update::track(shared, device, &offer);
    update::apply(shared, device, &offer, &mut Via::Quiet).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_djb2_from_zero_in_unpadded_lower_case_hex() {
        // h = 0; h = h * 33 + byte over "AB" + "s": ((65 * 33) + 66) * 33 + 115
        assert_eq!(device_auth("a:b", "s"), format!("{:x}", (65u32 * 33 + 66) * 33 + 115));
    }
}
