//! TLS for the HTTPS and MQTT-over-TLS listeners: the server certificate, reloaded when its
//! files change, and devices' optional client certificates.
//!
//! Both listeners' rustls configurations hold the same `Certificates`: a certificate resolver
//! reads the current certified key (one read lock and an `Arc` clone per handshake), and a
//! client certificate verifier delegates to the current verifier of `UPDRAFT_TLS_CLIENT_CA`
//! (and its revocation lists). `watch` polls the files' contents every
//! `UPDRAFT_TLS_RELOAD_SECS` and swaps in a new set only when it loads completely: a half
//! written or mismatched pair keeps the previous one, with a warning and a metric.
//!
//! Polling the contents (a SHA-256 of a few kilobytes) rather than modification times catches
//! every way certificates are renewed: files rewritten in place, certbot's `live/` symlinks
//! moved to new `archive/` files, cert-manager's `..data` symlink swapped in a Kubernetes
//! volume, and a change within the same second.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::{ClientIdentity, TlsPolicy, TlsSettings};

/// The TLS files and what was last loaded from them.
pub struct Certificates {
    files: Files,
    provider: Arc<CryptoProvider>,
    identity: ClientIdentity,
    current: RwLock<Arc<Loaded>>,
    /// The digest of the files' contents last tried (loaded or refused), so that a refused
    /// set is reported once, not at every poll.
    tried: Mutex<[u8; 32]>,
    /// The client CA's subjects as loaded at start, sent to clients as hints of which
    /// certificate to present (rustls borrows them from the verifier).
    hints: Vec<DistinguishedName>,
    /// With `san` identities: the identities of recently verified client certificates by
    /// serial and subject, for MQTT, whose hooks see only those (rmqtt's `CertInfo`).
    recent: Mutex<RecentIdentities>,
}

/// Identities of the latest verified client certificates, oldest dropped first.
#[derive(Default)]
struct RecentIdentities {
    by_certificate: std::collections::HashMap<(String, String), Arc<str>>,
    order: std::collections::VecDeque<(String, String)>,
}

/// Client certificates whose identity MQTT can look up: more than can complete a handshake
/// and send CONNECT within the handshake timeout at any realistic rate.
const RECENT_IDENTITIES: usize = 16_384;

impl RecentIdentities {
    fn insert(&mut self, key: (String, String), identity: Arc<str>) {
        if self.by_certificate.insert(key.clone(), identity).is_none() {
            self.order.push_back(key);
            while self.order.len() > RECENT_IDENTITIES {
                if let Some(oldest) = self.order.pop_front() {
                    self.by_certificate.remove(&oldest);
                }
            }
        }
    }
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    client_crl: Option<PathBuf>,
}

/// One consistent set: the server's certified key and the client certificate verifier.
struct Loaded {
    key: Arc<CertifiedKey>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    /// For the log: the server certificate's subject, serial and expiry.
    about: CertSummary,
}

