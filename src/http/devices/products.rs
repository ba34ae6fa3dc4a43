//! Products: each product's device policy (provisioning, poll interval, hardware, floor).

use super::*;

/// List configured products and their provisioning policy.
#[utoipa::path(
    get, path = "/api/v1/products", tag = "devices",
    responses((status = 200, body = ProductList), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn list_products(State(state): State<AppState>, _viewer: Viewer) -> ApiResult<Json<ProductList>> {
    let products = service::list_products(&state.core).await?;
    Ok(Json(ProductList { items: products.iter().map(product_view).collect() }))
}

/// A product's policy (the defaults when it was never configured).
#[utoipa::path(
    get, path = "/api/v1/products/{name}", tag = "devices",
    params(("name" = String, Path, description = "Product name", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    responses((status = 200, body = ProductView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = ["admin", "operator", "viewer", "provisioner"]), ("admin_key" = ["admin", "operator", "viewer", "provisioner"]))
)]
pub(super) async fn get_product(State(state): State<AppState>, _viewer: Viewer, Path(name): Path<String>) -> ApiResult<Json<ProductView>> {
    let name = crate::domain::firmware::ProductName::parse(&name)?;
    Ok(Json(product_view(&service::get_product(&state.core, &name).await?)))
}

/// Create or change a product's provisioning policy and poll interval. Setting
/// `public_secrets` to true needs the admin role (it publishes configuration secrets).
#[utoipa::path(
    put, path = "/api/v1/products/{name}", tag = "devices",
    params(("name" = String, Path, description = "Product name", pattern = r"^[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}[ \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
    request_body = PutProductBody,
    responses((status = 200, body = ProductView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = ["admin", "provisioner"]), ("admin_key" = ["admin", "provisioner"]))
)]
pub(super) async fn put_product(
    State(state): State<AppState>,
    who: Provisioner,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutProductBody>,
) -> ApiResult<Json<ProductView>> {
    if body.public_secrets.unwrap_or(false) {
        // Publishing configuration secrets to anonymous readers reveals credentials: admin only.
        who.principal().require(crate::domain::auth::Need::Admin)?;
    }
    let provisioning = Provisioning::parse(&body.provisioning)?;
    let min_version =
        body.min_version.map(|v| v.as_deref().map(|v| Version::parse(v).map_err(|e| e.in_field("min_version"))).transpose()).transpose()?;
    let change = service::ProductChange {
        provisioning,
        provision_key: body.provision_key,
        provision_secret: body.provision_secret,
        poll_interval_s: body.poll_interval_s,
        hardware: body.hardware,
        public_secrets: body.public_secrets,
        min_version,
        ddi_gateway_token: body.ddi_gateway_token,
    };
    Ok(Json(product_view(&service::put_product(&state.core, &name, change).await?)))
}
