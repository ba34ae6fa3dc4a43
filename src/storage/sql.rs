//! Dynamic SQL (filters, partial updates, lists of values) and the names of unique
//! constraints in database errors.
//!
//! [`Builder`] is `sqlx::QueryBuilder` with PostgreSQL's placeholders. `QueryBuilder<Any>`
//! cannot serve both databases: its `push_bind` writes the placeholder of the arguments type
//! before the backend is known, and `AnyArguments` writes `?`, which PostgreSQL refuses (sqlx
//! issue #3000; the test `query_builder_any_writes_question_marks` below notices when that
//! changes). SQLite accepts `$N` as well, so the builder writes `$N`, numbered as values are
//! bound: a fragment's values are bound where the fragment is written, in any order.

use std::fmt::Write;

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Arguments, AssertSqlSafe, Encode, Type};

/// SQL assembled from constant fragments and bound values.
pub(super) struct Builder {
    sql: String,
    arguments: AnyArguments,
}

impl Builder {
    pub fn new(init: &str) -> Builder {
        Builder { sql: init.to_string(), arguments: AnyArguments::default() }
    }

    /// Appends SQL text. Only constants of this module tree: values go through
    /// [`Builder::push_bind`].
    pub fn push(&mut self, sql: &str) -> &mut Builder {
        self.sql.push_str(sql);
        self
    }

    /// Binds a value and appends its placeholder (`$N`).
    pub fn push_bind<'q, T>(&mut self, value: T) -> &mut Builder
    where
        T: Encode<'q, Any> + Type<Any> + 'q,
    {
        self.arguments.add(value).expect("values of the Any driver encode");
        write!(self.sql, "${}", self.arguments.len()).expect("writing to a string");
        self
    }

    /// `values` as a comma-separated list of placeholders (for `IN (...)`).
    pub fn push_list<'q, T, I>(&mut self, values: I) -> &mut Builder
    where
        I: IntoIterator<Item = T>,
        T: Encode<'q, Any> + Type<Any> + 'q,
    {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self
    }

    /// Starts a list of conditions: the first is preceded by `first` (` WHERE `), the others
    /// by `then` (` AND `).
    pub fn separated<'b>(&'b mut self, first: &'static str, then: &'static str) -> Separated<'b> {
        Separated { builder: self, first, then, started: false }
    }

    #[cfg(test)]
    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn build(self) -> Query<'static, Any, AnyArguments> {
        sqlx::query_with(AssertSqlSafe(self.sql), self.arguments)
    }
}

/// Conditions (or assignments) joined by a separator; see [`Builder::separated`].
pub(super) struct Separated<'b> {
    builder: &'b mut Builder,
    first: &'static str,
    then: &'static str,
    started: bool,
}

impl Separated<'_> {
    /// Starts the next item and returns the builder to write it.
    pub fn next(&mut self) -> &mut Builder {
        let separator = if self.started { self.then } else { self.first };
        self.started = true;
        self.builder.push(separator)
    }
}

/// Runs a statement built by [`Builder`].
pub(super) async fn execute<'e, E>(builder: Builder, executor: E) -> Result<AnyQueryResult, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    builder.build().execute(executor).await
}

pub(super) async fn fetch_all<'e, E>(builder: Builder, executor: E) -> Result<Vec<AnyRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    builder.build().fetch_all(executor).await
}

// ---- unique constraints ----

/// A unique index or primary key of the schema, named as in the migrations (PostgreSQL names
/// a primary key `<table>_pkey`), with the columns SQLite names instead in its message
/// (`UNIQUE constraint failed: device.mac`).
pub(super) struct UniqueConstraint {
    pub name: &'static str,
    pub sqlite_columns: &'static str,
}

