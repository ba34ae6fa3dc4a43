//! Releases, device groups and staged rollouts: the operator's use cases, the check-in's
//! part (which release a device is offered), and the evaluator that starts scheduled
//! rollouts, times out silent devices, halts on errors and opens stages.
//!
//! **Hot path.** Each replica keeps a view of the rollouts that offer (running and
//! completed) and of the builds that belong to a release, by product (`RolloutRuntime`). A
//! check-in reads it under a read lock and, for the few live rollouts of its product,
//! checks the target filter, one SHA-256 (membership), the maintenance window and a
//! download-slot counter: no database access, nothing proportional to the fleet. The view
//! is reloaded when the `rollout_revision` counter changes (this replica's writes reload
//! at once; other replicas' within a second). Download slots in use are recounted from the
//! database every second, so the cap holds across replicas to within what they offer in
//! that second.
//!
//! **Transitions** are conditional updates (`WHERE id AND state AND current_stage`) with a
//! history row in the same transaction, so two replicas or a restart never apply one twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Core;
use super::devices;
use super::fleet::{ActiveDevice, ProductTargets};
use crate::domain::firmware::{Artifact, Channel, Product as ProductName};
use crate::domain::rollout::{
    self, Action, Group, MemberState, Release, Rollout, RolloutOptions, RolloutState, Stage, Tally, Target, TargetFacts, Transition,
    Verdict,
};
use crate::domain::update::{Held, RolloutOffer};
use crate::domain::version::Version;
use crate::domain::{Error, Result, device};
use crate::storage::TransitionWrite;

/// Rollout settings.
#[derive(Debug, Clone)]
pub struct RolloutPolicy {
    /// How often the evaluator runs.
    pub evaluate_every: Duration,
    /// Default time a device has to report an outcome before it counts as timed out.
    pub device_deadline: Duration,
    /// How often the devices of a running rollout's target are recounted.
    pub recount_every: Duration,
    /// How long a completed rollout still offers its release (to devices that were offline,
    /// and, if dynamic, to devices that match later); then it leaves the view.
    pub catch_up: Duration,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            evaluate_every: Duration::from_secs(5),
            device_deadline: Duration::from_secs(24 * 3600),
            recount_every: Duration::from_secs(300),
            catch_up: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Per-process rollout state: the view the check-in path reads.
pub struct RolloutRuntime {
    pub policy: RolloutPolicy,
    view: RwLock<Arc<HashMap<String, Arc<ProductRollouts>>>>,
    loaded_revision: Mutex<Option<i64>>,
    /// When the first completed rollout of the view ends its catch-up period (the view is
    /// reloaded then, without it).
    expires: Mutex<Option<DateTime<Utc>>>,
    /// Each product's target index, for counting rollout targets without reading the device
    /// table (loaded on first use).
    targets: tokio::sync::Mutex<HashMap<String, ProductTargets>>,
    /// Serialises reloads (two at once would only waste work).
    reloading: tokio::sync::Mutex<()>,
}

impl RolloutRuntime {
    pub fn new(policy: RolloutPolicy) -> Self {
        RolloutRuntime {
            policy,
            view: RwLock::default(),
            loaded_revision: Mutex::new(None),
            expires: Mutex::new(None),
            targets: tokio::sync::Mutex::default(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }
}

/// What a product's check-ins need: builds held back for rollouts, and the live rollouts,
/// newest release first.
#[derive(Default)]
pub struct ProductRollouts {
    pub held: Held,
    live: Vec<LiveRollout>,
}

/// Who a rollout is for, with everything resolved (release facts, group members).
struct Matcher {
    target: Target,
    release_hardware: Vec<String>,
    release_channel: String,
    group: Option<HashSet<String>>,
    /// Non-dynamic rollouts: only devices registered at or before this time (Unix ms).
    registered_by: Option<i64>,
}

impl Matcher {
    fn matches(&self, facts: &TargetFacts<'_>, created_at: i64) -> bool {
        if self.registered_by.is_some_and(|by| created_at > by) {
            return false;
        }
        self.target.matches(facts, &self.release_hardware, &self.release_channel, self.group.as_ref())
    }
}

struct LiveRollout {
    offer: RolloutOffer,
    version: Version,
    matcher: Matcher,
    shares: Vec<f64>,
    window: Option<rollout::Window>,
    max_concurrent: Option<u32>,
    in_flight: AtomicU64,
    deadline_s: u64,
    /// A completed rollout offers until its catch-up period ends.
    until: Option<DateTime<Utc>>,
}

impl ProductRollouts {
    /// The release of the newest live rollout whose started stages hold this device, if its
    /// window is open. O(live rollouts of the product); no IO.
    pub fn offer_for(&self, device: &ActiveDevice, version: Option<&Version>, now: DateTime<Utc>) -> Option<RolloutOffer> {
        let facts =
            TargetFacts { id: &device.id, hardware: device.hardware.as_deref(), channel: &device.channel, version, tags: &device.tags };
        for live in &self.live {
            if live.until.is_some_and(|until| now >= until) {
                continue;
            }
            if version.is_some_and(|v| *v >= live.version) {
                // Sorted newest first: nothing further is newer either.
                return None;
            }
            if !live.matcher.matches(&facts, device.created_at) {
                continue;
            }
            let Some(stage) = rollout::stage_of(rollout::fraction(&live.offer.rollout_id, &device.id), &live.shares) else { continue };
            if live.window.as_ref().is_some_and(|w| !w.is_open(now)) {
                continue;
            }
            return Some(RolloutOffer { stage, ..live.offer.clone() });
        }
        None
    }

    /// Takes a download slot of a rollout for a device it newly offers; false when the
    /// rollout's cap is reached.
    pub fn take_slot(&self, rollout_id: &str) -> bool {
        let Some(live) = self.live.iter().find(|l| &*l.offer.rollout_id == rollout_id) else { return true };
        let Some(max) = live.max_concurrent else { return true };
        live.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < u64::from(max)).then_some(n + 1)).is_ok()
    }

