//! Signed, expiring download links that authorise one device to download one build.

use super::*;

pub(super) type HmacSha256 = Hmac<Sha256>;

/// A signed, expiring query string that authorises one device to download one build.
pub fn sign_download(core: &Core, artifact_id: &str, device_id: &str) -> String {
    let expires = (Utc::now() + chrono::Duration::from_std(core.devices.policy.download_url_ttl).expect("bounded ttl")).timestamp();
    let signature = download_signature(&core.devices.signing_key, artifact_id, device_id, expires);
    format!("device={device_id}&expires={expires}&signature={signature}")
}

pub(super) fn download_signature(key: &[u8; 32], artifact_id: &str, device_id: &str, expires: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("download\n{artifact_id}\n{device_id}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signed download link.
pub fn verify_download(core: &Core, artifact_id: &str, device_id: &str, expires: i64, signature: &str) -> Result<()> {
    check_signature(&core.devices.signing_key, artifact_id, device_id, expires, signature, Utc::now().timestamp())
}

/// A link is good until `expires` (Unix seconds), for the build and device it was signed for.
fn check_signature(key: &[u8; 32], artifact_id: &str, device_id: &str, expires: i64, signature: &str, now: i64) -> Result<()> {
    if expires < now {
        return Err(Error::Forbidden("the download link has expired; check in again for a new one".into()));
    }
    let Ok(signature) = hex::decode(signature) else {
        return Err(Error::Forbidden("the download link's signature is not valid".into()));
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("download\n{artifact_id}\n{device_id}\n{expires}").as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature).map_err(|_| Error::Forbidden("the download link's signature is not valid".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_works_for_its_build_and_device_until_it_expires() {
        let key = [7u8; 32];
        let signature = download_signature(&key, "build-1", "device-1", 1_000);
        assert!(check_signature(&key, "build-1", "device-1", 1_000, &signature, 999).is_ok());
        assert!(check_signature(&key, "build-1", "device-1", 1_000, &signature, 1_001).is_err(), "expired");
        assert!(check_signature(&key, "build-2", "device-1", 1_000, &signature, 999).is_err(), "another build");
        assert!(check_signature(&key, "build-1", "device-2", 1_000, &signature, 999).is_err(), "another device");
        assert!(check_signature(&key, "build-1", "device-1", 2_000, &signature, 999).is_err(), "a longer life");
        assert!(check_signature(&[8u8; 32], "build-1", "device-1", 1_000, &signature, 999).is_err(), "another server's key");
        assert!(check_signature(&key, "build-1", "device-1", 1_000, "not hex", 999).is_err());
    }
}
