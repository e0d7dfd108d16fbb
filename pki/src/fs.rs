//! Writing files that must never be seen half-written or by other users.
//!
//! Every write goes to a temporary file in the target's directory and is renamed over the
//! target, so a crash or a full disk leaves either the old file or the new one. Secrets are
//! created 0600 inside 0700 directories; reading a private key that others can read is
//! refused with the `chmod` that fixes it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    #[error(
        "cannot create directory {path}: {source} (check that the parent exists and is writable)"
    )]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write {path}: {source} (check that the directory is writable and the disk is not full)"
    )]
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

/// Puts the fully written directory `staged` at `target` in one rename. An existing `target`
/// is moved aside first and restored if the swap fails, then deleted: a reader sees the old
/// directory or the new one, never a mix. `staged` must be on the same filesystem (create it
/// with [`staging_dir_for`]).
pub fn replace_dir(staged: &Path, target: &Path) -> Result<(), FsError> {
    let err = |source| FsError::Write {
        path: target.to_path_buf(),
        source,
    };
    let backup = sibling(target, ".old");
    let had_old = target.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(&backup);
        std::fs::rename(target, &backup).map_err(err)?;
    }
    if let Err(e) = std::fs::rename(staged, target) {
        if had_old {
            let _ = std::fs::rename(&backup, target);
        }
        return Err(err(e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&backup);
    }
    Ok(())
}

/// A fresh private (0700) directory beside `target` (same filesystem, so it can be renamed
/// over it). Removed on drop unless renamed away.
pub fn staging_dir_for(target: &Path) -> Result<tempfile::TempDir, FsError> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    ensure_private_dir(&parent)?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .permissions(std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
        .tempdir_in(&parent)
        .map_err(|source| FsError::CreateDir {
            path: parent.clone(),
            source,
        })?;
    Ok(dir)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{suffix}"))
}

/// Several files replaced together. Every new content is first written to a temp file beside
/// its target; then the temp files are renamed over their targets in the order they were
/// added. If a rename fails, the targets already replaced get their old contents back (and
/// files that did not exist are removed), so the set is all-old or all-new.
#[derive(Default)]
pub struct FileSet {
    files: Vec<(PathBuf, Vec<u8>, u32)>,
}

impl std::fmt::Debug for FileSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Contents may be private keys: list paths only.
        f.debug_list()
            .entries(self.files.iter().map(|(p, _, _)| p))
            .finish()
    }
}

impl FileSet {
    pub fn new() -> FileSet {
        FileSet::default()
    }

    /// Adds a secret (0600, parent 0700).
    pub fn secret(&mut self, path: PathBuf, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.files.push((path, contents.into(), SECRET_FILE_MODE));
        self
    }

    /// Adds a public file (0644).
    pub fn public(&mut self, path: PathBuf, contents: impl Into<Vec<u8>>) -> &mut Self {
        self.files.push((path, contents.into(), PUBLIC_FILE_MODE));
        self
    }

    /// Writes everything; on failure restores what was there.
    pub fn commit(self) -> Result<(), FsError> {
        let mut staged = Vec::with_capacity(self.files.len());
        for (path, contents, mode) in &self.files {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            ensure_private_dir_if_missing(&dir)?;
            let err = |source| FsError::Write {
                path: path.clone(),
                source,
            };
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .permissions(std::fs::Permissions::from_mode(*mode))
                .tempfile_in(&dir)
                .map_err(err)?;
            tmp.write_all(contents).map_err(err)?;
            tmp.as_file().sync_all().map_err(err)?;
            let previous = std::fs::read(path).ok();
            staged.push((path.clone(), tmp, previous));
        }
        let mut done: Vec<(PathBuf, Option<Vec<u8>>, u32)> = Vec::new();
        for (path, tmp, previous) in staged {
            let mode = std::fs::metadata(tmp.path())
                .map(|m| m.mode() & 0o777)
                .unwrap_or(SECRET_FILE_MODE);
            if let Err(e) = tmp.persist(&path) {
                for (p, old, m) in done.into_iter().rev() {
                    match old {
                        Some(bytes) => {
                            let _ = write_atomic(&p, &bytes, m);
                        }
                        None => {
                            let _ = std::fs::remove_file(&p);
                        }
                    }
                }
                return Err(FsError::Write {
                    path,
                    source: e.error,
                });
            }
            done.push((path, previous, mode));
        }
        Ok(())
    }
}

fn ensure_private_dir_if_missing(dir: &Path) -> Result<(), FsError> {
    if dir.exists() {
        Ok(())
    } else {
        ensure_private_dir(dir)
    }
}

/// An exclusive lock on a directory held by creating `path` (removed on drop). A lock left by
/// a process that no longer exists is taken over.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock, or returns the pid of the live holder.
    pub fn acquire(path: &Path) -> Result<Result<DirLock, String>, FsError> {
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(SECRET_FILE_MODE)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Ok(DirLock {
                        path: path.to_path_buf(),
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(path).unwrap_or_default();
                    let pid = holder.trim().to_string();
                    let alive = !pid.is_empty()
                        && pid.bytes().all(|b| b.is_ascii_digit())
                        && Path::new("/proc").join(&pid).exists();
                    if alive {
                        return Ok(Err(pid));
                    }
                    let _ = std::fs::remove_file(path);
                }
                Err(source) => {
                    return Err(FsError::Write {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Ok(Err("unknown".into()))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

    #[test]
    fn file_set_writes_all_with_modes() {
        let root = tempfile::tempdir().unwrap();
        let mut set = FileSet::new();
        set.public(root.path().join("a.crt"), b"a".to_vec())
            .secret(root.path().join("sub/b.key"), b"b".to_vec());
        set.commit().unwrap();
        assert_eq!(std::fs::read(root.path().join("a.crt")).unwrap(), b"a");
        let m = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().mode() & 0o777;
        assert_eq!(m("a.crt"), 0o644);
        assert_eq!(m("sub/b.key"), 0o600);
        assert_eq!(m("sub"), 0o700);
    }

    #[test]
    fn file_set_rolls_back_when_a_rename_fails() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        write_public(&a, b"old").unwrap();
        // The second target is an existing non-empty directory: renaming a file over it fails.
        let blocker = root.path().join("blocker");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"x").unwrap();
        let mut set = FileSet::new();
        set.public(a.clone(), b"new".to_vec())
            .public(root.path().join("fresh"), b"f".to_vec())
            .public(blocker.clone(), b"z".to_vec());
        assert!(set.commit().is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"old");
        assert!(!root.path().join("fresh").exists());
        let leftovers = std::fs::read_dir(root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn replace_dir_swaps_whole_directories() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("mtls");
        write_public(&target.join("old"), b"o").unwrap();
        let staged = staging_dir_for(&target).unwrap();
        write_public(&staged.path().join("new"), b"n").unwrap();
        replace_dir(&staged.keep(), &target).unwrap();
        assert!(target.join("new").exists());
        assert!(!target.join("old").exists());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[test]
    fn lock_is_exclusive_and_stale_locks_are_taken_over() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(".lock");
        let held = DirLock::acquire(&path).unwrap().unwrap();
        assert_eq!(
            DirLock::acquire(&path).unwrap().unwrap_err(),
            std::process::id().to_string()
        );
        drop(held);
        assert!(!path.exists());
        std::fs::write(&path, b"999999999\n").unwrap();
        assert!(DirLock::acquire(&path).unwrap().is_ok());
    }
}
