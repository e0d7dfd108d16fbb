//! Client credential bundles: the CA certificate, a client certificate and its key.
//!
//! Two shapes on disk:
//! - a *bundle file* (`pki issue --bundle FILE`): one 0600 PEM file holding the CA
//!   certificate, the client certificate and the key, in any order (which certificate is the
//!   CA is decided by content, not position);
//! - an *mTLS directory* (`gateways/<name>/mtls/`): `ca.crt`, `tls.crt`, `tls.key` (0600) in
//!   a 0700 directory, installed by renaming a complete sibling directory over it.

use std::path::Path;

use ::time::OffsetDateTime;
use x509_parser::prelude::*;

use crate::error::PkiError;
use crate::fs;
use crate::index::format_time;
use crate::keys;
use crate::pem;
use crate::serial::Serial;

pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// A client credential as PEM text. `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientBundle {
    /// The CA certificate(s) that verify the gateway.
    pub ca_pem: String,
    /// The client certificate.
    pub cert_pem: String,
    /// The client's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ClientBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBundle")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// What an existing credential (bundle file or mTLS directory) holds, for the "refuse to
/// replace without --force" check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingCredential {
    pub cn: String,
    pub serial: Serial,
    pub not_after: OffsetDateTime,
}

impl ClientBundle {
    /// The single-file form: CA certificate, client certificate, key.
    pub fn to_pem(&self) -> String {
        let mut out = String::new();
        for part in [&self.ca_pem, &self.cert_pem, &self.key_pem] {
            out.push_str(part);
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Parses and checks the single-file form. `what` names the input in errors.
    pub fn from_pem(text: &[u8], what: &str) -> Result<ClientBundle, PkiError> {
        let blocks = pem::blocks(text, what)?;
        let mut ca_certs = Vec::new();
        let mut leaves = Vec::new();
        let mut key_blocks = Vec::new();
        for (tag, der) in blocks {
            match tag.as_str() {
                "CERTIFICATE" => {
                    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| {
                        PkiError::bad_input(
                            what,
                            format!("a CERTIFICATE block is not valid X.509 ({e})"),
                        )
                    })?;
                    if cert.is_ca() {
                        ca_certs.push(der);
                    } else {
                        leaves.push(der);
                    }
                }
                "PRIVATE KEY" => key_blocks.push(der),
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(PkiError::bad_input(
                        what,
                        "the private key is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain)",
                    ));
                }
                "EC PRIVATE KEY" | "RSA PRIVATE KEY" => {
                    return Err(PkiError::bad_input(
                        what,
                        "the key is not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt`",
                    ));
                }
                _ => {}
            }
        }
        if ca_certs.is_empty() {
            return Err(PkiError::bad_input(what, "no CA certificate in the bundle"));
        }
        if leaves.len() != 1 {
            return Err(PkiError::bad_input(
                what,
                format!(
                    "expected exactly one client certificate, found {}",
                    leaves.len()
                ),
            ));
        }
        if key_blocks.len() != 1 {
            return Err(PkiError::bad_input(
                what,
                format!(
                    "expected exactly one private key, found {}",
                    key_blocks.len()
                ),
            ));
        }
        let ca_pem: String = ca_certs
            .iter()
            .map(|d| pem::encode("CERTIFICATE", d))
            .collect();
        let cert_pem = pem::encode("CERTIFICATE", &leaves[0]);
        let key_pem = pem::encode("PRIVATE KEY", &key_blocks[0]);
        let bundle = ClientBundle {
            ca_pem,
            cert_pem,
            key_pem,
        };
        bundle.check(what)?;
        Ok(bundle)
    }

