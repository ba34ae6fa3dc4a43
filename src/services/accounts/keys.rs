//! Named API keys: `upd_<id>_<secret>` (a 64-bit lookup id and a 256-bit secret), stored as
//! the SHA-256 digest of the whole key, shown once. The original admin key is the key
//! `admin` (id `admin`): its text has no lookup id, so any text that is not a named key is
//! checked against it.

use chrono::{DateTime, Utc};

use super::super::Core;
use crate::domain::accounts::{self, ADMIN_KEY_ID, ApiKey};
use crate::domain::auth::{Principal, PrincipalKind, Role};
use crate::domain::{Error, Result, secret};
use crate::storage::Store;

/// A key just created: its text is shown once, then only its digest remains.
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
}

/// What a new key is.
pub struct KeySpec<'a> {
    pub name: &'a str,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    /// The actor who creates it (`key:admin`, `user:alice`, `cli`).
    pub created_by: &'a str,
    pub owner: Option<&'a str>,
}

/// Creates a key in `store` (also used by the command line, with the server stopped).
pub async fn create_in(store: &Store, spec: KeySpec<'_>) -> Result<NewKey> {
    accounts::check_key_name(spec.name)?;
    let now = Utc::now();
    if spec.expires_at.is_some_and(|at| at <= now) {
        return Err(Error::invalid("invalid_expiry", "expires_at must be in the future"));
    }
    if let Some(owner) = spec.owner
        && store.find_user(owner).await?.is_none()
    {
        return Err(Error::not_found("user", owner));
    }
    let id = hex::encode(rand::random::<[u8; 8]>());
    let text = accounts::format_key(&id, &secret::generate(""));
    let key = ApiKey {
        id,
        name: spec.name.to_string(),
        role: spec.role,
        digest: secret::digest_hex(&text),
        expires_at: spec.expires_at,
        created_by: spec.created_by.to_string(),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
        owner: spec.owner.map(str::to_string),
    };
    store.insert_key(&key).await?;
    tracing::info!(name = %key.name, id = %key.id, role = %key.role, created_by = %key.created_by, "API key created");
    Ok(NewKey { key, secret: text })
}

pub async fn create(core: &Core, spec: KeySpec<'_>) -> Result<NewKey> {
    create_in(&core.store, spec).await
}

/// Every key that is not revoked (and the revoked ones when asked), without secrets.
pub async fn list_in(store: &Store, include_revoked: bool) -> Result<Vec<ApiKey>> {
    store.list_keys(include_revoked).await
}

pub async fn list(core: &Core, include_revoked: bool) -> Result<Vec<ApiKey>> {
    let mut keys = list_in(&core.store, include_revoked).await?;
    // Uses this replica has not written yet.
    for key in &mut keys {
        if let Some(at) = core.accounts.pending_key_use(&key.id) {
            key.last_used_at = Some(key.last_used_at.map_or(at, |stored| stored.max(at)));
        }
    }
    Ok(keys)
}

/// Revokes the key named `name_or_id` (a name, or an id) and ends the sessions opened with
/// it. Returns the revoked key.
pub async fn revoke_in(store: &Store, name_or_id: &str) -> Result<ApiKey> {
    let key = store.find_key_by_name_or_id(name_or_id).await?.ok_or_else(|| Error::not_found("API key", name_or_id))?;
    if key.revoked_at.is_some() || !store.revoke_key(&key.id).await? {
        return Err(Error::not_found("API key", name_or_id));
    }
    let ended = store.revoke_sessions_of(PrincipalKind::ApiKey, &key.name).await?;
    tracing::info!(name = %key.name, id = %key.id, sessions_ended = ended, "API key revoked");
    Ok(key)
}

/// Revokes a key; on this replica it stops working at once.
pub async fn revoke(core: &Core, name_or_id: &str) -> Result<ApiKey> {
    let key = revoke_in(&core.store, name_or_id).await?;
    core.accounts.forget_key(&key.id);
    if key.id == ADMIN_KEY_ID {
        core.accounts.set_admin_revoked(true);
    }
    core.accounts.forget_sessions_where(|s| s.principal.kind == PrincipalKind::ApiKey && s.principal.name == key.name);
    Ok(key)
}

/// Makes the original admin key (by its digest) the key `admin` (at start-up and by
/// `reset-admin-key`).
pub async fn sync_admin_key(store: &Store, digest: &[u8; 32]) -> Result<()> {
    store.sync_admin_key(&hex::encode(digest)).await
}

/// At start-up: makes the original admin key the key `admin`, and learns whether it is
/// revoked (for the routes that check that key alone).
pub async fn start(core: &Core, digest: &[u8; 32]) -> Result<()> {
    sync_admin_key(&core.store, digest).await?;
    let revoked = core.store.find_key(ADMIN_KEY_ID).await?.is_some_and(|(key, _)| key.revoked_at.is_some());
    core.accounts.set_admin_revoked(revoked);
    if revoked {
        tracing::warn!(
            "the original admin key (the key `admin`) is revoked; set a new UPDRAFT_ADMIN_API_KEY or run `updraft reset-admin-key` to restore one"
        );
    }
    Ok(())
}

/// Who a presented key is, if it is a usable key: a named key by its lookup id, any other
/// text as the original admin key. From memory when verified recently; the database
/// otherwise. Records the use (written later).
pub async fn verify(core: &Core, presented: &str) -> Result<Option<Principal>> {
    let id = accounts::key_id(presented).unwrap_or(ADMIN_KEY_ID);
    let cached = match core.accounts.cached_key(id) {
        Some(cached) => cached,
        None => {
            let Some((key, owner_off)) = core.store.find_key(id).await? else { return Ok(None) };
            let digest = secret::parse_digest_hex(&key.digest)
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("the stored digest of API key `{}` is corrupt", key.id)))?;
            if id == ADMIN_KEY_ID {
                core.accounts.set_admin_revoked(key.revoked_at.is_some());
            }
            core.accounts.remember_key(id, key.principal(), digest, key.expires_at, key.revoked_at.is_some() || owner_off)
        }
    };
    if !secret::verify(presented, &cached.digest) {
        return Ok(None);
    }
    let now = Utc::now();
    if cached.refused || cached.expires_at.is_some_and(|at| now >= at) {
        return Ok(None);
    }
    core.accounts.record_key_use(id, now);
    Ok(Some(cached.principal))
}
