//! Admin API for the device registry: devices, tokens, import, history, products
//! (provisioning policy), pair keys, and the live event stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::Stream;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{Operator, Provisioner, Registrar, Viewer};
use super::error::{ApiBytes, ApiJson, ApiQuery, ApiResult, ErrorBody};
use super::firmware::timestamp;
use crate::domain::Error;
use crate::domain::device::{Device, DeviceFilter, DevicePatch, DeviceSort, Provisioning, SetupEvent, UpdateAttempt};
use crate::domain::firmware::{Channel, HardwareId};
use crate::domain::version::Version;
use crate::services::devices::{self as service, NewDeviceRequest};

mod bulk;
mod convert;
mod events;
mod pairing;
mod products;
mod registry;
mod summary;
mod updates;
mod wire;

pub use bulk::*;
pub use convert::*;
pub use events::*;
pub use pairing::*;
pub use products::*;
pub use registry::*;
pub use summary::*;
pub use updates::*;
pub use wire::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_device, list_devices))
        .routes(routes!(import_devices))
        .routes(routes!(device_summary))
        .routes(routes!(bulk_devices))
        .routes(routes!(fleet_updates))
        .routes(routes!(get_device, patch_device, delete_device))
        .routes(routes!(issue_token, revoke_token))
        .routes(routes!(device_updates))
        .routes(routes!(device_setup_history))
        .routes(routes!(list_products))
        .routes(routes!(get_product, put_product))
        .routes(routes!(create_pairing))
        .routes(routes!(events))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::services::events::{Event, EventBus};

    #[tokio::test]
    async fn a_consumer_that_falls_behind_is_dropped_not_buffered() {
        let bus = EventBus::default();
        let stream = event_stream(bus.subscribe());
        for i in 0..2000 {
            bus.publish(Event::DeviceCheckin { device_id: "d".into(), version: Some(format!("1.0.{i}")), offered: None });
        }
        let items: Vec<_> = stream.collect().await;
        // Only the final `dropped` notice: the backlog was discarded and the stream ended.
        assert_eq!(items.len(), 1);
    }

    #[tokio::test]
    async fn a_consumer_that_keeps_up_gets_every_event_in_order() {
        let bus = EventBus::default();
        let mut stream = Box::pin(event_stream(bus.subscribe()));
        for i in 0..3 {
            bus.publish(Event::DeviceCheckin { device_id: "d".into(), version: Some(format!("1.0.{i}")), offered: None });
        }
        for i in 0..3 {
            let Some(Ok(_)) = stream.next().await else { panic!("event {i}") };
        }
    }
}
