//! Whether a TLS endpoint asks its clients for a certificate, learnt from one TCP handshake
//! that offers none. A direct OpenShell gateway asks (mTLS); an authenticating reverse proxy
//! in front of one (edge mode) does not. `openshell gateway add` uses this to tell which
//! credentials a new gateway needs before it waits for anything.
//!
//! ```text
//! client                          server (TLS 1.3)
//!   ClientHello  ───────────────>
//!                <─────────────── ServerHello, EncryptedExtensions,
//!                                 [CertificateRequest]   <- seen here (resolver called)
//!                                 Certificate            <- verified here
//! ```
//!
//! The request comes before the server's certificate, so it is seen even when that
//! certificate cannot be verified with what the client has (no CA yet): the handshake then
//! fails and nothing more is learnt or sent. Verification is the ordinary one, never
//! weakened; a failed verification only tells that the request point was passed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::client::Endpoint;

/// What the endpoint asked of a client without a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// It asked for a client certificate: a direct (mTLS) gateway.
    Requested,
    /// Its handshake went past the point where it would have asked, without asking.
    NotRequested,
    /// Nothing could be learnt (unreachable, timed out, not TLS 1.3): why.
    Unknown(String),
}

/// Records whether the server asked for a client certificate, and offers none.
#[derive(Debug, Default)]
struct Observer {
    asked: AtomicBool,
}

impl ResolvesClientCert for Observer {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// One handshake with `endpoint`'s TCP port, within `limit`. `roots` verify the server as
/// usual (empty: nothing verifies, which does not hide a request for a certificate).
pub async fn client_auth(
    endpoint: &Endpoint,
    roots: &[CertificateDer<'static>],
    limit: Duration,
) -> ClientAuth {
    match tokio::time::timeout(limit, handshake(endpoint, roots)).await {
        Ok(found) => found,
        Err(_) => ClientAuth::Unknown(format!(
            "no TLS handshake with {}:{} within {limit:?}",
            endpoint.host, endpoint.port
        )),
    }
}

async fn handshake(endpoint: &Endpoint, roots: &[CertificateDer<'static>]) -> ClientAuth {
    let mut store = RootCertStore::empty();
    for ca in roots {
        let _ = store.add(ca.clone());
    }
    let observer = Arc::new(Observer::default());
    let config = match rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
    {
        Ok(b) => b
            .with_root_certificates(store)
            .with_client_cert_resolver(observer.clone()),
        Err(e) => return ClientAuth::Unknown(format!("TLS 1.3 unavailable: {e}")),
    };
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = match ServerName::try_from(endpoint.host.clone()) {
        Ok(n) => n,
        Err(e) => {
            return ClientAuth::Unknown(format!("{} is not a TLS server name: {e}", endpoint.host));
        }
    };
    let tcp = match TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await {
        Ok(t) => t,
        Err(e) => {
            return ClientAuth::Unknown(format!(
                "cannot connect to {}:{}: {e}",
                endpoint.host, endpoint.port
            ));
        }
    };
    let result = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    if observer.asked.load(Ordering::SeqCst) {
        return ClientAuth::Requested;
    }
    match result {
        Ok(_) => ClientAuth::NotRequested,
        Err(e) => {
            let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            match tls {
                // The server's Certificate comes after its CertificateRequest.
                Some(rustls::Error::InvalidCertificate(_)) => ClientAuth::NotRequested,
                _ => ClientAuth::Unknown(format!("TLS handshake failed: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::PrivateKeyDer;

    /// A TLS 1.3 server on loopback that completes handshakes (asking for a client
    /// certificate when `ask`) and then drops the connection.
    async fn server(ask: bool) -> (u16, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let builder = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap();
        let builder = if ask {
            let mut roots = RootCertStore::empty();
            roots.add(der.clone()).unwrap();
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    crate::tls::provider(),
                )
                .build()
                .unwrap(),
            )
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        (port, der)
    }

    fn endpoint(host: &str, port: u16) -> Endpoint {
        Endpoint::parse(&format!("https://{host}:{port}")).unwrap()
    }

    #[tokio::test]
    async fn a_request_for_a_client_certificate_is_seen_with_or_without_the_ca() {
        let limit = Duration::from_secs(5);
        let (port, ca) = server(true).await;
        let ep = endpoint("localhost", port);
        assert_eq!(client_auth(&ep, &[], limit).await, ClientAuth::Requested);
        assert_eq!(client_auth(&ep, &[ca], limit).await, ClientAuth::Requested);

        let (port, ca) = server(false).await;
        let ep = endpoint("localhost", port);
        assert_eq!(client_auth(&ep, &[], limit).await, ClientAuth::NotRequested);
        assert_eq!(
            client_auth(&ep, &[ca], limit).await,
            ClientAuth::NotRequested
        );

        // Nothing listening: nothing learnt, quickly.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let started = std::time::Instant::now();
        let got = client_auth(&endpoint("127.0.0.1", port), &[], limit).await;
        assert!(
            matches!(got, ClientAuth::Unknown(ref why) if why.contains("cannot connect")),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
