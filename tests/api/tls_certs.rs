//! Certificate reload (HTTPS and MQTT over TLS) and devices' client certificates (mutual
//! TLS), with certificates made by the openssl command line and real clients (curl, paho).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// A test PKI in a temporary folder: a CA for the server's certificates, and a CA for
/// devices' certificates run with `openssl ca` (so it can issue expired certificates and
/// revocation lists).
struct Pki {
    dir: tempfile::TempDir,
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

const DEVICE_CA_CONFIG: &str = "[ca]\ndefault_ca = devices\n[devices]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
default_md = sha256\npolicy = any\ncopy_extensions = none\ncrlnumber = crlnumber\ndefault_crl_days = 1\nunique_subject = no\n\
[any]\ncommonName = optional\norganizationName = optional\n[client]\nbasicConstraints = CA:FALSE\nextendedKeyUsage = clientAuth\n";

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        for ca in ["server-ca", "device-ca", "other-ca"] {
            std::fs::create_dir(pki.path(ca)).unwrap();
            pki.openssl(
                ca,
                &["req", "-x509", "-nodes", "-days", "2", "-subj", &format!("/CN=Test {ca}"), "-keyout", "ca.key", "-out", "ca.pem"],
            );
            std::fs::write(pki.path(ca).join("ca.cnf"), DEVICE_CA_CONFIG).unwrap();
            std::fs::write(pki.path(ca).join("index.txt"), "").unwrap();
            std::fs::write(pki.path(ca).join("serial"), "1000\n").unwrap();
            std::fs::write(pki.path(ca).join("crlnumber"), "1000\n").unwrap();
        }
        std::fs::create_dir(pki.path("archive")).unwrap();
        std::fs::create_dir(pki.path("live")).unwrap();
        pki.crl();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self, ca: &str) -> PathBuf {
        self.path(ca).join("ca.pem")
    }

    fn openssl(&self, folder: &str, args: &[&str]) {
        let mut command = Command::new("openssl");
        command.current_dir(self.path(folder)).arg(args[0]);
        if args[0] == "req" {
            command.args(EC).arg("-nodes");
        }
        let made = command.args(&args[1..]).output().expect("run openssl");
        assert!(made.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&made.stderr));
    }

    /// A server certificate for localhost in `archive/{name}.pem` with its key in
    /// `archive/{name}.key`, with `organization` in its subject.
    fn server_cert(&self, name: &str, organization: &str) -> (PathBuf, PathBuf) {
        let csr = self.path(&format!("archive/{name}.csr"));
        let (cert, key) = (self.path(&format!("archive/{name}.pem")), self.path(&format!("archive/{name}.key")));
        let subject = format!("/CN=localhost/O={organization}");
        self.openssl("server-ca", &["req", "-subj", &subject, "-keyout", key.to_str().unwrap(), "-out", csr.to_str().unwrap()]);
        std::fs::write(self.path("server-ca/ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        let serial = format!("{}", 1000 + rand_u16());
        self.openssl(
            "server-ca",
            &[
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                cert.to_str().unwrap(),
            ],
        );
        (cert, key)
    }

    /// A client certificate of `ca` with `subject` (and `san`), in `{ca}/{name}.pem` and `.key`;
    /// `expired`: valid only in 2020.
    fn client_cert(&self, ca: &str, name: &str, subject: &str, san: Option<&str>, expired: bool) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.path(&format!("{ca}/{name}.pem")), self.path(&format!("{ca}/{name}.key")));
        self.openssl(ca, &["req", "-subj", subject, "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr")]);
        let mut config = DEVICE_CA_CONFIG.to_string();
        if let Some(san) = san {
            config.push_str(&format!("subjectAltName = {san}\n"));
        }
        std::fs::write(self.path(ca).join(format!("{name}.cnf")), config).unwrap();
        let mut args =
            vec!["ca", "-batch", "-config", &format!("{name}.cnf"), "-cert", "ca.pem", "-keyfile", "ca.key", "-extensions", "client"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
        if expired {
            args.extend(["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"].map(String::from));
        } else {
            args.extend(["-days", "1"].map(String::from));
        }
        args.extend(["-in", &format!("{name}.csr"), "-out", &format!("{name}.pem")].map(|s| s.to_string()));
        self.openssl(ca, &args.iter().map(String::as_str).collect::<Vec<_>>());
        (cert, key)
    }

    /// Regenerates the device CA's revocation list (`device-ca/crl.pem`).
    fn crl(&self) -> PathBuf {
        self.openssl("device-ca", &["ca", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-gencrl", "-out", "crl.next"]);
        // Swapped in whole, as a CA publishes it.
        std::fs::rename(self.path("device-ca/crl.next"), self.path("device-ca/crl.pem")).unwrap();
        self.path("device-ca/crl.pem")
    }

    fn revoke(&self, cert: &Path) {
        let cert = cert.to_str().unwrap();
        self.openssl("device-ca", &["ca", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-revoke", cert]);
        self.crl();
    }

    /// Points `live/{link}` at `target` as certbot renews: a new symlink renamed over the old.
    fn link(&self, link: &str, target: &Path) {
        let next = self.path(&format!("live/{link}.next"));
        let _ = std::fs::remove_file(&next);
        std::os::unix::fs::symlink(target, &next).unwrap();
        std::fs::rename(&next, self.path(&format!("live/{link}"))).unwrap();
    }
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 60000) as u16
}

/// The subject of the certificate a TLS listener presents to a new connection (trusting
/// `ca`), or why the handshake failed.
async fn presented(addr: SocketAddr, ca: &Path) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let der = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    Ok(cert.subject().to_string())
}

/// Polls until `check` holds, or fails the test after a minute.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

/// A counter of /metrics (0 when absent).
async fn counter(app: &TestApp, name: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Serves HTTPS with `live/cert.pem` and `live/key.pem` (and client certificates when
/// `client_ca`), checking the files every 100 ms; the test client trusts the server CA.
async fn spawn_tls_app(pki: &Pki, client_ca: bool) -> TestApp {
    let (cert, key) = (pki.path("live/cert.pem"), pki.path("live/key.pem"));
    let (device_ca, crl) = (pki.ca("device-ca"), pki.path("device-ca/crl.pem"));
    let mut app = spawn_app_with(|s| {
        s.tls = Some(updraft::config::TlsSettings { cert, key });
        s.tls_policy.reload_every = Some(Duration::from_millis(100));
        if client_ca {
            s.tls_policy.client_ca = Some(device_ca);
            s.tls_policy.client_crl = Some(crl);
        }
    })
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca("server-ca")).unwrap()).unwrap();
    app.client = reqwest::Client::builder().no_proxy().tls_certs_only([ca]).resolve("localhost", app.addr).build().unwrap();
    app.base = format!("https://localhost:{}", app.addr.port());
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_served_without_a_restart_over_https_and_mqtt() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("cert1", "First");
    pki.link("cert.pem", &cert);
    pki.link("key.pem", &key);
    let app = spawn_tls_app(&pki, false).await;
    let (https, mqtts) = (app.addr, app.mqtt_tls_addr.expect("MQTT over TLS listens"));
    let server_ca = pki.ca("server-ca");
    for addr in [https, mqtts] {
        let subject = presented(addr, &server_ca).await.unwrap();
        assert!(subject.contains("O=First"), "{subject}");
    }

    // Renewed as certbot does: new files in archive/, the live/ symlinks moved to them.
    let (cert, key) = pki.server_cert("cert2", "Second");
    pki.link("key.pem", &key);
    pki.link("cert.pem", &cert);
    for addr in [https, mqtts] {
        eventually("the renewed certificate is presented", || async {
            presented(addr, &server_ca).await.is_ok_and(|s| s.contains("O=Second"))
        })
        .await;
    }
    assert_eq!(counter(&app, "updraft_tls_reloads_total").await, 1.0);
    let health = app.client.get(app.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // A half-written certificate, then a certificate without its key: both keep the one in use.
    let pem = std::fs::read_to_string(pki.path("archive/cert2.pem")).unwrap();
    std::fs::write(pki.path("archive/half.pem"), &pem[..pem.len() / 2]).unwrap();
    pki.link("cert.pem", &pki.path("archive/half.pem"));
    eventually("the half-written certificate is refused", || async { counter(&app, "updraft_tls_reload_failures_total").await >= 1.0 })
        .await;
    let (cert3, key3) = pki.server_cert("cert3", "Third");
    pki.link("cert.pem", &cert3);
    eventually("the certificate without its key is refused", || async { counter(&app, "updraft_tls_reload_failures_total").await >= 2.0 })
        .await;
    for addr in [https, mqtts] {
        let subject = presented(addr, &server_ca).await.unwrap();
        assert!(subject.contains("O=Second"), "a refused pair replaced the certificate: {subject}");
    }
    // Its key arrives: the pair is complete and served.
    pki.link("key.pem", &key3);
    for addr in [https, mqtts] {
        eventually("the completed pair is presented", || async { presented(addr, &server_ca).await.is_ok_and(|s| s.contains("O=Third")) })
            .await;
    }
    assert_eq!(counter(&app, "updraft_tls_reloads_total").await, 2.0);
    app.stop().await;
}

/// curl over HTTPS to `path`, with a client certificate and a device token when given: the
/// status code, or None when the TLS handshake failed.
async fn curl(
    app: &TestApp,
    pki: &Pki,
    path: &str,
    cert: Option<&(PathBuf, PathBuf)>,
    token: Option<&str>,
    body: Option<Value>,
) -> Option<u16> {
    let mut command = Command::new("curl");
    command.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "--cacert"]).arg(pki.ca("server-ca"));
    command.args(["--resolve", &format!("localhost:{}:127.0.0.1", app.addr.port())]);
    if let Some((cert, key)) = cert {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "--data", &body.to_string()]);
    }
    command.arg(app.url(path));
    let output = tokio::task::spawn_blocking(move || command.output().expect("run curl")).await.unwrap();
    String::from_utf8_lossy(&output.stdout).parse().ok().filter(|code| *code != 0)
}

