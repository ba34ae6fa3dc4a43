//! Commands sent to a device over MQTT (`updraft/{id}/cmd`) and their results
//! (`updraft/{id}/cmd/result`): names, states and limits.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::ids::{CommandId, DeviceId};
use super::{Error, Result};

/// Names every device client should know; others are passed through to the device.
pub const WELL_KNOWN: [&str; 3] = ["reboot", "check-update", "ping"];
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// The largest `params` or `result` document kept.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandState {
    /// Published to the device; no answer yet.
    Sent,
    Succeeded,
    Failed,
    TimedOut,
}

impl CommandState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Sent => "sent",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
        }
    }

    pub fn parse(text: &str) -> Option<CommandState> {
        [CommandState::Sent, CommandState::Succeeded, CommandState::Failed, CommandState::TimedOut].into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        self != CommandState::Sent
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: CommandId,
    pub device_id: DeviceId,
    pub name: String,
    pub params: Option<Value>,
    pub state: CommandState,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// `[a-z0-9][a-z0-9._-]{0,63}`: short, and safe in logs and topics.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_command",
            "a command name is 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

pub fn check_timeout(secs: u64) -> Result<()> {
    if (1..=MAX_TIMEOUT_SECS).contains(&secs) {
        Ok(())
    } else {
        Err(Error::invalid("invalid_timeout", format!("timeout_s must be between 1 and {MAX_TIMEOUT_SECS}")))
    }
}

pub fn check_document(field: &str, value: &Value) -> Result<()> {
    if serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX) > MAX_DOCUMENT_BYTES {
        return Err(Error::invalid("document_too_large", format!("{field} is larger than {MAX_DOCUMENT_BYTES} bytes")));
    }
    Ok(())
}

/// A device's answer on `cmd/result`: `{"id": "...", "ok": true, "result": ...}` or
/// `{"id": "...", "ok": false, "error": "..."}`. `status: "ok" | "error"` is accepted for `ok`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    pub id: CommandId,
    pub ok: bool,
    pub result: Option<Value>,
    pub error: Option<String>,
}

impl CommandResult {
    pub fn parse(payload: &[u8]) -> Result<CommandResult> {
        let bad = |why: &str| Error::invalid("invalid_command_result", why.to_string());
        if payload.len() > MAX_DOCUMENT_BYTES {
            return Err(bad("the result is too large"));
        }
        let value: Value = serde_json::from_slice(payload).map_err(|_| bad("the result is not JSON"))?;
        let id = value.get("id").and_then(Value::as_str).ok_or_else(|| bad("the result has no string `id`"))?.to_string();
        let ok = match (value.get("ok"), value.get("status").and_then(Value::as_str)) {
            (Some(Value::Bool(ok)), _) => *ok,
            (None, Some(status)) => matches!(status, "ok" | "success" | "succeeded" | "done"),
            (None, None) => value.get("error").is_none(),
            _ => return Err(bad("`ok` must be a boolean")),
        };
        let error = value.get("error").map(|e| match e.as_str() {
            Some(text) => text.chars().take(1024).collect(),
            None => e.to_string().chars().take(1024).collect(),
        });
        Ok(CommandResult { id: id.into(), ok, result: value.get("result").cloned(), error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_results() {
        assert!(check_name("reboot").is_ok());
        assert!(check_name("set-led.color_2").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("Reboot").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("-x").is_err());
        let r = CommandResult::parse(br#"{"id":"c1","ok":true,"result":{"uptime":5}}"#).unwrap();
        assert!(r.ok && r.result.is_some());
        let r = CommandResult::parse(br#"{"id":"c1","status":"error","error":"busy"}"#).unwrap();
        assert!(!r.ok && r.error.as_deref() == Some("busy"));
        assert!(CommandResult::parse(b"nope").is_err());
        assert!(CommandResult::parse(br#"{"ok":true}"#).is_err());
    }
}
