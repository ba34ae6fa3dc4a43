//! Update attempts across the fleet (recent failures, updates in flight).

use super::*;
use crate::domain::device::AttemptFilter;
use crate::domain::device::UpdateState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UpdateListQuery {
    /// One state or a comma-separated list: offered, downloading, downloaded, installing,
    /// installed, succeeded, failed, rejected [default: any].
    #[param(schema_with = crate::http::schemas::update_states)]
    pub state: Option<String>,
    /// RFC 3339 time: attempts that changed at or after it.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only devices of this product.
    pub product: Option<String>,
    /// Page size, 1-500 [default: 50].
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    #[param(maximum = 1099511627776_u64)]
    pub offset: Option<u64>,
}

/// An update attempt with its device.
#[derive(Serialize, ToSchema)]
pub struct UpdateItem {
    #[serde(flatten)]
    pub attempt: AttemptView,
    pub device_id: String,
    pub device_name: String,
    pub mac: String,
    pub product: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct UpdatePage {
    pub items: Vec<UpdateItem>,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Update attempts across the fleet, most recently changed first: for example the recent
/// failures (`?state=failed&since=2026-11-23T00:00:00Z`).
#[utoipa::path(
    get, path = "/api/v1/updates", tag = "devices",
    params(UpdateListQuery),
    responses((status = 200, body = UpdatePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn fleet_updates(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<UpdateListQuery>,
) -> ApiResult<Json<UpdatePage>> {
    let crate::http::page::Page { limit, offset } = crate::http::page::page(query.limit, query.offset)?;
    let mut states = Vec::new();
    if let Some(text) = &query.state {
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let state = UpdateState::parse_name(name).ok_or_else(|| {
                Error::invalid(
                    "invalid_query",
                    format!(
                        "state `{name}` is not one of offered, downloading, downloaded, installing, installed, succeeded, failed, rejected"
                    ),
                )
            })?;
            if !states.contains(&state) {
                states.push(state);
            }
        }
    }
    let since = match &query.since {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| Error::invalid("invalid_query", "since must be an RFC 3339 time such as 2026-11-23T12:00:00Z"))?
                .timestamp_millis(),
        ),
    };
    let filter = AttemptFilter { states, since, product: query.product.clone(), limit, offset };
    let (attempts, total) = service::fleet_updates(&state.core, &filter).await?;
    let items = attempts
        .iter()
        .map(|a| UpdateItem {
            attempt: attempt_view(&a.attempt),
            device_id: a.attempt.device_id.to_string(),
            device_name: a.device_name.clone(),
            mac: a.mac.clone(),
            product: a.product.clone(),
        })
        .collect();
    Ok(Json(UpdatePage { items, total, limit, offset }))
}
