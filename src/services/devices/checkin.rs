//! The check-in: what a device reports, the update decision, and the attempt an offer opens.

use super::*;

#[derive(Default)]
pub struct CheckinReport {
    pub version: Option<String>,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub attributes: Option<Value>,
}

pub struct Offer {
    pub artifact: Artifact,
    pub attempt_id: String,
    /// The release's id; for a build that belongs to no release, the build's own id.
    pub release_id: String,
    /// Pins and forced rollouts.
    pub mandatory: bool,
}

pub struct CheckinAnswer {
    pub offer: Option<Offer>,
    pub no_update: Option<NoUpdate>,
    pub poll_interval_s: u32,
}

/// Records a check-in and decides whether the device should update.
pub async fn checkin(core: &Core, device: Arc<ActiveDevice>, report: CheckinReport, ip: Option<IpAddr>) -> Result<CheckinAnswer> {
    let runtime = &core.devices;
    let now = Utc::now();

    // Validate what the device reports before anything is recorded: a refused check-in
    // changes nothing.
    if let Some(version) = &report.version {
        Version::parse(version)?;
    }
    let product = report.product.as_deref().map(ProductName::parse).transpose()?;
    let mut hardware = report.hardware.as_deref().map(HardwareId::parse).transpose()?;
    if hardware.is_none() && device.hardware.is_none() {
        hardware = inferred_hardware(core, product.as_deref().or(device.product.as_deref())).await?;
        if let Some(inferred) = &hardware {
            tracing::info!(device_id = %device.id, hardware = %inferred, "hardware unknown: set to the only one its product has");
        }
    }
    check_claims(core, &device, product.as_deref(), hardware.as_deref()).await?;
    mark_seen(core, &device, now, ip);

    // Apply what the device reports, writing only what changed.
    let (attributes, reported_attributes) = match &report.attributes {
        Some(reported) => {
            device::check_json_object("attributes", reported)?;
            let hash = attributes_hash(reported);
            if hash == device.reported_attributes {
                // The same object as last time: merging it again changes nothing.
                (None, hash)
            } else {
                let stored = core.store.find_device(&device.id).await?.ok_or_else(|| Error::not_found("device", &*device.id))?;
                let merged = device::merge_attributes(&stored.attributes, reported);
                ((merged != stored.attributes).then_some(merged), hash)
            }
        }
        None => (None, device.reported_attributes),
    };
    let changed = DeviceReport {
        version: report.version.clone().filter(|v| device.version.as_deref() != Some(v.as_str())),
        product: product.filter(|p| device.product.as_deref() != Some(p.as_str())),
        hardware: hardware.filter(|h| device.hardware.as_deref() != Some(h.as_str())),
        attributes,
    };
    let anything_changed =
        changed.version.is_some() || changed.product.is_some() || changed.hardware.is_some() || changed.attributes.is_some();
    let device = if anything_changed || reported_attributes != device.reported_attributes {
        let mut updated = (*device).clone();
        if anything_changed {
            let written = core.store.record_report(&device.id, &changed).await;
            runtime.caches.forget_device(&device.id);
            written?;
        }
        if let Some(v) = &changed.version {
            updated.version = Some(v.as_str().into());
        }
        if let Some(p) = &changed.product {
            updated.product = Some(p.as_str().into());
        }
        if let Some(h) = &changed.hardware {
            updated.hardware = Some(h.as_str().into());
        }
        updated.reported_attributes = reported_attributes;
        // Only what this check-in changed goes into the index: the copy this request started
        // from may be older than the entry (another request of the same device meanwhile).
        runtime.fleet.write().expect("fleet lock").update(&updated.id, |d| {
            if changed.version.is_some() {
                d.version.clone_from(&updated.version);
            }
            if changed.product.is_some() {
                d.product.clone_from(&updated.product);
            }
            if changed.hardware.is_some() {
                d.hardware.clone_from(&updated.hardware);
            }
            d.reported_attributes = reported_attributes;
        });
        if anything_changed {
            core.events.publish(Event::DeviceUpdated {
                device_id: updated.id.to_string(),
                change: DeviceChange::Reported {
                    version: updated.version.as_deref().map(str::to_string),
                    product: updated.product.as_deref().map(str::to_string),
                    hardware: updated.hardware.as_deref().map(str::to_string),
                },
            });
        }
        Arc::new(updated)
    } else {
        device
    };

    // A reported version equal to the current attempt's target completes it. A device that
    // reported `installed` and now reports another version did not boot the new build (its
    // bootloader went back): the attempt failed.
    if (changed.version.is_some() || (device.awaiting_boot && report.version.is_some()))
        && let Some(attempt) = core.store.current_attempt(&device.id).await?
        && let Some((state, message)) = device::attempt_outcome(&attempt, device.version.as_deref())
    {
        let progress = (state == UpdateState::Succeeded).then_some(100);
        let written = core.store.set_attempt_state(&attempt.id, state, progress, message.as_deref()).await;
        runtime.attempt_changed(&device.id);
        written?;
        core.events.publish(Event::UpdateStatus(UpdateStatus::of(&attempt, state, progress, message)));
    }
    let device = if device.awaiting_boot {
        let mut updated = (*device).clone();
        updated.awaiting_boot = false;
        runtime.fleet.write().expect("fleet lock").update(&updated.id, |d| d.awaiting_boot = false);
        Arc::new(updated)
    } else {
        device
    };

    let (poll_interval_s, decided) = decide_for(core, &device, now).await?;
    let answer = match decided {
        Err(reason) => CheckinAnswer { offer: None, no_update: Some(reason), poll_interval_s },
        Ok(chosen) => match offer_attempt(core, &device, &chosen.artifact, chosen.rollout.as_ref(), chosen.rollouts.as_deref()).await? {
            Some(attempt) => CheckinAnswer {
                offer: Some(Offer {
                    artifact: chosen.artifact,
                    attempt_id: attempt.id.into(),
                    release_id: attempt.release_id.into(),
                    mandatory: chosen.mandatory,
                }),
                no_update: None,
                poll_interval_s,
            },
            None => CheckinAnswer { offer: None, no_update: Some(NoUpdate::UpToDate), poll_interval_s },
        },
    };
    if core.events.active() {
        core.events.publish(Event::DeviceCheckin {
            device_id: device.id.to_string(),
            version: device.version.as_deref().map(str::to_string),
            offered: answer.offer.as_ref().map(|o| o.artifact.version.clone()),
        });
    }
    Ok(answer)
}

