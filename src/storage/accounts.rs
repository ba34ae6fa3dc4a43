//! Storage of operator accounts, named API keys and browser sessions. No secret is stored:
//! passwords as Argon2id hashes, keys and session tokens as SHA-256 digests.

use sqlx::{AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::{Store, db_error, now_millis};
use crate::domain::Result;
use crate::domain::accounts::{ADMIN_KEY_ID, ADMIN_KEY_NAME, ApiKey, Session, User};
use crate::domain::auth::{Principal, PrincipalKind, Role};

const USER_COLUMNS: &str = "username, password_hash, role, disabled, created_at, updated_at";
const KEY_COLUMNS: &str = "id, name, role, digest, expires_at, created_by, created_at, last_used_at, revoked_at, owner";
const SESSION_COLUMNS: &str = "id, token_digest, csrf_digest, principal_kind, principal_name, role, created_at, last_seen_at, \
                               expires_at, revoked_at, client_ip, user_agent";

fn role(text: &str) -> Option<Role> {
    Role::parse(text).ok()
}

fn kind(text: &str) -> Option<PrincipalKind> {
    [PrincipalKind::User, PrincipalKind::ApiKey, PrincipalKind::Oidc].into_iter().find(|k| k.as_str() == text)
}

/// An `operator_user` row.
#[derive(sqlx::FromRow)]
struct UserRow {
    username: String,
    password_hash: String,
    role: String,
    disabled: i64,
    created_at: i64,
    updated_at: i64,
}

impl Table for UserRow {
    const TABLE: &'static str = "operator_user";
    const KEY: &'static [&'static str] = &["username"];
}

/// A user with its password hash (which leaves storage only towards the login check).
pub struct UserWithHash {
    pub user: User,
    pub password_hash: String,
}

impl TryFrom<UserRow> for UserWithHash {
    type Error = Corrupt;

    fn try_from(row: UserRow) -> Result<UserWithHash, Corrupt> {
        Ok(UserWithHash {
            user: User {
                role: row::named("role", &row.role, role)?,
                disabled: row::flag("disabled", row.disabled)?,
                created_at: row::time("created_at", row.created_at)?,
                updated_at: row::time("updated_at", row.updated_at)?,
                username: row.username,
            },
            password_hash: row.password_hash,
        })
    }
}

/// An `api_key` row.
#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    name: String,
    role: String,
    digest: String,
    expires_at: Option<i64>,
    created_by: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    owner: Option<String>,
}

impl Table for KeyRow {
    const TABLE: &'static str = "api_key";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = Corrupt;

    fn try_from(row: KeyRow) -> Result<ApiKey, Corrupt> {
        Ok(ApiKey {
            role: row::named("role", &row.role, role)?,
            expires_at: row::time_opt("expires_at", row.expires_at)?,
            created_at: row::time("created_at", row.created_at)?,
            last_used_at: row::time_opt("last_used_at", row.last_used_at)?,
            revoked_at: row::time_opt("revoked_at", row.revoked_at)?,
            id: row.id,
            name: row.name,
            digest: row.digest,
            created_by: row.created_by,
            owner: row.owner,
        })
    }
}

/// An `operator_session` row.
#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    token_digest: String,
    csrf_digest: String,
    principal_kind: String,
    principal_name: String,
    role: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    client_ip: Option<String>,
    user_agent: Option<String>,
}

impl Table for SessionRow {
    const TABLE: &'static str = "operator_session";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<SessionRow> for Session {
    type Error = Corrupt;

    fn try_from(row: SessionRow) -> Result<Session, Corrupt> {
        let kind = row::named("principal_kind", &row.principal_kind, kind)?;
        let role = row::named("role", &row.role, role)?;
        Ok(Session {
            principal: Principal::new(kind, row.principal_name, role),
            created_at: row::time("created_at", row.created_at)?,
            last_seen_at: row::time("last_seen_at", row.last_seen_at)?,
            expires_at: row::time("expires_at", row.expires_at)?,
            revoked_at: row::time_opt("revoked_at", row.revoked_at)?,
            id: row.id,
            token_digest: row.token_digest,
            csrf_digest: row.csrf_digest,
            client_ip: row.client_ip,
            user_agent: row.user_agent,
        })
    }
}

/// What changes in a user (None: unchanged).
#[derive(Debug, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
}

// ---- users ----

