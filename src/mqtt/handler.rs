//! Device → server messages: decode, call the use case, log and count what is refused. A bad
//! message never stops the worker; the broker already checked who may publish where.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::bus::Incoming;
use super::push::Pusher;
use crate::domain::mqtt::{self, Inbound, LegacyFlashState};
use crate::domain::{Error, Result};
use crate::services::devices::{self, CheckinReport, StatusReport};
use crate::services::{Core, commands};

/// The largest telemetry or attributes message handled.
const MAX_JSON_BYTES: usize = 64 * 1024;

/// The `ota/status` message: the same fields as `POST /api/v1/device/update-status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OtaStatus {
    release_id: Option<String>,
    version: Option<String>,
    state: String,
    progress: Option<i64>,
    message: Option<String>,
}

/// Whether the embedded broker holds a session of a device.
pub type SessionCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub struct Handler {
    pub pusher: Arc<Pusher>,
    /// Embedded mode: whether the broker holds a session of the device right now (a late
    /// `offline` of a replaced session must not mark a connected device offline).
    pub holds_session: Option<SessionCheck>,
    /// Bounds the connection syncs (offer and configuration) running at once.
    pub connect_syncs: Arc<tokio::sync::Semaphore>,
}

impl Handler {
    fn core(&self) -> &Core {
        &self.pusher.core
    }

    pub async fn run(self: Arc<Self>, mut messages: mpsc::Receiver<Incoming>) {
        while let Some(Incoming { inbound, payload }) = messages.recv().await {
            let kind = kind_of(&inbound);
            if let Err(e) = self.handle(inbound, &payload).await {
                metrics::counter!("updraft_mqtt_messages_refused_total", "kind" => kind).increment(1);
                tracing::info!(kind, error = %e, "MQTT message refused");
            }
        }
    }

