//! Update reports: the states a device reports while it updates.

use super::*;

pub struct StatusReport {
    pub release_id: Option<String>,
    pub version: Option<String>,
    pub state: String,
    pub progress: Option<i64>,
    pub message: Option<String>,
}

/// The device's current update attempt (the latest, final or not), if it ever had one.
pub async fn current_attempt(core: &Core, device_id: &str) -> Result<Option<UpdateAttempt>> {
    core.store.current_attempt(device_id).await
}

/// The build of the device's update in progress (its current attempt, while not final).
pub async fn pending_build(core: &Core, device_id: &str) -> Result<Option<Artifact>> {
    match core.store.current_attempt(device_id).await? {
        Some(attempt) if !attempt.state.is_final() => core.store.find_artifact(&attempt.artifact_id).await,
        _ => Ok(None),
    }
}

/// Records a device's report on its current update.
pub async fn report_update(core: &Core, device: &ActiveDevice, report: StatusReport) -> Result<UpdateAttempt> {
    if report.release_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return Err(Error::invalid("invalid_release_id", "release_id is empty: send the offer's release_id, or leave it out"));
    }
    let state = UpdateState::parse_reported(&report.state)?;
    let progress = match report.progress {
        Some(p) if (0..=100).contains(&p) => Some(p as u8),
        Some(_) => return Err(Error::invalid("invalid_progress", "progress must be between 0 and 100")),
        None => None,
    };
    let message = match &report.message {
        Some(m) => Some(device::check_text("message", "invalid_message", m, 1024)?),
        None => None,
    };
    let Some(attempt) = core.store.current_attempt(&device.id).await? else {
        return Err(Error::conflict("update_not_current", "this device has no update in progress"));
    };
    if let Some(release_id) = &report.release_id
        && attempt.release_id != *release_id.as_str()
    {
        return Err(Error::conflict(
            "update_not_current",
            format!("release {release_id} is not this device's current update (that is {})", attempt.release_id),
        ));
    }
    if let Some(version) = &report.version {
        let reported = Version::parse(version)?;
        if Version::parse(&attempt.to_version).ok().as_ref() != Some(&reported) {
            return Err(Error::conflict(
                "update_not_current",
                format!("version {version} is not this device's current update (that is {})", attempt.to_version),
            ));
        }
    }
    if attempt.state.is_final() {
        return Err(Error::conflict(
            "update_not_current",
            format!("the update to {} is already {}", attempt.to_version, attempt.state.as_str()),
        ));
    }
    let written = core.store.set_attempt_state(&attempt.id, state, progress, message.as_deref()).await;
    core.devices.attempt_changed(&device.id);
    written?;
    if state == UpdateState::Installed {
        // Its next check-in tells whether the new build booted.
        core.devices.fleet.write().expect("fleet lock").update(&device.id, |d| d.awaiting_boot = true);
    }
    mark_seen(core, device, Utc::now(), None);
    core.events.publish(Event::UpdateStatus(UpdateStatus::of(&attempt, state, progress, message)));
    // The newest attempt is the current one; read it back with its events.
    core.store.list_attempts(&device.id, 1).await?.pop().ok_or_else(|| Error::Internal(anyhow::anyhow!("attempt vanished")))
}
