//! Staged rollouts: their life cycle, stages and thresholds, target filters, maintenance
//! windows, and deterministic membership. Rules only, no IO; `services::rollouts` runs them.
//!
//! **Membership.** A device's place in a rollout is `fraction(rollout id, device id)`: the
//! first 53 bits of SHA-256(`rollout id` `\n` `device id`) as a number in [0, 1). A device
//! is in stage k when its fraction is below the cumulative share of stage k (and not below
//! the share of stage k-1). Shares only grow from stage to stage, so the stages are nested:
//! widening never reshuffles devices already in, and every replica, before and after a
//! restart, computes the same answer from the two ids alone.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Timelike, Utc};
use sha2::{Digest, Sha256};

use super::firmware::{Channel, HardwareId, ProductName};
use super::ids::{ArtifactId, DeviceId, GroupId, ReleaseId, RolloutId};
use super::update::channel_receives;
use super::version::Version;
use super::{Error, Result};

// ---- life cycle ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutState {
    Draft,
    Running,
    Paused,
    Completed,
    Cancelled,
    /// Stopped by the error threshold.
    Halted,
    RolledBack,
}

impl RolloutState {
    pub const ALL: [RolloutState; 7] = [
        RolloutState::Draft,
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::Cancelled,
        RolloutState::Halted,
        RolloutState::RolledBack,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutState::Draft => "draft",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::Cancelled => "cancelled",
            RolloutState::Halted => "halted",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Result<RolloutState> {
        RolloutState::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            Error::invalid(
                "invalid_state",
                format!("state `{text}` is not one of draft, running, paused, completed, cancelled, halted, rolled_back"),
            )
        })
    }

    /// True while the rollout offers its release to devices of its started stages. A
    /// completed rollout keeps offering it, so that devices that were offline catch up.
    pub fn offers(&self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Completed)
    }
}

/// What moves a rollout from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Cancel,
    /// Open the next stage now (the last stage's advance completes the rollout).
    Advance,
    Rollback,
    /// The error threshold (a rule, never an operator).
    Halt,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::Advance => "advance",
            Action::Rollback => "rollback",
            Action::Halt => "halt",
        }
    }
}

/// The state an action leads to from `from` (`last_stage`: the rollout is in its last stage),
/// or why it is not allowed.
pub fn next_state(from: RolloutState, action: Action, last_stage: bool) -> Result<RolloutState> {
    use RolloutState::*;
    let to = match (action, from) {
        (Action::Start, Draft) => Some(Running),
        (Action::Pause, Running) => Some(Paused),
        // Resuming a halted rollout excuses the failures that halted it (see `Tally::excused`).
        (Action::Resume, Paused | Halted) => Some(Running),
        (Action::Cancel, Draft | Running | Paused | Halted) => Some(Cancelled),
        (Action::Advance, Running | Paused) => Some(if last_stage { Completed } else { from }),
        (Action::Rollback, Running | Paused | Halted | Completed | Cancelled) => Some(RolledBack),
        (Action::Halt, Running) => Some(Halted),
        _ => None,
    };
    to.ok_or_else(|| {
        Error::conflict("invalid_transition", format!("a {} rollout cannot {}", from.as_str(), action.as_str().replace('_', " ")))
    })
}

