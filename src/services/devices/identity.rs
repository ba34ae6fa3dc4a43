//! Identity: device tokens (authentication, the fleet index's misses, its preload), provisioning under each product's mode, and token issue and revocation.

use super::*;

/// The device a token belongs to, from the fleet index (or the database on a miss).
/// Failures count against the caller's address.
pub async fn authenticate(core: &Core, token: Option<&str>, ip: IpAddr) -> Result<Arc<ActiveDevice>> {
    let runtime = &core.devices;
    // A device's client-credentials token from the OpenID provider (services::oidc).
    if let Some(token) = token
        && let Some(oidc) = core.oidc.as_ref().filter(|o| o.accepts_devices())
        && crate::services::oidc::claims::looks_like_jwt(token)
    {
        return crate::services::oidc::authenticate_device(core, oidc, token, ip).await;
    }
    runtime.limiter.check(ip)?;
    let Some(token) = token.filter(|t| !t.is_empty() && t.len() <= 256) else {
        return Err(Error::Unauthenticated(
            "a device token is required: send `Authorization: Bearer <token>` or `X-Device-Token: <token>`".into(),
        ));
    };
    match device_of_token(core, token).await? {
        Some(device) => Ok(device),
        None => {
            runtime.limiter.record_failure(ip);
            Err(Error::Unauthenticated("the device token is not valid".into()))
        }
    }
}

/// The device a token belongs to, if any, without counting a miss as a failed login (for
/// callers that try a credential as a token first, like the MQTT broker).
pub async fn device_of_token(core: &Core, token: &str) -> Result<Option<Arc<ActiveDevice>>> {
    let runtime = &core.devices;
    let digest = secret::digest(token);
    if let Some(device) = runtime.fleet.read().expect("fleet lock").get(&digest) {
        return Ok(Some(device));
    }
    // The digest lookup is an exact match on a unique index of SHA-256 digests of random
    // tokens: equal digests mean equal tokens, and timing reveals nothing usable.
    Ok(core
        .store
        .find_active_device(&hex::encode(digest))
        .await?
        .map(|row| runtime.fleet.write().expect("fleet lock").insert(digest, ActiveDevice::from_row(row))))
}

/// A registered device by id, for a credential that is not an Updraft token (an OpenID
/// provider's token): from the fleet index, else read and indexed under `index_key`, a key
/// that no token's digest can equal (see `services::oidc`), so that its next requests read
/// memory and its check-ins keep the entry current as token holders' do.
pub async fn active_for_external_credential(core: &Core, device_id: &str, index_key: [u8; 32]) -> Result<Option<Arc<ActiveDevice>>> {
    if let Some(device) = core.devices.fleet.read().expect("fleet lock").get_by_id(device_id) {
        return Ok(Some(device));
    }
    let Some(row) = core.store.find_active_device_by_id(device_id).await? else {
        return Ok(None);
    };
    Ok(Some(core.devices.fleet.write().expect("fleet lock").insert(index_key, ActiveDevice::from_row(row))))
}

/// Loads every device that holds a token into the fleet index (up to its capacity), so that
/// check-ins after a restart do not each read the database. Runs in the background at start.
pub async fn preload_fleet(core: &Core) -> Result<usize> {
    const PAGE: u32 = 500;
    // Room for the whole fleet at once (the index and the presence of devices that check in),
    // rather than growing by doubling.
    let expected = usize::try_from(core.store.count_active_devices().await?).unwrap_or(usize::MAX);
    core.devices.fleet.write().expect("fleet lock").reserve(expected);
    core.devices.presence().reserve(expected.min(core.devices.policy.cache_entries));
    let mut after = String::new();
    let mut loaded = 0;
    loop {
        let page = core.store.list_active_devices(&after, PAGE).await?;
        let Some((_, last)) = page.last() else { break };
        after = last.id.to_string();
        let last_page = page.len() < PAGE as usize;
        let index_full = {
            let mut fleet = core.devices.fleet.write().expect("fleet lock");
            for (token_hash, row) in page {
                if fleet.len() >= fleet.capacity() {
                    break;
                }
                let Some(digest) = secret::parse_digest_hex(&token_hash) else { continue };
                if fleet.get(&digest).is_none() {
                    fleet.insert(digest, ActiveDevice::from_row(row));
                    loaded += 1;
                }
            }
            fleet.len() >= fleet.capacity()
        };
        if last_page || index_full {
            break;
        }
        // Let check-ins in between pages.
        tokio::task::yield_now().await;
    }
    Ok(loaded)
}

