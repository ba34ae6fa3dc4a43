//! Roles at the edge: what the extractors of `auth` do, for the surfaces that answer in
//! another protocol's form (seed 001's `/admin/api`, seed 003's admin routes) and for the
//! routes that operators and devices may both read; and the OpenAPI side of it (every
//! operation that names the `bearer` scheme names the session cookie with the same roles).
//!
//! Which role each route needs is declared by its extractor (`Viewer`, `Operator`,
//! `Provisioner`, `Registrar`, `Admin`, or a compat extractor's `Need`) and by the scopes of
//! its OpenAPI `security`; the route auth test (tests/api/route_auth.rs) checks that the two
//! agree for every operation of the document.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::AppState;
use super::auth::{ActorSlot, authenticate, client_ip, credential};
use crate::domain::Error;
use crate::domain::auth::{Need, Principal};
use crate::services::fleet::ActiveDevice;

/// Authenticates the request's operator credential, records its principal for the layers
/// around the handler (the audit log), then checks `need`: 401 without a valid credential,
/// 403 when the role does not allow `need`. What `auth::Authorized` does, for extractors
/// with their own error forms.
pub async fn authorize(parts: &Parts, state: &AppState, need: Need) -> Result<Principal, Error> {
    let principal = authenticate(parts, state).await?;
    ActorSlot::fill(parts, &principal);
    principal.require(need)?;
    Ok(principal)
}

/// Whether the request presents a device token rather than an operator credential: an
/// `X-Device-Token` header, or a bearer credential with the device tokens' prefix. Only
/// chooses which verifier looks at the credential; both compare in constant time and count a
/// miss against the caller's address.
pub fn presents_device_token(headers: &HeaderMap) -> bool {
    headers.contains_key("x-device-token") || credential(headers, "x-device-token").is_some_and(|c| c.starts_with("upd_dev_"))
}

/// Who reads a resource that both operators and devices may read.
pub enum Reader {
    Operator(Principal),
    Device(Arc<ActiveDevice>),
}

/// A device's token (the device itself), or an operator credential whose role allows `need`.
pub async fn operator_or_device(parts: &Parts, state: &AppState, need: Need) -> Result<Reader, Error> {
    if presents_device_token(&parts.headers) {
        let token = credential(&parts.headers, "x-device-token");
        let device = crate::services::devices::authenticate(&state.core, token, client_ip(parts)).await?;
        return Ok(Reader::Device(device));
    }
    authorize(parts, state, need).await.map(Reader::Operator)
}

/// Adds the session cookie (`accounts::SESSION_COOKIE`) to every operation secured by the
/// `bearer` scheme that does not name it, with the same roles (the cookie is accepted wherever
/// a key is), and the 403 answer such an operation
/// gives a role its scopes do not list (in the form of its 401). Run on the merged document.
pub fn describe_roles(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::security::SecurityRequirement;
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let Some(security) = operation.security.as_mut() else { continue };
            let Ok(value) = serde_json::to_value(&*security) else { continue };
            let scopes = value.as_array().into_iter().flatten().find_map(|requirement| requirement.get("bearer")).cloned();
            let scopes: Vec<String> = scopes.and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
            if scopes.is_empty() {
                // No operator credential here (a device token, the metrics token).
                continue;
            }
            if !value.as_array().into_iter().flatten().any(|requirement| requirement.get("session").is_some()) {
                security.push(SecurityRequirement::new("session", scopes.clone()));
            }
            let responses = &mut operation.responses.responses;
            if !responses.contains_key("403")
                && let Some(RefOr::T(unauthorized)) = responses.get("401")
            {
                let mut forbidden = unauthorized.clone();
                forbidden.description = format!("The credential's role is not one of {}", scopes.join(", "));
                responses.insert("403".into(), RefOr::T(forbidden));
            }
        }
    }
}
