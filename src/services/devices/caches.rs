//! Bounded, short-lived caches of the hot device paths, which would otherwise read the database
//! on every request (a SQLite query through sqlx costs far more CPU than the rest of a
//! check-in: the query runs on the connection's worker thread, so each one is a pair of thread
//! wake-ups):
//!
//! - the current update attempt of a device, which an offered check-in reuses;
//! - devices by MAC (the compatibility protocols that identify devices by MAC alone), each with
//!   its seed-003 configuration file once computed;
//! - the product names (the default product of protocols that name none).
//!
//! Every cache is bounded by entry count and by an estimate of its bytes, and every entry
//! expires [`CACHE_TTL`] after it was read (how stale another replica's change can look here,
//! as for builds and product policies). Changes made on this replica are seen at once: each
//! write path drops what it changes (`forget_device`, `forget_attempt`, `config_changed`,
//! `forget_product_names`), and the device change log drops what other replicas changed within
//! about a second. A fill that read the database while something was dropped is not stored
//! (see [`HotCaches::generation`]), so a racing change is never hidden. Entries are per device
//! (keyed by its id or MAC): nothing cached for one device is served to another.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::*;

/// Devices (by MAC) kept at most, and their estimated bytes (device record and configuration file).
const MAC_ENTRIES: usize = 16_384;
const MAC_BYTES: usize = 64 << 20;
/// Current attempts kept at most, and their estimated bytes.
const ATTEMPT_ENTRIES: usize = 16_384;
const ATTEMPT_BYTES: usize = 16 << 20;

/// A map bounded by entry count and by total weight (an estimate of bytes), whose entries
/// expire `ttl` after they were stored. Beyond a bound, random entries make room (as in the
/// fleet index). Pure: the time is an argument.
pub struct BoundedMap<K, V> {
    entries: IndexMap<K, Slot<V>>,
    max_entries: usize,
    max_weight: usize,
    weight: usize,
    ttl: Duration,
}

struct Slot<V> {
    value: V,
    stored: Instant,
    weight: usize,
}

impl<K: std::hash::Hash + Eq, V> BoundedMap<K, V> {
    pub fn new(max_entries: usize, max_weight: usize, ttl: Duration) -> Self {
        BoundedMap { entries: IndexMap::new(), max_entries, max_weight, weight: 0, ttl }
    }

    /// The value of `key`, unless it expired.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.entries.get(key).filter(|slot| now.saturating_duration_since(slot.stored) < self.ttl).map(|slot| &slot.value)
    }

    /// When `key`'s value was stored (expired or not).
    pub fn stored_at<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|slot| slot.stored)
    }

    /// Stores `value` as read at `stored`, making room if needed; returns what was removed to
    /// make room (for the caller's secondary indexes). A value heavier than the whole budget
    /// is not stored.
    pub fn insert(&mut self, key: K, value: V, weight: usize, stored: Instant) -> Vec<(K, V)> {
        self.remove(&key);
        let mut evicted = Vec::new();
        if weight > self.max_weight || self.max_entries == 0 {
            return evicted;
        }
        while !self.entries.is_empty() && (self.entries.len() >= self.max_entries || self.weight + weight > self.max_weight) {
            let index = rand::random_range(0..self.entries.len());
            if let Some((k, slot)) = self.entries.swap_remove_index(index) {
                self.weight -= slot.weight;
                evicted.push((k, slot.value));
            }
        }
        self.weight += weight;
        self.entries.insert(key, Slot { value, stored, weight });
        evicted
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let slot = self.entries.swap_remove(key)?;
        self.weight -= slot.weight;
        Some(slot.value)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.weight = 0;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn weight(&self) -> usize {
        self.weight
    }
}

/// A device's seed-003 configuration file (`GET /api/configs/{mac}.json`), as computed from the
/// stored layers.
pub struct ConfigFile {
    /// The `ETag` (see `domain::config::effective_version`).
    pub version: String,
    /// The merged stored layers, secrets still encrypted (revealed per request, never cached).
    pub content: Value,
    /// The serialised document without secret values, as anonymous readers get it.
    pub public_body: Bytes,
    /// `config_changed` calls seen when it was computed.
    config_generation: u64,
}

impl ConfigFile {
    /// `config_generation`: [`HotCaches::config_generation`] as read before the layers were.
    pub fn new(version: String, content: Value, public_body: Bytes, config_generation: u64) -> Self {
        ConfigFile { version, content, public_body, config_generation }
    }

    fn weight(&self) -> usize {
        // A parsed JSON value takes a few times its text.
        self.version.len() + 4 * self.public_body.len() + 256
    }
}

struct MacEntry {
    device: Arc<Device>,
    config: Option<Arc<ConfigFile>>,
}