/// What the log says about a certificate.
#[derive(Debug, Clone)]
pub struct CertSummary {
    pub subject: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

impl CertSummary {
    fn of(der: &[u8]) -> Option<CertSummary> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(CertSummary {
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    fn not_after_text(&self) -> String {
        chrono::DateTime::from_timestamp(self.not_after, 0).map(|t| t.to_rfc3339()).unwrap_or_else(|| self.not_after.to_string())
    }
}

/// The verified client certificate of a connection, as handlers see it (a request extension
/// set by `net::serve`). Present only when `UPDRAFT_TLS_CLIENT_CA` is set and the client
/// presented a certificate that chains to it: the handshake refuses any other.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The device id or MAC it names (UPDRAFT_TLS_CLIENT_IDENTITY); None when that field is
    /// missing or not text.
    pub identity: Option<Arc<str>>,
    /// The subject, for messages and logs.
    pub subject: Arc<str>,
}

impl ClientCert {
    /// The client certificate of a completed handshake (its first certificate is the client's
    /// own; rustls verified the chain).
    pub fn of(certificates: Option<&[CertificateDer<'_>]>, identity: ClientIdentity) -> Option<ClientCert> {
        let der = certificates?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        Some(ClientCert { identity: identity_of(&cert, identity).map(Arc::from), subject: cert.subject().to_string().into() })
    }
}

/// The part of a certificate that names the device.
fn identity_of(cert: &x509_parser::certificate::X509Certificate<'_>, identity: ClientIdentity) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let text = match identity {
        ClientIdentity::Cn => cert.subject().iter_common_name().next()?.as_str().ok()?.to_string(),
        ClientIdentity::San => {
            let names = &cert.subject_alternative_name().ok()??.value.general_names;
            let dns = names.iter().find_map(|n| if let GeneralName::DNSName(dns) = n { Some(*dns) } else { None });
            let uri = || names.iter().find_map(|n| if let GeneralName::URI(uri) = n { Some(*uri) } else { None });
            dns.or_else(uri)?.to_string()
        }
    };
    let text = text.trim();
    (!text.is_empty() && text.len() <= 128).then(|| text.to_string())
}

impl Certificates {
    /// Loads the certificate, key and client CA (when set). An error names the file.
    pub fn load(tls: &TlsSettings, policy: &TlsPolicy) -> anyhow::Result<Arc<Certificates>> {
        let files = Files {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            client_ca: policy.client_ca.clone(),
            client_crl: policy.client_crl.clone(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let contents = files.read();
        let loaded = load(&contents, &files, &provider)?;
        let hints = match &contents.client_ca {
            Some(Ok(pem)) => roots(pem)?.subjects(),
            _ => Vec::new(),
        };
        log_loaded(&loaded.about, "TLS certificate loaded");
        Ok(Arc::new(Certificates {
            files,
            provider,
            identity: policy.client_identity,
            current: RwLock::new(Arc::new(loaded)),
            tried: Mutex::new(contents.digest()),
            hints,
            recent: Mutex::default(),
        }))
    }

    /// Which part of a client certificate names the device.
    pub fn client_identity(&self) -> ClientIdentity {
        self.identity
    }

    /// The identity of a verified client certificate as an MQTT connection sees it (rmqtt's
    /// `CertInfo`: subject, common name, serial): `cn` reads the common name; `san` finds the
    /// identity noted when the certificate was verified, by serial and subject (a CA issues
    /// one serial once).
    pub fn mqtt_identity(&self, common_name: Option<&str>, subject: &str, serial: Option<&str>) -> Option<Arc<str>> {
        match self.identity {
            ClientIdentity::Cn => common_name.map(str::trim).filter(|cn| !cn.is_empty() && cn.len() <= 128).map(Arc::from),
            ClientIdentity::San => {
                let key = (serial?.to_ascii_lowercase(), subject.to_string());
                self.recent.lock().expect("recent lock").by_certificate.get(&key).cloned()
            }
        }
    }

    /// Whether clients are asked for a certificate (UPDRAFT_TLS_CLIENT_CA is set).
    pub fn asks_for_client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// A rustls configuration over these certificates (TLS 1.2 and 1.3), with `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let builder = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let builder = if self.asks_for_client_certs() {
            builder.with_client_cert_verifier(Arc::new(ClientVerifier(self.clone())))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// The server certificate in use now.
    pub fn current(&self) -> CertSummary {
        self.current.read().expect("certificates lock").about.clone()
    }

    /// Reads the files and swaps in what they hold when it changed and loads completely.
    pub fn reload_if_changed(&self) -> Reload {
        let contents = self.files.read();
        let digest = contents.digest();
        {
            let mut tried = self.tried.lock().expect("tried lock");
            if *tried == digest {
                return Reload::Unchanged;
            }
            *tried = digest;
        }
        match load(&contents, &self.files, &self.provider) {
            Ok(loaded) => {
                log_loaded(&loaded.about, "TLS certificate reloaded: new connections use it");
                metrics::counter!("updraft_tls_reloads_total").increment(1);
                *self.current.write().expect("certificates lock") = Arc::new(loaded);
                Reload::Loaded
            }
            Err(e) => {
                let current = self.current();
                tracing::warn!(
                    error = format!("{e:#}"),
                    subject = %current.subject,
                    not_after = %current.not_after_text(),
                    "the TLS files changed but do not load; the previous certificate stays in use"
                );
                metrics::counter!("updraft_tls_reload_failures_total").increment(1);
                Reload::Refused
            }
        }
    }

    /// Checks the files every `every` until the task is stopped.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let certificates = self.clone();
            // File reads and parsing off the async workers.
            if tokio::task::spawn_blocking(move || certificates.reload_if_changed()).await.is_err() {
                tracing::warn!("the TLS file check panicked");
            }
        }
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current.read().expect("certificates lock").clone()
    }
}

/// What a check of the files did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded,
    Refused,
}

fn log_loaded(about: &CertSummary, message: &str) {
    metrics::gauge!("updraft_tls_certificate_not_after_seconds").set(about.not_after as f64);
    tracing::info!(subject = %about.subject, serial = %about.serial, not_after = %about.not_after_text(), "{message}");
}

/// The files' contents (or why one could not be read).
struct Contents {
    cert: std::io::Result<Vec<u8>>,
    key: std::io::Result<Vec<u8>>,
    client_ca: Option<std::io::Result<Vec<u8>>>,
    client_crl: Option<std::io::Result<Vec<u8>>>,
}

impl Files {
    /// Reads every file (following symlinks, as renewals swap them).
    fn read(&self) -> Contents {
        Contents {
            cert: std::fs::read(&self.cert),
            key: std::fs::read(&self.key),
            client_ca: self.client_ca.as_deref().map(std::fs::read),
            client_crl: self.client_crl.as_deref().map(std::fs::read),
        }
    }
}

impl Contents {
    fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref(), self.client_crl.as_ref()] {
            match part {
                Some(Ok(bytes)) => {
                    hash.update([1]);
                    hash.update((bytes.len() as u64).to_be_bytes());
                    hash.update(bytes);
                }
                Some(Err(e)) => {
                    hash.update([2]);
                    hash.update(e.kind().to_string());
                }
                None => hash.update([0]),
            }
        }
        hash.finalize().into()
    }
}

