//! Each replica's view of the live rollouts and held builds by product (`RolloutRuntime`), reloaded when `rollout_revision` changes, and the check-in's part of it.

use super::*;

/// Reloads the view if the revision changed since the last load (or `force`).
pub async fn refresh(core: &Core, force: bool) -> Result<()> {
    let runtime = &core.rollouts;
    let _guard = runtime.reloading.lock().await;
    let revision = core.store.rollout_revision().await?;
    if !force && *runtime.loaded_revision.lock().expect("revision lock") == Some(revision) {
        return Ok(());
    }
    let mut products: HashMap<String, ProductRollouts> = HashMap::new();
    for (product, since) in core.store.managed_products().await? {
        products.entry(product).or_default().held.since = Some(since);
    }
    for (product, artifact_id) in core.store.held_artifacts().await? {
        products.entry(product).or_default().held.released.insert(artifact_id.into());
    }
    let now = Utc::now();
    let catch_up = chrono::Duration::from_std(runtime.policy.catch_up).unwrap_or(chrono::Duration::MAX);
    let rollouts = core.store.list_live_rollouts(catch_up_start(now, catch_up)).await?;
    let mut expires: Option<DateTime<Utc>> = None;
    let mut releases: HashMap<ReleaseId, Option<Release>> = HashMap::new();
    let mut groups: HashMap<GroupId, HashSet<DeviceId>> = HashMap::new();
    for rollout in rollouts {
        let until = (rollout.state == RolloutState::Completed)
            .then(|| rollout.completed_at.unwrap_or(rollout.updated_at).checked_add_signed(catch_up).unwrap_or(DateTime::<Utc>::MAX_UTC));
        if let Some(until) = until {
            if until <= now {
                // Its catch-up period is over: evicted, it offers nothing more.
                continue;
            }
            expires = Some(expires.map_or(until, |e| e.min(until)));
        }
        if !releases.contains_key(&rollout.release_id) {
            releases.insert(rollout.release_id.clone(), core.store.find_release(&rollout.release_id).await?);
        }
        let Some(Some(release)) = releases.get(&rollout.release_id) else { continue };
        let builds = release_builds(core, release).await?;
        let matcher = matcher(core, &rollout, release, &builds, &mut groups).await?;
        let version = release.version_key.clone();
        let live = LiveRollout {
            offer: RolloutOffer {
                rollout_id: rollout.id.as_str().into(),
                release_id: release.id.as_str().into(),
                stage: 0,
                builds: builds.into(),
                mandatory: rollout.options.forced,
            },
            version,
            matcher,
            shares: rollout.shares.clone(),
            window: rollout.options.window.clone(),
            max_concurrent: rollout.options.max_concurrent,
            in_flight: AtomicU64::new(0),
            deadline_s: rollout.options.device_deadline_s,
            until,
        };
        products.entry(rollout.product.to_string()).or_default().live.push(live);
    }
    for product in products.values_mut() {
        product.live.sort_by(|a, b| b.version.cmp(&a.version));
    }
    let view: HashMap<String, Arc<ProductRollouts>> = products.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    *runtime.view.write().expect("rollout view lock") = Arc::new(view);
    *runtime.loaded_revision.lock().expect("revision lock") = Some(revision);
    *runtime.expires.lock().expect("expiry lock") = expires;
    refresh_in_flight(core).await
}

/// Rollouts completed before this time have ended their catch-up period.
pub(super) fn catch_up_start(now: DateTime<Utc>, catch_up: chrono::Duration) -> DateTime<Utc> {
    now.checked_sub_signed(catch_up).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Recounts download slots in use from the database (all replicas' offers).
pub(super) async fn refresh_in_flight(core: &Core) -> Result<()> {
    let counts: HashMap<String, u64> = core.store.rollouts_in_flight().await?.into_iter().collect();
    let view = core.rollouts.view.read().expect("rollout view lock").clone();
    for product in view.values() {
        for live in &product.live {
            if live.max_concurrent.is_some() {
                live.in_flight.store(counts.get(&*live.offer.rollout_id).copied().unwrap_or(0), Ordering::Release);
            }
        }
    }
    Ok(())
}

pub(super) async fn release_builds(core: &Core, release: &Release) -> Result<Vec<Artifact>> {
    let builds = devices::builds_of(core, &release.product).await?;
    let mut found: Vec<Artifact> = builds.iter().filter(|a| release.artifact_ids.contains(&a.id)).cloned().collect();
    if found.len() < release.artifact_ids.len() {
        // Uploaded moments ago on another replica: read past the cache.
        core.devices.forget_builds(&release.product);
        let builds = devices::builds_of(core, &release.product).await?;
        found = builds.iter().filter(|a| release.artifact_ids.contains(&a.id)).cloned().collect();
    }
    Ok(found)
}

pub(super) async fn matcher(
    core: &Core,
    rollout: &Rollout,
    release: &Release,
    builds: &[Artifact],
    groups: &mut HashMap<GroupId, HashSet<DeviceId>>,
) -> Result<Matcher> {
    let group = match &rollout.target.group {
        Some(id) => {
            if !groups.contains_key(id) {
                groups.insert(id.clone(), core.store.group_members(id).await?.into_iter().collect());
            }
            groups.get(id).cloned()
        }
        None => None,
    };
    let mut release_hardware: Vec<String> = builds.iter().flat_map(|b| b.hardware.iter().map(ToString::to_string)).collect();
    release_hardware.sort();
    release_hardware.dedup();
    Ok(Matcher {
        target: rollout.target.clone(),
        release_hardware,
        release_channel: release.channel.to_string(),
        group,
        registered_by: if rollout.options.dynamic { None } else { Some(rollout.started_at.unwrap_or_else(Utc::now).timestamp_millis()) },
    })
}
