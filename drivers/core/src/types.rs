//! The values a [`ComputeDriver`](crate::ComputeDriver) takes and returns.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::DriverError;

/// Every label the drivers set starts with this; user labels may not.
pub const LABEL_PREFIX: &str = "openshell.";
/// `true` on every workload an OpenShell gateway created.
pub const LABEL_MANAGED: &str = "openshell.managed";
/// The [`SandboxId`] the workload belongs to.
pub const LABEL_SANDBOX_ID: &str = "openshell.sandbox-id";
/// The [`SandboxName`] the workload was created under (informational; the id is the key).
pub const LABEL_SANDBOX_NAME: &str = "openshell.sandbox-name";
/// The [`GatewayId`] of the gateway that owns the workload.
pub const LABEL_GATEWAY: &str = "openshell.gateway";
/// The image reference as given in the spec (runtimes may report a normalised one, such as
/// Podman's `localhost/...`).
pub const LABEL_IMAGE: &str = "openshell.image";

/// Checks the charset shared by ids that end up in label values and filters.
fn check_token(kind: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err(format!(
            "{kind} `{s}` must be 1 to 64 characters long (it is {})",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{kind} `{s}` contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    Ok(())
}

/// The gateway's identity for a sandbox: stable for the sandbox's life, never reused.
/// 1 to 64 of `[A-Za-z0-9._-]`, so it can be a label value and a filter argument.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SandboxId(String);

impl SandboxId {
    /// Checks `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self, DriverError> {
        let s = s.into();
        check_token("sandbox id", &s).map_err(DriverError::InvalidSpec)?;
        Ok(Self(s))
    }

    /// A fresh random id (a UUID v4).
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SandboxId {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Identifies the gateway that owns a workload ([`LABEL_GATEWAY`]). Same charset as
/// [`SandboxId`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayId(String);

impl GatewayId {
    pub fn new(s: impl Into<String>) -> Result<Self, DriverError> {
        let s = s.into();
        check_token("gateway id", &s).map_err(DriverError::InvalidSpec)?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sandbox's user-facing name: 1 to 63 of `[a-z0-9-]`, starting with a letter (a DNS
/// label, so it also works as a container name, a pod name and a host name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SandboxName(String);

impl SandboxName {
    /// Checks `s` and wraps it; the error says what is wrong and what is allowed.
    pub fn new(s: impl Into<String>) -> Result<Self, DriverError> {
        let name = s.into();
        let reason = if name.is_empty() {
            Some("it is empty".to_string())
        } else if name.len() > 63 {
            Some(format!(
                "it is {} characters long, the limit is 63",
                name.len()
            ))
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            Some("it must start with a lowercase letter".to_string())
        } else if name.ends_with('-') {
            Some("it must not end with '-'".to_string())
        } else {
            name.chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
                .map(|c| format!("it contains {c:?}"))
        };
        match reason {
            None => Ok(Self(name)),
            Some(reason) => Err(DriverError::InvalidName { name, reason }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SandboxName {
    type Err = DriverError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// What to run. The gateway stores it in its record; drivers turn it into a workload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SandboxSpec {
    /// A local image reference (`openshell/sandbox:dev`). Drivers never pull: the image must
    /// already be in the runtime's store.
    pub image: String,
    /// CPU limit in cores (`1.5` = one and a half cores); `None` = no limit.
    pub cpu: Option<f64>,
    /// Memory limit in bytes; `None` = no limit.
    pub memory: Option<u64>,
    /// Environment of the main process, on top of the image's.
    pub env: BTreeMap<String, String>,
    /// User labels; keys may not start with [`LABEL_PREFIX`] (those are ownership labels).
    pub labels: BTreeMap<String, String>,
    /// The main process; empty = the image's default command.
    pub command: Vec<String>,
    /// Files only the supervisor may read (see [`crate::credentials`]); never read back,
    /// so the spec of a [`WorkloadStatus`] has none.
    pub credentials: crate::Credentials,
}

impl SandboxSpec {
    /// A spec that runs `image`'s default command with no limits.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            ..Self::default()
        }
    }

    /// Checks what every backend needs; a backend may refuse more (its runtime's minimums).
    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |m: String| Err(DriverError::InvalidSpec(m));
        if self.image.trim().is_empty() {
            return bad("the image is empty: pass a local image reference".into());
        }
        if let Some(cpu) = self.cpu
            && !(cpu.is_finite() && cpu > 0.0 && cpu <= 1024.0)
        {
            return bad(format!("cpu {cpu} must be a number of cores above 0"));
        }
        if self.memory == Some(0) {
            return bad("memory 0 must be a number of bytes above 0".into());
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad(format!(
                    "environment variable name {k:?} must be non-empty without '=' or NUL"
                ));
            }
        }
        for v in self.env.values().chain(self.command.iter()) {
            if v.contains('\0') {
                return bad(format!("{v:?} contains a NUL byte"));
            }
        }
        for k in self.labels.keys() {
            if k.is_empty() {
                return bad("a label key is empty".into());
            }
            if k.starts_with(LABEL_PREFIX) {
                return bad(format!(
                    "label {k:?} uses the reserved prefix {LABEL_PREFIX:?}; pick another key"
                ));
            }
        }
        Ok(())
    }
}

/// A workload's state as the runtime reports it. It is not the sandbox phase: Ready also
/// needs the supervisor's session, which only the gateway sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkloadState {
    /// Created and not started yet (or being restarted by the runtime).
    Creating,
    /// The main process runs.
    Running,
    /// The main process has exited (stopped, or ended by itself) with this code.
    Stopped { exit_code: i64 },
    /// No workload exists for the sandbox (deleted, or removed behind the gateway's back).
    Missing,
    /// The runtime reports a state OpenShell cannot use (dead, paused, failed to start).
    Error(String),
}

impl fmt::Display for WorkloadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Creating => f.write_str("creating"),
            Self::Running => f.write_str("running"),
            Self::Stopped { exit_code } => write!(f, "stopped (exit code {exit_code})"),
            Self::Missing => f.write_str("missing"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// One workload, read from the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadStatus {
    pub id: SandboxId,
    pub name: SandboxName,
    pub state: WorkloadState,
    /// The runtime's own id (a container id); for messages and debugging only.
    pub runtime_id: String,
    /// The spec as the runtime reports it: `env` includes the image's variables, `command`
    /// the image's default when none was given, and `labels` are the user labels only.
    pub spec: SandboxSpec,
}

/// A state change seen by [`ComputeDriver::watch`](crate::ComputeDriver::watch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadEvent {
    pub id: SandboxId,
    pub state: WorkloadState,
}

/// Which output of the main process a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// One line of a workload's output, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: OutputStream,
    pub line: String,
}

/// Whether a driver can reach its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverHealth {
    Healthy,
    /// Why not, and what to do (the message of the error a call would return).
    Unhealthy(String),
}

/// What `openshell gateway info` and `doctor check` show about a driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// `docker`, `podman`, `fake`, ...
    pub name: String,
    /// Where the runtime is reached (`unix:///var/run/docker.sock`).
    pub endpoint: String,
    /// The runtime's version as it reports it; `None` when it cannot be reached.
    pub version: Option<String>,
    pub health: DriverHealth,
}