impl Store {
    /// Creates a user; a taken name is the conflict `user_exists`.
    pub async fn insert_user(&self, username: &str, password_hash: &str, role: Role) -> Result<()> {
        sqlx::query(
            "INSERT INTO operator_user (username, password_hash, role, disabled, created_at, updated_at) VALUES ($1, $2, $3, 0, $4, $4)",
        )
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(now_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to create a user"))?;
        Ok(())
    }

    pub async fn find_user(&self, username: &str) -> Result<Option<UserWithHash>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM operator_user WHERE username = $1")))
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a user"))?;
        row.map(|r| map_row::<UserRow, UserWithHash>(&r)).transpose()
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM operator_user ORDER BY username")))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list users"))?;
        Ok(map_rows::<UserRow, UserWithHash>(&rows)?.into_iter().map(|u| u.user).collect())
    }

    /// Applies `change` to a user. Returns false when there is no such user.
    pub async fn update_user(&self, username: &str, change: &UserChange) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE operator_user SET role = COALESCE($1, role), disabled = COALESCE($2, disabled), \
             password_hash = COALESCE($3, password_hash), updated_at = $4 WHERE username = $5",
        )
        .bind(change.role.map(Role::as_str))
        .bind(change.disabled.map(i64::from))
        .bind(change.password_hash.as_deref())
        .bind(now_millis())
        .bind(username)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to change a user"))?;
        Ok(result.rows_affected() > 0)
    }
}

// ---- API keys ----

impl Store {
    /// Stores a new key; a name already used by a key that is not revoked is the conflict
    /// `key_exists`.
    pub async fn insert_key(&self, key: &ApiKey) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!("INSERT INTO api_key ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")))
            .bind(&key.id)
            .bind(&key.name)
            .bind(key.role.as_str())
            .bind(&key.digest)
            .bind(key.expires_at.map(|t| t.timestamp_millis()))
            .bind(&key.created_by)
            .bind(key.created_at.timestamp_millis())
            .bind(key.last_used_at.map(|t| t.timestamp_millis()))
            .bind(key.revoked_at.map(|t| t.timestamp_millis()))
            .bind(key.owner.as_deref())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to store an API key"))?;
        Ok(())
    }

    /// A key by its lookup id, and whether the user it acts for is disabled (or gone).
    pub async fn find_key(&self, id: &str) -> Result<Option<(ApiKey, bool)>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS}, (SELECT COALESCE(MAX(u.disabled), 1) FROM operator_user u WHERE u.username = api_key.owner) AS owner_off \
             FROM api_key WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read an API key"))?;
        let Some(row) = row else { return Ok(None) };
        let key = map_row::<KeyRow, ApiKey>(&row)?;
        let owner_off: Option<i64> = row.try_get("owner_off").map_err(|e| db_error(e, "failed to read an API key"))?;
        Ok(Some((key.clone(), key.owner.is_some() && owner_off.unwrap_or(1) != 0)))
    }

    /// The key that is not revoked with this name, else the key with this id.
    pub async fn find_key_by_name_or_id(&self, name_or_id: &str) -> Result<Option<ApiKey>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM api_key WHERE (name = $1 AND revoked_at IS NULL) OR id = $1 \
             ORDER BY CASE WHEN revoked_at IS NULL THEN 0 ELSE 1 END LIMIT 1"
        )))
        .bind(name_or_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read an API key"))?;
        row.map(|r| map_row::<KeyRow, ApiKey>(&r)).transpose()
    }

    /// Every key, the revoked ones too when asked, oldest first.
    pub async fn list_keys(&self, include_revoked: bool) -> Result<Vec<ApiKey>> {
        let filter = if include_revoked { "" } else { "WHERE revoked_at IS NULL" };
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {KEY_COLUMNS} FROM api_key {filter} ORDER BY created_at, id")))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list API keys"))?;
        map_rows::<KeyRow, ApiKey>(&rows)
    }

    /// Revokes a key. Returns false when it was revoked already (or does not exist).
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        let result = sqlx::query("UPDATE api_key SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_millis())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to revoke an API key"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Records when keys were last used (never moving a time backwards).
    pub async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()> {
        for (id, at) in used {
            sqlx::query("UPDATE api_key SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(*at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to record when API keys were used"))?;
        }
        Ok(())
    }

    /// Makes the original admin key (its digest) the key `admin`: created the first time; a
    /// new digest (a new UPDRAFT_ADMIN_API_KEY, `reset-admin-key`) replaces the old one and
    /// lifts a revocation; the same digest leaves a revocation in place.
    pub async fn sync_admin_key(&self, digest_hex: &str) -> Result<()> {
        let now = now_millis();
        let updated = sqlx::query("UPDATE api_key SET digest = $1, revoked_at = NULL WHERE id = $2 AND digest <> $1")
            .bind(digest_hex)
            .bind(ADMIN_KEY_ID)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to store the admin key"))?
            .rows_affected();
        if updated > 0 {
            return Ok(());
        }
        let result = sqlx::query(
            "INSERT INTO api_key (id, name, role, digest, created_by, created_at) \
             SELECT $1, $2, 'admin', $3, 'updraft', $4 WHERE NOT EXISTS (SELECT 1 FROM api_key WHERE id = $1)",
        )
        .bind(ADMIN_KEY_ID)
        .bind(ADMIN_KEY_NAME)
        .bind(digest_hex)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            // Another replica inserted it at the same moment, or a named key took the name.
            Err(e) if super::sql::violated_constraint(&e).is_some() => Ok(()),
            Err(e) => Err(db_error(e, "failed to store the admin key")),
        }
    }
}

