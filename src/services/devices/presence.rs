//! Presence: when each device was last heard from and from where, which devices hold an MQTT
//! session, the `last_seen` values waiting to be written (in rate-limited batches), and the
//! offline sweep.
//!
//! All of it is one value, `Presence`, behind one lock in `DeviceRuntime`. Its methods are
//! pure: they take the time as an argument and return what happened (a device came online,
//! went offline), so the services around them publish events after the lock is released, and
//! the rules are unit-tested below.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use super::*;
use crate::services::fleet::{DeviceKey, PackedIp, PackedMicros, time_of};

/// A device's presence on this replica, while it is online (heard from within `offline_after`,
/// or holding a session) or has a `last_seen` waiting to be written: 50 bytes, no pointers,
/// no padding.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: DeviceKey,
    /// When it was last heard from (µs).
    seen: PackedMicros,
    /// The `last_seen` last buffered for writing, or found stored (µs); while `WAITING`, the
    /// value that waits.
    written: PackedMicros,
    /// The address last buffered for writing, or found stored.
    written_ip: PackedIp,
    flags: u8,
}

/// Heard from within `offline_after` (or holding a session).
const ONLINE: u8 = 1;
/// `written` waits to be written.
const WAITING: u8 = 2;
/// ... with `written_ip`.
const WITH_IP: u8 = 4;
/// The slot's number is in the line (once at most; it may no longer wait).
const IN_LINE: u8 = 8;
/// The slot holds no device (its number is in `free`).
const FREE: u8 = 16;

/// What a device's stored row says about its presence (from the fleet index).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored {
    pub last_seen: Option<DateTime<Utc>>,
    pub ip: Option<IpAddr>,
}

/// The presence of every device this replica heard from.
///
/// The write backlog is bounded by the devices, not by the check-ins: a device waits at most
/// once, with its newest `last_seen` and address (later values replace the waiting one in its
/// slot, and keep its place in the line). What waits costs 4 bytes in the line beyond the
/// device's slot, so a flood of check-ins that outruns `UPDRAFT_PRESENCE_WRITES_PER_SEC`
/// makes stored values lag, but never grows memory beyond one slot per device, and loses no
/// device's newest `last_seen`.
#[derive(Debug)]
pub struct Presence {
    offline_after: chrono::Duration,
    /// At most this many devices in `disconnected`.
    capacity: usize,
    /// Devices online or waiting to be written, found through `positions`. A slot keeps its
    /// number while it is used (the line names slots by number); a freed one is reused.
    slots: Vec<Slot>,
    /// Numbers of the `FREE` slots.
    free: Vec<u32>,
    positions: HashTable<u32>,
    hasher: RandomState,
    /// Numbers of the slots whose `last_seen` waits to be written, in the order they first
    /// waited. A slot is in the line once at most (`IN_LINE`); one that no longer waits
    /// (forgotten meanwhile) is skipped.
    line: VecDeque<u32>,
    /// Slots with `WAITING`.
    waiting: usize,
    /// Devices with an open MQTT session: online until they disconnect, however long silent.
    connected: HashSet<Arc<str>>,
    /// When MQTT devices disconnected: offline from then on, until heard from again.
    disconnected: HashMap<Arc<str>, DateTime<Utc>>,
}

/// A device heard from: whether it came online with this, and whether a `last_seen` was
/// buffered for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub came_online: bool,
    pub buffered: bool,
}

fn micros(at: DateTime<Utc>) -> PackedMicros {
    PackedMicros::new(at.timestamp_micros())
}

impl Presence {
    pub fn new(offline_after: Duration, capacity: usize) -> Self {
        Presence {
            offline_after: chrono::Duration::from_std(offline_after).unwrap_or(chrono::Duration::MAX),
            capacity: capacity.max(1),
            slots: Vec::new(),
            free: Vec::new(),
            positions: HashTable::new(),
            hasher: RandomState::new(),
            line: VecDeque::new(),
            waiting: 0,
            connected: HashSet::new(),
            disconnected: HashMap::new(),
        }
    }

