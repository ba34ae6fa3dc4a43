//! The HTTP adapter: routes, shared state and middleware. Handlers decode requests, call
//! `services` (never `storage`), and encode responses; each module owns its wire types.

pub mod accounts;
pub mod assets;
pub mod audit;
pub mod auth;
pub mod body_guard;
pub mod compat;
pub mod compat_seed003;
pub mod conditional;
pub mod config;
pub mod device_api;
pub mod devices;
pub mod download;
pub mod error;
pub mod firmware;
pub mod flash;
pub mod forwarded;
pub mod guards;
pub mod limits;
pub mod mqtt;
pub mod oidc;
pub mod ops;
pub mod page;
pub mod path_guard;
pub mod range;
pub mod roles;
pub mod rollouts;
pub mod schemas;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::config::Settings;
use crate::domain::Error;
use crate::services::Core;
use error::ApiError;

/// Largest JSON request body.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// Shared state of every handler. Cheap to clone (one reference count): axum clones it for
/// every extractor of every request.
#[derive(Clone)]
pub struct AppState(Arc<AppStateParts>);

impl std::ops::Deref for AppState {
    type Target = AppStateParts;

    fn deref(&self) -> &AppStateParts {
        &self.0
    }
}

impl From<AppStateParts> for AppState {
    fn from(parts: AppStateParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

/// What an `AppState` holds; reached through its `Deref`.
pub struct AppStateParts {
    pub core: Core,
    pub settings: Arc<Settings>,
    pub admin_key_digest: [u8; 32],
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// esp32FOTA signing keys by product (`UPDRAFT_COMPAT_ESP32FOTA_KEYS_DIR`).
    pub fota_signer: Arc<crate::services::compat::FotaSigner>,
    /// The MQTT side (None when switched off).
    pub mqtt: Option<Arc<crate::mqtt::Mqtt>>,
}

impl AppState {
    /// The base URL for links: `UPDRAFT_PUBLIC_URL`, else the request's Host (and, behind a
    /// trusted proxy, `X-Forwarded-Proto`/`-Host`: `forwarded::resolve` leaves these headers
    /// only on requests that came through one, set to the values it resolved).
    pub fn base_url(&self, headers: Option<&HeaderMap>) -> String {
        if let Some(url) = &self.settings.public_url {
            return url.as_str().trim_end_matches('/').to_string();
        }
        let header = |name: &str| headers.and_then(|h| h.get(name)).and_then(|v| v.to_str().ok()).map(str::to_string);
        let host = header("x-forwarded-host")
            .or_else(|| header("host"))
            .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')))
            .unwrap_or_else(|| self.settings.listen.to_string());
        let scheme = header("x-forwarded-proto")
            .filter(|p| p == "http" || p == "https")
            .unwrap_or_else(|| if self.settings.tls.is_some() { "https".into() } else { "http".into() });
        format!("{scheme}://{host}")
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Updraft",
        description = "Fleet server for ESP32-class devices: firmware store, device registry, rollouts, configuration.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "firmware", description = "Firmware builds (admin)"),
        (name = "devices", description = "Device registry, products, pairing, live events (admin)"),
        (name = "rollouts", description = "Releases, device groups and staged rollouts (admin)"),
        (name = "device", description = "The native device protocol (device token)"),
        (name = "configuration", description = "Layered, versioned device configuration (admin)"),
        (name = "assets", description = "Signed assets, public keys, LVGL image conversion"),
        (name = "seed-003", description = "Compatibility with seed 003 (IoT Support Backend): configs, signed assets, LVGL image proxy"),
        (name = "mqtt", description = "MQTT: broker status, credentials, device commands and telemetry, auth hooks for external brokers"),
        (name = "operations", description = "Health, readiness, metrics"),
        (name = "accounts", description = "Operators: users, API keys, browser sessions (admin; own session: any role)"),
        (name = "audit", description = "The audit log of operator actions (admin)"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("admin_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Admin-API-Key"))));
        components.add_security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(accounts::SESSION_COOKIE))));
        components.add_security_scheme("device_token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(firmware::router())
        .merge(flash::router())
        .merge(devices::router())
        .merge(rollouts::router())
        .merge(device_api::router())
        .merge(compat::cyberdeck::admin_router())
        .merge(config::router())
        .merge(assets::router())
        .merge(compat_seed003::router())
        .merge(mqtt::router())
        .merge(oidc::router())
        .merge(ops::router())
        .merge(accounts::router())
        .merge(audit::router())
}

