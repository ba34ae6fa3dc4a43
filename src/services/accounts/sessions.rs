//! Browser sessions: a random token in an HttpOnly cookie and a CSRF token (both 256 bits,
//! stored as digests), an idle expiry and an absolute expiry. `open` starts one for any
//! principal (a password login, an API key login, an OpenID login); `verify` finds the
//! session of a cookie, from memory when it was verified recently.

use std::net::IpAddr;
use std::time::Instant;

use chrono::Utc;

use super::super::Core;
use super::{keys, users};
use crate::domain::accounts::{self, Session};
use crate::domain::auth::{Principal, PrincipalKind};
use crate::domain::{Error, Result, secret};

/// Longest user agent kept with a session.
const MAX_USER_AGENT: usize = 256;

/// A session just opened, with its two secrets (shown once: in the cookies and the answer).
pub struct NewSession {
    pub session: Session,
    /// The session cookie's value.
    pub token: String,
    /// The CSRF token: a readable cookie and the answer; sent back as `X-CSRF-Token`.
    pub csrf_token: String,
}

/// What a login presents.
pub enum Credentials<'a> {
    Password { username: &'a str, password: &'a str },
    ApiKey(&'a str),
}

/// Opens a session for `principal` (already authenticated by the caller: a password, an API
/// key, an OpenID provider).
pub async fn open(core: &Core, principal: &Principal, ip: Option<IpAddr>, user_agent: Option<&str>) -> Result<NewSession> {
    let now = Utc::now();
    let absolute = chrono::Duration::from_std(core.accounts.settings.session_absolute).unwrap_or(chrono::Duration::MAX);
    let token = secret::generate("");
    let csrf_token = secret::generate("");
    let user_agent = user_agent.map(|ua| {
        let mut end = ua.len().min(MAX_USER_AGENT);
        while !ua.is_char_boundary(end) {
            end -= 1;
        }
        ua[..end].chars().filter(|c| !c.is_control()).collect::<String>()
    });
    let session = Session {
        id: uuid::Uuid::now_v7().to_string(),
        token_digest: secret::digest_hex(&token),
        csrf_digest: secret::digest_hex(&csrf_token),
        principal: principal.clone(),
        created_at: now,
        last_seen_at: now,
        expires_at: now.checked_add_signed(absolute).unwrap_or(chrono::DateTime::<Utc>::MAX_UTC),
        revoked_at: None,
        client_ip: ip.map(|ip| ip.to_string()),
        user_agent,
    };
    core.store.insert_session(&session).await?;
    core.accounts.remember_session(session.clone(), now);
    tracing::info!(session = %session.id, actor = %principal.actor(), "session opened");
    Ok(NewSession { session, token, csrf_token })
}

/// Logs in with a password or an API key and opens a session. Failures count per address
/// (the shared limiter) and per username (or key); a wrong credential is 401 with the same
/// message whether the user exists or not.
pub async fn login(core: &Core, credentials: Credentials<'_>, ip: IpAddr, user_agent: Option<&str>) -> Result<NewSession> {
    let by_address = &core.devices.limiter;
    by_address.check(ip)?;
    // The username bucket: a user, or a key by its lookup id (any other text: the admin key).
    let bucket = match &credentials {
        Credentials::Password { username, .. } => format!("user:{}", username.to_ascii_lowercase()),
        Credentials::ApiKey(key) => format!("key:{}", accounts::key_id(key).unwrap_or(accounts::ADMIN_KEY_ID)),
    };
    core.accounts.logins.check(&bucket, ip, Instant::now())?;
    let principal = match credentials {
        Credentials::Password { username, password } => {
            users::check_login(core, username, password).await?.map(|user| Principal::new(PrincipalKind::User, user.username, user.role))
        }
        Credentials::ApiKey(key) => keys::verify(core, key).await?,
    };
    let Some(principal) = principal else {
        by_address.record_failure(ip);
        core.accounts.logins.record_failure(&bucket, ip, Instant::now());
        tracing::info!(%ip, "failed login");
        return Err(Error::Unauthenticated("wrong username or password, or the API key is not valid".into()));
    };
    core.accounts.logins.record_success(&bucket);
    open(core, &principal, Some(ip), user_agent).await
}

