//! Configuration layers and their versions, product schemas and device acknowledgements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::sql::{self, Builder, violates};
use super::{Store, db_error, now_millis};
use crate::domain::Result;
use crate::domain::config::{StoredDocument, StoredVersion};

/// A change to write: the new content (`None` deletes) and who made it why.
pub struct ConfigWrite<'a> {
    pub scope: &'a str,
    /// The version the change was computed from; `None` when no row existed.
    pub expected_version: Option<i64>,
    pub content: Option<&'a Value>,
    pub author: &'a str,
    pub comment: &'a str,
}

impl Store {
    pub async fn find_config(&self, scope: &str) -> Result<Option<StoredDocument>> {
        let row = sqlx::query("SELECT scope, version, content, updated_at FROM config_document WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a configuration"))?;
        row.map(|r| map_row::<DocumentRow, StoredDocument>(&r)).transpose()
    }

    /// The documents (deleted ones included) of these scopes, in no particular order.
    pub async fn find_configs(&self, scopes: &[String]) -> Result<Vec<StoredDocument>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = Builder::new("SELECT scope, version, content, updated_at FROM config_document WHERE scope IN (");
        query.push_list(scopes.iter().map(String::as_str)).push(")");
        let rows = sql::fetch_all(query, &self.pool).await.map_err(|e| db_error(e, "failed to read configurations"))?;
        map_rows::<DocumentRow, StoredDocument>(&rows)
    }

    /// Every document whose scope starts with `prefix` (e.g. `device:`), deleted ones
    /// included, ordered by scope.
    pub async fn list_configs(&self, prefix: &str) -> Result<Vec<StoredDocument>> {
        let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let rows =
            sqlx::query("SELECT scope, version, content, updated_at FROM config_document WHERE scope LIKE $1 ESCAPE '\\' ORDER BY scope")
                .bind(pattern)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_error(e, "failed to list configurations"))?;
        map_rows::<DocumentRow, StoredDocument>(&rows)
    }

    /// Writes a new version of a layer and its history row in one transaction. Returns
    /// `None` when the document is no longer at `expected_version` (a concurrent writer won).
    pub async fn write_config(&self, change: &ConfigWrite<'_>) -> Result<Option<StoredDocument>> {
        let now = now_millis();
        let content = change.content.map(Value::to_string);
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let version = match change.expected_version {
            Some(expected) => {
                let updated =
                    sqlx::query("UPDATE config_document SET version = $1, content = $2, updated_at = $3 WHERE scope = $4 AND version = $5")
                        .bind(expected + 1)
                        .bind(content.clone())
                        .bind(now)
                        .bind(change.scope)
                        .bind(expected)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| db_error(e, "failed to write a configuration"))?;
                if updated.rows_affected() != 1 {
                    return Ok(None);
                }
                expected + 1
            }
            None => {
                let inserted = sqlx::query("INSERT INTO config_document (scope, version, content, updated_at) VALUES ($1, 1, $2, $3)")
                    .bind(change.scope)
                    .bind(content.clone())
                    .bind(now)
                    .execute(&mut *tx)
                    .await;
                match inserted {
                    Ok(_) => 1,
                    Err(e) if violates(&e, "config_document_pkey") => return Ok(None),
                    Err(e) => return Err(db_error(e, "failed to write a configuration")),
                }
            }
        };
        sqlx::query("INSERT INTO config_version (scope, version, content, author, comment, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(change.scope)
            .bind(version)
            .bind(content.clone())
            .bind(change.author)
            .bind(change.comment)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a configuration version"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to commit a configuration"))?;
        Ok(Some(StoredDocument {
            scope: change.scope.to_string(),
            version,
            content: change.content.cloned(),
            updated_at: DateTime::from_timestamp_millis(now).expect("now is a time"),
        }))
    }

    /// A layer's versions, newest first.
    pub async fn list_config_versions(&self, scope: &str, limit: u32, offset: u64) -> Result<(Vec<StoredVersion>, u64)> {
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM config_version WHERE scope = $1")
            .bind(scope)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count configuration versions"))?
            .get("n");
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT scope, version, content, author, comment, created_at FROM config_version WHERE scope = $1 ORDER BY version DESC LIMIT {limit} OFFSET {offset}"
        )))
        .bind(scope)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list configuration versions"))?;
        Ok((map_rows::<VersionRow, StoredVersion>(&rows)?, total as u64))
    }

    pub async fn find_config_version(&self, scope: &str, version: i64) -> Result<Option<StoredVersion>> {
        let row = sqlx::query(
            "SELECT scope, version, content, author, comment, created_at FROM config_version WHERE scope = $1 AND version = $2",
        )
        .bind(scope)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read a configuration version"))?;
        row.map(|r| map_row::<VersionRow, StoredVersion>(&r)).transpose()
    }

    // ---- schemas ----

    pub async fn find_config_schema(&self, product: &str) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT product, body FROM config_schema WHERE product = $1")
            .bind(product)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a configuration schema"))?;
        row.map(|r| map_row::<SchemaRow, Value>(&r)).transpose()
    }

    pub async fn put_config_schema(&self, product: &str, schema: &Value) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("DELETE FROM config_schema WHERE product = $1")
            .bind(product)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to replace a configuration schema"))?;
        sqlx::query("INSERT INTO config_schema (product, body, updated_at) VALUES ($1, $2, $3)")
            .bind(product)
            .bind(schema.to_string())
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to store a configuration schema"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to store a configuration schema"))
    }

    pub async fn delete_config_schema(&self, product: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM config_schema WHERE product = $1")
            .bind(product)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to delete a configuration schema"))?;
        Ok(deleted.rows_affected() > 0)
    }

    // ---- acknowledgements ----

    pub async fn record_config_ack(&self, device_id: &str, version: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        sqlx::query("DELETE FROM config_ack WHERE device_id = $1")
            .bind(device_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a configuration acknowledgement"))?;
        sqlx::query("INSERT INTO config_ack (device_id, version, at) VALUES ($1, $2, $3)")
            .bind(device_id)
            .bind(version)
            .bind(now_millis())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to record a configuration acknowledgement"))?;
        tx.commit().await.map_err(|e| db_error(e, "failed to record a configuration acknowledgement"))
    }

    /// Every device's last acknowledged version and when, by device id.
    pub async fn list_config_acks(&self) -> Result<HashMap<String, (String, DateTime<Utc>)>> {
        let rows = sqlx::query("SELECT device_id, version, at FROM config_ack")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list configuration acknowledgements"))?;
        Ok(map_rows::<AckRow, (String, (String, DateTime<Utc>))>(&rows)?.into_iter().collect())
    }
}

