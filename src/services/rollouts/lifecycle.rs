//! Rollouts: creation (target, stages, overlaps), operator transitions with their history, counts.

use super::*;

pub struct NewRollout {
    pub name: Option<String>,
    pub release_id: ReleaseId,
    pub target: Target,
    /// Ids or MACs of an explicit device list.
    pub devices: Option<Vec<String>>,
    pub stages: Vec<Stage>,
    pub options: RolloutOptions,
    pub start: bool,
    /// Who creates it (`Principal::actor`): recorded on its first transitions.
    pub actor: String,
}

/// Another rollout whose target shares devices with a new one.
pub struct Overlap {
    pub rollout_id: String,
    pub release_id: String,
    pub name: String,
    pub state: RolloutState,
    pub release_version: String,
    pub devices: u64,
}

/// Creates a rollout (a draft, or running with `start`), and reports the rollouts of the same
/// product whose targets share devices with it (such devices get the newer release).
pub async fn create_rollout(core: &Core, new: NewRollout) -> Result<(Rollout, Vec<Overlap>)> {
    let start = new.start;
    let actor = new.actor.clone();
    let (rollout, release) = prepare_rollout(core, new).await?;
    let overlaps = overlaps(core, &rollout, &release).await?;
    core.store.insert_rollout(&rollout, &actor).await?;
    core.events.publish(Event::RolloutCreated {
        rollout_id: rollout.id.to_string(),
        release_id: release.id.to_string(),
        overlaps: overlaps.len(),
    });
    let rollout = if start { act(core, &rollout.id, Action::Start, &actor, "started at creation").await? } else { rollout };
    Ok((rollout, overlaps))
}

/// What creating `new` would target: the devices it matches now, how many each stage would
/// add if it started now, and the overlaps `create_rollout` would report. Creates nothing;
/// the same checks as `create_rollout` (it validates through the same code). Percent stages
/// of the rollout created afterwards may differ by a few devices: membership hashes the
/// rollout's id, which the created rollout draws anew.
pub async fn preview_rollout(core: &Core, new: NewRollout) -> Result<RolloutPreview> {
    let (rollout, release) = prepare_rollout(core, new).await?;
    let fractions = target_fractions(core, &rollout, Some(Utc::now())).await?;
    let mut shares = Vec::with_capacity(rollout.stages.len());
    let mut previous = 0.0;
    for stage in &rollout.stages {
        previous = rollout::share_of(stage.size, &fractions, previous);
        shares.push(previous);
    }
    let stage_sizes = rollout::stage_sizes(&fractions, &shares);
    let overlaps = overlaps(core, &rollout, &release).await?;
    Ok(RolloutPreview { target_size: fractions.len() as u64, stages: rollout.stages, stage_sizes, overlaps })
}

/// What a rollout would target (see `preview_rollout`).
pub struct RolloutPreview {
    pub target_size: u64,
    pub stages: Vec<Stage>,
    /// Devices each stage adds.
    pub stage_sizes: Vec<u64>,
    pub overlaps: Vec<Overlap>,
}

/// Deletes a draft with its history (nothing else refers to a draft): 409
/// `rollout_not_draft` once it started, 404 if there is none.
pub async fn delete_draft(core: &Core, id: &RolloutId, actor: &str) -> Result<()> {
    match core.store.delete_draft_rollout(id).await? {
        None => Err(Error::not_found("rollout", id)),
        Some(false) => Err(Error::conflict(
            "rollout_not_draft",
            "only a draft can be deleted; a rollout that started is kept as history (cancel it instead)",
        )),
        Some(true) => {
            refresh(core, true).await?;
            tracing::info!(rollout_id = %id, actor, "draft rollout deleted");
            Ok(())
        }
    }
}

