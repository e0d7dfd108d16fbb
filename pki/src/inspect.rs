//! Reading a certificate someone hands us: what it says, whether our CA issued it, whether it
//! is revoked. Works on untrusted input (fuzzed).

use std::path::{Path, PathBuf};

use ::time::OffsetDateTime;
use serde::Serialize;
use x509_parser::prelude::*;

use crate::dir::PkiDir;
use crate::error::PkiError;
use crate::index::{CertStatus, format_time};
use crate::keys;
use crate::serial::Serial;

/// Everything `openshell pki inspect` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// The file inspected (None for in-memory input).
    pub file: Option<PathBuf>,
    pub subject: String,
    pub subject_cn: Option<String>,
    /// Organisational units of the subject: the roles.
    pub roles: Vec<String>,
    pub issuer: String,
    pub serial: Serial,
    pub is_ca: bool,
    pub sans: Vec<String>,
    /// `serverAuth`, `clientAuth`, ... (empty when the extension is absent).
    pub ekus: Vec<String>,
    /// `ecdsa-p256`, `ed25519`, `rsa-2048`, ...
    pub key_type: String,
    pub not_before: String,
    pub not_after: String,
    pub status: CertStatus,
    /// SHA-256 of the DER, `AB:CD:..` as OpenSSL prints it.
    pub sha256_fingerprint: String,
    /// Certificates in the input (a server chain during a CA overlap has two).
    pub chain_len: usize,
    /// Signed by a CA of the PKI checked against (false when none was available).
    pub chains_to_ca: bool,
    /// Listed as revoked in that PKI's index.
    pub revoked: bool,
    /// The PKI directory checked against, if one was found.
    pub checked_against: Option<PathBuf>,
    /// For a directory with `tls.key`: whether the key belongs to the certificate.
    pub key_matches: Option<bool>,
}

/// Inspects PEM or DER bytes. `pki` (optional) decides `chains_to_ca` and `revoked`.
/// Of several certificates the first non-CA one is described (a bundle's client certificate
/// or a chain's leaf), else the first.
pub fn inspect_bytes(input: &[u8], what: &str, pki: Option<&PkiDir>) -> Result<CertInfo, PkiError> {
    inspect_bytes_at(input, what, pki, OffsetDateTime::now_utc())
}

pub(crate) fn inspect_bytes_at(
    input: &[u8],
    what: &str,
    pki: Option<&PkiDir>,
    now: OffsetDateTime,
) -> Result<CertInfo, PkiError> {
    let ders = crate::pem::certificates(input, what)?;
    let mut chosen = None;
    for der in &ders {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::bad_input(what, format!("not valid X.509 ({e})")))?;
        if !cert.is_ca() {
            chosen = Some(der);
            break;
        }
    }
    let der = chosen.unwrap_or(&ders[0]);
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::bad_input(what, format!("not valid X.509 ({e})")))?;
    let mut info = describe(&cert, der, now).ok_or_else(|| {
        PkiError::bad_input(what, "the certificate has a negative or oversized serial")
    })?;
    info.chain_len = ders.len();
    if let Some(pki) = pki
        && pki.require().is_ok()
    {
        info.checked_against = Some(pki.path().to_path_buf());
        info.chains_to_ca = chains_to_any(&cert, &pki.client_ca_bundle_at(now)?, what)?;
        info.revoked = pki.revoked_serials()?.contains(&info.serial);
        if info.revoked {
            info.status = CertStatus::Revoked;
        }
    }
    Ok(info)
}

/// Inspects PEM text (anything containing a `-----BEGIN` line) or else a path (see
/// [`inspect_path`]).
pub fn inspect(pem_or_path: &str, pki: Option<&PkiDir>) -> Result<CertInfo, PkiError> {
    if pem_or_path.contains("-----BEGIN ") {
        inspect_bytes(pem_or_path.as_bytes(), "the PEM text", pki)
    } else {
        inspect_path(Path::new(pem_or_path), pki)
    }
}

