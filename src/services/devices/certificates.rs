//! Devices that authenticate with a client certificate (mutual TLS, `UPDRAFT_TLS_CLIENT_CA`):
//! the TLS handshake verified the certificate; here its identity (a device id or MAC) must name
//! a registered device. Check-ins pay what token check-ins pay: the device is kept in the
//! fleet index under a digest of its identity, dropped there like any entry when the device
//! changes or is deleted (on any replica).

use super::*;

/// Where a certificate's identity came from, for messages (`cn` or `san`).
pub struct CertificateIdentity<'a> {
    /// None: the certificate has no such field.
    pub identity: Option<&'a str>,
    pub field: &'static str,
}

/// The registered device a verified client certificate names.
pub async fn authenticate_certificate(core: &Core, certificate: CertificateIdentity<'_>, ip: IpAddr) -> Result<Arc<ActiveDevice>> {
    let runtime = &core.devices;
    runtime.limiter.check(ip)?;
    let Some(identity) = certificate.identity else {
        runtime.limiter.record_failure(ip);
        return Err(Error::Unauthenticated(format!(
            "the client certificate has no {} naming a device (UPDRAFT_TLS_CLIENT_IDENTITY)",
            certificate.field
        )));
    };
    match device_of_certificate(core, identity).await? {
        Some(device) => Ok(device),
        None => {
            runtime.limiter.record_failure(ip);
            metrics::counter!("updraft_tls_client_certs_unknown_total").increment(1);
            Err(Error::Unauthenticated(format!("the client certificate's {} names no registered device", certificate.field)))
        }
    }
}

/// The device a certificate identity (device id or MAC) names, if it is registered.
pub async fn device_of_certificate(core: &Core, identity: &str) -> Result<Option<Arc<ActiveDevice>>> {
    let runtime = &core.devices;
    let mac = Mac::parse(identity).ok();
    let key = match &mac {
        Some(mac) => format!("client-certificate mac:{}", mac.canonical()),
        None => format!("client-certificate id:{identity}"),
    };
    let digest = secret::digest(&key);
    if let Some(device) = runtime.fleet.read().expect("fleet lock").get(&digest) {
        return Ok(Some(device));
    }
    let row = match &mac {
        Some(mac) => core.store.find_active_device_by_mac(mac).await?,
        None if identity.len() <= 64 => core.store.find_active_device_by_id(identity).await?,
        None => None,
    };
    Ok(row.map(|row| runtime.fleet.write().expect("fleet lock").insert(digest, ActiveDevice::from_row(row))))
}
