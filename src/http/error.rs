//! The one place where errors become HTTP responses: status code, JSON body
//! `{"error":{"code","message"}}`, and logging. Also the extractors that make malformed
//! JSON and query strings answer in that same shape.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::Error;

/// The JSON body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_version`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Adapter-side wrapper so that handlers can return `Result<_, ApiError>` with `?` on
/// domain results.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError(error)
    }
}

impl From<crate::domain::version::VersionError> for ApiError {
    fn from(error: crate::domain::version::VersionError) -> Self {
        ApiError(error.into())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

pub fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::Invalid { .. } => StatusCode::BAD_REQUEST,
        Error::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) | Error::Denied { .. } => StatusCode::FORBIDDEN,
        Error::NotFound { .. } => StatusCode::NOT_FOUND,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
        Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        Error::Upstream(_) => StatusCode::BAD_GATEWAY,
        Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = status_of(&error);
        let code = error.code();
        if status.is_server_error() {
            // The cause chain goes to the log only; clients get a generic message.
            tracing::error!(status = status.as_u16(), code, error = format!("{error:#}"), cause = ?cause_chain(&error), "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code, message = %error, "request refused");
        }
        let message = match &error {
            Error::Internal(_) => "an internal error occurred; it has been logged".to_string(),
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: ErrorDetail { code: code.to_string(), message } })).into_response();
        match &error {
            Error::Unauthenticated(_) => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Error::TooManyRequests { retry_after_secs } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Error::RequestTimeout(_) => {
                // The rest of the body will not come (in time): this connection is done.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Error::RangeNotSatisfiable { size } => {
                if let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, value);
                }
            }
            _ => {}
        }
        response
    }
}

fn cause_chain(error: &Error) -> Option<String> {
    match error {
        Error::Internal(cause) => Some(format!("{cause:?}")),
        _ => None,
    }
}

/// How much of a rejected request's body is read and discarded before the answer is sent:
/// a client that is still sending then reads the answer instead of a reset connection
/// (closing a socket with unread data makes the kernel reset it). It holds any ESP32 image.
pub const DRAIN_BYTES: u64 = 16 << 20;
/// How long that may take before the answer goes out anyway.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// Above `DRAIN_BYTES` (or `DRAIN_TIME`), the answer says `Connection: close`, and the body is
/// still read and discarded while the answer is sent, for at most this long, before the
/// connection closes: the answer is flushed before the close.
const LINGER: Duration = Duration::from_secs(5);

/// Middleware for routes that take large bodies (uploads): when the answer is an error and the
/// handler (or an extractor, such as authentication) left the body unread, the rest is read
/// and discarded before answering (up to `DRAIN_BYTES`), so that the connection survives. A
/// client that sent `Expect: 100-continue` and has not been asked for its body is answered at
/// once: it sends nothing more.
pub async fn drain_rejected_body(request: Request, next: Next) -> Response {
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let expects_continue =
        request.headers().get(header::EXPECT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let (parts, body) = request.into_parts();
    let shared = Arc::new(SharedSlot { body: Mutex::new(Some(body)), polled: AtomicBool::new(false) });
    let mut response = next.run(Request::from_parts(parts, Body::new(SharedBody(shared.clone())))).await;
    // A success read its body; an answer that closes the connection anyway (a body that comes
    // too slowly) has nothing to wait for.
    let closes = response.headers().get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || closes {
        return response;
    }
    let Some(mut rest) = shared.body.lock().expect("body lock").take() else {
        return response;
    };
    if rest.is_end_stream() || (expects_continue && !shared.polled.load(Ordering::Relaxed)) {
        return response;
    }
    let drained = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        loop {
            match next_frame(&mut rest).await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |data| data.len() as u64);
                    if read > DRAIN_BYTES {
                        return false;
                    }
                }
            }
        }
    })
    .await;
    if drained == Ok(true) {
        return response;
    }
    if http1 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = next_frame(&mut rest).await {} }).await;
    });
    response
}

