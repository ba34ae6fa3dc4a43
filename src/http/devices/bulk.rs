//! Bulk changes: tags and pins of many devices at once, each through the single-device path.

use super::*;

/// `devices` or `filter` (exactly one), and what to set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDevicesBody {
    /// Device ids or MACs (any accepted form).
    pub devices: Option<Vec<String>>,
    /// Every device the list's filters select (`{}`: every device).
    pub filter: Option<DeviceFilterBody>,
    pub set: BulkSetBody,
}

/// What to change on each device; give at least one field.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkSetBody {
    /// Tags to add.
    #[serde(default)]
    pub tags_add: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub tags_remove: Vec<String>,
    /// Pin this version (refused per device below its product's anti-rollback floor); `null`
    /// unpins; omit to leave pins alone.
    #[serde(default, deserialize_with = "clearable")]
    #[schema(value_type = Option<String>)]
    pub target_version: Option<Option<String>>,
}

/// One device's result.
#[derive(Serialize, ToSchema)]
pub struct BulkItem {
    /// The device's id (or, for an entry of `devices` that names no device, the text given).
    pub device_id: String,
    pub ok: bool,
    /// Written: false when the device already was as asked (or was refused).
    pub changed: bool,
    /// Why it was refused: the code a single `PATCH /api/v1/devices/{id}` would give.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BulkResult {
    /// Devices selected (for `devices`: entries given, duplicates of one device counted once).
    pub matched: usize,
    /// Devices written.
    pub changed: usize,
    pub results: Vec<BulkItem>,
}

/// Add or remove tags and pin or unpin many devices: a list of ids or MACs, or every device a
/// filter of the device list selects (at most 10,000, else 422). Each device is changed as
/// `PATCH /api/v1/devices/{id}` would (the anti-rollback floor included) and succeeds or fails
/// on its own.
#[utoipa::path(
    post, path = "/api/v1/devices/bulk", tag = "devices",
    request_body = BulkDevicesBody,
    responses((status = 200, body = BulkResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, description = "More than 10,000 devices", body = ErrorBody)),
    security(("bearer" = ["admin", "operator"]), ("admin_key" = ["admin", "operator"]))
)]
pub(super) async fn bulk_devices(
    State(state): State<AppState>,
    who: Operator,
    ApiJson(body): ApiJson<BulkDevicesBody>,
) -> ApiResult<Json<BulkResult>> {
    let selection = match (body.devices, &body.filter) {
        (Some(devices), None) => {
            if devices.is_empty() {
                return Err(Error::invalid("invalid_bulk", "`devices` must list at least one device").into());
            }
            service::BulkSelection::Devices(devices)
        }
        (None, Some(fields)) => {
            let (filter, presence) = device_filter(fields, DeviceSort::OldestFirst, 1, 0)?;
            service::BulkSelection::Filter(filter, presence)
        }
        _ => return Err(Error::invalid("invalid_bulk", "give exactly one of `devices` (ids or MACs) and `filter`").into()),
    };
    let change =
        service::BulkChange { tags_add: body.set.tags_add, tags_remove: body.set.tags_remove, target_version: body.set.target_version };
    let items = service::bulk_update(&state.core, selection, change, &who.principal().actor()).await?;
    let results: Vec<BulkItem> = items
        .into_iter()
        .map(|item| match item.outcome {
            Ok(changed) => BulkItem { device_id: item.device_id, ok: true, changed, code: None, message: None },
            Err(e) => BulkItem {
                device_id: item.device_id,
                ok: false,
                changed: false,
                code: Some(e.code().to_string()),
                message: Some(e.to_string()),
            },
        })
        .collect();
    Ok(Json(BulkResult { matched: results.len(), changed: results.iter().filter(|r| r.changed).count(), results }))
}
