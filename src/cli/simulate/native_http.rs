//! The native HTTP protocol, as the Arduino sketch in docs/CLIENT.md speaks it: provision,
//! check in every `poll_interval_s`, download the signed `url`, report each step on
//! `POST /api/v1/device/update-status`, restart and check in with the new version.

use super::fleet::{Device, Next, Shared, UpdateState};
use super::update::{self, Via};
use super::wire;

pub async fn wake(shared: &Shared, device: &mut Device) -> Next {
    if !wire::ensure_provisioned(shared, device).await {
        return Next::After(device.poll_wait(shared));
    }
    let rebooted = update::reboot(shared, device);
    let offer = match wire::checkin(shared, device).await {
        Ok(offer) => offer,
        Err(e) => {
            wire::failed(shared, device, &e);
            return Next::After(device.poll_wait(shared));
        }
    };
    if let Some(boots) = rebooted {
        // The check-in after `installed` decides: the new version is a success, the old one a
        // boot failure.
        device.set_state(shared, if boots { UpdateState::Succeeded } else { UpdateState::Failed });
    }
    match offer {
        Some(offer) if *offer.version != *device.version => {
            update::track(shared, device, &offer);
            update::apply(shared, device, &offer, &mut Via::Native).await
        }
        _ => Next::After(device.poll_wait(shared)),
    }
}
