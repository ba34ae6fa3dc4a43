//! Firmware versions: semantic versions, parsed leniently because devices in the field
//! report `1.0`, `v2.3.1` or `1.02`.
//!
//! Rules: surrounding whitespace and one leading `v`/`V` are ignored; the numeric core has
//! one to three dot-separated decimal parts (missing parts are 0, leading zeros are allowed
//! and ignored); a `-pre.release` and `+build` suffix follow semver syntax. Ordering is
//! semver precedence: pre-releases sort before their release, build metadata is ignored.

use std::cmp::Ordering;
use std::fmt;

/// A parsed version. Equality and ordering follow semver precedence.
#[derive(Debug, Clone)]
pub struct Version {
    semver: semver::Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a version like 1.2.3 or 1.2.3-beta.1: {reason}")]
pub struct VersionError {
    pub input: String,
    pub reason: &'static str,
}

impl VersionError {
    /// The error of a version given in a named field (`target_version: ...`).
    pub fn in_field(self, field: &str) -> super::Error {
        super::Error::invalid("invalid_version", format!("{field}: {self}"))
    }
}

impl From<VersionError> for super::Error {
    fn from(error: VersionError) -> Self {
        super::Error::invalid("invalid_version", error.to_string())
    }
}

const MAX_VERSION_LEN: usize = 64;

impl Version {
    pub fn parse(input: &str) -> Result<Version, VersionError> {
        let fail = |reason| VersionError { input: input.chars().take(80).collect(), reason };
        let text = input.trim();
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        // White space around it counts too: the OpenAPI document says `maxLength: 64`.
        if input.chars().count() > MAX_VERSION_LEN {
            return Err(fail("it is longer than 64 characters"));
        }
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let mut numbers = [0u64; 3];
        let parts: Vec<&str> = core.split('.').collect();
        if parts.len() > 3 {
            return Err(fail("it has more than three numeric parts"));
        }
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail("its numeric parts must be decimal digits"));
            }
            *slot = part.parse().map_err(|_| fail("a numeric part is too large"))?;
        }
        let mut semver = semver::Version::new(numbers[0], numbers[1], numbers[2]);
        if let Some(pre) = pre {
            semver.pre = semver::Prerelease::new(pre).map_err(|_| fail("its pre-release part is malformed"))?;
            if semver.pre.is_empty() {
                return Err(fail("its pre-release part is empty"));
            }
        }
        if let Some(build) = build {
            semver.build = semver::BuildMetadata::new(build).map_err(|_| fail("its build part is malformed"))?;
            if semver.build.is_empty() {
                return Err(fail("its build part is empty"));
            }
        }
        // Stored as its canonical form and read back from it: that form must parse too (`1-…`
        // of 64 characters is `1.0.0-…` of 68).
        if semver.to_string().len() > MAX_VERSION_LEN {
            return Err(fail("its canonical form is longer than 64 characters"));
        }
        Ok(Version { semver })
    }

    /// The canonical semver text, e.g. `1.2.0` for `v1.02`. Two inputs with the same
    /// canonical text are the same version.
    pub fn canonical(&self) -> String {
        self.semver.to_string()
    }

    /// `X.Y.Z` without pre-release or build, for clients that understand nothing more.
    pub fn plain(&self) -> String {
        format!("{}.{}.{}", self.semver.major, self.semver.minor, self.semver.patch)
    }

    /// The same canonical text: equal precedence *and* equal build metadata (`1.0.0+a` and
    /// `1.0.0+b` are equal versions but not the same build's version).
    pub fn is_identical(&self, other: &Version) -> bool {
        self.semver == other.semver
    }

    pub fn is_prerelease(&self) -> bool {
        !self.semver.pre.is_empty()
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;

    fn from_str(text: &str) -> Result<Version, VersionError> {
        Version::parse(text)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.semver.cmp_precedence(&other.semver)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.semver.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(input: &str) -> String {
        Version::parse(input).unwrap().canonical()
    }

    #[test]
    fn a_version_whose_canonical_form_is_too_long_to_read_back_is_refused() {
        // Found by the `version` property: `1-` and 62 characters (64) was accepted, stored as
        // `1.0.0-…` (68) in `version_key`, and that row then failed to parse when read.
        let long = format!("1-{}", "a".repeat(62));
        assert!(Version::parse(&long).is_err());
        let fits = format!("1.0.0-{}", "a".repeat(58));
        assert_eq!(canonical(&fits), fits);
        assert_eq!(canonical(&format!("1-{}", "a".repeat(58))), fits);
    }

    #[test]
    fn short_and_prefixed_versions_are_padded() {
        assert_eq!(canonical("1"), "1.0.0");
        assert_eq!(canonical("1.2"), "1.2.0");
        assert_eq!(canonical(" v1.2.3 "), "1.2.3");
        assert_eq!(canonical("1.02"), "1.2.0");
        assert_eq!(canonical("2.0.0-rc.1+build.5"), "2.0.0-rc.1+build.5");
    }

    #[test]
    fn malformed_versions_are_refused_with_a_reason() {
        for input in ["", "abc", "1.2.3.4", "1..2", "1.2.x", "1.2.3-", "1.2.3+", "-1.0", "1.0-be ta", &"9".repeat(70)] {
            assert!(Version::parse(input).is_err(), "{input:?} parsed");
        }
        let error = Version::parse("1.2.x").unwrap_err();
        assert!(error.to_string().contains("decimal digits"), "{error}");
    }

    #[test]
    fn ordering_follows_semver_precedence() {
        let ordered = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"];
        for pair in ordered.windows(2) {
            assert!(Version::parse(pair[0]).unwrap() < Version::parse(pair[1]).unwrap(), "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(Version::parse("1.0.0+a").unwrap(), Version::parse("1.0.0+b").unwrap());
        assert_eq!(Version::parse("1.0").unwrap(), Version::parse("v1.0.0").unwrap());
    }

    #[test]
    fn identical_versions_share_their_build_metadata_too() {
        let a: Version = "1.0.0+a".parse().unwrap();
        let b: Version = "v1.0+b".parse().unwrap();
        assert_eq!(a, b);
        assert!(!a.is_identical(&b));
        assert!(a.is_identical(&a.canonical().parse().unwrap()));
        assert!("1.x".parse::<Version>().is_err());
    }

    #[test]
    fn plain_drops_prerelease_and_build() {
        assert_eq!(Version::parse("3.1.4-rc.2+abc").unwrap().plain(), "3.1.4");
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
        fn a_version_reads_back_from_its_canonical_form(
            text in "[ ]?[vV]?[0-9]{1,22}(\\.[0-9]{1,22}){0,3}(-[0-9A-Za-z.-]{0,62})?(\\+[0-9A-Za-z.-]{0,20})?[ ]?",
        ) {
            fuzzing::version(text.as_bytes());
        }

        #[test]
        fn a_long_version_reads_back_from_its_canonical_form(text in "[vV]?[0-9]{1,3}(\\.0)?-[a-z0-9.]{50,62}") {
            fuzzing::version(text.as_bytes());
        }

        #[test]
        fn any_text_is_read_or_refused(text in any::<String>()) {
            fuzzing::version(text.as_bytes());
        }
    }
}
