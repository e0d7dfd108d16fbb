//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate.
///
/// The gateway maps these to gRPC status codes in one place; the intended mapping is:
///
/// | variant                                   | gRPC code             |
/// |-------------------------------------------|-----------------------|
/// | [`NotFound`](Self::NotFound)              | `NOT_FOUND`           |
/// | [`AlreadyExists`](Self::AlreadyExists)    | `ALREADY_EXISTS`      |
/// | [`Conflict`](Self::Conflict)              | `ABORTED`             |
/// | [`InvalidArgument`](Self::InvalidArgument)| `INVALID_ARGUMENT`    |
/// | [`Unavailable`](Self::Unavailable)        | `UNAVAILABLE`         |
/// | everything else                           | `INTERNAL` (startup errors, not request errors) |
///
/// Messages are lowercase, say what failed and, where there is one, what to do about it.
/// They never contain payloads, plaintext secrets or key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object of this kind has this name.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The object kind, e.g. `sandbox`.
        kind: String,
        /// The object name.
        name: String,
    },

    /// `create` found an object of the same kind with the same name.
    #[error("{kind} {name:?} already exists; choose another name or update the existing one")]
    AlreadyExists {
        /// The object kind, e.g. `sandbox`.
        kind: String,
        /// The object name.
        name: String,
    },

    /// A write named a resource version that is no longer the stored one.
    #[error(
        "{kind} {name:?} was modified concurrently: the request expected resource version \
         {expected} but the stored version is {actual}; read it again and retry"
    )]
    Conflict {
        /// The object kind, e.g. `sandbox`.
        kind: String,
        /// The object name.
        name: String,
        /// The version the caller named in its precondition.
        expected: i64,
        /// The version that is stored now.
        actual: i64,
    },

    /// The request itself is malformed (empty name, invalid kind, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The store cannot serve requests right now (database busy, disk full, I/O failure,
    /// worker task lost). Retrying later may succeed; `/readyz` should report not ready.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// A filesystem operation on the state directory failed.
    #[error("cannot {action} {}: {source}; {hint}", path.display())]
    Io {
        /// What the store was doing, e.g. "create the state directory".
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// What the operator can do about it.
        hint: &'static str,
        /// The underlying OS error.
        #[source]
        source: io::Error,
    },

    /// Another process (normally another gateway) holds the database.
    #[error(
        "database {} is in use by another gateway ({}); stop that gateway or give this one a \
         different state directory",
        path.display(),
        match pid { Some(pid) => format!("pid {pid}"), None => "pid unknown".to_owned() }
    )]
    InUse {
        /// The database file.
        path: PathBuf,
        /// The pid recorded by the holder in the lock file, when readable.
        pid: Option<u32>,
    },

    /// A file exists but its content is not what the store wrote (not an SQLite database,
    /// a damaged page, undecodable labels).
    #[error(
        "{} is corrupt: {detail}; restore it from a backup, or move it aside to start with an \
         empty store",
        path.display()
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What was found to be wrong.
        detail: String,
    },

    /// The database schema is not one this binary can use (written by a newer gateway, or
    /// not an OpenShell database at all).
    #[error("{0}")]
    Schema(String),

    /// A secret file is readable or writable by users other than its owner.
    #[error(
        "{} is accessible by group or others (mode {mode:04o}); restrict it with \
         `chmod 600 {}` and start again",
        path.display(),
        path.display()
    )]
    InsecurePermissions {
        /// The offending file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The key-encryption key file exists but cannot be used as a key.
    #[error(
        "key-encryption key {} is unusable: {reason}; restore the original key file (secrets \
         sealed with it cannot be read without it)",
        path.display()
    )]
    InvalidKey {
        /// The key file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// Sealing or opening a secret failed. Opening fails when the data was tampered with,
    /// sealed with another key, or sealed for other associated data.
    #[error("{0}")]
    Crypto(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
