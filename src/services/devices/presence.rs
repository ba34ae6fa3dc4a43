//! Presence: when each device was last heard from and from where, which devices hold an MQTT
//! session, the `last_seen` values waiting to be written (in rate-limited batches), and the
//! offline sweep.
//!
//! All of it is one value, `Presence`, behind one lock in `DeviceRuntime`. Its methods are
//! pure: they take the time as an argument and return what happened (a device came online,
//! went offline), so the services around them publish events after the lock is released, and
//! the rules are unit-tested below.

use super::*;

/// When a device was last heard from, and the `last_seen` and address last buffered for
/// writing (or found stored).
#[derive(Debug, Clone, Copy)]
struct Heard {
    seen: DateTime<Utc>,
    written: DateTime<Utc>,
    written_ip: Option<IpAddr>,
}

/// What a device's stored row says about its presence (from the fleet index).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored {
    pub last_seen: Option<DateTime<Utc>>,
    pub ip: Option<IpAddr>,
}

/// The presence of every device this replica heard from.
#[derive(Debug)]
pub struct Presence {
    offline_after: chrono::Duration,
    /// At most this many devices in `disconnected`.
    capacity: usize,
    /// Devices heard from within `offline_after` (or holding a session).
    heard: HashMap<Arc<str>, Heard>,
    /// `last_seen` values waiting to be written, in the order they first waited.
    backlog: IndexMap<Arc<str>, (DateTime<Utc>, Option<String>)>,
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

impl Presence {
    pub fn new(offline_after: Duration, capacity: usize) -> Self {
        Presence {
            offline_after: chrono::Duration::from_std(offline_after).unwrap_or(chrono::Duration::MAX),
            capacity: capacity.max(1),
            heard: HashMap::new(),
            backlog: IndexMap::new(),
            connected: HashSet::new(),
            disconnected: HashMap::new(),
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
        let (came_online, buffered) = match self.heard.get_mut(&**id) {
            Some(heard) => {
                heard.seen = now;
                let moved = ip.is_some() && ip != heard.written_ip;
                let write = moved || now - heard.written >= granularity;
                if write {
                    heard.written = now;
                    heard.written_ip = ip.or(heard.written_ip);
                }
                (false, write)
            }
            None => {
                let moved = ip.is_some() && ip != stored.ip;
                let stored_fresh = stored.last_seen.is_some_and(|at| now - at < granularity) && !moved;
                let written = if stored_fresh { stored.last_seen.unwrap_or(now) } else { now };
                self.heard.insert(id.clone(), Heard { seen: now, written, written_ip: ip.or(stored.ip) });
                (true, !stored_fresh)
            }
        };
        if buffered {
            self.backlog.insert(id.clone(), (now, ip.map(|i| i.to_string())));
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
        Some(self.heard.remove(id).is_some())
    }

    /// Devices silent for `offline_after` at `now` (and holding no session): they are offline
    /// from now on.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> Vec<Arc<str>> {
        let cutoff = now - self.offline_after;
        let mut gone = Vec::new();
        let connected = &self.connected;
        self.heard.retain(|id, heard| {
            let keep = heard.seen >= cutoff || connected.contains(id);
            if !keep {
                gone.push(id.clone());
            }
            keep
        });
        gone
    }

    /// Forgets a deleted device.
    pub fn forget(&mut self, id: &str) {
        self.heard.remove(id);
        self.backlog.shift_remove(id);
        self.connected.remove(id);
        self.disconnected.remove(id);
    }

    /// Takes up to `limit` of the `last_seen` values waiting to be written, oldest first.
    pub fn take_backlog(&mut self, limit: usize) -> Vec<(Arc<str>, DateTime<Utc>, Option<String>)> {
        let take = limit.min(self.backlog.len());
        self.backlog.drain(..take).map(|(id, (at, ip))| (id, at, ip)).collect()
    }

    /// Puts back values whose write failed; newer values buffered since then win.
    pub fn restore_backlog(&mut self, batch: Vec<(Arc<str>, DateTime<Utc>, Option<String>)>) {
        for (id, at, ip) in batch {
            self.backlog.entry(id).or_insert((at, ip));
        }
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// The freshest known `last_seen` of a device: buffered, heard, or stored.
    pub fn last_seen(&self, id: &str, stored: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let buffered = self.backlog.get(id).map(|(at, _)| *at);
        let heard = self.heard.get(id).map(|heard| heard.seen);
        buffered.max(heard).max(stored)
    }

    /// The freshest known address of a device: buffered, else what this replica last buffered
    /// (also while a flush is in flight, when the value is in neither the backlog nor the
    /// database yet), else the stored one.
    pub fn ip(&self, id: &str, stored: Option<&str>) -> Option<String> {
        self.backlog
            .get(id)
            .and_then(|(_, ip)| ip.clone())
            .or_else(|| self.heard.get(id).and_then(|heard| heard.written_ip).map(|ip| ip.to_string()))
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
}
