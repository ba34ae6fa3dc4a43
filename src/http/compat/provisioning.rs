//! Seed 004's temporary provisioning call: `GET /debug/provisioning` with the MAC in a JSON
//! body `{"mac-address": "..."}` (whatever the `Content-Type`) or in the query string
//! (`?mac-address=` or `?mac=`), answered with `{"access-token": "<device token>"}`.
//!
//! It is the native provisioning (`services::devices::provision`) of the default product
//! (`UPDRAFT_COMPAT_DEFAULT_PRODUCT`, or `?product=`): the device is created if the
//! product's mode allows it, and a new token replaces the previous one. Errors use the
//! native error body (seed 004 defined none).

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{AppState, default_product};
use crate::domain::Error;
use crate::http::device_api::ClientIp;
use crate::http::error::ApiResult;
use crate::services::devices::{self as device_service, ProvisionRequest};

pub fn router() -> Router<AppState> {
    Router::new().route("/debug/provisioning", get(provision).post(provision))
}

async fn provision(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let param = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            Error::invalid("invalid_json", format!("the body must be JSON like {{\"mac-address\": \"AA:BB:CC:DD:EE:FF\"}}: {e}"))
        })?;
        value.get("mac-address").or_else(|| value.get("mac")).and_then(Value::as_str).map(str::to_string)
    };
    let mac = from_body.or_else(|| param("mac-address")).or_else(|| param("mac")).ok_or_else(|| {
        Error::invalid("missing_mac", "send the MAC as {\"mac-address\": \"AA:BB:CC:DD:EE:FF\"} or ?mac-address=AA:BB:CC:DD:EE:FF")
    })?;
    // A known device keeps its product; a new one gets the asked-for or default product.
    let known_product = match crate::domain::mac::Mac::parse(&mac) {
        Ok(parsed) => device_service::find_by_mac(&state.core, &parsed).await?.and_then(|d| d.product),
        Err(_) => None,
    };
    let product = match (param("product"), known_product) {
        (Some(product), _) => Some(product),
        (None, Some(_)) => None,
        (None, None) => default_product(&state).await?,
    };
    let request = ProvisionRequest {
        device: crate::domain::device::DeviceKey::Mac(crate::domain::mac::Mac::parse(&mac)?),
        product,
        hardware: param("hardware"),
        version: param("version"),
        provision_key: None,
        provision_secret: None,
        name: None,
        current_token: None,
        pair_key: None,
    };
    let provisioned = device_service::provision(&state.core, request, ip).await?;
    Ok(Json(json!({"access-token": provisioned.token})))
}
