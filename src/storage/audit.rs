//! Storage of the audit log (`audit_event`): batched inserts, filtered pages, the ordered
//! walk of the export, and pruning by age in bounded batches.

use sqlx::Row;

use super::row::{self, Corrupt, Table, map_rows};
use super::sql::{self, Builder};
use super::{Store, db_error};
use crate::domain::Result;
use crate::domain::audit::{AuditFilter, AuditRecord, Outcome};

const COLUMNS: &str = "id, at, actor, role, action, method, route, target, resource, ip, status, outcome, request_id, note";

/// An `audit_event` row.
#[derive(sqlx::FromRow)]
struct AuditRow {
    id: String,
    at: i64,
    actor: String,
    role: Option<String>,
    action: String,
    method: String,
    route: String,
    target: String,
    resource: Option<String>,
    ip: String,
    status: i64,
    outcome: String,
    request_id: Option<String>,
    note: Option<String>,
}

impl Table for AuditRow {
    const TABLE: &'static str = "audit_event";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = Corrupt;

    fn try_from(row: AuditRow) -> Result<AuditRecord, Corrupt> {
        Ok(AuditRecord {
            at: row::time("at", row.at)?,
            status: row::int("status", row.status)?,
            outcome: row::named("outcome", &row.outcome, Outcome::parse)?,
            id: row.id,
            actor: row.actor,
            role: row.role,
            action: row.action,
            method: row.method,
            route: row.route,
            target: row.target,
            resource: row.resource,
            ip: row.ip,
            request_id: row.request_id,
            note: row.note,
        })
    }
}

/// Where the export resumes: after this record (its time and id).
pub type AuditCursor = (i64, String);

impl Store {
    /// Inserts records in one statement (the caller keeps batches to a few hundred).
    pub async fn insert_audit_records(&self, records: &[AuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut insert = Builder::new(&format!("INSERT INTO audit_event ({COLUMNS}) VALUES "));
        for (i, record) in records.iter().enumerate() {
            if i > 0 {
                insert.push(", ");
            }
            insert.push("(");
            insert.push_bind(record.id.clone()).push(", ");
            insert.push_bind(record.at.timestamp_millis()).push(", ");
            insert.push_bind(record.actor.clone()).push(", ");
            insert.push_bind(record.role.clone()).push(", ");
            insert.push_bind(record.action.clone()).push(", ");
            insert.push_bind(record.method.clone()).push(", ");
            insert.push_bind(record.route.clone()).push(", ");
            insert.push_bind(record.target.clone()).push(", ");
            insert.push_bind(record.resource.clone()).push(", ");
            insert.push_bind(record.ip.clone()).push(", ");
            insert.push_bind(i64::from(record.status)).push(", ");
            insert.push_bind(record.outcome.as_str()).push(", ");
            insert.push_bind(record.request_id.clone()).push(", ");
            insert.push_bind(record.note.clone()).push(")");
        }
        sql::execute(insert, &self.pool).await.map_err(|e| db_error(e, "failed to write audit records"))?;
        Ok(())
    }

    /// A page of records matching `filter`, newest first, and how many match in all.
    pub async fn list_audit_records(&self, filter: &AuditFilter, limit: u32, offset: u64) -> Result<(Vec<AuditRecord>, u64)> {
        let mut count = Builder::new("SELECT COUNT(*) AS n FROM audit_event");
        push_filter(&mut count, filter, None);
        let total: i64 = count.build().fetch_one(&self.pool).await.map_err(|e| db_error(e, "failed to count audit records"))?.get("n");
        let mut list = Builder::new(&format!("SELECT {COLUMNS} FROM audit_event"));
        push_filter(&mut list, filter, None);
        list.push(&format!(" ORDER BY at DESC, id DESC LIMIT {limit} OFFSET {offset}"));
        let rows = sql::fetch_all(list, &self.pool).await.map_err(|e| db_error(e, "failed to list audit records"))?;
        Ok((map_rows::<AuditRow, AuditRecord>(&rows)?, total as u64))
    }

    /// Up to `limit` records matching `filter`, oldest first, after `cursor`: the export walks
    /// the log with it, one batch at a time.
    pub async fn audit_records_after(&self, filter: &AuditFilter, cursor: Option<&AuditCursor>, limit: u32) -> Result<Vec<AuditRecord>> {
        let mut list = Builder::new(&format!("SELECT {COLUMNS} FROM audit_event"));
        push_filter(&mut list, filter, cursor);
        list.push(&format!(" ORDER BY at ASC, id ASC LIMIT {limit}"));
        let rows = sql::fetch_all(list, &self.pool).await.map_err(|e| db_error(e, "failed to export audit records"))?;
        map_rows::<AuditRow, AuditRecord>(&rows)
    }

    /// Deletes up to `batch` records older than `before` (Unix ms), oldest first; returns how
    /// many went.
    pub async fn prune_audit_records(&self, before: i64, batch: u32) -> Result<u64> {
        let result = sqlx::query("DELETE FROM audit_event WHERE id IN (SELECT id FROM audit_event WHERE at < $1 ORDER BY at LIMIT $2)")
            .bind(before)
            .bind(i64::from(batch))
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to prune audit records"))?;
        Ok(result.rows_affected())
    }
}

/// The `WHERE` clause of an audit query, its values bound in place.
fn push_filter(query: &mut Builder, filter: &AuditFilter, cursor: Option<&AuditCursor>) {
    let mut conditions = query.separated(" WHERE ", " AND ");
    if let Some(actor) = &filter.actor {
        conditions.next().push("actor = ").push_bind(actor.clone());
    }
    if let Some(action) = &filter.action {
        conditions.next().push("action = ").push_bind(action.clone());
    }
    if let Some(since) = filter.since {
        conditions.next().push("at >= ").push_bind(since.timestamp_millis());
    }
    if let Some(until) = filter.until {
        conditions.next().push("at < ").push_bind(until.timestamp_millis());
    }
    if let Some(outcome) = filter.outcome {
        conditions.next().push("outcome = ").push_bind(outcome.as_str());
    }
    if let Some(status) = filter.status {
        conditions.next().push("status = ").push_bind(i64::from(status));
    }
    if let Some((at, id)) = cursor {
        conditions
            .next()
            .push("(at > ")
            .push_bind(*at)
            .push(" OR (at = ")
            .push_bind(*at)
            .push(" AND id > ")
            .push_bind(id.clone())
            .push("))");
    }
}
