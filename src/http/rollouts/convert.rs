//! Between the rollout API's wire types and the domain: parsing targets, stages and windows, and views.

use super::*;

pub(super) fn release_view(release: &Release) -> ReleaseView {
    ReleaseView {
        id: release.id.to_string(),
        product: release.product.to_string(),
        version: release.version.clone(),
        channel: release.channel.to_string(),
        notes: release.notes.clone(),
        artifact_ids: release.artifact_ids.iter().map(ToString::to_string).collect(),
        created_at: timestamp(release.created_at),
    }
}

pub(super) fn group_view(group: &Group) -> GroupView {
    GroupView {
        id: group.id.to_string(),
        name: group.name.clone(),
        size: group.size,
        created_at: timestamp(group.created_at),
        updated_at: timestamp(group.updated_at),
    }
}

pub(super) fn counts_view(tally: &Tally, size: Option<u64>) -> CountsView {
    CountsView {
        pending: size.unwrap_or(0).saturating_sub(tally.members()),
        offered: tally.offered,
        downloading: tally.downloading,
        installing: tally.installing,
        installed: tally.installed,
        succeeded: tally.succeeded,
        failed: tally.failed,
        timed_out: tally.timed_out,
        excused: tally.excused,
    }
}

pub(super) fn window_view(window: &Window) -> WindowBody {
    WindowBody {
        days: window.day_names().into_iter().map(str::to_string).collect(),
        start: format!("{:02}:{:02}", window.start_min / 60, window.start_min % 60),
        end: format!("{:02}:{:02}", window.end_min / 60, window.end_min % 60),
        time_zone: Some(window.time_zone.name().to_string()),
    }
}

pub(super) fn rollout_view(status: &RolloutStatus) -> RolloutView {
    let rollout = &status.rollout;
    let started = rollout.state != RolloutState::Draft && !rollout.shares.is_empty();
    let stages = rollout
        .stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            let (percent, count) = match stage.size {
                StageSize::Percent(p) => (Some(p), None),
                StageSize::Count(c) => (None, Some(c)),
            };
            let tally = status.tallies.get(index).cloned().unwrap_or_default();
            let size = rollout.stage_sizes.get(index).copied();
            StageView {
                number: index + 1,
                percent,
                count,
                success_threshold: stage.success_percent,
                error_threshold: ErrorThresholdBody { count: stage.error.count, percent: stage.error.percent },
                min_soak_s: stage.min_soak_s,
                status: match () {
                    _ if !started || index > rollout.current_stage => "pending",
                    _ if index == rollout.current_stage && rollout.state != RolloutState::Completed => "current",
                    _ => "done",
                },
                share: rollout.shares.get(index).copied(),
                devices: size,
                failure_rate: tally.failure_rate(),
                counts: counts_view(&tally, size),
            }
        })
        .collect();
    let started_size: u64 = rollout.stage_sizes.iter().sum();
    RolloutView {
        id: rollout.id.to_string(),
        name: rollout.name.clone(),
        release_id: rollout.release_id.to_string(),
        release_version: status.release.as_ref().map(|r| r.version.clone()),
        product: rollout.product.to_string(),
        state: rollout.state.as_str(),
        reason: rollout.reason.clone(),
        current_stage: if started { rollout.current_stage + 1 } else { 0 },
        stages,
        target: TargetBody {
            hardware: rollout.target.hardware.iter().map(ToString::to_string).collect(),
            channels: rollout.target.channels.iter().map(ToString::to_string).collect(),
            tags: rollout.target.tags.clone(),
            version_min: rollout.target.version_min.as_ref().map(Version::canonical),
            version_max: rollout.target.version_max.as_ref().map(Version::canonical),
            devices: rollout.target.devices.as_ref().map(|d| {
                let mut ids: Vec<String> = d.iter().map(ToString::to_string).collect();
                ids.sort();
                ids
            }),
            group: rollout.target.group.as_ref().map(ToString::to_string),
        },
        options: OptionsView {
            start_at: rollout.options.start_at.map(timestamp),
            window: rollout.options.window.as_ref().map(window_view),
            max_concurrent: rollout.options.max_concurrent,
            forced: rollout.options.forced,
            dynamic: rollout.options.dynamic,
            device_deadline_s: rollout.options.device_deadline_s,
        },
        target_size: rollout.target_size,
        counts: counts_view(&status.total, Some(started_size)),
        failure_rate: status.total.failure_rate(),
        started_at: rollout.started_at.map(timestamp),
        stage_started_at: rollout.stage_started_at.map(timestamp),
        completed_at: rollout.completed_at.map(timestamp),
        created_at: timestamp(rollout.created_at),
        updated_at: timestamp(rollout.updated_at),
    }
}

