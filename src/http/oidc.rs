//! Single sign-on over HTTP: OpenID bearer tokens of operators (one branch of
//! `auth::authenticate`), and the dashboard's login through the provider
//! (`GET /api/v1/session/oidc/login`, `GET /api/v1/session/oidc/callback`).

use axum::http::request::Parts;

use super::AppState;
use super::auth::client_ip;
use crate::domain::Error;
use crate::domain::auth::Principal;
use crate::services::oidc::{self, claims::looks_like_jwt};

/// The operator of an OpenID bearer token, when OIDC is configured and the request's
/// `Authorization: Bearer` holds a JWT; None otherwise (other credentials are tried).
pub async fn operator(parts: &Parts, state: &AppState) -> Result<Option<Principal>, Error> {
    let Some(oidc) = &state.core.oidc else { return Ok(None) };
    let Some(token) = bearer(parts).filter(|t| looks_like_jwt(t)) else { return Ok(None) };
    oidc::authenticate_operator(&state.core, oidc, token, client_ip(parts)).await.map(Some)
}

/// The credential of `Authorization: Bearer`, only.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(credential.trim())
}
