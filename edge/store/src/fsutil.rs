//! Owner-only files and directories, shared by the database and the key file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Permission bits that let anyone but the owner in.
pub(crate) const GROUP_OR_OTHER: u32 = 0o077;

pub(crate) const HINT_WRITABLE: &str =
    "make sure the state directory exists and is writable by the user running the gateway";

/// Creates `dir` (and missing parents) owner-only (0700). An existing directory is kept as
/// it is, with a warning when others can reach into it: the operator chose it.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & GROUP_OR_OTHER != 0 {
                tracing::warn!(
                    dir = %dir.display(),
                    mode = format_args!("{mode:04o}"),
                    "state directory is accessible by group or others; consider chmod 700"
                );
            }
            Ok(())
        }
        Ok(_) => Err(StoreError::Io {
            action: "use as a directory",
            path: dir.to_owned(),
            hint: "a file is in the way; remove it or choose another state directory",
            source: io::Error::from(io::ErrorKind::NotADirectory),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                action: "create directory",
                path: dir.to_owned(),
                hint: HINT_WRITABLE,
                source,
            }),
        Err(source) => Err(StoreError::Io {
            action: "inspect directory",
            path: dir.to_owned(),
            hint: HINT_WRITABLE,
            source,
        }),
    }
}

/// Opens `path` for reading and writing, creating it owner-only (0600) if missing. An
/// existing file that others can read is tightened to 0600 (with a warning): it is ours.
pub(crate) fn open_private_file(path: &Path, action: &'static str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io {
            action,
            path: path.to_owned(),
            hint: HINT_WRITABLE,
            source,
        })?;
    let meta = file.metadata().map_err(|source| StoreError::Io {
        action: "inspect",
        path: path.to_owned(),
        hint: HINT_WRITABLE,
        source,
    })?;
    if !meta.is_file() {
        return Err(StoreError::Io {
            action,
            path: path.to_owned(),
            hint: "it is not a regular file; move it aside",
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & GROUP_OR_OTHER != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{mode:04o}"),
            "tightening permissions to 0600"
        );
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|source| StoreError::Io {
                action: "restrict permissions of",
                path: path.to_owned(),
                hint: "run the gateway as the owner of its state directory",
                source,
            })?;
    }
    Ok(file)
}

/// Writes `bytes` to `path` only if `path` does not exist yet, atomically: other processes
/// see either no file or the complete one, never a partial write. Returns `false` if
/// another writer got there first (its file is kept).
pub(crate) fn write_private_file_once(path: &Path, bytes: &[u8]) -> Result<bool> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = temp_sibling(path);
    let io_err = |action: &'static str, p: &Path| {
        let p: PathBuf = p.to_owned();
        move |source| StoreError::Io {
            action,
            path: p,
            hint: HINT_WRITABLE,
            source,
        }
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("sync", &tmp))?;
        // link(2) refuses to replace an existing file, unlike rename(2): first writer wins.
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("create", path)(e)),
        }
        if let Ok(d) = File::open(dir) {
            // Makes the new directory entry durable; failure only risks losing it on a
            // power cut, before anything was sealed with it being flushed either.
            let _ = d.sync_all();
        }
        Ok(true)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_owner_only_dirs_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("f");
        open_private_file(&file, "create").unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn tightens_an_existing_readable_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        open_private_file(&file, "open").unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let err = ensure_private_dir(&file).unwrap_err();
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn write_once_keeps_the_first_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("k");
        assert!(write_private_file_once(&file, b"first").unwrap());
        assert!(!write_private_file_once(&file, b"second").unwrap());
        assert_eq!(fs::read(&file).unwrap(), b"first");
        assert_eq!(mode(&file), 0o600);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