    /// Makes room for `additional` more devices at once (see `FleetIndex::reserve`).
    pub fn reserve(&mut self, additional: usize) {
        let additional = additional.saturating_sub(self.free.len());
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.positions.reserve(additional, |&i| hasher.hash_one(slots[i as usize].key));
        self.slots.reserve_exact(additional);
    }

    fn position(&self, key: &DeviceKey) -> Option<usize> {
        let slots = &self.slots;
        self.positions.find(self.hasher.hash_one(key), |&at| slots[at as usize].key == *key).map(|&at| at as usize)
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        let key = DeviceKey::find(id)?;
        self.position(&key).map(|at| &self.slots[at])
    }

    fn add(&mut self, mut slot: Slot) -> usize {
        let at = match self.free.pop() {
            Some(at) => {
                // A freed slot's number may still be in the line: that place is the new device's.
                slot.flags |= self.slots[at as usize].flags & IN_LINE;
                self.slots[at as usize] = slot;
                at
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 slots")
            }
        };
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.positions.insert_unique(hasher.hash_one(slot.key), at, |&i| hasher.hash_one(slots[i as usize].key));
        at as usize
    }

    /// Frees the slot at `at` (the others keep their numbers).
    fn remove_at(&mut self, at: usize) {
        let hasher = &self.hasher;
        let position = at as u32;
        if let Ok(found) = self.positions.find_entry(hasher.hash_one(self.slots[at].key), |&i| i == position) {
            found.remove();
        }
        let slot = &mut self.slots[at];
        if slot.flags & WAITING != 0 {
            self.waiting -= 1;
        }
        slot.flags = FREE | (slot.flags & IN_LINE);
        self.free.push(position);
    }

    /// Marks the slot at `at` as waiting with `written` (and its address when `with_ip`).
    fn wait(&mut self, at: usize, with_ip: bool) {
        let slot = &mut self.slots[at];
        if slot.flags & WAITING == 0 {
            slot.flags |= WAITING;
            self.waiting += 1;
            if slot.flags & IN_LINE == 0 {
                slot.flags |= IN_LINE;
                self.line.push_back(at as u32);
            }
        }
        if with_ip {
            slot.flags |= WITH_IP;
        }
    }

    /// The device was heard from at `now` (from `ip`, when the protocol says).
    ///
    /// `last_seen` is stored at a granularity of half the offline period: a device that checks
    /// in often costs one write per period, not one per request. Every replica therefore sees
    /// a device online while it is (the stored value is at most half the offline period old);
    /// a replica that did not serve a silent device may call it offline up to half the offline
    /// period early. The replica serving it is exact. A new address is written at once.
    pub fn seen(&mut self, id: &Arc<str>, stored: Stored, now: DateTime<Utc>, ip: Option<IpAddr>) -> Seen {
        let granularity = self.offline_after / 2;
        let key = DeviceKey::of(id);
        let found = self.position(&key);
        // A device whose last value still waits is continued from that value, online or not.
        let (came_online, buffered, at) = match found.filter(|&at| self.slots[at].flags & (ONLINE | WAITING) != 0) {
            Some(at) => {
                let slot = &mut self.slots[at];
                let came_online = slot.flags & ONLINE == 0;
                slot.flags |= ONLINE;
                slot.seen = micros(now);
                let moved = ip.is_some() && ip != slot.written_ip.get();
                let written = time_of(slot.written.get()).unwrap_or(now);
                let write = moved || now - written >= granularity;
                if write {
                    slot.written = micros(now);
                    slot.written_ip = PackedIp::pack(ip.or(slot.written_ip.get()));
                }
                (came_online, write, at)
            }
            None => {
                let moved = ip.is_some() && ip != stored.ip;
                let stored_fresh = stored.last_seen.is_some_and(|at| now - at < granularity) && !moved;
                let written = if stored_fresh { stored.last_seen.unwrap_or(now) } else { now };
                let slot =
                    Slot { key, seen: micros(now), written: micros(written), written_ip: PackedIp::pack(ip.or(stored.ip)), flags: ONLINE };
                let at = match found {
                    Some(at) => {
                        // Keeps its place in the line, if it has one.
                        self.slots[at] = Slot { flags: slot.flags | (self.slots[at].flags & IN_LINE), ..slot };
                        at
                    }
                    None => self.add(slot),
                };
                (true, !stored_fresh, at)
            }
        };
        if buffered {
            self.wait(at, ip.is_some());
        }
        Seen { came_online, buffered }
    }

