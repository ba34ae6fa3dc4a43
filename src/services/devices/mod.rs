//! Devices: identity (tokens, provisioning, pairing), check-ins and the update decision,
//! update reports, setup progress, and the operator's registry operations.
//!
//! The check-in path is kept free of per-request writes: devices are looked up through a
//! short-lived cache keyed by token digest, builds per product are cached, and `last_seen`
//! is buffered and written in batches by `flush_presence`. Writes happen only when something
//! changed (a new version, a new offer, a report).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac as _};
use indexmap::IndexMap;
use serde_json::{Value, json};
use sha2::Sha256;

use super::Core;
use super::events::{DeviceChange, Event, UpdateStatus};
use super::fleet::{ActiveDevice, FleetIndex};
use super::limiter::AuthLimiter;
use super::rollouts;
use crate::config::DeviceSettings;
use crate::domain::device::{
    self, Device, DeviceFilter, DeviceKey, DevicePatch, DeviceUid, Product, Provisioning, UpdateAttempt, UpdateState,
};
use crate::domain::firmware::{Artifact, ArtifactFilter, ArtifactSort, Channel, HardwareId, ProductName};
use crate::domain::mac::Mac;
use crate::domain::update::{self, Decision, NoUpdate, Releases, RolloutOffer};
use crate::domain::version::Version;
use crate::domain::{DeviceId, Error, Result, RolloutId, secret};
use crate::storage::{AttemptOffer, DeviceReport, NewDevice, RolloutSlot};

mod background;
mod by_mac;
mod caches;
mod certificates;
mod checkin;
mod dashboard;
pub mod ddi;
mod identity;
mod import;
mod links;
mod offers;
mod pairing;
mod presence;
mod products;
mod registry;
mod reports;
mod sessions;
#[cfg(test)]
mod tests;

pub use background::*;
pub use by_mac::*;
pub use caches::*;
pub use certificates::*;
pub use checkin::*;
pub use dashboard::*;
pub use identity::*;
pub use import::*;
pub use links::*;
pub use offers::*;
pub use pairing::*;
pub use presence::*;
pub use products::*;
pub use registry::*;
pub use reports::*;
pub use sessions::*;

/// How long a replica trusts its cached view of a product's builds or policy. Bounds how
/// stale another replica's change can look here.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// A product's builds and when they were read.
type CachedBuilds = (Arc<Vec<Artifact>>, Instant);
/// A device's latest telemetry message and when it arrived.
type Telemetry = (DateTime<Utc>, Value);

/// In-memory state of the device subsystem (per process).
pub struct DeviceRuntime {
    pub policy: DeviceSettings,
    pub limiter: AuthLimiter,
    signing_key: [u8; 32],
    fleet: RwLock<FleetIndex>,
    builds: RwLock<HashMap<String, CachedBuilds>>,
    products: RwLock<HashMap<String, (Product, Instant)>>,
    /// Who is online, who holds an MQTT session, and the `last_seen` values waiting to be
    /// written (see `presence`): one lock.
    presence: Mutex<Presence>,
    /// The latest MQTT telemetry message of each device (at most `cache_entries`): a separate
    /// lock, as telemetry is not presence and arrives at its own pace.
    telemetry: Mutex<IndexMap<Arc<str>, Telemetry>>,
    /// Held by a presence write from taking the backlog to its commit: a reader that flushes
    /// first (the device listing, the summary) then waits for a write already under way, so it
    /// never reads before values taken by the background writer are in the database.
    presence_flush: tokio::sync::Mutex<()>,
    /// Devices changed on any replica, as `follow_device_changes` reads them from the change
    /// log once a second (the embedded broker re-checks their sessions' tokens).
    pub changed: tokio::sync::broadcast::Sender<Arc<[String]>>,
    /// The hot paths' caches (current attempts, devices by MAC, configuration files).
    pub caches: HotCaches,
    /// Why the last decision for a device offered nothing, when an operator can fix it
    /// (this replica; at most `cache_entries` devices): shown in the device record.
    no_update: Mutex<HashMap<Arc<str>, NoUpdate>>,
}

