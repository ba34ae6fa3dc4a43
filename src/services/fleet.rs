//! The fleet index: what the check-in path needs to know about each device that holds a
//! token, kept in memory by token digest, so that a check-in is answered without reading the
//! database however large the fleet is.
//!
//! An entry is small and fixed-size (112 bytes, plus ≈ 20 bytes of the two hash tables that
//! find it by token digest and by device id): the device's identity (its id in 16 bytes, see
//! [`DeviceKey`]) and the facts the update decision reads, with product, hardware, channel,
//! version and tag-set values stored once and named by 4-byte numbers. A lookup hands out a
//! copy ([`ActiveDevice`]). The index is filled at start-up (`preload`), on a miss, and kept
//! current by the writes of this replica plus the `device_change` log for the writes of others
//! (see `devices::follow_device_changes`). Bounded by `UPDRAFT_DEVICE_CACHE_ENTRIES`; beyond
//! that, random entries make room and their devices are read from the database again when they
//! next authenticate (a cold device still checks in, at the cost of one query).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use chrono::{DateTime, Utc};
use hashbrown::HashTable;

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
        Self::store(&self.0, installed);
    }

    fn store(cell: &AtomicI64, installed: Option<i64>) {
        cell.store(installed.filter(|id| *id >= 0).unwrap_or(Self::NONE_INSTALLED), Ordering::SeqCst);
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

/// Distinct shared strings kept at most by [`ProductTargets`]; beyond this, strings are not
/// shared (a fleet has a few hardware ids, channels and versions, so this is never reached in
/// practice).
const INTERNED_MAX: usize = 65_536;

/// A device id in 16 bytes: the UUID itself for the ids Updraft generates (canonical,
/// lower-case, hyphenated UUID text of any version but 0), else the number of the id's text in
/// a process-wide table of other ids ([`OddIds`]), with the version nibble 0 (which no UUID
/// key has). Keys are equal exactly when the texts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceKey([u8; 16]);

/// Texts of device ids that are not canonical UUIDs (rows from older imports, tests), each
/// kept once for the life of the process: only ids of stored devices are added (lookups by an
/// id that is not there add nothing), so this holds at most one text per such device.
#[derive(Default)]
struct OddIds {
    numbers: HashMap<Arc<str>, u32>,
    texts: Vec<Arc<str>>,
}

fn odd_ids() -> &'static RwLock<OddIds> {
    static ODD_IDS: OnceLock<RwLock<OddIds>> = OnceLock::new();
    ODD_IDS.get_or_init(RwLock::default)
}

impl DeviceKey {
    fn uuid(id: &str) -> Option<DeviceKey> {
        let uuid = uuid::Uuid::try_parse(id).ok()?;
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        (uuid.get_version_num() != 0 && uuid.hyphenated().encode_lower(&mut text) == id).then(|| DeviceKey(*uuid.as_bytes()))
    }

    fn odd(number: u32) -> DeviceKey {
        let mut bytes = [0u8; 16];
        bytes[12..].copy_from_slice(&number.to_be_bytes());
        DeviceKey(bytes)
    }

    /// The key of a stored device's id (adding the text to the table of other ids if needed).
    pub fn of(id: &str) -> DeviceKey {
        if let Some(key) = Self::find(id) {
            return key;
        }
        let mut odd = odd_ids().write().expect("odd ids lock");
        if let Some(number) = odd.numbers.get(id) {
            return Self::odd(*number);
        }
        let number = u32::try_from(odd.texts.len()).expect("fewer than 2^32 device ids");
        let text: Arc<str> = Arc::from(id);
        odd.texts.push(text.clone());
        odd.numbers.insert(text, number);
        Self::odd(number)
    }

    /// The key of an id, if it has one (never adds to the table of other ids).
    pub fn find(id: &str) -> Option<DeviceKey> {
        Self::uuid(id).or_else(|| odd_ids().read().expect("odd ids lock").numbers.get(id).map(|number| Self::odd(*number)))
    }