pub struct ProvisionRequest {
    /// The device's MAC, or its unique name (each adapter parses what its clients send).
    pub device: DeviceKey,
    pub product: Option<String>,
    pub hardware: Option<String>,
    pub version: Option<String>,
    pub provision_key: Option<String>,
    pub provision_secret: Option<String>,
    pub name: Option<String>,
    /// The device's current token, which lets a device that holds one provision again.
    pub current_token: Option<String>,
    /// A pair key, which lets a device that holds a token provision again (and pairs it).
    pub pair_key: Option<String>,
}

pub struct Provisioned {
    pub device: Device,
    pub token: String,
    pub poll_interval_s: u32,
    pub created: bool,
}

/// Why a device that already holds a token may be given a new one.
pub(super) enum Reprovision {
    /// It presented its current token.
    OwnToken,
    /// An operator opened a window for it (`reprovision_until`), now used up.
    OperatorWindow,
    /// It presented a pair key; it is now paired with the key's owner.
    PairKey(String),
}

/// Gives a device a token according to its product's provisioning mode. A new token
/// revokes the previous one.
///
/// An unknown device is created when the mode allows it (`open`; `key` with the product's key
/// and secret). A device that already holds a token gets a new one only when it proves it may:
/// its current token, a pair key, or a re-provisioning window an operator opened. Knowing a
/// device's MAC is not enough to take its identity.
pub async fn provision(core: &Core, request: ProvisionRequest, ip: IpAddr) -> Result<Provisioned> {
    core.devices.limiter.check(ip)?;
    let key = request.device.clone();
    let existing = find_by_key(core, &key).await?;

    // With a provisioning key, the key names the product.
    let keyed_product = match &request.provision_key {
        Some(key) => core.store.find_product_by_provision_key(key).await?,
        None => None,
    };
    let product_name = match (&keyed_product, &request.product, existing.as_ref().and_then(|d| d.product.clone())) {
        (Some(product), _, _) => product.name.clone(),
        (None, Some(name), _) => ProductName::parse(name)?,
        (None, None, Some(name)) => name,
        (None, None, None) => return Err(Error::invalid("missing_product", "`product` is required to provision a device")),
    };
    let product = match keyed_product {
        Some(product) => product,
        None => load_product_policy(core, &product_name).await?,
    };

    match product.provisioning {
        Provisioning::Open => {}
        Provisioning::Key => {
            let valid = match (&request.provision_key, &request.provision_secret, &product.provision_key, &product.provision_secret_hash) {
                (Some(key), Some(secret_text), Some(expected_key), Some(expected_hash)) => {
                    let expected_digest = secret::parse_digest_hex(expected_hash);
                    secret::constant_time_eq(key, expected_key) && expected_digest.is_some_and(|d| secret::verify(secret_text, &d))
                }
                _ => false,
            };
            if !valid {
                core.devices.limiter.record_failure(ip);
                return Err(Error::Forbidden(format!("product `{}` requires a valid provision_key and provision_secret", product.name)));
            }
        }
        Provisioning::Preregistered => {
            if existing.is_none() {
                core.devices.limiter.record_failure(ip);
                return Err(Error::Forbidden(format!(
                    "product `{}` only provisions devices an operator registered; {key} is not registered",
                    product.name
                )));
            }
        }
    }
    if let Some(device) = &existing
        && let Some(product_of_device) = &device.product
        && *product_of_device != product.name
    {
        return Err(Error::conflict(
            "product_mismatch",
            format!("{key} is registered for product `{product_of_device}`, not `{}`", product.name),
        ));
    }

    let mut hardware = request.hardware.as_deref().map(HardwareId::parse).transpose()?;
    if let Some(claimed) = &hardware {
        device::check_hardware_claim(existing.as_ref().and_then(|d| d.hardware.as_deref()), claimed, Some(&product))?;
    } else if existing.as_ref().is_none_or(|d| d.hardware.is_none()) {
        hardware = super::checkin::inferred_hardware(core, Some(&product.name)).await?;
    }
    if let Some(version) = &request.version {
        Version::parse(version)?;
    }
    let reprovision = match &existing {
        Some(device) if device.has_token => Some(reprovision_proof(core, device, &request, ip).await?),
        _ => None,
    };
    let token = secret::generate("upd_dev_");
    let token_hash = secret::digest_hex(&token);
    let (device, created) = match existing {
        Some(device) => {
            core.store.set_device_token(&device.id, Some(&token_hash)).await?;
            core.store
                .record_report(
                    &device.id,
                    &DeviceReport {
                        version: request.version.clone(),
                        product: Some(product.name.clone()),
                        hardware: hardware.clone(),
                        attributes: None,
                    },
                )
                .await?;
            if let Some(Reprovision::PairKey(owner)) = &reprovision {
                // `pair_device` (in `reprovision_proof`) set the owner with the key.
                core.events.publish(Event::DevicePaired { device_id: device.id.to_string(), owner: owner.clone() });
            }
            core.devices.forget_device(&device.id);
            let device = core.store.find_device(&device.id).await?.ok_or_else(|| Error::not_found("device", &device.id))?;
            let by = match reprovision {
                None => "provisioning",
                Some(Reprovision::OwnToken) => "provisioning with its token",
                Some(Reprovision::OperatorWindow) => "provisioning in an operator's window",
                Some(Reprovision::PairKey(_)) => "provisioning with a pair key",
            };
            core.events.publish(Event::TokenIssued { device_id: device.id.to_string(), mac: device.mac, by: by.into() });
            (device, false)
        }
        None => {
            let name = match &request.name {
                Some(name) => device::check_text("name", "invalid_name", name, 128)?,
                None => key.to_string(),
            };
            let device = core
                .store
                .insert_device(&NewDevice {
                    mac: key.mac(),
                    uid: key.uid().cloned(),
                    name,
                    product: Some(product.name.clone()),
                    hardware,
                    channel: Channel::stable(),
                    version: request.version.clone(),
                    target_version: None,
                    tags: Vec::new(),
                    attributes: json!({}),
                    metadata: json!({}),
                    owner: None,
                    token_hash: Some(token_hash),
                })
                .await?;
            core.events.publish(Event::DeviceCreated { device_id: device.id.to_string(), mac: device.mac, by: "provisioning".into() });
            (device, true)
        }
    };
    tracing::info!(device_id = %device.id, device = %device.label(), product = %product.name, created, "device provisioned");
    Ok(Provisioned { device, token, poll_interval_s: product.poll_interval_s, created })
}

