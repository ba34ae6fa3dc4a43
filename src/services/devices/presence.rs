//! Presence: when each device was last heard from and from where, buffered and written in rate-limited batches, and the offline sweep.

use super::*;

pub(super) fn mark_seen(core: &Core, device: &ActiveDevice, now: DateTime<Utc>, ip: Option<IpAddr>) {
    let runtime = &core.devices;
    // `last_seen` is stored at a granularity of half the offline period: a device that
    // checks in often costs one write per period, not one per request. Every replica therefore
    // sees a device online while it is (the stored value is at most half the offline period
    // old); a replica that did not serve a silent device may call it offline up to half the
    // offline period early. The replica serving it is exact.
    let granularity = chrono::Duration::from_std(runtime.policy.offline_after / 2).unwrap_or(chrono::Duration::MAX);
    let (came_online, write) = {
        let mut online = runtime.online.lock().expect("online lock");
        match online.get_mut(&*device.id) {
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
                let moved = ip.is_some() && ip != device.stored_ip;
                let stored_fresh = device.stored_last_seen.is_some_and(|stored| now - stored < granularity) && !moved;
                let written = if stored_fresh { device.stored_last_seen.unwrap_or(now) } else { now };
                online.insert(device.id.clone(), Heard { seen: now, written, written_ip: ip.or(device.stored_ip) });
                (true, !stored_fresh)
            }
        }
    };
    if write {
        runtime.presence.lock().expect("presence lock").insert(device.id.clone(), (now, ip.map(|i| i.to_string())));
    }
    if came_online {
        core.events.publish("device.online", Some(&device.id), json!({"mac": device.mac.canonical()}));
    }
}

/// Writes buffered `last_seen` values, oldest first: at most `limit` of them (the periodic
/// flush passes `presence_writes_per_sec`; shutdown passes `None`, for all). Bounding the
/// rate keeps the database's write load, and so the check-in cost, independent of how many
/// devices check in: under a flood the stored values lag, while this replica's own view
/// (online state, `last_seen` in its answers) stays exact.
pub async fn flush_presence(core: &Core, limit: Option<usize>) -> Result<usize> {
    let batch: Vec<(Arc<str>, DateTime<Utc>, Option<String>)> = {
        let mut presence = core.devices.presence.lock().expect("presence lock");
        let take = limit.unwrap_or(usize::MAX).min(presence.len());
        presence.drain(..take).map(|(id, (at, ip))| (id, at, ip)).collect()
    };
    let written = batch.len();
    if let Err(e) = core.store.record_presence(&batch).await {
        // Put them back so the next flush tries again (newer values win).
        let mut presence = core.devices.presence.lock().expect("presence lock");
        for (id, at, ip) in batch {
            presence.entry(id).or_insert((at, ip));
        }
        return Err(e);
    }
    if limit.is_some() {
        metrics::gauge!("updraft_presence_backlog").set(core.devices.presence.lock().expect("presence lock").len() as f64);
    }
    Ok(written)
}

/// Marks devices offline after `offline_after` of silence.
pub fn sweep_offline(core: &Core) -> Vec<String> {
    let cutoff = Utc::now() - chrono::Duration::from_std(core.devices.policy.offline_after).unwrap_or(chrono::Duration::MAX);
    let mut gone = Vec::new();
    let connected = core.devices.connected.lock().expect("connected lock").clone();
    core.devices.online.lock().expect("online lock").retain(|id, heard| {
        let keep = heard.seen >= cutoff || connected.contains(id);
        if !keep {
            gone.push(id.to_string());
        }
        keep
    });
    for id in &gone {
        core.events.publish("device.offline", Some(id), json!({}));
    }
    gone
}