/// The OpenAPI document, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = api_router().split_for_parts().1;
    roles::describe_roles(&mut openapi);
    schemas::describe_inputs(&mut openapi);
    openapi
}

/// The complete application router.
pub fn router(state: AppState) -> Router {
    let (api, mut openapi) = api_router().split_for_parts();
    roles::describe_roles(&mut openapi);
    schemas::describe_inputs(&mut openapi);
    let guards = guards::Guards::new(state.clone(), &openapi);
    let docs = ops::docs_router(&openapi);
    drop(openapi);
    let sensitive: Arc<[HeaderName]> = Arc::new([
        header::AUTHORIZATION,
        header::COOKIE,
        HeaderName::from_static("x-admin-api-key"),
        HeaderName::from_static("x-device-token"),
        HeaderName::from_static(accounts::CSRF_HEADER),
    ]);
    let request_id = HeaderName::from_static("x-request-id");

    let compat = compat::router(&state.settings.compat);
    let router = api
        .merge(docs)
        .merge(compat)
        .merge(web::router(state.settings.dashboard_enabled))
        // Upload bodies are limited by the handler itself (UPDRAFT_MAX_UPLOAD_BYTES); everything
        // else by this layer.
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(guards, guards::guard))
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn_with_state(state.clone(), body_guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), forwarded::resolve))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            // The path only: query strings may carry signed download tokens.
            // Device tokens in paths (ThingsBoard's HTTP API) are cut (`redact_path`).
            tracing::info_span!("http", method = %request.method(), path = %redact_path(request.uri().path()), request_id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::from_shared(sensitive));
    let router = match cors_layer(&state.settings.accounts.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(state)
}

/// CORS for `UPDRAFT_CORS_ORIGINS` (None without origins: no CORS headers at all): exactly
/// those origins, with credentials (the session cookie), and the headers operators send.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<axum::http::HeaderValue> = origins.iter().filter_map(|o| axum::http::HeaderValue::from_str(o).ok()).collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                HeaderName::from_static("x-admin-api-key"),
                HeaderName::from_static(accounts::CSRF_HEADER),
            ])
            .expose_headers([header::ETAG, header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
            .max_age(Duration::from_secs(600)),
    )
}

/// Unmatched requests: a browser navigating to one of the dashboard's own routes gets the
/// app (`web::wants_app`); everyone else the JSON 404.
async fn not_found(state: axum::extract::State<AppState>, method: Method, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if web::wants_app(&state, &method, &uri, &headers) {
        return web::index(state).await;
    }
    ApiError(Error::not_found("route", redact_path(uri.path()))).into_response()
}

/// A path as logs, metrics and error bodies may show it: a segment holding a device token
/// (ThingsBoard's HTTP API puts it in the path) is cut to its prefix, `upd_dev_…`.
pub fn redact_path(path: &str) -> std::borrow::Cow<'_, str> {
    const PREFIX: &str = "upd_dev_";
    if !path.contains(PREFIX) {
        return std::borrow::Cow::Borrowed(path);
    }
    let redacted: Vec<&str> = path.split('/').map(|segment| if segment.contains(PREFIX) { "upd_dev_\u{2026}" } else { segment }).collect();
    std::borrow::Cow::Owned(redacted.join("/"))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    let mut response =
        ApiError(Error::invalid("method_not_allowed", format!("{method} is not allowed on {}", redact_path(uri.path())))).into_response();
    *response.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    response
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError(Error::Internal(anyhow::anyhow!("a request handler panicked"))).into_response()
}

/// Request count and latency by route template and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed();
    metrics::counter!("updraft_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status).increment(1);
    metrics::histogram!("updraft_http_request_duration_seconds", "route" => route, "method" => method).record(elapsed.as_secs_f64());
    response
}

/// Histogram buckets for request latency, in seconds.
pub const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub fn idle_timeout() -> Duration {
    Duration::from_secs(60)
}
