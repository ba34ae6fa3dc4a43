//! The update decision: given a device and the builds of its product, which build (if any)
//! should it install next? One pure function, used by every protocol.
//!
//! Rules, in order:
//! 1. A device whose product or hardware is unknown gets nothing.
//! 2. An operator's pinned `target_version` wins: the build of that version for the
//!    device's hardware is offered whenever the device runs another version, even an older
//!    one (that is how a rollback reaches a device).
//! 3. Otherwise the newest of these builds is offered if it is newer than what the device
//!    runs (never a downgrade, never another hardware's build):
//!    - builds of the product for the device's hardware on the device's channel (or
//!      `stable`, which every channel receives) that belong to no release;
//!    - the builds, for the device's hardware, of the releases that running rollouts offer
//!      this device (the caller has checked target, stage membership, window and download
//!      slots: see `services::rollouts`). A build that belongs to a release is offered
//!      only this way, so creating a release does not ship it to everyone.
//!    - A product with a release is **managed by rollouts** from then on: a build uploaded
//!      since (in no release yet) is held too, offered to nobody until a release and a
//!      rollout (or a pin) ship it. Builds uploaded before the first release stay open, and
//!      products that never had a release keep the plain newest-build rule.
//! 4. Versions order by semantic-version precedence, pre-releases included.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::firmware::{Artifact, Channel};
use super::version::Version;

/// What the decision needs to know about a device.
#[derive(Debug, Clone, Default)]
pub struct DeviceFacts {
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub channel: String,
    /// The version the device reported; `None` if never reported or unparseable.
    pub version: Option<Version>,
    pub target_version: Option<Version>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoUpdate {
    UnknownProduct,
    UnknownHardware,
    /// The device runs the build it should run.
    UpToDate,
    /// The pinned version has no build for this hardware.
    PinnedBuildMissing,
    /// No build of the product fits the device's hardware and channel.
    NoBuilds,
    /// A newer build for this device exists, but it belongs to a release that no running
    /// rollout offers this device yet.
    HeldByRollout,
}

impl NoUpdate {
    /// Stable name, for the device record and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            NoUpdate::UnknownProduct => "unknown_product",
            NoUpdate::UnknownHardware => "unknown_hardware",
            NoUpdate::UpToDate => "up_to_date",
            NoUpdate::PinnedBuildMissing => "pinned_build_missing",
            NoUpdate::NoBuilds => "no_builds",
            NoUpdate::HeldByRollout => "held_by_rollout",
        }
    }

    /// What an operator can do about it; `None` for a device that is up to date.
    pub fn remedy(&self) -> Option<&'static str> {
        match self {
            NoUpdate::UnknownProduct => Some("the device has no product: set `product` on it, or provision it with a product"),
            NoUpdate::UnknownHardware => Some(
                "the device's hardware is unknown and its product has builds for several hardware ids (or none): set `hardware` \
                 on it, or admit one hardware in its product",
            ),
            NoUpdate::UpToDate => None,
            NoUpdate::PinnedBuildMissing => Some("no build of the pinned version fits its hardware: upload one or change the pin"),
            NoUpdate::NoBuilds => Some("no build of its product fits its hardware and channel: upload one"),
            NoUpdate::HeldByRollout => {
                Some("a newer build belongs to a release no running rollout offers it yet: start or widen a rollout")
            }
        }
    }
}

/// A release a running rollout offers this device.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOffer {
    pub rollout_id: Arc<str>,
    pub release_id: Arc<str>,
    /// The rollout stage (0-based) the device is in.
    pub stage: usize,
    /// The release's builds.
    pub builds: Arc<[Artifact]>,
    /// Forced rollout: devices that support it install without asking.
    pub mandatory: bool,
}

/// The builds of a product that the newest-build rule skips.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Ids of builds that belong to a release: offered only through a rollout's offer.
    pub released: HashSet<Arc<str>>,
    /// The product is managed by rollouts since this time (its first release): builds
    /// uploaded since then are held as well.
    pub since: Option<DateTime<Utc>>,
}

impl Held {
    pub fn holds(&self, artifact: &Artifact) -> bool {
        self.released.contains(artifact.id.as_str()) || self.since.is_some_and(|since| artifact.created_at >= since)
    }
}

/// What releases and rollouts add to the decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Releases<'a> {
    /// Builds offered only through a rollout's offer (or a pin).
    pub held: Option<&'a Held>,
    /// What the running rollouts this device is in offer it.
    pub offers: &'a [RolloutOffer],
}

