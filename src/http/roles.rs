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
use super::auth::{ActorSlot, authenticate, client_ip};
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

/// The device token a request presents instead of an operator credential: a bearer with the
/// device tokens' prefix, or else `X-Device-Token` when no operator credential (a bearer,
/// `X-Admin-API-Key`, the session cookie) is there. This only chooses which verifier looks at
/// the credential; both compare in constant time and count a miss against the address.
pub fn device_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .and_then(|(scheme, credential)| scheme.eq_ignore_ascii_case("bearer").then_some(credential.trim()))
        .filter(|credential| !credential.is_empty());
    if let Some(token) = bearer.filter(|b| b.starts_with(DEVICE_TOKEN_PREFIX)) {
        return Some(token);
    }
    if bearer.is_some() || has_operator_credential(headers) {
        return None;
    }
    headers.get("x-device-token").and_then(|v| v.to_str().ok()).map(str::trim).filter(|token| !token.is_empty())
}

/// How every device token begins (`services::devices` issues them).
const DEVICE_TOKEN_PREFIX: &str = "upd_dev_";

/// Who reads a resource that both operators and devices may read.
pub enum Reader {
    Operator(Principal),
    Device(Arc<ActiveDevice>),
}

/// A device's token (the device itself), or an operator credential whose role allows `need`.
/// A verified client certificate (mutual TLS) is the device's credential when the request
/// carries no operator credential.
pub async fn operator_or_device(parts: &Parts, state: &AppState, need: Need) -> Result<Reader, Error> {
    let certificate = parts.extensions.get::<crate::tls::ClientCert>();
    let token = device_token(&parts.headers);
    if token.is_some() || (certificate.is_some() && !has_operator_credential(&parts.headers)) {
        let device = super::device_api::device_of(state, certificate, token, client_ip(parts)).await?;
        return Ok(Reader::Device(device));
    }
    authorize(parts, state, need).await.map(Reader::Operator)
}

/// Whether the request carries something that may be an operator credential (a bearer,
/// `X-Admin-API-Key`, the session cookie).
fn has_operator_credential(headers: &HeaderMap) -> bool {
    headers.contains_key(axum::http::header::AUTHORIZATION)
        || headers.contains_key("x-admin-api-key")
        || super::accounts::session_cookie(headers).is_some()
}

/// Adds the session cookie (`accounts::SESSION_COOKIE`) to every operation secured by the
/// `bearer` scheme that does not name it, with the same roles (the cookie is accepted wherever
/// a key is), and the 403 answer such an operation
/// gives a role its scopes do not list (in the form of its 401). Every operation that takes a
/// credential also gets the 429 of the limiter of failed authentications
/// (`services::limiter`, in the form of its 401). Run on the merged document.
pub fn describe_roles(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::security::SecurityRequirement;
    for operation in super::schemas::operations_mut(openapi) {
        let Some(security) = operation.security.as_mut() else { continue };
        let Ok(value) = serde_json::to_value(&*security) else { continue };
        let takes_credential = value.as_array().into_iter().flatten().any(|r| r.as_object().is_some_and(|r| !r.is_empty()));
        let responses = &mut operation.responses.responses;
        if takes_credential
            && !responses.contains_key("429")
            && let Some(RefOr::T(unauthorized)) = responses.get("401")
        {
            responses.insert("429".into(), RefOr::T(too_many_failures(unauthorized)));
        }
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

/// The 429 of an address with too many failed authentications, in the form of `unauthorized`,
/// with its `Retry-After`.
fn too_many_failures(unauthorized: &utoipa::openapi::Response) -> utoipa::openapi::Response {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let mut response = unauthorized.clone();
    response.description = "Too many failed authentications from this address (ten in a minute): every request from it is refused until \
         `Retry-After` seconds have passed"
        .into();
    let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).build();
    let header = utoipa::openapi::header::HeaderBuilder::new()
        .schema(Some(seconds))
        .description(Some("Seconds until the address may authenticate again"))
        .build();
    response.headers.insert("Retry-After".into(), utoipa::openapi::RefOr::T(header));
    response
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue};

    use super::device_token;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_device_token_is_told_from_an_operator_credential() {
        assert_eq!(device_token(&headers(&[("authorization", "Bearer upd_dev_abc")])), Some("upd_dev_abc"));
        assert_eq!(device_token(&headers(&[("x-device-token", "upd_dev_abc")])), Some("upd_dev_abc"));
        assert_eq!(device_token(&headers(&[("x-device-token", "anything")])), Some("anything"), "a wrong device token is a device's");
        // An operator credential wins over a device-token header sent alongside it.
        assert_eq!(device_token(&headers(&[("authorization", "Bearer upd_0123_key"), ("x-device-token", "upd_dev_abc")])), None);
        assert_eq!(device_token(&headers(&[("x-admin-api-key", "key"), ("x-device-token", "upd_dev_abc")])), None);
        assert_eq!(device_token(&headers(&[("cookie", "updraft_session=s"), ("x-device-token", "upd_dev_abc")])), None);
        assert_eq!(device_token(&headers(&[("authorization", "Bearer upd_0123_key")])), None);
        assert_eq!(device_token(&HeaderMap::new()), None);
    }
}
