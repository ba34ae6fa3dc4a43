//! The audit log's HTTP side: the middleware that records every state-changing operator
//! request (and every refused attempt on an operator route), and the admin routes that read
//! the log (`GET /api/v1/audit`, `GET /api/v1/audit/export`).
//!
//! Which routes are audited is decided once, at start, from the OpenAPI document: a route
//! whose every security requirement names an operator credential (not only the device
//! token, and never "no credential") is an operator route, and its `operationId` is the
//! record's action. Undocumented seed-001 admin routes (`/admin/api/...`) are operator
//! routes too, named `METHOD /template`; `ALWAYS` lists the public routes that are operator
//! actions (logins). Device traffic, broker hooks and public reads are never audited, and pay
//! one map lookup.
//!
//! On an operator route, the middleware puts an `ActorSlot` and an `AuditNote` into the
//! request before the handler (the authentication extractors fill the slot, even when they
//! then refuse the role), and after the answer queues a record for unsafe methods, and for
//! safe ones answered 401, 403 or 429. A record holds no body, no query string and no header
//! but the request id (see `domain::audit`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Extensions, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::{ActorSlot, Admin};
use super::error::{ApiQuery, ApiResult, ErrorBody};
use super::forwarded::ClientView;
use crate::domain::Error;
use crate::domain::audit::{self as rules, ANONYMOUS, AuditFilter, AuditRecord, Outcome};
use crate::net::ClientAddr;
use crate::services::audit as service;

/// Public routes (no operator credential) that are operator actions all the same: logins and
/// logouts, and seed 003's signed asset upload. Every method listed is audited.
pub const ALWAYS: &[(&str, &str)] =
    &[("POST", "/api/v1/session"), ("DELETE", "/api/v1/session"), ("GET", "/api/v1/session/oidc/callback"), ("POST", "/api/assets")];

/// The prefix of seed 001's admin API, which the OpenAPI document does not list.
const SEED001_ADMIN: &str = "/admin/api/";

/// Something a handler adds to its request's audit record, for what the middleware cannot
/// see: for example `POST /api/v1/session` notes the user name a failed login tried
/// (`AuditNote::set(&parts.extensions, format!("username={name}"))`). Never a secret: the
/// note is stored as given (cut and escaped). Only requests of audited routes carry one; on
/// others `set` does nothing.
///
/// A handler that authenticates by itself rather than through the `Authorized` extractors
/// (a successful login) names its principal with `auth::ActorSlot::fill`, so that the record's
/// actor is the user who logged in rather than `anonymous`.
#[derive(Clone, Default)]
pub struct AuditNote(Arc<OnceLock<String>>);

impl AuditNote {
    /// Sets the note of the request whose extensions these are (the first one set wins).
    pub fn set(extensions: &Extensions, note: impl Into<String>) {
        if let Some(slot) = extensions.get::<AuditNote>() {
            let _ = slot.0.set(rules::clean(&note.into()));
        }
    }
}

/// How one audited route is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Audited {
    method: Method,
    /// The operationId, or `METHOD /template`.
    action: Arc<str>,
    /// Record every request, whatever its method and status (`ALWAYS`).
    always: bool,
}

/// The audited routes by template, built once from the OpenAPI document.
#[derive(Debug, Default)]
pub struct AuditedRoutes(HashMap<String, Vec<Audited>>);

impl AuditedRoutes {
    pub fn from_openapi(openapi: &OpenApi) -> AuditedRoutes {
        let mut routes = AuditedRoutes::default();
        for (path, item) in &openapi.paths.paths {
            let operations = [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::PATCH, &item.patch),
                (Method::DELETE, &item.delete),
                (Method::HEAD, &item.head),
                (Method::OPTIONS, &item.options),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let always = ALWAYS.iter().any(|(m, p)| *m == method.as_str() && p == path);
                let operator = operation.security.as_ref().is_some_and(|requirements| {
                    let json = serde_json::to_value(requirements).unwrap_or_default();
                    let requirements = json.as_array().cloned().unwrap_or_default();
                    !requirements.is_empty()
                        && requirements.iter().all(|requirement| {
                            requirement.as_object().is_some_and(|schemes| !schemes.is_empty() && !schemes.contains_key("device_token"))
                        })
                });
                if operator || always {
                    let action = operation.operation_id.clone().unwrap_or_else(|| format!("{method} {path}"));
                    routes.add(path, Audited { method: method.clone(), action: action.into(), always });
                }
            }
        }
        for (method, path) in ALWAYS {
            let method = Method::from_bytes(method.as_bytes()).expect("a method name");
            if routes.find(&method, path).is_none() {
                routes.add(path, Audited { action: format!("{method} {path}").into(), method, always: true });
            }
        }
        routes
    }

    fn add(&mut self, path: &str, audited: Audited) {
        self.0.entry(path.to_string()).or_default().push(audited);
    }

    fn find(&self, method: &Method, template: &str) -> Option<&Audited> {
        self.0.get(template)?.iter().find(|audited| audited.method == *method)
    }

    /// The action of an audited request (seed 001's admin routes included), if it is one.
    fn action(&self, method: &Method, template: &str) -> Option<(Arc<str>, bool)> {
        if let Some(audited) = self.find(method, template) {
            return Some((audited.action.clone(), audited.always));
        }
        template.starts_with(SEED001_ADMIN).then(|| (Arc::from(format!("{method} {template}")), false))
    }

    /// The actions of the audited routes: `(method, template, action)`, sorted (for tests
    /// and docs).
    pub fn list(&self) -> Vec<(String, String, String)> {
        let mut list: Vec<_> = self
            .0
            .iter()
            .flat_map(|(path, audited)| audited.iter().map(move |a| (a.method.to_string(), path.clone(), a.action.to_string())))
            .collect();
        list.sort();
        list
    }
}