// ---- sessions ----

impl Store {
    pub async fn insert_session(&self, session: &Session) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO operator_session ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        )))
        .bind(&session.id)
        .bind(&session.token_digest)
        .bind(&session.csrf_digest)
        .bind(session.principal.kind.as_str())
        .bind(&session.principal.name)
        .bind(session.principal.role.as_str())
        .bind(session.created_at.timestamp_millis())
        .bind(session.last_seen_at.timestamp_millis())
        .bind(session.expires_at.timestamp_millis())
        .bind(session.revoked_at.map(|t| t.timestamp_millis()))
        .bind(session.client_ip.as_deref())
        .bind(session.user_agent.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to store a session"))?;
        Ok(())
    }

    pub async fn find_session_by_token(&self, token_digest: &str) -> Result<Option<Session>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {SESSION_COLUMNS} FROM operator_session WHERE token_digest = $1")))
            .bind(token_digest)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a session"))?;
        row.map(|r| map_row::<SessionRow, Session>(&r)).transpose()
    }

    pub async fn find_session(&self, id: &str) -> Result<Option<Session>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {SESSION_COLUMNS} FROM operator_session WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a session"))?;
        row.map(|r| map_row::<SessionRow, Session>(&r)).transpose()
    }

    /// Sessions that are neither revoked nor past their absolute expiry, newest first; of
    /// one principal (kind and name) when given, of one name (any kind) with `name` alone.
    pub async fn list_sessions(&self, kind: Option<PrincipalKind>, name: Option<&str>) -> Result<Vec<Session>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {SESSION_COLUMNS} FROM operator_session WHERE revoked_at IS NULL AND expires_at > $1 \
             AND ($2 IS NULL OR principal_kind = $2) AND ($3 IS NULL OR principal_name = $3) \
             ORDER BY created_at DESC, id DESC LIMIT 1000"
        )))
        .bind(now_millis())
        .bind(kind.map(PrincipalKind::as_str))
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list sessions"))?;
        map_rows::<SessionRow, Session>(&rows)
    }

    /// Revokes one session. Returns false when it was revoked already (or does not exist).
    pub async fn revoke_session(&self, id: &str) -> Result<bool> {
        let result = sqlx::query("UPDATE operator_session SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now_millis())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to revoke a session"))?;
        Ok(result.rows_affected() > 0)
    }

    /// Revokes every session of a principal; returns how many.
    pub async fn revoke_sessions_of(&self, kind: PrincipalKind, name: &str) -> Result<u64> {
        let result = sqlx::query(
            "UPDATE operator_session SET revoked_at = $1 WHERE principal_kind = $2 AND principal_name = $3 AND revoked_at IS NULL",
        )
        .bind(now_millis())
        .bind(kind.as_str())
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to revoke sessions"))?;
        Ok(result.rows_affected())
    }

    /// Records when sessions were last seen (never moving a time backwards).
    pub async fn touch_sessions(&self, seen: &[(String, i64)]) -> Result<()> {
        for (id, at) in seen {
            sqlx::query("UPDATE operator_session SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
                .bind(*at)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to record when sessions were used"))?;
        }
        Ok(())
    }

    /// Deletes sessions that ended before `before` (Unix ms): past their absolute expiry or
    /// revoked. Returns how many.
    pub async fn delete_ended_sessions(&self, before: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM operator_session WHERE expires_at < $1 OR revoked_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to delete ended sessions"))?;
        Ok(result.rows_affected())
    }
}
