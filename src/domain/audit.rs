//! The audit log's records: who did what to which target, when, from where, and how it
//! ended. Records carry no secret: no request body, no query string (it may carry signed
//! download tokens), no header value; text from the request is cut and escaped (`clean`).

use chrono::{DateTime, Utc};

/// The actor of a request whose credential was missing or wrong.
pub const ANONYMOUS: &str = "anonymous";

/// The longest text kept in any field of a record (paths, notes).
pub const MAX_FIELD_CHARS: usize = 512;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Answered with a success (2xx) or a redirect (3xx).
    Ok,
    /// Refused for its credential or its rate: 401, 403, 429.
    Denied,
    /// Any other error.
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Denied, Outcome::Failed];

    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Ok,
            401 | 403 | 429 => Outcome::Denied,
            _ => Outcome::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|outcome| outcome.as_str() == text)
    }
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// UUIDv7: ordered by time.
    pub id: String,
    pub at: DateTime<Utc>,
    /// `user:alice`, `key:ci`, `oidc:bob`, or `anonymous` (no or a wrong credential).
    pub actor: String,
    /// The actor's role, when it authenticated.
    pub role: Option<String>,
    /// The OpenAPI `operationId` of the route, or `METHOD /template` for undocumented routes.
    pub action: String,
    pub method: String,
    /// The route template (`/api/v1/devices/{id}`).
    pub route: String,
    /// The concrete path, without the query.
    pub target: String,
    /// The path parameters' values joined by `/` (the resource acted on), if the route has any.
    pub resource: Option<String>,
    /// The client's address, as resolved behind trusted proxies.
    pub ip: String,
    pub status: u16,
    pub outcome: Outcome,
    pub request_id: Option<String>,
    /// What the handler added (for example the user name a failed login tried).
    pub note: Option<String>,
}

/// Which records a query wants; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    pub outcome: Option<Outcome>,
    pub status: Option<u16>,
}

/// Text from a request made fit for a record: at most `MAX_FIELD_CHARS` characters, control
/// characters escaped (`\u{..}`), so that a record never carries a line break or a terminal
/// escape into a log line or a JSON-lines export.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_FIELD_CHARS));
    for (count, c) in text.chars().enumerate() {
        if count == MAX_FIELD_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The resource a request acted on: the values of the template's `{parameters}` in `path`,
/// joined by `/` (None when the template has none or the path does not fit it).
pub fn resource_of(template: &str, path: &str) -> Option<String> {
    let template_segments: Vec<&str> = template.split('/').collect();
    let path_segments: Vec<&str> = path.split('/').collect();
    if template_segments.len() != path_segments.len() {
        return None;
    }
    let values: Vec<&str> = template_segments
        .iter()
        .zip(&path_segments)
        .filter(|(t, _)| t.starts_with('{') && t.ends_with('}'))
        .map(|(_, value)| *value)
        .collect();
    (!values.is_empty()).then(|| clean(&values.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(Outcome::of_status(201), Outcome::Ok);
        assert_eq!(Outcome::of_status(304), Outcome::Ok);
        for status in [401, 403, 429] {
            assert_eq!(Outcome::of_status(status), Outcome::Denied);
        }
        for status in [400, 404, 409, 500] {
            assert_eq!(Outcome::of_status(status), Outcome::Failed);
        }
        assert!(Outcome::ALL.iter().all(|o| Outcome::parse(o.as_str()) == Some(*o)));
    }

    #[test]
    fn resources_are_the_path_parameters() {
        assert_eq!(resource_of("/api/v1/devices/{id}", "/api/v1/devices/d1").as_deref(), Some("d1"));
        assert_eq!(resource_of("/api/v1/configs/{kind}/{name}/revert", "/api/v1/configs/product/p/revert").as_deref(), Some("product/p"));
        assert_eq!(resource_of("/api/v1/devices", "/api/v1/devices"), None);
        assert_eq!(resource_of("/a/{x}", "/a/b/c"), None);
    }

    #[test]
    fn text_is_cut_and_control_characters_escaped() {
        assert_eq!(clean("a\r\nb"), "a\\u{d}\\u{a}b");
        let long = "x".repeat(MAX_FIELD_CHARS + 10);
        assert_eq!(clean(&long).chars().count(), MAX_FIELD_CHARS + 1);
    }
}