/// What a cookie's value is.
pub enum Check {
    /// A live session (its use is recorded).
    Live(Session),
    /// A session that was revoked or expired.
    Ended,
    /// No session ever had this value.
    Unknown,
}

/// The session of a cookie's value; records the use of a live one.
pub async fn verify(core: &Core, token: &str) -> Result<Check> {
    let digest = secret::digest_hex(token);
    let now = Utc::now();
    let idle = core.accounts.idle();
    let (session, last_seen) = match core.accounts.cached_session(&digest) {
        Some(cached) => (cached.session, cached.last_seen),
        None => {
            let Some(session) = core.store.find_session_by_token(&digest).await? else { return Ok(Check::Unknown) };
            let last_seen = core.accounts.last_seen_here(&digest).unwrap_or(session.last_seen_at).max(session.last_seen_at);
            core.accounts.remember_session(session.clone(), last_seen);
            (session, last_seen)
        }
    };
    if !session.alive_at(now, last_seen, idle) {
        return Ok(Check::Ended);
    }
    core.accounts.record_session_use(&digest, &session.id, now);
    Ok(Check::Live(session))
}

/// Whether `presented` is the session's CSRF token (constant time).
pub fn csrf_matches(session: &Session, presented: &str) -> bool {
    secret::parse_digest_hex(&session.csrf_digest).is_some_and(|digest| secret::verify(presented, &digest))
}

/// When a session ends if not used again (its idle or absolute expiry).
pub fn ends_at(core: &Core, session: &Session) -> chrono::DateTime<Utc> {
    let last_seen = core.accounts.last_seen_here(&session.token_digest).unwrap_or(session.last_seen_at);
    session.ends_at(last_seen, core.accounts.idle())
}

/// Ends the session of a cookie's value (logout).
pub async fn close(core: &Core, session: &Session) -> Result<()> {
    core.store.revoke_session(&session.id).await?;
    core.accounts.forget_session(&session.token_digest);
    tracing::info!(session = %session.id, actor = %session.principal.actor(), "session closed");
    Ok(())
}

/// Live sessions: of one principal (kind and name), of one name (`name` alone), or all.
pub async fn list(core: &Core, kind: Option<PrincipalKind>, name: Option<&str>) -> Result<Vec<Session>> {
    let now = Utc::now();
    let idle = core.accounts.idle();
    let sessions = core.store.list_sessions(kind, name).await?;
    Ok(sessions
        .into_iter()
        .map(|mut s| {
            if let Some(seen) = core.accounts.last_seen_here(&s.token_digest) {
                s.last_seen_at = s.last_seen_at.max(seen);
            }
            s
        })
        .filter(|s| s.alive_at(now, s.last_seen_at, idle))
        .collect())
}

/// Revokes a session by its id: an admin may revoke any, others only their own (another's
/// is 404, as if it did not exist).
pub async fn revoke(core: &Core, id: &str, by: &Principal) -> Result<Session> {
    let session = core.store.find_session(id).await?.filter(|s| s.revoked_at.is_none()).ok_or_else(|| Error::not_found("session", id))?;
    let own = session.principal.kind == by.kind && session.principal.name == by.name;
    if !own && by.require(crate::domain::auth::Need::Admin).is_err() {
        return Err(Error::not_found("session", id));
    }
    if !core.store.revoke_session(id).await? {
        return Err(Error::not_found("session", id));
    }
    core.accounts.forget_session(&session.token_digest);
    tracing::info!(session = %session.id, actor = %session.principal.actor(), by = %by.actor(), "session revoked");
    Ok(session)
}