fn read<'a>(file: &'a std::io::Result<Vec<u8>>, what: &str, path: &Path) -> anyhow::Result<&'a [u8]> {
    file.as_deref().map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))
}

/// Builds a consistent set from the files' contents, or says what is wrong with them.
fn load(contents: &Contents, files: &Files, provider: &Arc<CryptoProvider>) -> anyhow::Result<Loaded> {
    let cert_pem = read(&contents.cert, "TLS certificate", &files.cert)?;
    let key_pem = read(&contents.key, "TLS key", &files.key)?;
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("cannot parse the TLS certificate (UPDRAFT_TLS_CERT)")?;
    let first = certs.first().context("no certificate found in UPDRAFT_TLS_CERT")?;
    let about = CertSummary::of(first.as_ref()).context("the first certificate of UPDRAFT_TLS_CERT does not parse")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("cannot parse the TLS key (UPDRAFT_TLS_KEY)")?;
    let key = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| anyhow::anyhow!("the TLS certificate and key do not match or are unsupported: {e}"))?;
    let clients = match (&contents.client_ca, &files.client_ca) {
        (Some(ca), Some(ca_path)) => {
            let ca = read(ca, "client CA bundle", ca_path)?;
            let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone()).allow_unauthenticated();
            if let (Some(crl), Some(crl_path)) = (&contents.client_crl, &files.client_crl) {
                let crl = read(crl, "client CRL", crl_path)?;
                let crls = CertificateRevocationListDer::pem_slice_iter(crl)
                    .collect::<Result<Vec<_>, _>>()
                    .context("cannot parse the client CRL (UPDRAFT_TLS_CLIENT_CRL)")?;
                // The lists of the CAs that issue device certificates: a device's own
                // certificate must not be on them.
                builder = builder.with_crls(crls).only_check_end_entity_revocation();
            }
            Some(builder.build().context("cannot use the client CA bundle (UPDRAFT_TLS_CLIENT_CA)")?)
        }
        _ => None,
    };
    Ok(Loaded { key: Arc::new(key), clients, about })
}

