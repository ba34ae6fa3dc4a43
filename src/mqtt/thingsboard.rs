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
use crate::domain::{Error, Result};
use crate::services::Core;
use crate::services::devices::{self, CheckinReport, Offer, ProvisionRequest};
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

/// What a PUBLISH adds to its topic and payload, rounded up: the fixed header (at most 5
/// bytes), the topic's length, the packet id, and the properties the broker may add (MQTT 5:
/// message expiry, topic alias). A firmware chunk is sent only when payload + topic + this
/// fits the session's packet limit, so no packet is ever too big for the device to take.
pub const PUBLISH_OVERHEAD: usize = 32;

pub struct ThingsBoard {
    core: Core,
    scx: ServerContext,
    /// `UPDRAFT_MQTT_MAX_PACKET_BYTES`.
    max_packet: usize,
    /// Devices with a ThingsBoard-style session (subscribed to `v1/devices/me/attributes`):
    /// firmware offers are pushed to them as shared attributes.
    sessions: Mutex<HashMap<String, ClientId>>,
    /// The chunk size each firmware request id asked for, per session.
    chunk_sizes: Mutex<HashMap<ClientId, HashMap<u64, usize>>>,
    /// The shared attributes (effective configuration) each session was last told, per
    /// device with a session: a configuration change sends only the keys that changed.
    shared: Mutex<HashMap<String, Map<String, Value>>>,
    /// Server-side RPCs awaiting their reply, per device: request number → command id.
    rpc: Mutex<HashMap<String, PendingRpc>>,
    /// The attempt whose `fw_*` attributes each session was last told (pushed, or in the answer
    /// to its own attribute request): the SDK starts a download for every such message, so
    /// the same offer is never announced twice.
    announced: Mutex<HashMap<String, String>>,
}

/// A device's server-side RPCs: the next request number and those awaiting a reply (at most
/// [`MAX_PENDING_RPC`]; the oldest is forgotten first, and times out as a command).
#[derive(Default)]
struct PendingRpc {
    next: u64,
    waiting: std::collections::BTreeMap<u64, String>,
}

const MAX_PENDING_RPC: usize = 64;

/// The [`DeviceRpc`](crate::services::outbox::DeviceRpc) port over ThingsBoard sessions.
pub struct Rpc(pub Arc<ThingsBoard>);

impl crate::services::outbox::DeviceRpc for Rpc {
    fn send(&self, device_id: &str, command_id: &str, method: &str, params: &Value) -> futures::future::BoxFuture<'static, bool> {
        let (tb, device_id, command_id) = (self.0.clone(), device_id.to_string(), command_id.to_string());
        let payload = json!({"method": method, "params": params}).to_string();
        Box::pin(async move {
            let Some(client_id) = tb.sessions.lock().expect("tb lock").get(&device_id).cloned() else { return false };
            let n = {
                let mut rpc = tb.rpc.lock().expect("tb lock");
                let pending = rpc.entry(device_id).or_default();
                pending.next += 1;
                let n = pending.next;
                if pending.waiting.len() >= MAX_PENDING_RPC {
                    pending.waiting.pop_first();
                }
                pending.waiting.insert(n, command_id);
                n
            };
            tb.send(&client_id, format!("v1/devices/me/rpc/request/{n}"), Bytes::from(payload)).await;
            true
        })
    }
}

impl ThingsBoard {
    pub fn new(core: Core, scx: ServerContext, max_packet: usize) -> Arc<ThingsBoard> {
        Arc::new(ThingsBoard {
            core,
            scx,
            max_packet,
            sessions: Mutex::default(),
            chunk_sizes: Mutex::default(),
            shared: Mutex::default(),
            rpc: Mutex::default(),
            announced: Mutex::default(),
        })
    }

    /// A device subscribed to one of the ThingsBoard topics. Its shared attributes as they
    /// are now are what later changes are compared with.
    pub async fn subscribed(&self, device_id: &str, client_id: &ClientId, filter: &str) {
        if filter == "v1/devices/me/attributes" {
            let baseline = match self.shared_attributes(device_id).await {
                Ok(map) => map,
                Err(e) => {
                    tracing::warn!(device_id, error = %e, "cannot read a ThingsBoard session's shared attributes");
                    Map::new()
                }
            };
            self.shared.lock().expect("tb lock").insert(device_id.to_string(), baseline);
            self.sessions.lock().expect("tb lock").insert(device_id.to_string(), client_id.clone());
        }
    }

