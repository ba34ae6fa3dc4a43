//! Server → device messages: the retained `ota` offer and `config` of every connected
//! device, kept equal to what a check-in would answer; the seed-000 firmware publish; and
//! the seed-003 notifications. Follows the event bus: a release, rollout change, pin or new
//! build re-evaluates the connected devices concerned, and only those whose answer changed
//! get a message.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::bus::Bus;
use crate::domain::Result;
use crate::domain::mqtt;
use crate::services::Core;
use crate::services::config as config_service;
use crate::services::devices::{self, CheckinAnswer, CheckinReport};
use crate::services::events::DeviceChange;
use crate::services::events::Event;
use crate::services::fleet::ActiveDevice;

/// Offers published at once during a resync.
const RESYNC_CONCURRENCY: usize = 64;
/// Devices re-evaluated together (one batch of database reads and writes).
const RESYNC_BATCH: usize = 500;

/// The `ota` message: the same JSON as the HTTP check-in answer.
#[derive(Serialize)]
struct OtaMessage {
    update: OtaOffer,
    poll_interval_s: u32,
}

#[derive(Serialize)]
struct OtaOffer {
    version: String,
    url: String,
    size: u64,
    sha256: String,
    md5: String,
    release_id: String,
    mandatory: bool,
}

/// A seed-000 device: the MAC as its topics spell it, and the update last sent to it.
#[derive(Clone, Default)]
struct Legacy {
    mac_text: String,
    sent_attempt: Option<String>,
}

pub struct Pusher {
    pub core: Core,
    pub bus: Bus,
    base_url: String,
    max_packet_bytes: usize,
    /// Digests of the retained `ota`/`config` payloads last published per device (this replica).
    last_ota: Mutex<HashMap<Arc<str>, u64>>,
    last_config: Mutex<HashMap<Arc<str>, u64>>,
    legacy: Mutex<HashMap<Arc<str>, Legacy>>,
    /// The embedded broker's ThingsBoard API: offers go to those sessions as shared attributes.
    tb: Option<Arc<super::thingsboard::ThingsBoard>>,
}

impl Pusher {
    pub fn new(
        core: Core,
        bus: Bus,
        base_url: String,
        max_packet_bytes: usize,
        tb: Option<Arc<super::thingsboard::ThingsBoard>>,
    ) -> Pusher {
        Pusher {
            core,
            bus,
            base_url,
            max_packet_bytes,
            last_ota: Mutex::default(),
            last_config: Mutex::default(),
            legacy: Mutex::default(),
            tb,
        }
    }

    /// Re-evaluates a device's offer (what a check-in without news would answer) and publishes
    /// it if it changed. The server's own re-evaluation: unlike a check-in, it does not count
    /// as hearing from the device (a connection sync running after a quick disconnect must
    /// not mark the device online again).
    pub async fn sync_offer(&self, device: Arc<ActiveDevice>, force: bool) -> Result<()> {
        let Some(answer) = devices::offers_for(&self.core, std::slice::from_ref(&device)).await?.pop() else {
            return Ok(());
        };
        self.publish_offer(&device, answer, force).await
    }

    /// [`Pusher::sync_offer`] when the device connects or reports: a ThingsBoard session is not
    /// told of an offer this opens, as it asks for its firmware attributes itself when it
    /// connects (the SDK starts a download for every announcement; ThingsBoard pushes shared
    /// attributes only when operators change them).
    async fn sync_offer_unannounced(&self, device: Arc<ActiveDevice>, force: bool) -> Result<()> {
        let Some(answer) = devices::offers_for(&self.core, std::slice::from_ref(&device)).await?.pop() else {
            return Ok(());
        };
        self.publish(&device, answer, force, false).await
    }

    /// Publishes the decision of a check-in as the device's retained `ota` (empty: none).
    pub async fn publish_offer(&self, device: &ActiveDevice, answer: CheckinAnswer, force: bool) -> Result<()> {
        self.publish(device, answer, force, true).await
    }