fn roots(pem: &[u8]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.context("cannot parse the client CA bundle (UPDRAFT_TLS_CLIENT_CA)")?)
            .context("a client CA certificate is not usable")?;
    }
    if roots.is_empty() {
        anyhow::bail!("no certificate found in the client CA bundle (UPDRAFT_TLS_CLIENT_CA)");
    }
    Ok(roots)
}

/// Presents the current server certificate.
#[derive(Debug)]
struct Resolver(Arc<Certificates>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.loaded().key.clone())
    }
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("cert", &self.files.cert).finish_non_exhaustive()
    }
}

/// Asks clients for a certificate without requiring one, and checks a presented one with the
/// current client CA verifier (chain, validity period, revocation lists).
#[derive(Debug)]
struct ClientVerifier(Arc<Certificates>);

impl ClientVerifier {
    fn current(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.0.loaded().clients.clone().ok_or_else(|| rustls::Error::General("client certificates are not configured".into()))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.current()?.verify_client_cert(end_entity, intermediates, now);
        match &verified {
            Ok(_) if self.0.identity == ClientIdentity::San => {
                if let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref())
                    && let Some(identity) = identity_of(&cert, ClientIdentity::San)
                {
                    // As rmqtt writes them: the serial in hexadecimal, the subject as text.
                    let key = (cert.serial.to_str_radix(16), cert.subject().to_string());
                    self.0.recent.lock().expect("recent lock").insert(key, identity.into());
                }
            }
            Ok(_) => {}
            Err(_) => metrics::counter!("updraft_tls_client_certs_refused_total").increment(1),
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_identities_are_bounded_and_keep_the_newest() {
        let mut recent = RecentIdentities::default();
        for n in 0..RECENT_IDENTITIES + 10 {
            recent.insert((format!("{n:x}"), "CN=x".into()), Arc::from(format!("device-{n}")));
        }
        assert_eq!(recent.by_certificate.len(), RECENT_IDENTITIES);
        assert_eq!(recent.order.len(), RECENT_IDENTITIES);
        assert!(!recent.by_certificate.contains_key(&("0".into(), "CN=x".into())), "the oldest went first");
        let newest = (format!("{:x}", RECENT_IDENTITIES + 9), "CN=x".to_string());
        assert_eq!(recent.by_certificate.get(&newest).map(|i| &**i), Some(format!("device-{}", RECENT_IDENTITIES + 9).as_str()));
    }

    #[test]
    fn the_contents_digest_tells_missing_unreadable_and_changed_files_apart() {
        let read = |cert: &[u8], key: std::io::Result<Vec<u8>>, ca: Option<&[u8]>| {
            Contents { cert: Ok(cert.to_vec()), key, client_ca: ca.map(|c| Ok(c.to_vec())), client_crl: None }.digest()
        };
        let base = read(b"cert", Ok(b"key".to_vec()), None);
        assert_eq!(base, read(b"cert", Ok(b"key".to_vec()), None));
        assert_ne!(base, read(b"cert2", Ok(b"key".to_vec()), None));
        assert_ne!(base, read(b"cert", Err(std::io::ErrorKind::NotFound.into()), None));
        assert_ne!(base, read(b"cert", Ok(b"key".to_vec()), Some(b"")));
        // Moving bytes between files changes the digest (lengths are part of it).
        assert_ne!(read(b"ab", Ok(b"c".to_vec()), None), read(b"a", Ok(b"bc".to_vec()), None));
    }
}
