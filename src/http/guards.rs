//! The one middleware around every route, in this order: paths that do not decode to text
//! are refused (`path_guard`); the request is audited when it is an operator action
//! (`audit`), around the per-credential limits of expensive routes (`limits`, whose
//! refusals are audited too) and the handler. One layer rather than three: device traffic
//! pays one middleware hop, a scan for `%` and two lookups.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use utoipa::openapi::OpenApi;

use super::{AppState, audit, limits, path_guard};

/// What the middleware needs. One reference count: axum clones the state of a middleware for
/// every request, and each atomic increment and decrement of a count shared by all cores
/// shows up on the check-in path (with four separate `Arc`s here, dropping them was 2% of
/// the server's CPU on check-ins; docs/PERFORMANCE.md, "auth").
#[derive(Clone)]
pub struct Guards(Arc<GuardParts>);

struct GuardParts {
    audit: audit::AuditLayer,
    limits: limits::Limits,
}

impl Guards {
    pub fn new(state: AppState, openapi: &OpenApi) -> Guards {
        let limits = limits::Limits::new(&state.settings.limits);
        Guards(Arc::new(GuardParts { audit: audit::AuditLayer::new(state, openapi), limits }))
    }
}

/// The middleware (see the module documentation).
pub async fn guard(State(guards): State<Guards>, request: Request, next: Next) -> Response {
    if let Some(refusal) = path_guard::check(&request) {
        return refusal;
    }
    let limits = &guards.0.limits;
    guards
        .0
        .audit
        .around(request, move |request| async move {
            match limits::check(limits, &request) {
                Some(refusal) => refusal,
                None => next.run(request).await,
            }
        })
        .await
}