// ---- stages ----

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageSize {
    /// Cumulative: the stage covers this percentage of the target (0 < p ≤ 100).
    Percent(f64),
    /// Cumulative: the stage covers this many devices of the target, counted when it starts.
    Count(u64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorThreshold {
    /// Halt when this many devices of a stage failed.
    pub count: Option<u64>,
    /// Halt when this percentage of a stage's devices failed.
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub size: StageSize,
    /// Percentage of the stage's devices that must succeed before the next stage opens.
    pub success_percent: f64,
    pub error: ErrorThreshold,
    /// Seconds the stage runs at least before the next one opens automatically.
    pub min_soak_s: u64,
}

pub const DEFAULT_SUCCESS_PERCENT: f64 = 90.0;
pub const DEFAULT_ERROR_PERCENT: f64 = 10.0;
pub const MAX_STAGES: usize = 20;

/// The stages of a rollout created without any: 1 %, 10 %, 50 %, then everyone, each with the
/// default thresholds.
pub fn default_stages() -> Vec<Stage> {
    [1.0, 10.0, 50.0, 100.0]
        .into_iter()
        .map(|percent| Stage {
            size: StageSize::Percent(percent),
            success_percent: DEFAULT_SUCCESS_PERCENT,
            error: default_error_threshold(),
            min_soak_s: 0,
        })
        .collect()
}

/// The error threshold of a stage that sets none.
pub fn default_error_threshold() -> ErrorThreshold {
    ErrorThreshold { count: None, percent: Some(DEFAULT_ERROR_PERCENT) }
}

/// Checks a list of stages: 1-20 stages, sizes growing, thresholds in range.
pub fn check_stages(stages: &[Stage]) -> Result<()> {
    let bad = |message: String| Err(Error::invalid("invalid_stages", message));
    if stages.is_empty() || stages.len() > MAX_STAGES {
        return bad(format!("a rollout has 1 to {MAX_STAGES} stages"));
    }
    let (mut last_percent, mut last_count) = (0.0f64, 0u64);
    for (index, stage) in stages.iter().enumerate() {
        let n = index + 1;
        match stage.size {
            StageSize::Percent(p) => {
                if !(p > 0.0 && p <= 100.0) {
                    return bad(format!("stage {n}: percent must be above 0 and at most 100"));
                }
                if p <= last_percent {
                    return bad(format!("stage {n}: stages are cumulative, so each percent must be larger than the previous one"));
                }
                last_percent = p;
            }
            StageSize::Count(c) => {
                if c == 0 {
                    return bad(format!("stage {n}: count must be at least 1"));
                }
                if c <= last_count {
                    return bad(format!("stage {n}: stages are cumulative, so each count must be larger than the previous one"));
                }
                last_count = c;
            }
        }
        if !(0.0..=100.0).contains(&stage.success_percent) {
            return bad(format!("stage {n}: success_threshold must be a percentage from 0 to 100"));
        }
        if let Some(p) = stage.error.percent
            && !(p > 0.0 && p <= 100.0)
        {
            return bad(format!("stage {n}: error_threshold.percent must be above 0 and at most 100"));
        }
        if stage.error.count == Some(0) {
            return bad(format!("stage {n}: error_threshold.count must be at least 1"));
        }
        if stage.min_soak_s > 30 * 24 * 3600 {
            return bad(format!("stage {n}: min_soak_s must be at most 30 days"));
        }
    }
    Ok(())
}

// ---- membership ----

/// A device's stable place in a rollout, in [0, 1) (see the module docs).
pub fn fraction(rollout_id: &str, device_id: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(rollout_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(device_id.as_bytes());
    let digest = hasher.finalize();
    let top = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (top >> 11) as f64 / (1u64 << 53) as f64
}

/// The stage (0-based) a fraction falls in, given the cumulative shares of the started
/// stages; `None` while it is in none of them.
pub fn stage_of(fraction: f64, shares: &[f64]) -> Option<usize> {
    shares.iter().position(|share| fraction < *share)
}

/// The cumulative share of a stage that starts now. `sorted_fractions` are the fractions of
/// the devices currently matching the target, in ascending order. Never below
/// `previous_share`, so stages stay nested.
pub fn share_of(size: StageSize, sorted_fractions: &[f64], previous_share: f64) -> f64 {
    let share = match size {
        StageSize::Percent(p) => p / 100.0,
        StageSize::Count(count) => match sorted_fractions.get(count as usize) {
            // Just the `count` smallest fractions are below the next one.
            Some(next) => *next,
            None => 1.0,
        },
    };
    share.clamp(previous_share, 1.0)
}

/// How many of `sorted_fractions` fall in each stage.
pub fn stage_sizes(sorted_fractions: &[f64], shares: &[f64]) -> Vec<u64> {
    let mut below_previous = 0usize;
    shares
        .iter()
        .map(|share| {
            let below = sorted_fractions.partition_point(|f| f < share);
            let size = below - below_previous;
            below_previous = below;
            size as u64
        })
        .collect()
}

// ---- target ----

/// Which devices a rollout is for. Every given criterion must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    /// Hardware ids; empty: every hardware the release has a build for.
    pub hardware: Vec<HardwareId>,
    /// Device channels; empty: every channel that receives the release's channel.
    pub channels: Vec<Channel>,
    /// The device has every one of these tags.
    pub tags: Vec<String>,
    /// Running version at least this (inclusive).
    pub version_min: Option<Version>,
    /// Running version below this (exclusive).
    pub version_max: Option<Version>,
    /// Only these devices (ids).
    pub devices: Option<HashSet<DeviceId>>,
    /// Only members of this saved group (id); its members are resolved by the caller.
    pub group: Option<GroupId>,
}

/// What a target filter looks at.
pub struct TargetFacts<'a> {
    pub id: &'a str,
    pub hardware: Option<&'a str>,
    pub channel: &'a str,
    pub version: Option<&'a Version>,
    pub tags: &'a [std::sync::Arc<str>],
}

impl Target {
    /// True when the device matches. `release_hardware` and `release_channel` describe the
    /// release; `group_members` are the members of `group` (if any).
    pub fn matches(
        &self,
        device: &TargetFacts<'_>,
        release_hardware: &[String],
        release_channel: &str,
        group_members: Option<&HashSet<DeviceId>>,
    ) -> bool {
        let Some(hardware) = device.hardware else { return false };
        let hardware_ok = if self.hardware.is_empty() {
            release_hardware.iter().any(|h| h == hardware)
        } else {
            self.hardware.iter().any(|h| h == hardware)
        };
        if !hardware_ok {
            return false;
        }
        let channel_ok = if self.channels.is_empty() {
            channel_receives(device.channel, release_channel)
        } else {
            self.channels.iter().any(|c| c == device.channel)
        };
        if !channel_ok {
            return false;
        }
        if !self.tags.iter().all(|tag| device.tags.iter().any(|t| **t == **tag)) {
            return false;
        }
        if self.version_min.is_some() || self.version_max.is_some() {
            let Some(version) = device.version else { return false };
            if self.version_min.as_ref().is_some_and(|min| version < min) || self.version_max.as_ref().is_some_and(|max| version >= max) {
                return false;
            }
        }
        if let Some(devices) = &self.devices
            && !devices.contains(device.id)
        {
            return false;
        }
        if self.group.is_some() && !group_members.is_some_and(|members| members.contains(device.id)) {
            return false;
        }
        true
    }
}

// ---- maintenance window ----

/// Hours of some days, in a time zone, during which devices may be offered the update.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Bit d set: the window opens on day d (0 = Monday). All bits: every day.
    pub days: u8,
    /// Minutes after midnight; `end <= start` means the window runs past midnight (equal:
    /// the whole day).
    pub start_min: u16,
    pub end_min: u16,
    pub time_zone: chrono_tz::Tz,
}

pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    pub fn parse(days: &[String], start: &str, end: &str, time_zone: Option<&str>) -> Result<Window> {
        let bad = |message: String| Error::invalid("invalid_window", message);
        let mut mask = 0u8;
        for day in days {
            let index = DAY_NAMES
                .iter()
                .position(|d| day.trim().to_ascii_lowercase().starts_with(d))
                .ok_or_else(|| bad(format!("day `{day}` is not one of mon, tue, wed, thu, fri, sat, sun")))?;
            mask |= 1 << index;
        }
        if mask == 0 {
            mask = 0x7f;
        }
        let minutes = |text: &str| -> Result<u16> {
            let (h, m) = text.trim().split_once(':').ok_or_else(|| bad(format!("`{text}` is not a time like 22:00")))?;
            match (h.parse::<u16>(), m.parse::<u16>()) {
                (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok(h * 60 + m),
                (Ok(24), Ok(0)) => Ok(24 * 60),
                _ => Err(bad(format!("`{text}` is not a time like 22:00"))),
            }
        };
        let time_zone = match time_zone {
            None => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| bad(format!("time zone `{name}` is unknown; use an IANA name such as Europe/Berlin")))?,
        };
        Ok(Window { days: mask, start_min: minutes(start)?, end_min: minutes(end)? % (24 * 60), time_zone })
    }

    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.time_zone);
        let day = local.weekday().num_days_from_monday() as u8;
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let opens_on = |d: u8| self.days & (1 << d) != 0;
        let yesterday = (day + 6) % 7;
        if self.start_min < self.end_min {
            opens_on(day) && (self.start_min..self.end_min).contains(&minute)
        } else if self.start_min == self.end_min {
            opens_on(day)
        } else {
            (opens_on(day) && minute >= self.start_min) || (opens_on(yesterday) && minute < self.end_min)
        }
    }

    pub fn day_names(&self) -> Vec<&'static str> {
        (0..7).filter(|d| self.days & (1 << d) != 0).map(|d| DAY_NAMES[d as usize]).collect()
    }
}