/// Validates `new` and builds the draft it describes, with its release (nothing stored).
async fn prepare_rollout(core: &Core, new: NewRollout) -> Result<(Rollout, Release)> {
    let release = core
        .store
        .find_release(&new.release_id)
        .await?
        .ok_or_else(|| Error::unprocessable("unknown_release", format!("release `{}` does not exist", new.release_id)))?;
    rollout::check_stages(&new.stages)?;
    let mut target = new.target;
    if let Some(devices) = &new.devices {
        if devices.is_empty() {
            return Err(Error::invalid("invalid_target", "target.devices must list at least one device (or be omitted)"));
        }
        target.devices = Some(resolve_devices(core, devices).await?.into_iter().collect());
    }
    if let Some(group) = &target.group
        && core.store.find_group(group).await?.is_none()
    {
        return Err(Error::unprocessable("unknown_group", format!("group `{group}` does not exist")));
    }
    if let (Some(min), Some(max)) = (&target.version_min, &target.version_max)
        && min >= max
    {
        return Err(Error::invalid("invalid_target", "target.version_min must be below target.version_max"));
    }
    if new.options.start_at.is_some() && new.start {
        return Err(Error::invalid("invalid_options", "give either `start: true` or `start_at`, not both"));
    }
    if new.options.device_deadline_s < 60 || new.options.device_deadline_s > 30 * 24 * 3600 {
        return Err(Error::invalid("invalid_options", "device_deadline_s must be between 60 and 2592000"));
    }
    if new.options.max_concurrent == Some(0) {
        return Err(Error::invalid("invalid_options", "max_concurrent must be at least 1 (or omitted)"));
    }
    let name = match &new.name {
        Some(name) => device::check_text("name", "invalid_name", name, 128)?,
        None => format!("{} {}", release.product, release.version),
    };
    let now = Utc::now();
    let start_at = new.options.start_at;
    let rollout = Rollout {
        id: RolloutId::new(),
        name,
        release_id: release.id.clone(),
        product: release.product.clone(),
        target,
        stages: new.stages,
        options: new.options,
        state: RolloutState::Draft,
        reason: match start_at {
            Some(at) => format!("created; starts at {}", at.to_rfc3339()),
            None => "created".into(),
        },
        current_stage: 0,
        shares: Vec::new(),
        stage_sizes: Vec::new(),
        target_size: 0,
        started_at: None,
        stage_started_at: None,
        counted_at: None,
        completed_at: None,
        created_at: now,
        updated_at: now,
    };
    Ok((rollout, release))
}

pub(super) async fn overlaps(core: &Core, new: &Rollout, release: &Release) -> Result<Vec<Overlap>> {
    let others = core
        .store
        .list_rollouts(&[RolloutState::Draft, RolloutState::Running, RolloutState::Paused, RolloutState::Completed], Some(&new.product))
        .await?;
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let mut groups = HashMap::new();
    let builds = release_builds(core, release).await?;
    let new_matcher = matcher(core, new, release, &builds, &mut groups).await?;
    let mut matchers = Vec::new();
    for other in &others {
        let Some(other_release) = core.store.find_release(&other.release_id).await? else { continue };
        let other_builds = release_builds(core, &other_release).await?;
        matchers.push((other, other_release.version.clone(), matcher(core, other, &other_release, &other_builds, &mut groups).await?));
    }
    let mut shared = vec![0u64; matchers.len()];
    scan_target(core, &new.product, |facts, created_at| {
        if new_matcher.matches(facts, created_at) {
            for (index, (_, _, other)) in matchers.iter().enumerate() {
                if other.matches(facts, created_at) {
                    shared[index] += 1;
                }
            }
        }
    })
    .await?;
    Ok(matchers
        .iter()
        .zip(shared)
        .filter(|(_, n)| *n > 0)
        .map(|((other, version, _), devices)| Overlap {
            rollout_id: other.id.to_string(),
            release_id: other.release_id.to_string(),
            name: other.name.clone(),
            state: other.state,
            release_version: version.clone(),
            devices,
        })
        .collect())
}

