//! The device subsystem's background loops: presence flushing, the offline sweep, the fleet index's load and its change-log follower.

use super::*;

/// Runs presence flushing, the offline sweep, the change-log follower and the fleet index's
/// load, under `core.tasks` (until the server stops).
pub fn spawn_background(core: Core) {
    // Offline transitions are noticed within a quarter of the silence period (1-5 s).
    let sweep_every = (core.devices.policy.offline_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
    let core_for_changes = core.clone();
    core.tasks.clone().spawn("presence", async move {
        // Ten small batches a second rather than one large one: a write holds the database
        // (and, on SQLite, a core) for a tenth as long, which keeps check-in latency steady.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let per_flush = core.devices.policy.presence_writes_per_sec.div_ceil(10).max(1);
        let mut last_sweep = Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = flush_presence(&core, Some(per_flush)).await {
                tracing::warn!(error = %e, "cannot write device presence; will retry");
            }
            if last_sweep.elapsed() >= sweep_every {
                sweep_offline(&core);
                last_sweep = Instant::now();
            }
        }
    });
    // Follow changes from before the load starts, so that nothing loaded stays stale.
    core_for_changes.tasks.spawn("device change follower", follow_device_changes(core_for_changes.clone()));
    core_for_changes.tasks.clone().spawn("fleet index load", async move {
        let started = Instant::now();
        match preload_fleet(&core_for_changes).await {
            Ok(loaded) => tracing::info!(devices = loaded, elapsed_ms = started.elapsed().as_millis() as u64, "fleet index loaded"),
            Err(e) => tracing::warn!(error = %e, "cannot load the fleet index; devices are read on their first check-in"),
        }
    });
}

/// Drops cached devices that changed anywhere (this or another replica), once a second.
pub(super) async fn follow_device_changes(core: Core) {
    // Overlap the windows: a change committed late with an earlier timestamp is still seen.
    const OVERLAP_MS: i64 = 5_000;
    let mut since = Utc::now().timestamp_millis();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_prune = Instant::now();
    loop {
        tick.tick().await;
        let now = Utc::now().timestamp_millis();
        match core.store.changed_devices_since(since - OVERLAP_MS).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    let mut fleet = core.devices.fleet.write().expect("fleet lock");
                    for (device_id, _) in &changes {
                        fleet.forget(device_id);
                        core.devices.caches.forget_device(device_id);
                    }
                    drop(fleet);
                    let _ = core.devices.changed.send(changes.into_iter().map(|(device_id, _)| device_id).collect());
                }
                since = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read device changes; cached devices may be stale"),
        }
        if last_prune.elapsed() >= Duration::from_secs(60) {
            if let Err(e) = core.store.prune_device_changes(now - 10 * 60 * 1000).await {
                tracing::warn!(error = %e, "cannot prune the device change log");
            }
            last_prune = Instant::now();
        }
    }
}
