//! Products: each product's device policy, cached briefly for check-ins, and the operator's changes.

use super::*;

/// An operator's change to a product's device policy (`None`: keep the current value).
pub struct ProductChange {
    pub provisioning: Provisioning,
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    pub poll_interval_s: Option<u32>,
    /// The hardware the product admits; an empty list admits any.
    pub hardware: Option<Vec<String>>,
    pub public_secrets: Option<bool>,
    /// The anti-rollback floor: no pin or rollback below it (`Some(None)` removes it).
    pub min_version: Option<Option<Version>>,
    /// The hawkBit DDI gateway token (`Some(None)` removes it).
    pub ddi_gateway_token: Option<Option<String>>,
}

/// A product's device policy as the operator sees it.
pub struct ProductSettings {
    pub product: Product,
    /// False while nobody configured the product (`product` holds the defaults).
    pub configured: bool,
    /// The anti-rollback floor (canonical version).
    pub min_version: Option<String>,
    /// A hawkBit DDI gateway token is set.
    pub has_ddi_gateway_token: bool,
}

/// Every configured product, by name.
pub async fn list_products(core: &Core) -> Result<Vec<ProductSettings>> {
    let products = core.store.list_products().await?;
    let mut settings = Vec::with_capacity(products.len());
    for product in products {
        let min_version = core.store.product_min_version(&product.name).await?;
        let has_ddi_gateway_token = core.store.has_ddi_gateway_token(&product.name).await?;
        settings.push(ProductSettings { product, configured: true, min_version, has_ddi_gateway_token });
    }
    Ok(settings)
}

/// A product's policy, or the defaults when it was never configured.
pub async fn get_product(core: &Core, name: &ProductName) -> Result<ProductSettings> {
    let configured = core.store.find_product(name.as_str()).await?.is_some();
    let product = product_policy(core, name.as_str()).await?;
    let min_version = core.store.product_min_version(&product.name).await?;
    let has_ddi_gateway_token = core.store.has_ddi_gateway_token(&product.name).await?;
    Ok(ProductSettings { product, configured, min_version, has_ddi_gateway_token })
}

/// Creates or replaces a product's device policy, and its anti-rollback floor when the change
/// names one, in one transaction.
pub async fn put_product(core: &Core, name: &str, change: ProductChange) -> Result<ProductSettings> {
    let name = ProductName::parse(name)?;
    let existing = core.store.find_product(&name).await?;
    let provision_secret_hash = match (&change.provision_secret, &existing) {
        (Some(secret_text), _) => {
            device::check_provision_secret(secret_text)?;
            Some(secret::digest_hex(secret_text))
        }
        (None, Some(existing)) => existing.provision_secret_hash.clone(),
        (None, None) => None,
    };
    let provision_key = change.provision_key.or_else(|| existing.as_ref().and_then(|p| p.provision_key.clone()));
    let provisioning = change.provisioning;
    let poll_interval_s =
        change.poll_interval_s.or(existing.as_ref().map(|p| p.poll_interval_s)).unwrap_or(core.devices.policy.default_poll_interval_s);
    let hardware = match change.hardware {
        Some(list) => device::hardware_list(&list)?,
        None => existing.as_ref().map(|p| p.hardware.clone()).unwrap_or_default(),
    };
    let public_secrets = change.public_secrets.or(existing.as_ref().map(|p| p.public_secrets)).unwrap_or(false);
    let now = Utc::now();
    let min_version = change.min_version.map(|floor| floor.map(|v| v.canonical()));
    let gateway_token_hash = match &change.ddi_gateway_token {
        Some(Some(token)) => {
            let length = token.chars().count();
            if !(device::MIN_PROVISION_SECRET_LEN..=128).contains(&length) || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::invalid("invalid_ddi_gateway_token", "ddi_gateway_token must be 16 to 128 characters without spaces"));
            }
            Some(Some(secret::digest_hex(token)))
        }
        Some(None) => Some(None),
        None => None,
    };
    let product = Product {
        name,
        provisioning,
        provision_key,
        provision_secret_hash,
        poll_interval_s,
        hardware,
        public_secrets,
        created_at: now,
        updated_at: now,
    };
    device::check_product(&product)?;
    let product = core.store.upsert_product(&product, min_version.as_ref().map(Option::as_deref)).await?;
    if let Some(hash) = gateway_token_hash {
        core.store.set_ddi_gateway_token(&product.name, hash.as_deref()).await?;
    }
    core.devices.products.write().expect("cache lock").remove(product.name.as_str());
    core.devices.caches.forget_product_names();
    // Connected devices get the new poll interval with their next `ota` message, now.
    core.events.publish(Event::ProductUpdated { product: product.name.to_string() });
    if product.public_secrets {
        tracing::warn!(product = %product.name, "product serves secret configuration values to anonymous seed-003 readers (public_secrets)");
    }
    let min_version = core.store.product_min_version(&product.name).await?;
    let has_ddi_gateway_token = core.store.has_ddi_gateway_token(&product.name).await?;
    Ok(ProductSettings { product, configured: true, min_version, has_ddi_gateway_token })
}

/// The product's policy, or the default policy for products nobody configured. Cached
/// briefly: it is read on every check-in.
pub async fn product_policy(core: &Core, name: &str) -> Result<Product> {
    if let Some((product, fetched)) = core.devices.products.read().expect("cache lock").get(name)
        && fetched.elapsed() < CACHE_TTL
    {
        return Ok(product.clone());
    }
    let product = load_product_policy(core, name).await?;
    core.devices.products.write().expect("cache lock").insert(name.to_string(), (product.clone(), Instant::now()));
    Ok(product)
}

pub(super) async fn load_product_policy(core: &Core, name: &str) -> Result<Product> {
    if let Some(product) = core.store.find_product(name).await? {
        return Ok(product);
    }
    let now = Utc::now();
    Ok(Product {
        name: ProductName::parse(name)?,
        provisioning: core.devices.policy.default_provisioning,
        provision_key: None,
        provision_secret_hash: None,
        poll_interval_s: core.devices.policy.default_poll_interval_s,
        hardware: Vec::new(),
        public_secrets: false,
        created_at: now,
        updated_at: now,
    })
}
