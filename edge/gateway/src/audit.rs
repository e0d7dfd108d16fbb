//! The audit log: one JSON line per mutating RPC, per tunnel opened or refused, and per
//! refused request, in `<state-dir>/audit.log` (or `--audit-log PATH`), each line also
//! emitted as a structured `audit` tracing event.
//!
//! A line holds who (subject, roles, how authenticated, peer address), what (action,
//! target), and the outcome (`result`: `ok`, `denied` or `error`, with the reason). Nothing
//! secret goes in: targets are object names, reasons are the texts users see; credential
//! values and tokens never pass through here.
//!
//! The file is 0600 (it names every user and what they touched) and is rotated by size:
//! `audit.log` moves to `audit.log.1` (and so on, up to [`KEEP`] files) when it would grow
//! past [`MAX_BYTES`]. Writes are synchronous under a mutex: lines are small and the
//! gateway audits at human rates, so ordering matters more than throughput.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// Size past which the log rotates (16 MiB: months of a team's activity, a quick grep).
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Rotated files kept besides the current one.
pub const KEEP: usize = 5;

/// The outcome of an audited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
    Error,
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub subject: String,
    pub roles: Vec<String>,
    /// `mtls`, `edge`, `none` (plaintext local), or `unauthenticated`.
    pub auth: String,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub result: Outcome,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Where audit lines go.
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<std::fs::File>>,
}

/// `now` as RFC 3339 with milliseconds, UTC.
pub fn timestamp(now: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(now);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl AuditLog {
    /// Opens (creating 0600) the log at `path`; its directory must exist.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        AuditLog::with_limit(path, MAX_BYTES)
    }

    /// As [`open`](Self::open), rotating past `max_bytes` (tests use a small limit).
    pub fn with_limit(path: &Path, max_bytes: u64) -> std::io::Result<AuditLog> {
        let file = open_append(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            max_bytes,
            file: Mutex::new(Some(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line (and the matching tracing event). A failing write is reported in the
    /// gateway's log, never to the caller: auditing must not become a way to deny service.
    pub fn record(&self, event: &Event) {
        tracing::info!(
            target: "audit",
            subject = %event.subject,
            roles = %event.roles.join(","),
            auth = %event.auth,
            peer = %event.peer,
            action = %event.action,
            target_object = %event.target,
            result = ?event.result,
            reason = %event.reason,
            "audit"
        );
        let mut line = match serde_json::to_vec(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit line");
                return;
            }
        };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.write_locked(&mut guard, &line) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }

    fn write_locked(&self, file: &mut Option<std::fs::File>, line: &[u8]) -> std::io::Result<()> {
        let size = match file.as_ref() {
            Some(f) => f.metadata()?.len(),
            None => 0,
        };
        if file.is_none() || size > 0 && size + line.len() as u64 > self.max_bytes {
            *file = None;
            if size > 0 {
                self.rotate()?;
            }
            *file = Some(open_append(&self.path)?);
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(line)
    }

    /// audit.log.(KEEP-1) -> audit.log.KEEP, ..., audit.log -> audit.log.1.
    fn rotate(&self) -> std::io::Result<()> {
        let numbered = |n: usize| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..KEEP).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: tighten it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event {
            time: timestamp(std::time::SystemTime::now()),
            subject: format!("user{n}"),
            roles: vec!["user".into()],
            auth: "mtls".into(),
            peer: "127.0.0.1:1".into(),
            action: "sandbox.delete".into(),
            target: "sandbox/x".into(),
            result: Outcome::Ok,
            reason: String::new(),
        }
    }

    #[test]
    fn lines_are_json_0600_and_rotate_by_size() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::with_limit(&path, 1000).unwrap();
        for n in 0..40 {
            log.record(&event(n));
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 1000, "{}", current.len());
        let last: serde_json::Value =
            serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last["subject"], "user39");
        assert_eq!(last["result"], "ok");
        assert!(last.get("reason").is_none());
        let rotated = dir.path().join("audit.log.1");
        assert!(rotated.exists());
        assert!(!dir.path().join(format!("audit.log.{}", KEEP + 1)).exists());
        // Every line of every file is one whole JSON object, in order.
        let mut subjects = Vec::new();
        for n in (1..=KEEP).rev() {
            if let Ok(t) = std::fs::read_to_string(dir.path().join(format!("audit.log.{n}"))) {
                subjects.extend(t.lines().map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["subject"]
                        .as_str()
                        .unwrap()
                        .to_string()
                }));
            }
        }
        subjects.extend(current.lines().map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["subject"]
                .as_str()
                .unwrap()
                .to_string()
        }));
        let numbers: Vec<usize> = subjects
            .iter()
            .map(|s| s.trim_start_matches("user").parse().unwrap())
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert_eq!(*numbers.last().unwrap(), 39);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_123);
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.123Z");
        let micro = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_500_999);
        assert_eq!(
            timestamp(micro),
            "1970-01-01T00:00:01.5Z",
            "milliseconds at most"
        );
    }
}
