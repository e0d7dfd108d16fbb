//! The tar stream of `sandbox download`, which the sandbox (possibly hostile) produces and
//! the CLI unpacks on the user's machine (`transfer::unpack_download`). Beyond "never
//! panics": nothing may be created, changed or linked outside the staging directory. Each
//! run unpacks into `base/staging` next to `base/outside/secret`; afterwards `base` must
//! hold exactly those two, `outside` exactly `secret`, unchanged and with one link (a hard
//! link to a file outside would hand the sandbox a way to overwrite it later).
//!
//! Runs in a fresh temporary directory per input (under $TMPDIR; scripts/fuzz points it at
//! /dev/shm when it exists).
#![no_main]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"the user's own file";

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

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().expect("temporary directory");
    let staging = base.path().join("staging");
    let outside = base.path().join("outside");
    std::fs::create_dir(&staging).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let secret = outside.join("secret");
    std::fs::write(&secret, SECRET).unwrap();

    let _ = openshell_cli::commands::transfer::unpack_download(data, &staging);

    make_removable(base.path());
    let mut top: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["outside", "staging"], "an entry landed beside the staging directory");
    let beside: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["secret"], "an entry landed outside the staging directory");
    let meta = std::fs::symlink_metadata(&secret).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.nlink(), 1, "a hard link to a file outside the staging directory");
    assert_eq!(std::fs::read(&secret).unwrap(), SECRET, "a file outside was overwritten");
});