pub(super) fn overlap_view(overlap: &Overlap) -> OverlapView {
    OverlapView {
        rollout_id: overlap.rollout_id.clone(),
        release_id: overlap.release_id.clone(),
        name: overlap.name.clone(),
        state: overlap.state.as_str(),
        release_version: overlap.release_version.clone(),
        devices: overlap.devices,
    }
}

pub(super) fn transition_view(transition: &Transition) -> TransitionView {
    TransitionView {
        from: transition.from.clone(),
        to: transition.to.clone(),
        stage: transition.stage + 1,
        actor: transition.actor.clone(),
        reason: transition.reason.clone(),
        at: timestamp(transition.at),
    }
}

pub(super) fn parse_version(field: &str, value: &Option<String>) -> Result<Option<Version>, Error> {
    value.as_deref().map(|v| Version::parse(v).map_err(|e| Error::invalid("invalid_target", format!("target.{field}: {e}")))).transpose()
}

pub(super) fn parse_target(body: &TargetBody) -> Result<Target, Error> {
    let hardware = body.hardware.iter().map(|h| HardwareId::parse(h)).collect::<Result<Vec<_>, _>>()?;
    let channels = body.channels.iter().map(|c| crate::domain::firmware::Channel::parse(c)).collect::<Result<Vec<_>, _>>()?;
    let tags = crate::domain::device::check_tags(&body.tags)?;
    Ok(Target {
        hardware,
        channels,
        tags,
        version_min: parse_version("version_min", &body.version_min)?,
        version_max: parse_version("version_max", &body.version_max)?,
        devices: None,
        group: body.group.as_deref().map(GroupId::from),
    })
}

pub(super) fn parse_stages(bodies: Option<Vec<StageBody>>) -> Result<Vec<Stage>, Error> {
    let Some(bodies) = bodies else {
        return Ok(crate::domain::rollout::default_stages());
    };
    bodies
        .into_iter()
        .enumerate()
        .map(|(index, body)| {
            let size = match (body.percent, body.count) {
                (Some(p), None) => StageSize::Percent(p),
                (None, Some(c)) => StageSize::Count(c),
                _ => return Err(Error::invalid("invalid_stages", format!("stage {}: give either `percent` or `count`", index + 1))),
            };
            let error = match body.error_threshold {
                Some(ErrorThresholdBody { count: None, percent: None }) => {
                    return Err(Error::invalid(
                        "invalid_stages",
                        format!("stage {}: error_threshold needs `count` or `percent`", index + 1),
                    ));
                }
                Some(e) => ErrorThreshold { count: e.count, percent: e.percent },
                None => crate::domain::rollout::default_error_threshold(),
            };
            Ok(Stage {
                size,
                success_percent: body.success_threshold.unwrap_or(DEFAULT_SUCCESS_PERCENT),
                error,
                min_soak_s: body.min_soak_s.unwrap_or(0),
            })
        })
        .collect()
}

pub(super) fn parse_time(field: &str, value: &Option<String>) -> Result<Option<DateTime<Utc>>, Error> {
    value
        .as_deref()
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| Error::invalid("invalid_options", format!("{field} must be an RFC 3339 time such as 2026-11-23T22:00:00Z")))
        })
        .transpose()
}

pub(super) fn action_reason(body: &Bytes) -> Result<String, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    let body: ActionBody = serde_json::from_slice(body)
        .map_err(|e| Error::invalid("invalid_json", format!("expected {{\"reason\": \"...\"}} or no body: {e}")))?;
    crate::domain::device::check_text("reason", "invalid_reason", body.reason.as_deref().unwrap_or(""), 1024)
}

pub(super) async fn act(state: &AppState, actor: &str, id: &RolloutId, action: Action, body: &Bytes) -> ApiResult<Json<RolloutView>> {
    let reason = action_reason(body)?;
    service::act(&state.core, id, action, actor, &reason).await?;
    let status = service::status(&state.core, id).await?;
    Ok(Json(rollout_view(&status)))
}