    /// The key belongs to the client certificate, which is a client certificate issued by
    /// one of the CA certificates.
    pub fn check(&self, what: &str) -> Result<(), PkiError> {
        let leaf = pem::certificates(self.cert_pem.as_bytes(), what)?.remove(0);
        let key = keys::parse_key(&self.key_pem, what)?;
        if !keys::key_matches_cert(&key, &leaf) {
            return Err(PkiError::KeyMismatch {
                key: format!("in {what}"),
                cert: format!("in {what}"),
            });
        }
        let (_, cert) = X509Certificate::from_der(&leaf)
            .map_err(|e| PkiError::bad_input(what, format!("not valid X.509 ({e})")))?;
        if !crate::inspect::chains_to_any(&cert, self.ca_pem.as_bytes(), what)? {
            return Err(PkiError::bad_input(
                what,
                "the client certificate was not issued by the CA certificate in the bundle",
            ));
        }
        let client_auth = cert
            .extended_key_usage()
            .ok()
            .flatten()
            .is_none_or(|e| e.value.client_auth || e.value.any);
        if !client_auth {
            return Err(PkiError::bad_input(
                what,
                "the certificate is not a client certificate (no clientAuth usage)",
            ));
        }
        Ok(())
    }

    /// The client certificate's CN, serial and expiry.
    pub fn describe(&self) -> Result<ExistingCredential, PkiError> {
        describe_cert(self.cert_pem.as_bytes(), "the client certificate")
    }
}

fn describe_cert(pem_bytes: &[u8], what: &str) -> Result<ExistingCredential, PkiError> {
    let der = pem::certificates(pem_bytes, what)?
        .into_iter()
        .find(|d| X509Certificate::from_der(d).is_ok_and(|(_, c)| !c.is_ca()))
        .ok_or_else(|| PkiError::bad_input(what, "no client certificate"))?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::bad_input(what, format!("not valid X.509 ({e})")))?;
    Ok(ExistingCredential {
        cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_string(),
        serial: Serial::from_der_integer(cert.raw_serial())
            .ok_or_else(|| PkiError::bad_input(what, "unusable serial"))?,
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// Reads a bundle file (refusing one that others can read: it holds a private key).
pub fn read_bundle(path: &Path) -> Result<ClientBundle, PkiError> {
    let bytes = fs::read_secret(path)?;
    ClientBundle::from_pem(&bytes, &path.display().to_string())
}

/// Writes the single-file form to `path` (0600, atomically).
pub fn write_bundle(bundle: &ClientBundle, path: &Path) -> Result<(), PkiError> {
    fs::write_secret_file(path, bundle.to_pem().as_bytes())?;
    Ok(())
}

/// Installs `bundle` as `mtls_dir/{ca.crt,tls.crt,tls.key}`: written into a sibling
/// directory, then renamed over `mtls_dir`, so readers see the old credential or the new
/// one. Checks the bundle first.
pub fn install_bundle(bundle: &ClientBundle, mtls_dir: &Path) -> Result<(), PkiError> {
    bundle.check("the bundle to install")?;
    let staging = fs::staging_dir_for(mtls_dir)?;
    fs::write_public(&staging.path().join(CA_FILE), bundle.ca_pem.as_bytes())?;
    fs::write_public(&staging.path().join(CERT_FILE), bundle.cert_pem.as_bytes())?;
    fs::write_secret(&staging.path().join(KEY_FILE), bundle.key_pem.as_bytes())?;
    fs::replace_dir(&staging.keep(), mtls_dir)?;
    Ok(())
}

/// What a bundle file or an mTLS directory at `path` holds, if it holds a readable client
/// certificate. `None` when nothing (usable) is there.
pub fn existing_credential(path: &Path) -> Option<ExistingCredential> {
    let cert_file = if path.is_dir() {
        path.join(CERT_FILE)
    } else {
        path.to_path_buf()
    };
    let bytes = std::fs::read(&cert_file).ok()?;
    describe_cert(&bytes, &cert_file.display().to_string()).ok()
}

/// Refuses to replace a credential at `path` that is still valid at `now`, unless `force`.
/// The error names the certificate there and when it expires.
pub fn check_replace(path: &Path, force: bool, now: OffsetDateTime) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    match existing_credential(path) {
        Some(c) if c.not_after > now => Err(PkiError::CredentialExists {
            path: path.to_path_buf(),
            cn: c.cn,
            serial: c.serial.to_string(),
            expires: format_time(c.not_after),
        }),
        _ => Ok(()),
    }
}
