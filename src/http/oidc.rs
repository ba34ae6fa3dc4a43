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

// ---- the dashboard's login ----

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::device_api::ClientIp;
use super::error::{ApiResult, ErrorBody};
use crate::services::accounts::sessions;
use crate::services::oidc::login;

/// The cookie that carries a started login (signed, HttpOnly, ten minutes, only sent to the
/// login's own paths).
const LOGIN_COOKIE: &str = "updraft_oidc_login";
const LOGIN_PATH: &str = "/api/v1/session/oidc";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(oidc_login)).routes(routes!(oidc_callback))
}

fn configured(state: &AppState) -> Result<&std::sync::Arc<oidc::Oidc>, Error> {
    state.core.oidc.as_ref().ok_or_else(|| Error::not_found("OpenID login", "single sign-on is not configured (UPDRAFT_OIDC_ISSUER)"))
}

fn redirect_uri(state: &AppState, headers: &HeaderMap) -> String {
    format!("{}{LOGIN_PATH}/callback", state.base_url(Some(headers)))
}

fn login_cookie(state: &AppState, headers: &HeaderMap, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.base_url(Some(headers)).starts_with("https://") { "; Secure" } else { "" };
    // Lax: the provider sends the browser back with a top-level GET from its own site.
    HeaderValue::from_str(&format!("{LOGIN_COOKIE}={value}; Path={LOGIN_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"))
        .expect("a valid cookie")
}

/// The value of the login cookie, if the request has one.
fn login_cookie_value(headers: &HeaderMap) -> Option<&str> {
    super::accounts::cookie(headers, LOGIN_COOKIE)
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_str(location).expect("a valid location"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoginQuery {
    /// Where to go once signed in: a path on this server (default `/`).
    pub return_to: Option<String>,
}

/// Sign in through the OpenID provider: redirects the browser to the provider's login
/// (authorization code flow with PKCE); the provider sends it back to
/// `/api/v1/session/oidc/callback`.
#[utoipa::path(
    get, path = "/api/v1/session/oidc/login", tag = "accounts",
    params(LoginQuery),
    responses(
        (status = 303, description = "To the provider's login; `Set-Cookie` carries the login's state"),
        (status = 400, description = "`return_to` is not a path on this server", body = ErrorBody),
        (status = 404, description = "Single sign-on is not configured", body = ErrorBody),
        (status = 503, description = "The provider cannot be reached", body = ErrorBody),
    ),
    security(())
)]
async fn oidc_login(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<LoginQuery>) -> ApiResult<Response> {
    let oidc = configured(&state)?;
    let now = chrono::Utc::now().timestamp();
    let (started, url) = login::start(oidc, &redirect_uri(&state, &headers), query.return_to.as_deref(), now).await?;
    let mut response = redirect(&url);
    response.headers_mut().append(header::SET_COOKIE, login_cookie(&state, &headers, &login::seal(oidc, &started), login::LOGIN_TTL_SECS));
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set by the provider when the login failed.
    pub error: Option<String>,
}

/// Where the provider sends the browser back: checks the login's state, exchanges the code
/// (with the PKCE verifier), verifies the ID token and its nonce, maps the role, opens a
/// browser session (the same cookies as `POST /api/v1/session`) and redirects to the login's
/// `return_to`.
#[utoipa::path(
    get, path = "/api/v1/session/oidc/callback", tag = "accounts",
    params(CallbackQuery),
    responses(
        (status = 303, description = "Signed in: to `return_to`, `Set-Cookie` carries the session"),
        (status = 400, description = "No login was started here, it expired, or its state does not match", body = ErrorBody),
        (status = 401, description = "The provider refused, or its tokens do not verify", body = ErrorBody),
        (status = 403, description = "The token gives no Updraft role", body = ErrorBody),
        (status = 404, description = "Single sign-on is not configured", body = ErrorBody),
    ),
    security(())
)]
async fn oidc_callback(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> ApiResult<Response> {
    let oidc = configured(&state)?;
    let limiter = &state.core.devices.limiter;
    limiter.check(ip)?;
    let cookie = login_cookie_value(&headers)
        .ok_or_else(|| Error::invalid("invalid_login_state", "no login was started in this browser (or it expired): start it again"))?;
    let started = login::open(oidc, cookie, chrono::Utc::now().timestamp())?;
    if let Some(error) = &query.error {
        let error: String = error.chars().filter(|c| c.is_ascii_graphic()).take(80).collect();
        return Err(Error::Unauthenticated(format!("the OpenID provider did not sign you in ({error})")).into());
    }
    let (Some(code), Some(provider_state)) = (&query.code, &query.state) else {
        return Err(Error::invalid("invalid_callback", "the provider's answer has no `code` or `state`").into());
    };
    let principal = match login::finish(oidc, &started, provider_state, code, &redirect_uri(&state, &headers)).await {
        Ok(principal) => principal,
        Err(e) => {
            if matches!(e, Error::Unauthenticated(_) | Error::Invalid { .. }) {
                limiter.record_failure(ip);
            }
            tracing::info!(%ip, reason = %e, "OpenID login refused");
            return Err(e.into());
        }
    };
    // For the audit log: who signed in.
    super::auth::ActorSlot::record(&extensions, &principal);
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let new = sessions::open(&state.core, &principal, Some(ip), user_agent).await?;
    let mut response = redirect(&started.return_to);
    for cookie in super::accounts::session_cookies(&state, &headers, &new) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response.headers_mut().append(header::SET_COOKIE, login_cookie(&state, &headers, "", 0));
    Ok(response)
}