    fn is_uuid(&self) -> bool {
        self.0[6] >> 4 != 0
    }

    /// The id's text.
    pub fn text(&self) -> Arc<str> {
        if self.is_uuid() {
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            return Arc::from(uuid::Uuid::from_bytes(self.0).hyphenated().encode_lower(&mut text) as &str);
        }
        let number = u32::from_be_bytes([self.0[12], self.0[13], self.0[14], self.0[15]]) as usize;
        odd_ids().read().expect("odd ids lock").texts[number].clone()
    }
}

/// An optional IP address in 17 bytes (an `Option<IpAddr>` takes 17 too, but aligned to 4
/// where this is to 1, which packs the structures that hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackedIp {
    /// 0: none, 4: IPv4 (in the first 4 bytes), 6: IPv6.
    kind: u8,
    bytes: [u8; 16],
}

impl PackedIp {
    pub fn pack(ip: Option<IpAddr>) -> Self {
        let mut bytes = [0u8; 16];
        match ip {
            None => PackedIp::default(),
            Some(IpAddr::V4(v4)) => {
                bytes[..4].copy_from_slice(&v4.octets());
                PackedIp { kind: 4, bytes }
            }
            Some(IpAddr::V6(v6)) => PackedIp { kind: 6, bytes: v6.octets() },
        }
    }

    pub fn get(&self) -> Option<IpAddr> {
        match self.kind {
            4 => Some(IpAddr::from([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])),
            6 => Some(IpAddr::from(self.bytes)),
            _ => None,
        }
    }
}

/// Microseconds (as [`micros_of`] gives them) in 8 bytes aligned to 1, so that a structure of
/// these and byte arrays has no padding (an `i64` beside a 17-byte [`PackedIp`] costs 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedMicros([u8; 8]);

impl PackedMicros {
    pub fn new(micros: i64) -> Self {
        PackedMicros(micros.to_le_bytes())
    }

    pub fn get(self) -> i64 {
        i64::from_le_bytes(self.0)
    }
}

/// A time as microseconds since the epoch (`i64::MIN`: none), 8 bytes where an
/// `Option<DateTime<Utc>>` takes 16.
pub fn micros_of(at: Option<DateTime<Utc>>) -> i64 {
    at.map_or(i64::MIN, |at| at.timestamp_micros())
}

pub fn time_of(micros: i64) -> Option<DateTime<Utc>> {
    (micros != i64::MIN).then(|| DateTime::from_timestamp_micros(micros)).flatten()
}

/// Values shared between entries (product names, versions, tag sets), each stored once and
/// named by a number: entries hold 4-byte numbers instead of 16-byte pointers, and a value no
/// entry uses any more is dropped (reference-counted). Number 0 is "none".
struct Interner<T: ?Sized + Hash + Eq> {
    values: Vec<Option<(Arc<T>, u32)>>,
    numbers: HashMap<Arc<T>, u32>,
    free: Vec<u32>,
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    fn new() -> Self {
        Interner { values: vec![None], numbers: HashMap::new(), free: Vec::new() }
    }

    /// The number of `value`, counting one more user.
    fn acquire(&mut self, value: Option<&Arc<T>>) -> u32 {
        let Some(value) = value else { return 0 };
        if let Some(&number) = self.numbers.get(&**value) {
            if let Some((_, users)) = &mut self.values[number as usize] {
                *users += 1;
            }
            return number;
        }
        let number = match self.free.pop() {
            Some(number) => number,
            None => {
                self.values.push(None);
                u32::try_from(self.values.len() - 1).expect("fewer than 2^32 distinct values")
            }
        };
        self.values[number as usize] = Some((value.clone(), 1));
        self.numbers.insert(value.clone(), number);
        number
    }