    pub fn deadline_s(&self, rollout_id: &str) -> Option<u64> {
        self.live.iter().find(|l| &*l.offer.rollout_id == rollout_id).map(|l| l.deadline_s)
    }
}

/// The rollouts of a product as this replica last loaded them.
pub fn of_product(core: &Core, product: &str) -> Option<Arc<ProductRollouts>> {
    core.rollouts.view.read().expect("rollout view lock").get(product).cloned()
}

// ---- the view ----

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
    let mut releases: HashMap<String, Option<Release>> = HashMap::new();
    let mut groups: HashMap<String, HashSet<String>> = HashMap::new();
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
        let Ok(version) = Version::parse(&release.version_key) else { continue };
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
        products.entry(rollout.product.clone()).or_default().live.push(live);
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
fn catch_up_start(now: DateTime<Utc>, catch_up: chrono::Duration) -> DateTime<Utc> {
    now.checked_sub_signed(catch_up).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Recounts download slots in use from the database (all replicas' offers).
async fn refresh_in_flight(core: &Core) -> Result<()> {
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

async fn release_builds(core: &Core, release: &Release) -> Result<Vec<Artifact>> {
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

async fn matcher(
    core: &Core,
    rollout: &Rollout,
    release: &Release,
    builds: &[Artifact],
    groups: &mut HashMap<String, HashSet<String>>,
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
    let mut release_hardware: Vec<String> = builds.iter().flat_map(|b| b.hardware.iter().cloned()).collect();
    release_hardware.sort();
    release_hardware.dedup();
    Ok(Matcher {
        target: rollout.target.clone(),
        release_hardware,
        release_channel: release.channel.clone(),
        group,
        registered_by: if rollout.options.dynamic { None } else { Some(rollout.started_at.unwrap_or_else(Utc::now).timestamp_millis()) },
    })
}

// ---- releases ----

pub struct NewRelease {
    pub product: String,
    pub version: String,
    pub channel: Option<String>,
    pub notes: Option<String>,
    pub artifact_ids: Vec<String>,
}

/// Creates a release from uploaded builds of one product and one version. From now on its
/// builds are offered only through its rollouts.
pub async fn create_release(core: &Core, new: NewRelease) -> Result<Release> {
    let product = ProductName::parse(&new.product)?.as_str().to_string();
    let version = Version::parse(&new.version).map_err(|e| Error::invalid("invalid_version", e.to_string()))?;
    let channel = Channel::parse(new.channel.as_deref().unwrap_or(Channel::DEFAULT))?.as_str().to_string();
    let notes = new.notes.unwrap_or_default();
    if notes.len() > crate::domain::firmware::MAX_NOTES_LEN {
        return Err(Error::invalid("invalid_notes", "notes must be at most 16 KiB"));
    }
    if new.artifact_ids.is_empty() || new.artifact_ids.len() > 64 {
        return Err(Error::invalid("invalid_artifacts", "a release has 1 to 64 builds (`artifact_ids`)"));
    }
    let mut hardware_seen = HashSet::new();
    let mut artifact_ids = Vec::new();
    for id in &new.artifact_ids {
        let artifact = core
            .store
            .find_artifact(id)
            .await?
            .ok_or_else(|| Error::unprocessable("unknown_artifact", format!("build `{id}` does not exist")))?;
        if artifact.product != product {
            return Err(Error::unprocessable(
                "artifact_mismatch",
                format!("build `{id}` is of product `{}`, not `{product}`", artifact.product),
            ));
        }
        if Version::parse(&artifact.version_key).ok().as_ref() != Some(&version) {
            return Err(Error::unprocessable("artifact_mismatch", format!("build `{id}` is version {}, not {version}", artifact.version)));
        }
        for hardware in &artifact.hardware {
            if !hardware_seen.insert(hardware.clone()) {
                return Err(Error::unprocessable("artifact_mismatch", format!("two builds of the release are for hardware `{hardware}`")));
            }
        }
        if !artifact_ids.contains(&artifact.id) {
            artifact_ids.push(artifact.id);
        }
    }
    let release = Release {
        id: uuid::Uuid::now_v7().to_string(),
        product,
        version: new.version.trim().to_string(),
        version_key: version.canonical(),
        channel,
        notes,
        artifact_ids,
        created_at: Utc::now(),
    };
    core.store.insert_release(&release).await?;
    refresh(core, true).await?;
    core.events.publish("release.created", None, json!({"release_id": release.id, "product": release.product, "version": release.version}));
    Ok(release)
}

pub async fn find_release(core: &Core, id: &str) -> Result<Release> {
    core.store.find_release(id).await?.ok_or_else(|| Error::not_found("release", id))
}

pub async fn delete_release(core: &Core, id: &str) -> Result<()> {
    if !core.store.delete_release(id).await? {
        return Err(Error::not_found("release", id));
    }
    refresh(core, true).await
}

// ---- groups ----

fn check_group_name(name: &str) -> Result<String> {
    let name = device::check_text("name", "invalid_name", name, 128)?;
    if name.is_empty() {
        return Err(Error::invalid("invalid_name", "a group needs a name"));
    }
    Ok(name)
}

/// Device ids for ids or MACs; unknown ones are refused.
async fn resolve_devices(core: &Core, ids_or_macs: &[String]) -> Result<Vec<String>> {
    if ids_or_macs.len() > 100_000 {
        return Err(Error::invalid("too_many_devices", "at most 100000 devices per request"));
    }
    let mut ids = Vec::with_capacity(ids_or_macs.len());
    for id in ids_or_macs {
        let device = devices::find(core, id).await.map_err(|e| match e {
            Error::NotFound { .. } => Error::unprocessable("unknown_device", format!("device `{id}` is not registered")),
            other => other,
        })?;
        ids.push(device.id);
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

pub async fn create_group(core: &Core, name: &str, devices: &[String]) -> Result<Group> {
    let name = check_group_name(name)?;
    let ids = resolve_devices(core, devices).await?;
    let id = uuid::Uuid::now_v7().to_string();
    core.store.insert_group(&id, &name, &ids).await?;
    refresh(core, true).await?;
    core.store.find_group(&id).await?.ok_or_else(|| Error::Internal(anyhow::anyhow!("group vanished after insert")))
}

pub async fn change_group(core: &Core, id: &str, name: Option<&str>, add: &[String], remove: &[String]) -> Result<Group> {
    let name = name.map(check_group_name).transpose()?;
    let add = resolve_devices(core, add).await?;
    // Removing needs no resolution beyond MACs: unknown ids are simply not members.
    let mut remove_ids = Vec::new();
    for id_or_mac in remove {
        match devices::find(core, id_or_mac).await {
            Ok(device) => remove_ids.push(device.id),
            Err(Error::NotFound { .. }) => remove_ids.push(id_or_mac.clone()),
            Err(e) => return Err(e),
        }
    }
    if !core.store.change_group(id, name.as_deref(), &add, &remove_ids).await? {
        return Err(Error::not_found("group", id));
    }
    refresh(core, true).await?;
    core.store.find_group(id).await?.ok_or_else(|| Error::not_found("group", id))
}

pub async fn find_group(core: &Core, id: &str) -> Result<(Group, Vec<String>)> {
    let group = core.store.find_group(id).await?.ok_or_else(|| Error::not_found("group", id))?;
    let members = core.store.group_members(id).await?;
    Ok((group, members))
}

pub async fn delete_group(core: &Core, id: &str) -> Result<()> {
    if !core.store.delete_group(id).await? {
        return Err(Error::not_found("group", id));
    }
    refresh(core, true).await
}

// ---- rollouts ----

pub struct NewRollout {
    pub name: Option<String>,
    pub release_id: String,
    pub target: Target,
    /// Ids or MACs of an explicit device list.
    pub devices: Option<Vec<String>>,
    pub stages: Vec<Stage>,
    pub options: RolloutOptions,
    pub start: bool,
}

/// Another rollout whose target shares devices with a new one.
pub struct Overlap {
    pub rollout_id: String,
    pub name: String,
    pub state: RolloutState,
    pub release_version: String,
    pub devices: u64,
}

/// Creates a rollout (a draft, or running with `start`), and reports the rollouts of the same
/// product whose targets share devices with it (such devices get the newer release).
pub async fn create_rollout(core: &Core, new: NewRollout) -> Result<(Rollout, Vec<Overlap>)> {
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
        id: uuid::Uuid::now_v7().to_string(),
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
    let overlaps = overlaps(core, &rollout, &release).await?;
    core.store.insert_rollout(&rollout).await?;
    core.events.publish("rollout.created", None, json!({"rollout_id": rollout.id, "release_id": release.id, "overlaps": overlaps.len()}));
    let rollout = if new.start { act(core, &rollout.id, Action::Start, "operator", "started at creation").await? } else { rollout };
    Ok((rollout, overlaps))
}

async fn overlaps(core: &Core, new: &Rollout, release: &Release) -> Result<Vec<Overlap>> {
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
            rollout_id: other.id.clone(),
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
async fn scan_target(core: &Core, product: &str, mut visit: impl FnMut(&TargetFacts<'_>, i64)) -> Result<()> {
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
async fn sync_targets(core: &Core, targets: &mut HashMap<String, ProductTargets>, product: &str) -> Result<()> {
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
async fn load_targets_after(core: &Core, product: &str, index: &mut ProductTargets, mut after: String) -> Result<()> {
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
async fn target_fractions(core: &Core, rollout: &Rollout, registered_by: Option<DateTime<Utc>>) -> Result<Vec<f64>> {
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

pub async fn find_rollout(core: &Core, id: &str) -> Result<Rollout> {
    core.store.find_rollout(id).await?.ok_or_else(|| Error::not_found("rollout", id))
}

/// Applies an operator's or a rule's action; returns the rollout as it is afterwards.
pub async fn act(core: &Core, id: &str, action: Action, actor: &str, reason: &str) -> Result<Rollout> {
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
    core.events.publish(
        "rollout.transition",
        None,
        json!({"rollout_id": rollout.id, "from": rollout.state.as_str(), "to": to.as_str(), "stage": change.to_stage + 1, "actor": actor, "reason": reason}),
    );
    find_rollout(core, id).await
}

fn default_reason(action: Action, rollout: &Rollout) -> String {
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
async fn check_floor(core: &Core, rollout: &Rollout) -> Result<()> {
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

pub async fn status(core: &Core, id: &str) -> Result<RolloutStatus> {
    let rollout = find_rollout(core, id).await?;
    let release = core.store.find_release(&rollout.release_id).await?;
    let (tallies, total) = tallies(core, &rollout).await?;
    Ok(RolloutStatus { rollout, release, tallies, total })
}

async fn tallies(core: &Core, rollout: &Rollout) -> Result<(Vec<Tally>, Tally)> {
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

pub async fn history(core: &Core, id: &str) -> Result<Vec<Transition>> {
    find_rollout(core, id).await?;
    core.store.rollout_history(id).await
}

// ---- the evaluator ----

/// Starts due scheduled rollouts, times out silent devices, and applies the thresholds of
/// running rollouts. Safe to run on every replica at once.
pub async fn evaluate(core: &Core, now: DateTime<Utc>) -> Result<()> {
    let catch_up = chrono::Duration::from_std(core.rollouts.policy.catch_up).unwrap_or(chrono::Duration::MAX);
    // Running ones and, during their catch-up period only, completed ones (time-outs, metrics).
    let mut rollouts = core.store.list_rollouts(&[RolloutState::Draft, RolloutState::Paused, RolloutState::Halted], None).await?;
    rollouts.extend(core.store.list_live_rollouts(catch_up_start(now, catch_up)).await?);
    for rollout in rollouts {
        if let Err(e) = evaluate_one(core, &rollout, now).await {
            match e {
                // Another replica acted first: fine.
                Error::Conflict { .. } => {}
                e => tracing::warn!(rollout_id = %rollout.id, error = %e, "cannot evaluate a rollout"),
            }
        }
    }
    Ok(())
}

async fn evaluate_one(core: &Core, rollout: &Rollout, now: DateTime<Utc>) -> Result<()> {
    if rollout.state == RolloutState::Draft {
        if let Some(at) = rollout.options.start_at
            && at <= now
        {
            act(core, &rollout.id, Action::Start, "rule:schedule", &format!("scheduled start at {}", at.to_rfc3339())).await?;
        }
        return Ok(());
    }
    let timed_out = core.store.time_out_members(&rollout.id, now).await?;
    if timed_out > 0 {
        tracing::info!(rollout_id = %rollout.id, devices = timed_out, "devices timed out");
    }
    let (tallies, _) = tallies(core, rollout).await?;
    let mut sizes = rollout.stage_sizes.clone();
    let recount_due =
        rollout.counted_at.is_none_or(|at| now - at >= chrono::Duration::from_std(core.rollouts.policy.recount_every).unwrap_or_default());
    if rollout.state == RolloutState::Running && recount_due {
        let fractions = target_fractions(core, rollout, rollout.started_at).await?;
        sizes = rollout::stage_sizes(&fractions, &rollout.shares);
        core.store.record_rollout_count(&rollout.id, &sizes, fractions.len() as u64).await?;
    }
    publish_metrics(rollout, &tallies, &sizes);
    if rollout.state != RolloutState::Running {
        return Ok(());
    }
    let soak = chrono::Duration::seconds(rollout.stages[rollout.current_stage].min_soak_s as i64);
    let soaked = rollout.stage_started_at.is_some_and(|at| now - at >= soak);
    match rollout::evaluate(&rollout.stages, rollout.current_stage, &tallies, &sizes, soaked) {
        Verdict::Wait => {}
        Verdict::Halt(reason) => {
            act(core, &rollout.id, Action::Halt, "rule:error_threshold", &reason).await?;
        }
        Verdict::Advance(reason) => {
            let reason = if rollout.last_stage() {
                format!("{reason}; completed")
            } else {
                format!("{reason}; stage {} opened", rollout.current_stage + 2)
            };
            act(core, &rollout.id, Action::Advance, "rule:success_threshold", &reason).await?;
        }
    }
    Ok(())
}

fn publish_metrics(rollout: &Rollout, tallies: &[Tally], sizes: &[u64]) {
    for (index, tally) in tallies.iter().enumerate().take(rollout.shares.len().max(1)) {
        let stage = (index + 1).to_string();
        let pending = sizes.get(index).copied().unwrap_or(0).saturating_sub(tally.members());
        let values = [
            ("pending", pending),
            ("offered", tally.offered),
            ("downloading", tally.downloading),
            ("installing", tally.installing),
            ("installed", tally.installed),
            ("succeeded", tally.succeeded),
            ("failed", tally.failed),
            ("timed_out", tally.timed_out),
        ];
        for (state, n) in values {
            metrics::gauge!("updraft_rollout_devices", "rollout" => rollout.id.clone(), "stage" => stage.clone(), "state" => state)
                .set(n as f64);
        }
    }
}

/// Loads the view, then keeps it current (each second) and runs the evaluator.
pub fn spawn_background(core: Core) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_evaluation = Instant::now() - core.rollouts.policy.evaluate_every;
        loop {
            tick.tick().await;
            // A completed rollout whose catch-up period just ended leaves the view.
            let expired = core.rollouts.expires.lock().expect("expiry lock").is_some_and(|at| at <= Utc::now());
            if let Err(e) = refresh(&core, expired).await {
                tracing::warn!(error = %e, "cannot reload rollouts; check-ins use the previous view");
            } else if let Err(e) = refresh_in_flight(&core).await {
                tracing::warn!(error = %e, "cannot count downloads in flight");
            }
            if last_evaluation.elapsed() >= core.rollouts.policy.evaluate_every {
                last_evaluation = Instant::now();
                if let Err(e) = evaluate(&core, Utc::now()).await {
                    tracing::warn!(error = %e, "cannot evaluate rollouts");
                }
            }
        }
    });
}