async fn register(app: &TestApp, mac: &str, token: bool) -> (String, Option<String>) {
    let response = app
        .admin(Method::POST, "/api/v1/devices")
        .json(&json!({"mac": mac, "product": "sensor", "hardware": "esp32", "version": "1.0.0", "issue_token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().map(str::to_string))
}

async fn version_of(app: &TestApp, id: &str) -> Value {
    app.admin(Method::GET, &format!("/api/v1/devices/{id}")).send().await.unwrap().json::<Value>().await.unwrap()["version"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_authenticate_with_client_certificates_over_https() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "Updraft");
    pki.link("cert.pem", &cert);
    pki.link("key.pem", &key);
    let app = spawn_tls_app(&pki, true).await;
    let (a, _) = register(&app, "02:00:00:00:a1:01", false).await;
    let (b, b_token) = register(&app, "02:00:00:00:b1:01", true).await;
    let b_token = b_token.unwrap();
    let cert_a = pki.client_cert("device-ca", "a", &format!("/CN={a}/O=Fleet"), None, false);
    let cert_a_mac = pki.client_cert("device-ca", "a-mac", "/CN=02-00-00-00-A1-01", None, false);
    let unknown = pki.client_cert("device-ca", "unknown", "/CN=no-such-device", None, false);
    let no_cn = pki.client_cert("device-ca", "no-cn", "/O=Fleet", None, false);
    let expired = pki.client_cert("device-ca", "expired", &format!("/CN={a}"), None, true);
    let other_ca = pki.client_cert("other-ca", "a-elsewhere", &format!("/CN={a}"), None, false);
    let checkin = "/api/v1/device/checkin?version=1.1.0";

    // Without a certificate the TLS layer asks for none: operators and token devices as before.
    assert_eq!(curl(&app, &pki, "/api/health", None, None, None).await, Some(200));
    assert_eq!(curl(&app, &pki, checkin, None, None, None).await, Some(401));
    assert_eq!(curl(&app, &pki, checkin, None, Some(&b_token), None).await, Some(200));

    // The certificate is the device's credential, by id or MAC in its common name.
    assert_eq!(curl(&app, &pki, checkin, Some(&cert_a), None, None).await, Some(200));
    assert_eq!(version_of(&app, &a).await, "1.1.0", "the check-in was device A's");
    assert_eq!(version_of(&app, &b).await, "1.1.0");
    let checkin_2 = "/api/v1/device/checkin?version=1.2.0";
    assert_eq!(curl(&app, &pki, checkin_2, Some(&cert_a_mac), None, None).await, Some(200));
    assert_eq!(version_of(&app, &a).await, "1.2.0");
    assert_eq!(version_of(&app, &b).await, "1.1.0", "device B is untouched");

    // Device A's certificate never acts for device B: not with B's token, not naming B.
    assert_eq!(curl(&app, &pki, checkin_2, Some(&cert_a), Some(&b_token), None).await, Some(403));
    assert_eq!(version_of(&app, &b).await, "1.1.0");
    // Other routes devices read take the certificate as well (no such asset: 404, not 401).
    let asset = "/api/v1/assets/sensor/logo/latest";
    assert_eq!(curl(&app, &pki, asset, None, None, None).await, Some(401));
    assert_eq!(curl(&app, &pki, asset, Some(&cert_a), None, None).await, Some(404));
    let provision_b = json!({"mac": "02:00:00:00:b1:01", "product": "sensor"});
    assert_eq!(curl(&app, &pki, "/api/v1/device/provision", Some(&cert_a), None, Some(provision_b)).await, Some(403));

    // Certificates that name no registered device are refused; so are the expired one and
    // one of another CA, at the handshake.
    assert_eq!(curl(&app, &pki, checkin, Some(&unknown), None, None).await, Some(401));
    assert_eq!(curl(&app, &pki, checkin, Some(&no_cn), None, None).await, Some(401));
    assert_eq!(curl(&app, &pki, checkin, Some(&expired), None, None).await, None);
    assert_eq!(curl(&app, &pki, checkin, Some(&other_ca), None, None).await, None);
    assert_eq!(curl(&app, &pki, "/api/health", Some(&other_ca), None, None).await, None);

    // A revoked certificate: refused at the handshake once the new CRL is picked up.
    pki.revoke(&cert_a_mac.0);
    eventually("the revoked certificate is refused", || async { curl(&app, &pki, checkin, Some(&cert_a_mac), None, None).await.is_none() })
        .await;
    assert_eq!(curl(&app, &pki, checkin, Some(&cert_a), None, None).await, Some(200), "A's other certificate still works");

    // A deleted device's certificate names no device any more.
    assert_eq!(app.admin(Method::DELETE, &format!("/api/v1/devices/{a}")).send().await.unwrap().status(), 204);
    assert_eq!(curl(&app, &pki, checkin, Some(&cert_a), None, None).await, Some(401));
    app.stop().await;
}

const PAHO_CONNECT: &str = r#"
import json, ssl, sys, time
import paho.mqtt.client as mqtt
port, ca, cert, key, username, password = sys.argv[1:7]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
client.tls_set(ca_certs=ca, certfile=cert or None, keyfile=key or None)
if username:
    client.username_pw_set(username, password or None)
result = {}
def on_connect(client, userdata, flags, reason, properties):
    result["connack"] = reason.value
client.on_connect = on_connect
try:
    client.connect("localhost", int(port), keepalive=30)
    deadline = time.time() + 20
    while "connack" not in result and time.time() < deadline:
        rc = client.loop(timeout=0.5)
        if rc != mqtt.MQTT_ERR_SUCCESS and "connack" not in result:
            result["error"] = mqtt.error_string(rc)
            break
except Exception as e:
    result["error"] = type(e).__name__
if not result:
    result["error"] = "no CONNACK"
print(json.dumps(result))
"#;

/// A paho-mqtt connection over TLS: `{"connack": code}` or `{"error": ...}` (the handshake).
async fn paho(app: &TestApp, pki: &Pki, cert: Option<&(PathBuf, PathBuf)>, username: &str, password: &str) -> Value {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv-paho/bin/python");
    let python = std::env::var("UPDRAFT_TEST_PAHO_PYTHON").map(PathBuf::from).unwrap_or(python);
    let (cert, key) = cert.map(|(c, k)| (c.display().to_string(), k.display().to_string())).unwrap_or_default();
    let port = app.mqtt_tls_addr.unwrap().port().to_string();
    let output = tokio::process::Command::new(python)
        .args(["-c", PAHO_CONNECT, &port, pki.ca("server-ca").to_str().unwrap(), &cert, &key, username, password])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("paho finishes").unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("paho: {} {}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_log_in_to_mqtt_over_tls_with_client_certificates() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "Updraft");
    pki.link("cert.pem", &cert);
    pki.link("key.pem", &key);
    let app = spawn_tls_app(&pki, true).await;
    let (a, _) = register(&app, "02:00:00:00:a2:01", false).await;
    let (b, b_token) = register(&app, "02:00:00:00:b2:01", true).await;
    let b_token = b_token.unwrap();
    let cert_a = pki.client_cert("device-ca", "a", &format!("/CN={a}"), None, false);
    let unknown = pki.client_cert("device-ca", "unknown", "/CN=02:00:00:00:ff:ff", None, false);
    let other_ca = pki.client_cert("other-ca", "a-elsewhere", &format!("/CN={a}"), None, false);

    // The certificate alone logs device A in (with or without its id as user name).
    assert_eq!(paho(&app, &pki, Some(&cert_a), "", "").await, json!({"connack": 0}));
    assert_eq!(paho(&app, &pki, Some(&cert_a), &a, "").await, json!({"connack": 0}));
    // Without a certificate, tokens work as before.
    assert_eq!(paho(&app, &pki, None, &b, &b_token).await, json!({"connack": 0}));
    // A's certificate with B's token or B's name: refused (CONNACK 4, which paho reports as 134: bad user name or password).
    assert_eq!(paho(&app, &pki, Some(&cert_a), &b, &b_token).await, json!({"connack": 134}));
    assert_eq!(paho(&app, &pki, Some(&cert_a), &b, "").await, json!({"connack": 134}));
    // A certificate that names no registered device, and no certificate nor credential.
    assert_eq!(paho(&app, &pki, Some(&unknown), "", "").await, json!({"connack": 134}));
    assert_eq!(paho(&app, &pki, None, "", "").await, json!({"connack": 134}));
    // Another CA's certificate ends the handshake.
    assert!(paho(&app, &pki, Some(&other_ca), "", "").await.get("error").is_some());

    // A certificate session is device A's: its own topics, not B's; a token issued to A does
    // not end it (it was not opened with a token); deleting A does.
    let mut options = rumqttc::MqttOptions::new(a.clone(), "localhost", app.mqtt_tls_addr.unwrap().port());
    let client_auth = (std::fs::read(&cert_a.0).unwrap(), std::fs::read(&cert_a.1).unwrap());
    options.set_transport(rumqttc::Transport::tls(std::fs::read(pki.ca("server-ca")).unwrap(), Some(client_auth), None));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let mut next = async || tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await.expect("an MQTT event in time");
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) = next().await.unwrap() {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
            break;
        }
    }
    let mut suback = async |topic: String| {
        client.subscribe(topic, rumqttc::QoS::AtLeastOnce).await.unwrap();
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) = next().await.unwrap() {
                return ack.return_codes;
            }
        }
    };
    assert_eq!(suback(format!("updraft/{a}/cmd")).await, [rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]);
    assert_eq!(suback(format!("updraft/{b}/cmd")).await, [rumqttc::SubscribeReasonCode::Failure]);
    let issued = app.admin(Method::POST, &format!("/api/v1/devices/{a}/token")).send().await.unwrap();
    assert!(issued.status().is_success());
    let closed = async |eventloop: &mut rumqttc::EventLoop, wait: Duration| {
        tokio::time::timeout(wait, async { while eventloop.poll().await.is_ok() {} }).await.is_ok()
    };
    assert!(!closed(&mut eventloop, Duration::from_secs(3)).await, "a token issued to the device ended its certificate session");
    assert_eq!(app.admin(Method::DELETE, &format!("/api/v1/devices/{a}")).send().await.unwrap().status(), 204);
    assert!(closed(&mut eventloop, Duration::from_secs(10)).await, "deleting the device ends its certificate session");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_alternative_name_can_name_the_device_over_https_and_mqtt() {
    let pki = Pki::new();
    let (cert, key) = pki.server_cert("server", "Updraft");
    pki.link("cert.pem", &cert);
    pki.link("key.pem", &key);
    let (server_cert, server_key) = (pki.path("live/cert.pem"), pki.path("live/key.pem"));
    let device_ca = pki.ca("device-ca");
    let mut app = spawn_app_with(|s| {
        s.tls = Some(updraft::config::TlsSettings { cert: server_cert, key: server_key });
        s.tls_policy.client_ca = Some(device_ca);
        s.tls_policy.client_identity = updraft::config::ClientIdentity::San;
    })
    .await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca("server-ca")).unwrap()).unwrap();
    app.client = reqwest::Client::builder().no_proxy().tls_certs_only([ca]).resolve("localhost", app.addr).build().unwrap();
    app.base = format!("https://localhost:{}", app.addr.port());
    let (a, _) = register(&app, "02:00:00:00:a3:01", false).await;
    let (b, _) = register(&app, "02:00:00:00:b3:01", false).await;
    // The common name says B; the SAN, which counts, says A.
    let cert_a = pki.client_cert("device-ca", "a", &format!("/CN={b}"), Some(&format!("DNS:{a}")), false);
    let cn_only = pki.client_cert("device-ca", "cn-only", &format!("/CN={b}"), None, false);
    assert_eq!(curl(&app, &pki, "/api/v1/device/checkin?version=2.0.0", Some(&cert_a), None, None).await, Some(200));
    assert_eq!(version_of(&app, &a).await, "2.0.0");
    assert_eq!(version_of(&app, &b).await, "1.0.0");
    assert_eq!(curl(&app, &pki, "/api/v1/device/checkin?version=2.0.0", Some(&cn_only), None, None).await, Some(401));
    assert_eq!(paho(&app, &pki, Some(&cert_a), &a, "").await, json!({"connack": 0}));
    assert_eq!(paho(&app, &pki, Some(&cert_a), &b, "").await, json!({"connack": 134}));
    assert_eq!(paho(&app, &pki, Some(&cn_only), "", "").await, json!({"connack": 134}));
    app.stop().await;
}