// ---- devices of a rollout ----

/// Where a device of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    Offered,
    Downloading,
    Installing,
    Installed,
    Succeeded,
    Failed,
    TimedOut,
}

impl MemberState {
    pub const ALL: [MemberState; 7] = [
        MemberState::Offered,
        MemberState::Downloading,
        MemberState::Installing,
        MemberState::Installed,
        MemberState::Succeeded,
        MemberState::Failed,
        MemberState::TimedOut,
    ];
    /// States in which a device holds a download slot and may still time out.
    pub const IN_FLIGHT: [MemberState; 3] = [MemberState::Offered, MemberState::Downloading, MemberState::Installing];

    pub fn as_str(&self) -> &'static str {
        match self {
            MemberState::Offered => "offered",
            MemberState::Downloading => "downloading",
            MemberState::Installing => "installing",
            MemberState::Installed => "installed",
            MemberState::Succeeded => "succeeded",
            MemberState::Failed => "failed",
            MemberState::TimedOut => "timed_out",
        }
    }

    pub fn parse_stored(text: &str) -> MemberState {
        MemberState::ALL.into_iter().find(|s| s.as_str() == text).unwrap_or(MemberState::Offered)
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, MemberState::Failed | MemberState::TimedOut)
    }
}

/// Devices of one stage by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub offered: u64,
    pub downloading: u64,
    pub installing: u64,
    pub installed: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Of `failed` and `timed_out`: failures an operator excused by resuming the rollout
    /// after a halt. Still shown as failures, but the error threshold no longer counts them.
    pub excused: u64,
}

impl Tally {
    pub fn add(&mut self, state: MemberState, n: u64) {
        let slot = match state {
            MemberState::Offered => &mut self.offered,
            MemberState::Downloading => &mut self.downloading,
            MemberState::Installing => &mut self.installing,
            MemberState::Installed => &mut self.installed,
            MemberState::Succeeded => &mut self.succeeded,
            MemberState::Failed => &mut self.failed,
            MemberState::TimedOut => &mut self.timed_out,
        };
        *slot += n;
    }

    pub fn failures(&self) -> u64 {
        self.failed + self.timed_out
    }

    /// The failures the error threshold counts: those not excused by a resume.
    pub fn counted_failures(&self) -> u64 {
        self.failures().saturating_sub(self.excused)
    }