async fn next_frame(body: &mut Body) -> Option<Result<Frame<Bytes>, axum::Error>> {
    std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// A request body that the middleware can take back once the handler is done with it.
struct SharedSlot {
    body: Mutex<Option<Body>>,
    /// The handler asked for the body (so a `100 Continue` went out).
    polled: AtomicBool,
}

struct SharedBody(Arc<SharedSlot>);

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.0.polled.store(true, Ordering::Relaxed);
        match self.0.body.lock().expect("body lock").as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.body.lock().expect("body lock").as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0.body.lock().expect("body lock").as_ref().map(|body| body.size_hint()).unwrap_or_default()
    }
}

/// `Json<T>` whose rejections use the error format above and say, in Updraft's words, which
/// field is wrong and what was expected. The body must be a JSON object: serde would also read
/// a struct from an array of its fields in order (`[null, "beta"]`), which no document allows.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        ApiJsonValue::check_type(&req)?;
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError(Error::invalid("invalid_json", "the request body must be a JSON object (`{...}`)")));
        }
        Ok(ApiJson(from_json_slice(&bytes)?))
    }
}

/// Any JSON value as the body (`ApiJson` takes objects only), with the same rejections.
pub struct ApiJsonValue(pub serde_json::Value);

impl ApiJsonValue {
    /// `415` unless the body is sent as JSON.
    fn check_type(req: &Request) -> Result<(), ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError(Error::UnsupportedMediaType("expected a JSON body with `Content-Type: application/json`".into())));
        }
        Ok(())
    }
}

impl<S: Send + Sync> FromRequest<S> for ApiJsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        ApiJsonValue::check_type(&req)?;
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        Ok(ApiJsonValue(from_json_slice(&bytes)?))
    }
}

/// The whole body (at most `MAX_JSON_BYTES`) as `Bytes`, for handlers that parse it
/// themselves; its rejections (too large, too slow, cut off) use the error format above.
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            ApiError(if let Some(slow) = super::body_guard::SlowBody::find(&rejection) {
                slow.into()
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge { limit: crate::http::MAX_JSON_BYTES as u64 }
            } else {
                Error::invalid("invalid_body", "the request body could not be read completely")
            })
        })?;
        Ok(ApiBytes(bytes))
    }
}

/// `application/json`, or any `application/*+json`.
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON request body; a body that does not fit gets `400 invalid_json` naming the
/// field and what was expected (for handlers that read the body themselves).
pub fn from_json_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if has_escaped_nul(bytes) {
        // PostgreSQL stores no NUL in text: refused here for every field alike.
        return Err(Error::invalid("invalid_json", "text in the request body may not contain the NUL character (\\u0000)"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => Error::invalid("invalid_json", describe_mismatch(&path, &message_of(&inner))),
            _ => json_syntax_error(&inner),
        }
    })?;
    deserializer.end().map_err(|e| json_syntax_error(&e))?;
    Ok(value)
}

/// Whether a JSON text holds the escape `\u0000` (a raw NUL is no valid JSON anyway).
fn has_escaped_nul(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000".as_slice()) {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

fn json_syntax_error(error: &serde_json::Error) -> Error {
    if error.is_eof() && error.line() == 1 && error.column() == 0 {
        return Error::invalid("invalid_json", "the request body is empty; expected a JSON object");
    }
    Error::invalid(
        "invalid_json",
        format!("the request body is not valid JSON: {} (line {}, column {})", message_of(error), error.line(), error.column()),
    )
}

/// serde_json's message without its position suffix.
fn message_of(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_string()
}

/// `Query<T>` whose rejections use the error format above and say, in Updraft's words, which
/// parameter is wrong and what was expected.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiQuery(from_query(parts.uri.query().unwrap_or_default())?))
    }
}

