//! `sandbox upload` and `sandbox download`: files and directories as a tar stream over the
//! same SSH path as `exec` (the sandbox needs `tar`, as the default image has).
//!
//! Neither side is ever left half-written: the stream is unpacked into a temporary directory
//! next to the destination and renamed into place only once it is complete; a failure
//! removes the temporary directory. Destinations follow `cp`: an existing directory receives
//! the item under its own name, anything else is the new item's path.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};

use crate::CliError;
use crate::args::GlobalArgs;
use crate::client::GatewayConnection;
use crate::commands::ssh::{prepare, shell_quote, ssh_command};

/// The sandbox side of an upload: unpack stdin into a temp dir beside the target, then move
/// it into place (an existing directory of that name is replaced).
fn unpack_script(dest: &str, base: &str) -> String {
    format!(
        r#"set -e
dest={dest}
base={base}
if [ -d "$dest" ]; then target="$dest/$base"; else target="$dest"; mkdir -p "$(dirname "$target")"; fi
tmp=$(mktemp -d "$(dirname "$target")/.openshell-upload.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -x -f - -C "$tmp"
if [ -d "$target" ] && [ ! -L "$target" ]; then mv "$target" "$tmp/.replaced"; fi
mv "$tmp/$base" "$target"
echo "$target"
"#,
        dest = shell_quote(dest),
        base = shell_quote(base),
    )
}

/// The sandbox side of a download: the item as a one-entry tar stream on stdout.
fn pack_script(path: &str) -> String {
    format!(
        r#"set -e
p={path}
[ -e "$p" ] || {{ echo "$p does not exist in the sandbox" >&2; exit 3; }}
cd "$(dirname "$p")"
exec tar -c -f - "$(basename "$p")"
"#,
        path = shell_quote(path)
    )
}

fn base_name(p: &Path) -> Result<String, CliError> {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::msg(format!("{} has no file name to copy", p.display())))
}

