//! The dashboard's login through the provider: the authorization code flow with PKCE (S256),
//! `state` and `nonce`.
//!
//! Nothing is kept on the server between the two legs: the login's state (its `state`,
//! `nonce`, PKCE verifier, where to return, and when it expires) travels in a short-lived
//! HttpOnly cookie signed with a key every replica derives from the shared download-signing
//! key, so the callback may land on any replica, and no number of started logins fills
//! memory. The callback checks the cookie's signature and age, that the provider's `state`
//! is the cookie's, exchanges the code with the verifier, and accepts the ID token only with
//! the cookie's nonce.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{Audience, Oidc, claims};
use crate::domain::auth::Principal;
use crate::domain::{Error, Result, secret};

/// How long a started login may take (the cookie's lifetime).
pub const LOGIN_TTL_SECS: i64 = 600;
/// Longest `return_to` accepted.
const MAX_RETURN_TO: usize = 1024;

/// A started login, as its cookie carries it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginState {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub verifier: String,
    #[serde(rename = "r")]
    pub return_to: String,
    /// Unix seconds.
    #[serde(rename = "e")]
    pub expires: i64,
}

/// Where a login may return: a path on this server (`/...`), never another site (`//host`,
/// `/\host`, a scheme) and nothing a browser would read as one.
pub fn check_return_to(return_to: Option<&str>) -> Result<String> {
    let Some(path) = return_to.filter(|p| !p.is_empty()) else { return Ok("/".into()) };
    let same_site = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.len() <= MAX_RETURN_TO
        && !path.chars().any(|c| c.is_control() || c.is_whitespace());
    if !same_site {
        return Err(Error::invalid("invalid_return_to", "`return_to` must be a path on this server, starting with a single `/`"));
    }
    Ok(path.to_string())
}

/// A new login: its state and the provider URL to send the browser to.
pub async fn start(oidc: &Arc<Oidc>, redirect_uri: &str, return_to: Option<&str>, now: i64) -> Result<(LoginState, String)> {
    let return_to = check_return_to(return_to)?;
    let client_id = client_id(oidc)?;
    let metadata = oidc.metadata().await?;
    let endpoint = metadata
        .authorization_endpoint
        .as_deref()
        .ok_or_else(|| Error::Unavailable("the OpenID provider publishes no authorization endpoint".into()))?;
    let login = LoginState {
        state: secret::generate(""),
        nonce: secret::generate(""),
        verifier: secret::generate(""),
        return_to,
        expires: now + LOGIN_TTL_SECS,
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(login.verifier.as_bytes()));
    let mut scopes: Vec<&str> = oidc.settings.scopes.split_whitespace().collect();
    if !scopes.contains(&"openid") {
        scopes.insert(0, "openid");
    }
    let mut url = url::Url::parse(endpoint).map_err(|_| Error::Unavailable("the provider's authorization endpoint is not a URL".into()))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", &login.state)
        .append_pair("nonce", &login.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    Ok((login, url.into()))
}

fn client_id(oidc: &Oidc) -> Result<&str> {
    oidc.settings.client_id.as_deref().ok_or_else(|| Error::not_found("OpenID login", "the dashboard login needs UPDRAFT_OIDC_CLIENT_ID"))
}

/// The cookie value of a login: its JSON, base64url, then a dot and its HMAC.
pub fn seal(oidc: &Oidc, login: &LoginState) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(login).expect("a login state serializes"));
    let tag = URL_SAFE_NO_PAD.encode(mac(oidc, &payload).finalize().into_bytes());
    format!("{payload}.{tag}")
}

fn mac(oidc: &Oidc, payload: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(oidc.state_key()).expect("any key length");
    mac.update(payload.as_bytes());
    mac
}

