//! hawkBit DDI (Direct Device Integration API v1): the polling API of SWUpdate's suricatta,
//! rauc-hawkbit-updater and Zephyr's hawkBit client, at `/{tenant}/controller/v1/...`
//! (`UPDRAFT_COMPAT_DDI`, tenant `UPDRAFT_DDI_TENANT`). Documented in docs/CLIENT.md.
//!
//! Every request authenticates: `Authorization: TargetToken <device token>` (the device's
//! own `upd_dev_…` token; the controller id must name that device by id or MAC) or
//! `GatewayToken <product's gateway token>` (any device of the product; an unknown controller
//! id is registered per the product's provisioning mode). Anything else is a 401.
//!
//! The poll is a check-in: `services::devices::ddi` calls the same decision as every protocol
//! and maps it to one DDI action (numeric ids, `update_attempt.action_id`): `deploymentBase`
//! for the current offer, `cancelAction` for an open attempt the decision no longer offers.
//! Errors answer in hawkBit's form: `{"errorCode", "message"}` with its status.

use std::net::IpAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{AppState, failure};
use crate::domain::Error;
use crate::domain::device::UpdateState;
use crate::domain::firmware::Artifact;
use crate::http::device_api::ClientIp;
use crate::http::download::{download_file_name, serve_artifact};
use crate::services::devices::ddi::{self as service, AttributesMode, DdiAction, DdiCredential, DdiDeployment, FeedbackOutcome};
use crate::services::fleet::ActiveDevice;

/// The largest feedback or `configData` body read (larger: 413).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest history line a feedback's `details` make (longer ones are cut).
pub(crate) const MAX_DETAILS_CHARS: usize = 1024;

pub fn router(tenant: &str) -> Router<AppState> {
    let base = format!("/{tenant}/controller/v1/{{controller}}");
    Router::new()
        .route(&base, get(poll))
        .route(&format!("{base}/deploymentBase/{{action}}"), get(deployment_base))
        .route(&format!("{base}/deploymentBase/{{action}}/feedback"), post(deployment_feedback))
        .route(&format!("{base}/cancelAction/{{action}}"), get(cancel_action))
        .route(&format!("{base}/cancelAction/{{action}}/feedback"), post(cancel_feedback))
        .route(&format!("{base}/configData"), put(config_data))
        .route(&format!("{base}/installedBase/{{action}}"), get(installed_base))
        .route(&format!("{base}/installedBase"), put(put_installed_base))
        .route(&format!("{base}/softwaremodules/{{module}}/artifacts"), get(artifacts))
        .route(&format!("{base}/softwaremodules/{{module}}/artifacts/{{file}}"), get(artifact))
}

/// A DDI answer that is not a success: hawkBit's error body `{"errorCode", "message"}` (the
/// message generic for 5xx; see `failure`); 401 also says which schemes are accepted.
pub struct DdiError(pub(crate) Error);

impl From<Error> for DdiError {
    fn from(error: Error) -> Self {
        DdiError(error)
    }
}

impl IntoResponse for DdiError {
    fn into_response(self) -> Response {
        let (status, message) = failure(&self.0);
        let body = json!({"errorCode": format!("hawkbit.server.error.{}", self.0.code()), "message": message});
        let mut response = (status, axum::Json(body)).into_response();
        match &self.0 {
            Error::Unauthenticated(_) => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("TargetToken, GatewayToken"));
            }
            Error::TooManyRequests { retry_after_secs } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
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

type DdiResult<T> = Result<T, DdiError>;

/// The device a request acts for, from its `Authorization` header and controller id.
async fn device(state: &AppState, headers: &HeaderMap, controller: &str, ip: IpAddr) -> DdiResult<std::sync::Arc<ActiveDevice>> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default().trim();
    let (scheme, token) = value.split_once(' ').map(|(s, t)| (s, t.trim())).unwrap_or((value, ""));
    let credential = if scheme.eq_ignore_ascii_case("TargetToken") && !token.is_empty() {
        DdiCredential::Target(token)
    } else if scheme.eq_ignore_ascii_case("GatewayToken") && !token.is_empty() {
        DdiCredential::Gateway(token)
    } else {
        return Err(Error::Unauthenticated(
            "send `Authorization: TargetToken <device token>` or `Authorization: GatewayToken <product gateway token>`".into(),
        )
        .into());
    };
    Ok(service::ddi_device(&state.core, credential, controller, ip).await?)
}

