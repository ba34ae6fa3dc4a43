//! The live event stream for operators (Server-Sent Events).

use super::*;
use crate::services::events::{DeviceChange, Event, Published};

/// Server-Sent Events for operators: `device.created`, `device.updated`, `device.deleted`,
/// `device.online`, `device.offline`, `device.checkin`, `device.update_status`,
/// `device.setup_status`, `device.paired`, `device.token_issued`. Each event's data is
/// `{"type","device_id","at","data"}`. A consumer more than 1024 events behind is
/// disconnected (after a final `dropped` event) and should reconnect.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "devices",
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn events(State(state): State<AppState>, _viewer: Viewer) -> Response {
    let receiver = state.core.events.subscribe();
    let bus = state.core.events.clone();
    let stream = futures::StreamExt::take_until(event_stream(receiver), Box::pin(async move { bus.closed().await }));
    let mut response = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response();
    // Proxies must pass events through at once.
    response.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-cache"));
    response.headers_mut().insert("x-accel-buffering", axum::http::HeaderValue::from_static("no"));
    response
}

pub(super) fn event_stream(
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<Published>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(published) => {
                let event = &published.event;
                let data = serde_json::json!({"type": event.kind(), "device_id": event.device_id(), "at": timestamp(published.at), "data": event_data(event)});
                Some((Ok(SseEvent::default().event(event.kind()).data(data.to_string())), Some(receiver)))
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::info!(missed, "dropping a slow event-stream consumer");
                let data = serde_json::json!({"reason": "too slow", "missed": missed});
                Some((Ok(SseEvent::default().event("dropped").data(data.to_string())), None))
            }
            Err(RecvError::Closed) => None,
        }
    })
}

/// The stream's `data` of an event: this adapter's wire form of it.
fn event_data(event: &Event) -> Value {
    use crate::domain::mqtt::{SEED003_ASSET_TOPIC, SEED003_CONFIG_TOPIC};
    use serde_json::json;
    match event {
        Event::DeviceCreated { mac, by, .. } => json!({"mac": mac.map(|m| m.canonical()), "by": by}),
        Event::DeviceUpdated { change: DeviceChange::Reported { version, product, hardware }, .. } => {
            json!({"version": version, "product": product, "hardware": hardware})
        }
        Event::DeviceUpdated { change: DeviceChange::Operator { target_version, by }, .. } => {
            json!({"target_version": target_version, "by": by})
        }
        Event::DeviceDeleted { .. } | Event::DeviceOffline { .. } => json!({}),
        Event::DeviceOnline { mac, .. } => json!({"mac": mac.map(|m| m.canonical())}),
        Event::DeviceConnected { .. } | Event::DeviceDisconnected { .. } => json!({"via": "mqtt"}),
        Event::DeviceCheckin { version, offered, .. } => json!({"version": version, "offered": offered}),
        Event::DeviceTelemetry { value, .. } => value.clone(),
        Event::UpdateStatus(status) => json!({
            "release_id": status.release_id,
            "rollout_id": status.rollout_id,
            "state": status.state.as_str(),
            "progress": status.progress,
            "message": status.message,
            "version": status.version,
        }),
        Event::SetupStatus { code, title, description, .. } => json!({"status_code": code, "title": title, "description": description}),
        Event::DevicePaired { owner, .. } => json!({"owner": owner}),
        Event::TokenIssued { mac, by, .. } => json!({"mac": mac.map(|m| m.canonical()), "by": by}),
        Event::TokenRevoked { mac, by, .. } => json!({"mac": mac.map(|m| m.canonical()), "by": by}),
        Event::ProductUpdated { product } | Event::FirmwareChanged { product } => json!({"product": product}),
        Event::ReleaseCreated { release_id, product, version } => json!({"release_id": release_id, "product": product, "version": version}),
        Event::RolloutCreated { rollout_id, release_id, overlaps } => {
            json!({"rollout_id": rollout_id, "release_id": release_id, "overlaps": overlaps})
        }
        Event::RolloutTransition { rollout_id, from, to, stage, actor, reason } => {
            json!({"rollout_id": rollout_id, "from": from, "to": to, "stage": stage, "actor": actor, "reason": reason})
        }
        Event::ConfigChanged(change) => json!({
            "scope": change.scope,
            "version": change.version,
            "deleted": change.deleted,
            "devices": change.devices,
            "notifications": change
                .seed003_files
                .iter()
                .map(|mac| json!({"topic": SEED003_CONFIG_TOPIC, "payload": {"filename": format!("{}.json", mac.hyphenated_lower())}}))
                .collect::<Vec<_>>(),
        }),
        Event::ConfigAcknowledged { version, .. } => json!({"version": version}),
        Event::AssetFileUploaded { filename, size, sha256 } => json!({
            "filename": filename,
            "size": size,
            "sha256": sha256,
            "notifications": [{"topic": SEED003_ASSET_TOPIC, "payload": {"filename": filename}}],
        }),
        Event::AssetUploaded { product, name, version, sha256, size } => {
            json!({"product": product, "name": name, "version": version, "sha256": sha256, "size": size, "notifications": []})
        }
        Event::CommandSent { command_id, name, .. } => json!({"command_id": command_id, "name": name}),
        Event::CommandCompleted { command_id, state, .. } => json!({"command_id": command_id, "state": state}),
    }
}
