//! The fleet index: what the check-in path needs to know about each device that holds a
//! token, kept in memory by token digest, so that a check-in is answered without reading the
//! database however large the fleet is.
//!
//! An entry is small (≈ 300 bytes with the index overhead): the device's identity and the
//! facts the update decision reads, with product, hardware, channel and version strings
//! shared between devices. The index is filled at start-up (`preload`), on a miss, and kept
//! current by the writes of this replica plus the `device_change` log for the writes of
//! others (see `devices::follow_device_changes`). Bounded by `UPDRAFT_DEVICE_CACHE_ENTRIES`;
//! beyond that, random entries make room and their devices are read from the database again
//! when they next authenticate.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;

use crate::domain::device::Device;
use crate::domain::mac::Mac;
use crate::domain::update::DeviceFacts;
use crate::domain::version::Version;
use crate::storage::ActiveRow;

/// A device as the check-in path sees it.
#[derive(Debug, Clone)]
pub struct ActiveDevice {
    pub id: Arc<str>,
    pub mac: Option<Mac>,
    pub product: Option<Arc<str>>,
    pub hardware: Option<Arc<str>>,
    pub channel: Arc<str>,
    pub version: Option<Arc<str>>,
    pub target_version: Option<Arc<str>>,
    /// `last_seen` as stored when this entry was read.
    pub stored_last_seen: Option<DateTime<Utc>>,
    /// `ip` as stored when this entry was read.
    pub stored_ip: Option<IpAddr>,
    /// A hash of the attributes object this device last reported (already merged into the
    /// stored attributes), or 0. Reporting the same object again changes nothing, so the
    /// check-in skips reading the stored attributes.
    pub reported_attributes: u64,
    /// Operator tags (the set shared between devices with the same tags), for rollout targets.
    pub tags: Arc<[Arc<str>]>,
    /// Registration time (Unix ms), for rollouts that only devices registered before their
    /// start join.
    pub created_at: i64,
    /// The device reported `installed` and has not checked in since: its next check-in tells
    /// whether the new build booted.
    pub awaiting_boot: bool,
    /// What a hawkBit DDI poll needs of the device's update attempts while none is open.
    pub settled: Settled,
}

/// What is known of a device's update attempts while none is open: nothing, or that it has no
/// open attempt and (maybe) the action id of its last success (`installedBase`). It lets a DDI
/// poll of a settled device read no attempt row (`devices::ddi`).
///
/// Kept exact: this replica resets it whenever it changes one of the device's attempts
/// (`DeviceRuntime::attempt_changed`, after bumping the caches' generation, so a racing fill
/// is undone), and another replica's change (opening an attempt, a success) is logged in
/// `device_change`, which drops the whole entry here. A copy starts unknown.
#[derive(Debug)]
pub struct Settled(AtomicI64);

impl Settled {
    const UNKNOWN: i64 = i64::MIN;
    const NONE_INSTALLED: i64 = -1;

    pub fn unknown() -> Self {
        Settled(AtomicI64::new(Self::UNKNOWN))
    }

    /// `Some(installed)` when the device is known to have no open attempt.
    pub fn get(&self) -> Option<Option<i64>> {
        match self.0.load(Ordering::SeqCst) {
            Self::UNKNOWN => None,
            Self::NONE_INSTALLED => Some(None),
            action_id => Some(Some(action_id)),
        }
    }

    /// Records that the device has no open attempt, and its last success (action ids are
    /// positive).
    pub fn set(&self, installed: Option<i64>) {
        self.0.store(installed.filter(|id| *id >= 0).unwrap_or(Self::NONE_INSTALLED), Ordering::SeqCst);
    }

    pub fn reset(&self) {
        self.0.store(Self::UNKNOWN, Ordering::SeqCst);
    }
}

impl Clone for Settled {
    /// A changed copy of an entry may describe changed attempts: it starts unknown.
    fn clone(&self) -> Self {
        Settled::unknown()
    }
}

impl ActiveDevice {
    /// The entry for a full device record (strings not shared).
    pub fn of(device: &Device) -> Self {
        ActiveDevice {
            id: device.id.as_str().into(),
            mac: device.mac,
            product: device.product.as_deref().map(Arc::from),
            hardware: device.hardware.as_deref().map(Arc::from),
            channel: device.channel.as_str().into(),
            version: device.version.as_deref().map(Arc::from),
            target_version: device.target_version.as_deref().map(Arc::from),
            stored_last_seen: device.last_seen,
            stored_ip: device.ip.as_deref().and_then(|ip| ip.parse().ok()),
            reported_attributes: 0,
            tags: device.tags.iter().map(|t| Arc::from(t.as_str())).collect(),
            created_at: device.created_at.timestamp_millis(),
            awaiting_boot: false,
            settled: Settled::unknown(),
        }
    }

