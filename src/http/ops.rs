//! Operations endpoints: liveness, readiness, Prometheus metrics, OpenAPI and its offline
//! interactive page.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use super::AppState;
use super::auth::Viewer;
use super::device_api::ClientIp;
use crate::domain::{Error, secret};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready)).routes(routes!(prometheus_metrics)).routes(routes!(server_info))
}

/// `/api/openapi.json` and the Swagger UI at `/api/docs`, served from the binary (no CDN).
/// Its validator is off: Swagger UI would otherwise load a badge from the validator's public
/// site and send it the document's URL whenever the page is opened under a host name other
/// than localhost. The page names no other host (a test checks every served page).
///
/// The document is kept as its JSON text (about 270 KB), not as the `OpenApi` structure that
/// Swagger UI's own route would keep and serialize on each request: that structure held 7.6 MB
/// of a fresh server's 10.4 MB of live heap (heaptrack, docs/PERFORMANCE.md "Idle").
pub fn docs_router(openapi: &utoipa::openapi::OpenApi) -> Router<AppState> {
    let document = Bytes::from(serde_json::to_vec(openapi).expect("the OpenAPI document serializes"));
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", &hex::encode(Sha256::digest(&document))[..24])).expect("hex is a valid header value");
    let swagger: Router<AppState> =
        SwaggerUi::new("/api/docs").config(utoipa_swagger_ui::Config::from("/api/openapi.json").validator_url("none")).into();
    swagger.route(
        "/api/openapi.json",
        get(move |headers: HeaderMap| {
            let (document, etag) = (document.clone(), etag.clone());
            async move {
                let fresh = etag.to_str().is_ok_and(|etag| super::conditional::none_match(&headers, etag));
                let status = if fresh { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
                let body = if fresh { Bytes::new() } else { document };
                let headers = [
                    (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    (header::ETAG, etag),
                ];
                (status, headers, body)
            }
        }),
    )
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_s: u64,
}

/// Liveness: 200 while the process serves requests.
#[utoipa::path(get, path = "/api/health", tag = "operations", responses((status = 200, body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION"), uptime_s: state.started.elapsed().as_secs() })
}

/// What the server runs on.
#[derive(Serialize, ToSchema)]
pub struct ServerInfo {
    pub version: &'static str,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    /// `local` (a folder) or `s3`.
    pub blob_store: &'static str,
    /// `embedded` (the built-in broker), `external` (UPDRAFT_MQTT_URL) or `off`.
    pub mqtt: &'static str,
    pub uptime_s: u64,
    pub started_at: String,
    /// UPDRAFT_PUBLIC_URL, when set.
    pub public_url: Option<String>,
    /// Single sign-on (OpenID Connect) is configured.
    pub oidc: bool,
    /// Registered devices.
    pub devices: u64,
}

/// What the server runs on: version, database, blob store, MQTT mode, uptime. Any role.
#[utoipa::path(
    get, path = "/api/v1/server", tag = "operations",
    responses((status = 200, body = ServerInfo), (status = 401, body = super::error::ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
async fn server_info(State(state): State<AppState>, _viewer: Viewer) -> super::error::ApiResult<Json<ServerInfo>> {
    let settings = &state.settings;
    let uptime = state.started.elapsed();
    let started_at = chrono::Utc::now() - chrono::Duration::from_std(uptime).unwrap_or_default();
    Ok(Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION"),
        database: crate::services::ops::database_kind(&state.core),
        blob_store: match settings.blob {
            crate::config::BlobSettings::Local { .. } => "local",
            crate::config::BlobSettings::S3(_) => "s3",
        },
        mqtt: match (settings.mqtt.enabled, &settings.mqtt.url) {
            (false, _) => "off",
            (true, Some(_)) => "external",
            (true, None) => "embedded",
        },
        uptime_s: uptime.as_secs(),
        started_at: super::firmware::timestamp(started_at),
        public_url: settings.public_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_string()),
        oidc: state.core.oidc.is_some(),
        devices: crate::services::ops::device_count(&state.core).await?,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    /// `ok`, or why the database does not answer.
    pub database: String,
    /// `ok`, or why the blob store does not answer.
    pub blob_store: String,
}

/// Readiness: 200 when the database and the blob store answer, else 503 with the reason.
#[utoipa::path(
    get, path = "/api/ready", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness))
)]
async fn ready(State(state): State<AppState>) -> Response {
    let (database, blobs) = tokio::join!(
        tokio::time::timeout(std::time::Duration::from_secs(3), crate::services::ops::database_ready(&state.core)),
        tokio::time::timeout(std::time::Duration::from_secs(3), state.core.blobs.check()),
    );
    let describe = |result: Result<crate::domain::Result<()>, tokio::time::error::Elapsed>| match result {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 3 s".to_string(),
    };
    let database = describe(database);
    let blob_store = describe(blobs);
    let is_ready = database == "ok" && blob_store == "ok";
    if !is_ready {
        tracing::warn!(%database, %blob_store, "not ready");
    }
    let status = if is_ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { status: if is_ready { "ready" } else { "unavailable" }, database, blob_store })).into_response()
}

