//! Rules of the compatibility protocols that are not the update decision itself: the seed-001
//! device token, the seed-001 version syntax, esp32FOTA's version syntax, and how a device
//! that says little about itself (no hardware, no version) is matched to known builds.
//!
//! The update decision stays in `update`; these functions only fill in the facts it needs.

use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::firmware::{Artifact, HardwareId};
use super::ids::ArtifactId;
use super::version::Version;

/// The djb2 hash as the seed-001 server and firmware compute it: `h = h * 33 + byte`,
/// wrapping at 32 bits, starting from `seed`.
pub fn djb2(seed: u32, text: &str) -> u32 {
    text.bytes().fold(seed, |hash, byte| hash.wrapping_mul(33).wrapping_add(u32::from(byte)))
}

/// Checks an `X-Device-Auth` token of the seed-001 protocol ("ESP32 OTA Update Server").
///
/// **A weak legacy scheme**, accepted only on that compatibility surface: the token is a
/// 32-bit djb2 hash of the MAC and a secret shared by the whole fleet, so anyone who knows
/// one device's token and MAC can brute-force the secret, and the token never changes.
///
/// The hashed text is the MAC as sent in the query without `:`, upper-cased, followed by the
/// secret (exactly what the original server hashes). Two variants exist in the field and
/// both are accepted: the real firmware and server start from 0 and print unpadded hex (the
/// firmware in lower case); the README's sample starts from 5381 and prints `%08X`. The
/// token is compared as a hexadecimal number, so case and leading zeros do not matter.
pub fn ota_server_token_matches(presented: &str, mac_as_sent: &str, secret: &str) -> bool {
    let presented = presented.trim();
    if presented.is_empty() || presented.len() > 8 || !presented.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let Ok(value) = u32::from_str_radix(presented, 16) else { return false };
    let text = format!("{}{secret}", mac_as_sent.replace(':', "").to_ascii_uppercase());
    let firmware = djb2(0, &text);
    let readme = djb2(5381, &text);
    let matches_firmware = value.to_be_bytes().ct_eq(&firmware.to_be_bytes());
    let matches_readme = value.to_be_bytes().ct_eq(&readme.to_be_bytes());
    (matches_firmware | matches_readme).into()
}

/// The seed-001 version syntax: one to three dot-separated decimal numbers (`1`, `1.2`,
/// `1.2.3`), as the original validated it with `^\d+(\.\d+){0,2}$`.
pub fn ota_server_version_valid(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() <= 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The version as esp32FOTA can read it: `X.Y.Z` (its semver parser reads anything else,
/// such as `v1.2.3` or `1.2.3-rc.1`, as 0.0.0). `None` for a pre-release, which esp32FOTA
/// cannot tell apart from its release.
pub fn esp32fota_version(version: &Version) -> Option<String> {
    (!version.is_prerelease()).then(|| version.plain())
}

/// The one hardware identifier all of a product's builds share, for devices that never say
/// which hardware they are (esp32FOTA, the seed servers). `None` when builds for several
/// hardware identifiers exist: the device's hardware must then be set by an operator.
pub fn sole_hardware(builds: &[Artifact], product: &str) -> Option<HardwareId> {
    let mut found: Option<&HardwareId> = None;
    for hardware in builds.iter().filter(|a| a.product == product).flat_map(|a| a.hardware.iter()) {
        match found {
            None => found = Some(hardware),
            Some(h) if h == hardware => {}
            Some(_) => return None,
        }
    }
    found.cloned()
}

/// The build a device runs, recognised by the digests Arduino's `HTTPUpdate` sends:
/// `x-ESP32-sketch-sha256` (the SHA-256 appended to the image, upper-case hex) or
/// `x-ESP32-sketch-md5`/`x-ESP8266-sketch-md5` (the MD5 of the whole image).
pub fn build_by_digest<'a>(builds: &'a [Artifact], appended_sha256: Option<&str>, md5: Option<&str>) -> Option<&'a Artifact> {
    let appended_sha256 = appended_sha256.map(str::trim).filter(|s| s.len() == 64).map(str::to_ascii_lowercase);
    let md5 = md5.map(str::trim).filter(|s| s.len() == 32).map(str::to_ascii_lowercase);
    if let Some(sha) = &appended_sha256
        && let Some(build) = builds.iter().find(|a| a.image.as_ref().and_then(|i| i.appended_sha256.as_deref()) == Some(sha.as_str()))
    {
        return Some(build);
    }
    md5.and_then(|md5| builds.iter().find(|a| a.md5 == md5))
}

