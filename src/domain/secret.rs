//! Secrets (API keys, device tokens): generated with at least 256 bits of randomness,
//! stored only as SHA-256 digests, compared in constant time.
//!
//! A fast digest is right here because the secrets are random and long: there is nothing
//! to brute-force, and the check sits on hot paths. Human-chosen passwords would need a
//! slow hash instead (argon2); Updraft has none.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new random secret: `prefix` followed by 43 URL-safe characters (256 bits).
pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The digest stored in place of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Hex form of `digest`, for storage.
pub fn digest_hex(secret: &str) -> String {
    hex::encode(digest(secret))
}

/// Compares a presented secret with a stored digest in constant time.
pub fn verify(presented: &str, stored_digest: &[u8; 32]) -> bool {
    digest(presented).ct_eq(stored_digest).into()
}

/// Compares two presented values in constant time (for their contents; the length of the
/// expected value is not secret): via their digests, so unequal lengths take the same time.
pub fn constant_time_eq(presented: &str, expected: &str) -> bool {
    digest(presented).ct_eq(&digest(expected)).into()
}

/// Parses a stored hex digest.
pub fn parse_digest_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_verifies_only_against_its_own_digest() {
        let secret = generate("upd_admin_");
        assert!(secret.starts_with("upd_admin_") && secret.len() == "upd_admin_".len() + 43);
        let stored = parse_digest_hex(&digest_hex(&secret)).unwrap();
        assert!(verify(&secret, &stored));
        assert!(!verify(&generate("upd_admin_"), &stored));
        assert!(!verify("", &stored));
        assert!(constant_time_eq("provision-key", "provision-key"));
        assert!(!constant_time_eq("provision-key", "provision-kez"));
        assert!(!constant_time_eq("", "provision-key"));
    }
}
