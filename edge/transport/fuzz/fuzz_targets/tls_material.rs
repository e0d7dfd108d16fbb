//! Certificates, keys and CRLs as the gateway and the CLI read them: the PEM files of a
//! gateway's state directory and a client's mTLS directory (`tls::parse_certs`,
//! `parse_key`, `parse_crls`, `ServerMaterial` and `ClientMaterial`), the revoked serials
//! the gateway checks on every request (`tls::revoked_serials`), the client-certificate
//! verifier built from trusted CAs and CRLs (webpki parses both there), and the principal
//! read from a peer's certificate (`Principal::from_certificate`). The input is tried both
//! as a PEM document and as one DER object, so the fuzzer reaches the DER parsers without
//! having to discover base64. Nothing may panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openshell_transport::Principal;
use openshell_transport::tls::{self, ClientMaterial, ServerMaterial, ServerTls};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

/// A valid server certificate and key, so the verifier can be built around fuzzed CAs and
/// CRLs (generated once per process).
fn base() -> &'static ServerMaterial {
    static BASE: OnceLock<ServerMaterial> = OnceLock::new();
    BASE.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("certificate");
        ServerMaterial::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            cert.pem().as_bytes(),
            b"",
        )
        .expect("base material")
    })
}

/// Builds the gateway's client-certificate verifier; errors are fine, panics are not.
fn verifier(
    client_roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) {
    let mut material = base().clone();
    if !client_roots.is_empty() {
        material.client_roots = client_roots;
    }
    material.crls = crls;
    let _ = ServerTls::new(&material);
}

fuzz_target!(|data: &[u8]| {
    // As PEM text: the files on disk.
    if let Ok(certs) = tls::parse_certs(data, "fuzz") {
        for cert in &certs {
            let _ = Principal::from_certificate(cert);
        }
        verifier(certs, Vec::new());
    }
    let _ = tls::parse_key(data, "fuzz");
    if let Ok(crls) = tls::parse_crls(data, "fuzz") {
        let _ = tls::revoked_serials(&crls);
        verifier(Vec::new(), crls);
    }
    let _ = ClientMaterial::from_pem(data, Some((data, data)));

    // As DER: a peer's certificate from the handshake, one CRL block's contents.
    let der = CertificateDer::from(data.to_vec());
    let _ = Principal::from_certificate(&der);
    let crl = CertificateRevocationListDer::from(data.to_vec());
    let _ = tls::revoked_serials(std::slice::from_ref(&crl));
    verifier(vec![der], vec![crl]);
});
