//! Client credential bundles (`pki issue --bundle FILE`, read by `gateway add` and the CLI's
//! mTLS directory): `ClientBundle::from_pem`, and `check`/`describe` on a bundle whose CA,
//! certificate or key is replaced by the input while the other two stay valid, so the key
//! parser, the key/certificate match and the chain check each see arbitrary bytes next to
//! well-formed neighbours. Nothing may panic, and a bundle that parses must survive its own
//! single-file form unchanged.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use openshell_pki::ClientBundle;

/// A valid bundle: a CA and a client certificate it issued (generated once per process).
fn valid() -> &'static ClientBundle {
    static VALID: OnceLock<ClientBundle> = OnceLock::new();
    VALID.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fuzz CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).expect("client certificate");
        let bundle = ClientBundle {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        bundle.check("valid").expect("the base bundle is valid");
        bundle
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = ClientBundle::from_pem(data, "fuzz") {
        let again = ClientBundle::from_pem(bundle.to_pem().as_bytes(), "fuzz")
            .expect("a parsed bundle re-reads from its own PEM");
        assert_eq!(again, bundle);
        let _ = bundle.describe();
    }
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest).into_owned();
    let mut bundle = valid().clone();
    match which % 3 {
        0 => bundle.ca_pem = text,
        1 => bundle.cert_pem = text,
        _ => bundle.key_pem = text,
    }
    let _ = bundle.check("fuzz");
    let _ = bundle.describe();
});
