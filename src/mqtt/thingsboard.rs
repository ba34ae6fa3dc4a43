//! The ThingsBoard device API over MQTT, as `tb-mqtt-client` (and seed 004's devices) speak
//! it: telemetry, client attributes, attribute requests, device RPC, provisioning and the
//! chunked firmware download. Embedded broker only: every device uses the same topic names
//! (`v1/devices/me/...`), so answers must go to the asking session whatever it subscribed to,
//! which only the broker itself can do. The broker hook hands every such publish here
//! instead of routing it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::context::ServerContext;
use rmqtt::session::SessionState;
use rmqtt::types::{ClientId, From, Id, Publish, QoS};
use serde_json::{Map, Value, json};

use crate::domain::device::DeviceKey;
use crate::domain::firmware::Artifact;
use crate::domain::{Error, Result};
use crate::services::Core;
use crate::services::config as config_service;
use crate::services::devices::{self, CheckinReport, Offer, ProvisionRequest, StatusReport};
use crate::services::fleet::ActiveDevice;

/// Topics of the per-session ThingsBoard API that a device may subscribe to.
pub fn device_filter(filter: &str) -> bool {
    filter == "v1/devices/me/attributes"
        || filter.starts_with("v1/devices/me/attributes/response/")
        || filter.starts_with("v1/devices/me/rpc/request/")
        || filter.starts_with("v1/devices/me/rpc/response/")
        || filter.starts_with("v2/fw/response/")
        || filter.starts_with("v2/sw/response/")
        || filter == "v2/fw/error"
}

/// Topics a device publishes to the ThingsBoard API (answered here, never routed).
pub fn device_topic(topic: &str) -> bool {
    topic.starts_with("v1/devices/me/") || topic.starts_with("v2/fw/request/") || topic.starts_with("v2/sw/request/")
}

pub const PROVISION_REQUEST: &str = "/provision/request";
pub const PROVISION_RESPONSE: &str = "/provision/response";

pub struct ThingsBoard {
    core: Core,
    scx: ServerContext,
    max_payload: usize,
    /// Devices with a ThingsBoard-style session (subscribed to `v1/devices/me/attributes`):
    /// firmware offers are pushed to them as shared attributes.
    sessions: Mutex<HashMap<String, ClientId>>,
    /// The chunk size each firmware request id asked for, per session.
    chunk_sizes: Mutex<HashMap<ClientId, HashMap<u64, usize>>>,
}

impl ThingsBoard {
    pub fn new(core: Core, scx: ServerContext, max_payload: usize) -> Arc<ThingsBoard> {
        Arc::new(ThingsBoard { core, scx, max_payload, sessions: Mutex::default(), chunk_sizes: Mutex::default() })
    }

    /// A device subscribed to one of the ThingsBoard topics.
    pub fn subscribed(&self, device_id: &str, client_id: &ClientId, filter: &str) {
        if filter == "v1/devices/me/attributes" {
            self.sessions.lock().expect("tb lock").insert(device_id.to_string(), client_id.clone());
        }
    }

    pub fn disconnected(&self, device_id: Option<&str>, client_id: &ClientId) {
        if let Some(device_id) = device_id {
            let mut sessions = self.sessions.lock().expect("tb lock");
            if sessions.get(device_id) == Some(client_id) {
                sessions.remove(device_id);
            }
        }
        self.chunk_sizes.lock().expect("tb lock").remove(client_id);
    }

    pub fn has_session(&self, device_id: &str) -> bool {
        self.sessions.lock().expect("tb lock").contains_key(device_id)
    }

    /// Pushes a new offer to a ThingsBoard-style session as shared attributes (all `fw_*`
    /// keys in one message: the SDK needs `fw_size` with the rest).
    pub async fn push_offer(&self, device_id: &str, offer: &Offer) {
        let client_id = self.sessions.lock().expect("tb lock").get(device_id).cloned();
        if let Some(client_id) = client_id {
            let attributes = Value::Object(firmware_attributes(&offer.artifact));
            self.send(&client_id, "v1/devices/me/attributes".into(), Bytes::from(attributes.to_string())).await;
        }
    }

