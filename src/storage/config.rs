//! Configuration layers and their versions, product schemas and device acknowledgements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Store, db_error, from_millis, is_unique_violation, now_millis};
use crate::domain::config::{StoredDocument, StoredVersion};
use crate::domain::{Error, Result};

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
        row.map(|r| document_from_row(&r)).transpose()
    }

    /// The documents (deleted ones included) of these scopes, in no particular order.
    pub async fn find_configs(&self, scopes: &[String]) -> Result<Vec<StoredDocument>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=scopes.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT scope, version, content, updated_at FROM config_document WHERE scope IN ({})", placeholders.join(", "));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for scope in scopes {
            query = query.bind(scope.clone());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(|e| db_error(e, "failed to read configurations"))?;
        rows.iter().map(document_from_row).collect()
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
        rows.iter().map(document_from_row).collect()
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
                    Err(e) if is_unique_violation(&e) => return Ok(None),
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
            updated_at: from_millis(now),
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
        Ok((rows.iter().map(version_from_row).collect::<Result<_>>()?, total as u64))
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
        row.map(|r| version_from_row(&r)).transpose()
    }

    // ---- schemas ----

    pub async fn find_config_schema(&self, product: &str) -> Result<Option<Value>> {
        let row = sqlx::query("SELECT body FROM config_schema WHERE product = $1")
            .bind(product)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a configuration schema"))?;
        row.map(|r| parse_json(&r.get::<String, _>("body"))).transpose()
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
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>("device_id"), (r.get::<String, _>("version"), from_millis(r.get::<i64, _>("at")))))
            .collect())
    }
}

fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Internal(anyhow::Error::new(e).context("stored configuration JSON is corrupt")))
}

fn document_from_row(row: &AnyRow) -> Result<StoredDocument> {
    Ok(StoredDocument {
        scope: row.get("scope"),
        version: row.get("version"),
        content: row.get::<Option<String>, _>("content").as_deref().map(parse_json).transpose()?,
        updated_at: from_millis(row.get("updated_at")),
    })
}

fn version_from_row(row: &AnyRow) -> Result<StoredVersion> {
    Ok(StoredVersion {
        scope: row.get("scope"),
        version: row.get("version"),
        content: row.get::<Option<String>, _>("content").as_deref().map(parse_json).transpose()?,
        author: row.get("author"),
        comment: row.get("comment"),
        created_at: from_millis(row.get("created_at")),
    })
}