    pub fn disconnected(&self, device_id: Option<&str>, client_id: &ClientId) {
        if let Some(device_id) = device_id {
            let mut sessions = self.sessions.lock().expect("tb lock");
            if sessions.get(device_id) == Some(client_id) {
                sessions.remove(device_id);
                self.shared.lock().expect("tb lock").remove(device_id);
                self.rpc.lock().expect("tb lock").remove(device_id);
                self.announced.lock().expect("tb lock").remove(device_id);
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
            let told = self.announced.lock().expect("tb lock").insert(device_id.to_string(), offer.attempt_id.to_string());
            if told.as_deref() == Some(&*offer.attempt_id) {
                return;
            }
            let attributes = Value::Object(crate::services::thingsboard::firmware_attributes(&offer.artifact));
            self.send(&client_id, "v1/devices/me/attributes".into(), Bytes::from(attributes.to_string())).await;
        }
    }

    /// The device's configuration changed: its ThingsBoard session gets the shared attributes
    /// that changed on `v1/devices/me/attributes`, and the removed ones as
    /// `{"deleted": [...]}` (as ThingsBoard sends them).
    pub async fn push_config(&self, device_id: &str) -> Result<()> {
        let Some(client_id) = self.sessions.lock().expect("tb lock").get(device_id).cloned() else { return Ok(()) };
        let current = self.shared_attributes(device_id).await?;
        let previous = self.shared.lock().expect("tb lock").insert(device_id.to_string(), current.clone()).unwrap_or_default();
        let changed: Map<String, Value> =
            current.iter().filter(|(k, v)| previous.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let deleted: Vec<&String> = previous.keys().filter(|k| !current.contains_key(*k)).collect();
        if !changed.is_empty() {
            self.send(&client_id, "v1/devices/me/attributes".into(), Bytes::from(Value::Object(changed).to_string())).await;
        }
        if !deleted.is_empty() {
            self.send(&client_id, "v1/devices/me/attributes".into(), Bytes::from(json!({ "deleted": deleted }).to_string())).await;
        }
        Ok(())
    }

    /// A device's shared attributes: its effective configuration, secrets revealed (it is the
    /// device's own).
    async fn shared_attributes(&self, device_id: &str) -> Result<Map<String, Value>> {
        crate::services::thingsboard::shared_attributes(&self.core, device_id).await
    }

    /// Handles a device's publish on a ThingsBoard topic. `max_packet` is the Maximum Packet
    /// Size the session sent in its CONNECT (MQTT 5), if any. Errors are logged by the caller.
    pub async fn on_device_publish(
        &self,
        device_id: &str,
        client_id: &ClientId,
        max_packet: Option<u32>,
        topic: &str,
        payload: &[u8],
    ) -> Result<()> {
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
                        "maxPayloadSize": self.max_packet,
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
            // The reply to a server-side RPC (a command): completes it.
            ["v1", "devices", "me", "rpc", "response", n] => {
                let n = n.parse::<u64>().map_err(|_| Error::invalid("invalid_topic", "the RPC request id is a number"))?;
                let command_id = self.rpc.lock().expect("tb lock").get_mut(device_id).and_then(|p| p.waiting.remove(&n));
                let Some(command_id) = command_id else {
                    return Err(Error::not_found("RPC request", n.to_string()));
                };
                if payload.len() > 64 * 1024 {
                    return Err(Error::invalid("invalid_message", "the RPC reply is larger than 64 KiB"));
                }
                let reply =
                    serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
                crate::services::commands::complete_rpc(&self.core, &crate::domain::DeviceId::from(device_id), &command_id, reply)
                    .await
                    .map(drop)
            }
            ["v1", "devices", "me", "claim"] => Ok(()),
            ["v2", "fw" | "sw", "request", rid, "chunk", chunk] => {
                let limit = max_packet.map_or(self.max_packet, |m| (m as usize).min(self.max_packet));
                self.chunk(&device, client_id, limit, levels[1], rid, chunk, payload).await
            }
            _ => Err(Error::invalid("invalid_topic", format!("`{topic}` is not a ThingsBoard device topic"))),
        }
    }

    /// Telemetry in any of ThingsBoard's shapes; `fw_state` reports drive the update history.
    async fn telemetry(&self, device: &Arc<ActiveDevice>, payload: &[u8]) -> Result<()> {
        crate::services::thingsboard::telemetry(&self.core, device, parse_json(payload)?).await
    }

    /// `{"clientKeys": "a,b", "sharedKeys": "c,d"}` → `{"client": {...}, "shared": {...}}`.
    async fn attribute_request(&self, device: Arc<ActiveDevice>, client_id: &ClientId, n: &str, payload: &[u8]) -> Result<()> {
        let request = parse_json(payload)?;
        let keys = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_string);
        let answer = crate::services::thingsboard::attributes(
            &self.core,
            device.clone(),
            keys("clientKeys").as_deref(),
            keys("sharedKeys").as_deref(),
        )
        .await?;
        if self.has_session(&device.id) {
            self.shared.lock().expect("tb lock").insert(device.id.to_string(), answer.configuration);
            if let Some(attempt) = answer.announced_attempt {
                self.announced.lock().expect("tb lock").insert(device.id.to_string(), attempt);
            }
        }
        self.send(client_id, format!("v1/devices/me/attributes/response/{n}"), Bytes::from(answer.body.to_string())).await;
        Ok(())
    }

