//! The server's content keys:
//! - the **configuration key** (ChaCha20-Poly1305, 256 bits) encrypting secret values in
//!   configuration documents. It lives in a file (`UPDRAFT_CONFIG_KEY_FILE`, by default
//!   `<data dir>/config.key`, created with mode 0600 on first start), never in the database,
//!   so a copy of the database alone does not reveal secrets. Replicas must share the file;
//!   losing it makes stored secrets unreadable (they must then be written again).
//! - the **asset signing key** (Ed25519), generated once and kept in the database
//!   (`server_secret`), shared by replicas; its public half is served at `GET /api/v1/keys`.
//! - seed 003's **RSA key** (`UPDRAFT_SIGNING_KEY_PATH` or `SIGNING_KEY_PATH`), which checks
//!   the signed timestamps of `POST /api/assets`. Only its public half is used.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signer, SigningKey};
use rand::RngCore;
use rsa::RsaPublicKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ContentSettings;
use crate::domain::{Error, Result};
use crate::storage::Store;

const ASSET_KEY_SECRET: &str = "asset_signing_ed25519";

pub struct ServerKeys {
    config_cipher: ChaCha20Poly1305,
    config_key_id: String,
    asset_key: SigningKey,
    seed003_key: Option<RsaPublicKey>,
}

impl ServerKeys {
    pub async fn load(settings: &ContentSettings, store: &Store) -> anyhow::Result<ServerKeys> {
        let config_key = load_or_create_key_file(&settings.config_key_file)?;
        let asset_key = load_or_create_asset_key(store).await?;
        let seed003_key =
            match &settings.signing_key_path {
                Some(path) => Some(read_rsa_public_key(path).with_context(|| {
                    format!("invalid setting UPDRAFT_SIGNING_KEY_PATH (SIGNING_KEY_PATH): cannot use {}", path.display())
                })?),
                None => None,
            };
        Ok(ServerKeys::from_parts(config_key, asset_key, seed003_key))
    }

    fn from_parts(config_key: [u8; 32], asset_key: SigningKey, seed003_key: Option<RsaPublicKey>) -> ServerKeys {
        ServerKeys {
            config_cipher: ChaCha20Poly1305::new(&Key::from(config_key)),
            config_key_id: hex::encode(&Sha256::digest(config_key)[..4]),
            asset_key,
            seed003_key,
        }
    }

    /// Encrypts one secret value: `v1.<key id>.<base64url(nonce ‖ ciphertext)>`.
    pub fn encrypt_secret(&self, value: &Value) -> Result<String> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .config_cipher
            .encrypt(&Nonce::from(nonce), value.to_string().as_bytes())
            .map_err(|_| Error::Internal(anyhow::anyhow!("cannot encrypt a configuration secret")))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(format!("v1.{}.{}", self.config_key_id, URL_SAFE_NO_PAD.encode(sealed)))
    }

    pub fn decrypt_secret(&self, token: &str) -> Result<Value> {
        let corrupt = |why: &str| Error::Internal(anyhow::anyhow!("a stored configuration secret cannot be decrypted: {why}"));
        let mut parts = token.splitn(3, '.');
        let (Some("v1"), Some(key_id), Some(sealed)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(corrupt("unknown format"));
        };
        if key_id != self.config_key_id {
            return Err(corrupt("it was encrypted with another key than UPDRAFT_CONFIG_KEY_FILE holds"));
        }
        let sealed = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| corrupt("bad encoding"))?;
        if sealed.len() < 12 {
            return Err(corrupt("too short"));
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| corrupt("too short"))?;
        let plain = self.config_cipher.decrypt(&Nonce::from(nonce), ciphertext).map_err(|_| corrupt("authentication failed"))?;
        serde_json::from_slice(&plain).map_err(|_| corrupt("not JSON"))
    }

    /// Signs with the asset key; returns the 64-byte signature.
    pub fn sign_asset(&self, message: &[u8]) -> [u8; 64] {
        self.asset_key.sign(message).to_bytes()
    }

    pub fn asset_public_key(&self) -> [u8; 32] {
        self.asset_key.verifying_key().to_bytes()
    }

    /// A short, stable name of the asset key: the first 8 bytes of its public key's SHA-256, in hex.
    pub fn asset_key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.asset_public_key())[..8])
    }

    pub fn seed003_enabled(&self) -> bool {
        self.seed003_key.is_some()
    }

    /// Checks seed 003's RSA PKCS#1 v1.5 SHA-256 signature over `message`.
    pub fn verify_seed003(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        use rsa::signature::Verifier;
        let Some(public) = &self.seed003_key else {
            return Err(Error::Forbidden("asset uploads are disabled: the server has no UPDRAFT_SIGNING_KEY_PATH".into()));
        };
        let invalid = || Error::invalid("invalid_signature", "the signature does not match the timestamp");
        let signature = rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| invalid())?;
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public.clone()).verify(message, &signature).map_err(|_| invalid())
    }
}

