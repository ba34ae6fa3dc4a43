//! The evaluator: scheduled starts, time-outs of silent devices, error thresholds, stage openings, and metrics.

use super::*;

/// Starts due scheduled rollouts, times out silent devices, and applies the thresholds of
/// running rollouts. Safe to run on every replica at once.
pub async fn evaluate(core: &Core, now: DateTime<Utc>) -> Result<()> {
    let catch_up = chrono::Duration::from_std(core.rollouts.policy.catch_up).unwrap_or(chrono::Duration::MAX);
    // Running ones and, during their catch-up period only, completed ones (time-outs, metrics).
    let mut rollouts = core.store.list_rollouts(&[RolloutState::Draft, RolloutState::Paused, RolloutState::Halted], None).await?;
    rollouts.extend(core.store.list_live_rollouts(catch_up_start(now, catch_up)).await?);
    let mut gauges = BTreeMap::new();
    for rollout in &rollouts {
        if let Err(e) = evaluate_one(core, rollout, now, &mut gauges).await {
            match e {
                // Another replica acted first: fine.
                Error::Conflict { .. } => {}
                e => tracing::warn!(rollout_id = %rollout.id, error = %e, "cannot evaluate a rollout"),
            }
        }
    }
    // Rollouts no longer looked at (cancelled, drafts deleted, past their catch-up period)
    // leave the metrics; one whose evaluation failed keeps its previous counts.
    let mut published = core.rollouts.gauges.lock().expect("gauges lock");
    for rollout in &rollouts {
        if !gauges.contains_key(rollout.id.as_str())
            && let Some(previous) = published.remove(rollout.id.as_str())
        {
            gauges.insert(rollout.id.to_string(), previous);
        }
    }
    *published = gauges;
    Ok(())
}

pub(super) async fn evaluate_one(
    core: &Core,
    rollout: &Rollout,
    now: DateTime<Utc>,
    gauges: &mut BTreeMap<String, Vec<StageGauges>>,
) -> Result<()> {
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
    gauges.insert(rollout.id.to_string(), stage_gauges(rollout, &tallies, &sizes));
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

/// The states `updraft_rollout_devices` counts, in the order of `StageGauges`.
pub const GAUGE_STATES: [&str; 8] = ["pending", "offered", "downloading", "installing", "installed", "succeeded", "failed", "timed_out"];

/// A stage's devices by state (`GAUGE_STATES`).
pub type StageGauges = [u64; 8];

fn stage_gauges(rollout: &Rollout, tallies: &[Tally], sizes: &[u64]) -> Vec<StageGauges> {
    tallies
        .iter()
        .enumerate()
        .take(rollout.shares.len().max(1))
        .map(|(index, tally)| {
            let pending = sizes.get(index).copied().unwrap_or(0).saturating_sub(tally.members());
            [pending, tally.offered, tally.downloading, tally.installing, tally.installed, tally.succeeded, tally.failed, tally.timed_out]
        })
        .collect()
}

/// Each rollout the last evaluation looked at, with its stages' counts (`/metrics` renders
/// them as `updraft_rollout_devices`). Kept here rather than in the metrics recorder, which
/// never forgets a label set: every rollout ever run would stay in every scrape, 32 series
/// for a 4-stage rollout, for the life of the process.
pub fn gauges(core: &Core) -> BTreeMap<String, Vec<StageGauges>> {
    core.rollouts.gauges.lock().expect("gauges lock").clone()
}

/// Loads the view, then keeps it current (each second) and runs the evaluator.
pub fn spawn_background(core: Core) {
    core.tasks.clone().spawn("rollout evaluator", async move {
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
