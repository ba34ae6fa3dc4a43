//! MAC addresses: the identity of a device. Stored in one canonical form, upper-case with
//! colons (`AA:BB:CC:DD:EE:FF`, as `WiFi.macAddress()` prints it), and accepted in every
//! form devices and tools send.

use std::fmt;

use super::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

const ACCEPTED: &str =
    "accepted forms: AA:BB:CC:DD:EE:FF, aa-bb-cc-dd-ee-ff, aabbccddeeff, or the decimal eFuse MAC (esp32FOTA's ESP.getEfuseMac())";

/// Every text `Mac::parse` accepts, as a regular expression (for the OpenAPI document's
/// `pattern`): the hex forms, 13 to 15 decimal digits or `efuse:` and decimal digits, each
/// below 2^48 (281474976710656), with surrounding white space (Unicode's White_Space, which
/// `str::trim` removes, spelled out: `\s` means more in some regex engines). A unit test
/// checks it against `Mac::parse` both ways.
pub const PATTERN: &str = r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*(?:[0-9A-Fa-f]{12}|[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}|[0-9]{13,14}|[01][0-9]{14}|2[0-7][0-9]{13}|280[0-9]{12}|281[0-3][0-9]{11}|2814[0-6][0-9]{10}|28147[0-3][0-9]{9}|281474[0-8][0-9]{8}|2814749[0-6][0-9]{7}|28147497[0-5][0-9]{6}|281474976[0-6][0-9]{5}|28147497670[0-9]{4}|281474976710[0-5][0-9]{2}|2814749767106[0-4][0-9]|28147497671065[0-4]|281474976710655|efuse:0*(?:[0-9]{1,14}|[01][0-9]{14}|2[0-7][0-9]{13}|280[0-9]{12}|281[0-3][0-9]{11}|2814[0-6][0-9]{10}|28147[0-3][0-9]{9}|281474[0-8][0-9]{8}|2814749[0-6][0-9]{7}|28147497[0-5][0-9]{6}|281474976[0-6][0-9]{5}|28147497670[0-9]{4}|281474976710[0-5][0-9]{2}|2814749767106[0-4][0-9]|28147497671065[0-4]|281474976710655))[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$";

impl Mac {
    /// Parses `AA:BB:CC:DD:EE:FF`, `aa-bb-cc-dd-ee-ff`, `AABB.CCDD.EEFF`, `aabbccddeeff`
    /// (exactly 12 hex digits), or a decimal eFuse MAC (13 to 15 digits, or any decimal
    /// prefixed `efuse:`). The eFuse MAC is the 48-bit value of `ESP.getEfuseMac()`, whose
    /// lowest byte is the MAC's first byte.
    pub fn parse(input: &str) -> Result<Mac> {
        let text = input.trim();
        let invalid =
            || Error::invalid("invalid_mac", format!("`{}` is not a MAC address; {ACCEPTED}", text.chars().take(40).collect::<String>()));
        if let Some(decimal) = text.strip_prefix("efuse:") {
            return Mac::from_efuse_decimal(decimal).ok_or_else(invalid);
        }
        let hex: String = text.chars().filter(|c| !matches!(c, ':' | '-' | '.')).collect();
        let separators = text.len() - hex.len();
        let well_separated = match separators {
            0 => true,
            5 => {
                let parts: Vec<&str> = text.split([':', '-']).collect();
                parts.len() == 6 && parts.iter().all(|p| p.len() == 2)
            }
            2 => {
                let parts: Vec<&str> = text.split('.').collect();
                parts.len() == 3 && parts.iter().all(|p| p.len() == 4)
            }
            _ => false,
        };
        if hex.len() == 12 && well_separated && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut bytes = [0u8; 6];
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
            }
            return Ok(Mac(bytes));
        }
        if separators == 0 && (13..=15).contains(&text.len()) {
            return Mac::from_efuse_decimal(text).ok_or_else(invalid);
        }
        Err(invalid())
    }

    /// esp32FOTA's `id`: always the decimal eFuse MAC when it is all digits, whatever its
    /// length (a MAC whose last bytes are zero has a short value, and 12 digits would
    /// otherwise read as hex); any other form as [`Mac::parse`] takes it.
    pub fn parse_esp32fota_id(input: &str) -> Result<Mac> {
        let text = input.trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return Mac::from_efuse_decimal(text).ok_or_else(|| {
                Error::invalid("invalid_mac", format!("`{}` is not a 48-bit eFuse MAC", text.chars().take(40).collect::<String>()))
            });
        }
        Mac::parse(text)
    }

    /// The MAC of a decimal eFuse value.
    pub fn from_efuse_decimal(text: &str) -> Option<Mac> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value: u64 = text.parse().ok()?;
        if value >> 48 != 0 {
            return None;
        }
        let le = value.to_le_bytes();
        Some(Mac([le[0], le[1], le[2], le[3], le[4], le[5]]))
    }

    /// The decimal eFuse form (what esp32FOTA sends as `id`).
    pub fn efuse_decimal(&self) -> String {
        let mut le = [0u8; 8];
        le[..6].copy_from_slice(&self.0);
        u64::from_le_bytes(le).to_string()
    }

    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// The MAC of six bytes (the inverse of `bytes`).
    pub fn from_bytes(bytes: [u8; 6]) -> Mac {
        Mac(bytes)
    }

    /// `AA:BB:CC:DD:EE:FF`.
    pub fn canonical(&self) -> String {
        self.to_string()
    }

    /// `aa-bb-cc-dd-ee-ff`, the form seed-003 configuration files use.
    pub fn hyphenated_lower(&self) -> String {
        self.to_string().replace(':', "-").to_ascii_lowercase()
    }

    /// `AABBCCDDEEFF`.
    pub fn bare_upper(&self) -> String {
        self.to_string().replace(':', "")
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Every text the document's pattern describes parses.
        #[test]
        fn every_text_of_the_pattern_is_a_mac(text in proptest::string::string_regex(&PATTERN[1..PATTERN.len() - 1]).unwrap()) {
            proptest::prop_assert!(Mac::parse(&text).is_ok(), "{text:?}");
        }

        /// And nothing else does: texts near the accepted forms, and any text at all.
        #[test]
        fn a_text_parses_exactly_when_the_pattern_matches(
            near in "(efuse:)?[0-9a-fA-F:.\\- ]{0,22}",
            any in "\\PC{0,20}",
        ) {
            let pattern = regex::Regex::new(PATTERN).unwrap();
            for text in [&near, &any] {
                proptest::prop_assert_eq!(Mac::parse(text).is_ok(), pattern.is_match(text), "{:?}", text);
            }
        }
    }

    #[test]
    fn the_pattern_knows_the_limits_of_the_decimal_forms() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        for text in [
            "281474976710655",
            "281474976710656",
            "999999999999999",
            "1234567890123",
            "123456789012",
            "12345678901234567",
            "efuse:0",
            "efuse:",
            "efuse:000000000000000000000281474976710655",
            "efuse:281474976710656",
            " aa:bb:cc:dd:ee:ff\n",
            "aa:bb-cc:dd-ee:ff",
            "aa:bb:cc:dd:ee.ff",
            "aabb.ccdd.eeff",
            "aabb.ccdd.eef",
            "",
        ] {
            assert_eq!(Mac::parse(text).is_ok(), pattern.is_match(text), "{text:?}");
        }
    }

    #[test]
    fn every_common_form_parses_to_the_same_mac() {
        let expected = "24:0A:C4:12:34:56";
        for input in
            ["24:0A:C4:12:34:56", "24:0a:c4:12:34:56", "24-0a-c4-12-34-56", "240ac4123456", "240A.C412.3456", " 24:0A:C4:12:34:56 "]
        {
            assert_eq!(Mac::parse(input).unwrap().canonical(), expected, "{input}");
        }
    }

    #[test]
    fn an_esp32fota_id_of_any_length_is_the_decimal_efuse_mac() {
        for mac in ["24:0A:C4:12:34:00", "24:0A:C4:00:00:00", "24:0A:C4:12:34:56", "01:00:00:00:00:00"] {
            let mac = Mac::parse(mac).unwrap();
            assert_eq!(Mac::parse_esp32fota_id(&mac.efuse_decimal()).unwrap(), mac, "{}", mac.efuse_decimal());
        }
        // 12 digits: hex for `Mac::parse`, the eFuse value for esp32FOTA.
        assert_eq!(Mac::parse_esp32fota_id("223653136932").unwrap().canonical(), "24:0A:C4:12:34:00");
        assert_eq!(Mac::parse_esp32fota_id("24:0a:c4:12:34:56").unwrap().canonical(), "24:0A:C4:12:34:56");
        assert!(Mac::parse_esp32fota_id("281474976710656").is_err(), "more than 48 bits");
        assert!(Mac::parse_esp32fota_id("").is_err());
    }

    #[test]
    fn the_efuse_decimal_is_little_endian() {
        // ESP.getEfuseMac() for 24:0A:C4:12:34:56 is 0x563412C40A24.
        let mac = Mac::parse("24:0A:C4:12:34:56").unwrap();
        assert_eq!(mac.efuse_decimal(), 0x5634_12C4_0A24u64.to_string());
        assert_eq!(Mac::parse(&0x5634_12C4_0A24u64.to_string()).unwrap(), mac);
        assert_eq!(Mac::parse("efuse:123").unwrap().canonical(), "7B:00:00:00:00:00");
    }

    #[test]
    fn malformed_macs_name_the_accepted_forms() {
        for input in [
            "",
            "24:0A:C4:12:34",
            "24:0A:C4:12:34:5G",
            "24:0A-C4:12:34:56:",
            "240ac41234567",
            "2:40A:C4:12:34:56",
            "999999999999999",
            "CE:13:14:15",
        ] {
            let error = Mac::parse(input).unwrap_err();
            assert_eq!(error.code(), "invalid_mac", "{input}");
            assert!(error.to_string().contains("accepted forms"), "{error}");
        }
    }

    #[test]
    fn other_renderings() {
        let mac = Mac::parse("aa:bb:cc:dd:ee:ff").unwrap();
        assert_eq!(mac.hyphenated_lower(), "aa-bb-cc-dd-ee-ff");
        assert_eq!(mac.bare_upper(), "AABBCCDDEEFF");
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::Mac;
    use crate::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_form_of_a_mac_reads_back(bytes in any::<[u8; 6]>(), form in 0usize..6, lower in any::<bool>()) {
            let mac = Mac(bytes);
            let b = bytes;
            let text = match form {
                0 => mac.canonical(),
                1 => mac.hyphenated_lower(),
                2 => mac.bare_upper(),
                3 => format!("{:02X}{:02X}.{:02X}{:02X}.{:02X}{:02X}", b[0], b[1], b[2], b[3], b[4], b[5]),
                4 => format!("efuse:{}", mac.efuse_decimal()),
                _ => mac.efuse_decimal(),
            };
            let text = if lower { text.to_ascii_lowercase() } else { text };
            let parsed = if form == 5 { Mac::parse_esp32fota_id(&text) } else { Mac::parse(&text) };
            prop_assert_eq!(parsed.ok(), Some(mac));
            fuzzing::mac(text.as_bytes());
        }

        #[test]
        fn any_text_is_read_or_refused(text in "[0-9a-fA-F:.efus -]{0,20}|\\PC{0,20}") {
            fuzzing::mac(text.as_bytes());
        }
    }
}