    /// The device opened an MQTT session. True when it held none before.
    pub fn connected(&mut self, id: &Arc<str>) -> bool {
        self.disconnected.remove(&**id);
        self.connected.insert(id.clone())
    }

    /// The device's MQTT session ended at `now`. `None` when it held none; else whether it was
    /// online until then (and is offline now).
    pub fn disconnected(&mut self, id: &str, now: DateTime<Utc>) -> Option<bool> {
        if !self.connected.remove(id) {
            return None;
        }
        if self.disconnected.len() >= self.capacity {
            // Entries matter only within `offline_after`: drop the older ones when full.
            let cutoff = now - self.offline_after;
            self.disconnected.retain(|_, at| *at > cutoff);
        }
        self.disconnected.insert(Arc::from(id), now);
        Some(self.went_offline(id))
    }

    /// The device is offline: its slot stays only while a value waits. Whether it was online.
    fn went_offline(&mut self, id: &str) -> bool {
        let Some(at) = DeviceKey::find(id).and_then(|key| self.position(&key)) else { return false };
        let slot = &mut self.slots[at];
        let was_online = slot.flags & ONLINE != 0;
        slot.flags &= !ONLINE;
        if slot.flags & WAITING == 0 {
            self.remove_at(at);
        }
        was_online
    }

