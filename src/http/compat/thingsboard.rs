//! ThingsBoard's HTTP device API, as `tb_device_http` (tb-mqtt-client) speaks it: the device
//! token is a path segment. `POST /api/v1/{token}/telemetry`, `GET`/`POST
//! /api/v1/{token}/attributes` and `GET /api/v1/{token}/firmware`. ThingsBoard answers with
//! status codes and empty bodies: 401 for an unknown token, 404 when nothing is offered, 400
//! for a title or version that is not the offer's. The token never reaches a log line, a
//! metric label (the route is the template) or an error body (`http::redact_path` cuts it
//! from the request span and the fallback's body).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::super::AppState;
use super::failure;
use crate::domain::Error;
use crate::net::ClientAddr;
use crate::services::devices;
use crate::services::fleet::ActiveDevice;
use crate::services::thingsboard as service;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/{token}/telemetry", post(telemetry))
        .route("/api/v1/{token}/attributes", get(get_attributes).post(post_attributes))
        .route("/api/v1/{token}/firmware", get(firmware))
}

/// ThingsBoard's error form: the status alone, no body (nothing echoes the token).
pub struct TbError(pub(crate) StatusCode);

impl From<Error> for TbError {
    fn from(error: Error) -> TbError {
        let (status, _) = failure(&error);
        TbError(status)
    }
}

impl IntoResponse for TbError {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

type TbResult<T> = Result<T, TbError>;

/// The device a path token names, or 401. Only `upd_dev_` tokens are device tokens: other
/// first segments are Updraft's own `/api/v1/...` routes, which never reach here.
async fn device(state: &AppState, token: &str, extensions: &axum::http::Extensions) -> TbResult<Arc<ActiveDevice>> {
    if !token.starts_with("upd_dev_") || token.len() > 256 {
        return Err(TbError(StatusCode::NOT_FOUND));
    }
    let ip = extensions.get::<ConnectInfo<ClientAddr>>().map(|ConnectInfo(a)| a.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    devices::authenticate(&state.core, Some(token), ip).await.map_err(|e| match e {
        Error::Unauthenticated(_) => TbError(StatusCode::UNAUTHORIZED),
        other => other.into(),
    })
}

pub(crate) fn json_body(body: &Bytes) -> TbResult<Value> {
    if body.len() > 64 * 1024 {
        return Err(TbError(StatusCode::PAYLOAD_TOO_LARGE));
    }
    serde_json::from_slice(body).map_err(|_| TbError(StatusCode::BAD_REQUEST))
}

async fn telemetry(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> TbResult<StatusCode> {
    let device = device(&state, &token, &extensions).await?;
    service::telemetry(&state.core, &device, json_body(&body)?).await?;
    Ok(StatusCode::OK)
}

async fn post_attributes(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> TbResult<StatusCode> {
    let device = device(&state, &token, &extensions).await?;
    let value = json_body(&body)?;
    if !value.is_object() {
        return Err(TbError(StatusCode::BAD_REQUEST));
    }
    devices::checkin(&state.core, device, devices::CheckinReport { attributes: Some(value), ..Default::default() }, None).await?;
    Ok(StatusCode::OK)
}

/// `clientKeys` and `sharedKeys`, each a comma-separated list or repeated (as ThingsBoard,
/// a Spring server, takes them: `tb_device_http` sends `sharedKeys=a&sharedKeys=b`).
pub(crate) fn attribute_keys(query: Option<&str>, name: &str) -> Option<String> {
    let values: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

async fn get_attributes(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: axum::http::Extensions,
    RawQuery(query): RawQuery,
) -> TbResult<Response> {
    let device = device(&state, &token, &extensions).await?;
    let (client_keys, shared_keys) = (attribute_keys(query.as_deref(), "clientKeys"), attribute_keys(query.as_deref(), "sharedKeys"));
    let answer = service::attributes(&state.core, device, client_keys.as_deref(), shared_keys.as_deref()).await?;
    Ok(axum::Json(answer.body).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct FirmwareQuery {
    pub(crate) title: Option<String>,
    pub(crate) version: Option<String>,
    /// Chunk size in bytes; absent or 0: the whole image.
    pub(crate) size: Option<u64>,
    pub(crate) chunk: Option<u64>,
}

impl FirmwareQuery {
    /// The bytes `start..end` of a build of `total` bytes this query asks for (empty past the end).
    pub(crate) fn range(&self, total: u64) -> (u64, u64) {
        match self.size.filter(|s| *s > 0) {
            None => (0, total),
            Some(size) => {
                let start = size.saturating_mul(self.chunk.unwrap_or(0)).min(total);
                (start, start.saturating_add(size).min(total))
            }
        }
    }
}

/// The offered build, whole or one chunk (`size` bytes at `chunk * size`): 404 when nothing
/// is offered, 400 when `title`/`version` are not the offer's, 200 with an empty body past
/// the end.
async fn firmware(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: axum::http::Extensions,
    Query(query): Query<FirmwareQuery>,
) -> TbResult<Response> {
    let device = device(&state, &token, &extensions).await?;
    let Some(artifact) = devices::pending_build(&state.core, &device.id).await? else {
        return Err(TbError(StatusCode::NOT_FOUND));
    };
    if query.title.as_deref().is_some_and(|t| t != artifact.product.as_str())
        || query.version.as_deref().is_some_and(|v| v != artifact.version)
    {
        return Err(TbError(StatusCode::BAD_REQUEST));
    }
    let (start, end) = query.range(artifact.size);
    if start >= end {
        return Ok((StatusCode::OK, Bytes::new()).into_response());
    }
    let stream = state.core.blobs.read(&artifact.blob_key, artifact.size, start..end).await?;
    let body = Body::from_stream(stream.map_err(std::io::Error::other));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The properties of `crate::fuzzing` (shared with `fuzz/`), for a bounded number of cases.
#[cfg(test)]
mod properties {
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use crate::fuzzing;

    fn values() -> impl Strategy<Value = Value> {
        btree_map("[a-c]|ts|values|fw_state", prop_oneof![any::<i64>().prop_map(Value::from), "[A-Z]{0,4}".prop_map(Value::from)], 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    fn telemetry() -> impl Strategy<Value = Value> {
        let item =
            prop_oneof![values(), (any::<i64>(), values()).prop_map(|(ts, v)| json!({"ts": ts, "values": v})), Just(json!(1))].boxed();
        prop_oneof![item.clone(), vec(item, 0..4).prop_map(Value::Array)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn telemetry_flattens_to_the_values_it_holds(value in telemetry()) {
            let mut data = vec![0];
            data.extend(serde_json::to_vec(&value).unwrap());
            fuzzing::thingsboard_http(&data);
        }

        #[test]
        fn a_firmware_chunk_lies_inside_the_build(size in any::<u64>(), chunk in any::<u64>(), keys in "(clientKeys|sharedKeys|x)=[a-z,]{0,8}") {
            let query = format!("title=blink&version=1.0.1&size={size}&chunk={chunk}&{keys}");
            let mut data = vec![1];
            data.extend(query.as_bytes());
            fuzzing::thingsboard_http(&data);
        }

        #[test]
        fn any_body_or_query_is_read_or_refused(kind in any::<u8>(), rest in "\\PC{0,40}") {
            let mut data = vec![kind];
            data.extend(rest.as_bytes());
            fuzzing::thingsboard_http(&data);
        }
    }
}
