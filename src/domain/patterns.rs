//! The texts each name parser accepts, written as regular expressions for the OpenAPI document
//! (the common subset of ECMA-262, which JSON Schema uses, and Rust's `regex`). The property
//! tests below hold each pattern to its parser, so that the document refuses exactly what the
//! server refuses.

/// Unicode's White_Space, which `str::trim` removes around every name (`\s` means more in
/// Python's `re`, and less in some others).
pub const WHITE_SPACE: &str = r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";

/// `core`, anchored, with white space allowed around it (the parsers trim it).
fn trimmed(core: &str) -> String {
    format!("^{WHITE_SPACE}*(?:{core}){WHITE_SPACE}*$")
}

/// `firmware::ProductName::parse`.
pub fn product() -> String {
    trimmed(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
}

/// `firmware::HardwareId::parse`: inner spaces allowed.
pub fn hardware() -> String {
    trimmed(r"[A-Za-z0-9._:/+()-](?:[A-Za-z0-9._ :/+()-]{0,62}[A-Za-z0-9._:/+()-])?")
}

/// `firmware::Channel::parse` (any letter case; stored in lower case).
pub fn channel() -> String {
    trimmed(r"[A-Za-z0-9-]{1,32}")
}

/// `device::check_tag`.
pub fn tag() -> String {
    trimmed(r"[A-Za-z0-9._:/-]{1,64}")
}

/// `version::Version::parse`: up to three numeric parts (a leading `v` allowed), then an
/// optional semver pre-release and build. The parser also limits the text (white space
/// included) to 64 characters, which the document says with `maxLength` ([`VERSION_MAX_LENGTH`]).
pub fn version() -> String {
    let number = r"[0-9]{1,19}";
    let pre_part = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)";
    let build_part = r"[0-9A-Za-z-]+";
    trimmed(&format!(r"[vV]?{number}(?:\.{number}){{0,2}}(?:-{pre_part}(?:\.{pre_part})*)?(?:\+{build_part}(?:\.{build_part})*)?"))
}

/// The longest version text.
pub const VERSION_MAX_LENGTH: usize = 64;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::device::check_tag;
    use crate::domain::firmware::{Channel, HardwareId, ProductName};
    use crate::domain::version::Version;

    /// Texts the pattern matches.
    fn of(pattern: String) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&pattern[1..pattern.len() - 1]).unwrap()
    }

    /// Texts near the patterns: their alphabet, some white space and a few others.
    fn near() -> impl Strategy<Value = String> {
        proptest::string::string_regex(r"[ \tA-Za-z0-9._:/+()\-vV\u00a0\u3000é\x00]{0,70}").unwrap()
    }

    /// Versions of the pattern's shape with short parts, so that most are within the length.
    fn short_version() -> impl Strategy<Value = String> {
        let pre = r"(?:0|[1-9][0-9]{0,3}|[0-9]{0,2}[A-Za-z-][0-9A-Za-z-]{0,4})";
        proptest::string::string_regex(&format!(
            r"[ \t\u{{a0}}]{{0,2}}[vV]?[0-9]{{1,6}}(?:\.[0-9]{{1,6}}){{0,2}}(?:-{pre}(?:\.{pre}){{0,2}})?(?:\+[0-9A-Za-z-]{{1,5}}(?:\.[0-9A-Za-z-]{{1,5}}){{0,2}})?[ \t]{{0,2}}"
        ))
        .unwrap()
    }

    type Check = fn(&str) -> bool;

    fn checks() -> [(&'static str, String, Check); 4] {
        [
            ("product", product(), |t| ProductName::parse(t).is_ok()),
            ("hardware", hardware(), |t| HardwareId::parse(t).is_ok()),
            ("channel", channel(), |t| Channel::parse(t).is_ok()),
            ("tag", tag(), |t| check_tag(t).is_ok()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_text_of_the_product_pattern_parses(text in of(product())) {
            prop_assert!(ProductName::parse(&text).is_ok(), "{text:?}");
        }

        #[test]
        fn every_text_of_the_hardware_pattern_parses(text in of(hardware())) {
            prop_assert!(HardwareId::parse(&text).is_ok(), "{text:?}");
        }

        #[test]
        fn every_text_of_the_channel_pattern_parses(text in of(channel())) {
            prop_assert!(Channel::parse(&text).is_ok(), "{text:?}");
        }

        #[test]
        fn every_text_of_the_tag_pattern_parses(text in of(tag())) {
            prop_assert!(check_tag(&text).is_ok(), "{text:?}");
        }

        #[test]
        fn every_text_of_the_version_pattern_within_its_length_parses(text in of(version())) {
            // Most texts of the pattern are longer than 64 characters (the pattern's
            // repetitions are unbounded): those are refused, the rest parse.
            prop_assert_eq!(Version::parse(&text).is_ok(), text.chars().count() <= VERSION_MAX_LENGTH, "{:?}", text);
        }

        #[test]
        fn short_texts_of_the_version_pattern_parse(text in short_version()) {
            let matches = regex::Regex::new(&version()).unwrap().is_match(&text);
            prop_assert!(matches, "the generator left the pattern: {:?}", text);
            prop_assert_eq!(Version::parse(&text).is_ok(), text.chars().count() <= VERSION_MAX_LENGTH, "{:?}", text);
        }

        #[test]
        fn a_name_parses_exactly_when_it_matches_its_pattern(text in near()) {
            for (name, pattern, parses) in checks() {
                let matches = regex::Regex::new(&pattern).unwrap().is_match(&text);
                prop_assert_eq!(parses(&text), matches, "{}: {:?}", name, text);
            }
        }

        #[test]
        fn a_short_version_parses_exactly_when_it_matches_its_pattern(text in "[ vV0-9.+\\-a-zA-Z]{0,40}") {
            let matches = regex::Regex::new(&version()).unwrap().is_match(&text);
            prop_assert_eq!(Version::parse(&text).is_ok(), matches, "{:?}", text);
        }
    }

    #[test]
    fn the_patterns_hold_at_their_edges() {
        let version = regex::Regex::new(&version()).unwrap();
        for text in ["1", "1.2.3", " v1.02 ", "1.0.0-beta.1+build.7", "1.0.0-0a", "9999999999999999999.0.0"] {
            assert!(version.is_match(text) && Version::parse(text).is_ok(), "{text}");
        }
        for text in ["", "1.2.3.4", "1.0.0-01", "1.0.0-", "1.0.0+", "a1.0", "1..2"] {
            assert!(!version.is_match(text) && Version::parse(text).is_err(), "{text}");
        }
        let product = regex::Regex::new(&product()).unwrap();
        assert!(product.is_match(&"a".repeat(64)) && !product.is_match(&"a".repeat(65)));
        assert!(!product.is_match(".staging") && !product.is_match(""));
    }
}
