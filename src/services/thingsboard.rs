//! What ThingsBoard's device API means, whichever transport carries it (MQTT in
//! `mqtt::thingsboard`, HTTP in `http::compat::thingsboard`): telemetry with `fw_state`
//! reports, client and shared attributes, and the `fw_*` attributes announcing a build.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::Core;
use super::config as config_service;
use super::devices::{self, CheckinReport, StatusReport};
use super::fleet::ActiveDevice;
use crate::domain::firmware::Artifact;
use crate::domain::{Error, Result};

/// Telemetry in any of ThingsBoard's shapes (an object, an array of objects, `{ts, values}`);
/// `fw_state` reports drive the update history.
pub async fn telemetry(core: &Core, device: &Arc<ActiveDevice>, value: Value) -> Result<()> {
    let flat = flatten_telemetry(&value)?;
    // Nothing to record, and no error: ThingsBoard takes `{}` too, and tb_device_http's
    // `connect()` sends it to test the connection.
    if flat.is_empty() {
        return Ok(());
    }
    devices::record_telemetry(core, device, Value::Object(flat.clone()));
    let Some(state) = flat.get("fw_state").and_then(Value::as_str) else {
        return Ok(());
    };
    let Some(attempt) = devices::current_attempt(core, &device.id).await? else {
        return Ok(());
    };
    let report = |state: &str, message: Option<String>| StatusReport {
        release_id: Some(attempt.release_id.to_string()),
        version: Some(attempt.to_version.clone()),
        state: state.to_string(),
        progress: None,
        message,
    };
    match state {
        "DOWNLOADING" => devices::report_update(core, device, report("downloading", None)).await.map(drop),
        "DOWNLOADED" | "VERIFIED" => devices::report_update(core, device, report("downloaded", None)).await.map(drop),
        "UPDATING" => devices::report_update(core, device, report("installing", None)).await.map(drop),
        "UPDATED" => {
            devices::report_update(core, device, report("installed", None)).await?;
            // Success needs the device to say what it runs, as everywhere.
            if let Some(version) = flat.get("current_fw_version").and_then(Value::as_str) {
                devices::checkin(core, device.clone(), CheckinReport { version: Some(version.to_string()), ..Default::default() }, None)
                    .await?;
            }
            Ok(())
        }
        "FAILED" => {
            let message = flat.get("fw_error").and_then(Value::as_str).unwrap_or("the device reported FAILED").to_string();
            devices::report_update(core, device, report("failed", Some(message))).await.map(drop)
        }
        _ => Ok(()),
    }
}

/// The values of telemetry in any of ThingsBoard's shapes, as one object (later keys win).
pub(crate) fn flatten_telemetry(value: &Value) -> Result<Map<String, Value>> {
    let mut flat = Map::new();
    let mut shaped = true;
    let mut absorb = |item: &Value| {
        let values = item.get("values").filter(|_| item.get("ts").is_some()).unwrap_or(item);
        match values.as_object() {
            Some(object) => flat.extend(object.iter().map(|(k, v)| (k.clone(), v.clone()))),
            None => shaped = false,
        }
    };
    match value {
        Value::Array(items) => items.iter().for_each(&mut absorb),
        other => absorb(other),
    }
    if !shaped {
        return Err(Error::invalid("invalid_message", "telemetry is an object, an array of objects, or {ts, values}"));
    }
    Ok(flat)
}

/// A device's shared attributes without the firmware offer: its effective configuration,
/// secrets revealed (it is the device's own).
pub async fn shared_attributes(core: &Core, device_id: &str) -> Result<Map<String, Value>> {
    let stored = devices::find_by_id(core, device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    Ok(match config_service::reveal(core, &config_service::effective(core, &stored).await?.merged.content)? {
        Value::Object(map) => map,
        _ => Map::new(),
    })
}

/// The answer to an attribute request.
pub struct AttributesAnswer {
    /// `{"client": {...}, "shared": {...}}`.
    pub body: Value,
    /// The configuration part of the shared attributes.
    pub configuration: Map<String, Value>,
    /// The attempt whose `fw_*` keys the body announces, if it does.
    pub announced_attempt: Option<String>,
}

/// An attribute request (`clientKeys`, `sharedKeys`: comma-separated, absent for all) →
/// `{"client": {...}, "shared": {...}}` (only the asked-for halves when one list is given),
/// and the configuration part of the shared attributes. It is a check-in: shared attributes
/// include the offer's `fw_*` keys.
pub async fn attributes(
    core: &Core,
    device: Arc<ActiveDevice>,
    client_keys: Option<&str>,
    shared_keys: Option<&str>,
) -> Result<AttributesAnswer> {
    let keys = |list: Option<&str>| -> Option<Vec<String>> {
        list.map(|list| list.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect())
    };
    let (client_keys, shared_keys) = (keys(client_keys), keys(shared_keys));
    let stored = devices::find_by_id(core, &device.id).await?.ok_or_else(|| Error::not_found("device", &*device.id))?;
    let configuration = shared_attributes(core, &device.id).await?;
    let mut shared = configuration.clone();
    let answer = devices::checkin(core, device.clone(), CheckinReport::default(), None).await?;
    if let Some(offer) = &answer.offer {
        shared.extend(firmware_attributes(&offer.artifact));
    }
    let client = stored.attributes.as_object().cloned().unwrap_or_default();
    let pick = |map: Map<String, Value>, wanted: &Option<Vec<String>>| -> Map<String, Value> {
        match wanted {
            Some(keys) => map.into_iter().filter(|(k, _)| keys.contains(k)).collect(),
            None => map,
        }
    };
    let mut body = Map::new();
    if client_keys.is_some() || shared_keys.is_none() {
        body.insert("client".into(), Value::Object(pick(client, &client_keys)));
    }
    let mut announced_attempt = None;
    if shared_keys.is_some() || client_keys.is_none() {
        let shared = pick(shared, &shared_keys);
        if shared.keys().any(|k| k.starts_with("fw_")) {
            announced_attempt = answer.offer.as_ref().map(|offer| offer.attempt_id.to_string());
        }
        body.insert("shared".into(), Value::Object(shared));
    }
    Ok(AttributesAnswer { body: Value::Object(body), configuration, announced_attempt })
}

/// The shared attributes announcing a build (checksum lowercase SHA-256, as the SDK compares).
pub fn firmware_attributes(artifact: &Artifact) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("fw_title".into(), json!(artifact.product));
    map.insert("fw_version".into(), json!(artifact.version));
    map.insert("fw_size".into(), json!(artifact.size));
    map.insert("fw_checksum".into(), json!(artifact.sha256.to_ascii_lowercase()));
    map.insert("fw_checksum_algorithm".into(), json!("SHA256"));
    map
}
