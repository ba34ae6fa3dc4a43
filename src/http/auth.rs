//! Admin authentication: `Authorization: Bearer <key>` or `X-Admin-API-Key: <key>`,
//! checked against the stored digest in constant time.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::domain::{Error, secret};

/// Proof that the request carries the admin key.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(presented) = bearer_or_header(parts, "x-admin-api-key") else {
            return Err(Error::Unauthenticated(
                "an admin API key is required: send `Authorization: Bearer <key>` or `X-Admin-API-Key: <key>`".into(),
            )
            .into());
        };
        if secret::verify(presented, &state.admin_key_digest) {
            Ok(Admin)
        } else {
            Err(Error::Unauthenticated("the admin API key is not valid".into()).into())
        }
    }
}

/// The credential of `Authorization: Bearer <x>`, or else the value of `header`.
pub fn bearer_or_header<'a>(parts: &'a Parts, header: &str) -> Option<&'a str> {
    credential(&parts.headers, header)
}

/// Like `bearer_or_header`, from a header map.
pub fn credential<'a>(headers: &'a axum::http::HeaderMap, header: &str) -> Option<&'a str> {
    let bearer = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, credential) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(credential.trim())
    });
    bearer.or_else(|| headers.get(header).and_then(|v| v.to_str().ok()).map(str::trim)).filter(|v| !v.is_empty())
}
