//! Single byte ranges (RFC 9110 §14), as ESP-IDF `esp_https_ota` and resuming clients send
//! them: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Multi-range and unknown units are ignored
//! (the whole file is served), which the RFC allows.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve everything with 200.
    Full,
    /// Serve these bytes with 206.
    Partial(Range<u64>),
    /// Answer 416.
    Unsatisfiable,
}

pub fn resolve(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(header) = header else { return RangeRequest::Full };
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return RangeRequest::Full };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return RangeRequest::Full };
    let (first, last) = (first.trim(), last.trim());
    let number =
        |text: &str| -> Option<u64> { if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) { None } else { text.parse().ok() } };
    if first.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = number(last) else { return RangeRequest::Full };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial(size.saturating_sub(n)..size);
    }
    let Some(start) = number(first) else { return RangeRequest::Full };
    let end_inclusive = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(end) if end >= start => Some(end),
            // An end before the start makes the header invalid; invalid headers are ignored.
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    // An end past the file (ESP-IDF asks for one byte past it) is clipped.
    let end = end_inclusive.map_or(size, |e| e.saturating_add(1).min(size));
    RangeRequest::Partial(start..end)
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn the_forms_esp_idf_and_resuming_clients_send() {
        let cases: &[(&str, RangeRequest)] = &[
            ("bytes=0-0", Partial(0..1)),
            ("bytes=0-99", Partial(0..100)),
            ("bytes=100-", Partial(100..1000)),
            ("bytes=-100", Partial(900..1000)),
            ("bytes=0-", Partial(0..1000)),
            ("bytes=998-1000", Partial(998..1000)), // one past the end is clipped
            ("bytes=500-99999", Partial(500..1000)),
            ("bytes=-5000", Partial(0..1000)),
            ("bytes=999-999", Partial(999..1000)),
        ];
        for (header, expected) in cases {
            assert_eq!(&resolve(Some(header), 1000), expected, "{header}");
        }
    }

    #[test]
    fn unsatisfiable_ranges_get_416() {
        for header in ["bytes=1000-", "bytes=1000-1001", "bytes=-0", "bytes=5000-6000"] {
            assert_eq!(resolve(Some(header), 1000), Unsatisfiable, "{header}");
        }
        assert_eq!(resolve(Some("bytes=0-0"), 0), Unsatisfiable);
    }

    #[test]
    fn invalid_or_multiple_ranges_are_ignored() {
        for header in ["items=0-1", "bytes=5-1", "bytes=a-b", "bytes=0-1,5-6", "bytes=", "bytes=-", "bytes=1"] {
            assert_eq!(resolve(Some(header), 1000), Full, "{header}");
        }
        assert_eq!(resolve(None, 1000), Full);
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::option::of;
    use proptest::prelude::*;

    use crate::fuzzing;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn a_single_range_is_served_as_rfc_9110_says(first in of(0u64..2000), last in of(0u64..2000), size in 0u64..1500) {
            fuzzing::range_model(first, last, size);
        }

        #[test]
        fn a_range_of_any_numbers_lies_inside_the_file(first in of(any::<u64>()), last in of(any::<u64>()), size in any::<u64>()) {
            fuzzing::range_model(first, last, size);
        }

        #[test]
        fn any_header_is_served_inside_the_file(size in any::<u64>(), header in "[ ]?(bytes|items)?[= ]{0,2}[ 0-9,-]{0,24}") {
            fuzzing::range(format!("{size}\n{header}").as_bytes());
        }
    }
}