fn device_weight(device: &Device) -> usize {
    let json = |v: &Value| if v.as_object().is_some_and(|m| m.is_empty()) { 2 } else { v.to_string().len() };
    1024 + 4 * (json(&device.attributes) + json(&device.metadata)) + device.tags.iter().map(|t| t.len() + 32).sum::<usize>()
}

/// Devices by MAC, plus the MAC of each cached device id (to drop an entry by device id).
struct MacIndex {
    map: BoundedMap<Mac, MacEntry>,
    mac_of: HashMap<String, Mac>,
}

impl MacIndex {
    fn insert(&mut self, entry: MacEntry, weight: usize, stored: Instant) {
        let (Some(mac), id) = (entry.device.mac, entry.device.id.clone()) else { return };
        if let Some(old) = self.map.remove(&mac) {
            self.mac_of.remove(old.device.id.as_ref());
        }
        for (_, evicted) in self.map.insert(mac, entry, weight, stored) {
            self.mac_of.remove(evicted.device.id.as_ref());
        }
        if self.map.stored_at(&mac).is_some() {
            self.mac_of.insert(id.to_string(), mac);
        }
    }

    fn forget(&mut self, device_id: &str) {
        if let Some(mac) = self.mac_of.remove(device_id) {
            self.map.remove(&mac);
        }
    }
}

/// The hot-path caches of one process (see the module documentation).
pub struct HotCaches {
    /// Bumped by every drop: a fill reads it before reading the database and stores its result
    /// only if it did not move meanwhile.
    generation: AtomicU64,
    /// Bumped by every configuration write on this replica.
    config_generation: AtomicU64,
    attempts: Mutex<BoundedMap<String, Option<UpdateAttempt>>>,
    by_mac: Mutex<MacIndex>,
    product_names: Mutex<Option<(Arc<Vec<String>>, Instant)>>,
}

impl Default for HotCaches {
    fn default() -> Self {
        HotCaches {
            generation: AtomicU64::new(0),
            config_generation: AtomicU64::new(0),
            attempts: Mutex::new(BoundedMap::new(ATTEMPT_ENTRIES, ATTEMPT_BYTES, CACHE_TTL)),
            by_mac: Mutex::new(MacIndex { map: BoundedMap::new(MAC_ENTRIES, MAC_BYTES, CACHE_TTL), mac_of: HashMap::new() }),
            product_names: Mutex::new(None),
        }
    }
}