    pub fn members(&self) -> u64 {
        self.offered + self.downloading + self.installing + self.installed + self.succeeded + self.failed + self.timed_out
    }

    /// Failures among devices with an outcome (0 when none has one yet).
    pub fn failure_rate(&self) -> f64 {
        let decided = self.succeeded + self.failures();
        if decided == 0 { 0.0 } else { self.failures() as f64 / decided as f64 }
    }
}

/// What the rules say about a running rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Stay in the current stage.
    Wait,
    /// Open the next stage (or complete after the last one).
    Advance(String),
    Halt(String),
}

/// Applies the thresholds. `tallies` and `sizes` cover the started stages (index =
/// stage), `current` is the current stage, `soaked` whether its minimum soak time passed.
/// The error threshold of every started stage is checked (late failures of an earlier stage
/// still halt); the success threshold only of the current stage. Failures excused by a
/// resume after a halt are not counted: only new ones can halt the rollout again.
pub fn evaluate(stages: &[Stage], current: usize, tallies: &[Tally], sizes: &[u64], soaked: bool) -> Verdict {
    for (index, tally) in tallies.iter().enumerate().take(current + 1) {
        let Some(stage) = stages.get(index) else { break };
        let size = sizes.get(index).copied().unwrap_or(0).max(tally.members());
        let failures = tally.counted_failures();
        if let Some(limit) = stage.error.count
            && failures >= limit
        {
            return Verdict::Halt(format!("stage {}: {failures} devices failed, error threshold is {limit}", index + 1));
        }
        if let Some(percent) = stage.error.percent
            && size > 0
            && failures as f64 * 100.0 >= percent * size as f64
            && failures > 0
        {
            return Verdict::Halt(format!(
                "stage {}: {failures} of {size} devices failed ({:.1}%), error threshold is {percent}%",
                index + 1,
                failures as f64 * 100.0 / size as f64
            ));
        }
    }
    let Some(stage) = stages.get(current) else { return Verdict::Wait };
    let tally = tallies.get(current).cloned().unwrap_or_default();
    let size = sizes.get(current).copied().unwrap_or(0).max(tally.members());
    let needed = (stage.success_percent * size as f64 / 100.0).ceil() as u64;
    if tally.succeeded >= needed && soaked {
        return Verdict::Advance(format!(
            "stage {}: {} of {size} devices succeeded, success threshold is {}%",
            current + 1,
            tally.succeeded,
            stage.success_percent
        ));
    }
    Verdict::Wait
}

// ---- records ----

/// Builds of one product shipped together under one version.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub id: ReleaseId,
    pub product: ProductName,
    pub version: String,
    /// The version, parsed; it prints as its canonical text (the stored `version_key`).
    pub version_key: Version,
    pub channel: Channel,
    pub notes: String,
    pub artifact_ids: Vec<ArtifactId>,
    pub created_at: DateTime<Utc>,
}