impl DeviceRuntime {
    pub fn new(policy: DeviceSettings, signing_key: [u8; 32]) -> Self {
        DeviceRuntime {
            fleet: RwLock::new(FleetIndex::new(policy.cache_entries)),
            presence: Mutex::new(Presence::new(policy.offline_after, policy.cache_entries)),
            policy,
            limiter: AuthLimiter::default(),
            signing_key,
            builds: RwLock::default(),
            products: RwLock::default(),
            telemetry: Mutex::default(),
            presence_flush: tokio::sync::Mutex::const_new(()),
            changed: tokio::sync::broadcast::channel(64).0,
            caches: HotCaches::default(),
            no_update: Mutex::default(),
        }
    }

    /// This replica changed one of a device's update attempts (opened one, or moved one to
    /// another state): what the caches and the fleet index knew of its attempts is dropped.
    pub fn attempt_changed(&self, device_id: &str) {
        self.caches.forget_attempt(device_id);
        self.fleet.read().expect("fleet lock").unsettle(device_id);
    }

    /// Remembers why a decision offered nothing (only reasons an operator can fix), with one
    /// debug line when the reason for a device changes.
    pub(super) fn note_decision(&self, device_id: &Arc<str>, reason: Option<&NoUpdate>) {
        let mut noted = self.no_update.lock().expect("no-update lock");
        match reason.filter(|r| r.remedy().is_some()) {
            Some(reason) => {
                if noted.get(device_id) != Some(reason) && (noted.len() < self.policy.cache_entries || noted.contains_key(device_id)) {
                    tracing::debug!(device_id = %device_id, reason = reason.as_str(), remedy = reason.remedy(), "no update for the device");
                    noted.insert(device_id.clone(), reason.clone());
                }
            }
            None => {
                noted.remove(device_id);
            }
        }
    }

    /// Why the last decision for this device offered nothing, if an operator can fix it.
    pub fn no_update(&self, device_id: &str) -> Option<NoUpdate> {
        self.no_update.lock().expect("no-update lock").get(device_id).cloned()
    }

    pub(super) fn forget_device(&self, device_id: &str) {
        self.fleet.write().expect("fleet lock").forget(device_id);
        self.caches.forget_device(device_id);
    }

    /// Devices in this replica's fleet index.
    pub fn indexed_devices(&self) -> usize {
        self.fleet.read().expect("fleet lock").len()
    }

    /// Drops cached builds of a product (after an upload, edit or delete on this replica).
    pub fn forget_builds(&self, product: &str) {
        self.builds.write().expect("cache lock").remove(product);
        // A first build names a new product; deleting the last one may remove a name.
        self.caches.forget_product_names();
    }

    /// This replica's presence state (one lock; hold it briefly).
    pub(super) fn presence(&self) -> std::sync::MutexGuard<'_, Presence> {
        self.presence.lock().expect("presence lock")
    }

    /// The freshest known `last_seen` of a device (buffered or stored).
    pub fn last_seen(&self, device: &Device) -> Option<DateTime<Utc>> {
        self.presence().last_seen(&device.id, device.last_seen)
    }

    /// The freshest known address of a device (buffered or stored).
    pub fn ip(&self, device: &Device) -> Option<String> {
        self.presence().ip(&device.id, device.ip.as_deref())
    }

    pub fn is_online(&self, device: &Device) -> bool {
        self.presence().is_online(&device.id, device.last_seen, Utc::now())
    }

    /// True while the device holds an MQTT session.
    pub fn is_connected(&self, device_id: &str) -> bool {
        self.presence().is_connected(device_id)
    }

    /// Devices holding an MQTT session, as this replica knows them.
    pub fn connected_devices(&self) -> Vec<Arc<str>> {
        self.presence().connected_devices()
    }

    /// `last_seen` values waiting to be written.
    pub fn backlog_len(&self) -> usize {
        self.presence().backlog_len()
    }

    /// How many devices hold an MQTT session, as this replica knows them.
    pub fn connected_count(&self) -> usize {
        self.presence().connected_count()
    }

    /// The latest telemetry message of a device, when this replica received one.
    pub fn latest_telemetry(&self, device_id: &str) -> Option<(DateTime<Utc>, Value)> {
        self.telemetry.lock().expect("telemetry lock").get(device_id).cloned()
    }
}

/// Drops a device from this replica's fleet index (it is read again on its next check-in).
pub fn forget_cached_device(core: &Core, device_id: &str) {
    core.devices.forget_device(device_id);
}
