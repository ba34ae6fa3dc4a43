//! ThingsBoard devices (`tb-mqtt-client`, docs/CLIENT.md "ThingsBoard device API"):
//! provisioning on `/provision/request` (username `provision`), then a session with the
//! token as username: current firmware as telemetry, the `fw_*` shared attributes asked on
//! `v1/devices/me/attributes/request/{n}` (and pushed on `v1/devices/me/attributes`), the
//! image in chunks on `v2/fw/request/{id}/chunk/{n}`, and `fw_state` telemetry along the way.

use std::time::Duration;

use rumqttc::Publish;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::fleet::{Device, Fate, Next, Phase, Shared, UpdateState};
use super::mqtt::{self, Session};
use super::update;
use super::wire::WireError;

/// Bytes per firmware chunk.
const CHUNK: usize = 16 * 1024;
const FW_KEYS: &str = "fw_checksum,fw_checksum_algorithm,fw_size,fw_title,fw_version";

/// What the `fw_*` shared attributes offer.
struct FwOffer {
    version: String,
    size: u64,
    sha256: Option<String>,
}

/// ThingsBoard provisioning over MQTT: the device's name is its MAC.
pub async fn provision(shared: &Shared, device: &mut Device) -> Result<(), WireError> {
    let plan = &shared.plan;
    let options = mqtt::options(shared, &format!("provision-{}", device.mac_hyphen()), "provision", "");
    let mut session = Session::connect(shared, options).await.map_err(|e| match e {
        mqtt::ConnectError::Unreachable(e) => WireError::Unreachable(format!("MQTT broker {}:{}: {e}", plan.mqtt.0, plan.mqtt.1)),
        mqtt::ConnectError::Refused(e) => WireError::Refused { status: 0, code: "mqtt_refused".into(), message: e },
    })?;
    let request = json!({
        "provisionDeviceKey": plan.provision_key,
        "provisionDeviceSecret": plan.provision_secret,
        "deviceName": device.mac_colon(),
    });
    let answer = async {
        session.subscribe(&["/provision/response"]).await.map_err(WireError::Unreachable)?;
        session.publish(shared, "/provision/request".into(), request.to_string().into_bytes(), false).await?;
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Some(message) = session.next(until).await {
            if message.topic == "/provision/response" {
                return Ok(serde_json::from_slice::<Value>(&message.payload).unwrap_or(Value::Null));
            }
        }
        Err(WireError::Unreachable("no answer on /provision/response within 10 s".into()))
    }
    .await;
    session.close(shared).await;
    let answer = answer?;
    match (answer["status"].as_str(), answer["credentialsValue"].as_str()) {
        (Some("SUCCESS"), Some(token)) => {
            device.token = Some(token.into());
            Ok(())
        }
        _ => Err(WireError::Refused {
            status: 0,
            code: "provisioning_failure".into(),
            message: answer["errorMsg"].as_str().unwrap_or("no credentials in the answer").to_string(),
        }),
    }
}

