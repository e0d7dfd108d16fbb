//! The tar stream of `sandbox download`, which the sandbox (possibly hostile) produces and
//! the CLI unpacks on the user's machine (`transfer::unpack_download`). Beyond "never
//! panics":
//! - nothing may be created, changed or linked outside the staging directory. Each run
//!   unpacks into `base/staging` next to `base/outside/secret`; afterwards `base` must hold
//!   exactly those two, `outside` exactly `secret`, unchanged and with one link (a hard link
//!   to a file outside would hand the sandbox a way to overwrite it later);
//! - nothing unpacked keeps a setuid, setgid, sticky or world-write bit, and no regular
//!   file has a permission bit of the user's mask (umask plus world-write) set.
//!
//! Runs in a fresh temporary directory per input (under $TMPDIR; scripts/fuzz points it at
//! /dev/shm when it exists).
#![no_main]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"the user's own file";
/// The mask `download` passes: a restrictive umask (027) plus world-write.
const MASK: u32 = 0o027;

/// Makes everything under `dir` removable again (entries may arrive as mode 000).
fn make_removable(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_removable(&entry.path());
            }
        }
    }
}

/// Nothing under `dir` has setuid, setgid, sticky or world-write bits, nor any of `MASK`'s
/// (the process's umask is `MASK` too, as for a user whose umask is 027: directories the tar
/// crate creates implicitly for a nested entry, and files before their mode is set, get it).
fn check_modes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        assert_eq!(mode & 0o7000, 0, "{} kept mode {mode:o}", path.display());
        assert_eq!(
            mode & MASK,
            0,
            "{} ignores the mask: mode {mode:o}",
            path.display()
        );
        if meta.is_dir() {
            check_modes(&path);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static UMASK: std::sync::Once = std::sync::Once::new();
    // SAFETY: umask(2) only sets the process's file mode mask; it cannot fail and touches
    // no memory. Set once, before any file is created by this process's fuzzing.
    UMASK.call_once(|| unsafe {
        libc::umask(MASK as libc::mode_t);
    });
    let base = tempfile::tempdir().expect("temporary directory");
    let staging = base.path().join("staging");
    let outside = base.path().join("outside");
    std::fs::create_dir(&staging).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let secret = outside.join("secret");
    std::fs::write(&secret, SECRET).unwrap();

    let _ = openshell_cli::commands::transfer::unpack_download(data, &staging, MASK);

    check_modes(&staging);
    make_removable(base.path());
    let mut top: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["outside", "staging"],
        "an entry landed beside the staging directory"
    );
    let beside: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside,
        ["secret"],
        "an entry landed outside the staging directory"
    );
    let meta = std::fs::symlink_metadata(&secret).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        meta.nlink(),
        1,
        "a hard link to a file outside the staging directory"
    );
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        SECRET,
        "a file outside was overwritten"
    );
});