impl DriverInfo {
    pub fn is_healthy(&self) -> bool {
        self.health == DriverHealth::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "dev", "my-box-2", &"a".repeat(63)] {
            SandboxName::new(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("2box", "start with a lowercase letter"),
            ("-x", "start with a lowercase letter"),
            ("Box", "start with a lowercase letter"),
            ("my_box", "'_'"),
            ("my.box", "'.'"),
            ("box-", "end with '-'"),
            (&"a".repeat(64), "64 characters long"),
        ] {
            let e = SandboxName::new(bad).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, DriverError::InvalidName { .. }), "{bad}: {e:?}");
            assert!(msg.contains(why), "{bad}: {msg}");
            assert!(msg.contains("[a-z0-9-]"), "{msg}");
        }
    }

    #[test]
    fn ids() {
        let id = SandboxId::generate();
        assert_eq!(SandboxId::new(id.as_str()).unwrap(), id);
        assert!(SandboxId::new("").is_err());
        assert!(
            SandboxId::new("a=b")
                .unwrap_err()
                .to_string()
                .contains("'='")
        );
        assert!(GatewayId::new("gw 1").is_err());
        GatewayId::new("gw-1.local_x").unwrap();
    }

    #[test]
    fn spec_validation() {
        let ok = SandboxSpec::new("img");
        ok.validate().unwrap();
        let cases: Vec<(SandboxSpec, &str)> = vec![
            (SandboxSpec::new(" "), "image is empty"),
            (
                SandboxSpec {
                    cpu: Some(0.0),
                    ..ok.clone()
                },
                "cpu 0",
            ),
            (
                SandboxSpec {
                    cpu: Some(f64::NAN),
                    ..ok.clone()
                },
                "cpu NaN",
            ),
            (
                SandboxSpec {
                    memory: Some(0),
                    ..ok.clone()
                },
                "memory 0",
            ),
            (
                SandboxSpec {
                    env: [("A=B".into(), "x".into())].into(),
                    ..ok.clone()
                },
                "\"A=B\"",
            ),
            (
                SandboxSpec {
                    labels: [("openshell.managed".into(), "x".into())].into(),
                    ..ok.clone()
                },
                "reserved prefix",
            ),
        ];
        for (spec, want) in cases {
            let e = spec.validate().unwrap_err();
            assert!(matches!(e, DriverError::InvalidSpec(_)));
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
    }
}