/// The proof that lets a device holding a token provision again, or 409 `device_has_token`
/// (counted as a failed authentication: guessing MACs must not pay).
pub(super) async fn reprovision_proof(core: &Core, device: &Device, request: &ProvisionRequest, ip: IpAddr) -> Result<Reprovision> {
    if let Some(token) = request.current_token.as_deref().filter(|t| !t.is_empty() && t.len() <= 256) {
        if device_of_token(core, token).await?.is_some_and(|d| device.id == *d.id) {
            return Ok(Reprovision::OwnToken);
        }
        core.devices.limiter.record_failure(ip);
        return Err(Error::Unauthenticated(format!("the token sent is not {}'s current token", device.label())));
    }
    if let Some(key) = &request.pair_key {
        let digest = secret::digest_hex(&normalize_pair_key(key));
        return match core.store.pair_device(&digest, &device.id).await? {
            Some(owner) => Ok(Reprovision::PairKey(owner)),
            None => {
                core.devices.limiter.record_failure(ip);
                Err(Error::conflict("invalid_pair_key", "the pair key is unknown, expired or already used"))
            }
        };
    }
    if core.store.take_reprovision_window(&device.id, Utc::now()).await? {
        return Ok(Reprovision::OperatorWindow);
    }
    core.devices.limiter.record_failure(ip);
    tracing::warn!(device_id = %device.id, device = %device.label(), %ip, "provisioning refused: the device already holds a token");
    Err(Error::conflict(
        "device_has_token",
        format!(
            "{} already has a token. To provision it again, send its current token (`Authorization: Bearer`) or a pair key \
             (`pair_key`); or an operator allows it (PATCH /api/v1/devices/{{id}} with `reprovision_until`) or issues a token \
             (POST /api/v1/devices/{{id}}/token)",
            device.label()
        ),
    ))
}

/// Issues (or rotates) a device's token from the admin API; `actor` is the operator's
/// (`Principal::actor`), recorded in the event and the log.
pub async fn issue_token(core: &Core, device_id: &str, actor: &str) -> Result<(Device, String)> {
    let token = secret::generate("upd_dev_");
    if !core.store.set_device_token(device_id, Some(&secret::digest_hex(&token))).await? {
        return Err(Error::not_found("device", device_id));
    }
    core.devices.forget_device(device_id);
    let device = core.store.find_device(device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    core.events.publish(Event::TokenIssued { device_id: device_id.to_string(), mac: device.mac, by: actor.to_string() });
    tracing::info!(device_id, actor, "device token issued");
    Ok((device, token))
}

/// Revokes a device's token from the admin API: it stops working at once, over HTTP and MQTT.
/// The device can get a new one only through an operator (a new token, or a re-provisioning
/// window).
pub async fn revoke_token(core: &Core, device_id: &str, actor: &str) -> Result<Device> {
    if !core.store.set_device_token(device_id, None).await? {
        return Err(Error::not_found("device", device_id));
    }
    core.devices.forget_device(device_id);
    let device = core.store.find_device(device_id).await?.ok_or_else(|| Error::not_found("device", device_id))?;
    core.events.publish(Event::TokenRevoked { device_id: device_id.to_string(), mac: device.mac, by: actor.to_string() });
    tracing::info!(device_id, actor, "device token revoked");
    Ok(device)
}
