//! Network namespaces and the `ip` command: naming, creation, removal, and the clean-up
//! of namespaces left behind by crashed runs.
//!
//! Namespace names are `osl-<pid>-<n>-a|b`: the pid says which process owns them, so a
//! later run can tell a crashed owner (no `/proc/<pid>`) from a live one and delete only
//! the former.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Prefix of every namespace this crate creates.
pub const NETNS_PREFIX: &str = "osl-";

/// Serializes `ip netns add/delete` within the process: concurrent first-time `ip netns
/// add` calls race on setting up `/run/netns`. Also guards the one-time clean-up.
static NETNS_LOCK: Mutex<bool> = Mutex::new(false);

/// Check that this process can build links: root, `/dev/net/tun`, and `ip` (iproute2).
/// The error says what is missing and how to fix it.
pub fn preflight() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("reading /proc/self/status", e))?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(Error::Unavailable(format!(
            "needs root to create network namespaces and TUN devices (effective uid is {euid}); run as root"
        )));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err(Error::Unavailable(
            "/dev/net/tun is missing; the kernel needs CONFIG_TUN (or `mknod /dev/net/tun c 10 200`)"
                .into(),
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(Error::Unavailable(
            "the `ip` command (iproute2) is not runnable; install iproute2".into(),
        )),
    }
}

/// Run `ip ARGS...`, turning a non-zero exit into an error carrying its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running `{command}`"), e))?;
    if !out.status.success() {
        return Err(Error::Ip {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of all network namespaces registered under `/run/netns`.
pub fn list_namespaces() -> Result<Vec<String>> {
    // Lines look like `name (id: 3)` or just `name`.
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The owning pid encoded in one of this crate's namespace names.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let _n: u32 = parts.next()?.parse().ok()?;
    let side = parts.next()?;
    if !(side == "a" || side == "b") || parts.next().is_some() {
        return None;
    }
    Some(pid)
}

pub(crate) fn namespace_name(pid: u32, n: u32, side: char) -> String {
    format!("{NETNS_PREFIX}{pid}-{n}-{side}")
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete this crate's namespaces whose owner process is gone. The first call in a
/// process also deletes namespaces carrying this process's own pid (left by an earlier
/// process that had the same pid): none of ours exist yet. Returns the deleted names.
pub fn remove_stale() -> Result<Vec<String>> {
    let mut first_done = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let me = std::process::id();
    let mut removed = Vec::new();
    for name in list_namespaces()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        let stale = if pid == me {
            !*first_done
        } else {
            !pid_alive(pid)
        };
        if stale {
            match ip(&["netns", "delete", &name]) {
                Ok(_) => removed.push(name),
                // Another process may have removed it first.
                Err(e) => {
                    tracing::warn!(netns = %name, error = %e, "cannot remove stale namespace")
                }
            }
        }
    }
    *first_done = true;
    if !removed.is_empty() {
        tracing::info!(?removed, "removed stale link namespaces");
    }
    Ok(removed)
}

pub(crate) fn add(name: &str) -> Result<()> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "add", name]).map(drop)
}

pub(crate) fn delete(name: &str) -> Result<()> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ip(&["netns", "delete", name]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_only_matches_our_exact_format() {
        assert_eq!(owner_pid(&namespace_name(1234, 7, 'a')), Some(1234));
        assert_eq!(owner_pid("osl-1234-7-b"), Some(1234));
        assert_eq!(owner_pid("osl-1234-7-c"), None);
        assert_eq!(owner_pid("osl-1234-x-a"), None);
        assert_eq!(owner_pid("osl-1234-7-a-extra"), None);
        assert_eq!(owner_pid("other-1234-7-a"), None);
        assert_eq!(owner_pid("osl-abc-7-a"), None);
    }
}