/// A saved list of devices that rollouts can target.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub id: GroupId,
    pub name: String,
    pub size: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOptions {
    /// Start automatically at this time (a draft until then).
    pub start_at: Option<DateTime<Utc>>,
    pub window: Option<Window>,
    /// Devices offered but not yet done downloading and installing, at most.
    pub max_concurrent: Option<u32>,
    /// Offers are `mandatory` (devices that support it install without asking).
    pub forced: bool,
    /// Devices registered after the start join too.
    pub dynamic: bool,
    /// A device offered the release that reports no outcome within this time has timed out.
    pub device_deadline_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: RolloutId,
    pub name: String,
    pub release_id: ReleaseId,
    pub product: ProductName,
    pub target: Target,
    pub stages: Vec<Stage>,
    pub options: RolloutOptions,
    pub state: RolloutState,
    pub reason: String,
    pub current_stage: usize,
    /// Cumulative share of each started stage, fixed when it started.
    pub shares: Vec<f64>,
    /// Devices of the target in each started stage, as last counted.
    pub stage_sizes: Vec<u64>,
    pub target_size: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub stage_started_at: Option<DateTime<Utc>>,
    pub counted_at: Option<DateTime<Utc>>,
    /// When it completed (its catch-up period runs from then).
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Rollout {
    pub fn last_stage(&self) -> bool {
        self.current_stage + 1 >= self.stages.len()
    }
}

/// One recorded change of a rollout's state or stage.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: String,
    pub to: String,
    /// 0-based stage after the transition.
    pub stage: usize,
    /// `operator` or `rule:<name>`.
    pub actor: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_rollout_without_stages_goes_1_10_50_100_percent_with_the_default_thresholds() {
        let stages = default_stages();
        let sizes: Vec<StageSize> = stages.iter().map(|s| s.size).collect();
        assert_eq!(sizes, [StageSize::Percent(1.0), StageSize::Percent(10.0), StageSize::Percent(50.0), StageSize::Percent(100.0)]);
        assert!(stages.iter().all(|s| s.success_percent == DEFAULT_SUCCESS_PERCENT && s.error == default_error_threshold()));
        assert!(check_stages(&stages).is_ok());
    }

    fn stage(size: StageSize) -> Stage {
        Stage { size, success_percent: 90.0, error: ErrorThreshold { count: None, percent: Some(10.0) }, min_soak_s: 0 }
    }

    #[test]
    fn the_fraction_is_a_fixed_function_of_the_two_ids() {
        // Pinned values: a change of the hash would silently reshuffle running rollouts.
        let f = fraction("rollout-1", "device-1");
        assert!((0.0..1.0).contains(&f));
        assert_eq!(f, fraction("rollout-1", "device-1"));
        assert_ne!(f, fraction("rollout-2", "device-1"));
        let expected = {
            let digest = Sha256::digest(b"rollout-1\ndevice-1");
            (u64::from_be_bytes(digest[..8].try_into().unwrap()) >> 11) as f64 / (1u64 << 53) as f64
        };
        assert_eq!(f, expected);
    }

    #[test]
    fn life_cycle_transitions_follow_the_diagram() {
        use RolloutState::*;
        assert_eq!(next_state(Draft, Action::Start, false).unwrap(), Running);
        assert_eq!(next_state(Running, Action::Pause, false).unwrap(), Paused);
        assert_eq!(next_state(Paused, Action::Resume, false).unwrap(), Running);
        assert_eq!(next_state(Running, Action::Advance, false).unwrap(), Running);
        assert_eq!(next_state(Running, Action::Advance, true).unwrap(), Completed);
        assert_eq!(next_state(Running, Action::Halt, false).unwrap(), Halted);
        assert_eq!(next_state(Completed, Action::Rollback, true).unwrap(), RolledBack);
        assert_eq!(next_state(Halted, Action::Resume, false).unwrap(), Running, "an operator may resume after a halt");
        for (from, action) in [
            (Draft, Action::Pause),
            (Completed, Action::Start),
            (Cancelled, Action::Resume),
            (Completed, Action::Resume),
            (RolledBack, Action::Rollback),
            (Halted, Action::Advance),
        ] {
            let error = next_state(from, action, false).unwrap_err();
            assert_eq!(error.code(), "invalid_transition", "{from:?} {action:?}");
        }
    }

    #[test]
    fn stages_must_grow_and_thresholds_be_percentages() {
        assert!(check_stages(&[stage(StageSize::Percent(1.0)), stage(StageSize::Percent(100.0))]).is_ok());
        assert!(check_stages(&[stage(StageSize::Count(10)), stage(StageSize::Percent(50.0))]).is_ok());
        assert!(check_stages(&[]).is_err());
        assert!(check_stages(&[stage(StageSize::Percent(10.0)), stage(StageSize::Percent(5.0))]).is_err());
        assert!(check_stages(&[stage(StageSize::Percent(0.0))]).is_err());
        assert!(check_stages(&[stage(StageSize::Percent(101.0))]).is_err());
        assert!(check_stages(&[stage(StageSize::Count(0))]).is_err());
        let mut bad = stage(StageSize::Percent(10.0));
        bad.success_percent = 120.0;
        assert!(check_stages(&[bad]).is_err());
    }

    #[test]
    fn count_stages_cover_exactly_that_many_devices() {
        let fractions: Vec<f64> = (0..1000).map(|i| fraction("r", &format!("d{i}"))).collect();
        let mut sorted = fractions.clone();
        sorted.sort_by(f64::total_cmp);
        let share = share_of(StageSize::Count(37), &sorted, 0.0);
        assert_eq!(fractions.iter().filter(|f| **f < share).count(), 37);
        assert_eq!(share_of(StageSize::Count(5000), &sorted, 0.0), 1.0);
        assert_eq!(share_of(StageSize::Percent(1.0), &sorted, 0.5), 0.5, "never below the previous share");
        assert_eq!(stage_sizes(&sorted, &[share, 1.0]), vec![37, 963]);
    }

    #[test]
    fn targets_combine_every_criterion() {
        let v = |s: &str| Version::parse(s).unwrap();
        let release_hw = vec!["esp32".to_string()];
        let tags: Vec<std::sync::Arc<str>> = vec!["eu".into(), "pilot".into()];
        let version = v("1.5.0");
        let facts = TargetFacts { id: "d1", hardware: Some("esp32"), channel: "beta", version: Some(&version), tags: &tags };
        assert!(Target::default().matches(&facts, &release_hw, "stable", None));
        assert!(Target::default().matches(&facts, &release_hw, "beta", None));
        assert!(!Target::default().matches(&facts, &release_hw, "nightly", None), "beta devices get beta and stable only");
        assert!(!Target::default().matches(&facts, &["esp32s3".into()], "stable", None));
        let tagged = Target { tags: vec!["eu".into()], ..Default::default() };
        assert!(tagged.matches(&facts, &release_hw, "stable", None));
        let other_tag = Target { tags: vec!["us".into()], ..Default::default() };
        assert!(!other_tag.matches(&facts, &release_hw, "stable", None));
        let range = Target { version_min: Some(v("1.0")), version_max: Some(v("2.0")), ..Default::default() };
        assert!(range.matches(&facts, &release_hw, "stable", None));
        let above = Target { version_min: Some(v("1.6")), ..Default::default() };
        assert!(!above.matches(&facts, &release_hw, "stable", None));
        let list = Target { devices: Some([DeviceId::from("d2")].into()), ..Default::default() };
        assert!(!list.matches(&facts, &release_hw, "stable", None));
        let group = Target { group: Some("g".into()), ..Default::default() };
        assert!(!group.matches(&facts, &release_hw, "stable", None));
        assert!(group.matches(&facts, &release_hw, "stable", Some(&[DeviceId::from("d1")].into())));
    }

    #[test]
    fn windows_open_on_their_days_and_hours_in_their_time_zone() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        // 2026-11-23 is a Monday.
        let nights = Window::parse(&["mon".into()], "22:00", "04:00", Some("Europe/Berlin")).unwrap();
        assert!(nights.is_open(at("2026-11-23T21:30:00Z")), "22:30 in Berlin on Monday");
        assert!(nights.is_open(at("2026-11-24T02:00:00Z")), "03:00 on Tuesday: Monday's window");
        assert!(!nights.is_open(at("2026-11-24T21:30:00Z")), "Tuesday night is not in the window");
        assert!(!nights.is_open(at("2026-11-23T12:00:00Z")));
        let office = Window::parse(&[], "09:00", "17:00", None).unwrap();
        assert!(office.is_open(at("2026-11-29T10:00:00Z")));
        assert!(!office.is_open(at("2026-11-29T17:00:00Z")));
        assert!(Window::parse(&["someday".into()], "09:00", "17:00", None).is_err());
        assert!(Window::parse(&[], "25:00", "17:00", None).is_err());
        assert!(Window::parse(&[], "09:00", "17:00", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn thresholds_halt_advance_or_wait() {
        let stages = vec![stage(StageSize::Percent(10.0)), stage(StageSize::Percent(100.0))];
        let tally = |succeeded, failed| Tally { succeeded, failed, ..Default::default() };
        assert_eq!(evaluate(&stages, 0, &[tally(5, 0)], &[10], true), Verdict::Wait);
        assert!(matches!(evaluate(&stages, 0, &[tally(9, 0)], &[10], true), Verdict::Advance(_)));
        assert_eq!(evaluate(&stages, 0, &[tally(9, 0)], &[10], false), Verdict::Wait, "soak time first");
        assert!(matches!(evaluate(&stages, 0, &[tally(8, 1)], &[10], true), Verdict::Halt(_)));
        let mut counted = stages.clone();
        counted[1].error = ErrorThreshold { count: Some(3), percent: None };
        assert!(matches!(evaluate(&counted, 1, &[tally(10, 0), tally(50, 3)], &[10, 90], false), Verdict::Halt(_)));
        assert!(
            matches!(evaluate(&stages, 1, &[tally(8, 1), tally(0, 0)], &[10, 90], false), Verdict::Halt(_)),
            "late failures of stage 1"
        );
        assert!(matches!(evaluate(&stages, 0, &[Tally::default()], &[0], true), Verdict::Advance(_)), "an empty stage passes");
        // After a resume, the failures that halted the rollout are excused; new ones count.
        let excused = Tally { succeeded: 8, failed: 1, excused: 1, ..Default::default() };
        assert_eq!(evaluate(&stages, 0, std::slice::from_ref(&excused), &[10], false), Verdict::Wait);
        let again = Tally { failed: 2, ..excused };
        assert!(matches!(evaluate(&stages, 0, &[again], &[10], false), Verdict::Halt(_)), "a new failure halts again");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn stages_are_nested_and_shares_are_observed(
            rollout in "[a-z0-9-]{1,36}",
            mut percents in proptest::collection::vec(1u32..=10_000, 1..5),
        ) {
            percents.sort_unstable();
            percents.dedup();
            let shares: Vec<f64> = percents.iter().map(|p| *p as f64 / 10_000.0).collect();
            const N: usize = 100_000;
            let mut in_stage = vec![0usize; shares.len()];
            for i in 0..N {
                let f = fraction(&rollout, &format!("0190a8c4-{i:012x}"));
                let stage = stage_of(f, &shares);
                // Nested: in stage k means in every later cumulative stage, never in an earlier one.
                if let Some(k) = stage {
                    for (j, share) in shares.iter().enumerate() {
                        prop_assert_eq!(f < *share, j >= k);
                    }
                    in_stage[k] += 1;
                }
            }
            let mut cumulative = 0usize;
            for (k, share) in shares.iter().enumerate() {
                cumulative += in_stage[k];
                let observed = cumulative as f64 / N as f64;
                // Binomial standard deviation at N = 100,000 is at most 0.0016; allow 4 sigma.
                let tolerance = 4.0 * (share * (1.0 - share) / N as f64).sqrt() + 1e-4;
                prop_assert!((observed - share).abs() <= tolerance, "stage {} share {} observed {}", k, share, observed);
            }
        }

        #[test]
        fn membership_depends_on_the_ids_alone(rollout in "[a-z0-9-]{1,36}", device in "[a-z0-9-]{1,36}") {
            // Same inputs, same answer: no process-random hashing (a restart recomputes the same).
            prop_assert_eq!(fraction(&rollout, &device), fraction(&rollout.clone(), &device.clone()));
            let f = fraction(&rollout, &device);
            prop_assert!((0.0..1.0).contains(&f));
        }
    }
}