    /// [`Pusher::publish_offer`]; `announce`: a ThingsBoard session is told of a changed offer.
    async fn publish(&self, device: &ActiveDevice, answer: CheckinAnswer, force: bool, announce: bool) -> Result<()> {
        let legacy = self.legacy.lock().expect("legacy lock").get(&device.id).cloned();
        let payload = match &answer.offer {
            Some(offer) => {
                let artifact = &offer.artifact;
                let signed = devices::sign_download(&self.core, &artifact.id, &device.id);
                let message = OtaMessage {
                    update: OtaOffer {
                        version: artifact.version.clone(),
                        url: format!("{}/api/v1/device/firmware/{}?{signed}", self.base_url, artifact.id),
                        size: artifact.size,
                        sha256: artifact.sha256.clone(),
                        md5: artifact.md5.clone(),
                        release_id: offer.release_id.clone(),
                        mandatory: offer.mandatory,
                    },
                    poll_interval_s: answer.poll_interval_s,
                };
                Bytes::from(serde_json::to_vec(&message).expect("serializable"))
            }
            None => Bytes::new(),
        };
        // The signed URL changes with its expiry: compare what the offer is, not its bytes.
        let identity = answer.offer.as_ref().map(|o| (o.attempt_id.clone(), o.artifact.id.clone(), o.mandatory, answer.poll_interval_s));
        let digest = digest_of(&identity);
        let changed = self.last_ota.lock().expect("last lock").insert(device.id.clone(), digest) != Some(digest);
        if changed || force {
            self.bus.publish(mqtt::ota_topic(&device.id), payload, true).await?;
            metrics::counter!("updraft_mqtt_pushes_total", "kind" => "ota").increment(1);
            // ThingsBoard sessions hear of an offer when it changes, never again at (re)connection
            // (ThingsBoard pushes shared attributes on change only, and its clients ask for them
            // when they connect): the SDK starts a download for each announcement.
            if let (Some(tb), Some(offer)) = (&self.tb, &answer.offer)
                && changed
                && announce
                && tb.has_session(&device.id)
            {
                tb.push_offer(&device.id, offer).await;
            }
        }
        if let (Some(legacy), Some(offer)) = (legacy, &answer.offer)
            && legacy.sent_attempt.as_deref() != Some(offer.attempt_id.as_str())
        {
            self.send_legacy_firmware(device, &legacy.mac_text, offer).await?;
        }
        Ok(())
    }

    /// Publishes a device's effective configuration as its retained `config`, if it changed.
    pub async fn sync_config(&self, device_id: &str, force: bool) -> Result<()> {
        let Some(device) = devices::find_by_id(&self.core, device_id).await? else {
            return Ok(());
        };
        let effective = config_service::effective(&self.core, &device).await?;
        if effective.layers.is_empty() && !self.last_config.lock().expect("last lock").contains_key(device_id) {
            // No configuration applies and none was sent: nothing to retain for this device.
            return Ok(());
        }
        let content = config_service::reveal(&self.core, &effective.merged.content)?;
        let message = json!({"version": effective.version, "config": content});
        let digest = digest_of(&effective.version);
        let id: Arc<str> = Arc::from(device_id);
        let changed = self.last_config.lock().expect("last lock").insert(id, digest) != Some(digest);
        if changed || force {
            self.bus.publish(mqtt::config_topic(device_id), Bytes::from(message.to_string()), true).await?;
            metrics::counter!("updraft_mqtt_pushes_total", "kind" => "config").increment(1);
        }
        Ok(())
    }

    /// Everything a device needs when it connects: its offer and its configuration.
    pub async fn device_connected(&self, device: Arc<ActiveDevice>) {
        if let Err(e) = self.sync_offer_unannounced(device.clone(), true).await {
            tracing::warn!(device_id = %device.id, error = %e, "cannot publish a connected device's offer");
        }
        if let Err(e) = self.sync_config(&device.id, true).await {
            tracing::warn!(device_id = %device.id, error = %e, "cannot publish a connected device's configuration");
        }
    }

    pub fn device_disconnected(&self, device_id: &str) {
        // Retained messages stay with the broker; forgetting what was sent makes the next
        // connection republish (a restarted external broker may have lost them).
        self.last_ota.lock().expect("last lock").remove(device_id);
        self.last_config.lock().expect("last lock").remove(device_id);
    }