    /// Devices silent for `offline_after` at `now` (and holding no session): they are offline
    /// from now on.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> Vec<Arc<str>> {
        let cutoff = micros(now - self.offline_after).get();
        let mut gone = Vec::new();
        for at in (0..self.slots.len()).rev() {
            let slot = &mut self.slots[at];
            if slot.flags & ONLINE == 0 || slot.seen.get() >= cutoff {
                continue;
            }
            let id = slot.key.text();
            if self.connected.contains(&id) {
                continue;
            }
            slot.flags &= !ONLINE;
            if slot.flags & WAITING == 0 {
                self.remove_at(at);
            }
            gone.push(id);
        }
        gone
    }

    /// Forgets a deleted device.
    pub fn forget(&mut self, id: &str) {
        if let Some(at) = DeviceKey::find(id).and_then(|key| self.position(&key)) {
            self.remove_at(at);
        }
        self.connected.remove(id);
        self.disconnected.remove(id);
    }

    /// Takes up to `limit` of the `last_seen` values waiting to be written, oldest first.
    pub fn take_backlog(&mut self, limit: usize) -> Vec<(Arc<str>, DateTime<Utc>, Option<String>)> {
        let mut taken = Vec::with_capacity(limit.min(self.waiting));
        while taken.len() < limit
            && let Some(at) = self.line.pop_front()
        {
            let at = at as usize;
            let slot = &mut self.slots[at];
            slot.flags &= !IN_LINE;
            if slot.flags & (WAITING | FREE) != WAITING {
                continue;
            }
            let ip = (slot.flags & WITH_IP != 0).then(|| slot.written_ip.get()).flatten().map(|ip| ip.to_string());
            taken.push((slot.key.text(), time_of(slot.written.get()).unwrap_or_default(), ip));
            slot.flags &= !(WAITING | WITH_IP);
            self.waiting -= 1;
            if slot.flags & ONLINE == 0 {
                self.remove_at(at);
            }
        }
        if self.line.is_empty() {
            // Let a line that a flood made long give its memory back.
            self.line.shrink_to(1024);
            if self.free.len() == self.slots.len() {
                // No slot is used (and none is in the line): so are the slots'.
                self.slots = Vec::new();
                self.free = Vec::new();
            }
        }
        taken
    }

    /// Puts back values whose write failed; newer values buffered since then win.
    pub fn restore_backlog(&mut self, batch: Vec<(Arc<str>, DateTime<Utc>, Option<String>)>) {
        for (id, at, ip) in batch {
            let key = DeviceKey::of(&id);
            let ip: Option<IpAddr> = ip.and_then(|ip| ip.parse().ok());
            let position = match self.position(&key) {
                Some(position) if self.slots[position].flags & WAITING != 0 => continue,
                Some(position) => {
                    let slot = &mut self.slots[position];
                    slot.written = PackedMicros::new(slot.written.get().max(micros(at).get()));
                    if ip.is_some() {
                        slot.written_ip = PackedIp::pack(ip);
                    }
                    position
                }
                None => self.add(Slot { key, seen: micros(at), written: micros(at), written_ip: PackedIp::pack(ip), flags: 0 }),
            };
            self.wait(position, ip.is_some());
        }
    }

    pub fn backlog_len(&self) -> usize {
        self.waiting
    }

    /// The freshest known `last_seen` of a device: buffered, heard, or stored.
    pub fn last_seen(&self, id: &str, stored: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let Some(slot) = self.slot(id) else { return stored };
        let buffered = (slot.flags & WAITING != 0).then(|| time_of(slot.written.get())).flatten();
        let heard = (slot.flags & ONLINE != 0).then(|| time_of(slot.seen.get())).flatten();
        buffered.max(heard).max(stored)
    }

    /// The freshest known address of a device: buffered, else what this replica last buffered
    /// (also while a flush is in flight, when the value is in neither the backlog nor the
    /// database yet), else the stored one.
    pub fn ip(&self, id: &str, stored: Option<&str>) -> Option<String> {
        self.slot(id)
            .filter(|slot| slot.flags & (ONLINE | WITH_IP) != 0)
            .and_then(|slot| slot.written_ip.get())
            .map(|ip| ip.to_string())
            .or_else(|| stored.map(str::to_string))
    }

    /// Online: holding a session, or heard from within `offline_after` of `now` and not
    /// disconnected since.
    pub fn is_online(&self, id: &str, stored_last_seen: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        if self.connected.contains(id) {
            return true;
        }
        let gone = self.disconnected.get(id).copied();
        self.last_seen(id, stored_last_seen).is_some_and(|seen| now - seen < self.offline_after && gone.is_none_or(|gone| seen > gone))
    }

    pub fn is_connected(&self, id: &str) -> bool {
        self.connected.contains(id)
    }

    pub fn connected_devices(&self) -> Vec<Arc<str>> {
        self.connected.iter().cloned().collect()
    }

    pub fn connected_count(&self) -> usize {
        self.connected.len()
    }
}

pub(super) fn mark_seen(core: &Core, device: &ActiveDevice, now: DateTime<Utc>, ip: Option<IpAddr>) {
    let stored = Stored { last_seen: device.stored_last_seen, ip: device.stored_ip };
    let seen = core.devices.presence().seen(&device.id, stored, now, ip);
    if seen.came_online {
        core.events.publish(Event::DeviceOnline { device_id: device.id.to_string(), mac: device.mac });
    }
}

/// Writes buffered `last_seen` values, oldest first: at most `limit` of them (the periodic
/// flush passes `presence_writes_per_sec`; shutdown passes `None`, for all). Bounding the
/// rate keeps the database's write load, and so the check-in cost, independent of how many
/// devices check in: under a flood the stored values lag, while this replica's own view
/// (online state, `last_seen` in its answers) stays exact.
pub async fn flush_presence(core: &Core, limit: Option<usize>) -> Result<usize> {
    let _writing = core.devices.presence_flush.lock().await;
    let mut unwritten = Unwritten { core, batch: core.devices.presence().take_backlog(limit.unwrap_or(usize::MAX)) };
    let written = unwritten.batch.len();
    // On an error, or when this future is dropped mid-write (shutdown stops the loop that
    // runs it), `unwritten` puts the values back: the next flush, or the final one, writes them.
    core.store.record_presence(&unwritten.batch).await?;
    unwritten.batch.clear();
    if limit.is_some() {
        metrics::gauge!("updraft_presence_backlog").set(core.devices.presence().backlog_len() as f64);
    }
    Ok(written)
}

