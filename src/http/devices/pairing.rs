//! Pair keys for binding devices to owners.

use super::*;

/// Create a short-lived, single-use pair key for an owner. The owner's phone app hands it
/// to the device with the Wi-Fi credentials; the device presents it at `POST /api/v1/device/pair`.
#[utoipa::path(
    post, path = "/api/v1/pairing", tag = "devices",
    request_body = CreatePairingBody,
    responses((status = 201, body = PairKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "provisioner"]), ("admin_key" = ["admin", "provisioner"]))
)]
pub(super) async fn create_pairing(
    State(state): State<AppState>,
    _who: Provisioner,
    ApiJson(body): ApiJson<CreatePairingBody>,
) -> ApiResult<(StatusCode, Json<PairKey>)> {
    let (pair_key, expires_at) = service::create_pair_key(&state.core, &body.owner, body.ttl_s.map(Duration::from_secs)).await?;
    Ok((StatusCode::CREATED, Json(PairKey { pair_key, expires_at: timestamp(expires_at) })))
}
