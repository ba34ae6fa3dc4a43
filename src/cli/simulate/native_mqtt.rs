//! The native MQTT protocol (docs/CLIENT.md, "MQTT"): provision over HTTP, connect with the
//! device id and token and a last will, announce `online`, subscribe to `updraft/{id}/#`,
//! take offers from `updraft/{id}/ota` (retained) and from a check-in at each boot and poll,
//! report on `ota/status`, answer commands on `cmd/result`. A reboot ends the session; the
//! device then connects again and checks in with the version it booted.

use rumqttc::Publish;
use serde_json::{Value, json};

use super::fleet::{Device, Next, Phase, Shared, UpdateState};
use super::mqtt::{self, Session};
use super::update::{self, Offer, Via};
use super::wire;

/// Runs the device until the simulation stops (or it goes silent).
pub async fn session(shared: &Shared, device: &mut Device) -> Next {
    loop {
        if device.phase == Phase::Silent {
            return Next::Never;
        }
        let provisioned = {
            let _permit = shared.slots.acquire().await;
            wire::ensure_provisioned(shared, device).await
        };
        if !provisioned {
            tokio::time::sleep(device.poll_wait(shared)).await;
            continue;
        }
        if matches!(device.phase, Phase::Reboot { .. }) && !boot_checkin(shared, device).await {
            tokio::time::sleep(device.poll_wait(shared)).await;
            continue;
        }
        let device_id = device.device_id.as_deref().unwrap_or_default().to_string();
        let mut options = mqtt::options(shared, &device_id, &device_id, device.token.as_deref().unwrap_or_default());
        options.set_last_will(mqtt::will(&device_id));
        let mut session = match Session::connect(shared, options).await {
            Ok(session) => session,
            Err(e) => {
                device.errors += 1;
                shared.stats.error(e.kind());
                tokio::time::sleep(device.poll_wait(shared)).await;
                continue;
            }
        };
        let wait = connected(shared, device, &mut session, &device_id).await;
        session.close(shared).await;
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One connection, until a reboot, silence or a broken session; how long to wait before
/// the next.
async fn connected(shared: &Shared, device: &mut Device, session: &mut Session, device_id: &str) -> Option<std::time::Duration> {
    let status = format!("updraft/{device_id}/status");
    let subscribed = session.subscribe(&[&format!("updraft/{device_id}/#")]).await;
    if subscribed.is_err() || session.publish(shared, status, b"online".to_vec(), true).await.is_err() {
        shared.stats.error("mqtt_session");
        return Some(device.poll_wait(shared));
    }
    let mut pending = checkin(shared, device, session).await;
    let mut next_poll = tokio::time::Instant::now() + device.poll_wait(shared);
    loop {
        if let Some(offer) = pending.take() {
            let next = update::apply(shared, device, &offer, &mut Via::Mqtt(session)).await;
            match device.phase {
                Phase::Reboot { .. } => return Some(update::reboot_time()),
                Phase::Silent => return None,
                Phase::Poll => {
                    if let Next::After(wait) = next {
                        next_poll = tokio::time::Instant::now() + wait;
                    }
                }
            }
        }
        match session.next(next_poll).await {
            Some(message) => pending = on_message(shared, device, session, device_id, message).await,
            None if session.broken.is_some() => {
                shared.stats.error("mqtt_session");
                return Some(device.poll_wait(shared));
            }
            None => {
                pending = checkin(shared, device, session).await;
                next_poll = tokio::time::Instant::now() + device.poll_wait(shared);
            }
        }
    }
}

/// After a reboot, the device says what it runs before it connects (so the broker's view of
/// the device when it comes online is already the new one).
async fn boot_checkin(shared: &Shared, device: &mut Device) -> bool {
    let rebooted = update::reboot(shared, device);
    let answer = {
        let _permit = shared.slots.acquire().await;
        wire::checkin(shared, device).await
    };
    match answer {
        Ok(_) => {
            if let Some(boots) = rebooted {
                device.set_state(shared, if boots { UpdateState::Succeeded } else { UpdateState::Failed });
            }
            true
        }
        Err(e) => {
            // It tries again at the next boot check-in; the reboot is still to be reported.
            if let Some(boots) = rebooted {
                device.phase = Phase::Reboot { boots };
            }
            wire::failed(shared, device, &e);
            false
        }
    }
}

/// A check-in over HTTP (at boot and at each poll): the offer to take, if any.
async fn checkin(shared: &Shared, device: &mut Device, session: &mut Session) -> Option<Offer> {
    let rebooted = update::reboot(shared, device);
    let answer = session
        .during(async {
            let _permit = shared.slots.acquire().await;
            wire::checkin(shared, device).await
        })
        .await;
    let offer = match answer {
        Ok(offer) => offer,
        Err(e) => {
            wire::failed(shared, device, &e);
            return None;
        }
    };
    if let Some(boots) = rebooted {
        device.set_state(shared, if boots { UpdateState::Succeeded } else { UpdateState::Failed });
    }
    let offer = offer.filter(|offer| *offer.version != *device.version)?;
    update::track(shared, device, &offer);
    Some(offer)
}

/// An offer on `ota` (new to the device), a command on `cmd` (answered), anything else ignored.
async fn on_message(shared: &Shared, device: &mut Device, session: &mut Session, device_id: &str, message: Publish) -> Option<Offer> {
    let suffix = message.topic.strip_prefix(&format!("updraft/{device_id}/")).unwrap_or_default().to_string();
    match suffix.as_str() {
        "ota" if !message.payload.is_empty() => {
            let body: Value = serde_json::from_slice(&message.payload).ok()?;
            let offer: Offer = serde_json::from_value(body.get("update")?.clone()).ok()?;
            if !update::is_new(device, &offer) {
                return None;
            }
            device.offered(shared, offer.release_id.as_deref(), &offer.version);
            Some(offer)
        }
        "cmd" => {
            let command: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            let id = command["id"].clone();
            let reply = match command["name"].as_str() {
                Some("ping" | "reboot" | "check-update") => json!({"id": id, "ok": true}),
                other => json!({"id": id, "ok": false, "error": format!("unknown command {}", other.unwrap_or("(none)"))}),
            };
            let topic = format!("updraft/{device_id}/cmd/result");
            if session.publish(shared, topic, reply.to_string().into_bytes(), false).await.is_err() {
                shared.stats.error("mqtt_session");
            }
            None
        }
        _ => None,
    }
}