/// Prometheus metrics in the text exposition format. They show the fleet's size and rates
/// (devices, sessions, requests by route): with `UPDRAFT_METRICS_TOKEN` set, a scrape must send
/// `Authorization: Bearer <token>` (401 otherwise, and wrong tokens count in the per-address
/// limiter).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "UPDRAFT_METRICS_TOKEN is set and the request does not carry it", body = super::error::ErrorBody),
        (status = 429, body = super::error::ErrorBody),
    ),
    security((), ("bearer" = []))
)]
async fn prometheus_metrics(State(state): State<AppState>, ClientIp(ip): ClientIp, headers: axum::http::HeaderMap) -> Response {
    if let Some(token) = &state.settings.metrics_token
        && let Err(e) = check_metrics_token(&state, token.expose(), &headers, ip)
    {
        return super::error::ApiError(e).into_response();
    }
    // Totals come from the database at scrape time, so every replica reports the same truth.
    match crate::services::firmware::totals(&state.core).await {
        Ok((count, bytes)) => {
            metrics::gauge!("updraft_artifacts").set(count as f64);
            metrics::gauge!("updraft_artifact_bytes").set(bytes as f64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot total artifacts for metrics"),
    }
    metrics::gauge!("updraft_uptime_seconds").set(state.started.elapsed().as_secs_f64());
    metrics::gauge!("updraft_fleet_index_devices").set(state.core.devices.indexed_devices() as f64);
    metrics::gauge!("updraft_mqtt_connected_devices").set(state.core.devices.connected_count() as f64);
    if let Some(mqtt) = &state.mqtt {
        let status = mqtt.status();
        metrics::gauge!("updraft_mqtt_connected").set(if status.connected { 1.0 } else { 0.0 });
        if let Some(sessions) = status.sessions {
            metrics::gauge!("updraft_mqtt_sessions").set(sessions as f64);
        }
    }
    let mut text = state.metrics.render();
    render_rollout_gauges(&mut text, &crate::services::rollouts::gauges(&state.core));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// `updraft_rollout_devices{rollout,stage,state}` of the rollouts the evaluator looks at now
/// (the metrics recorder would keep every rollout's series for ever).
fn render_rollout_gauges(text: &mut String, gauges: &std::collections::BTreeMap<String, Vec<crate::services::rollouts::StageGauges>>) {
    use std::fmt::Write;
    if gauges.is_empty() {
        return;
    }
    text.push_str("# HELP updraft_rollout_devices Devices of a rollout by stage and state (rollouts running, paused, halted, or in their catch-up period)\n");
    text.push_str("# TYPE updraft_rollout_devices gauge\n");
    for (rollout, stages) in gauges {
        for (index, counts) in stages.iter().enumerate() {
            for (state, count) in crate::services::rollouts::GAUGE_STATES.iter().zip(counts) {
                let _ = writeln!(
                    text,
                    "updraft_rollout_devices{{rollout=\"{}\",stage=\"{}\",state=\"{state}\"}} {count}",
                    escape_label(rollout),
                    index + 1
                );
            }
        }
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    std::borrow::Cow::Owned(value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// A scrape's `Authorization: Bearer` must be the metrics token.
fn check_metrics_token(state: &AppState, token: &str, headers: &axum::http::HeaderMap, ip: std::net::IpAddr) -> Result<(), Error> {
    let limiter = &state.core.devices.limiter;
    limiter.check(ip)?;
    match super::auth::credential(headers, "x-metrics-token") {
        Some(presented) if secret::constant_time_eq(presented, token) => Ok(()),
        Some(_) => {
            limiter.record_failure(ip);
            Err(Error::Unauthenticated("the metrics token is not valid".into()))
        }
        None => Err(Error::Unauthenticated("scrapes need `Authorization: Bearer <UPDRAFT_METRICS_TOKEN>`".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_gauges_render_one_series_per_stage_and_state() {
        let mut text = String::from("updraft_uptime_seconds 1\n");
        render_rollout_gauges(&mut text, &Default::default());
        assert_eq!(text, "updraft_uptime_seconds 1\n", "no rollouts, no family");
        let gauges = [("r-1".to_string(), vec![[1, 2, 3, 4, 5, 6, 7, 8], [9, 0, 0, 0, 0, 0, 0, 0]])].into_iter().collect();
        render_rollout_gauges(&mut text, &gauges);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 2 + 16, "{text}");
        assert_eq!(lines[3], r#"updraft_rollout_devices{rollout="r-1",stage="1",state="pending"} 1"#);
        assert_eq!(lines[10], r#"updraft_rollout_devices{rollout="r-1",stage="1",state="timed_out"} 8"#);
        assert_eq!(lines[11], r#"updraft_rollout_devices{rollout="r-1",stage="2",state="pending"} 9"#);
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