/// Calls `visit` for every device of a product, from the product's target index (see
/// `fleet::ProductTargets`): brought up to date from the device change log first, or loaded
/// from the database when this replica has none, or the log may have been pruned since.
pub(super) async fn scan_target(core: &Core, product: &str, mut visit: impl FnMut(&TargetFacts<'_>, i64)) -> Result<()> {
    let mut targets = core.rollouts.targets.lock().await;
    sync_targets(core, &mut targets, product).await?;
    let Some(index) = targets.get(product) else { return Ok(()) };
    let mut versions: HashMap<&str, Option<Version>> = HashMap::new();
    for (id, entry) in &index.devices {
        let version = match entry.version.as_deref() {
            Some(text) => versions.entry(text).or_insert_with(|| Version::parse(text).ok()).as_ref(),
            None => None,
        };
        let facts = TargetFacts { id, hardware: entry.hardware.as_deref(), channel: &entry.channel, version, tags: &entry.tags };
        visit(&facts, entry.created_at);
    }
    Ok(())
}

/// Brings a product's target index up to date (see `scan_target`).
pub(super) async fn sync_targets(core: &Core, targets: &mut HashMap<String, ProductTargets>, product: &str) -> Result<()> {
    // The change log keeps 10 minutes (`devices::follow_device_changes`); a change committed
    // late with an earlier timestamp is still seen thanks to the overlap. 8 minutes covers the
    // evaluator's recounts (`UPDRAFT_ROLLOUT_RECOUNT_SECS`, default 300) with room to spare.
    const TRUST_LOG_MS: i64 = 8 * 60 * 1000;
    const OVERLAP_MS: i64 = 5_000;
    let now = Utc::now().timestamp_millis();
    if let Some(index) = targets.get_mut(product)
        && now - index.synced_at < TRUST_LOG_MS
    {
        let mut ids: Vec<String> =
            core.store.changed_devices_since(index.synced_at - OVERLAP_MS).await?.into_iter().map(|(id, _)| id).collect();
        ids.sort();
        ids.dedup();
        let rows = core.store.target_rows_by_ids(&ids).await?;
        let mut present = HashSet::new();
        for row in &rows {
            if row.product.as_deref() == Some(product) {
                index.upsert(row);
                present.insert(row.id.as_str());
            }
        }
        for id in &ids {
            if !present.contains(id.as_str()) {
                index.remove(id);
            }
        }
        // New devices are not in the change log; their ids are UUIDv7s, which begin with
        // their creation time, so those registered since are the ids above this one.
        let since = index.synced_at - OVERLAP_MS;
        let after = format!("{:08x}-{:04x}-0000-0000-000000000000", (since.max(0) >> 16) as u64, (since.max(0) & 0xffff) as u64);
        load_targets_after(core, product, index, after).await?;
        index.synced_at = now;
        return Ok(());
    }
    let mut index = ProductTargets::new(now);
    load_targets_after(core, product, &mut index, String::new()).await?;
    targets.insert(product.to_string(), index);
    Ok(())
}

/// Adds a product's devices whose ids sort after `after` to its target index, page by page.
pub(super) async fn load_targets_after(core: &Core, product: &str, index: &mut ProductTargets, mut after: String) -> Result<()> {
    const PAGE: u32 = 20_000;
    loop {
        let rows = core.store.target_rows(product, &after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.id.clone();
        for row in &rows {
            index.upsert(row);
        }
        if rows.len() < PAGE as usize {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// The sorted membership fractions of the devices a rollout targets now.
pub(super) async fn target_fractions(core: &Core, rollout: &Rollout, registered_by: Option<DateTime<Utc>>) -> Result<Vec<f64>> {
    let release = find_release(core, &rollout.release_id).await?;
    let builds = release_builds(core, &release).await?;
    let mut groups = HashMap::new();
    let mut matcher = matcher(core, rollout, &release, &builds, &mut groups).await?;
    matcher.registered_by = if rollout.options.dynamic { None } else { Some(registered_by.unwrap_or_else(Utc::now).timestamp_millis()) };
    let mut fractions = Vec::new();
    scan_target(core, &rollout.product, |facts, created_at| {
        if matcher.matches(facts, created_at) {
            fractions.push(rollout::fraction(&rollout.id, facts.id));
        }
    })
    .await?;
    fractions.sort_by(f64::total_cmp);
    Ok(fractions)
}

/// Rollouts in any of `states` (all when empty), of one product if given, newest first.
pub async fn list_rollouts(core: &Core, states: &[RolloutState], product: Option<&str>) -> Result<Vec<Rollout>> {
    core.store.list_rollouts(states, product).await
}

/// The rollout with this id (any text: an id that names no rollout is 404).
pub async fn find_rollout(core: &Core, id: &str) -> Result<Rollout> {
    let id = RolloutId::from(id);
    core.store.find_rollout(&id).await?.ok_or_else(|| Error::not_found("rollout", id))
}

/// Applies an operator's or a rule's action; returns the rollout as it is afterwards.
pub async fn act(core: &Core, id: &RolloutId, action: Action, actor: &str, reason: &str) -> Result<Rollout> {
    let rollout = find_rollout(core, id).await?;
    let to = rollout::next_state(rollout.state, action, rollout.last_stage())?;
    let mut reason = if reason.is_empty() { default_reason(action, &rollout) } else { reason.to_string() };
    // Resuming after a halt excuses the failures so far (recorded in the history): otherwise
    // the next evaluation would halt again on the very failures the operator looked at.
    let excuse_failures = action == Action::Resume && rollout.state == RolloutState::Halted;
    if excuse_failures {
        let (_, total) = tallies(core, &rollout).await?;
        reason = format!("{reason}; {} failures so far excused, the error threshold counts new ones only", total.counted_failures());
    }
    // A stage that starts now gets its share from the devices targeted now.
    let mut to_stage = rollout.current_stage;
    let counted: Option<(Vec<f64>, Vec<u64>, u64)> = match action {
        Action::Start => {
            let fractions = target_fractions(core, &rollout, Some(Utc::now())).await?;
            let shares = vec![rollout::share_of(rollout.stages[0].size, &fractions, 0.0)];
            let sizes = rollout::stage_sizes(&fractions, &shares);
            Some((shares, sizes, fractions.len() as u64))
        }
        Action::Advance if to != RolloutState::Completed => {
            to_stage += 1;
            let fractions = target_fractions(core, &rollout, rollout.started_at).await?;
            let previous = rollout.shares.last().copied().unwrap_or(0.0);
            let mut shares = rollout.shares.clone();
            shares.truncate(to_stage);
            shares.push(rollout::share_of(rollout.stages[to_stage].size, &fractions, previous));
            let sizes = rollout::stage_sizes(&fractions, &shares);
            Some((shares, sizes, fractions.len() as u64))
        }
        _ => None,
    };
    let change = TransitionWrite {
        rollout_id: &rollout.id,
        from: rollout.state,
        from_stage: rollout.current_stage,
        to,
        to_stage,
        actor,
        reason: &reason,
        shares: counted.as_ref().map(|(shares, sizes, n)| (shares.as_slice(), sizes.as_slice(), *n)),
        started: action == Action::Start,
        excuse_failures,
    };
    let applied = match action {
        Action::Rollback => {
            check_floor(core, &rollout).await?;
            let applied = core.store.roll_back(&change).await?;
            if applied {
                for member in core.store.rollout_members(&rollout.id).await? {
                    if member.from_version.is_some() && member.state != MemberState::Failed {
                        devices::forget_cached_device(core, &member.device_id);
                    }
                }
            }
            applied
        }
        _ => core.store.transition_rollout(&change).await?,
    };
    if !applied {
        return Err(Error::conflict("rollout_changed", "the rollout changed meanwhile (another operator or rule acted); read it again"));
    }
    refresh(core, true).await?;
    tracing::info!(rollout_id = %rollout.id, from = rollout.state.as_str(), to = to.as_str(), stage = change.to_stage + 1, actor, reason = %reason, "rollout transition");
    core.events.publish(Event::RolloutTransition {
        rollout_id: rollout.id.to_string(),
        from: rollout.state.as_str().to_string(),
        to: to.as_str().to_string(),
        stage: change.to_stage + 1,
        actor: actor.to_string(),
        reason: reason.to_string(),
    });
    find_rollout(core, id).await
}

pub(super) fn default_reason(action: Action, rollout: &Rollout) -> String {
    match action {
        Action::Start => "started".into(),
        Action::Pause => "paused".into(),
        Action::Resume if rollout.state == RolloutState::Halted => "resumed after a halt".into(),
        Action::Resume => "resumed".into(),
        Action::Cancel => "cancelled".into(),
        Action::Advance if rollout.last_stage() => "completed".into(),
        Action::Advance => format!("stage {} opened", rollout.current_stage + 2),
        Action::Rollback => "rolled back".into(),
        Action::Halt => "halted".into(),
    }
}

/// Refuses a rollback that would pin a device below the product's anti-rollback floor.
pub(super) async fn check_floor(core: &Core, rollout: &Rollout) -> Result<()> {
    let Some(floor) = core.store.product_min_version(&rollout.product).await? else { return Ok(()) };
    let Ok(floor) = Version::parse(&floor) else { return Ok(()) };
    let below = core
        .store
        .rollout_members(&rollout.id)
        .await?
        .iter()
        .filter(|m| m.state != MemberState::Failed)
        .filter(|m| m.from_version.as_deref().and_then(|v| Version::parse(v).ok()).is_some_and(|v| v < floor))
        .count();
    if below > 0 {
        return Err(Error::conflict(
            "below_anti_rollback_floor",
            format!(
                "{below} devices would go back below version {floor}, the anti-rollback floor of product `{}`; nothing was changed",
                rollout.product
            ),
        ));
    }
    Ok(())
}

/// A rollout with its live counts.
pub struct RolloutStatus {
    pub rollout: Rollout,
    pub release: Option<Release>,
    /// Per started stage.
    pub tallies: Vec<Tally>,
    pub total: Tally,
}

pub async fn status(core: &Core, id: &RolloutId) -> Result<RolloutStatus> {
    let rollout = find_rollout(core, id).await?;
    let release = core.store.find_release(&rollout.release_id).await?;
    let (tallies, total) = tallies(core, &rollout).await?;
    Ok(RolloutStatus { rollout, release, tallies, total })
}

pub(super) async fn tallies(core: &Core, rollout: &Rollout) -> Result<(Vec<Tally>, Tally)> {
    let mut tallies = vec![Tally::default(); rollout.stages.len()];
    let mut total = Tally::default();
    for (stage, state, excused, n) in core.store.rollout_tally(&rollout.id).await? {
        let excused = if excused && state.is_failure() { n } else { 0 };
        if let Some(tally) = tallies.get_mut(stage) {
            tally.add(state, n);
            tally.excused += excused;
        }
        total.add(state, n);
        total.excused += excused;
    }
    Ok((tallies, total))
}

pub async fn history(core: &Core, id: &RolloutId) -> Result<Vec<Transition>> {
    find_rollout(core, id).await?;
    core.store.rollout_history(id).await
}