/// Refusals of anonymous requests (no or a wrong credential) recorded per address per
/// minute, and in all per second, at most; the rest are counted in
/// `updraft_audit_refusals_unrecorded_total` and summed up in a warning once a minute. A
/// flood of unauthenticated requests must not fill the database or hold operators' records
/// back in the queue.
pub const REFUSALS_PER_ADDRESS_PER_MIN: u32 = 30;
pub const REFUSALS_PER_SEC: u32 = 100;
/// Addresses whose refusals are counted at once, at most.
const REFUSAL_ADDRESSES: usize = 10_000;

/// The budget of recorded anonymous refusals (see `REFUSALS_PER_ADDRESS_PER_MIN`).
#[derive(Default)]
struct RefusalBudget {
    per_address: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// This second's count, and when it began.
    global: Mutex<(u32, Option<Instant>)>,
    /// Unrecorded since the last warning, and when that was.
    unrecorded: Mutex<(u64, Option<Instant>)>,
}

impl RefusalBudget {
    /// Whether a refusal of `ip` at `now` is recorded.
    fn allow(&self, ip: Option<IpAddr>, now: Instant) -> bool {
        let minute = Duration::from_secs(60);
        if let Some(ip) = ip {
            let mut per_address = self.per_address.lock().expect("refusal budget lock");
            if per_address.len() >= REFUSAL_ADDRESSES && !per_address.contains_key(&ip) {
                per_address.retain(|_, (_, start)| now.duration_since(*start) < minute);
                if per_address.len() >= REFUSAL_ADDRESSES {
                    per_address.clear();
                }
            }
            let entry = per_address.entry(ip).or_insert((0, now));
            if now.duration_since(entry.1) >= minute {
                *entry = (0, now);
            }
            if entry.0 >= REFUSALS_PER_ADDRESS_PER_MIN {
                drop(per_address);
                return self.unrecorded(now);
            }
            entry.0 += 1;
        }
        let mut global = self.global.lock().expect("refusal budget lock");
        if global.1.is_none_or(|start| now.duration_since(start) >= Duration::from_secs(1)) {
            *global = (0, Some(now));
        }
        if global.0 >= REFUSALS_PER_SEC {
            drop(global);
            return self.unrecorded(now);
        }
        global.0 += 1;
        true
    }

    /// Counts a refusal left unrecorded; false.
    fn unrecorded(&self, now: Instant) -> bool {
        metrics::counter!("updraft_audit_refusals_unrecorded_total").increment(1);
        let mut unrecorded = self.unrecorded.lock().expect("refusal budget lock");
        unrecorded.0 += 1;
        if unrecorded.1.is_none_or(|last| now.duration_since(last) >= Duration::from_secs(60)) {
            tracing::warn!(
                unrecorded = unrecorded.0,
                "a flood of unauthenticated requests to operator routes: their refusals beyond {REFUSALS_PER_ADDRESS_PER_MIN} \
                 per address per minute and {REFUSALS_PER_SEC} per second are counted, not recorded one by one"
            );
            *unrecorded = (0, Some(now));
        }
        false
    }
}

/// What the middleware needs: the services, the audited routes and the refusal budget.
#[derive(Clone)]
pub struct AuditLayer {
    state: AppState,
    routes: Arc<AuditedRoutes>,
    refusals: Arc<RefusalBudget>,
}

impl AuditLayer {
    pub fn new(state: AppState, openapi: &OpenApi) -> AuditLayer {
        AuditLayer { state, routes: Arc::new(AuditedRoutes::from_openapi(openapi)), refusals: Arc::default() }
    }
}

