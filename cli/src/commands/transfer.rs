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
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let counted = Counting::new(stdout);
        let mut archive = tar::Archive::new(counted);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(false);
        // `unpack` refuses entries that would land outside the directory.
        archive.unpack(&unpack_dir)?;
        Ok(archive.into_inner().bytes)
    });
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