impl HotCaches {
    /// Read before reading the database for a fill; pass it to the store call.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn attempts(&self) -> std::sync::MutexGuard<'_, BoundedMap<String, Option<UpdateAttempt>>> {
        self.attempts.lock().expect("attempt cache lock")
    }

    fn by_mac(&self) -> std::sync::MutexGuard<'_, MacIndex> {
        self.by_mac.lock().expect("mac cache lock")
    }

    /// Drops everything cached about a device (it changed, or was deleted).
    pub fn forget_device(&self, device_id: &str) {
        self.bump();
        self.attempts().remove(device_id);
        self.by_mac().forget(device_id);
    }

    /// Drops a device's cached current attempt (an attempt was opened or changed state).
    pub fn forget_attempt(&self, device_id: &str) {
        self.bump();
        self.attempts().remove(device_id);
    }

    /// A configuration layer changed: every cached configuration file is stale.
    pub fn config_changed(&self) {
        self.bump();
        self.config_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The set of products may have changed (a product or a build was written or deleted).
    pub fn forget_product_names(&self) {
        self.bump();
        *self.product_names.lock().expect("product names lock") = None;
    }

    /// The cached current attempt of a device: `Some(None)` when it is known to have none.
    pub fn attempt(&self, device_id: &str) -> Option<Option<UpdateAttempt>> {
        self.attempts().get(device_id, Instant::now()).cloned()
    }

    pub fn store_attempt(&self, device_id: &str, attempt: Option<UpdateAttempt>, generation: u64) {
        let weight = 512 + attempt.as_ref().map_or(0, |a| a.message.as_ref().map_or(0, String::len) + 64 * a.events.len());
        let mut attempts = self.attempts();
        if self.generation() == generation {
            attempts.insert(device_id.to_string(), attempt, weight, Instant::now());
        }
    }

    pub fn device_by_mac(&self, mac: &Mac) -> Option<Arc<Device>> {
        self.by_mac().map.get(mac, Instant::now()).map(|entry| entry.device.clone())
    }

    pub fn store_device(&self, device: Arc<Device>, generation: u64) {
        let weight = device_weight(&device);
        let mut index = self.by_mac();
        if self.generation() == generation {
            index.insert(MacEntry { device, config: None }, weight, Instant::now());
        }
    }

    /// The cached device with this MAC and its configuration file, if both are current.
    pub fn config_file(&self, mac: &Mac) -> Option<(Arc<Device>, Arc<ConfigFile>)> {
        let config_generation = self.config_generation.load(Ordering::SeqCst);
        let index = self.by_mac();
        let entry = index.map.get(mac, Instant::now())?;
        let config = entry.config.as_ref().filter(|c| c.config_generation == config_generation)?;
        Some((entry.device.clone(), config.clone()))
    }

    /// `config_changed` calls so far: read before reading the layers for a fill.
    pub fn config_generation(&self) -> u64 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Attaches a configuration file to the cached entry of `device` (still the one cached for
    /// its MAC), unless anything was dropped or a layer changed since `generation` and the
    /// file's `config_generation` were read. The entry keeps the time its device was read.
    pub fn store_config_file(&self, device: &Device, file: Arc<ConfigFile>, generation: u64) {
        let mut index = self.by_mac();
        if self.generation() != generation || self.config_generation() != file.config_generation {
            return;
        }
        let Some(mac) = device.mac else { return };
        let Some(stored) = index.map.stored_at(&mac) else { return };
        let Some(entry) = index.map.remove(&mac) else { return };
        if entry.device.id != device.id {
            index.mac_of.remove(entry.device.id.as_ref());
            return;
        }
        let weight = device_weight(&entry.device) + file.weight();
        index.insert(MacEntry { device: entry.device, config: Some(file) }, weight, stored);
    }

    pub fn product_names(&self) -> Option<Arc<Vec<String>>> {
        let names = self.product_names.lock().expect("product names lock");
        names.as_ref().filter(|(_, stored)| stored.elapsed() < CACHE_TTL).map(|(names, _)| names.clone())
    }

    pub fn store_product_names(&self, names: Arc<Vec<String>>, generation: u64) {
        let mut cached = self.product_names.lock().expect("product names lock");
        if self.generation() == generation {
            *cached = Some((names, Instant::now()));
        }
    }
}

/// A device's current attempt, from the cache or the database.
pub(super) async fn current_attempt_cached(core: &Core, device_id: &str) -> Result<Option<UpdateAttempt>> {
    let caches = &core.devices.caches;
    if let Some(attempt) = caches.attempt(device_id) {
        return Ok(attempt);
    }
    let generation = caches.generation();
    let attempt = core.store.current_attempt(device_id).await?;
    caches.store_attempt(device_id, attempt.clone(), generation);
    Ok(attempt)
}

/// The registered device with this MAC, from the cache or the database.
pub async fn device_by_mac(core: &Core, mac: &Mac) -> Result<Option<Arc<Device>>> {
    let caches = &core.devices.caches;
    if let Some(device) = caches.device_by_mac(mac) {
        return Ok(Some(device));
    }
    let generation = caches.generation();
    let Some(device) = core.store.find_device_by_mac(mac).await? else { return Ok(None) };
    let device = Arc::new(device);
    caches.store_device(device.clone(), generation);
    Ok(Some(device))
}

/// The names of every product (defined, or named by a build), from the cache or the database.
pub async fn product_names(core: &Core) -> Result<Arc<Vec<String>>> {
    let caches = &core.devices.caches;
    if let Some(names) = caches.product_names() {
        return Ok(names);
    }
    let generation = caches.generation();
    let names = Arc::new(core.store.product_names().await?);
    caches.store_product_names(names.clone(), generation);
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::firmware::{Channel, ProductName};

    const TTL: Duration = Duration::from_secs(5);

    #[test]
    fn the_map_keeps_at_most_its_entries() {
        let now = Instant::now();
        let mut map = BoundedMap::new(100, usize::MAX, TTL);
        for i in 0..10_000 {
            map.insert(i, i, 1, now);
            assert!(map.len() <= 100);
        }
        assert_eq!(map.len(), 100);
        assert_eq!(map.get(&9_999, now), Some(&9_999), "the newest entry is always kept");
    }

    #[test]
    fn the_map_keeps_at_most_its_weight() {
        let now = Instant::now();
        let mut map = BoundedMap::new(usize::MAX, 1_000, TTL);
        for i in 0..10_000usize {
            map.insert(i, i, 1 + i % 97, now);
            assert!(map.weight() <= 1_000, "weight {} after {i}", map.weight());
        }
        map.insert(1, 1, 1_001, now);
        assert!(map.get(&1, now).is_none(), "a value heavier than the budget is not stored");
        assert!(map.weight() <= 1_000);
        let total: usize = (0..10_000usize).filter(|i| map.get(i, now).is_some()).map(|i| 1 + i % 97).sum();
        assert_eq!(total, map.weight(), "the weight is that of the entries held");
    }

    #[test]
    fn entries_expire_and_can_be_replaced_or_removed() {
        let now = Instant::now();
        let mut map = BoundedMap::new(10, 100, TTL);
        map.insert("a", 1, 10, now);
        assert_eq!(map.get("a", now + Duration::from_secs(4)), Some(&1));
        assert_eq!(map.get("a", now + TTL), None, "expired");
        map.insert("a", 2, 20, now);
        assert_eq!((map.get("a", now), map.len(), map.weight()), (Some(&2), 1, 20), "replaced, not added");
        assert_eq!(map.remove("a"), Some(2));
        assert!(map.is_empty());
        assert_eq!(map.weight(), 0);
        map.insert("b", 3, 10, now);
        map.clear();
        assert_eq!((map.len(), map.weight()), (0, 0));
    }

    #[test]
    fn a_zero_capacity_map_keeps_nothing() {
        let now = Instant::now();
        let mut map = BoundedMap::new(0, 100, TTL);
        map.insert(1, 1, 1, now);
        assert!(map.is_empty());
    }

    fn device(n: u8) -> Device {
        let now = Utc::now();
        Device {
            id: format!("device-{n}").into(),
            mac: Some(Mac::parse(&format!("02:00:00:00:00:{n:02x}")).unwrap()),
            uid: None,
            name: format!("d{n}"),
            product: Some(ProductName::parse("p").unwrap()),
            hardware: None,
            channel: Channel::parse("stable").unwrap(),
            version: None,
            target_version: None,
            tags: Vec::new(),
            attributes: json!({}),
            metadata: json!({}),
            owner: None,
            has_token: false,
            last_seen: None,
            ip: None,
            setup_status: None,
            reprovision_until: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_device_is_dropped_by_id_and_a_racing_fill_is_not_stored() {
        let caches = HotCaches::default();
        let one = Arc::new(device(1));
        let generation = caches.generation();
        caches.store_device(one.clone(), generation);
        assert_eq!(caches.device_by_mac(&one.mac.unwrap()).map(|d| d.id.clone()), Some(one.id.clone()));
        caches.forget_device(&one.id);
        assert!(caches.device_by_mac(&one.mac.unwrap()).is_none());

        // A fill that started before a drop is not stored.
        let generation = caches.generation();
        caches.forget_device("someone else");
        caches.store_device(one.clone(), generation);
        assert!(caches.device_by_mac(&one.mac.unwrap()).is_none());

        // Attempts likewise.
        let generation = caches.generation();
        caches.store_attempt(&one.id, None, generation);
        assert_eq!(caches.attempt(&one.id), Some(None));
        caches.forget_attempt(&one.id);
        assert_eq!(caches.attempt(&one.id), None);
    }

    #[test]
    fn a_configuration_file_is_dropped_by_any_configuration_change() {
        let caches = HotCaches::default();
        let one = Arc::new(device(1));
        caches.store_device(one.clone(), caches.generation());
        let file = |config_generation| {
            Arc::new(ConfigFile::new("v1".into(), json!({"a": 1}), Bytes::from_static(b"{\"a\":1}"), config_generation))
        };
        caches.store_config_file(&one, file(caches.config_generation()), caches.generation());
        assert_eq!(caches.config_file(&one.mac.unwrap()).map(|(_, f)| f.version.clone()), Some("v1".into()));
        caches.config_changed();
        assert!(caches.config_file(&one.mac.unwrap()).is_none(), "stale after a configuration change");
        assert!(caches.device_by_mac(&one.mac.unwrap()).is_some(), "the device itself did not change");

        // A file computed from layers read before a change is not stored.
        let config_generation = caches.config_generation();
        let generation = caches.generation();
        caches.config_changed();
        caches.store_config_file(&one, file(config_generation), generation);
        assert!(caches.config_file(&one.mac.unwrap()).is_none());

        // Nor one for another device than the one cached for the MAC.
        let mut other = device(1);
        other.id = "another".into();
        caches.store_config_file(&other, file(caches.config_generation()), caches.generation());
        assert!(caches.config_file(&one.mac.unwrap()).is_none());
    }

    #[test]
    fn the_device_index_stays_bounded() {
        let caches = HotCaches::default();
        for n in 0..(MAC_ENTRIES + 100) {
            let mut d = device(0);
            d.id = format!("device-{n}").into();
            d.mac = Some(Mac::parse(&format!("02:00:00:{:02x}:{:02x}:{:02x}", n >> 16 & 0xff, n >> 8 & 0xff, n & 0xff)).unwrap());
            caches.store_device(Arc::new(d), caches.generation());
        }
        let index = caches.by_mac();
        assert_eq!(index.map.len(), MAC_ENTRIES);
        assert_eq!(index.mac_of.len(), MAC_ENTRIES, "the id index follows the evictions");
    }
}
