//! Storage: the only module that holds SQL. One code path for SQLite (embedded default)
//! and PostgreSQL (scale-out), through sqlx's `Any` driver and portable SQL.

mod accounts;
pub use accounts::{UserChange, UserWithHash};
mod assets;
mod audit;
mod compat;
mod config;
mod devices;
mod firmware;
mod mqtt;
mod orphan_blobs;
mod rollouts;
mod row;
mod secrets;
mod sql;
#[cfg(test)]
mod tests;
mod usage;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use audit::AuditCursor;
pub use compat::CompatFileRemoval;
pub use config::ConfigWrite;
pub use devices::{ActiveRow, AttemptOffer, DeviceReport, NewDevice, RolloutSlot, SummaryRow};
pub use firmware::NewArtifact;
pub use rollouts::{MemberRow, TargetRow, TransitionWrite};
pub use row::CorruptRow;
pub use usage::{VersionColumn, VersionCount};

use crate::domain::{Error, Result};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The database: a connection pool and the queries, grouped by resource in submodules.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Each SQLite connection's page cache: 128 KiB instead of SQLite's 2 MiB. The pool holds up
/// to `UPDRAFT_DATABASE_MAX_CONNECTIONS` connections (4 by default on SQLite), each with its own
/// cache, which fills under load and is never given back (the C library's allocator keeps it):
/// with ten connections the default took up to 20 MiB. Pages not cached are read from the
/// operating system's file cache (a `pread` each); the hot paths read no rows (the fleet index)
/// and presence is written in rate-limited batches. Measured with `sqlite3 .stats` on a
/// 100,000-device database: a connection that wrote a second of presence used 0.59 MiB with a
/// 512 KiB cache, of which the cache was 0.53 (docs/PERFORMANCE.md, check-in).
const SQLITE_CACHE_SIZE: &str = "PRAGMA cache_size = -128";

impl Store {
    /// Connects, configures SQLite for concurrent use, and applies pending migrations.
    pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if database_url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let url = match backend {
            Backend::Sqlite => sqlite_url(database_url)?,
            Backend::Postgres => database_url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url).context("invalid database URL")?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers proceed during a write; NORMAL sync is durable in WAL mode
                        // except for the last transactions on power loss; busy_timeout makes writers wait
                        // for each other instead of failing.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute(SQLITE_CACHE_SIZE).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to the database at {}", crate::config::redact_url(database_url)))?;
        MIGRATOR.run(&pool).await.context("cannot apply database migrations")?;
        if backend == Backend::Sqlite {
            // Statistics for SQLite's query planner, sampled (`analysis_limit`) so that this takes
            // milliseconds at any size. Without them it takes every index for selective, and a
            // device list filtered on a common value (a product, `status=online`) fetches and sorts
            // a large part of the table instead of walking the index of its sort (bench/dashboard.sh).
            // PostgreSQL keeps its own statistics (autovacuum).
            let mut conn = pool.acquire().await.context("cannot connect to the database")?;
            conn.execute("PRAGMA analysis_limit = 1000").await.context("cannot set the analysis limit")?;
            conn.execute("ANALYZE").await.context("cannot gather the query planner's statistics")?;
        }
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Answers when the database does, for the readiness probe.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ()).map_err(|e| Error::Unavailable(format!("database: {e}")))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes sure the SQLite file's folder exists and the file is created on first use.
fn sqlite_url(database_url: &str) -> anyhow::Result<String> {
    let rest = database_url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path == ":memory:" {
        // A URL must parse before the driver sees it: `sqlite://:memory:` would not.
        return Ok(if query.is_empty() { "sqlite::memory:".to_string() } else { format!("sqlite::memory:?{query}") });
    }
    if !path.is_empty()
        && let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create the database folder {}", parent.display()))?;
    }
    let mut url = format!("sqlite://{path}");
    if query.is_empty() {
        url.push_str("?mode=rwc");
    } else {
        url.push('?');
        url.push_str(query);
        if !query.contains("mode=") {
            url.push_str("&mode=rwc");
        }
    }
    Ok(url)
}

/// Turns a database failure into the domain error. A unique violation names its constraint:
/// one a client can cause is that constraint's conflict (409); any other is internal, and
/// the log names it.
fn db_error(error: sqlx::Error, context: &'static str) -> Error {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Error::Unavailable(format!("database unavailable: {error}"))
        }
        _ => match sql::violated_constraint(&error) {
            Some(constraint) => match conflict_of(&constraint) {
                Some(conflict) => conflict,
                None => Error::Internal(anyhow::Error::new(error).context(format!("{context}: unique constraint `{constraint}` violated"))),
            },
            None => Error::Internal(anyhow::Error::new(error).context(context)),
        },
    }
}

/// The conflict each unique constraint a client can run into means, where the writing site
/// does not say more (most do, with the values involved).
fn conflict_of(constraint: &str) -> Option<Error> {
    Some(match constraint {
        "device_mac_idx" => Error::conflict("device_exists", "a device with this MAC is already registered"),
        "device_uid_idx" => Error::conflict("device_exists", "a device with this name is already registered"),
        "product_provision_key_idx" => devices::provision_key_taken(),
        "firmware_release_version_idx" => Error::conflict("release_exists", "the product already has a release of this version"),
        "release_artifact_pkey" => Error::conflict("artifact_in_release", "a build already belongs to another release"),
        "device_group_name_idx" => Error::conflict("group_exists", "another group has this name"),
        "operator_user_pkey" => Error::conflict("user_exists", "a user with this name exists"),
        "api_key_name_idx" => Error::conflict("key_exists", "a key that is not revoked has this name"),
        "artifact_hardware_pkey" => {
            Error::conflict("version_exists", "this version of the product was stored concurrently for the same hardware")
        }
        _ => return None,
    })
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
