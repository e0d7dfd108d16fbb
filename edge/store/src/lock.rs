//! One gateway per database: an exclusive `flock(2)` on a lock file beside it.
//!
//! SQLite would let a second gateway open the same file and interleave writes with ours,
//! breaking the store-wide resource-version counter and event order (both assume one
//! writer). SQLite's own locks only make the second writer wait or fail per statement, so
//! the mistake would surface late and confusingly. An exclusive, non-blocking `flock` taken
//! before the database is opened makes the second gateway fail at startup, naming the pid
//! of the first. The kernel drops the lock when the holder exits, even on a crash, so a
//! stale lock file is harmless. `flock` locks belong to the open file description, so a
//! second open in the same process conflicts too.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::fsutil::{self, HINT_WRITABLE};

/// Holds the lock until dropped.
#[derive(Debug)]
pub(crate) struct ProcessLock {
    _file: File,
}

impl ProcessLock {
    /// Takes the lock for `db_path`, or fails with [`StoreError::InUse`].
    pub(crate) fn acquire(db_path: &Path) -> Result<Self> {
        let lock_path = lock_path(db_path);
        let mut file = fsutil::open_private_file(&lock_path, "create lock file")?;
        let io_err = |action| {
            let path = lock_path.clone();
            move |source| StoreError::Io {
                action,
                path,
                hint: HINT_WRITABLE,
                source,
            }
        };
        if !try_lock_exclusive(&file).map_err(io_err("lock"))? {
            let mut recorded = String::new();
            let pid = file
                .read_to_string(&mut recorded)
                .ok()
                .and_then(|_| recorded.trim().parse().ok());
            return Err(StoreError::InUse {
                path: db_path.to_owned(),
                pid,
            });
        }
        // Only the holder writes, so readers see a whole pid or an empty file.
        file.set_len(0).map_err(io_err("truncate"))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err("seek"))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err("write"))?;
        Ok(ProcessLock { _file: file })
    }
}

/// `<db>-lock`, following SQLite's `-wal`/`-shm` naming so the files sort together.
pub(crate) fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.file_name().unwrap_or_default().to_owned();
    name.push("-lock");
    db_path.with_file_name(name)
}

/// `Ok(false)` when another open file description holds the lock.
#[allow(unsafe_code)]
fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // std's File::try_lock would do, but it is newer than the workspace's rust-version.
    loop {
        // SAFETY: flock(2) takes a descriptor number and flags, no pointers. The descriptor
        // is valid for the whole call because `file` is borrowed and owns it.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("state.db");
        let first = ProcessLock::acquire(&db).unwrap();
        match ProcessLock::acquire(&db).unwrap_err() {
            StoreError::InUse { path, pid } => {
                assert_eq!(path, db);
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        let _again = ProcessLock::acquire(&db).unwrap();
        let recorded = std::fs::read_to_string(lock_path(&db)).unwrap();
        assert_eq!(recorded, format!("{}\n", std::process::id()));
    }
}