/// Refuses a check-in that names another product than the device's, or another hardware than
/// its product admits (see `device::check_product_claim`); logged, as it is either a
/// misconfigured device or one trying to reach another product's builds and secrets.
pub(super) async fn check_claims(core: &Core, device: &ActiveDevice, product: Option<&str>, hardware: Option<&str>) -> Result<()> {
    let claimed_product = match product {
        Some(name) if device.product.as_deref() != Some(name) => {
            let policy = product_policy(core, name).await?;
            if let Err(e) = device::check_product_claim(device.product.as_deref(), &policy) {
                tracing::warn!(device_id = %device.id, product = ?device.product.as_deref(), claimed = name, "check-in refused: it names another product");
                return Err(e);
            }
            Some(policy)
        }
        _ => None,
    };
    if let Some(hardware) = hardware.filter(|h| device.hardware.as_deref() != Some(*h)) {
        let policy = match (claimed_product, &device.product) {
            (Some(policy), _) => Some(policy),
            (None, Some(name)) => Some(product_policy(core, name).await?),
            (None, None) => None,
        };
        if let Err(e) = device::check_hardware_claim(device.hardware.as_deref(), hardware, policy.as_ref()) {
            tracing::warn!(device_id = %device.id, hardware = ?device.hardware.as_deref(), claimed = hardware, "check-in refused: it names hardware its product does not admit");
            return Err(e);
        }
    }
    Ok(())
}

/// The hardware of a device that never said which it is (a ThingsBoard SDK device, seed 000,
/// a device registered without one): its product's only admitted hardware, else the one
/// hardware all the product's builds share (`compat::sole_hardware`, as compatibility
/// adapters do). `None` when the product has several, or none yet.
pub(super) async fn inferred_hardware(core: &Core, product: Option<&str>) -> Result<Option<HardwareId>> {
    let Some(product) = product else { return Ok(None) };
    if let Some(only) = product_policy(core, product).await?.sole_hardware() {
        return Ok(Some(only.clone()));
    }
    Ok(crate::domain::compat::sole_hardware(&builds_of(core, product).await?, product))
}