    /// `v2/fw/request/{rid}/chunk/{n}` with the chunk size as ASCII (empty: the size this
    /// request id used before, else the whole image) → `v2/fw/response/{rid}/chunk/{n}`.
    /// A chunk whose packet would exceed `limit` (the smaller of `UPDRAFT_MQTT_MAX_PACKET_BYTES`
    /// and the session's own Maximum Packet Size) is answered `PAYLOAD_TOO_LARGE` on
    /// `v2/fw/error`, as ThingsBoard does, rather than sent and dropped on the way.
    #[allow(clippy::too_many_arguments, reason = "one request's parts, taken apart by the caller's topic match")]
    async fn chunk(
        &self,
        device: &ActiveDevice,
        client_id: &ClientId,
        limit: usize,
        kind: &str,
        rid: &str,
        chunk: &str,
        payload: &[u8],
    ) -> Result<()> {
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
        let (start, end) = chunk_bounds(total, size, chunk);
        let topic = format!("v2/{kind}/response/{rid}/chunk/{chunk}");
        if (end - start) as usize + topic.len() + PUBLISH_OVERHEAD > limit {
            self.send(client_id, error_topic, Bytes::from_static(b"PAYLOAD_TOO_LARGE")).await;
            return Err(Error::invalid(
                "payload_too_large",
                format!(
                    "a chunk of {} bytes does not fit the session's packet limit of {limit} bytes (chunk + topic + {PUBLISH_OVERHEAD})",
                    end - start
                ),
            ));
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
        self.send(client_id, topic, data).await;
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

/// The bytes `start..end` of a build of `total` bytes that chunk `chunk` of `size` bytes
/// covers (both from the device); size 0 is the whole image as chunk 0, nothing after it.
pub(crate) fn chunk_bounds(total: u64, size: usize, chunk: u64) -> (u64, u64) {
    if size == 0 {
        (if chunk == 0 { 0 } else { total }, total)
    } else {
        let start = (size as u64).saturating_mul(chunk).min(total);
        (start, start.saturating_add(size as u64).min(total))
    }
}

pub(crate) fn parse_json(payload: &[u8]) -> Result<Value> {
    if payload.len() > 64 * 1024 {
        return Err(Error::invalid("invalid_message", "the message is larger than 64 KiB"));
    }
    serde_json::from_slice(payload).map_err(|e| Error::invalid("invalid_message", format!("the message is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use crate::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The properties of `crate::fuzzing` (shared with `fuzz/`).
        #[test]
        fn a_firmware_chunk_lies_inside_the_build(total in any::<u64>(), size in any::<usize>(), chunk in any::<u64>()) {
            fuzzing::chunk_bounds(total, size, chunk);
        }

        #[test]
        fn every_payload_decoder_agrees_and_stays_bounded(
            payload in prop_oneof![
                "[ \"]?(online|OFFLINE|Done|flashing|idle|failed|up|0|1)[ \"]?",
                "\\{\"(online|state|status)\": ?(true|false|\"online\"|\"down\"|1)\\}",
                "\\{\"state\":\"(installing|failed)\"(,\"progress\":[0-9]{1,3})?(,\"extra\":1)?\\}",
                "[0-9 ]{0,22}",
                "\\PC{0,40}",
            ],
        ) {
            fuzzing::mqtt_payload(payload.as_bytes());
        }
    }

    #[test]
    fn a_chunk_size_near_the_usize_limit_ends_at_the_build_s_end() {
        // Found by the `mqtt_payload` property: a device asking for chunk 1 of
        // 18446744073709551615 bytes made `start + size` overflow (a panic in the broker's hook,
        // or a wrapped, empty chunk in release builds).
        assert_eq!(super::chunk_bounds(1000, usize::MAX, 1), (1000, 1000));
        assert_eq!(super::chunk_bounds(1000, usize::MAX, 0), (0, 1000));
        assert_eq!(super::chunk_bounds(u64::MAX, usize::MAX, 1), (u64::MAX, u64::MAX));
    }

    #[test]
    fn a_payload_over_64_kib_is_refused_by_every_decoder() {
        let mut big = b"{\"state\":\"installing\",\"message\":\"".to_vec();
        big.resize(64 * 1024 + 1, b'a');
        big.extend(b"\"}");
        fuzzing::mqtt_payload(&big);
    }
}