/// Buffered values taken for a write that has not succeeded (yet): put back when dropped.
struct Unwritten<'a> {
    core: &'a Core,
    batch: Vec<(Arc<str>, DateTime<Utc>, Option<String>)>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if !self.batch.is_empty() {
            self.core.devices.presence().restore_backlog(std::mem::take(&mut self.batch));
        }
    }
}

/// What the final write of buffered presence did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalWrite {
    pub written: usize,
    /// Values not written when the deadline came (only how recently those devices were seen
    /// is lost: their next check-in restores it).
    pub left: usize,
}

/// Writes every buffered `last_seen` value before `deadline`, for shutdown: all of them at
/// once, in device-id order, so that neighbouring rows share pages (on a large table several
/// times faster than the arrival order), in transactions of `FINAL_BATCH` rows. A batch the
/// deadline cuts off is rolled back and counted as left.
pub async fn write_all_presence(core: &Core, deadline: tokio::time::Instant) -> Result<FinalWrite> {
    const FINAL_BATCH: usize = 5_000;
    let mut all = core.devices.presence().take_backlog(usize::MAX);
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut written = 0;
    for batch in all.chunks(FINAL_BATCH) {
        match tokio::time::timeout_at(deadline, core.store.record_presence(batch)).await {
            Ok(Ok(())) => written += batch.len(),
            Ok(Err(e)) => {
                core.devices.presence().restore_backlog(all[written..].to_vec());
                return Err(e);
            }
            Err(_) => break,
        }
    }
    Ok(FinalWrite { written, left: all.len() - written })
}