impl AuditLayer {
    /// Runs `inner` (the rest of the request) and records the request when it is audited
    /// (see the module documentation); `http::guards` calls it around every route.
    pub async fn around<F, Fut>(&self, request: Request, inner: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let Some(template) = request.extensions().get::<MatchedPath>() else {
            return inner(request).await;
        };
        let Some((action, always)) = self.routes.action(request.method(), template.as_str()) else {
            return inner(request).await;
        };
        let template = template.clone();
        self.record(request, template, action, always, inner).await
    }

    async fn record<F, Fut>(&self, mut request: Request, template: MatchedPath, action: Arc<str>, always: bool, inner: F) -> Response
    where
        F: FnOnce(Request) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let layer = self;
        // Cheap clones (reference counts): the text is made only for requests that are recorded.
        let uri = request.uri().clone();
        let request_id = request.headers().get("x-request-id").cloned();
        let method = request.method().clone();
        let safe = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
        let slot = ActorSlot::default();
        let note = AuditNote::default();
        request.extensions_mut().insert(slot.clone());
        request.extensions_mut().insert(note.clone());
        let ip = request
            .extensions()
            .get::<ClientView>()
            .map(|view| view.ip)
            .or_else(|| request.extensions().get::<ConnectInfo<ClientAddr>>().map(|ConnectInfo(addr)| addr.0.ip()));

        let response = inner(request).await;

        let status = response.status().as_u16();
        let outcome = Outcome::of_status(status);
        if safe && !always && outcome != Outcome::Denied {
            return response;
        }
        let principal = slot.get();
        if principal.is_none() && outcome == Outcome::Denied && !layer.refusals.allow(ip, Instant::now()) {
            return response;
        }
        let route = template.as_str().to_string();
        let redacted = super::redact_path(uri.path());
        let target = redacted.as_ref();
        let request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).map(rules::clean);
        let record = AuditRecord {
            id: uuid::Uuid::now_v7().to_string(),
            at: Utc::now(),
            actor: principal.map_or_else(|| ANONYMOUS.to_string(), |p| rules::clean(&p.actor())),
            role: principal.map(|p| p.role.as_str().to_string()),
            action: action.to_string(),
            method: method.to_string(),
            resource: rules::resource_of(&route, target),
            target: rules::clean(target),
            route,
            ip: ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
            status,
            outcome,
            request_id,
            note: note.0.get().cloned(),
        };
        layer.state.core.audit.record(&layer.state.core.store, record).await;
        response
    }
}

// ---- the routes ----

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit)).routes(routes!(export_audit))
}

/// One audited request.
#[derive(Serialize, ToSchema)]
pub struct AuditRecordView {
    pub id: String,
    pub at: DateTime<Utc>,
    /// `user:alice`, `key:ci`, `oidc:bob`, or `anonymous` (no or a wrong credential).
    pub actor: String,
    /// The actor's role, when it authenticated.
    pub role: Option<String>,
    /// The OpenAPI operationId of the route (e.g. `create_rollout`), or `METHOD /template`
    /// for routes the document does not list (seed 001's `/admin/api/...`).
    pub action: String,
    pub method: String,
    /// The route template, e.g. `/api/v1/devices/{id}`.
    pub route: String,
    /// The path requested (never its query string).
    pub target: String,
    /// The values of the route's path parameters, joined by `/` (the resource acted on).
    pub resource: Option<String>,
    /// The client's address (behind a trusted proxy, the address it forwarded).
    pub ip: String,
    /// The HTTP status answered.
    pub status: u16,
    /// `ok` (2xx, 3xx), `denied` (401, 403, 429) or `failed`.
    pub result: String,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// What the handler added, e.g. the user name a failed login tried.
    pub note: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRecordView>,
    pub total: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this actor (`user:alice`, `key:ci`, `anonymous`).
    pub actor: Option<String>,
    /// Only this action (an operationId such as `put_user`, or `METHOD /template`).
    pub action: Option<String>,
    /// At or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// `ok`, `denied`, `failed`, or a status code such as `403`.
    #[param(pattern = r"^(?:ok|denied|failed|[1-5][0-9]{2})$")]
    pub result: Option<String>,
    /// 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// At or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
}

fn view(record: AuditRecord) -> AuditRecordView {
    AuditRecordView {
        id: record.id,
        at: record.at,
        actor: record.actor,
        role: record.role,
        action: record.action,
        method: record.method,
        route: record.route,
        target: record.target,
        resource: record.resource,
        ip: record.ip,
        status: record.status,
        result: record.outcome.as_str().to_string(),
        request_id: record.request_id,
        note: record.note,
    }
}

