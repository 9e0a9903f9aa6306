//! weir against servers that demand credentials or TLS, each configured
//! here from scratch: mutual TLS with a TLS-first handshake (a CA, a server
//! and a client certificate generated with `rcgen`), an nkey user, and a
//! JWT user from a `.creds` file on a server in operator mode (operator,
//! account and user JWTs signed here with `nkeys`). In each, the host
//! handles an event published with the same credentials, and a client
//! without them is refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use weir_host::Daemon;
use weir_host::nats::{ConnectAuth, Credentials, NatsServer, Subjects, TlsConfig, Transport};

use crate::common::{heavy, marker_config, marker_units};
use crate::nats::rt;

/// Start a server with `conf`; keep the directory alive.
fn server_with(dir: &Path, conf: &str) -> NatsServer {
    let file = dir.join("server.conf");
    std::fs::write(&file, conf).unwrap();
    NatsServer::start_with_config(&dir.join("js"), &file).unwrap_or_else(|e| panic!("{e}"))
}

/// Publish one `restart:u0` event with `auth` to `url`, start the marker
/// host with `nats` changed by `configure`, and wait until the effect ran.
async fn handled_with(
    url: &str,
    auth: ConnectAuth,
    dir: &Path,
    configure: impl FnOnce(&mut weir_host::nats::NatsConfig),
) {
    let marker = dir.join("marker");
    let plan = marker_config(url, &marker, 1)
        .nats(configure)
        .valid()
        .plan()
        .unwrap();
    let host = Daemon::start(plan).await.unwrap();
    let publisher = Transport::connect_with(
        &[url.to_owned()],
        "publisher",
        Subjects::default(),
        "WEIR_EVENTS",
        auth,
    )
    .await
    .unwrap();
    publisher
        .publish_event(
            "test",
            "cluster",
            Bytes::from_static(b"restart:u0"),
            "auth-1",
        )
        .await
        .unwrap();
    assert_eventually!(
        Duration::from_secs(20),
        "the event was handled",
        marker_units(&marker).contains("u0")
    );
    host.shutdown().await.unwrap();
}

/// Whether a plain client (no credentials) gets a connection within 2 s.
async fn anonymous_connects(url: &str) -> bool {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
    matches!(
        tokio::time::timeout(Duration::from_secs(3), options.connect(url)).await,
        Ok(Ok(_))
    )
}

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, as PEM files in `dir`.
pub fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (redis-server) takes a leaf whose issuer is
    // its own subject for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "weir test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["weir-node1".into()]);
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server_cert),
        server_key: write("server-key.pem", server_key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client-key.pem", client_key),
    }
}

#[test]
fn mutual_tls_with_a_tls_first_handshake() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let server = server_with(
        dir.path(),
        &format!(
            "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true, handshake_first: true }}\n",
            pki.server_cert, pki.server_key, pki.ca
        ),
    );
    let url = format!("tls://127.0.0.1:{}", server.port());
    let tls = TlsConfig {
        ca_file: Some(pki.ca.clone()),
        cert_file: Some(pki.client_cert.clone()),
        key_file: Some(pki.client_key.clone()),
        first: true,
    };
    rt().block_on(async {
        assert!(
            !anonymous_connects(&url).await,
            "a client without TLS got in"
        );
        // TLS, but no client certificate: refused (verify: true).
        let no_cert = async_nats::ConnectOptions::new()
            .add_root_certificates(pki.ca.clone())
            .tls_first()
            .connection_timeout(Duration::from_secs(2))
            .connect(&url);
        assert!(
            !matches!(
                tokio::time::timeout(Duration::from_secs(3), no_cert).await,
                Ok(Ok(_))
            ),
            "a client without a certificate got in"
        );
        let auth = ConnectAuth {
            tls: tls.clone(),
            ..ConnectAuth::default()
        };
        handled_with(&url, auth, dir.path(), |n| n.tls = tls).await;
    });
    // `weir publish` with the same TLS options as flags.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["publish", "--url", &url, "--tls-first", "--name", "test"])
        .args(["--source", "cluster", "--payload", "restart:u0"])
        .arg("--tls-ca-file")
        .arg(&pki.ca)
        .arg("--tls-cert-file")
        .arg(&pki.client_cert)
        .arg("--tls-key-file")
        .arg(&pki.client_key)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1 stored"), "{stderr}");
}

#[test]
fn nkey_user_from_a_seed_file() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed = dir.path().join("node1.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let server = server_with(
        dir.path(),
        &format!(
            "accounts {{ WEIR {{ jetstream: enabled, users: [ {{ nkey: {:?} }} ] }} }}\n",
            user.public_key()
        ),
    );
    rt().block_on(async {
        assert!(!anonymous_connects(&server.url()).await);
        let auth = ConnectAuth {
            credentials: Credentials::NkeySeed(user.seed().unwrap()),
            ..ConnectAuth::default()
        };
        handled_with(&server.url(), auth, dir.path(), |n| {
            n.nkey_seed_file = Some(seed);
        })
        .await;
    });
}

/// A JWT signed by `signer` with `claims` (the `iss`, `iat` and `jti`
/// fields added), as nats-io/jwt v2 encodes it.
fn jwt(signer: &nkeys::KeyPair, mut claims: serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    claims["iss"] = signer.public_key().into();
    claims["iat"] = 1_700_000_000u64.into();
    claims["jti"] = format!("weir-test-{}", claims["sub"].as_str().unwrap_or("")).into();
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = signer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64.encode(signature))
}

#[test]
fn jwt_user_from_a_creds_file_on_an_operator_mode_server() {
    let _heavy = heavy();
    let dir = tempfile::tempdir().unwrap();
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        serde_json::json!({
            "sub": operator.public_key(), "name": "weir-test",
            "nats": { "type": "operator", "version": 2 }
        }),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        serde_json::json!({
            "sub": account.public_key(), "name": "WEIR",
            "nats": { "type": "account", "version": 2, "limits": unlimited }
        }),
    );
    let system_jwt = jwt(
        &operator,
        serde_json::json!({
            "sub": system.public_key(), "name": "SYS",
            "nats": { "type": "account", "version": 2 }
        }),
    );
    let user_jwt = jwt(
        &account,
        serde_json::json!({
            "sub": user.public_key(), "name": "node1",
            "nats": { "type": "user", "version": 2, "pub": {}, "sub": {},
                      "subs": -1, "data": -1, "payload": -1 }
        }),
    );
    let creds = dir.path().join("node1.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let server = server_with(
        dir.path(),
        &format!(
            "operator: {operator_jwt:?}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{ {acc}: {account_jwt:?}, {sys}: {system_jwt:?} }}\n",
            acc = account.public_key(),
            sys = system.public_key()
        ),
    );
    rt().block_on(async {
        assert!(!anonymous_connects(&server.url()).await);
        let auth = ConnectAuth {
            credentials: Credentials::CredsFile(creds.clone()),
            ..ConnectAuth::default()
        };
        handled_with(&server.url(), auth, dir.path(), |n| {
            n.creds_file = Some(creds);
        })
        .await;
    });
}