    /// Re-evaluates every connected device (of `product`, when given), [`RESYNC_BATCH`]
    /// devices at a time: their offers are decided with batched IO
    /// ([`devices::offers_for`]), then published.
    pub async fn resync(&self, product: Option<&str>, force: bool) {
        let ids = self.core.devices.connected_devices();
        let started = std::time::Instant::now();
        let mut selected = Vec::with_capacity(ids.len());
        for id in ids {
            match devices::active_by_id(&self.core, &id).await {
                Ok(Some(device)) if product.is_none() || device.product.as_deref() == product => selected.push(device),
                Ok(_) => {}
                Err(e) => tracing::warn!(device_id = %id, error = %e, "cannot read a connected device"),
            }
        }
        let count = selected.len();
        // A pipeline: batch k's offers are published while batch k + 1 is decided.
        let mut decided: Option<(&[Arc<ActiveDevice>], Vec<CheckinAnswer>)> = None;
        for chunk in selected.chunks(RESYNC_BATCH) {
            let previous = decided.take();
            let (answers, ()) = tokio::join!(devices::offers_for(&self.core, chunk), async {
                if let Some((devices, answers)) = previous {
                    self.publish_offers(devices, answers, force).await;
                }
            });
            match answers {
                Ok(answers) => decided = Some((chunk, answers)),
                Err(e) => tracing::warn!(devices = chunk.len(), error = %e, "cannot re-evaluate connected devices' offers"),
            }
        }
        if let Some((devices, answers)) = decided {
            self.publish_offers(devices, answers, force).await;
        }
        tracing::debug!(devices = count, elapsed_ms = started.elapsed().as_millis() as u64, "connected devices re-evaluated");
    }

    async fn publish_offers(&self, devices: &[Arc<ActiveDevice>], answers: Vec<CheckinAnswer>, force: bool) {
        futures::stream::iter(devices.iter().zip(answers))
            .for_each_concurrent(RESYNC_CONCURRENCY, |(device, answer)| async move {
                if let Err(e) = self.publish_offer(device, answer, force).await {
                    tracing::warn!(device_id = %device.id, error = %e, "cannot publish a connected device's offer");
                }
            })
            .await;
    }

    // ---- seed 000 ----

    /// A seed-000 device was heard from (`{mac}/keepalive`): remember how its topics spell
    /// its MAC, and send it its pending update.
    pub async fn legacy_heard(&self, device: Arc<ActiveDevice>, mac_text: &str) -> Result<()> {
        {
            let mut legacy = self.legacy.lock().expect("legacy lock");
            let entry = legacy.entry(device.id.clone()).or_default();
            entry.mac_text = mac_text.to_string();
        }
        let answer = devices::checkin(&self.core, device.clone(), CheckinReport::default(), None).await?;
        self.publish_offer(&device, answer, false).await
    }