    /// What the update decision reads.
    pub fn facts(&self) -> DeviceFacts {
        DeviceFacts {
            product: self.product.as_deref().map(str::to_string),
            hardware: self.hardware.as_deref().map(str::to_string),
            channel: self.channel.to_string(),
            version: self.version.as_deref().and_then(|v| Version::parse(v).ok()),
            target_version: self.target_version.as_deref().and_then(|v| Version::parse(v).ok()),
        }
    }
}

/// Distinct shared strings kept at most; beyond this, strings are not shared (a fleet has a
/// few products, hardware ids, channels and versions, so this is never reached in practice).
const INTERNED_MAX: usize = 65_536;

/// Entries by token digest, plus the digest of each device's token so that a device can be
/// forgotten by id.
pub(super) struct FleetIndex {
    by_token: IndexMap<[u8; 32], Arc<ActiveDevice>>,
    token_of: HashMap<Arc<str>, [u8; 32]>,
    interned: HashSet<Arc<str>>,
    tag_sets: HashSet<Arc<[Arc<str>]>>,
    capacity: usize,
}

impl FleetIndex {
    pub fn new(capacity: usize) -> Self {
        FleetIndex { by_token: IndexMap::new(), token_of: HashMap::new(), interned: HashSet::new(), tag_sets: HashSet::new(), capacity }
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<ActiveDevice>> {
        self.by_token.get(digest).cloned()
    }

    /// Adds or replaces a device's entry under its (current) token digest. A previous entry of
    /// the same device under another digest (an old token) is removed.
    pub fn get_by_id(&self, device_id: &str) -> Option<Arc<ActiveDevice>> {
        self.token_of.get(device_id).and_then(|digest| self.by_token.get(digest)).cloned()
    }

    pub fn insert(&mut self, digest: [u8; 32], device: ActiveDevice) -> Arc<ActiveDevice> {
        let device = Arc::new(self.shared(device));
        if self.capacity == 0 {
            return device;
        }
        if let Some(previous) = self.token_of.insert(device.id.clone(), digest)
            && previous != digest
        {
            self.by_token.swap_remove(&previous);
        }
        if !self.by_token.contains_key(&digest) {
            while self.by_token.len() >= self.capacity {
                self.evict_one();
            }
        }
        self.by_token.insert(digest, device.clone());
        device
    }

    /// Replaces the entry of a device that is in the index (after this replica changed it).
    pub fn replace(&mut self, device: ActiveDevice) {
        if let Some(digest) = self.token_of.get(&device.id).copied() {
            let device = Arc::new(self.shared(device));
            self.by_token.insert(digest, device);
        }
    }

    pub fn forget(&mut self, device_id: &str) {
        if let Some(digest) = self.token_of.remove(device_id) {
            self.by_token.swap_remove(&digest);
        }
    }

    fn evict_one(&mut self) {
        use rand::Rng;
        let index = rand::rng().random_range(0..self.by_token.len());
        if let Some((_, evicted)) = self.by_token.swap_remove_index(index) {
            self.token_of.remove(&evicted.id);
        }
    }

    /// The same device with its strings shared with other entries.
    fn shared(&mut self, mut device: ActiveDevice) -> ActiveDevice {
        let mut intern = |text: &mut Arc<str>| {
            if let Some(existing) = self.interned.get(&**text) {
                *text = existing.clone();
            } else if self.interned.len() < INTERNED_MAX {
                self.interned.insert(text.clone());
            }
        };
        for text in [&mut device.product, &mut device.hardware, &mut device.version, &mut device.target_version].into_iter().flatten() {
            intern(text);
        }
        intern(&mut device.channel);
        if let Some(existing) = self.tag_sets.get(&device.tags) {
            device.tags = existing.clone();
        } else if self.tag_sets.len() < INTERNED_MAX {
            let tags: Arc<[Arc<str>]> = device
                .tags
                .iter()
                .map(|tag| match self.interned.get(&**tag) {
                    Some(existing) => existing.clone(),
                    None => tag.clone(),
                })
                .collect();
            self.tag_sets.insert(tags.clone());
            device.tags = tags;
        }
        device
    }
}

impl ActiveDevice {
    /// An entry from the columns the storage layer reads for the index.
    pub fn from_row(row: ActiveRow) -> Self {
        ActiveDevice {
            id: row.id.into_string().into(),
            mac: row.mac,
            product: row.product.map(Arc::from),
            hardware: row.hardware.map(Arc::from),
            channel: row.channel.into(),
            version: row.version.map(Arc::from),
            target_version: row.target_version.map(Arc::from),
            stored_last_seen: row.last_seen,
            stored_ip: row.ip.and_then(|ip| ip.parse().ok()),
            reported_attributes: 0,
            tags: row.tags.iter().map(|t| Arc::from(t.as_str())).collect(),
            created_at: row.created_at.timestamp_millis(),
            awaiting_boot: row.awaiting_boot,
            settled: Settled::unknown(),
        }
    }
}

/// A device as rollout target filters see it.
pub struct TargetEntry {
    pub hardware: Option<Arc<str>>,
    pub channel: Arc<str>,
    pub version: Option<Arc<str>>,
    pub tags: Arc<[Arc<str>]>,
    /// Registration time (Unix ms).
    pub created_at: i64,
}

/// Every device of one product with the facts target filters read (token or not), so that
/// counting a rollout's target reads memory instead of the device table. Loaded once, then
/// kept exact by re-reading the devices the `device_change` log names (`services::rollouts`).
pub struct ProductTargets {
    pub devices: HashMap<Arc<str>, TargetEntry>,
    /// Changes logged before this time (Unix ms, minus an overlap) are applied.
    pub synced_at: i64,
    interned: HashSet<Arc<str>>,
}

impl ProductTargets {
    pub fn new(synced_at: i64) -> Self {
        ProductTargets { devices: HashMap::new(), synced_at, interned: HashSet::new() }
    }

    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(existing) = self.interned.get(text) {
            return existing.clone();
        }
        let text: Arc<str> = Arc::from(text);
        if self.interned.len() < INTERNED_MAX {
            self.interned.insert(text.clone());
        }
        text
    }

