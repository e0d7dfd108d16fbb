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

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Atomically writes a secret (0600) into a 0700 directory.
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    ensure_private_dir(parent_of(path))?;
    write_atomic(path, contents, SECRET_FILE_MODE)
}

/// Atomically writes a secret (0600) to a place the user chose (e.g. `--bundle FILE`):
/// a missing parent is created 0700, an existing one is left as it is (it may be the
/// user's home or download directory).
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let parent = parent_of(path);
    if !parent.exists() {
        ensure_private_dir(parent)?;
    }
    write_atomic(path, contents, SECRET_FILE_MODE)
}

/// Atomically writes a non-secret file (0644), creating missing parents as 0700.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let parent = parent_of(path);
    if !parent.exists() {
        ensure_private_dir(parent)?;
    }
    write_atomic(path, contents, PUBLIC_FILE_MODE)
}

/// Writes `contents` to a temp file beside `path`, fsyncs it and renames it over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = parent_of(path);
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
    let parent = parent_of(target).to_path_buf();
    if !parent.exists() {
        ensure_private_dir(&parent)?;
    }
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
            let dir = parent_of(path);
            ensure_private_dir_if_missing(dir)?;
            let err = |source| FsError::Write {
                path: path.clone(),
                source,
            };
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .permissions(std::fs::Permissions::from_mode(*mode))
                .tempfile_in(dir)
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

/// An exclusive advisory lock (`flock`) on a lock file, held until drop. The kernel drops
/// it when the holder exits, however it exits, so there are no stale locks to clean up.
/// The lock file itself stays (removing it would let two processes lock different files).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock on `path` (created 0600 if missing), waiting up to `wait` for another
    /// holder. `Ok(None)` when it is still held after `wait`.
    pub fn acquire(path: &Path, wait: std::time::Duration) -> Result<Option<DirLock>, FsError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(SECRET_FILE_MODE)
            .open(path)
            .map_err(|source| FsError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            if try_flock_exclusive(&file).map_err(|source| FsError::Write {
                path: path.to_path_buf(),
                source,
            })? {
                return Ok(Some(DirLock { _file: file }));
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file holds it.
#[allow(unsafe_code)]
fn try_flock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor number; `file` owns it and outlives the call.
    // (std's File::try_lock does the same but needs Rust 1.89; the workspace supports 1.88.)
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK)
        || err.kind() == std::io::ErrorKind::Interrupted
    {
        Ok(false)
    } else {
        Err(err)
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
    fn lock_is_exclusive_until_dropped() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join(".lock");
        let wait = std::time::Duration::from_millis(50);
        let held = DirLock::acquire(&path, wait).unwrap().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(DirLock::acquire(&path, wait).unwrap().is_none());
        drop(held);
        assert!(DirLock::acquire(&path, wait).unwrap().is_some());
    }

    #[test]
    fn user_chosen_files_leave_existing_parents_alone() {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = root.path().join("bundle.pem");
        write_secret_file(&f, b"s").unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(root.path()).unwrap().mode() & 0o777,
            0o755
        );
        write_secret_file(&root.path().join("new/b.pem"), b"s").unwrap();
        assert_eq!(
            std::fs::metadata(root.path().join("new")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(parent_of(Path::new("a.pem")), Path::new("."));
    }
}
