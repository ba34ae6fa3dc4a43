//! Paths whose percent-encoding decodes to no UTF-8 text (`/api/v1/devices/%ff`), or to
//! control characters (`%00`, `%0d%0a`), are refused with 400 `invalid_path` in the JSON
//! error shape (seed 003's error body under seed 003's paths), before any extractor sees
//! them: axum's own `Path` rejection would answer in plain text, and PostgreSQL refuses a NUL
//! in any text (a 500 otherwise).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::domain::Error;

/// The refusal of a path that does not decode to text, if it is one (`http::guards` runs it
/// first); costs a scan for `%` on paths without one.
pub fn check(request: &Request) -> Option<Response> {
    let path = request.uri().path();
    if path.contains('%') && !decodes_to_text(path) {
        let error = Error::invalid("invalid_path", "the path is not UTF-8 text without control characters once percent-decoded");
        if SEED_003_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            return Some(super::compat_seed003::error_response(error, request_id));
        }
        return Some(ApiError(error).into_response());
    }
    None
}

/// Where seed 003's routes with a path parameter live: their errors are seed 003's error body.
const SEED_003_PREFIXES: [&str; 2] = ["/api/assets/", "/api/configs/"];

/// Whether `path` percent-decodes to UTF-8 without control characters (a `%` without two hex
/// digits stays as it is).
fn decodes_to_text(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok_and(|text| !text.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_that_decode_to_text_pass() {
        assert!(decodes_to_text("/api/v1/devices/d1"));
        assert!(decodes_to_text("/api/v1/assets/lamp/%C3%A9t%C3%A9"));
        assert!(decodes_to_text("/a/%2e%2e/%zz/%"));
        assert!(!decodes_to_text("/api/v1/devices/%ff%fe"));
        assert!(!decodes_to_text("/a/%C3"));
        assert!(!decodes_to_text("/api/v1/devices/x%00y"));
        assert!(!decodes_to_text("/api/v1/devices/x%0d%0aX-Injected:%20yes"));
    }
}