/// Parses a query string; one that does not fit gets `400 invalid_query` naming the
/// parameter and what was expected.
pub fn from_query<T: DeserializeOwned>(query: &str) -> Result<T, Error> {
    // PostgreSQL stores and compares no NUL in text: refused here for every parameter alike,
    // as in bodies.
    if url::form_urlencoded::parse(query.as_bytes()).any(|(name, value)| name.contains('\0') || value.contains('\0')) {
        return Err(Error::invalid("invalid_query", "a query parameter may not contain the NUL character (%00)"));
    }
    let deserializer = serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        Error::invalid("invalid_query", describe_mismatch(&path, &e.into_inner().to_string()))
    })
}

/// Turns serde's description of a value that does not fit its type ("invalid type: integer
/// `5`, expected a string") into one naming the field and what it takes ("`mac` must be a
/// string, not the number 5"). `path` is where it happened (`.` at the top, `a.b[2]` below).
fn describe_mismatch(path: &str, message: &str) -> String {
    let field = |name: &str| match path {
        "." | "" | "?" => format!("`{name}`"),
        parent => format!("`{parent}.{name}`"),
    };
    let at = || match path {
        "." | "" => "the request body".to_string(),
        path => format!("`{path}`"),
    };
    if let Some(name) = between(message, "missing field `", "`") {
        return format!("{} is required", field(name));
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = expected.trim_start_matches(", expected ").trim_start_matches("one of ");
        let unknown = if path.ends_with(name) { format!("`{path}`") } else { field(name) };
        return if known.starts_with("there are no fields") || known.is_empty() {
            format!("{unknown} is not a known field; this takes no fields")
        } else {
            format!("{unknown} is not a known field; the fields are {known}")
        };
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (value, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known = expected.trim_start_matches(", expected ");
        return format!("{} must be {known}, not `{value}`", at());
    }
    if let Some(name) = between(message, "duplicate field `", "`") {
        return format!("{} is given twice", field(name));
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("{} must be {}, not {}", at(), expected_in_words(expected), got_in_words(got));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid length ")
        && let Some((length, expected)) = rest.split_once(", expected ")
    {
        return format!("{} must be {}, not {length} long", at(), expected_in_words(expected));
    }
    // What Rust's number and boolean parsers say about a query parameter.
    let parse_failure = match message {
        "invalid digit found in string" | "cannot parse integer from empty string" => Some("a whole number"),
        "number too large to fit in target type" => Some("a smaller whole number"),
        "number too small to fit in target type" => Some("a larger whole number"),
        "invalid float literal" => Some("a number"),
        "provided string was not `true` or `false`" => Some("true or false"),
        _ => None,
    };
    if let Some(expected) = parse_failure {
        return format!("{} must be {expected}", at());
    }
    // A type's own message (e.g. "a version like 1.2.3").
    match path {
        "." | "" => message.to_string(),
        path => format!("`{path}`: {message}"),
    }
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = text.strip_prefix(start)?;
    let (inside, _) = rest.split_once(end)?;
    Some(inside)
}

/// serde's `expecting` of common types, in words.
fn expected_in_words(expected: &str) -> String {
    let words = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" => "a string",
        "a sequence" => "an array",
        "a map" => "an object",
        "any valid JSON value" => "a JSON value",
        "a UUID string" => "a UUID",
        "a character" => "a single character",
        other if other.starts_with("struct ") => "an object",
        other if other.starts_with("tuple") => "an array",
        other => other,
    };
    words.to_string()
}

/// serde's description of an unexpected value, in words.
fn got_in_words(got: &str) -> String {
    let quoted = |prefix: &str| got.strip_prefix(prefix).map(|rest| rest.trim_matches('`').to_string());
    if let Some(number) = quoted("integer ").or_else(|| quoted("floating point ")) {
        return format!("the number {number}");
    }
    if let Some(text) = got.strip_prefix("string ") {
        return format!("the string {text}");
    }
    if let Some(value) = quoted("boolean ") {
        return value;
    }
    match got {
        "unit value" | "null" => "null".into(),
        "sequence" => "an array".into(),
        "map" => "an object".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "a test type: only its deserialisation is exercised")]
    struct Body {
        mac: String,
        limit: Option<u32>,
        tags: Option<Vec<String>>,
        nested: Option<Nested>,
        state: Option<State>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "a test type: only its deserialisation is exercised")]
    struct Nested {
        enabled: bool,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum State {
        Installed,
        Failed,
    }

    fn json_message(body: &str) -> String {
        match from_json_slice::<Body>(body.as_bytes()) {
            Ok(value) => panic!("{body} was accepted: {value:?}"),
            Err(error) => {
                assert_eq!(error.code(), "invalid_json", "{error}");
                error.to_string()
            }
        }
    }

    #[test]
    fn json_body_errors_name_the_field_and_what_was_expected() {
        let cases = [
            ("{}", "`mac` is required"),
            (r#"{"mac": 5}"#, "`mac` must be a string, not the number 5"),
            (r#"{"mac": null}"#, "`mac` must be a string, not null"),
            (r#"{"mac": "a", "limit": -1}"#, "`limit` must be a whole number, 0 or more, not the number -1"),
            (r#"{"mac": "a", "limit": "ten"}"#, r#"`limit` must be a whole number, 0 or more, not the string "ten""#),
            (r#"{"mac": "a", "tags": "x"}"#, r#"`tags` must be an array, not the string "x""#),
            (r#"{"mac": "a", "tags": ["x", 7]}"#, "`tags[1]` must be a string, not the number 7"),
            (r#"{"mac": "a", "nested": {}}"#, "`nested.enabled` is required"),
            (r#"{"mac": "a", "nested": {"enabled": "yes"}}"#, r#"`nested.enabled` must be true or false, not the string "yes""#),
            (r#"{"mac": "a", "state": "done"}"#, "`state` must be `installed` or `failed`, not `done`"),
            (r#"{"mac": "a", "colour": 1}"#, "`colour` is not a known field; the fields are `mac`, `limit`, `tags`, `nested`, `state`"),
            ("5", "the request body must be an object, not the number 5"),
            ("", "the request body is empty; expected a JSON object"),
        ];
        for (body, expected) in cases {
            assert_eq!(json_message(body), expected, "for {body}");
        }
        let syntax = json_message(r#"{"mac": "a",}"#);
        assert!(syntax.starts_with("the request body is not valid JSON:") && syntax.contains("line 1"), "{syntax}");
        assert!(json_message(r#"{"mac": "a"} x"#).starts_with("the request body is not valid JSON:"));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "a test type: only its deserialisation is exercised")]
    struct Query {
        product: String,
        limit: Option<u32>,
        force: Option<bool>,
    }

    fn query_message(query: &str) -> String {
        match from_query::<Query>(query) {
            Ok(value) => panic!("{query} was accepted: {value:?}"),
            Err(error) => {
                assert_eq!(error.code(), "invalid_query", "{error}");
                error.to_string()
            }
        }
    }

    #[test]
    fn query_errors_name_the_parameter_and_what_was_expected() {
        let cases = [
            ("", "`product` is required"),
            ("product=a&limit=ten", "`limit` must be a whole number"),
            ("product=a&limit=-1", "`limit` must be a whole number"),
            ("product=a&limit=99999999999", "`limit` must be a smaller whole number"),
            ("product=a&force=maybe", "`force` must be true or false"),
            ("product=a&sort=name", "`sort` is not a known field; the fields are `product`, `limit`, `force`"),
        ];
        for (query, expected) in cases {
            assert_eq!(query_message(query), expected, "for {query}");
        }
    }
}

/// docs/API.md's table of error codes, generated from the code so that it cannot drift: a
/// code is added to it by using it. Run with `UPDRAFT_BLESS=1` to rewrite the table.
#[cfg(test)]
mod code_table {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::*;

    const START: &str = "<!-- error codes: generated from the code by `http::error::code_table`; do not edit -->\n";
    const END: &str = "<!-- end of error codes -->";

    /// What a reader should know about some codes.
    const NOTES: &[(&str, &str)] = &[
        ("forbidden", "a provisioning mode refuses the device; an expired or forged download link"),
        ("not_found", "unknown id or route"),
        ("method_not_allowed", "the route exists, the method does not"),
        (
            "too_many_requests",
            "repeated failed authentication from one address (device tokens, API keys, session cookies, MQTT passwords, logins) or of one username at login; `Retry-After` says when to retry",
        ),
        ("precondition_failed", "`If-Match` names a version that is no longer current"),
        ("request_timeout", "the body came too slowly; the connection is closed"),
        ("range_not_satisfiable", "with `Content-Range: bytes */<size>`"),
        ("schema_violation", "the message lists the JSON Schema errors"),
        ("upstream_failed", "a fetch on the client's behalf failed"),
        ("unavailable", "database or blob store not answering; every image conversion slot in use, with `Retry-After`"),
        ("insufficient_storage", "disk full; nothing was stored"),
        ("internal", "a bug; details only in the log"),
    ];

    /// Codes whose status is not the one their constructor implies.
    const STATUS_EXCEPTIONS: &[(&str, u16)] = &[("method_not_allowed", 405)];

    fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }

    /// The string literal at the start of `text` (after white space), if it is a code.
    fn leading_code(text: &str) -> Option<&str> {
        let rest = text.trim_start().strip_prefix('"')?;
        let code = &rest[..rest.find('"')?];
        (!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')).then_some(code)
    }

    /// The literals returned by a `fn code(&self) -> &'static str` in `text`.
    fn code_fn_literals(text: &str) -> Vec<&str> {
        let Some(start) = text.find("fn code(&self) -> &'static str {") else { return Vec::new() };
        let body = &text[start..];
        let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
        body.split("=> ").skip(1).filter_map(leading_code).collect()
    }

    /// Every error code the server can answer with, by status.
    fn codes_by_status() -> BTreeMap<u16, BTreeSet<String>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        rust_files(&root.join("src"), &mut files);
        // The MQTT adapter's refusals never become HTTP answers (they are logged, or answered
        // in the protocol's own messages).
        files.retain(|file| !file.starts_with(root.join("src/mqtt")));
        let mut table: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        let mut add = |status: u16, code: &str| {
            let status = STATUS_EXCEPTIONS.iter().find(|(c, _)| *c == code).map_or(status, |(_, s)| *s);
            table.entry(status).or_default().insert(code.to_string());
        };
        let mut code_fns = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            // Tests sit at the end of a file and use codes of their own.
            let text = &text[..text.find("#[cfg(test)]").unwrap_or(text.len())];
            for (constructor, status) in [
                ("Error::invalid(", 400),
                ("Error::Invalid { code: ", 400),
                ("Error::unprocessable(", 422),
                ("Error::Unprocessable { code: ", 422),
                ("Error::conflict(", 409),
                ("Error::Conflict { code: ", 409),
                ("Error::denied(", 403),
                ("Error::Denied { code: ", 403),
            ] {
                for after in text.split(constructor).skip(1) {
                    if let Some(code) = leading_code(after) {
                        add(status, code);
                    }
                }
            }
            // `check_text(field, code, …)` refuses with `Error::invalid(code, …)`.
            for after in text.split("check_text(").skip(1) {
                if let Some(code) = after.split_once(',').and_then(|(_, rest)| leading_code(rest)) {
                    add(400, code);
                }
            }
            if text.contains("fn code(&self) -> &'static str {") {
                code_fns.push(file.strip_prefix(root).unwrap().display().to_string());
            }
        }
        // The two `code()` functions: a corrupt ESP image is refused with
        // `Error::unprocessable(e.code(), …)`; the fixed codes of `Error` have the status
        // `status_of` gives them.
        code_fns.sort();
        assert_eq!(code_fns, ["src/domain/error.rs", "src/domain/esp_image.rs"], "a new code() function: classify its codes here");
        let esp_image = std::fs::read_to_string(root.join("src/domain/esp_image.rs")).unwrap();
        for code in code_fn_literals(&esp_image) {
            add(422, code);
        }
        let fixed = [
            Error::Unauthenticated(String::new()),
            Error::Forbidden(String::new()),
            Error::not_found("thing", ""),
            Error::PreconditionFailed(String::new()),
            Error::RequestTimeout(String::new()),
            Error::PayloadTooLarge { limit: 0 },
            Error::UnsupportedMediaType(String::new()),
            Error::RangeNotSatisfiable { size: 0 },
            Error::TooManyRequests { retry_after_secs: 0 },
            Error::InsufficientStorage,
            Error::Upstream(String::new()),
            Error::Unavailable(String::new()),
            Error::Internal(anyhow::anyhow!("")),
        ];
        let listed: BTreeSet<&str> = fixed.iter().map(Error::code).collect();
        let domain_error = std::fs::read_to_string(root.join("src/domain/error.rs")).unwrap();
        let declared: BTreeSet<&str> = code_fn_literals(&domain_error).into_iter().collect();
        assert_eq!(listed, declared, "a new variant of domain::Error: add it to `fixed` here");
        for error in &fixed {
            add(status_of(error).as_u16(), error.code());
        }
        table
    }

    fn render(table: &BTreeMap<u16, BTreeSet<String>>) -> String {
        let mut out = String::from(START);
        out.push_str("| status | codes |\n|---|---|\n");
        for (status, codes) in table {
            let codes: Vec<String> = codes
                .iter()
                .map(|code| match NOTES.iter().find(|(c, _)| c == code) {
                    Some((_, note)) => format!("`{code}` ({note})"),
                    None => format!("`{code}`"),
                })
                .collect();
            out.push_str(&format!("| {status} | {} |\n", codes.join(", ")));
        }
        out.push_str(END);
        out
    }

    #[test]
    fn the_error_table_in_the_api_docs_lists_every_code_of_the_code() {
        let table = codes_by_status();
        for (code, _) in NOTES {
            assert!(table.values().any(|codes| codes.contains(*code)), "a note on `{code}`, which the code no longer uses");
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
        let docs = std::fs::read_to_string(&path).unwrap();
        let start = docs.find(START).expect("docs/API.md has the generated error table's start marker");
        let end = docs[start..].find(END).map(|at| start + at + END.len()).expect("docs/API.md has the table's end marker");
        let generated = render(&table);
        if docs[start..end] == generated {
            return;
        }
        if std::env::var_os("UPDRAFT_BLESS").is_some() {
            std::fs::write(&path, format!("{}{generated}{}", &docs[..start], &docs[end..])).unwrap();
            return;
        }
        panic!(
            "docs/API.md's error table is out of date: run `UPDRAFT_BLESS=1 cargo nextest run --lib code_table` to rewrite it.\nIt should be:\n{generated}"
        );
    }
}

#[cfg(test)]
mod nul_tests {
    use super::*;

    #[test]
    fn an_escaped_nul_is_found_and_an_escaped_backslash_before_u0000_is_not() {
        assert!(has_escaped_nul(br#"{"notes": "x\u0000y"}"#));
        assert!(!has_escaped_nul(br#"{"notes": "x\\u0000y"}"#));
        assert!(has_escaped_nul(br#"{"notes": "x\\\u0000y"}"#));
        assert!(!has_escaped_nul(br#"{"notes": "x\u0001y"}"#));
        assert_eq!(from_json_slice::<serde_json::Value>(br#"{"a": "\u0000"}"#).unwrap_err().code(), "invalid_json");
    }
}