fn filter_of(query: AuditQuery) -> Result<AuditFilter, Error> {
    let mut filter = AuditFilter { actor: query.actor, action: query.action, since: query.since, until: query.until, ..Default::default() };
    match query.result.as_deref() {
        None => {}
        Some(text) => match (Outcome::parse(text), text.parse::<u16>()) {
            (Some(outcome), _) => filter.outcome = Some(outcome),
            (None, Ok(status)) if (100..=599).contains(&status) => filter.status = Some(status),
            _ => {
                return Err(Error::invalid("invalid_query", "result must be ok, denied, failed or a status code (100-599)"));
            }
        },
    }
    Ok(filter)
}

/// The audit log, newest first: every state-changing operator request (MQTT credentials,
/// seed-001 admin routes and logins included) and every refused attempt on an operator route,
/// with who, what, target, when, from where and the result. Admin only.
#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]))
)]
async fn list_audit(State(state): State<AppState>, _admin: Admin, ApiQuery(query): ApiQuery<AuditQuery>) -> ApiResult<Json<AuditPage>> {
    let super::page::Page { limit, offset } = super::page::page(query.limit, query.offset)?;
    let filter = filter_of(query)?;
    let (records, total) = service::list(&state.core, &filter, limit, offset).await?;
    Ok(Json(AuditPage { items: records.into_iter().map(view).collect(), total }))
}

/// The audit log as JSON lines (`application/x-ndjson`), oldest first, one record (the same
/// fields as `GET /api/v1/audit`) per line; streamed. Admin only.
#[utoipa::path(
    get, path = "/api/v1/audit/export", tag = "audit",
    params(ExportQuery),
    responses(
        (status = 200, description = "One JSON record per line", content_type = "application/x-ndjson", body = AuditRecordView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)
    ),
    security(("bearer" = ["admin"]), ("admin_key" = ["admin"]))
)]
async fn export_audit(State(state): State<AppState>, _admin: Admin, ApiQuery(query): ApiQuery<ExportQuery>) -> Response {
    let filter = AuditFilter { since: query.since, until: query.until, ..Default::default() };
    let batches = service::export(&state.core, filter).await;
    let body = batches.map(|batch| {
        let records = batch.inspect_err(|e| tracing::error!(error = %e, "the audit export stopped"))?;
        let mut lines = Vec::with_capacity(records.len() * 256);
        for record in records {
            serde_json::to_writer(&mut lines, &view(record)).map_err(|e| Error::Internal(e.into()))?;
            lines.push(b'\n');
        }
        Ok::<_, Error>(Bytes::from(lines))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_refusals_are_recorded_up_to_a_budget_per_address_and_in_all() {
        let budget = RefusalBudget::default();
        let now = Instant::now();
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        let recorded = (0..100).filter(|_| budget.allow(Some(attacker), now)).count();
        assert_eq!(recorded, REFUSALS_PER_ADDRESS_PER_MIN as usize);
        assert!(budget.allow(Some("10.0.0.2".parse().unwrap()), now), "another address has its own budget");
        assert!(budget.allow(Some(attacker), now + Duration::from_secs(61)), "a minute later the address is recorded again");
        // Many addresses at once: at most REFUSALS_PER_SEC a second in all.
        let later = now + Duration::from_secs(200);
        let recorded = (0..1000u32).filter(|i| budget.allow(Some(IpAddr::from(i.to_be_bytes())), later)).count();
        assert_eq!(recorded, REFUSALS_PER_SEC as usize);
    }

    #[test]
    fn operator_routes_are_audited_and_device_and_public_ones_are_not() {
        let routes = AuditedRoutes::from_openapi(&super::super::openapi());
        let action = |method: Method, path: &str| routes.action(&method, path).map(|(action, _)| action.to_string());
        assert_eq!(action(Method::PUT, "/api/v1/mqtt/users/{username}").as_deref(), Some("put_user"));
        assert_eq!(action(Method::POST, "/api/v1/rollouts").as_deref(), Some("create_rollout"));
        assert_eq!(action(Method::GET, "/api/v1/devices").as_deref(), Some("list_devices"));
        assert_eq!(action(Method::DELETE, "/admin/api/devices/{mac}").as_deref(), Some("DELETE /admin/api/devices/{mac}"));
        assert_eq!(routes.action(&Method::POST, "/api/v1/session").map(|(_, always)| always), Some(true));
        for (method, path) in [
            (Method::POST, "/api/v1/device/checkin"),
            (Method::GET, "/api/v1/device/checkin"),
            (Method::POST, "/api/v1/device/provision"),
            (Method::GET, "/api/v1/device/firmware/{id}"),
            (Method::POST, "/api/v1/mqtt/hooks/mosquitto/user"),
            (Method::GET, "/api/images/lvgl"),
            (Method::GET, "/api/configs/{mac}"),
            (Method::GET, "/metrics"),
            (Method::GET, "/api/v1/keys"),
            (Method::GET, "/api/firmware"),
        ] {
            assert_eq!(action(method.clone(), path), None, "{method} {path}");
        }
    }
}
