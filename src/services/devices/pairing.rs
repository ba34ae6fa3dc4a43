//! Pairing devices with owners by single-use keys, and setup progress reports (seed 004's codes).

use super::*;

/// A new single-use pair key for `owner`.
pub async fn create_pair_key(core: &Core, owner: &str, ttl: Option<Duration>) -> Result<(String, DateTime<Utc>)> {
    let owner = device::check_text("owner", "invalid_owner", owner, 128)?;
    if owner.is_empty() {
        return Err(Error::invalid("invalid_owner", "owner is required"));
    }
    let ttl = ttl.unwrap_or(core.devices.policy.pairing_ttl);
    if ttl < Duration::from_secs(30) || ttl > Duration::from_secs(24 * 3600) {
        return Err(Error::invalid("invalid_ttl", "ttl_s must be between 30 and 86400"));
    }
    let key = pair_key();
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).expect("bounded ttl");
    core.store.insert_pairing(&secret::digest_hex(&normalize_pair_key(&key)), &owner, expires_at).await?;
    Ok((key, expires_at))
}

/// Eight characters from an alphabet without look-alikes (about 40 bits): short enough to
/// type, and with single use, expiry and rate limiting, long enough not to be guessed.
pub(super) fn pair_key() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let chars: String = (0..8).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

pub(super) fn normalize_pair_key(key: &str) -> String {
    key.trim().to_ascii_uppercase().replace('-', "")
}

/// Binds a device to the owner of a pair key.
pub async fn pair(core: &Core, device: &ActiveDevice, key: &str, ip: IpAddr) -> Result<String> {
    core.devices.limiter.check(ip)?;
    let digest = secret::digest_hex(&normalize_pair_key(key));
    // The key is used and the owner set in one transaction that writes no other field: a
    // concurrent check-in's report stays. The fleet index does not hold the owner: nothing
    // to forget.
    let Some(owner) = core.store.pair_device(&digest, &device.id).await? else {
        core.devices.limiter.record_failure(ip);
        return Err(Error::conflict("invalid_pair_key", "the pair key is unknown, expired or already used"));
    };
    core.events.publish(Event::DevicePaired { device_id: device.id.to_string(), owner: owner.clone() });
    tracing::info!(device_id = %device.id, %owner, "device paired");
    Ok(owner)
}

pub async fn report_setup(core: &Core, device: &ActiveDevice, code: i64, title: Option<&str>, description: Option<&str>) -> Result<()> {
    let (code, title) = device::check_setup_report(code, title)?;
    let description = device::check_text("description", "invalid_setup_status", description.unwrap_or(""), 1024)?;
    core.store.insert_setup_event(&device.id, code, &title, &description).await?;
    core.events.publish(Event::SetupStatus { device_id: device.id.to_string(), code, title, description });
    Ok(())
}
