//! The update decision: given a device and the builds of its product, which build (if any)
//! should it install next? One pure function, used by every protocol.
//!
//! Rules, in order:
//! 1. A device whose product or hardware is unknown gets nothing.
//! 2. An operator's pinned `target_version` wins: the build of that version for the
//!    device's hardware is offered whenever the device runs another version, even an older
//!    one (that is how a rollback reaches a device).
//! 3. Otherwise the newest build of the product for the device's hardware on the device's
//!    channel (or `stable`, which every channel receives) is offered if it is newer than
//!    what the device runs. Never a downgrade, never another hardware's build.
//! 4. Versions order by semantic-version precedence, pre-releases included.

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
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    Offer { artifact: &'a Artifact, pinned: bool },
    None(NoUpdate),
}

/// True when a build may go to a device on `device_channel`.
pub fn channel_receives(device_channel: &str, artifact_channel: &str) -> bool {
    artifact_channel == Channel::DEFAULT || artifact_channel == device_channel
}

fn fits_hardware(artifact: &Artifact, hardware: &str) -> bool {
    artifact.hardware.iter().any(|h| h == hardware)
}

pub fn decide<'a>(device: &DeviceFacts, artifacts: &'a [Artifact]) -> Decision<'a> {
    let Some(product) = device.product.as_deref() else { return Decision::None(NoUpdate::UnknownProduct) };
    let Some(hardware) = device.hardware.as_deref() else { return Decision::None(NoUpdate::UnknownHardware) };
    let builds = || artifacts.iter().filter(move |a| a.product == product && fits_hardware(a, hardware));

    if let Some(target) = &device.target_version {
        let canonical = target.canonical();
        let Some(artifact) = builds().find(|a| a.version_key == canonical) else {
            return Decision::None(NoUpdate::PinnedBuildMissing);
        };
        return if device.version.as_ref() == Some(target) {
            Decision::None(NoUpdate::UpToDate)
        } else {
            Decision::Offer { artifact, pinned: true }
        };
    }

    let newest = builds()
        .filter(|a| channel_receives(&device.channel, &a.channel))
        .filter_map(|a| Version::parse(&a.version_key).ok().map(|v| (v, a)))
        .max_by(|(va, a), (vb, b)| va.cmp(vb).then_with(|| a.created_at.cmp(&b.created_at)));
    let Some((newest_version, artifact)) = newest else { return Decision::None(NoUpdate::NoBuilds) };
    match &device.version {
        Some(current) if *current >= newest_version => Decision::None(NoUpdate::UpToDate),
        _ => Decision::Offer { artifact, pinned: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(id: &str, version: &str, hardware: &[&str], channel: &str) -> Artifact {
        let created_at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        Artifact {
            id: id.into(),
            product: "app".into(),
            version: version.into(),
            version_key: Version::parse(version).unwrap().canonical(),
            hardware: hardware.iter().map(|h| h.to_string()).collect(),
            channel: channel.into(),
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
        assert_eq!(offered(&decide(&device(Some("1.0.0")), &builds)), Some("b"));
        assert_eq!(offered(&decide(&device(None), &builds)), Some("b"));
    }

    #[test]
    fn a_device_on_the_newest_version_is_up_to_date() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable")];
        assert_eq!(decide(&device(Some("1.0")), &builds), Decision::None(NoUpdate::UpToDate));
    }

    #[test]
    fn never_a_downgrade_unless_pinned() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable")];
        assert_eq!(decide(&device(Some("2.0.0")), &builds), Decision::None(NoUpdate::UpToDate));
        let mut pinned = device(Some("2.0.0"));
        pinned.target_version = Some(Version::parse("1.0.0").unwrap());
        assert_eq!(decide(&pinned, &builds), Decision::Offer { artifact: &builds[0], pinned: true });
    }

    #[test]
    fn a_pin_wins_over_newer_builds_and_is_satisfied_once_installed() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable"), artifact("b", "2.0.0", &["esp32"], "stable")];
        let mut pinned = device(Some("0.9.0"));
        pinned.target_version = Some(Version::parse("1.0").unwrap());
        assert_eq!(offered(&decide(&pinned, &builds)), Some("a"));
        pinned.version = Some(Version::parse("1.0.0").unwrap());
        assert_eq!(decide(&pinned, &builds), Decision::None(NoUpdate::UpToDate));
        pinned.target_version = Some(Version::parse("3.0.0").unwrap());
        assert_eq!(decide(&pinned, &builds), Decision::None(NoUpdate::PinnedBuildMissing));
    }

    #[test]
    fn never_a_build_for_other_hardware() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable"), artifact("b", "9.0.0", &["esp32s3"], "stable")];
        assert_eq!(offered(&decide(&device(Some("0.1.0")), &builds)), Some("a"));
        let mut other = device(Some("0.1.0"));
        other.hardware = Some("esp32c3".into());
        assert_eq!(decide(&other, &builds), Decision::None(NoUpdate::NoBuilds));
        let mut pinned_other = device(Some("0.1.0"));
        pinned_other.target_version = Some(Version::parse("9.0.0").unwrap());
        assert_eq!(decide(&pinned_other, &builds), Decision::None(NoUpdate::PinnedBuildMissing));
    }

    #[test]
    fn builds_of_other_products_are_never_offered() {
        let mut foreign = artifact("x", "5.0.0", &["esp32"], "stable");
        foreign.product = "other".into();
        assert_eq!(decide(&device(Some("1.0.0")), &[foreign]), Decision::None(NoUpdate::NoBuilds));
    }

    #[test]
    fn channels_receive_their_own_builds_and_stable() {
        let builds = [artifact("s", "1.0.0", &["esp32"], "stable"), artifact("b", "1.1.0-beta.1", &["esp32"], "beta")];
        assert_eq!(offered(&decide(&device(Some("0.1.0")), &builds)), Some("s"));
        let mut beta = device(Some("0.1.0"));
        beta.channel = "beta".into();
        assert_eq!(offered(&decide(&beta, &builds)), Some("b"));
        let mut nightly = device(Some("0.1.0"));
        nightly.channel = "nightly".into();
        assert_eq!(offered(&decide(&nightly, &builds)), Some("s"));
    }

    #[test]
    fn pre_releases_order_before_their_release() {
        let builds = [artifact("rc", "2.0.0-rc.1", &["esp32"], "stable"), artifact("final", "2.0.0", &["esp32"], "stable")];
        assert_eq!(offered(&decide(&device(Some("1.9.0")), &builds)), Some("final"));
        assert_eq!(offered(&decide(&device(Some("2.0.0-rc.1")), &builds)), Some("final"));
        assert_eq!(offered(&decide(&device(Some("2.0.0-beta")), &builds[..1])), Some("rc"));
    }

    #[test]
    fn unknown_product_or_hardware_gets_nothing() {
        let builds = [artifact("a", "1.0.0", &["esp32"], "stable")];
        let mut no_product = device(None);
        no_product.product = None;
        assert_eq!(decide(&no_product, &builds), Decision::None(NoUpdate::UnknownProduct));
        let mut no_hardware = device(None);
        no_hardware.hardware = None;
        assert_eq!(decide(&no_hardware, &builds), Decision::None(NoUpdate::UnknownHardware));
    }
}
