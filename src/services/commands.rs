//! Commands to devices over MQTT: issue (stored, then published QoS 1 on
//! `updraft/{id}/cmd`), complete (the device's `cmd/result`), time out (a sweeper), and
//! wait for the outcome. The database holds the truth, so any replica may receive the
//! answer; a waiter on another replica notices it within a quarter second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Core;
use super::events::Event;
use crate::domain::command::{self, Command, CommandResult, CommandState};
use crate::domain::{CommandId, DeviceId, Error, Result, mqtt};

/// Waiters of this replica, by command id.
#[derive(Default)]
pub struct CommandRuntime {
    waiters: Mutex<HashMap<CommandId, watch::Sender<Option<Command>>>>,
}

impl CommandRuntime {
    fn notify(&self, command: &Command) {
        if let Some(sender) = self.waiters.lock().expect("waiters lock").remove(&command.id) {
            let _ = sender.send(Some(command.clone()));
        }
    }
}

pub struct NewCommand {
    pub name: String,
    pub params: Option<Value>,
    pub timeout: Duration,
}

/// Stores the command and publishes it to the device.
pub async fn issue(core: &Core, device_id: &str, request: NewCommand, actor: &str) -> Result<Command> {
    command::check_name(&request.name)?;
    command::check_timeout(request.timeout.as_secs())?;
    if let Some(params) = &request.params {
        command::check_document("params", params)?;
    }
    if !core.outbox.available() {
        return Err(Error::Unavailable("MQTT is switched off (UPDRAFT_MQTT_ENABLED=false): commands cannot reach devices".into()));
    }
    let device = core.store.find_device(device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    let now = Utc::now();
    let command = Command {
        id: CommandId::new(),
        device_id: device.id.clone(),
        name: request.name,
        params: request.params,
        state: CommandState::Sent,
        result: None,
        error: None,
        created_by: actor.to_string(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(request.timeout).unwrap_or(chrono::Duration::MAX),
        completed_at: None,
    };
    core.store.insert_command(&command).await?;
    let payload = json!({
        "id": command.id,
        "name": command.name,
        "params": command.params.clone().unwrap_or(Value::Null),
        "expires_at": command.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    // A ThingsBoard session gets it as a server-side RPC; others on `updraft/{id}/cmd`.
    let params = command.params.clone().unwrap_or(Value::Object(Default::default()));
    if core.outbox.rpc(&device.id, command.id.as_ref(), &command.name, &params).await {
        tracing::info!(device_id = %device.id, command_id = %command.id, name = %command.name, actor, "command sent as an RPC");
        core.events.publish(Event::CommandSent {
            device_id: device.id.to_string(),
            command_id: command.id.to_string(),
            name: command.name.clone(),
        });
        return Ok(command);
    }
    // Not retained: a command is for the session that is there now (or its queue).
    if let Err(e) = core.outbox.publish(mqtt::command_topic(&device.id), Bytes::from(payload.to_string()), false).await {
        let _ =
            core.store.complete_command(&command.id, &device.id, CommandState::Failed, None, Some("the broker refused the message")).await;
        return Err(e);
    }
    tracing::info!(device_id = %device.id, command_id = %command.id, name = %command.name, actor, "command sent");
    core.events.publish(Event::CommandSent {
        device_id: device.id.to_string(),
        command_id: command.id.to_string(),
        name: command.name.clone(),
    });
    Ok(command)
}

/// Records a device's `cmd/result`. Unknown ids, other devices' commands and answers after
/// the deadline are refused (and logged by the caller).
pub async fn complete(core: &Core, device_id: &DeviceId, payload: &[u8]) -> Result<Command> {
    let answer = CommandResult::parse(payload)?;
    let state = if answer.ok { CommandState::Succeeded } else { CommandState::Failed };
    let (command, changed) = core
        .store
        .complete_command(&answer.id, device_id, state, answer.result.as_ref(), answer.error.as_deref())
        .await?
        .ok_or_else(|| Error::not_found("command", &answer.id))?;
    if !changed {
        return Err(Error::conflict("command_ended", format!("command {} already ended ({})", command.id, command.state.as_str())));
    }
    core.commands.notify(&command);
    core.events.publish(Event::CommandCompleted {
        device_id: device_id.to_string(),
        command_id: command.id.to_string(),
        state: command.state.as_str().to_string(),
    });
    Ok(command)
}

/// Records the reply to a command sent as another protocol's RPC: `result` is the device's
/// answer (a JSON object with `error` fails it).
pub async fn complete_rpc(core: &Core, device_id: &DeviceId, command_id: &str, reply: Value) -> Result<Command> {
    let failed = reply.get("error").cloned();
    let answer = match failed {
        Some(error) => json!({"id": command_id, "ok": false, "error": error, "result": reply}),
        None => json!({"id": command_id, "ok": true, "result": reply}),
    };
    complete(core, device_id, answer.to_string().as_bytes()).await
}

/// Ends overdue commands; runs every second.
pub async fn expire(core: &Core) -> Result<usize> {
    let expired = core.store.expire_commands().await?;
    for command in &expired {
        core.commands.notify(command);
        core.events.publish(Event::CommandCompleted {
            device_id: command.device_id.to_string(),
            command_id: command.id.to_string(),
            state: "timed_out".into(),
        });
    }
    Ok(expired.len())
}

/// Waits until the command ends or `wait` passes; returns it as it is then.
pub async fn wait(core: &Core, device_id: &str, id: &str, wait: Duration) -> Result<Command> {
    let mut receiver = {
        let mut waiters = core.commands.waiters.lock().expect("waiters lock");
        waiters.entry(CommandId::from(id)).or_insert_with(|| watch::channel(None).0).subscribe()
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let command = find(core, device_id, id).await?;
        if command.state.is_final() || tokio::time::Instant::now() >= deadline {
            return Ok(command);
        }
        // Woken by an answer on this replica; polling covers answers received elsewhere.
        let nap = Duration::from_millis(250).min(deadline - tokio::time::Instant::now());
        let _ = tokio::time::timeout(nap, receiver.changed()).await;
    }
}

pub async fn find(core: &Core, device_id: &str, id: &str) -> Result<Command> {
    core.store.find_command(id).await?.filter(|c| c.device_id == device_id).ok_or_else(|| Error::not_found("command", id))
}

pub async fn list(core: &Core, device_id: &str, limit: u32, offset: u64) -> Result<(Vec<Command>, u64)> {
    if core.store.find_device(device_id).await?.is_none() {
        return Err(Error::not_found("device", device_id));
    }
    core.store.list_commands(device_id, limit, offset).await
}

pub fn spawn_background(core: Core) {
    core.tasks.clone().spawn("command expiry", async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = expire(&core).await {
                tracing::warn!(error = %e, "cannot expire commands; will retry");
            }
        }
    });
}
