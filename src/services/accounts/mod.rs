//! Operators: user accounts (`users`), named API keys (`keys`), browser sessions and logins
//! (`sessions`), and the failed-login limiter (`limiter`).
//!
//! Verified keys and sessions are kept in memory for `UPDRAFT_CREDENTIAL_CACHE_SECS`, so that
//! an admin request with a key or a cookie does not read the database; this replica drops an
//! entry at once when it revokes, disables or expires it, other replicas when the entry ages
//! out. When a key was last used and a session last seen are kept in memory too, and written
//! about once a minute (and at shutdown), never per request. Argon2 runs only at login.

pub mod keys;
pub mod limiter;
pub mod sessions;
pub mod users;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::Core;
use crate::config::AccountSettings;
use crate::domain::auth::Principal;

/// Most keys and sessions held in memory (each a few hundred bytes).
const MAX_CACHED: usize = 10_000;
/// How often uses are written.
pub const WRITE_EVERY: Duration = Duration::from_secs(60);

/// A verified key as remembered.
#[derive(Clone)]
pub(crate) struct CachedKey {
    pub principal: Principal,
    pub digest: [u8; 32],
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked, or the user it acts for is disabled.
    pub refused: bool,
    loaded: Instant,
}

/// A session as remembered, with the last use this replica saw.
#[derive(Clone)]
pub(crate) struct CachedSession {
    pub session: crate::domain::accounts::Session,
    pub last_seen: DateTime<Utc>,
    loaded: Instant,
}

/// Uses to write: (key or session id, Unix ms).
type Uses = Vec<(String, i64)>;

/// The accounts' in-memory state (one per replica).
pub struct AccountsRuntime {
    pub settings: AccountSettings,
    pub logins: limiter::LoginLimiter,
    keys: Mutex<HashMap<String, CachedKey>>,
    /// By the digest (hex) of the cookie's value.
    sessions: Mutex<HashMap<String, CachedSession>>,
    /// Uses not written yet: key id -> last use.
    key_uses: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Uses not written yet: session id -> last use.
    session_uses: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Whether the original admin key (`admin`) is revoked, as last read: for the routes that
    /// check that key alone (seed 001's `/admin/api`, seed 003's uploads).
    admin_revoked: AtomicBool,
}

impl AccountsRuntime {
    pub fn new(settings: AccountSettings) -> AccountsRuntime {
        AccountsRuntime {
            logins: limiter::LoginLimiter::new(settings.login_max_failures, settings.login_window),
            settings,
            keys: Mutex::default(),
            sessions: Mutex::default(),
            key_uses: Mutex::default(),
            session_uses: Mutex::default(),
            admin_revoked: AtomicBool::new(false),
        }
    }