    /// One user fewer of `number`; the value goes when it has none.
    fn release(&mut self, number: u32) {
        let Some(slot) = self.values.get_mut(number as usize) else { return };
        let Some((value, users)) = slot else { return };
        *users -= 1;
        if *users == 0 {
            self.numbers.remove(&**value);
            *slot = None;
            self.free.push(number);
        }
    }

    fn get(&self, number: u32) -> Option<&Arc<T>> {
        self.values.get(number as usize)?.as_ref().map(|(value, _)| value)
    }
}

/// The part of a token's SHA-256 digest that the index keeps: its first 16 bytes. A token
/// that is not the device's matches them only by a second preimage of 128 bits of SHA-256
/// (2^128 attempts), and two tokens of a fleet of a million share them with a chance of about
/// 2^-89, so they name a device as surely as the whole digest, in half the bytes.
type DigestPrefix = [u8; 16];

fn digest_prefix(digest: &[u8; 32]) -> DigestPrefix {
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// `Entry::flags`: the device has a MAC.
const HAS_MAC: u8 = 1;
/// `Entry::flags`: the device awaits its boot report (`ActiveDevice::awaiting_boot`).
const AWAITING_BOOT: u8 = 2;

/// One device in the index: fixed-size, no pointers, no padding (112 bytes).
struct Entry {
    digest: DigestPrefix,
    id: DeviceKey,
    created_at: i64,
    /// Microseconds, `i64::MIN` for none.
    stored_last_seen: i64,
    reported_attributes: u64,
    settled: AtomicI64,
    product: u32,
    hardware: u32,
    channel: u32,
    version: u32,
    target_version: u32,
    tags: u32,
    stored_ip: PackedIp,
    /// Meaningful with `HAS_MAC`.
    mac: [u8; 6],
    flags: u8,
}

/// Entries by token digest and by device id: the entries in one vector, and two hash tables of
/// 4-byte positions in it (about 5 bytes a slot, against 40 to 56 for maps holding keys), so a
/// device costs its entry plus about 20 bytes (see docs/PERFORMANCE.md, check-in).
pub(super) struct FleetIndex {
    entries: Vec<Entry>,
    by_token: HashTable<u32>,
    by_id: HashTable<u32>,
    hasher: RandomState,
    strings: Interner<str>,
    tag_sets: Interner<[Arc<str>]>,
    capacity: usize,
}

impl FleetIndex {
    pub fn new(capacity: usize) -> Self {
        FleetIndex {
            entries: Vec::new(),
            by_token: HashTable::new(),
            by_id: HashTable::new(),
            hasher: RandomState::new(),
            strings: Interner::new(),
            tag_sets: Interner::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Makes room for `additional` more entries (within the capacity) at once, so that loading
    /// a fleet does not grow the vector and the tables by doubling, leaving the smaller copies
    /// behind as freed memory that the allocator may keep.
    pub fn reserve(&mut self, additional: usize) {
        let additional = additional.min(self.capacity.saturating_sub(self.entries.len()));
        let (hasher, entries) = (&self.hasher, &self.entries);
        self.by_token.reserve(additional, |&i| hasher.hash_one(entries[i as usize].digest));
        self.by_id.reserve(additional, |&i| hasher.hash_one(entries[i as usize].id));
        self.entries.reserve_exact(additional);
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn position_of_token(&self, digest: &DigestPrefix) -> Option<usize> {
        let entries = &self.entries;
        self.by_token.find(self.hasher.hash_one(digest), |&at| entries[at as usize].digest == *digest).map(|&at| at as usize)
    }

    fn position_of_id(&self, key: &DeviceKey) -> Option<usize> {
        let entries = &self.entries;
        self.by_id.find(self.hasher.hash_one(key), |&at| entries[at as usize].id == *key).map(|&at| at as usize)
    }

    fn entry_of_id(&self, device_id: &str) -> Option<&Entry> {
        let key = DeviceKey::find(device_id)?;
        self.position_of_id(&key).map(|at| &self.entries[at])
    }

    /// The device a token digest belongs to (a copy of its entry: a change goes through
    /// `insert`, `replace` or the `settled` methods).
    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<ActiveDevice>> {
        self.position_of_token(&digest_prefix(digest)).map(|at| Arc::new(self.device(&self.entries[at])))
    }

    pub fn get_by_id(&self, device_id: &str) -> Option<Arc<ActiveDevice>> {
        self.entry_of_id(device_id).map(|entry| Arc::new(self.device(entry)))
    }

    /// Records that an indexed device has no open attempt (see [`Settled`]).
    pub fn settle(&self, device_id: &str, installed: Option<i64>) {
        if let Some(entry) = self.entry_of_id(device_id) {
            Settled::store(&entry.settled, installed);
        }
    }

    /// Forgets what was known of an indexed device's attempts.
    pub fn unsettle(&self, device_id: &str) {
        if let Some(entry) = self.entry_of_id(device_id) {
            entry.settled.store(Settled::UNKNOWN, Ordering::SeqCst);
        }
    }

    /// Adds or replaces a device's entry under its (current) token digest. A previous entry of
    /// the same device under another digest (an old token) is removed.
    pub fn insert(&mut self, digest: [u8; 32], device: ActiveDevice) -> Arc<ActiveDevice> {
        if self.capacity == 0 {
            return Arc::new(device);
        }
        let key = DeviceKey::of(&device.id);
        let prefix = digest_prefix(&digest);
        if let Some(at) = self.position_of_id(&key) {
            self.remove_at(at);
        }
        if let Some(at) = self.position_of_token(&prefix) {
            self.remove_at(at);
        }
        while self.entries.len() >= self.capacity {
            self.evict_one();
        }
        let entry = self.entry(prefix, key, &device);
        let at = u32::try_from(self.entries.len()).expect("fewer than 2^32 entries");
        let hasher = &self.hasher;
        let entries = &self.entries;
        self.by_token.insert_unique(hasher.hash_one(prefix), at, |&i| hasher.hash_one(entries[i as usize].digest));
        self.by_id.insert_unique(hasher.hash_one(key), at, |&i| hasher.hash_one(entries[i as usize].id));
        self.entries.push(entry);
        Arc::new(self.device(&self.entries[at as usize]))
    }

    /// Replaces the entry of a device that is in the index (after this replica changed it).
    pub fn replace(&mut self, device: ActiveDevice) {
        let Some(at) = DeviceKey::find(&device.id).and_then(|key| self.position_of_id(&key)) else { return };
        let (digest, key) = (self.entries[at].digest, self.entries[at].id);
        let entry = self.entry(digest, key, &device);
        let old = std::mem::replace(&mut self.entries[at], entry);
        self.release(&old);
    }

    /// Changes an indexed device's entry in place. `change` sees the entry as it is now, so a
    /// request never puts back an older copy over another request's change to the same device
    /// (a check-in's version under an `installed` report's `awaiting_boot`, say).
    pub fn update(&mut self, device_id: &str, change: impl FnOnce(&mut ActiveDevice)) {
        let Some(at) = DeviceKey::find(device_id).and_then(|key| self.position_of_id(&key)) else { return };
        let mut device = self.device(&self.entries[at]);
        change(&mut device);
        self.replace(device);
    }

    pub fn forget(&mut self, device_id: &str) {
        if let Some(at) = DeviceKey::find(device_id).and_then(|key| self.position_of_id(&key)) {
            self.remove_at(at);
        }
    }

    fn evict_one(&mut self) {
        use rand::Rng;
        let at = rand::rng().random_range(0..self.entries.len());
        self.remove_at(at);
    }

    /// Removes the entry at `at`; the last entry takes its place.
    fn remove_at(&mut self, at: usize) {
        let hasher = &self.hasher;
        let (digest, key) = (self.entries[at].digest, self.entries[at].id);
        let position = at as u32;
        if let Ok(found) = self.by_token.find_entry(hasher.hash_one(digest), |&i| i == position) {
            found.remove();
        }
        if let Ok(found) = self.by_id.find_entry(hasher.hash_one(key), |&i| i == position) {
            found.remove();
        }
        let last = self.entries.len() - 1;
        if at != last {
            let (digest, key) = (self.entries[last].digest, self.entries[last].id);
            let last = last as u32;
            if let Some(slot) = self.by_token.find_mut(hasher.hash_one(digest), |&i| i == last) {
                *slot = position;
            }
            if let Some(slot) = self.by_id.find_mut(hasher.hash_one(key), |&i| i == last) {
                *slot = position;
            }
        }
        let removed = self.entries.swap_remove(at);
        self.release(&removed);
    }

    fn entry(&mut self, digest: DigestPrefix, id: DeviceKey, device: &ActiveDevice) -> Entry {
        let mut string = |text: &Option<Arc<str>>| self.strings.acquire(text.as_ref());
        let (product, hardware, version, target_version) =
            (string(&device.product), string(&device.hardware), string(&device.version), string(&device.target_version));
        let channel = self.strings.acquire(Some(&device.channel));
        let tags: Arc<[Arc<str>]> = if self.tag_sets.numbers.contains_key(&*device.tags) {
            device.tags.clone()
        } else {
            // A new set: its tags shared with the other strings where they are known.
            device
                .tags
                .iter()
                .map(|tag| self.strings.numbers.get_key_value(&**tag).map_or_else(|| tag.clone(), |(t, _)| t.clone()))
                .collect()
        };
        Entry {
            digest,
            id,
            created_at: device.created_at,
            stored_last_seen: micros_of(device.stored_last_seen),
            reported_attributes: device.reported_attributes,
            settled: AtomicI64::new(device.settled.0.load(Ordering::SeqCst)),
            product,
            hardware,
            channel,
            version,
            target_version,
            tags: self.tag_sets.acquire(Some(&tags)),
            stored_ip: PackedIp::pack(device.stored_ip),
            mac: device.mac.map_or([0; 6], |mac| mac.bytes()),
            flags: if device.mac.is_some() { HAS_MAC } else { 0 } | if device.awaiting_boot { AWAITING_BOOT } else { 0 },
        }
    }

    fn release(&mut self, entry: &Entry) {
        for number in [entry.product, entry.hardware, entry.channel, entry.version, entry.target_version] {
            self.strings.release(number);
        }
        self.tag_sets.release(entry.tags);
    }

    fn device(&self, entry: &Entry) -> ActiveDevice {
        let string = |number: u32| self.strings.get(number).cloned();
        ActiveDevice {
            id: entry.id.text(),
            mac: (entry.flags & HAS_MAC != 0).then(|| Mac::from_bytes(entry.mac)),
            product: string(entry.product),
            hardware: string(entry.hardware),
            channel: string(entry.channel).unwrap_or_else(|| Arc::from("")),
            version: string(entry.version),
            target_version: string(entry.target_version),
            stored_last_seen: time_of(entry.stored_last_seen),
            stored_ip: entry.stored_ip.get(),
            reported_attributes: entry.reported_attributes,
            tags: self.tag_sets.get(entry.tags).cloned().unwrap_or_else(|| Arc::from(Vec::new())),
            created_at: entry.created_at,
            awaiting_boot: entry.flags & AWAITING_BOOT != 0,
            settled: Settled(AtomicI64::new(entry.settled.load(Ordering::SeqCst))),
        }
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
        assert_eq!((index.by_token.len(), index.by_id.len()), (3, 3));
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
        assert!(index.by_id.is_empty() && index.by_token.is_empty());
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
    fn an_update_changes_one_field_of_the_entry_as_it_is_now() {
        let mut index = FleetIndex::new(10);
        let before = index.insert(digest(1), device("d1", "1.0.0"));
        // Two requests of the same device: a check-in records 2.0.0, then a report that started
        // from the copy `before` marks the device awaiting its boot.
        index.update("d1", |d| d.version = Some("2.0.0".into()));
        assert!(!before.awaiting_boot);
        index.update("d1", |d| d.awaiting_boot = true);
        let now = index.get(&digest(1)).unwrap();
        assert_eq!((now.version.as_deref(), now.awaiting_boot), (Some("2.0.0"), true));
        index.update("d2", |d| d.awaiting_boot = true);
        assert_eq!(index.len(), 1, "an update of a device not in the index adds nothing");
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

    #[test]
    fn device_keys_are_16_bytes_for_uuids_and_equal_exactly_when_the_ids_are() {
        let id = "01890a5d-ac96-774b-bcce-b302099a8057";
        let key = DeviceKey::of(id);
        assert!(key.is_uuid());
        assert_eq!(&*key.text(), id);
        assert_eq!(DeviceKey::find(id), Some(key));
        // Not canonical: upper case, braces, no hyphens, version 0, free text. Each keeps its text.
        for odd in [
            "01890A5D-AC96-774B-BCCE-B302099A8057",
            "{01890a5d-ac96-774b-bcce-b302099a8057}",
            "01890a5dac96774bbcceb302099a8057",
            "00000000-0000-0000-0000-000000000000",
            "fleet-test-odd-device",
        ] {
            assert_eq!(DeviceKey::find(odd), None, "{odd}: a lookup adds nothing");
            let odd_key = DeviceKey::of(odd);
            assert!(!odd_key.is_uuid());
            assert_ne!(odd_key, key);
            assert_eq!(&*odd_key.text(), odd);
            assert_eq!(DeviceKey::of(odd), odd_key);
            assert_eq!(DeviceKey::find(odd), Some(odd_key));
        }
    }

    #[test]
    fn addresses_and_times_pack_without_loss() {
        for ip in
            [None, Some("192.0.2.7".parse().unwrap()), Some("2001:db8::1".parse().unwrap()), Some("::ffff:192.0.2.7".parse().unwrap())]
        {
            assert_eq!(PackedIp::pack(ip).get(), ip);
        }
        let at = DateTime::from_timestamp_micros(1_800_000_000_123_456).unwrap();
        assert_eq!(time_of(micros_of(Some(at))), Some(at));
        assert_eq!(time_of(micros_of(None)), None);
    }

    #[test]
    fn an_entry_is_small() {
        assert!(std::mem::size_of::<Entry>() <= 112, "{} bytes", std::mem::size_of::<Entry>());
    }

    #[test]
    fn a_token_is_found_by_the_first_half_of_its_digest() {
        let mut index = FleetIndex::new(10);
        let mut digest = [7u8; 32];
        index.insert(digest, device("d1", "1.0.0"));
        assert!(index.get(&digest).is_some());
        // A digest that differs in its first 16 bytes names no device.
        digest[15] ^= 1;
        assert!(index.get(&digest).is_none());
    }

    #[test]
    fn a_device_without_a_mac_or_awaiting_its_boot_reads_back_as_such() {
        let mut index = FleetIndex::new(10);
        let mut d = device("d1", "1.0.0");
        d.mac = None;
        d.awaiting_boot = true;
        index.insert(digest(1), d);
        let got = index.get(&digest(1)).unwrap();
        assert_eq!((got.mac, got.awaiting_boot), (None, true));
    }

    #[test]
    fn a_copy_reads_back_what_was_indexed() {
        let mut index = FleetIndex::new(10);
        let mut d = device("01890a5d-ac96-774b-bcce-b302099a8057", "1.2.3");
        d.hardware = Some("esp32".into());
        d.target_version = Some("1.3.0".into());
        d.stored_last_seen = DateTime::from_timestamp_micros(1_800_000_000_000_001);
        d.stored_ip = Some("192.0.2.1".parse().unwrap());
        d.reported_attributes = 42;
        d.tags = vec![Arc::<str>::from("a"), Arc::<str>::from("b")].into();
        d.created_at = 1234;
        d.awaiting_boot = true;
        index.insert(digest(1), d.clone());
        let got = index.get(&digest(1)).unwrap();
        assert_eq!(format!("{:?}", *got), format!("{d:?}"));
        assert_eq!(format!("{:?}", *index.get_by_id(&d.id).unwrap()), format!("{d:?}"));
    }

    #[test]
    fn settled_attempts_are_kept_in_the_index_and_a_replaced_entry_starts_unknown() {
        let mut index = FleetIndex::new(10);
        index.insert(digest(1), device("d1", "1.0.0"));
        index.settle("d1", Some(7));
        assert_eq!(index.get(&digest(1)).unwrap().settled.get(), Some(Some(7)));
        index.unsettle("d1");
        assert_eq!(index.get(&digest(1)).unwrap().settled.get(), None);
        index.settle("d1", None);
        let copy = index.get(&digest(1)).unwrap();
        assert_eq!(copy.settled.get(), Some(None));
        index.replace((*copy).clone());
        assert_eq!(index.get(&digest(1)).unwrap().settled.get(), None, "a changed entry may describe changed attempts");
        index.settle("unknown", Some(1));
    }

    #[test]
    fn shared_values_go_when_no_entry_uses_them() {
        let mut index = FleetIndex::new(10);
        index.insert(digest(1), device("d1", "1.0.0"));
        index.insert(digest(2), device("d2", "1.0.0"));
        // "p", "stable", "1.0.0"; one (empty) tag set.
        assert_eq!((index.strings.numbers.len(), index.tag_sets.numbers.len()), (3, 1));
        index.replace(device("d1", "2.0.0"));
        assert_eq!(index.strings.numbers.len(), 4);
        index.forget("d2");
        assert_eq!(index.strings.numbers.len(), 3, "1.0.0 is used by no entry");
        index.forget("d1");
        assert_eq!((index.strings.numbers.len(), index.tag_sets.numbers.len()), (0, 0));
        // Numbers are reused.
        index.insert(digest(3), device("d3", "3.0.0"));
        assert_eq!(index.strings.values.len(), 5);
    }

    #[test]
    fn the_index_agrees_with_a_plain_map_through_inserts_replacements_evictions_and_forgets() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        let mut index = FleetIndex::new(50);
        // What each indexed device's token digest (one byte of it) and version are.
        let mut model: HashMap<String, (u8, String)> = HashMap::new();
        for step in 0..5_000 {
            let id = format!("d{}", rng.random_range(0..80));
            match rng.random_range(0..4) {
                0 | 1 => {
                    let digest_byte = rng.random_range(0..=255u8);
                    let version = format!("1.0.{}", step % 7);
                    // The digest may be another device's: that device loses its entry.
                    model.retain(|other, (byte, _)| *byte != digest_byte || *other == id);
                    index.insert(digest(digest_byte), device(&id, &version));
                    model.insert(id, (digest_byte, version));
                }
                2 => {
                    let version = format!("2.0.{}", step % 5);
                    index.replace(device(&id, &version));
                    if let Some(entry) = model.get_mut(&id)
                        && index.get_by_id(&id).is_some()
                    {
                        entry.1 = version;
                    }
                }
                _ => {
                    index.forget(&id);
                    model.remove(&id);
                }
            }
            // Evictions drop entries the model still has: drop them from the model too.
            model.retain(|id, _| index.get_by_id(id).is_some());
            assert_eq!(index.len(), model.len());
            assert!(index.len() <= 50);
            assert_eq!((index.by_token.len(), index.by_id.len()), (index.len(), index.len()));
            for (id, (digest_byte, version)) in &model {
                let by_token = index.get(&digest(*digest_byte)).unwrap();
                assert_eq!((&*by_token.id, by_token.version.as_deref()), (id.as_str(), Some(version.as_str())));
            }
        }
    }
}