/// Reads the 32-byte key (base64 text) or creates the file with a new random key.
fn load_or_create_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let parse = |text: &str| -> anyhow::Result<[u8; 32]> {
        let bytes = STANDARD.decode(text.trim()).context("it is not base64")?;
        bytes.try_into().map_err(|_| anyhow::anyhow!("it does not hold 32 bytes"))
    };
    let setting = |path: &Path| format!("invalid setting UPDRAFT_CONFIG_KEY_FILE: {}", path.display());
    if path.exists() {
        let text = std::fs::read_to_string(path).with_context(|| setting(path))?;
        return parse(&text).with_context(|| setting(path));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| setting(path))?;
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{}\n", STANDARD.encode(key)).as_bytes()).with_context(|| setting(path))?;
            file.sync_all().with_context(|| setting(path))?;
            tracing::info!(file = %path.display(), "created the key that encrypts configuration secrets; back it up");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).with_context(|| setting(path))?;
            parse(&text).with_context(|| setting(path))
        }
        Err(e) => Err(e).with_context(|| setting(path)),
    }
}

async fn load_or_create_asset_key(store: &Store) -> anyhow::Result<SigningKey> {
    if store.find_server_secret(ASSET_KEY_SECRET).await?.is_none() {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        // False when another replica stored one first; theirs is read below.
        store.insert_server_secret(ASSET_KEY_SECRET, &STANDARD.encode(seed)).await?;
    }
    let stored = store.find_server_secret(ASSET_KEY_SECRET).await?.context("the asset signing key vanished")?;
    let seed: [u8; 32] =
        STANDARD.decode(stored.trim()).ok().and_then(|b| b.try_into().ok()).context("the stored asset signing key is corrupt")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A PEM RSA key: public (SPKI or PKCS#1) or private (PKCS#8 or PKCS#1, as seed 003 used).
fn read_rsa_public_key(path: &Path) -> anyhow::Result<RsaPublicKey> {
    use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
    let pem = std::fs::read_to_string(path).context("cannot read the file")?;
    if let Ok(key) = RsaPublicKey::from_public_key_pem(&pem) {
        return Ok(key);
    }
    if let Ok(key) = RsaPublicKey::from_pkcs1_pem(&pem) {
        return Ok(key);
    }
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(&pem) {
        return Ok(key.to_public_key());
    }
    if let Ok(key) = rsa::RsaPrivateKey::from_pkcs1_pem(&pem) {
        return Ok(key.to_public_key());
    }
    anyhow::bail!("it is not a PEM RSA key (BEGIN PUBLIC KEY, RSA PUBLIC KEY, PRIVATE KEY or RSA PRIVATE KEY)")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn keys() -> ServerKeys {
        ServerKeys::from_parts([7u8; 32], SigningKey::from_bytes(&[9u8; 32]), None)
    }

    #[test]
    fn secrets_round_trip_and_every_encryption_differs() {
        let keys = keys();
        let a = keys.encrypt_secret(&json!("hunter2")).unwrap();
        let b = keys.encrypt_secret(&json!("hunter2")).unwrap();
        assert_ne!(a, b);
        assert!(!a.contains("hunter2"));
        assert_eq!(keys.decrypt_secret(&a).unwrap(), json!("hunter2"));
    }

    #[test]
    fn a_tampered_or_foreign_secret_is_refused() {
        let keys = keys();
        let token = keys.encrypt_secret(&json!({"k": 1})).unwrap();
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(keys.decrypt_secret(&tampered).is_err());
        let other = ServerKeys::from_parts([8u8; 32], SigningKey::from_bytes(&[9u8; 32]), None);
        assert!(other.decrypt_secret(&token).unwrap_err().to_string().contains("internal"));
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.key");
        let first = load_or_create_key_file(&path).unwrap();
        assert_eq!(load_or_create_key_file(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "short").unwrap();
        assert!(load_or_create_key_file(&path).is_err());
    }
}