/// The links of this controller: `{base}/{tenant}/controller/v1/{controller}`.
fn controller_url(state: &AppState, headers: &HeaderMap, controller: &str) -> String {
    format!("{}/{}/controller/v1/{controller}", state.base_url(Some(headers)), state.settings.compat.ddi_tenant)
}

fn href(url: String) -> Value {
    json!({ "href": url })
}

/// `HH:MM:SS` (hours may exceed 23 for intervals of a day or more).
fn sleep_text(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The `?c=` value of a deployment link: it changes when the action, its type or its
/// window does (hawkBit's hash, as a signed 32-bit number).
fn link_hash(action_id: i64, forced: bool, window: Option<bool>) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in format!("{action_id}:{forced}:{window:?}").bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as i32
}

fn parse_action(text: &str) -> DdiResult<i64> {
    text.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| Error::not_found("action", text).into())
}

// ---- poll ----

/// `GET /{tenant}/controller/v1/{controller}`: the poll.
async fn poll(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(controller): Path<String>,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let answer = service::ddi_poll(&state.core, device, ip).await?;
    let jitter = u64::from(state.settings.compat.ddi_poll_jitter_percent);
    let interval = u64::from(answer.poll_interval_s);
    let sleep = if jitter == 0 { interval } else { interval + rand::random_range(0..=interval * jitter / 100) };
    let url = controller_url(&state, &headers, &controller);
    let mut links = Map::new();
    match answer.action {
        Some(DdiAction::Deploy { action_id, forced, window }) => {
            let c = link_hash(action_id, forced, window);
            links.insert("deploymentBase".into(), href(format!("{url}/deploymentBase/{action_id}?c={c}")));
        }
        Some(DdiAction::Cancel { action_id }) => {
            links.insert("cancelAction".into(), href(format!("{url}/cancelAction/{action_id}")));
        }
        None => {}
    }
    if let Some(installed) = answer.installed {
        links.insert("installedBase".into(), href(format!("{url}/installedBase/{installed}")));
    }
    if answer.request_attributes {
        links.insert("configData".into(), href(format!("{url}/configData")));
    }
    let mut body = json!({"config": {"polling": {"sleep": sleep_text(sleep)}}});
    if !links.is_empty() {
        body["_links"] = Value::Object(links);
    }
    Ok(axum::Json(body).into_response())
}

// ---- deployment ----

/// `?actionHistory=N`: how many history lines to include (negative: all). `c` (the poll's
/// hash) and anything else are ignored.
fn action_history(query: Option<&str>) -> Option<i64> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).find(|(k, _)| k == "actionHistory").and_then(|(_, v)| v.parse().ok())
}