/// A hash of a reported attributes object, to notice a device reporting the same one again.
pub(super) fn attributes_hash(value: &Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    // 0 means "unknown".
    hasher.finish().max(1)
}

/// The build a device should be offered now (with the rollout offering it), or why none.
pub(super) struct Chosen {
    pub(super) artifact: Artifact,
    pub(super) mandatory: bool,
    pub(super) rollout: Option<RolloutOffer>,
    pub(super) rollouts: Option<Arc<rollouts::ProductRollouts>>,
}

/// The update decision for a device as it is now, and its poll interval: what a check-in
/// answers and what an MQTT push sends, before any attempt is opened.
pub(super) async fn decide_for(
    core: &Core,
    device: &ActiveDevice,
    now: DateTime<Utc>,
) -> Result<(u32, std::result::Result<Chosen, NoUpdate>)> {
    let poll_interval_s = match &device.product {
        Some(product) => product_policy(core, product).await?.poll_interval_s,
        None => core.devices.policy.default_poll_interval_s,
    };
    let builds = match &device.product {
        Some(product) => builds_of(core, product).await?,
        None => Arc::new(Vec::new()),
    };
    let facts = device.facts();
    let rollouts = device.product.as_deref().and_then(|product| rollouts::of_product(core, product));
    let offers: Vec<RolloutOffer> = rollouts.as_ref().and_then(|r| r.offer_for(device, facts.version.as_ref(), now)).into_iter().collect();
    let releases = Releases { held: rollouts.as_ref().map(|r| &r.held), offers: &offers };
    let decided = match update::decide(&facts, &builds, releases) {
        Decision::None(reason) => Err(reason),
        Decision::Offer { artifact, mandatory, rollout, .. } => {
            Ok(Chosen { artifact: artifact.clone(), mandatory, rollout: rollout.cloned(), rollouts: rollouts.clone() })
        }
    };
    core.devices.note_decision(&device.id, decided.as_ref().err());
    Ok((poll_interval_s, decided))
}

/// What an offer of `artifact` does, given the device's current attempt: reuse that attempt
/// when it is for this build and still open; nothing when the device failed or rejected the
/// build recently (devices such as the ThingsBoard SDK retry at once, forever); otherwise a
/// new attempt. A device that failed (or timed out) in a rollout is not offered its release by
/// it again. A rollout's offer to a device it did not offer before takes one of its download
/// slots; none left, no offer this time.
pub(super) enum AttemptPlan<'a> {
    Reuse(Box<UpdateAttempt>),
    Refuse,
    Open { release_id: &'a str, slot: Option<RolloutSlot<'a>> },
}

pub(super) async fn plan_attempt<'a>(
    core: &Core,
    device_id: &str,
    artifact: &'a Artifact,
    rollout: Option<&'a RolloutOffer>,
    rollouts: Option<&rollouts::ProductRollouts>,
    current: Option<UpdateAttempt>,
) -> Result<AttemptPlan<'a>> {
    if let Some(attempt) = current
        && attempt.artifact_id == artifact.id
    {
        if !attempt.state.is_final() {
            return Ok(AttemptPlan::Reuse(Box::new(attempt)));
        }
        let retry_after = chrono::Duration::from_std(core.devices.policy.retry_failed_after).unwrap_or(chrono::Duration::MAX);
        if matches!(attempt.state, UpdateState::Failed | UpdateState::Rejected) && Utc::now() - attempt.updated_at < retry_after {
            return Ok(AttemptPlan::Refuse);
        }
        // Offering a build the device succeeded with: either it went back to another version
        // since (offer it again), or this decision worked from a copy of the device read
        // before the report that completed the attempt. The stored version tells which.
        if attempt.state == UpdateState::Succeeded {
            let reported = core.store.find_device(device_id).await?.and_then(|d| d.version);
            if device::still_runs_succeeded_build(&attempt, reported.as_deref()) {
                tracing::debug!(%device_id, attempt_id = %attempt.id, "not offering again a build the device already runs (an old view of it)");
                return Ok(AttemptPlan::Refuse);
            }
        }
    }
    let slot = match (rollout, rollouts) {
        (Some(offer), Some(rollouts)) => {
            // A device that failed (or timed out) in this rollout is not offered its release by
            // it again: it stays failed. A pin or another rollout can include it again.
            if core
                .store
                .rollout_member_state(&RolloutId::from(&*offer.rollout_id), &DeviceId::from(device_id))
                .await?
                .is_some_and(|state| state.is_failure())
            {
                return Ok(AttemptPlan::Refuse);
            }
            if !rollouts.take_slot(&offer.rollout_id) {
                return Ok(AttemptPlan::Refuse);
            }
            Some(RolloutSlot {
                rollout_id: &offer.rollout_id,
                stage: offer.stage,
                deadline_s: rollouts.deadline_s(&offer.rollout_id).unwrap_or(core.rollouts.policy.device_deadline.as_secs()),
            })
        }
        _ => None,
    };
    Ok(AttemptPlan::Open { release_id: rollout.map(|r| &*r.release_id).unwrap_or(&artifact.id), slot })
}