/// A `config_document` row.
#[derive(sqlx::FromRow)]
struct DocumentRow {
    scope: String,
    version: i64,
    content: Option<String>,
    updated_at: i64,
}

impl Table for DocumentRow {
    const TABLE: &'static str = "config_document";
    const KEY: &'static [&'static str] = &["scope"];
}

impl TryFrom<DocumentRow> for StoredDocument {
    type Error = Corrupt;

    fn try_from(row: DocumentRow) -> Result<StoredDocument, Corrupt> {
        Ok(StoredDocument {
            content: row::json_opt("content", row.content.as_deref())?,
            updated_at: row::time("updated_at", row.updated_at)?,
            scope: row.scope,
            version: row.version,
        })
    }
}

/// A `config_version` row.
#[derive(sqlx::FromRow)]
struct VersionRow {
    scope: String,
    version: i64,
    content: Option<String>,
    author: String,
    comment: String,
    created_at: i64,
}

impl Table for VersionRow {
    const TABLE: &'static str = "config_version";
    const KEY: &'static [&'static str] = &["scope", "version"];
}

impl TryFrom<VersionRow> for StoredVersion {
    type Error = Corrupt;

    fn try_from(row: VersionRow) -> Result<StoredVersion, Corrupt> {
        Ok(StoredVersion {
            content: row::json_opt("content", row.content.as_deref())?,
            created_at: row::time("created_at", row.created_at)?,
            scope: row.scope,
            version: row.version,
            author: row.author,
            comment: row.comment,
        })
    }
}

/// A `config_schema` row.
#[derive(sqlx::FromRow)]
struct SchemaRow {
    #[allow(dead_code, reason = "read to name the row in errors")]
    product: String,
    body: String,
}

impl Table for SchemaRow {
    const TABLE: &'static str = "config_schema";
    const KEY: &'static [&'static str] = &["product"];
}

impl TryFrom<SchemaRow> for Value {
    type Error = Corrupt;

    fn try_from(row: SchemaRow) -> Result<Value, Corrupt> {
        row::json("body", &row.body)
    }
}

/// A `config_ack` row.
#[derive(sqlx::FromRow)]
struct AckRow {
    device_id: String,
    version: String,
    at: i64,
}

impl Table for AckRow {
    const TABLE: &'static str = "config_ack";
    const KEY: &'static [&'static str] = &["device_id"];
}

impl TryFrom<AckRow> for (String, (String, DateTime<Utc>)) {
    type Error = Corrupt;

    fn try_from(row: AckRow) -> Result<(String, (String, DateTime<Utc>)), Corrupt> {
        Ok((row.device_id, (row.version, row::time("at", row.at)?)))
    }
}
