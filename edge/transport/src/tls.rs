//! rustls configurations for both ends, built on one crypto provider (ring), TLS 1.3 only.
//!
//! The server's certificate and its client-certificate verifier (trusted CAs + CRLs) sit
//! behind `ServerTls`, which can be reloaded while the gateway runs: configurations built
//! once keep pointing at it, so new handshakes see new material and established
//! connections are untouched by the reload itself; the gateway asks `verify_peer` whether
//! their certificates still chain to what is trusted now and closes those that do not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::TransportError;

/// ALPN for QUIC: HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN for the TCP fallback: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider used everywhere (mixing providers panics at runtime).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM document; `what` names the input in errors.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TransportError::Config(format!("{what}: not a PEM certificate ({e})")))?;
    if certs.is_empty() {
        return Err(TransportError::Config(format!(
            "{what}: no certificate found (expected a PEM block 'BEGIN CERTIFICATE')"
        )));
    }
    Ok(certs)
}

/// Parses the first private key in a PEM document.
pub fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| TransportError::Config(format!("{what}: no usable private key ({e})")))
}

/// Parses every CRL in a PEM document (an empty document means no CRL).
pub fn parse_crls(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TransportError> {
    CertificateRevocationListDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TransportError::Config(format!("{what}: not a PEM CRL ({e})")))
}

/// What the gateway presents and whom it trusts.
#[derive(Debug, Clone)]
pub struct ServerMaterial {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Arc<CertifiedKey>,
    /// CAs whose client certificates are accepted (several during a CA rotation).
    pub client_roots: Vec<CertificateDer<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl ServerMaterial {
    /// Builds the material from PEM documents, checking that the key matches the certificate.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: &[u8],
        crl_pem: &[u8],
    ) -> Result<Self, TransportError> {
        let cert_chain = parse_certs(cert_pem, "server certificate")?;
        let key = parse_key(key_pem, "server key")?;
        let certified = CertifiedKey::from_der(cert_chain.clone(), key, &provider()).map_err(|e| {
            TransportError::Config(format!(
                "server key does not match the server certificate ({e}): re-issue with `openshell pki rotate-server`"
            ))
        })?;
        Ok(ServerMaterial {
            cert_chain,
            key: Arc::new(certified),
            client_roots: parse_certs(client_ca_pem, "client CA")?,
            crls: parse_crls(crl_pem, "CRL")?,
        })
    }

    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TransportError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.client_roots {
            roots
                .add(ca.clone())
                .map_err(|e| TransportError::Config(format!("client CA is unusable: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(self.crls.clone())
            .only_check_end_entity_revocation()
            // A CRL exists only for the current CA; certificates of a CA still trusted during
            // rotation have no CRL and must not be refused for it.
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| {
                TransportError::Config(format!("cannot build the client verifier: {e}"))
            })?;
        Ok(verifier)
    }
}

/// The gateway's TLS state, shared by every listener and swapped on reload.
#[derive(Debug)]
pub struct ServerTls {
    cert: RwLock<Arc<CertifiedKey>>,
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Bumped after each reload, so connections know their last trust check is stale.
    generation: AtomicU64,
}

impl ServerTls {
    pub fn new(material: &ServerMaterial) -> Result<Arc<Self>, TransportError> {
        Ok(Arc::new(ServerTls {
            cert: RwLock::new(material.key.clone()),
            verifier: RwLock::new(material.verifier()?),
            generation: AtomicU64::new(1),
        }))
    }

    /// Replaces certificate, trusted CAs and CRLs for handshakes from now on.
    pub fn reload(&self, material: &ServerMaterial) -> Result<(), TransportError> {
        let verifier = material.verifier()?;
        *self.cert.write().unwrap_or_else(|p| p.into_inner()) = material.key.clone();
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = verifier;
        // After the swap: a check that read the old generation re-runs on its next call.
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Which trust material is in force; changes on every reload (never 0).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Verifies a peer's chain (end entity first) exactly as a full handshake would now:
    /// same verifier, current trust anchors and CRLs, current time. Needed because a
    /// resumed session restores the client certificate without verifying it again, and an
    /// open connection was verified against the trust of its handshake.
    pub fn verify_peer(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(rustls::Error::NoCertificatesPresented);
        };
        self.current_verifier()
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map(|_| ())
    }

    fn current_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A rustls server configuration for one ALPN. `early_data` enables 0-RTT (QUIC only);
    /// the session cache is shared so tickets survive configuration rebuilds.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[u8],
        early_data: bool,
        sessions: Arc<dyn rustls::server::StoresServerSessions>,
    ) -> Result<rustls::ServerConfig, TransportError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Config(format!("TLS 1.3 unavailable: {e}")))?
            .with_client_cert_verifier(Arc::new(ReloadingVerifier(self.clone())))
            .with_cert_resolver(Arc::new(ReloadingResolver(self.clone())));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.session_storage = sessions;
        // QUIC allows only 0 or u32::MAX; quinn's mTLS path does not set it for us.
        cfg.max_early_data_size = if early_data { u32::MAX } else { 0 };
        // Stateful tickets only: rustls refuses early data with stateless tickets, and a
        // stateful cache makes each ticket single-use (a replayed ClientHello finds none).
        cfg.send_tls13_tickets = 2;
        Ok(cfg)
    }
}

#[derive(Debug)]
struct ReloadingResolver(Arc<ServerTls>);

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .cert
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

#[derive(Debug)]
struct ReloadingVerifier(Arc<ServerTls>);

impl ClientCertVerifier for ReloadingVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; our clients hold exactly one certificate per gateway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current_verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current_verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current_verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current_verifier().supported_verify_schemes()
    }
}

/// What a client trusts and (for mTLS) presents.
#[derive(Debug, Clone)]
pub struct ClientMaterial {
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

impl ClientMaterial {
    pub fn from_pem(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, TransportError> {
        let ca = parse_certs(ca_pem, "gateway CA (ca.crt)")?;
        let identity = match identity {
            Some((cert, key)) => Some((
                parse_certs(cert, "client certificate (tls.crt)")?,
                Arc::new(parse_key(key, "client key (tls.key)")?),
            )),
            None => None,
        };
        Ok(ClientMaterial { ca, identity })
    }

    /// A rustls client configuration for one ALPN. Reuse it across connections: its
    /// in-memory ticket store is what makes the next connection 0-RTT.
    pub fn client_config(
        &self,
        alpn: &[u8],
        early_data: bool,
    ) -> Result<rustls::ClientConfig, TransportError> {
        let mut roots = RootCertStore::empty();
        for ca in &self.ca {
            roots
                .add(ca.clone())
                .map_err(|e| TransportError::Config(format!("gateway CA is unusable: {e}")))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TransportError::Config(format!("TLS 1.3 unavailable: {e}")))?
            .with_root_certificates(roots);
        let mut cfg = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    TransportError::Config(format!(
                        "client certificate and key do not belong together ({e}): re-issue with `openshell pki issue`"
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.enable_early_data = early_data;
        Ok(cfg)
    }
}

/// Serial numbers (normalized like `Principal::serial`) revoked by these CRLs.
pub fn revoked_serials(
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<std::collections::HashSet<String>, TransportError> {
    use x509_parser::prelude::FromDer;
    let mut out = std::collections::HashSet::new();
    for crl in crls {
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
                .map_err(|e| TransportError::Config(format!("CRL is not valid DER: {e}")))?;
        for revoked in parsed.iter_revoked_certificates() {
            out.insert(crate::identity::normalize_serial(
                &revoked.raw_serial_as_string(),
            ));
        }
    }
    Ok(out)
}