pub(super) fn publish_offered(core: &Core, device_id: &str, release_id: &str, rollout: Option<&RolloutOffer>, artifact: &Artifact) {
    core.events.publish(Event::UpdateStatus(UpdateStatus {
        device_id: device_id.to_string(),
        release_id: release_id.to_string(),
        rollout_id: rollout.map(|r| r.rollout_id.to_string()),
        state: UpdateState::Offered,
        progress: None,
        message: None,
        version: artifact.version.clone(),
    }));
}

/// The attempt backing an offer (see [`AttemptPlan`]). The device's current attempt comes
/// from the attempt cache (`caches`): a device offered an update checks in again and again
/// while its attempt stays the same, and reading it each time was most of such a check-in's
/// cost. Every write below drops the cached attempt.
pub(super) async fn offer_attempt(
    core: &Core,
    device: &ActiveDevice,
    artifact: &Artifact,
    rollout: Option<&RolloutOffer>,
    rollouts: Option<&rollouts::ProductRollouts>,
) -> Result<Option<UpdateAttempt>> {
    let current = current_attempt_cached(core, &device.id).await?;
    let replacing = current.as_ref().map(|a| a.id.clone());
    let (release_id, slot) = match plan_attempt(core, &device.id, artifact, rollout, rollouts, current).await? {
        AttemptPlan::Reuse(attempt) => return Ok(Some(*attempt)),
        AttemptPlan::Refuse => return Ok(None),
        AttemptPlan::Open { release_id, slot } => (release_id, slot),
    };
    let opened = core
        .store
        .open_attempt(&AttemptOffer {
            device_id: &device.id,
            artifact_id: &artifact.id,
            release_id,
            from_version: device.version.as_deref(),
            to_version: &artifact.version,
            rollout: slot,
            replacing: replacing.as_deref(),
        })
        .await;
    core.devices.attempt_changed(&device.id);
    let Some(attempt) = opened? else {
        // A concurrent check-in of this device opened an attempt first: answer with it when
        // it is for this build (the download slot, if one was taken, is recounted later).
        let current = core.store.current_attempt(&device.id).await?;
        return Ok(current.filter(|a| a.artifact_id == artifact.id && !a.state.is_final()));
    };
    publish_offered(core, &device.id, release_id, rollout, artifact);
    Ok(Some(attempt))
}

/// The builds of a product, from a short-lived cache.
pub async fn builds_of(core: &Core, product: &str) -> Result<Arc<Vec<Artifact>>> {
    if let Some((builds, fetched)) = core.devices.builds.read().expect("cache lock").get(product)
        && fetched.elapsed() < CACHE_TTL
    {
        return Ok(builds.clone());
    }
    let mut all = Vec::new();
    let mut offset = 0u64;
    loop {
        let filter = ArtifactFilter {
            product: Some(product.to_string()),
            sort: ArtifactSort::NewestFirst,
            limit: 500,
            offset,
            ..Default::default()
        };
        let (page, total) = core.store.list_artifacts(&filter).await?;
        offset += page.len() as u64;
        let done = page.is_empty() || offset >= total;
        all.extend(page);
        if done {
            break;
        }
    }
    let builds = Arc::new(all);
    core.devices.builds.write().expect("cache lock").insert(product.to_string(), (builds.clone(), Instant::now()));
    Ok(builds)
}