/// Inspects a file, or a directory holding `tls.crt` (also `server/tls.crt`) or `ca.crt`.
/// For a directory with `tls.key` next to the certificate, also checks the key matches.
pub fn inspect_path(path: &Path, pki: Option<&PkiDir>) -> Result<CertInfo, PkiError> {
    let (cert_path, key_path) = if path.is_dir() {
        let candidates = [
            path.join("tls.crt"),
            path.join("server").join("tls.crt"),
            path.join("ca.crt"),
        ];
        let found = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            PkiError::bad_input(
                path.display().to_string(),
                "the directory has no tls.crt, server/tls.crt or ca.crt; pass a certificate file",
            )
        })?;
        let key = found.with_file_name("tls.key");
        (
            found.clone(),
            (found.file_name() == Some("tls.crt".as_ref()) && key.is_file()).then_some(key),
        )
    } else {
        (path.to_path_buf(), None)
    };
    let what = cert_path.display().to_string();
    let bytes = crate::fs::read_public(&cert_path)?;
    let mut info = inspect_bytes(&bytes, &what, pki)?;
    info.file = Some(cert_path);
    if let Some(key_path) = key_path {
        let key_pem = crate::fs::read_secret(&key_path)?;
        let key_text = String::from_utf8_lossy(&key_pem);
        let key = keys::parse_key(&key_text, &key_path.display().to_string())?;
        let leaf = crate::pem::certificates(&bytes, &what)?;
        info.key_matches = Some(leaf.iter().any(|d| keys::key_matches_cert(&key, d)));
    }
    Ok(info)
}

/// Whether `cert` is signed by (or is) one of the CA certificates in `bundle_pem`.
pub(crate) fn chains_to_any(
    cert: &X509Certificate<'_>,
    bundle_pem: &[u8],
    what: &str,
) -> Result<bool, PkiError> {
    if bundle_pem.is_empty() {
        return Ok(false);
    }
    for ca_der in crate::pem::certificates(bundle_pem, what)? {
        let Ok((_, ca)) = X509Certificate::from_der(&ca_der) else {
            continue;
        };
        if cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn describe(cert: &X509Certificate<'_>, der: &[u8], now: OffsetDateTime) -> Option<CertInfo> {
    let serial = Serial::from_der_integer(cert.raw_serial())?;
    let subject_cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let roles = cert
        .subject()
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            sans.push(match name {
                GeneralName::DNSName(n) => n.to_string(),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    std::net::Ipv6Addr::from(a).to_string()
                }
                other => format!("{other}"),
            });
        }
    }
    let mut ekus = Vec::new();
    if let Ok(Some(ext)) = cert.extended_key_usage() {
        let e = ext.value;
        for (on, name) in [
            (e.any, "any"),
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
            (e.time_stamping, "timeStamping"),
            (e.ocsp_signing, "OCSPSigning"),
        ] {
            if on {
                ekus.push(name.to_string());
            }
        }
        ekus.extend(e.other.iter().map(|o| o.to_id_string()));
    }
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let fingerprint = digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    Some(CertInfo {
        file: None,
        subject: cert.subject().to_string(),
        subject_cn,
        roles,
        issuer: cert.issuer().to_string(),
        serial,
        is_ca: cert.is_ca(),
        sans,
        ekus,
        key_type: key_type(cert.public_key()),
        not_before: format_time(not_before),
        not_after: format_time(not_after),
        status: CertStatus::at(not_before, not_after, false, now),
        sha256_fingerprint: fingerprint,
        chain_len: 1,
        chains_to_ca: false,
        revoked: false,
        checked_against: None,
        key_matches: None,
    })
}

fn key_type(spki: &SubjectPublicKeyInfo<'_>) -> String {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
    };
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return "ed25519".into();
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => "ecdsa-p256".into(),
            Some(c) if c == OID_NIST_EC_P384 => "ecdsa-p384".into(),
            Some(c) => format!("ecdsa ({})", c.to_id_string()),
            None => "ecdsa".into(),
        };
    }
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("rsa-{}", rsa.key_size()),
        _ => alg.to_id_string(),
    }
}
