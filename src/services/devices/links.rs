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

/// Checks a signed download link; returns the device it was issued to.
pub fn verify_download(core: &Core, artifact_id: &str, device_id: &str, expires: i64, signature: &str) -> Result<()> {
    if expires < Utc::now().timestamp() {
        return Err(Error::Forbidden("the download link has expired; check in again for a new one".into()));
    }
    let Ok(signature) = hex::decode(signature) else {
        return Err(Error::Forbidden("the download link's signature is not valid".into()));
    };
    let mut mac = HmacSha256::new_from_slice(&core.devices.signing_key).expect("HMAC takes any key length");
    mac.update(format!("download\n{artifact_id}\n{device_id}\n{expires}").as_bytes());
    mac.verify_slice(&signature).map_err(|_| Error::Forbidden("the download link's signature is not valid".into()))
}
