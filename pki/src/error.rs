//! The crate's one error type. Every message is one lowercase line that names the input
//! (a path, a flag value, a serial) and says what fixes it.

use std::path::PathBuf;

use crate::fs::FsError;

/// Everything that can go wrong in `openshell-pki`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error(transparent)]
    Fs(#[from] FsError),

    #[error(
        "a PKI already exists in {dir}; pass --force to replace it (every certificate it issued stops working)"
    )]
    AlreadyInitialized { dir: PathBuf },

    #[error(
        "{dir} is not empty and holds no PKI; choose a new or empty directory with --dir (it is never replaced, even with --force)"
    )]
    NotAPkiDir { dir: PathBuf },

    #[error("no PKI in {dir} ({missing} is missing): run `openshell pki init --dir {dir}` first")]
    NotInitialized { dir: PathBuf, missing: PathBuf },

    #[error("invalid duration '{input}': {why} (use forms like 90d, 12h, 30m, 2w, 1y or 1d12h)")]
    InvalidDuration { input: String, why: String },

    #[error("invalid serial '{input}': {why} (give the hex serial shown by `openshell pki list`)")]
    InvalidSerial { input: String, why: String },

    #[error(
        "invalid subject alternative name '{input}': {why} (give a DNS name like gw.example.com or an IP address like 10.0.0.5)"
    )]
    InvalidSan { input: String, why: String },

    #[error("invalid {what} '{input}': {why}")]
    InvalidName {
        what: &'static str,
        input: String,
        why: String,
    },

    #[error("cannot read {what}: {why}")]
    BadInput { what: String, why: String },

    #[error(
        "the private key {key} does not belong to the certificate {cert}; use the key issued with it"
    )]
    KeyMismatch { key: String, cert: String },

    #[error("cannot {action}: {source}")]
    Crypto {
        action: &'static str,
        source: rcgen::Error,
    },

    #[error(
        "{path} is damaged: {why}; restore it from a backup or re-create the PKI with `openshell pki init --force`"
    )]
    Corrupt { path: PathBuf, why: String },

    #[error(
        "no certificate with serial or user '{query}' in {index}; run `openshell pki list` to see issued certificates"
    )]
    UnknownCertificate { query: String, index: PathBuf },

    #[error("nothing to revoke for '{query}': {why}")]
    NothingToRevoke { query: String, why: String },

    #[error(
        "{path} already holds a valid certificate for '{cn}' (serial {serial}, expires {expires}); pass --force to replace it"
    )]
    CredentialExists {
        path: PathBuf,
        cn: String,
        serial: String,
        expires: String,
    },

    #[error(
        "validity {requested} would outlive the CA, which expires {ca_expires}; choose a shorter --validity or run `openshell pki rotate-ca`"
    )]
    OutlivesCa {
        requested: String,
        ca_expires: String,
    },

    #[error(
        "another `openshell pki` command (or the gateway) has held {path} for 10 s; retry when it is done"
    )]
    Locked { path: PathBuf },

    #[error("cannot create {path}: {source} (check the parent directory is writable)")]
    Rename {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PkiError {
    pub(crate) fn crypto(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
        move |source| PkiError::Crypto { action, source }
    }

    pub(crate) fn bad_input(what: impl Into<String>, why: impl Into<String>) -> PkiError {
        PkiError::BadInput {
            what: what.into(),
            why: why.into(),
        }
    }
}
