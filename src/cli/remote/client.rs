//! The operator commands' HTTP client: where the server is, the API key it sends as
//! `Authorization: Bearer`, and the one place where answers and transport errors become
//! outcomes (`Failure`), and so exit codes.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::{Connection, Failure};

/// Requests other than uploads and the event stream get an answer within this, or the
/// server counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    base: Url,
    api_key: String,
    http: reqwest::Client,
}

impl Client {
    /// The client of `--server` and `--api-key` (or their variables); a missing or malformed
    /// one is a usage error.
    pub fn new(connection: &Connection) -> Result<Client, Failure> {
        let server = connection
            .server
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Failure::Usage("no server: pass --server URL or set UPDRAFT_SERVER".into()))?;
        let base = parse_server(server)?;
        let api_key = connection
            .api_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| Failure::Usage("no API key: pass --api-key KEY or set UPDRAFT_API_KEY".into()))?;
        // rustls has two crypto providers compiled in (ring, and aws-lc-rs for rmqtt): clients
        // that use the process default need one chosen, as the server does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("updraft-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Usage(format!("cannot set up the HTTP client: {}", innermost(&e))))?;
        Ok(Client { base, api_key, http })
    }

    /// `{server}/seg/ments?query`, each segment percent-encoded (ids may be MACs or uids).
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("an http(s) URL has a path").pop_if_empty().extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// A request with the API key, and the usual time limit.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.request_untimed(method, url).timeout(REQUEST_TIMEOUT)
    }

    /// A request with the API key and no overall time limit (uploads, the event stream).
    pub fn request_untimed(&self, method: Method, url: Url) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.api_key)
    }

    /// Sends a request; a 2xx answer is returned, anything else is a `Failure`.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, Failure> {
        let response = request.send().await.map_err(|e| self.transport_failure(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(refusal(response).await)
    }

    /// A JSON call: the answer's body (`None` for `204 No Content`).
    pub async fn call(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Option<Value>, Failure> {
        let mut request = self.request(method, url);
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
        }
        let response = self.send(request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        self.body(response).await.map(Some)
    }

    /// A JSON call that must answer a body.
    pub async fn call_json(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value, Failure> {
        self.call(method, url, body).await?.ok_or_else(|| Failure::Protocol("the server answered no body".into()))
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Value, Failure> {
        self.call_json(Method::GET, self.url(segments, query), None).await
    }

    /// The JSON body of a successful answer.
    pub async fn body(&self, response: Response) -> Result<Value, Failure> {
        let bytes = response.bytes().await.map_err(|e| self.transport_failure(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| Failure::Protocol(format!("the answer is not JSON: {e}")))
    }

    /// What a transport error means for the user: the server cannot be reached (or stopped
    /// answering), or a local file could not be read while it was being sent.
    pub fn transport_failure(&self, error: &reqwest::Error) -> Failure {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(cause) = source {
            if let Some(local) = cause.downcast_ref::<LocalReadError>() {
                return Failure::Usage(local.to_string());
            }
            source = cause.source();
        }
        let server = self.base.as_str().trim_end_matches('/');
        if error.is_timeout() {
            return Failure::Unreachable(format!("no answer from {server} in time"));
        }
        Failure::Unreachable(format!("cannot reach {server}: {}", innermost(error)))
    }
}

/// A local read error while a file streams to the server (a usage error, not the network).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct LocalReadError {
    pub path: String,
    pub source: std::io::Error,
}

/// Decodes a typed view of an answer (only the fields the command shows).
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, Failure> {
    T::deserialize(value).map_err(|e| Failure::Protocol(format!("unexpected answer from the server: {e}")))
}

fn parse_server(server: &str) -> Result<Url, Failure> {
    let bad = |why: &str| Failure::Usage(format!("--server {server:?} is not a server URL like https://updraft.example.com: {why}"));
    let url = Url::parse(server.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("it must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    Ok(url)
}

/// A refusal as the server gave it: its `error.code` and `error.message`, or, for an answer
/// in another form (a proxy's error page), the status.
async fn refusal(response: Response) -> Failure {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let parsed: Option<(String, String)> = serde_json::from_str::<Value>(&text).ok().and_then(|body| {
        let error = body.get("error")?;
        Some((error.get("code")?.as_str()?.to_string(), error.get("message")?.as_str()?.to_string()))
    });
    let (code, message) = parsed.unwrap_or_else(|| {
        let reason = status.canonical_reason().unwrap_or("error");
        let excerpt: String = text.trim().chars().take(200).collect();
        let message = if excerpt.is_empty() { reason.to_string() } else { format!("{reason}: {excerpt}") };
        (format!("http_{}", status.as_u16()), message)
    });
    Failure::Refused { status: status.as_u16(), code, message }
}

/// The deepest cause of an error: "connection refused (os error 111)" rather than
/// "error sending request".
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(cause) = deepest.source() {
        deepest = cause;
    }
    deepest.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_needs_http_or_https_and_a_host() {
        assert!(parse_server("http://127.0.0.1:8080").is_ok());
        assert!(parse_server("https://updraft.example.com/prefix/").is_ok());
        for bad in ["127.0.0.1:8080", "ftp://example.com", "https://", "http://x/?a=1", "not a url"] {
            assert!(matches!(parse_server(bad), Err(Failure::Usage(_))), "{bad}");
        }
    }
}