    pub fn upsert(&mut self, row: &crate::storage::TargetRow) {
        let entry = TargetEntry {
            hardware: row.hardware.as_deref().map(|h| self.intern(h)),
            channel: self.intern(&row.channel),
            version: row.version.as_deref().map(|v| self.intern(v)),
            tags: row.tags.iter().map(|t| self.intern(t)).collect(),
            created_at: row.created_at,
        };
        self.devices.insert(Arc::from(row.id.as_str()), entry);
    }

    pub fn remove(&mut self, device_id: &str) {
        self.devices.remove(device_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, version: &str) -> ActiveDevice {
        ActiveDevice {
            id: id.into(),
            mac: Some(Mac::parse("02:00:00:00:00:01").unwrap()),
            product: Some("p".into()),
            hardware: None,
            channel: "stable".into(),
            version: Some(version.into()),
            target_version: None,
            stored_last_seen: None,
            stored_ip: None,
            reported_attributes: 0,
            tags: Arc::from(Vec::new()),
            created_at: 0,
            awaiting_boot: false,
            settled: Settled::unknown(),
        }
    }

    fn digest(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn settled_attempts_are_known_until_reset_and_a_copy_starts_unknown() {
        let entry = device("a", "1.0.0");
        assert_eq!(entry.settled.get(), None);
        entry.settled.set(None);
        assert_eq!(entry.settled.get(), Some(None));
        entry.settled.set(Some(7));
        assert_eq!(entry.settled.get(), Some(Some(7)));
        assert_eq!(entry.clone().settled.get(), None, "a changed copy may describe changed attempts");
        entry.settled.reset();
        assert_eq!(entry.settled.get(), None);
    }

    #[test]
    fn the_index_is_bounded() {
        let mut index = FleetIndex::new(3);
        for i in 0..10 {
            index.insert(digest(i), device(&format!("d{i}"), "1.0.0"));
        }
        assert_eq!(index.len(), 3);
        assert_eq!(index.token_of.len(), 3);
        assert!(index.get(&digest(9)).is_some(), "the newest entry is kept");
    }

    #[test]
    fn a_new_token_replaces_the_old_one_and_forget_removes_the_device() {
        let mut index = FleetIndex::new(10);
        index.insert(digest(1), device("d1", "1.0.0"));
        index.insert(digest(2), device("d1", "1.0.0"));
        assert!(index.get(&digest(1)).is_none(), "the old token no longer authenticates");
        assert!(index.get(&digest(2)).is_some());
        index.forget("d1");
        assert!(index.get(&digest(2)).is_none());
        assert_eq!(index.len(), 0);
        assert!(index.token_of.is_empty());
    }

    #[test]
    fn replace_updates_an_indexed_device_only() {
        let mut index = FleetIndex::new(10);
        index.insert(digest(1), device("d1", "1.0.0"));
        index.replace(device("d1", "2.0.0"));
        assert_eq!(index.get(&digest(1)).unwrap().version.as_deref(), Some("2.0.0"));
        index.replace(device("d2", "2.0.0"));
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn equal_strings_are_shared() {
        let mut index = FleetIndex::new(10);
        let a = index.insert(digest(1), device("d1", "1.0.0"));
        let b = index.insert(digest(2), device("d2", "1.0.0"));
        assert!(Arc::ptr_eq(a.version.as_ref().unwrap(), b.version.as_ref().unwrap()));
        assert!(Arc::ptr_eq(&a.channel, &b.channel));
    }

    #[test]
    fn a_zero_capacity_index_keeps_nothing() {
        let mut index = FleetIndex::new(0);
        index.insert(digest(1), device("d1", "1.0.0"));
        assert_eq!(index.len(), 0);
    }
}
