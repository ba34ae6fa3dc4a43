//! The provider's metadata and signing keys: discovered from
//! `<issuer>/.well-known/openid-configuration`, its JWKS parsed into verification keys, each
//! pinned to the algorithms its type (and its `alg`, when the provider names one) allows.
//! Symmetric (`oct`) keys, encryption keys and `none` are never accepted.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::domain::{Error, Result};

/// Largest discovery document or JWKS read.
const MAX_DOCUMENT_BYTES: usize = 512 << 10;
/// Most keys kept from one JWKS (providers publish a few; the rest is ignored).
const MAX_KEYS: usize = 64;
/// How long one fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What Updraft reads of the discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub jwks_uri: String,
    pub end_session_endpoint: Option<String>,
}

/// One verification key and the algorithms it may verify.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// The signing keys by key id.
#[derive(Default)]
pub struct KeySet {
    pub by_kid: HashMap<String, VerifyKey>,
}

impl KeySet {
    /// The usable signature keys of a JWKS document; keys it cannot use are skipped (and
    /// counted in the second value).
    pub fn parse(document: &[u8]) -> Result<(KeySet, usize)> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(document).map_err(|e| Error::Unavailable(format!("the provider's JWKS is not a key set: {e}")))?;
        let mut set = KeySet::default();
        let mut skipped = 0;
        for value in document.keys {
            let parsed = serde_json::from_value::<Jwk>(value).ok().and_then(|jwk| Some((jwk.common.key_id.clone()?, verify_key(&jwk)?)));
            match parsed {
                Some((kid, key)) if set.by_kid.len() < MAX_KEYS => {
                    set.by_kid.insert(kid, key);
                }
                _ => skipped += 1,
            }
        }
        Ok((set, skipped))
    }
}

/// The verification key of a JWK with its algorithms, or None for keys that must not verify
/// tokens: symmetric keys, encryption keys, unknown types, an `alg` that does not fit the key.
fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512]
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
        // `oct` keys are shared secrets: a token "signed" with one proves nothing.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        Some(alg) => {
            let alg = Algorithm::try_from(alg).ok()?;
            if !by_type.contains(&alg) {
                return None;
            }
            vec![alg]
        }
        None => by_type.to_vec(),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, algorithms })
}

/// GETs a JSON document of at most `MAX_DOCUMENT_BYTES`.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>> {
    let failed = |what: String| Error::Unavailable(format!("cannot read {url} from the OpenID provider: {what}"));
    let mut response = client.get(url).header("accept", "application/json").send().await.map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status())));
    }
    if response.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return Err(failed("the document is too large".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| failed(e.to_string()))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(failed("the document is too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads and checks the discovery document of `issuer`.
pub async fn discover(client: &reqwest::Client, issuer: &str) -> Result<ProviderMetadata> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let body = fetch(client, &url).await?;
    let metadata: ProviderMetadata =
        serde_json::from_slice(&body).map_err(|e| Error::Unavailable(format!("the provider's discovery document is not valid: {e}")))?;
    if metadata.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
        return Err(Error::Unavailable(format!(
            "the provider at {url} names itself `{}`, not UPDRAFT_OIDC_ISSUER `{issuer}`",
            metadata.issuer
        )));
    }
    Ok(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signature_keys_that_fit_their_alg_are_kept() {
        let document = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "sXch", "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "n": "sXch", "e": "AQAB"},
            {"kty": "weird", "kid": "w"},
        ]});
        let (set, skipped) = KeySet::parse(document.to_string().as_bytes()).unwrap();
        assert_eq!(set.by_kid.keys().collect::<Vec<_>>(), vec!["rsa"]);
        assert_eq!(set.by_kid["rsa"].algorithms, vec![Algorithm::RS256]);
        assert_eq!(skipped, 5);
        assert!(KeySet::parse(b"{}").is_err());
    }
}
