//! HTTPS: with a certificate configured, the same API is served over TLS.

use crate::helpers::*;

#[tokio::test]
async fn the_server_speaks_https_when_a_certificate_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let app = spawn_app_with(|s| s.tls = Some(updraft::config::TlsSettings { cert: cert.clone(), key: key.clone() })).await;
    let port = app.addr.port();

    let curl = |extra: &[&str]| {
        let mut command = std::process::Command::new("curl");
        command.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"]).args(extra);
        command.output().expect("run curl")
    };
    let output = tokio::task::spawn_blocking({
        let cert = cert.clone();
        move || curl(&["--cacert", cert.to_str().unwrap(), &format!("https://localhost:{port}/api/health")])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(text.ends_with("\n200") && text.contains("\"ok\""), "{text} {}", String::from_utf8_lossy(&output.stderr));

    // Plain HTTP on the TLS port does not reach the API.
    let plain = tokio::task::spawn_blocking(move || curl(&[&format!("http://127.0.0.1:{port}/api/health")])).await.unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).ends_with("\n200"));
    app.stop().await;
}
