//! Storage of MQTT credentials (operators and services; devices use their tokens) and of
//! device commands.

use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

use super::row::{self, Corrupt, Table, map_row, map_rows};
use super::{Store, db_error, now_millis};
use crate::domain::command::{Command, CommandState};
use crate::domain::mqtt::MqttUser;
use crate::domain::{CommandId, DeviceId, Result};

/// A `mqtt_user` row.
#[derive(sqlx::FromRow)]
struct MqttUserRow {
    username: String,
    password_hash: String,
    role: String,
    created_at: i64,
    updated_at: i64,
}

impl Table for MqttUserRow {
    const TABLE: &'static str = "mqtt_user";
    const KEY: &'static [&'static str] = &["username"];
}

impl TryFrom<MqttUserRow> for MqttUser {
    type Error = Corrupt;

    fn try_from(row: MqttUserRow) -> Result<MqttUser, Corrupt> {
        Ok(MqttUser {
            created_at: row::time("created_at", row.created_at)?,
            updated_at: row::time("updated_at", row.updated_at)?,
            username: row.username,
            password_hash: row.password_hash,
            role: row.role,
        })
    }
}

impl Store {
    /// Creates or replaces a credential. Returns true when it was created.
    pub async fn put_mqtt_user(&self, username: &str, password_hash: &str, role: &str) -> Result<bool> {
        let now = now_millis();
        let mut tx = self.pool.begin().await.map_err(|e| db_error(e, "failed to begin a transaction"))?;
        let updated = sqlx::query("UPDATE mqtt_user SET password_hash = $1, role = $2, updated_at = $3 WHERE username = $4")
            .bind(password_hash)
            .bind(role)
            .bind(now)
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "failed to store an MQTT credential"))?
            .rows_affected();
        if updated == 0 {
            sqlx::query("INSERT INTO mqtt_user (username, password_hash, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)")
                .bind(username)
                .bind(password_hash)
                .bind(role)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "failed to store an MQTT credential"))?;
        }
        tx.commit().await.map_err(|e| db_error(e, "failed to store an MQTT credential"))?;
        Ok(updated == 0)
    }

    pub async fn find_mqtt_user(&self, username: &str) -> Result<Option<MqttUser>> {
        let row = sqlx::query("SELECT username, password_hash, role, created_at, updated_at FROM mqtt_user WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read an MQTT credential"))?;
        row.map(|r| map_row::<MqttUserRow, MqttUser>(&r)).transpose()
    }

    pub async fn list_mqtt_users(&self) -> Result<Vec<MqttUser>> {
        let rows = sqlx::query("SELECT username, password_hash, role, created_at, updated_at FROM mqtt_user ORDER BY username")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to list MQTT credentials"))?;
        map_rows::<MqttUserRow, MqttUser>(&rows)
    }

    pub async fn delete_mqtt_user(&self, username: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM mqtt_user WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to delete an MQTT credential"))?;
        Ok(result.rows_affected() > 0)
    }
}

const COMMAND_COLUMNS: &str = "id, device_id, name, params, state, result, error, created_by, created_at, expires_at, completed_at";

/// A `device_command` row.
#[derive(sqlx::FromRow)]
struct CommandRow {
    id: String,
    device_id: String,
    name: String,
    params: Option<String>,
    state: String,
    result: Option<String>,
    error: Option<String>,
    created_by: String,
    created_at: i64,
    expires_at: i64,
    completed_at: Option<i64>,
}

impl Table for CommandRow {
    const TABLE: &'static str = "device_command";
    const KEY: &'static [&'static str] = &["id"];
}

impl TryFrom<CommandRow> for Command {
    type Error = Corrupt;

    fn try_from(row: CommandRow) -> Result<Command, Corrupt> {
        Ok(Command {
            params: row::json_opt("params", row.params.as_deref())?,
            state: row::named("state", &row.state, CommandState::parse)?,
            result: row::json_opt("result", row.result.as_deref())?,
            created_at: row::time("created_at", row.created_at)?,
            expires_at: row::time("expires_at", row.expires_at)?,
            completed_at: row::time_opt("completed_at", row.completed_at)?,
            id: row.id.into(),
            device_id: row.device_id.into(),
            name: row.name,
            error: row.error,
            created_by: row.created_by,
        })
    }
}

impl Store {
    pub async fn insert_command(&self, command: &Command) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO device_command ({COMMAND_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )))
        .bind(command.id.as_str())
        .bind(command.device_id.as_str())
        .bind(&command.name)
        .bind(command.params.as_ref().map(Value::to_string))
        .bind(command.state.as_str())
        .bind(command.result.as_ref().map(Value::to_string))
        .bind(command.error.as_deref())
        .bind(&command.created_by)
        .bind(command.created_at.timestamp_millis())
        .bind(command.expires_at.timestamp_millis())
        .bind(command.completed_at.map(|t| t.timestamp_millis()))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to store a command"))?;
        Ok(())
    }

    pub async fn find_command(&self, id: &str) -> Result<Option<Command>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {COMMAND_COLUMNS} FROM device_command WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to read a command"))?;
        row.map(|r| map_row::<CommandRow, Command>(&r)).transpose()
    }

    /// The newest commands of a device first.
    pub async fn list_commands(&self, device_id: &str, limit: u32, offset: u64) -> Result<(Vec<Command>, u64)> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM device_command WHERE device_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        )))
        .bind(device_id)
        .bind(i64::from(limit))
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to list commands"))?;
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM device_command WHERE device_id = $1")
            .bind(device_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to count commands"))?
            .get("n");
        Ok((map_rows::<CommandRow, Command>(&rows)?, total as u64))
    }

    /// Records a device's answer, unless the command already ended (answered or timed out).
    /// Returns the command as it is now, or None when it does not exist for this device.
    pub async fn complete_command(
        &self,
        id: &CommandId,
        device_id: &DeviceId,
        state: CommandState,
        result: Option<&Value>,
        error: Option<&str>,
    ) -> Result<Option<(Command, bool)>> {
        let changed = sqlx::query(
            "UPDATE device_command SET state = $1, result = $2, error = $3, completed_at = $4 \
             WHERE id = $5 AND device_id = $6 AND state = 'sent'",
        )
        .bind(state.as_str())
        .bind(result.map(Value::to_string))
        .bind(error)
        .bind(now_millis())
        .bind(id.as_str())
        .bind(device_id.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to record a command result"))?
        .rows_affected()
            > 0;
        Ok(self.find_command(id).await?.filter(|c| c.device_id == *device_id).map(|c| (c, changed)))
    }

    /// Ends every command whose deadline passed; returns them.
    pub async fn expire_commands(&self) -> Result<Vec<Command>> {
        let now = now_millis();
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COMMAND_COLUMNS} FROM device_command WHERE state = 'sent' AND expires_at < $1 LIMIT 1000"
        )))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_error(e, "failed to read expired commands"))?;
        let mut expired = Vec::with_capacity(rows.len());
        for mut command in map_rows::<CommandRow, Command>(&rows)? {
            let changed = sqlx::query(
                "UPDATE device_command SET state = 'timed_out', error = 'no answer before the deadline', completed_at = $1 \
                 WHERE id = $2 AND state = 'sent'",
            )
            .bind(now)
            .bind(command.id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| db_error(e, "failed to expire a command"))?
            .rows_affected();
            if changed > 0 {
                command.state = CommandState::TimedOut;
                command.error = Some("no answer before the deadline".into());
                command.completed_at = chrono::DateTime::from_timestamp_millis(now);
                expired.push(command);
            }
        }
        Ok(expired)
    }
}