/// `sandbox upload NAME LOCAL [DEST]` (DEST defaults to the sandbox user's home).
pub async fn upload(
    conn: &GatewayConnection,
    global: &GlobalArgs,
    name: &str,
    local: &Path,
    dest: Option<&str>,
) -> Result<ExitCode, CliError> {
    let meta = std::fs::symlink_metadata(local).map_err(|e| {
        CliError::hint(
            format!("cannot upload {}: {e}", local.display()),
            "Name an existing local file or directory",
        )
    })?;
    let base = base_name(&local.canonicalize().unwrap_or_else(|_| local.to_path_buf()))?;
    let t = prepare(conn, global, name).await?;
    let mut cmd = ssh_command(&t)?;
    cmd.arg("-T")
        .arg(format!("sandbox@{}", t.alias))
        .arg("--")
        .arg(unpack_script(dest.unwrap_or("."), &base))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::msg(format!("cannot run ssh: {e}")))?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let source = local.to_path_buf();
    let is_dir = meta.is_dir();
    let writer = std::thread::spawn(move || -> std::io::Result<u64> {
        let counted = Counting::new(stdin);
        let mut tar = tar::Builder::new(counted);
        tar.follow_symlinks(false);
        if is_dir {
            tar.append_dir_all(&base, &source)?;
        } else {
            tar.append_path_with_name(&source, &base)?;
        }
        let counted = tar.into_inner()?;
        Ok(counted.bytes)
    });
    let output = child
        .wait_with_output()
        .map_err(|e| CliError::msg(format!("cannot run ssh: {e}")))?;
    let sent = writer
        .join()
        .map_err(|_| CliError::msg("the upload writer failed"))?;
    if !output.status.success() {
        return Err(CliError::msg(format!(
            "upload of {} to sandbox {name} failed (exit {}); nothing was changed in the sandbox",
            local.display(),
            output.status.code().unwrap_or(-1)
        )));
    }
    let sent = sent.map_err(|e| CliError::msg(format!("cannot read {}: {e}", local.display())))?;
    let landed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    eprintln!(
        "Uploaded {} to {name}:{landed} ({sent} bytes)",
        local.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `sandbox download NAME PATH [DEST]` (DEST defaults to the current directory).
pub async fn download(
    conn: &GatewayConnection,
    global: &GlobalArgs,
    name: &str,
    path: &str,
    dest: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let dest = dest.unwrap_or(Path::new("."));
    let remote_base = Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::msg(format!("{path} has no file name to copy")))?;
    let target: PathBuf = if dest.is_dir() {
        dest.join(&remote_base)
    } else {
        dest.to_path_buf()
    };
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if !parent.is_dir() {
        return Err(CliError::hint(
            format!(
                "cannot download to {}: {} is not a directory",
                target.display(),
                parent.display()
            ),
            "Create the directory first or name an existing one",
        ));
    }
    let t = prepare(conn, global, name).await?;
    let mut cmd = ssh_command(&t)?;
    cmd.arg("-T")
        .arg(format!("sandbox@{}", t.alias))
        .arg("--")
        .arg(pack_script(path))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::msg(format!("cannot run ssh: {e}")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let staging = tempfile::Builder::new()
        .prefix(".openshell-download.")
        .tempdir_in(&parent)
        .map_err(|e| CliError::msg(format!("cannot write in {}: {e}", parent.display())))?;
    let unpack_dir = staging.path().to_path_buf();
    let mask = local_mask();
    let reader = std::thread::spawn(move || unpack_download(stdout, &unpack_dir, mask));
    let status = child
        .wait()
        .map_err(|e| CliError::msg(format!("cannot run ssh: {e}")))?;
    let received = reader
        .join()
        .map_err(|_| CliError::msg("the download reader failed"))?;
    if !status.success() {
        return Err(CliError::msg(format!(
            "download of {name}:{path} failed (exit {}); nothing was written locally",
            status.code().unwrap_or(-1)
        )));
    }
    let received =
        received.map_err(|e| CliError::msg(format!("the download of {path} is corrupt: {e}")))?;
    let unpacked = staging.path().join(&remote_base);
    if std::fs::symlink_metadata(&unpacked).is_err() {
        return Err(CliError::msg(format!(
            "the sandbox sent no {remote_base}; nothing was written locally"
        )));
    }
    if target.is_dir() && !target.is_symlink() {
        std::fs::rename(&target, staging.path().join(".replaced"))?;
    }
    std::fs::rename(&unpacked, &target)?;
    eprintln!(
        "Downloaded {name}:{path} to {} ({received} bytes)",
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Unpacks a download's tar stream into `dir` and returns the bytes read. The modes in the
/// stream come from the sandbox, which is not trusted with the user's files: setuid, setgid
/// and sticky bits are dropped, and `mask` is cleared from the permission bits (the user's
/// umask plus world-write), so a download never lands as a setuid program or a file every
/// local user may change. Owners are never taken from the stream either (the user owns
/// what they download), and entries that would land outside `dir` are refused.
#[doc(hidden)] // public for the download_tar fuzz target (cli/fuzz)
pub fn unpack_download(source: impl std::io::Read, dir: &Path, mask: u32) -> std::io::Result<u64> {
    let mut archive = tar::Archive::new(Counting::new(source));
    // Without preservation the tar crate keeps only the 0o777 bits, then clears `mask`.
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_mask(mask);
    archive.set_overwrite(false);
    archive.unpack(dir)?;
    Ok(archive.into_inner().bytes)
}

/// The permission bits a download may not set: the process's umask, and always the
/// world-write bit. The umask is read from /proc (setting it to read it would race with
/// other threads creating files); without /proc the usual 022 is assumed.
fn local_mask() -> u32 {
    const WORLD_WRITE: u32 = 0o002;
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_umask(&status))
        .unwrap_or(0o022);
    umask | WORLD_WRITE
}

/// The `Umask:` line of /proc/PID/status (Linux 4.7 and later).
fn parse_umask(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
}

/// Counts bytes passing through a reader or writer.
struct Counting<T> {
    inner: T,
    bytes: u64,
}

impl<T> Counting<T> {
    fn new(inner: T) -> Self {
        Counting { inner, bytes: 0 }
    }
}

impl<T: std::io::Write> std::io::Write for Counting<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: std::io::Read> std::io::Read for Counting<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A tar stream as a hostile sandbox could send it: a setuid+setgid world-writable
    /// program, a sticky world-writable directory holding a group-writable file, and a
    /// root-owned entry.
    fn hostile_tar() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o1777);
        dir.set_size(0);
        b.append_data(&mut dir, "item/", std::io::empty()).unwrap();
        let mut add = |path: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_size(4);
            h.set_uid(0);
            h.set_gid(0);
            b.append_data(&mut h, path, &b"data"[..]).unwrap();
        };
        add("item/tool", 0o6777);
        add("item/shared", 0o664);
        add("item/plain", 0o644);
        b.into_inner().unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn downloads_drop_setuid_setgid_sticky_and_world_write_and_apply_the_umask() {
        let tar = hostile_tar();
        for (umask, tool, shared, dir) in [
            (0o022, 0o755, 0o644, 0o755),
            (0o077, 0o700, 0o600, 0o700),
            // Even a user whose umask allows world-write gets none from a sandbox.
            (0o000, 0o775, 0o664, 0o775),
        ] {
            let out = tempfile::tempdir().unwrap();
            let n = unpack_download(&tar[..], out.path(), umask | 0o002).unwrap();
            // Counted up to the end-of-archive marker (the zero padding after it is not read).
            assert!(n > 0 && n <= tar.len() as u64, "{n}");
            let item = out.path().join("item");
            assert_eq!(mode(&item.join("tool")), tool, "umask {umask:o}");
            assert_eq!(mode(&item.join("shared")), shared, "umask {umask:o}");
            assert_eq!(mode(&item.join("plain")), 0o644 & !umask, "umask {umask:o}");
            assert_eq!(mode(&item), dir, "umask {umask:o}");
            assert_eq!(std::fs::read(item.join("tool")).unwrap(), b"data");
        }
    }

    #[test]
    fn the_umask_is_read_from_proc() {
        let status = "Name:\topenshell\nUmask:\t0027\nState:\tR\n";
        assert_eq!(parse_umask(status), Some(0o027));
        assert_eq!(parse_umask("Name: x\n"), None);
        // This process's own, as the kernel reports it.
        assert!(local_mask() & 0o002 != 0);
    }
}
