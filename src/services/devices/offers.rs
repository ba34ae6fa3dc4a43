//! Batched offers for connected MQTT devices: the check-in's decision for many devices at once, with batched reads and writes.

use super::*;

/// What each of these devices would be answered if it checked in now without news: the
/// server's own re-evaluation, for MQTT pushes. Unlike a check-in it does not mark anybody
/// seen, and it batches its IO: one query per [`ATTEMPT_BATCH`] devices for the current
/// attempts and one transaction per as many new attempts.
pub async fn offers_for(core: &Core, devices: &[Arc<ActiveDevice>]) -> Result<Vec<CheckinAnswer>> {
    let now = Utc::now();
    struct Pending {
        index: usize,
        artifact: Artifact,
        mandatory: bool,
        rollout: Option<RolloutOffer>,
        rollouts: Option<Arc<rollouts::ProductRollouts>>,
    }
    let mut answers = Vec::with_capacity(devices.len());
    let mut pending = Vec::new();
    for (index, device) in devices.iter().enumerate() {
        let (poll_interval_s, decided) = decide_for(core, device, now).await?;
        match decided {
            Err(reason) => answers.push(CheckinAnswer { offer: None, no_update: Some(reason), poll_interval_s }),
            Ok(Chosen { artifact, mandatory, rollout, rollouts }) => {
                pending.push(Pending { index, artifact, mandatory, rollout, rollouts });
                answers.push(CheckinAnswer { offer: None, no_update: Some(NoUpdate::UpToDate), poll_interval_s });
            }
        }
    }
    if pending.is_empty() {
        return Ok(answers);
    }
    let ids: Vec<&str> = pending.iter().map(|p| &*devices[p.index].id).collect();
    let mut current: HashMap<String, UpdateAttempt> =
        core.store.current_attempts(&ids).await?.into_iter().map(|a| (a.device_id.to_string(), a)).collect();
    let mut to_open = Vec::new();
    let mut opening = Vec::new();
    for p in &pending {
        let device = &devices[p.index];
        let seen = current.remove(&*device.id);
        let replacing = seen.as_ref().map(|a| a.id.clone());
        match plan_attempt(core, &device.id, &p.artifact, p.rollout.as_ref(), p.rollouts.as_deref(), seen).await? {
            AttemptPlan::Reuse(attempt) => {
                answers[p.index].offer = Some(Offer {
                    artifact: p.artifact.clone(),
                    attempt_id: attempt.id.into(),
                    release_id: attempt.release_id.into(),
                    mandatory: p.mandatory,
                });
                answers[p.index].no_update = None;
            }
            AttemptPlan::Refuse => {}
            AttemptPlan::Open { release_id, slot } => {
                opening.push((p, replacing));
                to_open.push((release_id, slot));
            }
        }
    }
    let offers: Vec<AttemptOffer<'_>> = opening
        .iter()
        .zip(&to_open)
        .map(|((p, replacing), (release_id, slot))| AttemptOffer {
            device_id: &devices[p.index].id,
            artifact_id: &p.artifact.id,
            release_id,
            from_version: devices[p.index].version.as_deref(),
            to_version: &p.artifact.version,
            rollout: *slot,
            replacing: replacing.as_deref(),
        })
        .collect();
    let opened = core.store.open_attempts(&offers).await;
    for offer in &offers {
        core.devices.attempt_changed(offer.device_id);
    }
    let opened = opened?;
    let mut raced = Vec::new();
    for (((p, _), offer), id) in opening.iter().zip(&offers).zip(opened) {
        match id {
            Some(id) => {
                publish_offered(core, offer.device_id, offer.release_id, p.rollout.as_ref(), &p.artifact);
                answers[p.index].offer = Some(Offer {
                    artifact: p.artifact.clone(),
                    attempt_id: id,
                    release_id: offer.release_id.to_string(),
                    mandatory: p.mandatory,
                });
                answers[p.index].no_update = None;
            }
            None => raced.push(*p),
        }
    }
    if !raced.is_empty() {
        // The devices' own check-ins opened attempts meanwhile: answer with those that are
        // for the same build, as a check-in losing the same race does.
        let ids: Vec<&str> = raced.iter().map(|p| &*devices[p.index].id).collect();
        let current: HashMap<String, UpdateAttempt> =
            core.store.current_attempts(&ids).await?.into_iter().map(|a| (a.device_id.to_string(), a)).collect();
        for p in raced {
            if let Some(attempt) = current.get(&*devices[p.index].id)
                && attempt.artifact_id == p.artifact.id
                && !attempt.state.is_final()
            {
                answers[p.index].offer = Some(Offer {
                    artifact: p.artifact.clone(),
                    attempt_id: attempt.id.to_string(),
                    release_id: attempt.release_id.to_string(),
                    mandatory: p.mandatory,
                });
                answers[p.index].no_update = None;
            }
        }
    }
    Ok(answers)
}
