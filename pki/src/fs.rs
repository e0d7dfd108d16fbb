//! Writing files that must never be seen half-written or by other users.
//!
//! Every write goes to a temporary file in the target's directory and is renamed over the
//! target, so a crash or a full disk leaves either the old file or the new one. Secrets are
//! created 0600 inside 0700 directories; reading a private key that others can read is
//! refused with the `chmod` that fixes it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode for private keys, tokens and session material.
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Mode for directories holding secrets.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode for certificates and other public files.
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// A filesystem failure that names the path and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    #[error("cannot create directory {path}: {source} (check that the parent exists and is writable)")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source} (check that the directory is writable and the disk is not full)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by other users (mode {mode:04o}); private keys must be owner-only: run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Creates `dir` (and missing parents) and makes sure `dir` itself is 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FsError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(|source| FsError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(
        |source| FsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        },
    )
}

/// Atomically writes a secret (0600) into a 0700 directory.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    if let Some(parent) = path.parent() {
        ensure_private_dir(parent)?;
    }
    write_atomic(path, contents, SECRET_FILE_MODE)
}

/// Atomically writes a non-secret file (0644), creating missing parents as 0700.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        ensure_private_dir(parent)?;
    }
    write_atomic(path, contents, PUBLIC_FILE_MODE)
}

/// Writes `contents` to a temp file beside `path`, fsyncs it and renames it over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let err = |source| FsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(contents).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Reads a private key file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, FsError> {
    let meta = std::fs::metadata(path).map_err(|source| FsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(FsError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read(path).map_err(|source| FsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a public file (certificate, CRL, metadata).
pub fn read_public(path: &Path) -> Result<Vec<u8>, FsError> {
    std::fs::read(path).map_err(|source| FsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_owner_only_in_private_dirs() {
        let root = tempfile::tempdir().unwrap();
        let key = root.path().join("a/b/tls.key");
        write_secret(&key, b"k").unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        let dir_mode = std::fs::metadata(key.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read_secret(&key).unwrap(), b"k");
    }

    #[test]
    fn open_key_is_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let key = root.path().join("tls.key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("m.json");
        write_public(&f, b"first version").unwrap();
        write_public(&f, b"2").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"2");
        let leftovers: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