impl Releases<'_> {
    fn holds(&self, artifact: &Artifact) -> bool {
        self.held.is_some_and(|held| held.holds(artifact))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    Offer {
        artifact: &'a Artifact,
        pinned: bool,
        /// Pins and forced rollouts.
        mandatory: bool,
        /// The rollout whose release this is, if any.
        rollout: Option<&'a RolloutOffer>,
    },
    None(NoUpdate),
}

/// True when a build may go to a device on `device_channel`.
pub fn channel_receives(device_channel: &str, artifact_channel: &str) -> bool {
    artifact_channel == Channel::DEFAULT || artifact_channel == device_channel
}

fn fits_hardware(artifact: &Artifact, hardware: &str) -> bool {
    artifact.hardware.iter().any(|h| h == hardware)
}

pub fn decide<'a>(device: &DeviceFacts, artifacts: &'a [Artifact], releases: Releases<'a>) -> Decision<'a> {
    let Some(product) = device.product.as_deref() else { return Decision::None(NoUpdate::UnknownProduct) };
    let Some(hardware) = device.hardware.as_deref() else { return Decision::None(NoUpdate::UnknownHardware) };
    let builds = || artifacts.iter().filter(move |a| a.product == product && fits_hardware(a, hardware));

    if let Some(target) = &device.target_version {
        let Some(artifact) = builds().find(|a| a.version_key.is_identical(target)) else {
            return Decision::None(NoUpdate::PinnedBuildMissing);
        };
        return if device.version.as_ref() == Some(target) {
            Decision::None(NoUpdate::UpToDate)
        } else {
            Decision::Offer { artifact, pinned: true, mandatory: true, rollout: None }
        };
    }

    let open = builds().filter(|a| channel_receives(&device.channel, &a.channel) && !releases.holds(a)).map(|a| (&a.version_key, a, None));
    let released = releases.offers.iter().flat_map(|offer| {
        offer
            .builds
            .iter()
            .filter(move |a| a.product == product && fits_hardware(a, hardware))
            .map(move |a| (&a.version_key, a, Some(offer)))
    });
    // Newest version first; between equal versions, a rollout's release, then the newer upload.
    let newest = open.chain(released).max_by(|(va, a, ra), (vb, b, rb)| {
        va.cmp(vb).then_with(|| ra.is_some().cmp(&rb.is_some())).then_with(|| a.created_at.cmp(&b.created_at))
    });
    // A held build newer than what the device runs (and than anything offered) explains
    // why nothing is: the operator's rollout has not reached the device.
    let held_newer = || {
        builds().any(|a| {
            channel_receives(&device.channel, &a.channel) && releases.holds(a) && device.version.as_ref().is_none_or(|v| a.version_key > *v)
        })
    };
    let Some((newest_version, artifact, rollout)) = newest else {
        return Decision::None(if held_newer() { NoUpdate::HeldByRollout } else { NoUpdate::NoBuilds });
    };
    match &device.version {
        Some(current) if current >= newest_version => {
            Decision::None(if held_newer() { NoUpdate::HeldByRollout } else { NoUpdate::UpToDate })
        }
        _ => Decision::Offer { artifact, pinned: false, mandatory: rollout.is_some_and(|r| r.mandatory), rollout },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::firmware::{HardwareId, ProductName};

    fn artifact(id: &str, version: &str, hardware: &[&str], channel: &str) -> Artifact {
        let created_at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        Artifact {
            id: id.into(),
            product: ProductName::parse("app").unwrap(),
            version: version.into(),
            version_key: Version::parse(version).unwrap(),
            hardware: hardware.iter().map(|h| HardwareId::parse(h).unwrap()).collect(),
            channel: channel.parse().unwrap(),
            notes: String::new(),
            size: 1,
            sha256: String::new(),
            sha1: String::new(),
            md5: String::new(),
            blob_key: String::new(),
            image: None,
            created_at,
            updated_at: created_at,
        }
    }

    fn device(version: Option<&str>) -> DeviceFacts {
        DeviceFacts {
            product: Some("app".into()),
            hardware: Some("esp32".into()),
            channel: "stable".into(),
            version: version.map(|v| Version::parse(v).unwrap()),
            target_version: None,
        }
    }

    fn offered<'a>(decision: &Decision<'a>) -> Option<&'a str> {
        match decision {
            Decision::Offer { artifact, .. } => Some(artifact.id.as_str()),
            Decision::None(_) => None,
        }
    }

    #[test]
    fn the_newest_build_for_the_hardware_is_offered() {
        let builds = [
            artifact("a", "1.0.0", &["esp32"], "stable"),
            artifact("b", "1.2.0", &["esp32"], "stable"),
            artifact("c", "1.1.0", &["esp32"], "stable"),
        ];
        assert_eq!(offered(&decide(&device(Some("1.0.0")), &builds, Releases::default())), Some("b"));
        assert_eq!(offered(&decide(&device(None), &builds, Releases::default())), Some("b"));
    }

    #[test]
    fn a_device_on_the_newest_version_is_up_to_date() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable")];
        assert_eq!(decide(&device(Some("1.0")), &builds, Releases::default()), Decision::None(NoUpdate::UpToDate));
    }

    #[test]
    fn never_a_downgrade_unless_pinned() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable")];
        assert_eq!(decide(&device(Some("2.0.0")), &builds, Releases::default()), Decision::None(NoUpdate::UpToDate));
        let mut pinned = device(Some("2.0.0"));
        pinned.target_version = Some(Version::parse("1.0.0").unwrap());
        assert_eq!(
            decide(&pinned, &builds, Releases::default()),
            Decision::Offer { artifact: &builds[0], pinned: true, mandatory: true, rollout: None }
        );
    }

    #[test]
    fn a_pin_wins_over_newer_builds_and_is_satisfied_once_installed() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable"), artifact("b", "2.0.0", &["esp32"], "stable")];
        let mut pinned = device(Some("0.9.0"));
        pinned.target_version = Some(Version::parse("1.0").unwrap());
        assert_eq!(offered(&decide(&pinned, &builds, Releases::default())), Some("a"));
        pinned.version = Some(Version::parse("1.0.0").unwrap());
        assert_eq!(decide(&pinned, &builds, Releases::default()), Decision::None(NoUpdate::UpToDate));
        pinned.target_version = Some(Version::parse("3.0.0").unwrap());
        assert_eq!(decide(&pinned, &builds, Releases::default()), Decision::None(NoUpdate::PinnedBuildMissing));
    }

    #[test]
    fn never_a_build_for_other_hardware() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable"), artifact("b", "9.0.0", &["esp32s3"], "stable")];
        assert_eq!(offered(&decide(&device(Some("0.1.0")), &builds, Releases::default())), Some("a"));
        let mut other = device(Some("0.1.0"));
        other.hardware = Some("esp32c3".into());
        assert_eq!(decide(&other, &builds, Releases::default()), Decision::None(NoUpdate::NoBuilds));
        let mut pinned_other = device(Some("0.1.0"));
        pinned_other.target_version = Some(Version::parse("9.0.0").unwrap());
        assert_eq!(decide(&pinned_other, &builds, Releases::default()), Decision::None(NoUpdate::PinnedBuildMissing));
    }

    #[test]
    fn builds_of_other_products_are_never_offered() {
        let mut foreign = artifact("x", "5.0.0", &["esp32"], "stable");
        foreign.product = ProductName::parse("other").unwrap();
        assert_eq!(decide(&device(Some("1.0.0")), &[foreign], Releases::default()), Decision::None(NoUpdate::NoBuilds));
    }

    #[test]
    fn channels_receive_their_own_builds_and_stable() {
        let builds = [artifact("s", "1.0.0", &["esp32"], "stable"), artifact("b", "1.1.0-beta.1", &["esp32"], "beta")];
        assert_eq!(offered(&decide(&device(Some("0.1.0")), &builds, Releases::default())), Some("s"));
        let mut beta = device(Some("0.1.0"));
        beta.channel = "beta".into();
        assert_eq!(offered(&decide(&beta, &builds, Releases::default())), Some("b"));
        let mut nightly = device(Some("0.1.0"));
        nightly.channel = "nightly".into();
        assert_eq!(offered(&decide(&nightly, &builds, Releases::default())), Some("s"));
    }

    #[test]
    fn pre_releases_order_before_their_release() {
        let builds = [artifact("rc", "2.0.0-rc.1", &["esp32"], "stable"), artifact("final", "2.0.0", &["esp32"], "stable")];
        assert_eq!(offered(&decide(&device(Some("1.9.0")), &builds, Releases::default())), Some("final"));
        assert_eq!(offered(&decide(&device(Some("2.0.0-rc.1")), &builds, Releases::default())), Some("final"));
        assert_eq!(offered(&decide(&device(Some("2.0.0-beta")), &builds[..1], Releases::default())), Some("rc"));
    }

    #[test]
    fn unknown_product_or_hardware_gets_nothing() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable")];
        let mut no_product = device(None);
        no_product.product = None;
        assert_eq!(decide(&no_product, &builds, Releases::default()), Decision::None(NoUpdate::UnknownProduct));
        let mut no_hardware = device(None);
        no_hardware.hardware = None;
        assert_eq!(decide(&no_hardware, &builds, Releases::default()), Decision::None(NoUpdate::UnknownHardware));
    }

    fn offer(id: &str, builds: &[Artifact], mandatory: bool) -> RolloutOffer {
        RolloutOffer { rollout_id: id.into(), release_id: format!("rel-{id}").into(), stage: 0, builds: builds.to_vec().into(), mandatory }
    }

    #[test]
    fn a_released_build_is_offered_only_through_a_rollout() {
        let open = artifact("a", "1.0.0", &["esp32"], "stable");
        let released = artifact("r", "2.0.0", &["esp32"], "stable");
        let builds = [open.clone(), released.clone()];
        let held = Held { released: ["r".into()].into(), since: None };
        let gated = Releases { held: Some(&held), offers: &[] };
        assert_eq!(offered(&decide(&device(Some("0.9.0")), &builds, gated)), Some("a"), "the open build, not the held one");
        assert_eq!(decide(&device(Some("1.0.0")), &builds, gated), Decision::None(NoUpdate::HeldByRollout), "held, and said so");
        assert_eq!(decide(&device(Some("2.0.0")), &builds, gated), Decision::None(NoUpdate::UpToDate));
        let offers = [offer("ro", std::slice::from_ref(&released), true)];
        let through = Releases { held: Some(&held), offers: &offers };
        match decide(&device(Some("1.0.0")), &builds, through) {
            Decision::Offer { artifact, pinned, mandatory, rollout } => {
                assert_eq!(artifact.id, "r");
                assert!(!pinned);
                assert!(mandatory, "a forced rollout makes the offer mandatory");
                assert_eq!(rollout.map(|r| &*r.rollout_id), Some("ro"));
            }
            other => panic!("expected an offer, got {other:?}"),
        }
    }

    #[test]
    fn a_managed_product_s_fresh_uploads_are_held_and_older_builds_stay_open() {
        let old = artifact("old", "1.0.0", &["esp32"], "stable");
        let mut fresh = artifact("fresh", "3.0.0", &["esp32"], "stable");
        fresh.created_at = old.created_at + chrono::Duration::hours(2);
        let builds = [old.clone(), fresh.clone()];
        let held = Held { released: HashSet::new(), since: Some(old.created_at + chrono::Duration::hours(1)) };
        let managed = Releases { held: Some(&held), offers: &[] };
        assert_eq!(offered(&decide(&device(Some("0.9.0")), &builds, managed)), Some("old"), "uploaded before the first release");
        assert_eq!(decide(&device(Some("1.0.0")), &builds, managed), Decision::None(NoUpdate::HeldByRollout), "the fresh upload is held");
        let mut pinned = device(Some("1.0.0"));
        pinned.target_version = Some(Version::parse("3.0.0").unwrap());
        assert_eq!(offered(&decide(&pinned, &builds, managed)), Some("fresh"), "a pin still reaches it");
        assert_eq!(offered(&decide(&device(Some("1.0.0")), &builds, Releases::default())), Some("fresh"), "unmanaged: newest wins");
    }

    #[test]
    fn a_rollout_never_downgrades_and_never_ships_other_hardware() {
        let released = artifact("r", "2.0.0", &["esp32s3"], "stable");
        let offers = [offer("ro", &[released], false)];
        let releases = Releases { held: None, offers: &offers };
        assert_eq!(decide(&device(Some("1.0.0")), &[], releases), Decision::None(NoUpdate::NoBuilds));
        let same_hw = [offer("ro", &[artifact("r", "2.0.0", &["esp32"], "stable")], false)];
        let releases = Releases { held: None, offers: &same_hw };
        assert_eq!(decide(&device(Some("3.0.0")), &[], releases), Decision::None(NoUpdate::UpToDate));
    }

    #[test]
    fn the_newest_of_two_rollouts_wins_and_a_pin_wins_over_both() {
        let old = artifact("r1", "2.0.0", &["esp32"], "stable");
        let new = artifact("r2", "2.1.0", &["esp32"], "stable");
        let offers = [offer("one", std::slice::from_ref(&old), false), offer("two", std::slice::from_ref(&new), false)];
        let releases = Releases { held: None, offers: &offers };
        assert_eq!(offered(&decide(&device(Some("1.0.0")), &[], releases)), Some("r2"));
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable"), old, new];
        let mut pinned = device(Some("2.1.0"));
        pinned.target_version = Some(Version::parse("1.0.0").unwrap());
        assert_eq!(offered(&decide(&pinned, &builds, releases)), Some("a"), "a rollback pin may downgrade");
    }
}
