//! HTTP as the native device protocol speaks it (docs/CLIENT.md, "The native protocol"):
//! provisioning, check-in and update reports, plus the helpers every HTTP protocol uses.
//! Wire types are the simulator's own, with only the fields it reads.

use std::error::Error as _;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::{Value, json};

use super::fleet::{Device, Fatal, Shared, UpdateState};
use super::update::Offer;
use super::{EXIT_REFUSED, EXIT_UNREACHABLE};

/// The server's code for a device that was provisioned before (by an earlier run's seed).
const ALREADY_PROVISIONED: &str = "device_has_token";

/// Why a request did not get what it wanted.
#[derive(Debug)]
pub enum WireError {
    /// No answer: connection refused, reset, timed out.
    Unreachable(String),
    /// An answer the device cannot use: the status and the server's error code and message.
    Refused { status: u16, code: String, message: String },
}

impl WireError {
    /// The short name counted in the summary and the report.
    pub fn kind(&self) -> String {
        match self {
            WireError::Unreachable(_) => "unreachable".into(),
            WireError::Refused { status, code, .. } if code.is_empty() => format!("http_{status}"),
            WireError::Refused { status, code, .. } => format!("http_{status}_{code}"),
        }
    }

    /// The error as the reason to stop before the fleet starts.
    pub fn fatal(&self, doing: &str) -> Fatal {
        match self {
            WireError::Unreachable(e) => Fatal::new(EXIT_UNREACHABLE, format!("cannot {doing}: {e}")),
            WireError::Refused { status, code, message } if code == ALREADY_PROVISIONED => Fatal::new(
                EXIT_REFUSED,
                format!(
                    "the server refused to {doing} ({status} {code}: {message}); a fleet of this --seed ran against this server \
                     before: use another --seed"
                ),
            ),
            WireError::Refused { status, code, message } => {
                Fatal::new(EXIT_REFUSED, format!("the server refused to {doing}: {status} {code}: {message}"))
            }
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Unreachable(e) => write!(f, "{e}"),
            WireError::Refused { status, code, message } => write!(f, "{status} {code}: {message}"),
        }
    }
}

/// A reqwest error with its causes (reqwest's own message alone says little).
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sends a request, counting it.
pub async fn send(shared: &Shared, request: reqwest::RequestBuilder) -> Result<reqwest::Response, WireError> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    request.send().await.map_err(|e| WireError::Unreachable(describe(&e)))
}

/// The body of a JSON answer with a 2xx status; anything else is `Refused` with the
/// server's `error.code` and `error.message` when it sent them.
pub async fn json_answer(response: reqwest::Response) -> Result<(u16, Value), WireError> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| WireError::Unreachable(describe(&e)))?;
    let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    if (200..300).contains(&status) {
        return Ok((status, body));
    }
    Err(refusal(status, &body, &bytes))
}

fn refusal(status: u16, body: &Value, bytes: &[u8]) -> WireError {
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or_default().to_string();
    let message = error["message"]
        .as_str()
        .or_else(|| error.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
    WireError::Refused { status, code, message }
}

#[derive(Deserialize)]
struct Provisioned {
    device_id: String,
    token: String,
    poll_interval_s: Option<u32>,
}

/// `POST /api/v1/device/provision`: the device gets its id and token.
pub async fn provision(shared: &Shared, device: &mut Device) -> Result<(), WireError> {
    let plan = &shared.plan;
    let mut body = json!({"mac": device.mac_colon(), "product": plan.product, "hardware": plan.hardware, "version": &*device.version});
    if let (Some(key), Some(secret)) = (&plan.provision_key, &plan.provision_secret) {
        body["provision_key"] = json!(key);
        body["provision_secret"] = json!(secret);
    }
    let mut request = shared.http.post(format!("{}/api/v1/device/provision", plan.base)).json_body(&body);
    if let Some(token) = &device.token {
        request = request.bearer_auth(token);
    }
    let (_, answer) = json_answer(send(shared, request).await?).await?;
    let provisioned: Provisioned = serde_json::from_value(answer).map_err(|e| WireError::Refused {
        status: 200,
        code: "unexpected_answer".into(),
        message: e.to_string(),
    })?;
    device.device_id = Some(provisioned.device_id.into());
    device.token = Some(provisioned.token.into());
    if let Some(poll) = provisioned.poll_interval_s {
        device.poll_s = poll;
    }
    Ok(())
}

/// Provisions the device if it has no token yet; counts a refusal.
pub async fn ensure_provisioned(shared: &Shared, device: &mut Device) -> bool {
    if device.token.is_some() {
        return true;
    }
    match provision(shared, device).await {
        Ok(()) => true,
        Err(e) => {
            failed(shared, device, &e);
            false
        }
    }
}

/// Counts an error of a device.
pub fn failed(shared: &Shared, device: &mut Device, error: &WireError) {
    device.errors += 1;
    shared.stats.error(error.kind());
}

#[derive(Deserialize)]
struct CheckinAnswer {
    update: Option<Offer>,
    poll_interval_s: Option<u32>,
}

/// `POST /api/v1/device/checkin` with the version the device runs; the offer, if any.
pub async fn checkin(shared: &Shared, device: &mut Device) -> Result<Option<Offer>, WireError> {
    let plan = &shared.plan;
    let body = json!({
        "version": &*device.version,
        "product": plan.product,
        "hardware": plan.hardware,
        "attributes": {"rssi": -40 - i64::from(device.index % 50), "free_heap": 180_000 + device.index % 4096},
    });
    let request = shared.http.post(format!("{}/api/v1/device/checkin", plan.base)).json_body(&body);
    let token = device.token.as_deref().unwrap_or_default();
    let response = send(shared, request.bearer_auth(token)).await?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        // The token was revoked: provision again at the next wake, as the sketch does.
        device.token = None;
    }
    let (_, answer) = json_answer(response).await?;
    let answer: CheckinAnswer = serde_json::from_value(answer).map_err(|e| WireError::Refused {
        status: 200,
        code: "unexpected_answer".into(),
        message: e.to_string(),
    })?;
    if let Some(poll) = answer.poll_interval_s {
        device.poll_s = poll;
    }
    Ok(answer.update)
}

/// The body of a native update report (`POST /api/v1/device/update-status`, MQTT `ota/status`).
pub fn status_body(device: &Device, state: UpdateState, message: Option<&str>) -> Value {
    let mut body = json!({"state": state.as_str(), "version": device.target.as_deref()});
    if let Some(release_id) = &device.release_id {
        body["release_id"] = json!(&**release_id);
    }
    if let Some(message) = message {
        body["message"] = json!(message);
    }
    if state == UpdateState::Downloading {
        body["progress"] = json!(0);
    }
    body
}

/// `POST /api/v1/device/update-status`.
pub async fn update_status(shared: &Shared, device: &Device, state: UpdateState, message: Option<&str>) -> Result<(), WireError> {
    let request = shared
        .http
        .post(format!("{}/api/v1/device/update-status", shared.plan.base))
        .json_body(&status_body(device, state, message))
        .bearer_auth(device.token.as_deref().unwrap_or_default());
    json_answer(send(shared, request).await?).await.map(drop)
}

/// A JSON body without reqwest's `json` feature.
pub trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
    }
}