    pub fn idle(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.settings.session_idle).unwrap_or(chrono::Duration::MAX)
    }

    fn fresh(&self, loaded: Instant) -> bool {
        loaded.elapsed() < self.settings.credential_cache
    }

    /// Whether the original admin key was revoked through the API (as this replica knows).
    pub fn admin_key_revoked(&self) -> bool {
        self.admin_revoked.load(Ordering::Relaxed)
    }

    pub(crate) fn set_admin_revoked(&self, revoked: bool) {
        self.admin_revoked.store(revoked, Ordering::Relaxed);
    }

    pub(crate) fn cached_key(&self, id: &str) -> Option<CachedKey> {
        let keys = self.keys.lock().expect("key cache lock");
        keys.get(id).filter(|k| self.fresh(k.loaded)).cloned()
    }

    pub(crate) fn remember_key(
        &self,
        id: &str,
        principal: Principal,
        digest: [u8; 32],
        expires_at: Option<DateTime<Utc>>,
        refused: bool,
    ) -> CachedKey {
        let mut keys = self.keys.lock().expect("key cache lock");
        if keys.len() >= MAX_CACHED && !keys.contains_key(id) {
            keys.retain(|_, k| k.loaded.elapsed() < self.settings.credential_cache);
            if keys.len() >= MAX_CACHED {
                keys.clear();
            }
        }
        let entry = CachedKey { principal, digest, expires_at, refused, loaded: Instant::now() };
        keys.insert(id.to_string(), entry.clone());
        entry
    }

    /// A use of a key not written yet.
    pub(crate) fn pending_key_use(&self, id: &str) -> Option<DateTime<Utc>> {
        self.key_uses.lock().expect("key use lock").get(id).copied()
    }

    /// Forgets every remembered key (a user was disabled: the keys it owns are read again).
    pub(crate) fn forget_keys(&self) {
        self.keys.lock().expect("key cache lock").clear();
    }

    pub(crate) fn forget_key(&self, id: &str) {
        self.keys.lock().expect("key cache lock").remove(id);
    }

    pub(crate) fn record_key_use(&self, id: &str, at: DateTime<Utc>) {
        let mut uses = self.key_uses.lock().expect("key use lock");
        if uses.len() < MAX_CACHED || uses.contains_key(id) {
            uses.insert(id.to_string(), at);
        }
    }

    /// A session remembered under its token digest, refreshed with the last use seen here.
    pub(crate) fn cached_session(&self, token_digest: &str) -> Option<CachedSession> {
        let sessions = self.sessions.lock().expect("session cache lock");
        sessions.get(token_digest).filter(|s| self.fresh(s.loaded)).cloned()
    }

    /// The last use this replica saw of a session (even if its cache entry aged out).
    pub(crate) fn last_seen_here(&self, token_digest: &str) -> Option<DateTime<Utc>> {
        self.sessions.lock().expect("session cache lock").get(token_digest).map(|s| s.last_seen)
    }

    pub(crate) fn remember_session(&self, session: crate::domain::accounts::Session, last_seen: DateTime<Utc>) {
        let mut sessions = self.sessions.lock().expect("session cache lock");
        let key = session.token_digest.clone();
        if sessions.len() >= MAX_CACHED && !sessions.contains_key(&key) {
            let now = Utc::now();
            let idle = self.idle();
            sessions.retain(|_, s| s.session.alive_at(now, s.last_seen, idle));
            if sessions.len() >= MAX_CACHED {
                sessions.clear();
            }
        }
        sessions.insert(key, CachedSession { session, last_seen, loaded: Instant::now() });
    }

    /// Records a use of a session: extends its idle expiry here at once, and in the database
    /// with the next write.
    pub(crate) fn record_session_use(&self, token_digest: &str, id: &str, at: DateTime<Utc>) {
        if let Some(entry) = self.sessions.lock().expect("session cache lock").get_mut(token_digest) {
            entry.last_seen = entry.last_seen.max(at);
        }
        let mut uses = self.session_uses.lock().expect("session use lock");
        if uses.len() < MAX_CACHED || uses.contains_key(id) {
            uses.insert(id.to_string(), at);
        }
    }

    pub(crate) fn forget_session(&self, token_digest: &str) {
        self.sessions.lock().expect("session cache lock").remove(token_digest);
    }

    /// Forgets the sessions matching `which` (a user disabled, a key revoked).
    pub(crate) fn forget_sessions_where(&self, which: impl Fn(&crate::domain::accounts::Session) -> bool) {
        self.sessions.lock().expect("session cache lock").retain(|_, s| !which(&s.session));
    }

    fn take_uses(&self) -> (Uses, Uses) {
        let keys = std::mem::take(&mut *self.key_uses.lock().expect("key use lock"));
        let sessions = std::mem::take(&mut *self.session_uses.lock().expect("session use lock"));
        let millis = |map: HashMap<String, DateTime<Utc>>| map.into_iter().map(|(id, at)| (id, at.timestamp_millis())).collect();
        (millis(keys), millis(sessions))
    }
}

/// Writes when keys were last used and sessions last seen.
pub async fn write_uses(core: &Core) -> crate::domain::Result<()> {
    let (keys, sessions) = core.accounts.take_uses();
    if !keys.is_empty() {
        core.store.touch_keys(&keys).await?;
    }
    if !sessions.is_empty() {
        core.store.touch_sessions(&sessions).await?;
    }
    Ok(())
}

/// The accounts' loop: writes uses about once a minute, and once more when the server stops;
/// deletes sessions that ended more than a week ago.
pub fn spawn_background(core: Core) {
    let tasks = core.tasks.clone();
    let stopped = tasks.cancelled();
    // Not through `Tasks::spawn`, which drops the future at once on stop: this loop's last
    // write runs after the stop, and the tracker waits for it.
    tasks.spawn_until_done("accounts: write key and session uses", async move {
        tokio::pin!(stopped);
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = write_uses(&core).await {
                tracing::warn!(error = %e, "cannot record when keys and sessions were used");
            }
            let week_ago = Utc::now().timestamp_millis() - 7 * 86_400_000;
            if let Err(e) = core.store.delete_ended_sessions(week_ago).await {
                tracing::warn!(error = %e, "cannot delete ended sessions");
            }
        }
        match write_uses(&core).await {
            Ok(()) => tracing::debug!("key and session uses written"),
            Err(e) => tracing::warn!(error = %e, "cannot record when keys and sessions were used"),
        }
    });
}