/// `GET .../deploymentBase/{actionId}`.
async fn deployment_base(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path((controller, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let action_id = parse_action(&action)?;
    let deployment = service::ddi_action(&state.core, &device, action_id).await?.ok_or_else(|| Error::not_found("action", &action))?;
    let history = action_history(query.as_deref());
    Ok(axum::Json(deployment_body(&state, &headers, &controller, &deployment, history)).into_response())
}

/// `GET .../installedBase/{actionId}`: the device's last successful action, in the
/// `deploymentBase` form.
async fn installed_base(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path((controller, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let action_id = parse_action(&action)?;
    let deployment = service::ddi_action(&state.core, &device, action_id)
        .await?
        .filter(|d| d.attempt.state == UpdateState::Succeeded)
        .ok_or_else(|| Error::not_found("installed action", &action))?;
    let history = action_history(query.as_deref());
    Ok(axum::Json(deployment_body(&state, &headers, &controller, &deployment, history)).into_response())
}

fn deployment_body(state: &AppState, headers: &HeaderMap, controller: &str, deployment: &DdiDeployment, history: Option<i64>) -> Value {
    let artifact = &deployment.artifact;
    let kind = if deployment.forced { "forced" } else { "attempt" };
    let mut body = json!({
        "id": deployment.attempt.action_id.unwrap_or_default().to_string(),
        "deployment": {
            "download": kind,
            "update": if deployment.window == Some(false) { "skip" } else { kind },
            "chunks": [{
                "part": "os",
                "version": artifact.version,
                "name": artifact.product.as_str(),
                "artifacts": [artifact_json(state, headers, controller, artifact)],
            }],
        },
    });
    if let Some(open) = deployment.window {
        body["deployment"]["maintenanceWindow"] = json!(if open { "available" } else { "unavailable" });
    }
    if let Some(n) = history.filter(|n| *n != 0) {
        let attempt = &deployment.attempt;
        let mut messages: Vec<String> = attempt
            .events
            .iter()
            .rev()
            .map(|e| match &e.message {
                Some(m) => format!("{}: {m}", e.state.as_str()),
                None => e.state.as_str().to_string(),
            })
            .collect();
        if n > 0 {
            messages.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        let status = match attempt.state {
            UpdateState::Succeeded => "FINISHED",
            UpdateState::Failed | UpdateState::Rejected => "ERROR",
            UpdateState::Cancelled => "CANCELED",
            _ => "RUNNING",
        };
        body["actionHistory"] = json!({"status": status, "messages": messages});
    }
    body
}

/// The file name a DDI client sees for a build: `<product>-<version>.bin` for an ESP image,
/// else `<product>-<version>.swu` (SWUpdate refuses an artifact whose name does not end in
/// `.swu`; rauc-hawkbit-updater and Zephyr do not look at the name).
fn file_name(artifact: &Artifact) -> String {
    let name = download_file_name(artifact);
    match (&artifact.image, name.strip_suffix(".bin")) {
        (None, Some(stem)) => format!("{stem}.swu"),
        _ => name,
    }
}

fn artifact_json(state: &AppState, headers: &HeaderMap, controller: &str, artifact: &Artifact) -> Value {
    let name = file_name(artifact);
    let file = format!("{}/softwaremodules/{}/artifacts/{name}", controller_url(state, headers, controller), artifact.id);
    json!({
        "filename": name,
        "hashes": {"sha1": artifact.sha1, "md5": artifact.md5, "sha256": artifact.sha256},
        "size": artifact.size,
        "_links": {
            "download": href(file.clone()),
            "download-http": href(file.clone()),
            "md5sum": href(format!("{file}.MD5SUM")),
            "md5sum-http": href(format!("{file}.MD5SUM")),
        },
    })
}

// ---- feedback ----

#[derive(Deserialize)]
pub(crate) struct Feedback {
    pub(crate) status: FeedbackStatus,
}

#[derive(Deserialize)]
pub(crate) struct FeedbackStatus {
    pub(crate) execution: String,
    pub(crate) result: Option<FeedbackResult>,
    #[serde(default)]
    pub(crate) details: Vec<String>,
}

#[derive(Deserialize)]
pub(crate) struct FeedbackResult {
    finished: Option<String>,
    progress: Option<Progress>,
}

#[derive(Deserialize)]
struct Progress {
    cnt: Option<u64>,
    of: Option<u64>,
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`].
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> DdiResult<T> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| Error::PayloadTooLarge { limit: MAX_BODY_BYTES as u64 })?;
    decode_body(&bytes)
}

/// A DDI document read from its body's bytes.
pub(crate) fn decode_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> DdiResult<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::invalid("invalid_json", format!("the body is not a valid DDI document: {e}")).into())
}

/// The details of a feedback as one history line (cut to [`MAX_DETAILS_CHARS`]).
pub(crate) fn details_line(status: &FeedbackStatus) -> Option<String> {
    let joined = status.details.iter().map(|d| d.trim()).filter(|d| !d.is_empty()).collect::<Vec<_>>().join("; ");
    let cleaned: String = joined.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if cleaned.is_empty() {
        return None;
    }
    Some(match cleaned.char_indices().nth(MAX_DETAILS_CHARS) {
        Some((cut, _)) => format!("{}…", &cleaned[..cut]),
        None => cleaned,
    })
}

pub(crate) fn progress_of(result: Option<&FeedbackResult>) -> Option<u8> {
    let progress = result?.progress.as_ref()?;
    match (progress.cnt, progress.of) {
        (Some(cnt), Some(of)) if of > 0 => Some((u128::from(cnt.min(of)) * 100 / u128::from(of)) as u8),
        _ => None,
    }
}

/// What a deployment feedback moves the attempt to (`None`: only the details are recorded).
pub(crate) fn deployment_state(status: &FeedbackStatus) -> DdiResult<Option<UpdateState>> {
    let finished = status.result.as_ref().and_then(|r| r.finished.as_deref()).unwrap_or("none");
    Ok(match status.execution.as_str() {
        "download" => Some(UpdateState::Downloading),
        "downloaded" => Some(UpdateState::Downloaded),
        "proceeding" | "scheduled" | "resumed" => Some(UpdateState::Installing),
        "closed" => match finished {
            "success" | "none" => Some(UpdateState::Succeeded),
            "failure" => Some(UpdateState::Failed),
            other => {
                return Err(
                    Error::invalid("invalid_feedback", format!("`finished` must be success, failure or none, not `{other}`")).into()
                );
            }
        },
        "rejected" => Some(UpdateState::Rejected),
        "canceled" => Some(UpdateState::Cancelled),
        other => {
            return Err(Error::invalid(
                "invalid_feedback",
                format!(
                    "`execution` must be closed, proceeding, canceled, scheduled, rejected, resumed, downloaded or download, not `{other}`"
                ),
            )
            .into());
        }
    })
}

/// `POST .../deploymentBase/{actionId}/feedback`.
async fn deployment_feedback(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path((controller, action)): Path<(String, String)>,
    body: Body,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let action_id = parse_action(&action)?;
    let feedback: Feedback = json_body(body).await?;
    let new_state = deployment_state(&feedback.status)?;
    let progress = progress_of(feedback.status.result.as_ref());
    let details = details_line(&feedback.status);
    let outcome = service::ddi_feedback(&state.core, device, action_id, new_state, progress, details, ip).await?;
    feedback_answer(outcome, &action)
}

/// `POST .../cancelAction/{actionId}/feedback`: `closed` (or `canceled`) ends the attempt as
/// cancelled; `rejected` keeps it (the device could not stop); other executions only add
/// their details to the history.
async fn cancel_feedback(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path((controller, action)): Path<(String, String)>,
    body: Body,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let action_id = parse_action(&action)?;
    let feedback: Feedback = json_body(body).await?;
    let new_state = match feedback.status.execution.as_str() {
        "closed" | "canceled" => {
            let finished = feedback.status.result.as_ref().and_then(|r| r.finished.as_deref()).unwrap_or("none");
            // A cancellation the device reports as failed did not stop it: the attempt goes on.
            if finished == "failure" { None } else { Some(UpdateState::Cancelled) }
        }
        "proceeding" | "scheduled" | "resumed" | "rejected" | "download" | "downloaded" => None,
        other => return Err(Error::invalid("invalid_feedback", format!("unknown `execution` `{other}`")).into()),
    };
    let details = details_line(&feedback.status).or_else(|| new_state.map(|_| "cancelled on the server's request".to_string()));
    let outcome = service::ddi_feedback(&state.core, device, action_id, new_state, None, details, ip).await?;
    feedback_answer(outcome, &action)
}

fn feedback_answer(outcome: FeedbackOutcome, action: &str) -> DdiResult<Response> {
    match outcome {
        FeedbackOutcome::Recorded => Ok(StatusCode::OK.into_response()),
        FeedbackOutcome::Inactive => {
            let body = json!({
                "errorCode": "hawkbit.server.error.action.closed",
                "message": format!("action {action} is no longer active"),
            });
            Ok((StatusCode::GONE, axum::Json(body)).into_response())
        }
        FeedbackOutcome::Unknown => Err(Error::not_found("action", action).into()),
    }
}

// ---- cancel ----

/// `GET .../cancelAction/{actionId}`: shown while the attempt is open (the poll links it
/// when the decision no longer offers its build).
async fn cancel_action(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path((controller, action)): Path<(String, String)>,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let action_id = parse_action(&action)?;
    let deployment = service::ddi_action(&state.core, &device, action_id).await?.ok_or_else(|| Error::not_found("action", &action))?;
    let id = deployment.attempt.action_id.unwrap_or(action_id).to_string();
    Ok(axum::Json(json!({"id": id, "cancelAction": {"stopId": id}})).into_response())
}

// ---- attributes and installed base ----

#[derive(Deserialize)]
pub(crate) struct ConfigData {
    #[serde(default)]
    mode: Option<String>,
    data: Map<String, Value>,
}

/// `PUT .../configData` (`Expect: 100-continue` is answered by the server before the body
/// is read).
async fn config_data(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(controller): Path<String>,
    body: Body,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let config: ConfigData = json_body(body).await?;
    let mode = match config.mode.as_deref().unwrap_or("merge") {
        "merge" => AttributesMode::Merge,
        "replace" => AttributesMode::Replace,
        "remove" => AttributesMode::Remove,
        other => return Err(Error::invalid("invalid_mode", format!("`mode` must be merge, replace or remove, not `{other}`")).into()),
    };
    service::ddi_attributes(&state.core, device, mode, config.data, ip).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
pub(crate) struct InstalledBase {
    #[serde(rename = "name")]
    _name: Option<String>,
    version: String,
}

/// `PUT .../installedBase` `{"name", "version"}`: the version the device runs (an offline
/// install), recorded like a check-in.
async fn put_installed_base(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path(controller): Path<String>,
    body: Body,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let installed: InstalledBase = json_body(body).await?;
    service::ddi_installed(&state.core, device, &installed.version, ip).await?;
    Ok(StatusCode::OK.into_response())
}

// ---- artifacts ----

/// The build of a software module the device may fetch (its current or installed action's).
async fn module_build(state: &AppState, device: &ActiveDevice, module: &str) -> DdiResult<Artifact> {
    Ok(service::ddi_build(&state.core, device, module).await?.ok_or_else(|| Error::not_found("software module", module))?)
}

/// `GET .../softwaremodules/{id}/artifacts`: the module's one artifact.
async fn artifacts(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Path((controller, module)): Path<(String, String)>,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let artifact = module_build(&state, &device, &module).await?;
    Ok(axum::Json(json!([artifact_json(&state, &headers, &controller, &artifact)])).into_response())
}

/// `GET`/`HEAD .../softwaremodules/{id}/artifacts/{filename}[.MD5SUM]`: the file (the download
/// contract of `http::download`: ranges, `HEAD`, `x-MD5`) or its MD5 line.
async fn artifact(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    method: Method,
    headers: HeaderMap,
    Path((controller, module, file)): Path<(String, String, String)>,
) -> DdiResult<Response> {
    let device = device(&state, &headers, &controller, ip).await?;
    let artifact = module_build(&state, &device, &module).await?;
    let name = file_name(&artifact);
    if file == name {
        return serve_artifact(&state.core.blobs, &artifact, &method, &headers).await.map_err(|e| DdiError(e.0));
    }
    if file.strip_suffix(".MD5SUM") == Some(name.as_str()) {
        let line = format!("{}  {name}\n", artifact.md5);
        let mut response = Response::new(if method == Method::HEAD { Body::empty() } else { Body::from(line.clone()) });
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(line.len()));
        return Ok(response);
    }
    Err(Error::not_found("artifact", &file).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_hours_minutes_seconds() {
        assert_eq!(sleep_text(300), "00:05:00");
        assert_eq!(sleep_text(3661), "01:01:01");
        assert_eq!(sleep_text(2 * 86400), "48:00:00");
    }

    #[test]
    fn the_link_hash_changes_with_the_action_its_type_and_window() {
        let base = link_hash(7, false, None);
        assert_eq!(base, link_hash(7, false, None));
        assert_ne!(base, link_hash(8, false, None));
        assert_ne!(base, link_hash(7, true, None));
        assert_ne!(base, link_hash(7, false, Some(false)));
    }

    #[test]
    fn feedback_maps_as_hawkbit_documents() {
        let status = |execution: &str, finished: Option<&str>| FeedbackStatus {
            execution: execution.into(),
            result: Some(FeedbackResult { finished: finished.map(Into::into), progress: None }),
            details: Vec::new(),
        };
        let state = |e, f| deployment_state(&status(e, f)).ok().flatten();
        assert_eq!(state("download", None), Some(UpdateState::Downloading));
        assert_eq!(state("downloaded", None), Some(UpdateState::Downloaded));
        for e in ["proceeding", "scheduled", "resumed"] {
            assert_eq!(state(e, Some("none")), Some(UpdateState::Installing));
        }
        assert_eq!(state("closed", Some("success")), Some(UpdateState::Succeeded));
        assert_eq!(state("closed", Some("failure")), Some(UpdateState::Failed));
        assert_eq!(state("rejected", Some("none")), Some(UpdateState::Rejected));
        assert!(deployment_state(&status("exploded", None)).is_err());
        assert!(deployment_state(&status("closed", Some("maybe"))).is_err());
    }

    #[test]
    fn details_become_one_bounded_line() {
        let mut status = FeedbackStatus { execution: "proceeding".into(), result: None, details: vec!["a\nb".into(), " c ".into()] };
        assert_eq!(details_line(&status).as_deref(), Some("a b; c"));
        status.details = vec!["x".repeat(5000)];
        assert_eq!(details_line(&status).map(|d| d.chars().count()), Some(MAX_DETAILS_CHARS + 1));
        status.details = Vec::new();
        assert_eq!(details_line(&status), None);
    }

    #[test]
    fn progress_is_a_percentage() {
        let result = |cnt, of| FeedbackResult { finished: None, progress: Some(Progress { cnt: Some(cnt), of: Some(of) }) };
        assert_eq!(progress_of(Some(&result(1, 2))), Some(50));
        assert_eq!(progress_of(Some(&result(9, 3))), Some(100));
        assert_eq!(progress_of(Some(&result(1, 0))), None);
    }

    #[test]
    fn progress_of_counts_near_the_u64_limit_is_still_a_percentage() {
        // Found by the `ddi` property: `cnt * 100` overflowed (a panic, or a wrong percentage
        // in release builds) for counts above u64::MAX / 100.
        let result = |cnt, of| FeedbackResult { finished: None, progress: Some(Progress { cnt: Some(cnt), of: Some(of) }) };
        assert_eq!(progress_of(Some(&result(u64::MAX, u64::MAX))), Some(100));
        assert_eq!(progress_of(Some(&result(u64::MAX / 2, u64::MAX))), Some(49));
        assert_eq!(progress_of(Some(&result(u64::MAX / 100 + 1, u64::MAX / 100 + 1))), Some(100));
    }
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::option::of;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::fuzzing;

    fn word(words: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![proptest::sample::select(words).prop_map(str::to_string), "[a-z]{0,8}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn feedback_maps_to_a_state_a_bounded_progress_and_one_clean_line(
            execution in word(&["closed", "proceeding", "canceled", "scheduled", "rejected", "resumed", "downloaded", "download"]),
            finished in of(word(&["success", "failure", "none"])),
            progress in of((of(any::<u64>()), of(any::<u64>()))),
            details in vec("\\PC{0,12}|[\\x00-\\x1f ]{0,4}|.{1100}", 0..4),
        ) {
            let progress = progress.map(|(cnt, of)| json!({"cnt": cnt, "of": of}));
            let body = json!({"status": {"execution": execution, "result": {"finished": finished, "progress": progress}, "details": details}});
            let mut data = vec![0];
            data.extend(serde_json::to_vec(&body).unwrap());
            fuzzing::ddi(&data);
        }

        #[test]
        fn any_body_is_read_or_refused_with_a_400(kind in 0u8..3, body in "\\PC{0,60}") {
            let mut data = vec![kind];
            data.extend(body.as_bytes());
            fuzzing::ddi(&data);
        }
    }
}
