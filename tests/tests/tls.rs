//! Issue 16: TLS and mutual TLS on the real server, with certificates made in the test; plaintext off
//! loopback refused at start-up.

use std::path::Path;
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tally_proto::v1::GetWalletRequest;
use tally_proto::v1::wallet_service_client::WalletServiceClient;
use tally_tests::{Key, TallyServer, tally_binary};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    /// Signed by the same CA, bound to no key.
    colleague: (String, String),
    stranger: (String, String),
}

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate it signed, and a
/// client certificate from another CA.
fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params.clone(), KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, issuer: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let other_ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    Pki {
        ca: ca.pem(),
        server: leaf(vec!["localhost".into(), "127.0.0.1".into()], &ca),
        client: leaf(vec!["till-3.acme".into()], &ca),
        colleague: leaf(vec!["till-4.acme".into()], &ca),
        stranger: leaf(vec!["till-3.acme".into()], &other_ca),
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn connect(url: &str, ca: &str, identity: Option<&(String, String)>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(url.to_owned()).unwrap().tls_config(tls)?.connect().await
}

async fn read(channel: Channel, server: &TallyServer) -> tonic::Code {
    let mut wallets = WalletServiceClient::with_interceptor(channel, Key::new(&server.platform_key()));
    let request = GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() };
    wallets.get_wallet(request).await.map_or_else(|s| s.code(), |_| tonic::Code::Ok)
}

#[tokio::test]
async fn tls_and_mutual_tls_handshakes() {
    let pki = pki();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = (write(files.path(), "server.pem", &pki.server.0), write(files.path(), "server.key", &pki.server.1));
    let ca = write(files.path(), "ca.pem", &pki.ca);

    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tls-cert", &cert, "--tls-key", &key]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let channel = connect(&server.url, &pki.ca, None).await.unwrap();
    assert_eq!(read(channel, &server).await, tonic::Code::NotFound, "served over TLS (no such wallet yet)");
    let plaintext = Channel::from_shared(server.url.replace("https://", "http://")).unwrap().connect().await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(channel) => read(channel, &server).await != tonic::Code::NotFound,
    };
    assert!(refused, "a plaintext client is not served by a TLS server");
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let server = TallyServer::start(dir.path(), &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca]);
    let channel = connect(&server.url, &pki.ca, Some(&pki.client)).await.unwrap();
    assert_eq!(read(channel, &server).await, tonic::Code::NotFound, "a client with a certificate of the CA is served");
    // A certificate bound to a key authenticates as that key, without a token; one bound to none does not.
    let mut keys = tally_proto::v1::keys_service_client::KeysServiceClient::with_interceptor(
        connect(&server.url, &pki.ca, Some(&pki.client)).await.unwrap(),
        Key::new(&server.platform_key()),
    );
    let bind = tally_proto::v1::CreateKeyRequest {
        tenant_id: "demo".into(),
        roles: vec![tally_proto::v1::Role::Pos as i32],
        label: "till 3".into(),
        client_cert_pem: pki.client.0.clone(),
        ..Default::default()
    };
    let bound = keys.create_key(bind.clone()).await.unwrap().into_inner().key.unwrap();
    assert_eq!(bound.client_cert_sha256.len(), 64);
    assert_eq!(keys.create_key(bind).await.unwrap_err().code(), tonic::Code::AlreadyExists, "one certificate, one key");
    let request = || GetWalletRequest { tenant_id: "demo".into(), wallet_id: "c-1".into(), ..Default::default() };
    let mut till = WalletServiceClient::new(connect(&server.url, &pki.ca, Some(&pki.client)).await.unwrap());
    assert_eq!(till.get_wallet(request()).await.unwrap_err().code(), tonic::Code::NotFound, "authenticated as the till's key");
    let mut other = WalletServiceClient::new(connect(&server.url, &pki.ca, Some(&pki.colleague)).await.unwrap());
    assert_eq!(other.get_wallet(request()).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    keys.revoke_key(tally_proto::v1::RevokeKeyRequest { key_id: bound.key_id, reason: "till stolen".into() }).await.unwrap();
    assert_eq!(till.get_wallet(request()).await.unwrap_err().code(), tonic::Code::Unauthenticated, "revoked with its key");
    for (who, identity) in [("no certificate", None), ("another CA's certificate", Some(&pki.stranger))] {
        let served = match connect(&server.url, &pki.ca, identity).await {
            Err(_) => false,
            Ok(channel) => read(channel, &server).await == tonic::Code::NotFound,
        };
        assert!(!served, "a client with {who} is served");
    }
}

#[test]
fn plaintext_off_loopback_and_half_tls_settings_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for (args, says) in [
        (vec!["--listen", "0.0.0.0:0"], "would send API keys and customer data in clear"),
        (vec!["--listen", "127.0.0.1:0", "--tls-cert", "server.pem"], "--tls-cert needs --tls-key"),
        (vec!["--listen", "127.0.0.1:0", "--tls-cert", "missing.pem", "--tls-key", "missing.key"], "cannot read --tls-cert missing.pem"),
    ] {
        let output = Command::new(tally_binary()).args(["serve", "--data", data]).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "{args:?}");
    }
}
