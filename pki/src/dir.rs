//! Where a PKI lives on disk, and the read-only views the gateway needs.
//!
//! ```text
//! <state>/pki/                     0700
//!   ca.crt                         current CA certificate (what clients trust for the server)
//!   ca.key                         0600, current CA key
//!   ca-bundle.pem                  every CA trusted for client certificates right now
//!   ca-cross.crt                   during a CA overlap: the new CA signed by the old one
//!   crl.pem                        one CRL per trusted CA (X509 CRL blocks)
//!   index.json                     issued certificates and CA history; written last
//!   server/tls.crt, server/tls.key gateway certificate (+ cross certificate) and key (0600)
//!   retired/<serial>/ca.{crt,key}  previous CAs, kept to sign their CRL during the overlap
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::error::PkiError;
use crate::fs;
use crate::index::{Index, IndexEntry};
use crate::pem;
use crate::serial::Serial;

/// `$XDG_STATE_HOME/openshell/gateway`, else `$HOME/.local/state/openshell/gateway` (relative
/// `XDG_STATE_HOME` values are ignored, as the XDG spec says). Falls back to a relative
/// `.openshell/gateway` when neither variable is set.
pub fn default_gateway_state_dir() -> PathBuf {
    state_dir_from(
        std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn state_dir_from(xdg_state: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    let base = match (xdg_state, home) {
        (Some(x), _) if x.is_absolute() => x,
        (_, Some(h)) if !h.as_os_str().is_empty() => h.join(".local/state"),
        _ => PathBuf::from("."),
    };
    base.join("openshell").join("gateway")
}

/// `<default_gateway_state_dir()>/pki`.
pub fn default_pki_dir() -> PathBuf {
    default_gateway_state_dir().join("pki")
}

/// A PKI directory. Only names paths and reads; changes go through [`crate::Ca`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiDir(PathBuf);

impl PkiDir {
    pub fn new(path: impl Into<PathBuf>) -> PkiDir {
        PkiDir(path.into())
    }

    /// The directory from [`default_pki_dir`].
    pub fn default_location() -> PkiDir {
        PkiDir(default_pki_dir())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn ca_cert_path(&self) -> PathBuf {
        self.0.join("ca.crt")
    }
    pub fn ca_key_path(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// Every CA trusted for client certificates (PEM), rewritten on every change.
    pub fn ca_bundle_path(&self) -> PathBuf {
        self.0.join("ca-bundle.pem")
    }
    pub fn cross_cert_path(&self) -> PathBuf {
        self.0.join("ca-cross.crt")
    }
    pub fn server_cert_path(&self) -> PathBuf {
        self.0.join("server").join("tls.crt")
    }
    pub fn server_key_path(&self) -> PathBuf {
        self.0.join("server").join("tls.key")
    }
    pub fn crl_path(&self) -> PathBuf {
        self.0.join("crl.pem")
    }
    /// Written last in every change: reload when it changes.
    pub fn index_path(&self) -> PathBuf {
        self.0.join("index.json")
    }
    pub fn retired_dir(&self, ca_serial: &Serial) -> PathBuf {
        self.0.join("retired").join(ca_serial.to_string())
    }
    pub(crate) fn lock_path(&self) -> PathBuf {
        self.0.join(".lock")
    }

    /// Whether any PKI file is present.
    pub fn exists(&self) -> bool {
        self.index_path().exists() || self.ca_cert_path().exists() || self.ca_key_path().exists()
    }

    /// Fails with the `init` hint unless the core files are present.
    pub fn require(&self) -> Result<(), PkiError> {
        for p in [self.index_path(), self.ca_cert_path(), self.ca_key_path()] {
            if !p.exists() {
                return Err(PkiError::NotInitialized {
                    dir: self.0.clone(),
                    missing: p,
                });
            }
        }
        Ok(())
    }

    /// Reads `index.json`.
    pub fn index(&self) -> Result<Index, PkiError> {
        self.require()?;
        Index::load(&self.index_path())
    }

    /// PEM of every CA trusted for client certificates now: the current CA, plus a retired
    /// one until its overlap ends. Feed it to the client-certificate verifier.
    pub fn client_ca_bundle(&self) -> Result<Vec<u8>, PkiError> {
        self.client_ca_bundle_at(OffsetDateTime::now_utc())
    }

    pub fn client_ca_bundle_at(&self, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        let index = self.index()?;
        let mut out = Vec::new();
        for ca in index.cas.iter().filter(|c| c.is_trusted_at(now)) {
            let path = self.0.join(&ca.cert_file);
            let bytes = fs::read_public(&path)?;
            pem::certificates(&bytes, &path.display().to_string())?;
            out.extend_from_slice(&bytes);
            if !bytes.ends_with(b"\n") {
                out.push(b'\n');
            }
        }
        Ok(out)
    }

    /// DER of every CRL in `crl.pem` (one per trusted CA), for
    /// `WebPkiClientVerifier::builder(..).with_crls(..)`.
    pub fn crl_ders(&self) -> Result<Vec<Vec<u8>>, PkiError> {
        let path = self.crl_path();
        let bytes = fs::read_public(&path)?;
        pem::blocks_with_tag(&bytes, "X509 CRL", &path.display().to_string())
    }

    /// Serials of every revoked certificate, for request-time checks (resumed sessions skip
    /// the handshake's CRL check).
    pub fn revoked_serials(&self) -> Result<HashSet<Serial>, PkiError> {
        Ok(self
            .index()?
            .certificates
            .into_iter()
            .filter(|e| e.revoked_at.is_some())
            .map(|e| e.serial)
            .collect())
    }

    /// The index entry for `serial`, if this CA issued it.
    pub fn lookup(&self, serial: &Serial) -> Result<Option<IndexEntry>, PkiError> {
        Ok(self.index()?.find(serial).cloned())
    }

    /// When the set of trusted CAs next changes on its own (a retired CA's overlap ends, or a
    /// CA expires), so the gateway can reload then.
    pub fn next_trust_change(&self) -> Result<Option<OffsetDateTime>, PkiError> {
        let now = OffsetDateTime::now_utc();
        Ok(self
            .index()?
            .cas
            .iter()
            .filter(|c| c.is_trusted_at(now))
            .map(|c| c.trusted_until.map_or(c.not_after, |t| t.min(c.not_after)))
            .min())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_rules() {
        assert_eq!(
            state_dir_from(Some("/x/state".into()), Some("/home/u".into())),
            PathBuf::from("/x/state/openshell/gateway")
        );
        assert_eq!(
            state_dir_from(Some("relative".into()), Some("/home/u".into())),
            PathBuf::from("/home/u/.local/state/openshell/gateway")
        );
        assert_eq!(
            state_dir_from(None, Some("/home/u".into())),
            PathBuf::from("/home/u/.local/state/openshell/gateway")
        );
    }

    #[test]
    fn missing_pki_says_how_to_create_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PkiDir::new(tmp.path().join("pki"));
        let err = dir.client_ca_bundle().unwrap_err().to_string();
        assert!(err.contains("openshell pki init --dir"), "{err}");
    }
}