/// The build the Cyberdeck protocol (seed 002) calls "latest": the one an operator marked,
/// else the newest `stable` build of the product by version (then by upload time).
pub fn cyberdeck_latest<'a>(builds: &'a [Artifact], product: &str, marked: Option<&str>) -> Option<&'a Artifact> {
    if let Some(marked) = marked
        && let Some(build) = builds.iter().find(|a| a.id == marked && a.product == product)
    {
        return Some(build);
    }
    builds
        .iter()
        .filter(|a| a.product == product && a.channel == super::firmware::Channel::DEFAULT)
        .map(|a| (&a.version_key, a))
        .max_by(|(va, a), (vb, b)| va.cmp(vb).then_with(|| a.created_at.cmp(&b.created_at)))
        .map(|(_, a)| a)
}

// ---- seed-001 file names ----

/// A seed-001 firmware file name and the build it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatFile {
    pub name: String,
    pub artifact_id: ArtifactId,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::firmware::{Channel, ProductName};

    fn artifact(id: &str, version: &str, hardware: &[&str]) -> Artifact {
        let created_at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
        Artifact {
            id: id.into(),
            product: ProductName::parse("app").unwrap(),
            version: version.into(),
            version_key: Version::parse(version).unwrap(),
            hardware: hardware.iter().map(|h| HardwareId::parse(h).unwrap()).collect(),
            channel: Channel::stable(),
            notes: String::new(),
            size: 1,
            sha256: String::new(),
            sha1: String::new(),
            md5: format!("{id:0>32}"),
            blob_key: String::new(),
            image: None,
            created_at,
            updated_at: created_at,
        }
    }

    #[test]
    fn the_seed_001_token_is_accepted_in_both_variants_any_case_and_padding() {
        // Observed against the original server: MAC AA:BB:CC:DD:EE:FF, secret `sekret`.
        assert_eq!(format!("{:x}", djb2(0, "AABBCCDDEEFFsekret")), "e67490f8");
        for token in ["e67490f8", "E67490F8", " e67490f8 "] {
            assert!(ota_server_token_matches(token, "AA:BB:CC:DD:EE:FF", "sekret"), "{token}");
        }
        let readme = format!("{:08X}", djb2(5381, "AABBCCDDEEFFsekret"));
        assert!(ota_server_token_matches(&readme, "AA:BB:CC:DD:EE:FF", "sekret"));
        assert!(ota_server_token_matches(&readme.to_ascii_lowercase(), "aa:bb:cc:dd:ee:ff", "sekret"));
        for wrong in ["", "e67490f9", "xyz", "1e67490f8", "e67490f8e67490f8"] {
            assert!(!ota_server_token_matches(wrong, "AA:BB:CC:DD:EE:FF", "sekret"), "{wrong}");
        }
        assert!(!ota_server_token_matches("e67490f8", "AA:BB:CC:DD:EE:FF", "other"));
    }

    #[test]
    fn an_unpadded_token_with_leading_zeros_is_the_same_number() {
        // This secret's token has two leading zero nibbles: 0x00c6933e.
        let secret = "k8c4b30e7f3";
        assert_eq!(djb2(0, &format!("AABBCCDDEEFF{secret}")), 0x00c6_933e);
        let hash = djb2(0, &format!("AABBCCDDEEFF{secret}"));
        assert!(ota_server_token_matches(&format!("{hash:x}"), "AA:BB:CC:DD:EE:FF", secret));
        assert!(ota_server_token_matches(&format!("{hash:08x}"), "AA:BB:CC:DD:EE:FF", secret));
    }

    #[test]
    fn seed_001_versions_are_one_to_three_numbers() {
        for ok in ["1", "1.2", "1.2.3", "10.20.30"] {
            assert!(ota_server_version_valid(ok), "{ok}");
        }
        for bad in ["", "1.2.3.4", "1.0.0-beta", "v1.2", "1..2", "1.a"] {
            assert!(!ota_server_version_valid(bad), "{bad}");
        }
    }

    #[test]
    fn esp32fota_gets_plain_release_versions_only() {
        assert_eq!(esp32fota_version(&Version::parse("v1.02").unwrap()).as_deref(), Some("1.2.0"));
        assert_eq!(esp32fota_version(&Version::parse("2.0.0-rc.1").unwrap()), None);
        assert_eq!(esp32fota_version(&Version::parse("3.1.4+build.7").unwrap()).as_deref(), Some("3.1.4"));
    }

    #[test]
    fn the_sole_hardware_is_known_only_when_all_builds_agree() {
        let builds = [artifact("a", "1.0.0", &["esp32"]), artifact("b", "1.1.0", &["esp32"])];
        assert_eq!(sole_hardware(&builds, "app").as_deref(), Some("esp32"));
        let mixed = [artifact("a", "1.0.0", &["esp32"]), artifact("b", "1.1.0", &["esp32", "esp32s3"])];
        assert_eq!(sole_hardware(&mixed, "app"), None);
        assert_eq!(sole_hardware(&builds, "other"), None);
    }

    #[test]
    fn a_build_is_recognised_by_its_appended_sha256_or_md5() {
        let mut with_hash = artifact("a", "1.0.0", &["esp32"]);
        with_hash.image = Some(crate::domain::firmware::ImageFacts {
            format: "esp32-app".into(),
            chip_id: 0,
            chip: Some("esp32".into()),
            project_name: "app".into(),
            version: "1.0.0".into(),
            idf_ver: String::new(),
            compile_time: String::new(),
            compile_date: String::new(),
            secure_version: 0,
            segment_count: 1,
            hash_appended: true,
            appended_sha256: Some("ab".repeat(32)),
            app_elf_sha256: String::new(),
            min_chip_rev_full: 0,
            max_chip_rev_full: 0,
            flash_size_bytes: None,
        });
        let builds = [with_hash, artifact("b", "1.1.0", &["esp32"])];
        assert_eq!(build_by_digest(&builds, Some(&"AB".repeat(32)), None).map(|a| a.id.as_str()), Some("a"));
        assert_eq!(build_by_digest(&builds, None, Some(&format!("{:0>32}", "b"))).map(|a| a.id.as_str()), Some("b"));
        assert_eq!(build_by_digest(&builds, Some(&"cd".repeat(32)), Some("short")), None);
    }

    #[test]
    fn latest_is_the_marked_build_else_the_newest_stable_one() {
        let mut beta = artifact("c", "9.0.0", &["esp32"]);
        beta.channel = "beta".parse().unwrap();
        let builds = [artifact("a", "1.00", &["esp32"]), artifact("b", "1.02", &["esp32"]), beta];
        assert_eq!(cyberdeck_latest(&builds, "app", None).map(|a| a.id.as_str()), Some("b"));
        assert_eq!(cyberdeck_latest(&builds, "app", Some("a")).map(|a| a.id.as_str()), Some("a"));
        assert_eq!(cyberdeck_latest(&builds, "app", Some("gone")).map(|a| a.id.as_str()), Some("b"));
        assert_eq!(cyberdeck_latest(&builds, "other", None), None);
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use crate::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn seed_001_tokens_match_exactly_their_two_variants(
            mac in "[0-9A-Fa-f:]{0,17}",
            secret in "\\PC{0,16}",
            presented in "[ ]?[0-9a-fA-F]{0,10}[ ]?",
            version in "[0-9.]{0,14}",
        ) {
            fuzzing::compat(format!("{mac}\n{secret}\n{presented}\n{version}").as_bytes());
        }
    }
}