/// Runs the device until the simulation stops (or it goes silent).
pub async fn session(shared: &Shared, device: &mut Device) -> Next {
    loop {
        if device.phase == Phase::Silent {
            return Next::Never;
        }
        if device.token.is_none()
            && let Err(e) = provision(shared, device).await
        {
            device.errors += 1;
            shared.stats.error(e.kind());
            tokio::time::sleep(device.poll_wait(shared)).await;
            continue;
        }
        let options = mqtt::options(shared, &device.mac_hyphen(), device.token.as_deref().unwrap_or_default(), "");
        let mut session = match Session::connect(shared, options).await {
            Ok(session) => session,
            Err(e) => {
                device.errors += 1;
                shared.stats.error(e.kind());
                tokio::time::sleep(device.poll_wait(shared)).await;
                continue;
            }
        };
        let wait = connected(shared, device, &mut session).await;
        session.close(shared).await;
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

async fn telemetry(shared: &Shared, device: &mut Device, session: &mut Session, body: Value) -> bool {
    match session.publish(shared, "v1/devices/me/telemetry".into(), body.to_string().into_bytes(), false).await {
        Ok(()) => true,
        Err(e) => {
            device.errors += 1;
            shared.stats.error(e.kind());
            false
        }
    }
}

/// Reports `fw_state` (with the current firmware, as the SDK does); records the state.
async fn fw_state(shared: &Shared, device: &mut Device, session: &mut Session, state: UpdateState, error: Option<&str>) -> bool {
    let name = match state {
        UpdateState::Downloading => "DOWNLOADING",
        UpdateState::Downloaded => "DOWNLOADED",
        UpdateState::Installing => "UPDATING",
        UpdateState::Succeeded => "UPDATED",
        _ => "FAILED",
    };
    let mut body = json!({"current_fw_title": shared.plan.product, "current_fw_version": &*device.version, "fw_state": name});
    if let Some(error) = error {
        body["fw_error"] = json!(error);
    }
    let sent = telemetry(shared, device, session, body).await;
    if sent {
        device.set_state(shared, state);
    }
    sent
}

/// One connection, until a reboot, silence or a broken session; how long to wait before
/// the next.
async fn connected(shared: &Shared, device: &mut Device, session: &mut Session) -> Option<Duration> {
    let topics = [
        "v1/devices/me/attributes",
        "v1/devices/me/attributes/response/+",
        "v1/devices/me/rpc/request/+",
        "v2/fw/response/+/chunk/+",
        "v2/fw/error",
    ];
    if session.subscribe(&topics).await.is_err() {
        shared.stats.error("mqtt_session");
        return Some(device.poll_wait(shared));
    }
    match update::reboot(shared, device) {
        // After the reboot the firmware says what it runs.
        Some(true) => {
            fw_state(shared, device, session, UpdateState::Succeeded, None).await;
        }
        Some(false) => {
            fw_state(shared, device, session, UpdateState::Failed, Some("booted back into the previous image")).await;
        }
        None => {
            let current = json!({"current_fw_title": shared.plan.product, "current_fw_version": &*device.version});
            telemetry(shared, device, session, current).await;
        }
    }
    let mut request_id = 0u64;
    loop {
        request_id += 1;
        let ask = json!({"sharedKeys": FW_KEYS}).to_string().into_bytes();
        if session.publish(shared, format!("v1/devices/me/attributes/request/{request_id}"), ask, false).await.is_err() {
            shared.stats.error("mqtt_session");
            return Some(device.poll_wait(shared));
        }
        let next_poll = tokio::time::Instant::now() + device.poll_wait(shared);
        while let Some(message) = session.next(next_poll).await {
            let offer = match on_message(shared, session, &message).await {
                Some(offer) if offer.version != *device.version => offer,
                _ => continue,
            };
            let same = device.target.as_deref() == Some(offer.version.as_str()) && device.state != UpdateState::None;
            if same && device.state.is_final() {
                continue;
            }
            if !same {
                device.offered(shared, None, &offer.version);
            }
            match install(shared, device, session, &offer, request_id).await {
                Phase::Reboot { .. } => return Some(update::reboot_time()),
                Phase::Silent => return None,
                Phase::Poll => {}
            }
        }
        if session.broken.is_some() {
            shared.stats.error("mqtt_session");
            return Some(device.poll_wait(shared));
        }
    }
}

/// The `fw_*` offer in an attributes message; RPC requests are answered.
async fn on_message(shared: &Shared, session: &mut Session, message: &Publish) -> Option<FwOffer> {
    if let Some(n) = message.topic.strip_prefix("v1/devices/me/rpc/request/") {
        let request: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
        let reply = json!({"done": request["method"]});
        let _ = session.publish(shared, format!("v1/devices/me/rpc/response/{n}"), reply.to_string().into_bytes(), false).await;
        return None;
    }
    if !message.topic.starts_with("v1/devices/me/attributes") {
        return None;
    }
    let body: Value = serde_json::from_slice(&message.payload).ok()?;
    let attributes = body.get("shared").unwrap_or(&body);
    Some(FwOffer {
        version: attributes["fw_version"].as_str()?.to_string(),
        size: attributes["fw_size"].as_u64()?,
        sha256: attributes["fw_checksum"].as_str().map(str::to_string),
    })
}

/// Downloads the offer in chunks, checks it and installs it.
async fn install(shared: &Shared, device: &mut Device, session: &mut Session, offer: &FwOffer, request_id: u64) -> Phase {
    let fate = device.fate(shared);
    if fate == Fate::Silent {
        device.phase = Phase::Silent;
        return Phase::Silent;
    }
    if !fw_state(shared, device, session, UpdateState::Downloading, None).await {
        return Phase::Poll;
    }
    let stop_at = if fate == Fate::FailDownload { offer.size / 2 } else { u64::MAX };
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut chunk = 0u64;
    while received < offer.size {
        if received >= stop_at {
            let error = format!("the download broke off at byte {received} of {}", offer.size);
            shared.stats.error("download");
            fw_state(shared, device, session, UpdateState::Failed, Some(&error)).await;
            return Phase::Poll;
        }
        let topic = format!("v2/fw/request/{request_id}/chunk/{chunk}");
        if session.publish(shared, topic, CHUNK.to_string().into_bytes(), false).await.is_err() {
            return Phase::Poll;
        }
        let answer = format!("v2/fw/response/{request_id}/chunk/{chunk}");
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        let data = loop {
            match session.next(until).await {
                Some(message) if message.topic == answer => break Some(message.payload),
                Some(message) if message.topic == "v2/fw/error" => break None,
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(data) = data.filter(|data| !data.is_empty()) else {
            shared.stats.error("download");
            fw_state(shared, device, session, UpdateState::Failed, Some("no firmware chunk")).await;
            return Phase::Poll;
        };
        hasher.update(&data);
        received += data.len() as u64;
        chunk += 1;
    }
    let digest = hex::encode(hasher.finalize());
    if offer.sha256.as_deref().is_some_and(|expected| !expected.eq_ignore_ascii_case(&digest)) {
        shared.stats.error("download");
        fw_state(shared, device, session, UpdateState::Failed, Some("SHA256 checksum mismatch")).await;
        return Phase::Poll;
    }
    for state in [UpdateState::Downloaded, UpdateState::Installing] {
        if !fw_state(shared, device, session, state, None).await {
            return Phase::Poll;
        }
    }
    if fate == Fate::FailInstall {
        fw_state(shared, device, session, UpdateState::Failed, Some("simulated: writing the image to flash failed")).await;
        return Phase::Poll;
    }
    device.phase = Phase::Reboot { boots: fate != Fate::FailBoot };
    device.phase
}