    async fn handle(&self, inbound: Inbound, payload: &[u8]) -> Result<()> {
        let core = self.core();
        match inbound {
            Inbound::Status { device_id } => {
                let online = mqtt::parse_status(payload).ok_or_else(|| invalid("a status is `online` or `offline`"))?;
                let Some(device) = devices::active_by_id(core, &device_id).await? else {
                    return Err(Error::not_found("device", device_id));
                };
                let holds_session = self.holds_session.as_ref().map(|holds| holds(&device_id));
                if online && holds_session == Some(false) {
                    // The embedded broker's own `online` (or a device's retained one) arriving
                    // after the session already ended: the device is not connected.
                    tracing::debug!(%device_id, "ignoring `online` of a session that has ended");
                } else if online {
                    // Announced more than once with the embedded broker (by its hooks, and by
                    // the device on `status`): the first announcement does the work, in the
                    // background so that this queue keeps moving during a connection storm.
                    if devices::mark_connected(core, &device, None) {
                        tracing::debug!(device_id = %device.id, "device connected over MQTT");
                        let pusher = self.pusher.clone();
                        let permits = self.connect_syncs.clone();
                        tokio::spawn(async move {
                            let Ok(_permit) = permits.acquire_owned().await else { return };
                            pusher.device_connected(device).await;
                        });
                    }
                } else if holds_session == Some(true) {
                    tracing::debug!(%device_id, "ignoring `offline` of a replaced session");
                } else {
                    devices::mark_disconnected(core, &device_id);
                    self.pusher.device_disconnected(&device_id);
                }
            }
            Inbound::Telemetry { device_id } => {
                let device = known(core, &device_id).await?;
                let value = json(payload)?;
                devices::record_telemetry(core, &device, value);
            }
            Inbound::Attributes { device_id } => {
                let device = known(core, &device_id).await?;
                let value = json(payload)?;
                let report = CheckinReport { attributes: Some(value), ..Default::default() };
                let answer = devices::checkin(core, device.clone(), report, None).await?;
                self.pusher.publish_offer(&device, answer, false).await?;
            }
            Inbound::OtaStatus { device_id } => {
                let device = known(core, &device_id).await?;
                let status = ota_status(payload)?;
                devices::report_update(
                    core,
                    &device,
                    StatusReport {
                        release_id: status.release_id,
                        version: status.version,
                        state: status.state,
                        progress: status.progress,
                        message: status.message,
                    },
                )
                .await?;
                // A failure or completion may change what the device is offered next.
                self.pusher.sync_offer(device, false).await?;
            }
            Inbound::CommandResult { device_id } => {
                known(core, &device_id).await?;
                let command = commands::complete(core, &device_id, payload).await?;
                tracing::info!(%device_id, command_id = %command.id, state = command.state.as_str(), "command answered");
            }
            Inbound::LegacyKeepalive { mac, mac_text } => {
                let device = devices::active_by_mac(core, &mac).await?.ok_or_else(|| Error::not_found("device", mac.canonical()))?;
                devices::mark_heard(core, &device);
                self.pusher.legacy_heard(device, &mac_text).await?;
            }
            Inbound::LegacyFlashing { mac, .. } => {
                let device = devices::active_by_mac(core, &mac).await?.ok_or_else(|| Error::not_found("device", mac.canonical()))?;
                devices::mark_heard(core, &device);
                let state = mqtt::parse_legacy_flash_state(payload)
                    .ok_or_else(|| invalid("a flashing status is flashing, idle, done or failed"))?;
                let Some(attempt) = devices::current_attempt(core, &device.id).await? else {
                    return Err(Error::conflict("no_update", "the device reported flashing without an update in progress"));
                };
                let report = |state: &str, message: Option<&str>| StatusReport {
                    release_id: Some(attempt.release_id.to_string()),
                    version: Some(attempt.to_version.clone()),
                    state: state.to_string(),
                    progress: None,
                    message: message.map(str::to_string),
                };
                match state {
                    LegacyFlashState::Flashing => {
                        devices::report_update(core, &device, report("installing", None)).await?;
                    }
                    // Between flashing and the outcome: nothing to record.
                    LegacyFlashState::Idle => {}
                    LegacyFlashState::Done => {
                        // Seed 000 has no version report: `done` is the device saying it runs
                        // the build it was sent, the strongest evidence this protocol gives.
                        devices::report_update(core, &device, report("installed", None)).await?;
                        let running = CheckinReport { version: Some(attempt.to_version.clone()), ..Default::default() };
                        let answer = devices::checkin(core, device.clone(), running, None).await?;
                        self.pusher.publish_offer(&device, answer, false).await?;
                    }
                    LegacyFlashState::Failed => {
                        devices::report_update(
                            core,
                            &device,
                            report("failed", Some("the device reported `failed` on {mac}/flashing/status")),
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(())
    }
}

async fn known(core: &Core, device_id: &str) -> Result<Arc<crate::services::fleet::ActiveDevice>> {
    let device = devices::active_by_id(core, device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    Ok(device)
}

/// The `ota/status` message (at most 64 KiB).
pub(crate) fn ota_status(payload: &[u8]) -> Result<OtaStatus> {
    if payload.len() > MAX_JSON_BYTES {
        return Err(invalid("the update status is too large"));
    }
    serde_json::from_slice(payload).map_err(|e| invalid(&format!("not an update status: {e}")))
}

/// A telemetry or attributes message (at most 64 KiB of JSON).
pub(crate) fn json(payload: &[u8]) -> Result<Value> {
    if payload.len() > MAX_JSON_BYTES {
        return Err(invalid("the message is larger than 64 KiB"));
    }
    serde_json::from_slice(payload).map_err(|e| invalid(&format!("the message is not JSON: {e}")))
}

fn invalid(message: &str) -> Error {
    Error::invalid("invalid_message", message.to_string())
}

fn kind_of(inbound: &Inbound) -> &'static str {
    match inbound {
        Inbound::Status { .. } => "status",
        Inbound::Telemetry { .. } => "telemetry",
        Inbound::Attributes { .. } => "attributes",
        Inbound::OtaStatus { .. } => "ota_status",
        Inbound::CommandResult { .. } => "cmd_result",
        Inbound::LegacyFlashing { .. } => "legacy_flashing",
        Inbound::LegacyKeepalive { .. } => "legacy_keepalive",
    }
}
