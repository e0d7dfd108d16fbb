//! A client that presents a valid certificate with a key that is not the certificate's (so
//! its handshake signature cannot verify) is refused by the gateway. Our own client refuses
//! to be configured that way, so this test builds a raw rustls client whose certificate
//! resolver skips that check.

use std::sync::Arc;

use openshell_tests::{Gateway, TestPki};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Presents `cert` with a signing key from another certificate.
#[derive(Debug)]
struct MismatchedKey(Arc<CertifiedKey>);

impl ResolvesClientCert for MismatchedKey {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_with_someone_elses_key_is_refused() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let alice = pki.client("alice", &[]);
    let mallory = pki.client("mallory", &[]);
    let cert: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(alice.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let wrong_key = PrivateKeyDer::from_pem_slice(mallory.key_pem.as_bytes()).unwrap();
    let signer = rustls::crypto::ring::sign::any_supported_type(&wrong_key).unwrap();
    let mismatched = Arc::new(CertifiedKey::new(cert, signer));

    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pki.ca_pem().as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(MismatchedKey(mismatched)));
    cfg.alpn_protocols = vec![b"h2".to_vec()];

    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let outcome = async {
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3: the verdict on the client's certificate arrives after its Finished.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    }
    .await;
    let err = outcome.expect_err("the gateway accepted a certificate whose key does not match");
    let text = err.to_string();
    assert!(
        text.contains("DecryptError") || text.contains("BadCertificate"),
        "unexpected refusal: {text}"
    );
    // And the real client names the problem before sending anything.
    let mut creds = alice.clone();
    creds.key_pem = mallory.key_pem.clone();
    let material = openshell_transport::tls::ClientMaterial::from_pem(
        creds.ca_pem.as_bytes(),
        Some((creds.cert_pem.as_bytes(), creds.key_pem.as_bytes())),
    )
    .unwrap();
    let err = material
        .client_config(b"h2", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not belong together"), "{err}");
}
