//! Operator authentication: an API key in `Authorization: Bearer <key>` or
//! `X-Admin-API-Key: <key>` (checked against its stored digest in constant time, see
//! `services::accounts::keys`), or the session cookie (`http::accounts`). Wrong keys count against the caller's
//! address in the same limiter as wrong device tokens: after ten in a minute, that address
//! gets 429 with `Retry-After`, whatever it sends.

use std::net::IpAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use super::forwarded::ClientView;
use crate::domain::auth::{Need, Principal};
use crate::domain::{Error, secret};
use crate::net::ClientAddr;
use crate::services::accounts;

/// What a route needs, as a type: the parameter of `Authorized`.
pub trait RouteNeed: Send + Sync + 'static {
    const NEED: Need;
}

macro_rules! route_needs {
    ($($(#[$doc:meta])* $marker:ident => $need:ident, $alias:ident;)*) => {$(
        $(#[$doc])*
        pub struct $marker;
        impl RouteNeed for $marker {
            const NEED: Need = Need::$need;
        }
        $(#[$doc])*
        pub type $alias = Authorized<$marker>;
    )*};
}

route_needs! {
    /// Any operator role (reading).
    NeedRead => Read, Viewer;
    /// Devices, firmware, releases, rollouts, configuration, commands.
    NeedOperate => Operate, Operator;
    /// Products, provisioning, pairing.
    NeedProvision => Provision, Provisioner;
    /// Registering a device.
    NeedRegister => Register, Registrar;
    /// Accounts, keys, MQTT credentials, audit.
    NeedAdmin => Admin, Admin;
}

/// Proof that the request carries a credential whose role allows `N::NEED`, and who it is.
/// No credential or a wrong one: 401; a role too weak: 403.
pub struct Authorized<N: RouteNeed>(pub Principal, std::marker::PhantomData<N>);

impl<N: RouteNeed> Authorized<N> {
    pub fn principal(&self) -> &Principal {
        &self.0
    }
}

impl<N: RouteNeed> FromRequestParts<AppState> for Authorized<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let principal = authenticate(parts, state).await?;
        ActorSlot::fill(parts, &principal);
        principal.require(N::NEED)?;
        Ok(Authorized(principal, std::marker::PhantomData))
    }
}

/// Who the request's operator credential names, or 401: an API key (a named key or the
/// original admin key) in `Authorization: Bearer` or `X-Admin-API-Key`, else the session
/// cookie (with the CSRF checks on state-changing methods). A wrong credential counts as a
/// failed authentication of the caller's address.
pub async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, Error> {
    let ip = client_ip(parts);
    let limiter = &state.core.devices.limiter;
    limiter.check(ip)?;
    let Some(presented) = bearer_or_header(parts, "x-admin-api-key") else {
        return match super::accounts::session_cookie(&parts.headers) {
            Some(token) => super::accounts::authenticate_session(parts, state, token, ip).await,
            None => Err(Error::Unauthenticated(
                "a credential is required: send `Authorization: Bearer <key>` or `X-Admin-API-Key: <key>`, or log in \
                 (POST /api/v1/session) for a session cookie"
                    .into(),
            )),
        };
    };
    // OpenID Connect (h14-oidc): a bearer that looks like a JWT is verified here, in one call.
    if let Some(principal) = super::oidc::operator(parts, state).await? {
        return Ok(principal);
    }
    match accounts::keys::verify(&state.core, presented).await? {
        Some(principal) => Ok(principal),
        None => {
            limiter.record_failure(ip);
            tracing::info!(%ip, "wrong API key");
            Err(Error::Unauthenticated("the API key is not valid (unknown, revoked or expired)".into()))
        }
    }
}

/// Where an authentication extractor leaves the principal it found, for the layers around
/// the handler (the audit log): a middleware puts an empty slot into the request's
/// extensions before the handler runs, and reads it once the response is made.
#[derive(Clone, Default)]
pub struct ActorSlot(std::sync::Arc<std::sync::OnceLock<Principal>>);

impl ActorSlot {
    /// Records `principal` in the request's slot, if a layer put one there.
    pub fn fill(parts: &Parts, principal: &Principal) {
        if let Some(slot) = parts.extensions.get::<ActorSlot>() {
            let _ = slot.0.set(principal.clone());
        }
    }

    /// Records `principal` in the slot of the request whose extensions these are (for handlers
    /// that authenticate by themselves, such as a login).
    pub fn record(extensions: &axum::http::Extensions, principal: &Principal) {
        if let Some(slot) = extensions.get::<ActorSlot>() {
            let _ = slot.0.set(principal.clone());
        }
    }

    /// The principal an extractor recorded, if any.
    pub fn get(&self) -> Option<&Principal> {
        self.0.get()
    }
}

/// The caller's address as resolved by `forwarded::resolve` (the peer without it).
pub fn client_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ClientView>()
        .map(|view| view.ip)
        .or_else(|| parts.extensions.get::<ConnectInfo<ClientAddr>>().map(|ConnectInfo(addr)| addr.0.ip()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Accepts `presented` only if it is the admin key. A wrong key counts as a failed
/// authentication of `ip`; an address with too many gets 429 before its key is looked at.
pub fn require_admin(state: &AppState, presented: Option<&str>, ip: IpAddr) -> Result<(), Error> {
    let limiter = &state.core.devices.limiter;
    limiter.check(ip)?;
    let Some(presented) = presented else {
        return Err(Error::Unauthenticated(
            "an admin API key is required: send `Authorization: Bearer <key>` or `X-Admin-API-Key: <key>`".into(),
        ));
    };
    if is_admin_key(state, presented) {
        return Ok(());
    }
    limiter.record_failure(ip);
    tracing::info!(%ip, "wrong admin API key");
    Err(Error::Unauthenticated("the admin API key is not valid".into()))
}

/// Whether `presented` is the admin key, without counting a miss (for routes that accept the
/// admin key or another credential, and count a failure once both missed).
pub fn is_admin_key(state: &AppState, presented: &str) -> bool {
    secret::verify(presented, &state.admin_key_digest) && !state.core.accounts.admin_key_revoked()
}

/// The credential of `Authorization: Bearer <x>`, or else the value of `header`.
pub fn bearer_or_header<'a>(parts: &'a Parts, header: &str) -> Option<&'a str> {
    credential(&parts.headers, header)
}

/// Like `bearer_or_header`, from a header map.
pub fn credential<'a>(headers: &'a HeaderMap, header: &str) -> Option<&'a str> {
    let bearer = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, credential) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(credential.trim())
    });
    bearer.or_else(|| headers.get(header).and_then(|v| v.to_str().ok()).map(str::trim)).filter(|v| !v.is_empty())
}