/// Every unique index and primary key a write can violate. A violation of one not listed
/// here is an internal error that still names the constraint the database gave.
pub(super) const UNIQUE_CONSTRAINTS: &[UniqueConstraint] = &[
    UniqueConstraint { name: "device_pkey", sqlite_columns: "device.id" },
    UniqueConstraint { name: "device_mac_idx", sqlite_columns: "device.mac" },
    UniqueConstraint { name: "device_uid_idx", sqlite_columns: "device.uid" },
    UniqueConstraint { name: "device_token_hash_idx", sqlite_columns: "device.token_hash" },
    UniqueConstraint { name: "device_tag_pkey", sqlite_columns: "device_tag.device_id, device_tag.tag" },
    UniqueConstraint { name: "product_pkey", sqlite_columns: "product.name" },
    UniqueConstraint { name: "product_provision_key_idx", sqlite_columns: "product.provision_key" },
    UniqueConstraint { name: "pairing_pkey", sqlite_columns: "pairing.key_hash" },
    UniqueConstraint { name: "artifact_pkey", sqlite_columns: "artifact.id" },
    UniqueConstraint {
        name: "artifact_hardware_pkey",
        sqlite_columns: "artifact_hardware.product, artifact_hardware.version_key, artifact_hardware.hardware",
    },
    UniqueConstraint { name: "firmware_release_pkey", sqlite_columns: "firmware_release.id" },
    UniqueConstraint { name: "firmware_release_version_idx", sqlite_columns: "firmware_release.product, firmware_release.version_key" },
    UniqueConstraint { name: "release_artifact_pkey", sqlite_columns: "release_artifact.artifact_id" },
    UniqueConstraint { name: "device_group_pkey", sqlite_columns: "device_group.id" },
    UniqueConstraint { name: "device_group_name_idx", sqlite_columns: "device_group.name" },
    UniqueConstraint { name: "device_group_member_pkey", sqlite_columns: "device_group_member.group_id, device_group_member.device_id" },
    UniqueConstraint { name: "rollout_pkey", sqlite_columns: "rollout.id" },
    UniqueConstraint { name: "update_attempt_one_current_idx", sqlite_columns: "update_attempt.device_id" },
    UniqueConstraint { name: "update_attempt_action_idx", sqlite_columns: "update_attempt.action_id" },
    UniqueConstraint { name: "action_sequence_pkey", sqlite_columns: "action_sequence.id" },
    UniqueConstraint { name: "config_document_pkey", sqlite_columns: "config_document.scope" },
    UniqueConstraint { name: "config_version_pkey", sqlite_columns: "config_version.scope, config_version.version" },
    UniqueConstraint { name: "asset_pkey", sqlite_columns: "asset.id" },
    UniqueConstraint { name: "asset_version_idx", sqlite_columns: "asset.product, asset.name, asset.version" },
    UniqueConstraint { name: "asset_file_pkey", sqlite_columns: "asset_file.filename" },
    UniqueConstraint { name: "server_secret_pkey", sqlite_columns: "server_secret.name" },
    UniqueConstraint { name: "mqtt_user_pkey", sqlite_columns: "mqtt_user.username" },
    UniqueConstraint { name: "operator_user_pkey", sqlite_columns: "operator_user.username" },
    UniqueConstraint { name: "api_key_pkey", sqlite_columns: "api_key.id" },
    UniqueConstraint { name: "api_key_name_idx", sqlite_columns: "api_key.name" },
    UniqueConstraint { name: "operator_session_pkey", sqlite_columns: "operator_session.id" },
    UniqueConstraint { name: "operator_session_token_idx", sqlite_columns: "operator_session.token_digest" },
    UniqueConstraint { name: "device_command_pkey", sqlite_columns: "device_command.id" },
    UniqueConstraint { name: "device_change_pkey", sqlite_columns: "device_change.id" },
    UniqueConstraint { name: "setup_event_pkey", sqlite_columns: "setup_event.id" },
    UniqueConstraint { name: "update_attempt_pkey", sqlite_columns: "update_attempt.id" },
    UniqueConstraint { name: "update_event_pkey", sqlite_columns: "update_event.id" },
    UniqueConstraint { name: "compat_file_pkey", sqlite_columns: "compat_file.name" },
    UniqueConstraint { name: "product_latest_pkey", sqlite_columns: "product_latest.product" },
    UniqueConstraint { name: "rollout_transition_pkey", sqlite_columns: "rollout_transition.id" },
    UniqueConstraint { name: "rollout_member_pkey", sqlite_columns: "rollout_member.rollout_id, rollout_member.device_id" },
    UniqueConstraint { name: "rollout_revision_pkey", sqlite_columns: "rollout_revision.id" },
    UniqueConstraint { name: "config_schema_pkey", sqlite_columns: "config_schema.product" },
    UniqueConstraint { name: "config_ack_pkey", sqlite_columns: "config_ack.device_id" },
    UniqueConstraint { name: "managed_product_pkey", sqlite_columns: "managed_product.product" },
    UniqueConstraint { name: "audit_event_pkey", sqlite_columns: "audit_event.id" },
];

/// The unique constraint a failed write violated, named as in [`UNIQUE_CONSTRAINTS`]; `None`
/// when the error is not a unique violation. A constraint the table does not know is named
/// as the database gave it (PostgreSQL), or by its columns (SQLite).
pub(super) fn violated_constraint(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = error else { return None };
    if !db.is_unique_violation() {
        return None;
    }
    if let Some(name) = db.constraint() {
        return Some(name.to_string());
    }
    // SQLite: "UNIQUE constraint failed: table.column[, table.column...]", or for an index on
    // expressions "UNIQUE constraint failed: index 'name'".
    let detail = db.message().strip_prefix("UNIQUE constraint failed: ").unwrap_or(db.message()).trim();
    if let Some(index) = detail.strip_prefix("index '").and_then(|rest| rest.strip_suffix('\'')) {
        return Some(index.to_string());
    }
    Some(UNIQUE_CONSTRAINTS.iter().find(|c| c.sqlite_columns == detail).map_or_else(|| detail.to_string(), |c| c.name.to_string()))
}

/// True when the error is a violation of the unique constraint `name`.
pub(super) fn violates(error: &sqlx::Error, name: &str) -> bool {
    violated_constraint(error).is_some_and(|violated| violated == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_as_values_are_bound() {
        let mut builder = Builder::new("SELECT 1 FROM device");
        let mut conditions = builder.separated(" WHERE ", " AND ");
        conditions.next().push("last_seen >= ").push_bind(5i64);
        conditions.next().push("product = ").push_bind("p");
        conditions.next().push("id IN (").push_list(["a", "b"]).push(")");
        assert_eq!(builder.sql(), "SELECT 1 FROM device WHERE last_seen >= $1 AND product = $2 AND id IN ($3, $4)");
    }

    /// Why [`Builder`] exists: when this fails, `QueryBuilder<Any>` writes placeholders
    /// PostgreSQL accepts, and can replace it.
    #[test]
    fn query_builder_any_writes_question_marks() {
        let mut builder = sqlx::QueryBuilder::<Any>::new("SELECT 1 WHERE 1 = ");
        builder.push_bind(1i64);
        assert_eq!(builder.sql().as_str(), "SELECT 1 WHERE 1 = ?");
    }

    #[test]
    fn every_constraint_is_named_once() {
        let mut names: Vec<&str> = UNIQUE_CONSTRAINTS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), UNIQUE_CONSTRAINTS.len());
    }
}
