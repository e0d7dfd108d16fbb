//! Who is on the other end: the principal derived from a verified client certificate.
//!
//! The certificate chain was verified by rustls during the handshake (or restored from a
//! resumed session without re-verification, which is why `not_after` and `serial` are kept:
//! the gateway re-checks them against its current CRL on every request, and the connection
//! keeps the whole chain to verify it again against the CAs trusted now:
//! `ConnMeta::verify_trust`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Subject common name: the user, or `sandbox:<id>` for a supervisor.
    pub subject: String,
    /// Subject organisational units: the roles.
    pub roles: Vec<String>,
    /// Certificate serial, lowercase hex without leading zeros.
    pub serial: String,
    /// End of the certificate's validity.
    pub not_after: SystemTime,
    /// How the principal was established.
    pub auth: AuthKind,
}

/// The mechanism that produced a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// Client certificate verified in the TLS handshake.
    Mtls,
    /// Bearer token forwarded by an authenticating reverse proxy (edge mode).
    Edge,
    /// Plaintext loopback gateway: no authentication.
    None,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Mtls => "mtls",
            AuthKind::Edge => "edge",
            AuthKind::None => "none",
        }
    }
}

impl Principal {
    /// Reads the principal from the end-entity certificate of a verified chain.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Option<Principal> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
        // A certificate without a common name still identifies a connection (its serial can
        // be revoked); its empty subject is refused by the gateway with a message saying so.
        let subject = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let roles = parsed
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok().map(str::to_string))
            .collect();
        let serial = normalize_serial(&parsed.raw_serial_as_string());
        let secs = parsed.validity().not_after.timestamp().max(0) as u64;
        Some(Principal {
            subject,
            roles,
            serial,
            not_after: UNIX_EPOCH + Duration::from_secs(secs),
            auth: AuthKind::Mtls,
        })
    }

    /// Whether this principal is a sandbox supervisor, and for which sandbox.
    pub fn sandbox_id(&self) -> Option<&str> {
        self.subject.strip_prefix("sandbox:")
    }

    /// Whether the certificate has expired at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }
}

/// Serial numbers compare as lowercase hex without separators or leading zeros.
pub fn normalize_serial(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("00:0A:ff"), "aff");
        assert_eq!(normalize_serial("0"), "0");
        assert_eq!(normalize_serial("ABCDEF"), "abcdef");
    }

    #[test]
    fn principal_from_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "admin");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x12, 0xab]));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let p = Principal::from_certificate(cert.der()).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.roles, vec!["admin".to_string()]);
        assert_eq!(p.serial, "12ab");
        assert!(p.sandbox_id().is_none());
    }
}