    /// Publishes the build itself to `{mac}/firmware` (seed 000 carries images in MQTT).
    async fn send_legacy_firmware(&self, device: &ActiveDevice, mac_text: &str, offer: &devices::Offer) -> Result<()> {
        let artifact = &offer.artifact;
        // Remember first: one attempt is sent once, even if the device stays silent.
        if let Some(entry) = self.legacy.lock().expect("legacy lock").get_mut(&device.id) {
            entry.sent_attempt = Some(offer.attempt_id.clone());
        }
        let overhead = mac_text.len() + 64;
        if artifact.size as usize + overhead > self.max_packet_bytes {
            let reason = format!(
                "the build ({} bytes) does not fit in one MQTT packet (UPDRAFT_MQTT_MAX_PACKET_BYTES = {})",
                artifact.size, self.max_packet_bytes
            );
            tracing::warn!(device_id = %device.id, %reason, "seed-000 firmware not sent");
            return devices::refuse_offer(&self.core, &device.id, offer, &reason).await;
        }
        let stream = self.core.blobs.read(&artifact.blob_key, artifact.size, 0..artifact.size).await?;
        let image = stream
            .try_fold(BytesMut::with_capacity(artifact.size as usize), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .map_err(|e| crate::domain::Error::Internal(anyhow::anyhow!("cannot read build {}: {e}", artifact.id)))?;
        self.bus.publish(mqtt::legacy_firmware_topic(mac_text), image.freeze(), false).await?;
        metrics::counter!("updraft_mqtt_pushes_total", "kind" => "legacy_firmware").increment(1);
        tracing::info!(device_id = %device.id, version = %artifact.version, size = artifact.size, "seed-000 firmware published");
        Ok(())
    }

    /// Forgets what was sent to a seed-000 device, so that a new decision is sent again.
    pub fn legacy_reset(&self, device_id: &str) {
        if let Some(entry) = self.legacy.lock().expect("legacy lock").get_mut(device_id) {
            entry.sent_attempt = None;
        }
    }

    // ---- following events ----

    /// Runs until the event bus closes.
    pub async fn follow_events(self: Arc<Self>) {
        let mut events = self.core.events.subscribe_changes();
        loop {
            match events.recv().await {
                Ok(published) => self.on_event(&published.event).await,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "MQTT pushes fell behind the event stream; re-evaluating every connected device");
                    self.resync(None, false).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// What a change means for connected devices. Every event is named here (no catch-all),
    /// so that a new kind of event is a decision for this adapter too.
    async fn on_event(&self, event: &Event) {
        match event {
            Event::FirmwareChanged { product } | Event::ReleaseCreated { product, .. } | Event::ProductUpdated { product } => {
                self.resync(Some(product), false).await
            }
            Event::RolloutCreated { .. } | Event::RolloutTransition { .. } => self.resync(None, false).await,
            Event::DeviceUpdated { device_id, change } => {
                if self.core.devices.is_connected(device_id) {
                    match devices::active_by_id(&self.core, device_id).await {
                        Ok(Some(device)) => {
                            let synced = match change {
                                DeviceChange::Reported { .. } => self.sync_offer_unannounced(device, false).await,
                                DeviceChange::Operator { .. } => self.sync_offer(device, false).await,
                            };
                            if let Err(e) = synced {
                                tracing::warn!(%device_id, error = %e, "cannot re-evaluate a device's offer");
                            }
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(%device_id, error = %e, "cannot read a device"),
                    }
                }
            }
            Event::ConfigChanged(change) => {
                for id in change.devices.iter().filter(|id| self.core.devices.is_connected(id)) {
                    if let Err(e) = self.sync_config(id, false).await {
                        tracing::warn!(device_id = %id, error = %e, "cannot publish a device's configuration");
                    }
                    if let Some(tb) = self.tb.as_ref().filter(|tb| tb.has_session(id))
                        && let Err(e) = tb.push_config(id).await
                    {
                        tracing::warn!(device_id = %id, error = %e, "cannot push a device's shared attributes");
                    }
                }
                for mac in &change.seed003_files {
                    self.notify_seed003(mqtt::SEED003_CONFIG_TOPIC, &format!("{}.json", mac.hyphenated_lower())).await;
                }
            }
            Event::AssetFileUploaded { filename, .. } => self.notify_seed003(mqtt::SEED003_ASSET_TOPIC, filename).await,
            // Credentials are the broker's to follow (`broker.rs`); the rest changes nothing
            // connected devices are sent.
            Event::TokenIssued { .. }
            | Event::TokenRevoked { .. }
            | Event::DeviceDeleted { .. }
            | Event::AssetUploaded { .. }
            | Event::DeviceCreated { .. }
            | Event::DeviceOnline { .. }
            | Event::DeviceOffline { .. }
            | Event::DeviceConnected { .. }
            | Event::DeviceDisconnected { .. }
            | Event::DeviceCheckin { .. }
            | Event::DeviceTelemetry { .. }
            | Event::UpdateStatus(_)
            | Event::SetupStatus { .. }
            | Event::DevicePaired { .. }
            | Event::ConfigAcknowledged { .. }
            | Event::CommandSent { .. }
            | Event::CommandCompleted { .. } => {}
        }
    }

    /// One of seed 003's notifications, as its use case sent them: `{"filename"}`, QoS 1, not
    /// retained.
    async fn notify_seed003(&self, topic: &str, filename: &str) {
        let payload = json!({"filename": filename});
        match self.bus.publish(topic.to_string(), Bytes::from(payload.to_string()), false).await {
            Ok(()) => metrics::counter!("updraft_mqtt_pushes_total", "kind" => "notification").increment(1),
            Err(e) => tracing::warn!(topic, error = %e, "cannot publish a notification"),
        }
    }
}

fn digest_of(value: &impl Hash) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}