/// Marks devices offline after `offline_after` of silence.
pub fn sweep_offline(core: &Core) -> Vec<String> {
    let gone = core.devices.presence().sweep(Utc::now());
    for id in &gone {
        core.events.publish(Event::DeviceOffline { device_id: id.to_string() });
    }
    gone.iter().map(|id| id.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn id(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    fn presence() -> Presence {
        // Offline after 600 s: `last_seen` is written at most every 300 s per device.
        Presence::new(Duration::from_secs(600), 1000)
    }

    #[test]
    fn a_device_comes_online_once_and_its_last_seen_is_written_once_per_half_period() {
        let mut p = presence();
        let d = id("d1");
        assert_eq!(p.seen(&d, Stored::default(), at(0), None), Seen { came_online: true, buffered: true });
        assert_eq!(p.seen(&d, Stored::default(), at(10), None), Seen { came_online: false, buffered: false });
        assert_eq!(p.seen(&d, Stored::default(), at(299), None), Seen { came_online: false, buffered: false });
        assert_eq!(p.seen(&d, Stored::default(), at(300), None), Seen { came_online: false, buffered: true });
        // The newest value of a device waits once, at its first place in the line.
        assert_eq!(p.backlog_len(), 1);
        assert_eq!(p.take_backlog(10), vec![(d.clone(), at(300), None)]);
        assert_eq!(p.last_seen("d1", None), Some(at(300)));
    }

    #[test]
    fn a_fresh_stored_value_is_not_written_again_but_a_new_address_is_at_once() {
        let mut p = presence();
        let d = id("d1");
        let home: IpAddr = "192.0.2.1".parse().unwrap();
        let stored = Stored { last_seen: Some(at(-100)), ip: Some(home) };
        assert_eq!(p.seen(&d, stored, at(0), Some(home)), Seen { came_online: true, buffered: false });
        let away: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(p.seen(&d, stored, at(5), Some(away)), Seen { came_online: false, buffered: true });
        assert_eq!(p.ip("d1", Some("192.0.2.1")), Some("192.0.2.2".into()));
        // After the flush took it, the address this replica wrote last still answers.
        p.take_backlog(10);
        assert_eq!(p.ip("d1", Some("192.0.2.1")), Some("192.0.2.2".into()));
    }

    #[test]
    fn silent_devices_go_offline_at_the_sweep_but_connected_ones_stay() {
        let mut p = presence();
        let (silent, mqtt) = (id("silent"), id("mqtt"));
        p.seen(&silent, Stored::default(), at(0), None);
        p.seen(&mqtt, Stored::default(), at(0), None);
        p.connected(&mqtt);
        assert!(p.sweep(at(599)).is_empty());
        assert_eq!(p.sweep(at(601)), vec![silent.clone()]);
        assert!(!p.is_online("silent", Some(at(0)), at(601)));
        assert!(p.is_online("mqtt", Some(at(0)), at(5000)), "a session keeps a device online however silent");
        // It comes back when heard from again.
        assert!(p.seen(&silent, Stored::default(), at(700), None).came_online);
    }

    #[test]
    fn a_disconnect_makes_a_device_offline_until_it_is_heard_from_again() {
        let mut p = presence();
        let d = id("d1");
        assert!(p.connected(&d));
        assert!(!p.connected(&d), "a second session is not a new connection");
        p.seen(&d, Stored::default(), at(0), None);
        assert_eq!(p.disconnected("d1", at(10)), Some(true));
        assert_eq!(p.disconnected("d1", at(11)), None, "only the first disconnect counts");
        assert!(!p.is_online("d1", Some(at(9)), at(12)), "a stored last_seen from before the disconnect does not make it online");
        p.seen(&d, Stored::default(), at(20), None);
        assert!(p.is_online("d1", None, at(21)));
    }

    #[test]
    fn a_failed_write_puts_values_back_without_hiding_newer_ones() {
        let mut p = presence();
        let (a, b) = (id("a"), id("b"));
        p.seen(&a, Stored::default(), at(0), None);
        p.seen(&b, Stored::default(), at(1), None);
        let batch = p.take_backlog(1);
        assert_eq!(batch, vec![(a.clone(), at(0), None)]);
        // While it was being written, `a` was seen again from a new place.
        p.seen(&a, Stored::default(), at(2), Some("192.0.2.9".parse().unwrap()));
        p.restore_backlog(batch);
        let rest = p.take_backlog(10);
        assert_eq!(rest.len(), 2);
        assert!(rest.contains(&(a.clone(), at(2), Some("192.0.2.9".into()))), "{rest:?}");
    }

    #[test]
    fn a_forgotten_device_leaves_nothing_behind() {
        let mut p = presence();
        let d = id("d1");
        p.seen(&d, Stored::default(), at(0), None);
        p.connected(&d);
        p.forget("d1");
        assert_eq!((p.backlog_len(), p.connected_count(), p.last_seen("d1", None)), (0, 0, None));
    }

    #[test]
    fn the_backlog_holds_one_value_per_device_however_many_check_ins_the_newest() {
        // Offline after 20 s: a value is buffered every 10 s per device.
        let mut p = Presence::new(Duration::from_secs(20), 1000);
        let ids: Vec<Arc<str>> = (0..100).map(|i| id(&format!("d{i}"))).collect();
        for second in 0..1000 {
            for (i, d) in ids.iter().enumerate() {
                let ip: IpAddr = format!("192.0.2.{}", (second / 100) % 200).parse().unwrap();
                p.seen(d, Stored::default(), at(second * 100 + i as i64 % 100), Some(ip));
            }
            // Nothing is written: the line never holds a device twice.
            assert_eq!(p.backlog_len(), ids.len());
            assert_eq!(p.line.len(), ids.len());
        }
        let taken = p.take_backlog(usize::MAX);
        assert_eq!(taken.len(), ids.len());
        for (i, (device, seen, ip)) in taken.iter().enumerate() {
            // In the order they first waited, each with its newest value.
            assert_eq!(device, &ids[i]);
            assert!(*seen > at(999 * 100 - 10), "{seen}");
            assert_eq!(ip.as_deref(), Some("192.0.2.9"));
        }
        assert_eq!((p.backlog_len(), p.line.len()), (0, 0));
    }

    #[test]
    fn a_value_waiting_for_an_offline_device_is_kept_until_written() {
        let mut p = presence();
        let d = id("d1");
        p.seen(&d, Stored::default(), at(0), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(p.sweep(at(700)), vec![d.clone()]);
        assert!(!p.is_online("d1", None, at(700)));
        assert_eq!(p.last_seen("d1", None), Some(at(0)), "the waiting value still answers");
        assert_eq!(p.take_backlog(10), vec![(d.clone(), at(0), Some("192.0.2.1".into()))]);
        // Written and offline: nothing is left of it.
        assert_eq!((p.slots.len(), p.positions.len()), (0, 0));
        // Back online while a value waits: it continues from that value.
        p.seen(&d, Stored::default(), at(1000), None);
        p.sweep(at(2000));
        assert!(p.seen(&d, Stored::default(), at(2001), None).came_online);
        assert_eq!(p.backlog_len(), 1);
        assert_eq!(p.take_backlog(10), vec![(d.clone(), at(2001), None)]);
    }

    #[test]
    fn a_forgotten_device_loses_its_place_in_line_and_others_keep_theirs() {
        let mut p = presence();
        let (a, b, c) = (id("a"), id("b"), id("c"));
        for d in [&a, &b, &c] {
            p.seen(d, Stored::default(), at(0), None);
        }
        p.forget("b");
        p.seen(&b, Stored::default(), at(1), None);
        assert_eq!(p.backlog_len(), 3);
        let taken: Vec<Arc<str>> = p.take_backlog(10).into_iter().map(|(d, _, _)| d).collect();
        assert_eq!(taken.len(), 3);
        assert!(taken.contains(&a) && taken.contains(&b) && taken.contains(&c));
        assert_eq!(p.take_backlog(10), vec![]);
    }

    #[test]
    fn a_presence_slot_is_small() {
        assert!(std::mem::size_of::<Slot>() <= 50, "{} bytes", std::mem::size_of::<Slot>());
    }

    #[test]
    fn freed_slots_are_reused_and_the_line_names_each_slot_once() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(18);
        // Offline after 20 s: a value is buffered every 10 s per device.
        let mut p = Presence::new(Duration::from_secs(20), 1000);
        let ids: Vec<Arc<str>> = (0..40).map(|i| id(&format!("d{i}"))).collect();
        // The value each device has waiting, if any.
        let mut waiting: HashMap<Arc<str>, DateTime<Utc>> = HashMap::new();
        let mut second = 0;
        for _ in 0..5_000 {
            second += rng.random_range(0..3);
            let d = &ids[rng.random_range(0..ids.len())];
            match rng.random_range(0..10) {
                0 => {
                    p.forget(d);
                    waiting.remove(d);
                }
                1 => {
                    for gone in p.sweep(at(second)) {
                        assert!(!p.is_online(&gone, None, at(second)));
                    }
                }
                2 => {
                    for (device, value, _) in p.take_backlog(rng.random_range(0..8)) {
                        assert_eq!(waiting.remove(&device), Some(value), "{device}: its newest value, once");
                    }
                }
                _ => {
                    if p.seen(d, Stored::default(), at(second), None).buffered {
                        waiting.insert(d.clone(), at(second));
                    }
                }
            }
            assert_eq!(p.backlog_len(), waiting.len());
            assert!(p.line.len() <= p.slots.len(), "a slot is in the line once at most");
            assert!(p.slots.len() <= ids.len(), "freed slots are reused");
            assert_eq!(p.positions.len() + p.free.len(), p.slots.len());
        }
        let rest = p.take_backlog(usize::MAX);
        assert_eq!(rest.len(), waiting.len());
        for (device, value, _) in rest {
            assert_eq!(waiting.remove(&device), Some(value));
        }
    }
}