    /// Handles a device's publish on a ThingsBoard topic. Errors are logged by the caller.
    pub async fn on_device_publish(&self, device_id: &str, client_id: &ClientId, topic: &str, payload: &[u8]) -> Result<()> {
        let device = devices::active_by_id(&self.core, device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
        let levels: Vec<&str> = topic.split('/').collect();
        match levels.as_slice() {
            ["v1", "devices", "me", "telemetry"] => self.telemetry(&device, payload).await,
            ["v1", "devices", "me", "attributes"] => {
                let value = parse_json(payload)?;
                if !value.is_object() {
                    return Err(Error::invalid("invalid_message", "client attributes are a JSON object"));
                }
                devices::checkin(&self.core, device, CheckinReport { attributes: Some(value), ..Default::default() }, None).await?;
                Ok(())
            }
            ["v1", "devices", "me", "attributes", "request", n] => self.attribute_request(device, client_id, n, payload).await,
            ["v1", "devices", "me", "rpc", "request", n] => {
                let request = parse_json(payload)?;
                let answer = match request.get("method").and_then(Value::as_str) {
                    Some("getSessionLimits") => json!({
                        "maxPayloadSize": self.max_payload,
                        "maxInflightMessages": 100,
                        "rateLimits": {"messages": "0:0,", "telemetryMessages": "0:0,", "telemetryDataPoints": "0:0,"},
                    }),
                    Some("getCurrentTime") => json!({"currentTime": chrono::Utc::now().timestamp_millis()}),
                    Some(other) => json!({"error": format!("Unsupported method: {other}")}),
                    None => json!({"error": "a request needs a `method`"}),
                };
                self.send(client_id, format!("v1/devices/me/rpc/response/{n}"), Bytes::from(answer.to_string())).await;
                Ok(())
            }
            // Answers to server-side RPC: Updraft sends commands on `updraft/{id}/cmd` only.
            ["v1", "devices", "me", "rpc", "response", _] | ["v1", "devices", "me", "claim"] => Ok(()),
            ["v2", "fw" | "sw", "request", rid, "chunk", chunk] => self.chunk(&device, client_id, levels[1], rid, chunk, payload).await,
            _ => Err(Error::invalid("invalid_topic", format!("`{topic}` is not a ThingsBoard device topic"))),
        }
    }

    /// Telemetry in any of ThingsBoard's shapes; `fw_state` reports drive the update history.
    async fn telemetry(&self, device: &Arc<ActiveDevice>, payload: &[u8]) -> Result<()> {
        let value = parse_json(payload)?;
        let mut flat = Map::new();
        let mut absorb = |item: &Value| {
            let values = item.get("values").filter(|_| item.get("ts").is_some()).unwrap_or(item);
            if let Some(object) = values.as_object() {
                flat.extend(object.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        };
        match &value {
            Value::Array(items) => items.iter().for_each(&mut absorb),
            other => absorb(other),
        }
        if flat.is_empty() {
            return Err(Error::invalid("invalid_message", "telemetry is an object, an array of objects, or {ts, values}"));
        }
        devices::record_telemetry(&self.core, device, Value::Object(flat.clone()));
        let Some(state) = flat.get("fw_state").and_then(Value::as_str) else {
            return Ok(());
        };
        let Some(attempt) = devices::current_attempt(&self.core, &device.id).await? else {
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
            "DOWNLOADING" => devices::report_update(&self.core, device, report("downloading", None)).await.map(drop),
            "DOWNLOADED" | "VERIFIED" => devices::report_update(&self.core, device, report("downloaded", None)).await.map(drop),
            "UPDATING" => devices::report_update(&self.core, device, report("installing", None)).await.map(drop),
            "UPDATED" => {
                devices::report_update(&self.core, device, report("installed", None)).await?;
                // Success needs the device to say what it runs, as everywhere.
                if let Some(version) = flat.get("current_fw_version").and_then(Value::as_str) {
                    devices::checkin(
                        &self.core,
                        device.clone(),
                        CheckinReport { version: Some(version.to_string()), ..Default::default() },
                        None,
                    )
                    .await?;
                }
                Ok(())
            }
            "FAILED" => {
                let message = flat.get("fw_error").and_then(Value::as_str).unwrap_or("the device reported FAILED").to_string();
                devices::report_update(&self.core, device, report("failed", Some(message))).await.map(drop)
            }
            _ => Ok(()),
        }
    }

    /// `{"clientKeys": "a,b", "sharedKeys": "c,d"}` → `{"client": {...}, "shared": {...}}`.
    /// Shared attributes are the effective configuration plus the pending firmware offer.
    async fn attribute_request(&self, device: Arc<ActiveDevice>, client_id: &ClientId, n: &str, payload: &[u8]) -> Result<()> {
        let request = parse_json(payload)?;
        let keys = |name: &str| -> Option<Vec<String>> {
            request
                .get(name)
                .and_then(Value::as_str)
                .map(|list| list.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect())
        };
        let (client_keys, shared_keys) = (keys("clientKeys"), keys("sharedKeys"));
        let stored = devices::find_by_id(&self.core, &device.id).await?.ok_or_else(|| Error::not_found("device", &*device.id))?;
        let mut shared = match config_service::reveal(&self.core, &config_service::effective(&self.core, &stored).await?.merged.content)? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let answer = devices::checkin(&self.core, device.clone(), CheckinReport::default(), None).await?;
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
        if shared_keys.is_some() || client_keys.is_none() {
            body.insert("shared".into(), Value::Object(pick(shared, &shared_keys)));
        }
        self.send(client_id, format!("v1/devices/me/attributes/response/{n}"), Bytes::from(Value::Object(body).to_string())).await;
        Ok(())
    }

    /// `v2/fw/request/{rid}/chunk/{n}` with the chunk size as ASCII (empty: the size this
    /// request id used before, else the whole image) → `v2/fw/response/{rid}/chunk/{n}`.
    async fn chunk(&self, device: &ActiveDevice, client_id: &ClientId, kind: &str, rid: &str, chunk: &str, payload: &[u8]) -> Result<()> {
        let (Ok(rid), Ok(chunk)) = (rid.parse::<u64>(), chunk.parse::<u64>()) else {
            return Err(Error::invalid("invalid_topic", "request id and chunk are numbers"));
        };
        let error_topic = format!("v2/{kind}/error");
        let asked = std::str::from_utf8(payload).ok().map(str::trim).filter(|t| !t.is_empty()).map(|t| t.parse::<usize>());
        let size = {
            let mut sizes = self.chunk_sizes.lock().expect("tb lock");
            let session = sizes.entry(client_id.clone()).or_default();
            match asked {
                Some(Ok(size)) => {
                    if session.len() >= 64 {
                        session.clear();
                    }
                    session.insert(rid, size);
                    size
                }
                Some(Err(_)) => return Err(Error::invalid("invalid_message", "the chunk size is a decimal number")),
                None => session.get(&rid).copied().unwrap_or(0),
            }
        };
        let Some(artifact) = devices::pending_build(&self.core, &device.id).await? else {
            self.send(client_id, error_topic, Bytes::from_static(b"NOT_FOUND")).await;
            return Ok(());
        };
        let total = artifact.size;
        let (start, end) = if size == 0 {
            (if chunk == 0 { 0 } else { total }, total)
        } else {
            let start = (size as u64).saturating_mul(chunk).min(total);
            (start, (start + size as u64).min(total))
        };
        if (end - start) as usize + 128 > self.max_payload {
            self.send(client_id, error_topic, Bytes::from_static(b"PAYLOAD_TOO_LARGE")).await;
            return Err(Error::invalid("payload_too_large", format!("a chunk of {} bytes exceeds the packet limit", end - start)));
        }
        let data = if start < end {
            let stream = self.core.blobs.read(&artifact.blob_key, artifact.size, start..end).await?;
            stream
                .try_fold(BytesMut::with_capacity((end - start) as usize), |mut all, part| async move {
                    all.extend_from_slice(&part);
                    Ok(all)
                })
                .await
                .map_err(|e| Error::Internal(anyhow::anyhow!("cannot read build {}: {e}", artifact.id)))?
                .freeze()
        } else {
            Bytes::new()
        };
        self.send(client_id, format!("v2/{kind}/response/{rid}/chunk/{chunk}"), data).await;
        Ok(())
    }

    /// TB provisioning: `{"provisionDeviceKey", "provisionDeviceSecret", "deviceName"}`, the
    /// device name being its MAC → `{"status":"SUCCESS","credentialsType":"ACCESS_TOKEN",
    /// "credentialsValue": <token>}`, or `{"status":"FAILURE","errorMsg":...}`.
    pub async fn provision(&self, client_id: &ClientId, ip: Option<std::net::IpAddr>, payload: &[u8]) {
        let answer = match self.try_provision(ip, payload).await {
            Ok(token) => json!({"status": "SUCCESS", "credentialsType": "ACCESS_TOKEN", "credentialsValue": token}),
            Err(e) => {
                tracing::info!(error = %e, "ThingsBoard provisioning refused");
                json!({"status": "FAILURE", "errorMsg": e.to_string()})
            }
        };
        self.send(client_id, PROVISION_RESPONSE.into(), Bytes::from(answer.to_string())).await;
    }

    async fn try_provision(&self, ip: Option<std::net::IpAddr>, payload: &[u8]) -> Result<String> {
        let request = parse_json(payload)?;
        let text = |k: &str| request.get(k).and_then(Value::as_str).map(str::to_string);
        let name = text("deviceName")
            .ok_or_else(|| Error::invalid("missing_device_name", "deviceName (the device's MAC address or unique name) is required"))?;
        let key = DeviceKey::parse(&name).map_err(|_| {
            Error::invalid("invalid_device_name", "deviceName must be a MAC address or a name of 1-128 letters, digits or `._-:@~`")
        })?;
        let provisioned = devices::provision(
            &self.core,
            ProvisionRequest {
                device: key,
                product: None,
                hardware: None,
                version: None,
                provision_key: text("provisionDeviceKey"),
                provision_secret: text("provisionDeviceSecret"),
                name: Some(name),
                current_token: None,
                pair_key: None,
            },
            ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
        )
        .await?;
        Ok(provisioned.token)
    }

    /// Delivers to one session, whatever it subscribed to (as ThingsBoard does).
    async fn send(&self, client_id: &ClientId, topic: String, payload: Bytes) {
        let publish = Publish::from(CodecPublish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: None,
            payload,
            properties: None,
        })
        .target_clientid(client_id.clone());
        let from = From::from_system(Id::new(self.scx.node.id(), 0, None, None, "$updraft-thingsboard".into(), None));
        if let Err(e) = SessionState::forwards(&self.scx, from, publish, false, None).await {
            tracing::warn!(error = %e, "cannot answer a ThingsBoard-style session");
        }
        metrics::counter!("updraft_mqtt_pushes_total", "kind" => "thingsboard").increment(1);
    }
}

/// The shared attributes announcing a build (checksum lowercase SHA-256, as the SDK compares).
fn firmware_attributes(artifact: &Artifact) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("fw_title".into(), json!(artifact.product));
    map.insert("fw_version".into(), json!(artifact.version));
    map.insert("fw_size".into(), json!(artifact.size));
    map.insert("fw_checksum".into(), json!(artifact.sha256.to_ascii_lowercase()));
    map.insert("fw_checksum_algorithm".into(), json!("SHA256"));
    map
}

fn parse_json(payload: &[u8]) -> Result<Value> {
    if payload.len() > 64 * 1024 {
        return Err(Error::invalid("invalid_message", "the message is larger than 64 KiB"));
    }
    serde_json::from_slice(payload).map_err(|e| Error::invalid("invalid_message", format!("the message is not JSON: {e}")))
}
