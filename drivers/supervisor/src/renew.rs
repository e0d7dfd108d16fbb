//! Keeping the sandbox's credential fresh. The gateway mints it at create with a limited
//! life (`--sandbox-credential-validity`, 30 days by default); the supervisor renews it over
//! its authenticated session, before it runs out and whenever the gateway's issuing CA
//! changed (a `pki rotate-ca`: the old CA is trusted only for the overlap):
//!
//! ```text
//! due? (a third of its life left, or the gateway announces another issuing CA)
//!   ─> new key (never leaves this process, or the root-only credential directory)
//!   ─> RenewCredential{CSR}  ─> {cert, CA}   (over the current, still valid, connection)
//!   ─> files replaced atomically (when the directory is writable) ─> reconnect with them
//! ```
//!
//! The decision is a pure function of the certificate's dates, the clock and the announced
//! fingerprint ([`Credential::due`]), so it is unit-tested without a gateway.

use std::path::Path;
use std::time::{Duration, SystemTime};

use openshell_drivers::credentials::{CA_FILE, CERT_FILE, KEY_FILE, ca_fingerprint};
use openshell_transport::tls::ClientMaterial;

/// The credential the supervisor holds now.
#[derive(Clone)]
pub struct Credential {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// Hex SHA-256 of the CA the certificate came from (the first certificate of `ca_pem`:
    /// the gateway delivers the CA that issued the credential beside it).
    issuer_sha256: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("not_after", &self.not_after)
            .field("issuer_sha256", &self.issuer_sha256)
            .finish_non_exhaustive()
    }
}

/// Why a credential cannot be used or renewed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    #[error("the sandbox credential is unusable: {0}")]
    Invalid(String),
    #[error("cannot make a new key: {0}")]
    Key(String),
    #[error("the gateway refused to renew the credential: {0}")]
    Refused(String),
}

fn first_der(pem: &[u8], what: &str) -> Result<Vec<u8>, RenewError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .ok_or_else(|| RenewError::Invalid(format!("{what} holds no certificate")))
}

impl Credential {
    pub fn from_pem(
        ca_pem: Vec<u8>,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    ) -> Result<Self, RenewError> {
        let cert = first_der(&cert_pem, "the certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| RenewError::Invalid(format!("the certificate does not parse: {e}")))?;
        let time = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
        };
        let issuer_sha256 = ca_fingerprint(&ca_pem)
            .ok_or_else(|| RenewError::Invalid("the CA bundle holds no certificate".into()))?;
        Ok(Credential {
            not_before: time(parsed.validity().not_before),
            not_after: time(parsed.validity().not_after),
            ca_pem,
            cert_pem,
            key_pem,
            issuer_sha256,
        })
    }

    /// TLS material for connecting with it.
    pub fn material(&self) -> Result<ClientMaterial, RenewError> {
        ClientMaterial::from_pem(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))
            .map_err(|e| RenewError::Invalid(e.to_string()))
    }

    /// When it should be renewed: with a third of its life left.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - life / 3
    }

    /// Whether to renew now: it is at [`renew_at`](Self::renew_at), or the gateway announced
    /// an issuing CA (`issuing_ca`, hex SHA-256; empty = not announced) other than ours.
    pub fn due(&self, now: SystemTime, issuing_ca: &str) -> bool {
        now >= self.renew_at() || (!issuing_ca.is_empty() && issuing_ca != self.issuer_sha256)
    }

    /// A new key and the certificate request for it (PEM).
    pub fn new_key() -> Result<(rcgen::KeyPair, String), RenewError> {
        let key = rcgen::KeyPair::generate().map_err(|e| RenewError::Key(e.to_string()))?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .map_err(|e| RenewError::Key(e.to_string()))?;
        Ok((key, csr))
    }

    /// The credential the gateway answered with, for `key`.
    pub fn renewed(
        key: &rcgen::KeyPair,
        cert_pem: String,
        ca_pem: String,
    ) -> Result<Self, RenewError> {
        let renewed = Credential::from_pem(
            ca_pem.into_bytes(),
            cert_pem.into_bytes(),
            key.serialize_pem().into_bytes(),
        )?;
        renewed.material()?;
        Ok(renewed)
    }

    /// Replaces the files in `dir` (each written beside and renamed over, mode 0400), so a
    /// restart of the sandbox comes up with the new credential. A read-only directory (a
    /// Kubernetes Secret volume) keeps the old files: the gateway re-delivers on start.
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        for (name, contents) in [
            (KEY_FILE, &self.key_pem),
            (CERT_FILE, &self.cert_pem),
            (CA_FILE, &self.ca_pem),
        ] {
            let tmp = dir.join(format!(".{name}.new"));
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)?;
            f.write_all(contents)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(life_secs: u64) -> (Credential, SystemTime) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let start = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap();
        params.not_before = start;
        params.not_after = start + time::Duration::seconds(life_secs as i64);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let c = Credential::from_pem(
            ca.pem().into_bytes(),
            cert.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        )
        .unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(start.unix_timestamp() as u64);
        (c, t0)
    }

    #[test]
    fn renewal_is_due_with_a_third_left_or_under_another_ca() {
        let (c, t0) = credential(90);
        assert!(!c.due(t0, ""));
        assert!(!c.due(t0 + Duration::from_secs(59), ""));
        assert!(c.due(t0 + Duration::from_secs(60), ""));
        // The same CA announced: nothing to do; another one: renew at once.
        let own = c.issuer_sha256.clone();
        assert!(!c.due(t0, &own));
        assert!(c.due(t0, "00ff"));
        assert!(c.material().is_ok());
    }

    #[test]
    fn a_new_key_comes_with_a_request_the_gateway_can_verify() {
        let (_key, csr) = Credential::new_key().unwrap();
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert!(!rcgen::PublicKeyData::der_bytes(&parsed.public_key).is_empty());
    }

    #[test]
    fn stored_files_replace_the_old_ones_owner_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let (c, _) = credential(90);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "old").unwrap();
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o400),
        )
        .unwrap();
        c.store(dir.path()).unwrap();
        for name in [KEY_FILE, CERT_FILE, CA_FILE] {
            let p = dir.path().join(name);
            assert_eq!(p.metadata().unwrap().permissions().mode() & 0o777, 0o400);
        }
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).unwrap(), c.key_pem);
    }
}