/// The login a cookie carries, if its signature holds and it has not expired.
pub fn open(oidc: &Oidc, cookie: &str, now: i64) -> Result<LoginState> {
    let refused = |why: &str| Error::invalid("invalid_login_state", format!("this login cannot be completed: {why}; start it again"));
    let (payload, tag) = cookie.split_once('.').ok_or_else(|| refused("its cookie is malformed"))?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused("its cookie is malformed"))?;
    // Constant time.
    mac(oidc, payload).verify_slice(&tag).map_err(|_| refused("its cookie was not made by this server"))?;
    let login: LoginState = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| refused("its cookie is malformed"))?;
    if login.expires < now {
        return Err(refused("it took too long"));
    }
    Ok(login)
}

/// Completes a login: the provider's `state` must be the login's; the code is exchanged with
/// the PKCE verifier; the ID token must verify for this client with the login's nonce. The
/// operator's role comes from the ID token's role claim, else from the access token when it
/// is a JWT for UPDRAFT_OIDC_AUDIENCE (Keycloak puts roles in the access token only, unless
/// its mapper adds them to the ID token).
pub async fn finish(oidc: &Arc<Oidc>, login: &LoginState, state: &str, code: &str, redirect_uri: &str) -> Result<Principal> {
    if !secret::constant_time_eq(state, &login.state) {
        return Err(Error::invalid("invalid_login_state", "the provider's `state` is not this login's; start the login again"));
    }
    let client_id = client_id(oidc)?;
    let metadata = oidc.metadata().await?;
    let endpoint =
        metadata.token_endpoint.as_deref().ok_or_else(|| Error::Unavailable("the OpenID provider publishes no token endpoint".into()))?;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", login.verifier.as_str()),
        ("client_id", client_id),
    ];
    if let Some(secret) = &oidc.settings.client_secret {
        form.push(("client_secret", secret.expose()));
    }
    let body = serde_urlencoded::to_string(&form).expect("a form encodes");
    let response = oidc
        .http()
        .post(endpoint)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Error::Unavailable(format!("the OpenID provider's token endpoint cannot be reached: {e}")))?;
    let status = response.status();
    let answer: Value = match response.bytes().await {
        Ok(bytes) if bytes.len() <= 256 << 10 => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    if !status.is_success() {
        let error =
            answer["error"].as_str().unwrap_or("unknown error").chars().filter(|c| c.is_ascii_graphic()).take(80).collect::<String>();
        return Err(Error::Unauthenticated(format!("the OpenID provider refused the login's code ({error}): start the login again")));
    }
    let id_token = answer["id_token"].as_str().ok_or_else(|| Error::Unauthenticated("the OpenID provider returned no ID token".into()))?;
    let identity = oidc.verify(id_token, Audience::Login, Some(&login.nonce)).await?;
    let from_id_token = oidc.operator_of(&identity);
    match from_id_token {
        Err(Error::Forbidden(_)) => {
            let Some(access) = answer["access_token"].as_str().filter(|t| claims::looks_like_jwt(t)) else { return from_id_token };
            let Ok(access) = oidc.verify(access, Audience::Operator, None).await else { return from_id_token };
            // The access token's role, under the ID token's name (both name the same `sub`).
            if access.get("sub") != identity.get("sub") {
                return from_id_token;
            }
            let role = oidc.operator_of(&access).map(|p| p.role).or(Err(()));
            match (from_id_token, role) {
                (Err(_), Ok(role)) => {
                    let name =
                        claims::text(&identity, &oidc.settings.name_claim).or_else(|| claims::text(&identity, "sub")).unwrap_or("unknown");
                    Ok(Principal::new(crate::domain::auth::PrincipalKind::Oidc, name, role))
                }
                (refused, _) => refused,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_is_a_path_on_this_server() {
        assert_eq!(check_return_to(None).unwrap(), "/");
        assert_eq!(check_return_to(Some("/devices?tab=1#x")).unwrap(), "/devices?tab=1#x");
        for bad in [
            "https://evil.example",
            "//evil.example",
            "/\\evil.example",
            "\\\\evil",
            "evil",
            "/a b",
            "/\r\nSet-Cookie:x",
            "javascript:alert(1)",
        ] {
            assert!(check_return_to(Some(bad)).is_err(), "{bad}");
        }
    }
}
