//! Conditional GETs (RFC 9110 §13.1.2): `If-None-Match` against a response's `ETag`, with the
//! weak comparison the RFC asks for, lists, and `*`. Every route that sends an `ETag` asks here.

use axum::http::{HeaderMap, header};

/// Whether the request's `If-None-Match` names `etag` (quoted, as sent in `ETag`): the
/// answer is then `304 Not Modified`.
pub fn none_match(request: &HeaderMap, etag: &str) -> bool {
    request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|list| list.split(',').map(|tag| tag.trim().trim_start_matches("W/")).any(|tag| tag == "*" || tag == etag))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn asking(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        assert!(none_match(&asking("\"abc\""), "\"abc\""));
        assert!(none_match(&asking("\"x\", W/\"abc\""), "\"abc\""));
        assert!(none_match(&asking("*"), "\"abc\""));
        assert!(!none_match(&asking("\"abd\""), "\"abc\""));
        assert!(!none_match(&HeaderMap::new(), "\"abc\""));
    }
}
