//! User accounts: a username, an Argon2id password (the MQTT credentials' hashing) and a
//! role. Disabling a user, changing its role or its password ends its sessions (at once on
//! this replica; on others within `UPDRAFT_CREDENTIAL_CACHE_SECS`).

use super::super::Core;
use super::super::mqtt_auth::{hash_password, verify_password};
use crate::domain::accounts::{self, User};
use crate::domain::auth::{PrincipalKind, Role};
use crate::domain::{Error, Result};
use crate::storage::{Store, UserChange};

/// What changes in a user (None: unchanged).
#[derive(Default)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password: Option<String>,
}

/// Hashes a password off the async threads.
pub async fn hash(password: &str) -> Result<String> {
    accounts::check_password(password)?;
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("password hashing failed: {e}")))?
}

/// Checks a password against a stored hash off the async threads.
pub async fn verify(password: &str, stored: String) -> bool {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || verify_password(&password, &stored)).await.unwrap_or(false)
}

/// Creates a user in `store` (also used by the command line, with the server stopped).
pub async fn create_in(store: &Store, username: &str, password: &str, role: Role) -> Result<User> {
    accounts::check_username(username)?;
    let hash = hash(password).await?;
    store.insert_user(username, &hash, role).await?;
    tracing::info!(username, role = %role, "user created");
    Ok(store.find_user(username).await?.ok_or_else(|| Error::not_found("user", username))?.user)
}

pub async fn create(core: &Core, username: &str, password: &str, role: Role) -> Result<User> {
    create_in(&core.store, username, password, role).await
}

pub async fn list_in(store: &Store) -> Result<Vec<User>> {
    store.list_users().await
}

pub async fn find(core: &Core, username: &str) -> Result<User> {
    Ok(core.store.find_user(username).await?.ok_or_else(|| Error::not_found("user", username))?.user)
}

/// Changes a user in `store`; ends its sessions when it is disabled or its role or password
/// changes. Returns the user as it is now and whether its sessions were ended.
pub async fn change_in(store: &Store, username: &str, patch: UserPatch) -> Result<(User, bool)> {
    let password_hash = match &patch.password {
        Some(password) => Some(hash(password).await?),
        None => None,
    };
    let before = store.find_user(username).await?.ok_or_else(|| Error::not_found("user", username))?.user;
    let change = UserChange { role: patch.role, disabled: patch.disabled, password_hash };
    if !store.update_user(username, &change).await? {
        return Err(Error::not_found("user", username));
    }
    let ends_sessions = patch.disabled == Some(true) || patch.role.is_some_and(|r| r != before.role) || change.password_hash.is_some();
    let ended = if ends_sessions { store.revoke_sessions_of(PrincipalKind::User, username).await? } else { 0 };
    let user = store.find_user(username).await?.ok_or_else(|| Error::not_found("user", username))?.user;
    tracing::info!(
        username,
        role = %user.role,
        disabled = user.disabled,
        password_changed = change.password_hash.is_some(),
        sessions_ended = ended,
        "user changed"
    );
    Ok((user, ends_sessions))
}

/// Changes a user; its sessions (and the keys it owns, when disabled) stop working on this
/// replica at once.
pub async fn change(core: &Core, username: &str, patch: UserPatch) -> Result<User> {
    let disabled_changed = patch.disabled.is_some();
    let (user, ended) = change_in(&core.store, username, patch).await?;
    if ended {
        core.accounts.forget_sessions_where(|s| s.principal.kind == PrincipalKind::User && s.principal.name == user.username);
    }
    if disabled_changed {
        core.accounts.forget_keys();
    }
    Ok(user)
}

/// The user a username and password name, if both are right and the user is enabled. The
/// Argon2 check runs whether the user exists or not (against a hash of a random password for
/// an unknown one), so that the time taken does not tell which usernames exist.
pub async fn check_login(core: &Core, username: &str, password: &str) -> Result<Option<User>> {
    let found = if accounts::check_username(username).is_ok() { core.store.find_user(username).await? } else { None };
    let stored = match &found {
        Some(found) => found.password_hash.clone(),
        None => decoy_hash().await?,
    };
    let verified = verify(password, stored).await;
    Ok(found.filter(|found| verified && !found.user.disabled).map(|found| found.user))
}

/// A hash of a random password, made once: what an unknown username's login is checked
/// against.
async fn decoy_hash() -> Result<String> {
    static DECOY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    DECOY
        .get_or_try_init(|| async {
            let password = crate::domain::secret::generate("");
            tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| Error::Internal(anyhow::anyhow!("password hashing failed: {e}")))?
        })
        .await
        .cloned()
}
