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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Core;
use super::devices;
use super::events::Event;
use super::fleet::{ActiveDevice, ProductTargets};
use crate::config::RolloutSettings;
use crate::domain::firmware::{Artifact, Channel, ProductName};
use crate::domain::rollout::{
    self, Action, Group, MemberState, Release, Rollout, RolloutOptions, RolloutState, Stage, Tally, Target, TargetFacts, Transition,
    Verdict,
};
use crate::domain::update::{Held, RolloutOffer};
use crate::domain::version::Version;
use crate::domain::{ArtifactId, DeviceId, Error, GroupId, ReleaseId, Result, RolloutId, device};
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
    /// The stage counts of the rollouts the evaluator last looked at (`evaluator::gauges`).
    gauges: Mutex<BTreeMap<String, Vec<evaluator::StageGauges>>>,
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
            gauges: Mutex::default(),
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
    group: Option<HashSet<DeviceId>>,
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

    /// Whether a live rollout's maintenance window is open at `now`: `None` when the rollout
    /// is not live here or has no window.
    pub fn window_open(&self, rollout_id: &str, now: DateTime<Utc>) -> Option<bool> {
        let live = self.live.iter().find(|l| &*l.offer.rollout_id == rollout_id)?;
        live.window.as_ref().map(|w| w.is_open(now))
    }

    /// Whether a live rollout is forced (its offers are mandatory).
    pub fn forced(&self, rollout_id: &str) -> bool {
        self.live.iter().any(|l| &*l.offer.rollout_id == rollout_id && l.offer.mandatory)
    }

    pub fn deadline_s(&self, rollout_id: &str) -> Option<u64> {
        self.live.iter().find(|l| &*l.offer.rollout_id == rollout_id).map(|l| l.deadline_s)
    }
}

/// The rollouts of a product as this replica last loaded them.
pub fn of_product(core: &Core, product: &str) -> Option<Arc<ProductRollouts>> {
    core.rollouts.view.read().expect("rollout view lock").get(product).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::mac::Mac;

    fn device(id: &str, version: &str, created_at: i64) -> ActiveDevice {
        ActiveDevice {
            id: id.into(),
            mac: Some(Mac::parse("02:00:00:00:00:01").unwrap()),
            product: Some("lamp".into()),
            hardware: Some("esp32".into()),
            channel: "stable".into(),
            version: Some(version.into()),
            target_version: None,
            stored_last_seen: None,
            stored_ip: None,
            reported_attributes: 0,
            tags: Arc::from(Vec::new()),
            created_at,
            awaiting_boot: false,
            settled: crate::services::fleet::Settled::unknown(),
        }
    }

    fn live(rollout_id: &str, version: &str, shares: Vec<f64>) -> LiveRollout {
        LiveRollout {
            offer: RolloutOffer {
                rollout_id: rollout_id.into(),
                release_id: format!("release-{version}").into(),
                stage: 0,
                builds: Arc::from(Vec::new()),
                mandatory: false,
            },
            version: Version::parse(version).unwrap(),
            matcher: Matcher {
                target: Target::default(),
                release_hardware: vec!["esp32".into()],
                release_channel: "stable".into(),
                group: None,
                registered_by: None,
            },
            shares,
            window: None,
            max_concurrent: None,
            in_flight: AtomicU64::new(0),
            deadline_s: 3600,
            until: None,
        }
    }

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn a_device_is_offered_the_newest_release_whose_started_stages_hold_it() {
        // Everyone is in 2.0.0's only stage; 3.0.0 has started no stage yet (share 0).
        let rollouts =
            ProductRollouts { held: Held::default(), live: vec![live("r3", "3.0.0", vec![0.0]), live("r2", "2.0.0", vec![1.0])] };
        let now = Utc::now();
        let offer = rollouts.offer_for(&device("d1", "1.0.0", 0), Some(&v("1.0.0")), now).unwrap();
        assert_eq!(&*offer.rollout_id, "r2");
        // A device at or above a release's version is offered nothing older.
        assert!(rollouts.offer_for(&device("d1", "2.0.0", 0), Some(&v("2.0.0")), now).is_none());
    }

    #[test]
    fn a_rollout_past_its_catch_up_period_or_for_devices_registered_later_offers_nothing() {
        let now = Utc::now();
        let mut ended = live("r2", "2.0.0", vec![1.0]);
        ended.until = Some(now - chrono::Duration::seconds(1));
        let rollouts = ProductRollouts { held: Held::default(), live: vec![ended] };
        assert!(rollouts.offer_for(&device("d1", "1.0.0", 0), Some(&v("1.0.0")), now).is_none());

        let mut fixed = live("r2", "2.0.0", vec![1.0]);
        fixed.matcher.registered_by = Some(1_000);
        let rollouts = ProductRollouts { held: Held::default(), live: vec![fixed] };
        assert!(rollouts.offer_for(&device("early", "1.0.0", 999), Some(&v("1.0.0")), now).is_some());
        assert!(rollouts.offer_for(&device("late", "1.0.0", 1_001), Some(&v("1.0.0")), now).is_none(), "not a dynamic rollout");
    }

    #[test]
    fn download_slots_are_capped_per_rollout() {
        let mut capped = live("r2", "2.0.0", vec![1.0]);
        capped.max_concurrent = Some(2);
        let rollouts = ProductRollouts { held: Held::default(), live: vec![capped, live("r9", "1.5.0", vec![1.0])] };
        assert!(rollouts.take_slot("r2") && rollouts.take_slot("r2"));
        assert!(!rollouts.take_slot("r2"), "the third download waits");
        assert!(rollouts.take_slot("r9") && rollouts.take_slot("unknown"), "uncapped and unknown rollouts never wait");
        assert_eq!(rollouts.deadline_s("r2"), Some(3600));
    }
}
