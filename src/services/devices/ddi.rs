//! hawkBit DDI (Direct Device Integration): who a controller is (its device token, or its
//! product's gateway token), what a poll offers (the same `update::decide` as every check-in,
//! mapped to a DDI action), feedback on an action, attributes (`configData`) and the installed
//! base. The adapter (`http::compat::ddi`) owns the wire forms.

use super::*;
use crate::domain::device::DeviceKey;

/// How a DDI request authenticates (`Authorization: TargetToken|GatewayToken <token>`).
pub enum DdiCredential<'a> {
    /// A device token (`upd_dev_…`): reaches only its own device.
    Target(&'a str),
    /// A product's gateway token: reaches any device of that product, and registers an
    /// unknown controller id per the product's provisioning mode.
    Gateway(&'a str),
}

/// The device a DDI request acts for. A controller id names a device by its id, MAC or name. Every
/// refusal is a 401 that does not say whether the device exists.
pub async fn ddi_device(core: &Core, credential: DdiCredential<'_>, controller_id: &str, ip: IpAddr) -> Result<Arc<ActiveDevice>> {
    let refused = || Error::Unauthenticated("the token does not authorise this controller".into());
    match credential {
        DdiCredential::Target(token) => {
            let device = authenticate(core, Some(token), ip).await?;
            if names_device(core, controller_id, &device).await? {
                Ok(device)
            } else {
                core.devices.limiter.record_failure(ip);
                Err(refused())
            }
        }
        DdiCredential::Gateway(token) => {
            core.devices.limiter.check(ip)?;
            let product = match token.len() {
                1..=256 => core.store.product_of_gateway_token(&secret::digest_hex(token)).await?,
                _ => None,
            };
            let Some(product) = product else {
                core.devices.limiter.record_failure(ip);
                return Err(Error::Unauthenticated("the gateway token is not valid".into()));
            };
            let device = match find(core, controller_id).await {
                Ok(device) => device,
                Err(Error::NotFound { .. }) => register_controller(core, &product, controller_id).await?,
                Err(e) => return Err(e),
            };
            if device.product.as_deref() != Some(product.as_str()) {
                core.devices.limiter.record_failure(ip);
                return Err(refused());
            }
            if let Some(active) = core.devices.fleet.read().expect("fleet lock").get_by_id(&device.id) {
                return Ok(active);
            }
            Ok(Arc::new(ActiveDevice::of(&device)))
        }
    }
}

/// Whether a controller id names this device: its id, its MAC (any common form) or its
/// unique name (read from the registry: the fleet index holds no names).
async fn names_device(core: &Core, controller_id: &str, device: &ActiveDevice) -> Result<bool> {
    if *device.id == *controller_id {
        return Ok(true);
    }
    Ok(match DeviceKey::parse(controller_id) {
        Ok(DeviceKey::Mac(mac)) => device.mac == Some(mac),
        Ok(key) => find_by_key(core, &key).await?.is_some_and(|named| *named.id == *device.id),
        Err(_) => false,
    })
}

/// Registers an unknown controller presented with its product's gateway token: `open` and
/// `key` products take it (the gateway token stands for the product's key), `preregistered`
/// ones refuse it.
async fn register_controller(core: &Core, product: &str, controller_id: &str) -> Result<Device> {
    let policy = product_policy(core, product).await?;
    if policy.provisioning == Provisioning::Preregistered {
        return Err(Error::Forbidden(format!("product `{product}` serves only registered devices: register this controller first")));
    }
    // A MAC is the device's MAC; any other controller id becomes its unique name.
    let key = DeviceKey::parse(controller_id)?;
    let inserted = core
        .store
        .insert_device(&NewDevice {
            mac: key.mac(),
            uid: key.uid().cloned(),
            name: controller_id.to_string(),
            product: Some(policy.name.clone()),
            hardware: policy.sole_hardware().cloned(),
            channel: Channel::stable(),
            version: None,
            target_version: None,
            tags: Vec::new(),
            attributes: json!({}),
            metadata: json!({}),
            owner: None,
            token_hash: None,
        })
        .await;
    match inserted {
        Ok(device) => {
            tracing::info!(device_id = %device.id, product, "DDI controller registered with its product's gateway token");
            core.events.publish(Event::DeviceCreated { device_id: device.id.to_string(), mac: device.mac, by: "ddi gateway".into() });
            Ok(device)
        }
        Err(Error::Conflict { .. }) => find(core, controller_id).await,
        Err(e) => Err(e),
    }
}

/// The action a poll shows.
#[derive(Debug, Clone, PartialEq)]
pub enum DdiAction {
    /// Install this attempt's build (`deploymentBase`).
    Deploy {
        action_id: i64,
        /// Pins and forced rollouts: `forced`; otherwise `attempt`.
        forced: bool,
        /// The rollout's maintenance window: `Some(true)` open, `Some(false)` closed (download
        /// only), `None` no window.
        window: Option<bool>,
    },
    /// The open attempt is no longer what the decision offers (`cancelAction`).
    Cancel { action_id: i64 },
}

pub struct DdiPoll {
    pub poll_interval_s: u32,
    pub action: Option<DdiAction>,
    /// The action id of the device's last successful update (`installedBase`).
    pub installed: Option<i64>,
    /// Ask the device for its attributes (`configData`): it has not reported any to this
    /// replica yet.
    pub request_attributes: bool,
}

/// A poll: the check-in (presence, the decision, the attempt an offer opens), except that an
/// open attempt the decision no longer offers is first shown as a cancellation.
pub async fn ddi_poll(core: &Core, device: Arc<ActiveDevice>, ip: IpAddr) -> Result<DdiPoll> {
    let now = Utc::now();
    let request_attributes = device.reported_attributes == 0;
    // Read before the attempts are: a change since then means what was read may be stale.
    let generation = core.devices.caches.generation();
    if let Some(installed) = device.settled.get() {
        // No open attempt, so nothing to cancel: a settled device that is offered nothing
        // reads no attempt row.
        let answer = checkin(core, device.clone(), CheckinReport::default(), Some(ip)).await?;
        if answer.offer.is_none() {
            return Ok(DdiPoll { poll_interval_s: answer.poll_interval_s, action: None, installed, request_attributes });
        }
        return offered_poll(core, &device, answer, now, request_attributes).await;
    }
    let current = current_attempt_cached(core, &device.id).await?;
    if let Some(open) = current.as_ref().filter(|a| !a.state.is_final()) {
        let (poll_interval_s, decided) = decide_for(core, &device, now).await?;
        let still_offered = decided.as_ref().is_ok_and(|chosen| chosen.artifact.id == open.artifact_id);
        let window = rollout_window(core, &device, open, now);
        if !still_offered {
            mark_seen(core, &device, now, Some(ip));
            let action_id = action_id_of(core, open).await?;
            // Outside its rollout's window the offer pauses (a forced one stays forced, as in
            // hawkBit); it is not withdrawn.
            let action = match window {
                Some(false) => DdiAction::Deploy { action_id, forced: rollout_forced(core, &device, open), window },
                _ => DdiAction::Cancel { action_id },
            };
            let installed = installed_action(core, &device.id, current.as_ref()).await?;
            return Ok(DdiPoll { poll_interval_s, action: Some(action), installed, request_attributes });
        }
    }
    let answer = checkin(core, device.clone(), CheckinReport::default(), Some(ip)).await?;
    if answer.offer.is_some() {
        return offered_poll(core, &device, answer, now, request_attributes).await;
    }
    let current = current_attempt_cached(core, &device.id).await?;
    let installed = installed_action(core, &device.id, current.as_ref()).await?;
    if current.as_ref().is_none_or(|attempt| attempt.state.is_final()) {
        remember_settled(core, &device.id, installed, generation);
    }
    Ok(DdiPoll { poll_interval_s: answer.poll_interval_s, action: None, installed, request_attributes })
}

/// A poll whose check-in offered a build: the action of the attempt the offer opened.
async fn offered_poll(
    core: &Core,
    device: &ActiveDevice,
    answer: CheckinAnswer,
    now: DateTime<Utc>,
    request_attributes: bool,
) -> Result<DdiPoll> {
    let current = current_attempt_cached(core, &device.id).await?;
    let action = match (&answer.offer, &current) {
        (Some(offer), Some(attempt)) if *attempt.id == *offer.attempt_id => Some(DdiAction::Deploy {
            action_id: action_id_of(core, attempt).await?,
            forced: offer.mandatory,
            window: rollout_window(core, device, attempt, now),
        }),
        _ => None,
    };
    let installed = installed_action(core, &device.id, current.as_ref()).await?;
    Ok(DdiPoll { poll_interval_s: answer.poll_interval_s, action, installed, request_attributes })
}

/// Records in the fleet index that a device has no open attempt (`fleet::Settled`), unless one
/// of the caches' entries changed since `generation` was read: the attempts read may be stale.
/// Stored first and checked after, so a change racing with the store is never hidden (its
/// reset follows its generation bump).
fn remember_settled(core: &Core, device_id: &str, installed: Option<i64>, generation: u64) {
    let fleet = core.devices.fleet.read().expect("fleet lock");
    fleet.settle(device_id, installed);
    if core.devices.caches.generation() != generation {
        fleet.unsettle(device_id);
    }
}

/// Whether the maintenance window of the rollout that opened an attempt is open now (`None`:
/// no rollout, no window, or the rollout is no longer live).
fn rollout_window(core: &Core, device: &ActiveDevice, attempt: &UpdateAttempt, now: DateTime<Utc>) -> Option<bool> {
    let rollout_id = attempt.rollout_id.as_deref()?;
    let product = device.product.as_deref()?;
    rollouts::of_product(core, product)?.window_open(rollout_id, now)
}

/// Whether the rollout that opened an attempt is forced.
fn rollout_forced(core: &Core, device: &ActiveDevice, attempt: &UpdateAttempt) -> bool {
    let (Some(rollout_id), Some(product)) = (attempt.rollout_id.as_deref(), device.product.as_deref()) else { return false };
    rollouts::of_product(core, product).is_some_and(|view| view.forced(rollout_id))
}

async fn action_id_of(core: &Core, attempt: &UpdateAttempt) -> Result<i64> {
    match attempt.action_id {
        Some(id) => Ok(id),
        None => {
            let id = core.store.ensure_action_id(&attempt.id).await;
            core.devices.attempt_changed(&attempt.device_id);
            id
        }
    }
}

/// The action id of the device's last successful update: its current attempt when that
/// succeeded, else (only when it has a current attempt at all) the newest that did.
async fn installed_action(core: &Core, device_id: &str, current: Option<&UpdateAttempt>) -> Result<Option<i64>> {
    match current {
        None => Ok(None),
        Some(attempt) if attempt.state == UpdateState::Succeeded => Ok(Some(action_id_of(core, attempt).await?)),
        Some(_) => match core.store.last_succeeded_attempt(device_id).await? {
            Some(attempt) => Ok(Some(action_id_of(core, &attempt).await?)),
            None => Ok(None),
        },
    }
}

/// One of the device's actions with its build (for `deploymentBase`, `installedBase`).
pub struct DdiDeployment {
    pub attempt: UpdateAttempt,
    pub artifact: Artifact,
    /// Pins and forced rollouts (as the decision says now).
    pub forced: bool,
    pub window: Option<bool>,
}

/// A device's action by id, with its build; `None` when the device has no such action or its
/// build is gone.
pub async fn ddi_action(core: &Core, device: &ActiveDevice, action_id: i64) -> Result<Option<DdiDeployment>> {
    let Some(attempt) = core.store.attempt_by_action(&device.id, action_id).await? else { return Ok(None) };
    let Some(artifact) = core.store.find_artifact(&attempt.artifact_id).await? else { return Ok(None) };
    let now = Utc::now();
    let window = rollout_window(core, device, &attempt, now);
    let forced = if attempt.state.is_final() {
        false
    } else if window == Some(false) {
        // Paused by the window: the decision offers nothing now; the rollout says.
        rollout_forced(core, device, &attempt)
    } else {
        matches!(decide_for(core, device, now).await?.1, Ok(chosen) if chosen.artifact.id == attempt.artifact_id && chosen.mandatory)
    };
    Ok(Some(DdiDeployment { attempt, artifact, forced, window }))
}

/// The build of a device's action, for the artifact routes: its current attempt's build, or
/// the build of its last success.
pub async fn ddi_build(core: &Core, device: &ActiveDevice, artifact_id: &str) -> Result<Option<Artifact>> {
    let current = current_attempt_cached(core, &device.id).await?;
    let reachable = match &current {
        Some(attempt) if *attempt.artifact_id == *artifact_id => true,
        _ => core.store.last_succeeded_attempt(&device.id).await?.is_some_and(|a| *a.artifact_id == *artifact_id),
    };
    if !reachable {
        return Ok(None);
    }
    core.store.find_artifact(&crate::domain::ArtifactId::from(artifact_id)).await
}

/// What a feedback changes.
pub enum FeedbackOutcome {
    Recorded,
    /// The action is no longer active (final, or replaced): hawkBit's 410.
    Inactive,
    /// The device has no such action.
    Unknown,
}

/// Feedback on an action (`deploymentBase/{id}/feedback`, or with `cancel` on
/// `cancelAction/{id}/feedback`): `state` is what it moves the attempt to (`None`: only the
/// details are recorded, in the attempt's current state). Every feedback is a line of the
/// attempt's history. A success also records the build's version as the device's.
pub async fn ddi_feedback(
    core: &Core,
    device: Arc<ActiveDevice>,
    action_id: i64,
    state: Option<UpdateState>,
    progress: Option<u8>,
    details: Option<String>,
    ip: IpAddr,
) -> Result<FeedbackOutcome> {
    let Some(attempt) = core.store.attempt_by_action(&device.id, action_id).await? else { return Ok(FeedbackOutcome::Unknown) };
    if attempt.state.is_final() || !attempt.current {
        return Ok(FeedbackOutcome::Inactive);
    }
    let state = state.unwrap_or(attempt.state);
    let progress = match state {
        UpdateState::Succeeded => Some(100),
        UpdateState::Installing | UpdateState::Downloading => progress,
        _ => progress.or(attempt.progress),
    };
    let written = core.store.set_attempt_state(&attempt.id, state, progress, details.as_deref()).await;
    core.devices.attempt_changed(&device.id);
    written?;
    mark_seen(core, &device, Utc::now(), Some(ip));
    core.events.publish(Event::UpdateStatus(UpdateStatus::of(&attempt, state, progress, details)));
    if state == UpdateState::Succeeded {
        // The device runs the new build now: recorded as if it had checked in with it.
        let report = CheckinReport { version: Some(attempt.to_version.clone()), ..Default::default() };
        checkin(core, device, report, Some(ip)).await?;
    }
    Ok(FeedbackOutcome::Recorded)
}

/// `configData`: how the reported attributes change the stored ones.
pub enum AttributesMode {
    Merge,
    Replace,
    Remove,
}

/// Sets the device's attributes from a `configData` body (through the check-in, as native
/// devices report them).
pub async fn ddi_attributes(
    core: &Core,
    device: Arc<ActiveDevice>,
    mode: AttributesMode,
    data: serde_json::Map<String, Value>,
    ip: IpAddr,
) -> Result<()> {
    let reported = match mode {
        AttributesMode::Merge => Value::Object(data),
        AttributesMode::Remove => Value::Object(data.into_iter().map(|(k, _)| (k, Value::Null)).collect()),
        AttributesMode::Replace => {
            let stored = core.store.find_device(&device.id).await?.ok_or_else(|| Error::not_found("device", &*device.id))?;
            let mut reported = data;
            if let Some(stored) = stored.attributes.as_object() {
                for key in stored.keys() {
                    reported.entry(key.clone()).or_insert(Value::Null);
                }
            }
            Value::Object(reported)
        }
    };
    device::check_json_object("data", &reported)?;
    checkin(core, device, CheckinReport { attributes: Some(reported), ..Default::default() }, Some(ip)).await?;
    Ok(())
}

/// `PUT installedBase`: the device says which version it runs (an offline install), recorded
/// like a check-in.
pub async fn ddi_installed(core: &Core, device: Arc<ActiveDevice>, version: &str, ip: IpAddr) -> Result<()> {
    Version::parse(version)?;
    checkin(core, device, CheckinReport { version: Some(version.to_string()), ..Default::default() }, Some(ip)).await?;
    Ok(())
}
