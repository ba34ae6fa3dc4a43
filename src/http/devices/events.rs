//! The live event stream for operators (Server-Sent Events).

use super::*;

/// Server-Sent Events for operators: `device.created`, `device.updated`, `device.deleted`,
/// `device.online`, `device.offline`, `device.checkin`, `device.update_status`,
/// `device.setup_status`, `device.paired`, `device.token_issued`. Each event's data is
/// `{"type","device_id","at","data"}`. A consumer more than 1024 events behind is
/// disconnected (after a final `dropped` event) and should reconnect.
#[utoipa::path(
    get, path = "/api/v1/events", tag = "devices",
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String), (status = 401, body = ErrorBody)),
    security(("bearer" = []), ("admin_key" = []))
)]
pub(super) async fn events(State(state): State<AppState>, _admin: Admin) -> Response {
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
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<crate::services::events::Event>>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Ok(event) => {
                let data =
                    serde_json::json!({"type": event.kind, "device_id": event.device_id, "at": timestamp(event.at), "data": event.data});
                Some((Ok(SseEvent::default().event(event.kind).data(data.to_string())), Some(receiver)))
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
