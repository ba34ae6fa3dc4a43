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
use crate::config::RolloutSettings;
use crate::domain::firmware::{Artifact, Channel, Product as ProductName};
use crate::domain::rollout::{
    self, Action, Group, MemberState, Release, Rollout, RolloutOptions, RolloutState, Stage, Tally, Target, TargetFacts, Transition,
    Verdict,
};
use crate::domain::update::{Held, RolloutOffer};
use crate::domain::version::Version;
use crate::domain::{Error, Result, device};
use crate::storage::TransitionWrite;

mod evaluator;
mod groups;
mod lifecycle;
mod releases;
mod view;

pub use evaluator::*;
pub use groups::*;
pub use lifecycle::*;
pub use releases::*;
pub use view::*;

/// Per-process rollout state: the view the check-in path reads.
pub struct RolloutRuntime {
    pub policy: RolloutSettings,
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
    pub fn new(policy: RolloutSettings) -> Self {
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
