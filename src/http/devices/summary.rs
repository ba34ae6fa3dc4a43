//! The fleet summary: online and offline counts, and counts by version, product and hardware.

use super::*;

/// Devices with one value of a field; `key` is null for devices without one (a version never
/// reported, no product or hardware set).
#[derive(Serialize, ToSchema)]
pub struct SummaryBucket {
    pub key: Option<String>,
    pub count: u64,
}

/// The fleet at a glance. Every list is sorted by count, largest first.
#[derive(Serialize, ToSchema)]
pub struct FleetSummary {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    pub by_version: Vec<SummaryBucket>,
    pub by_product: Vec<SummaryBucket>,
    pub by_hardware: Vec<SummaryBucket>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// Only this product's devices.
    pub product: Option<String>,
}

/// Counts of the fleet (or of one product's devices): online and offline, and by version,
/// product and hardware, in one pass.
#[utoipa::path(
    get, path = "/api/v1/devices/summary", tag = "devices",
    params(SummaryQuery),
    responses((status = 200, body = FleetSummary), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn device_summary(
    State(state): State<AppState>,
    _viewer: Viewer,
    ApiQuery(query): ApiQuery<SummaryQuery>,
) -> ApiResult<Json<FleetSummary>> {
    let summary = service::summary(&state.core, query.product.as_deref()).await?;
    let buckets = |list: service::Buckets| list.into_iter().map(|(key, count)| SummaryBucket { key, count }).collect();
    Ok(Json(FleetSummary {
        total: summary.total,
        online: summary.online,
        offline: summary.total - summary.online,
        by_version: buckets(summary.by_version),
        by_product: buckets(summary.by_product),
        by_hardware: buckets(summary.by_hardware),
    }))
}
