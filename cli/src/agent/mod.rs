//! The per-user, per-gateway connection agent (like OpenSSH's ControlMaster/ControlPersist):
//! a background `openshell` process that holds the QUIC connection to one gateway, and so
//! its TLS session tickets (in memory: rustls cannot persist them, issue #2287), and serves
//! this user's other `openshell` processes over a Unix socket. A command through a warm
//! agent costs only its RPCs; one whose agent dropped the idle connection costs its RPCs
//! plus a 0-RTT reconnect.
//!
//! ```text
//!   openshell status ─┐                       ┌─ hello (fingerprint check), status, stop
//!   openshell ssh ────┼─ h2c, Unix socket ─> agent ─ gRPC / CONNECT ─ QUIC (TCP) ─> gateway
//!   openshell fwd ────┘  (0600, in a 0700 dir)   (drops it after --idle-disconnect,
//!                                                  exits after --persist without clients)
//! ```
//!
//! Owns: where the socket lives ([`AgentPaths`]), the registration fingerprint that keeps a
//! stale agent from serving an old identity, the status document, and the automatic use by
//! ordinary commands ([`connect_if_running`]). The running agent is in `daemon`; the wire
//! protocol in `openshell_transport::agent`; the commands in `commands::agent`.
//!
//! Starting is explicit (`openshell agent start`): ordinary commands never spawn one.

pub mod daemon;

use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use openshell_transport::{Connection, Endpoint, TransportError};
use serde::{Deserialize, Serialize};

use crate::CliError;
use crate::args::{GlobalArgs, TransportChoice};
use crate::config::{Env, ResolvedGateway, Source};

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;
const SOCKET_FILE: &str = "agent.sock";
const LOG_FILE: &str = "agent.log";

/// Where one gateway's agent lives.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    /// Owner-only (0700) directory holding the socket and the log.
    pub dir: PathBuf,
    /// The socket (0600).
    pub socket: PathBuf,
    /// The agent's own log (0600), next to its socket.
    pub log: PathBuf,
}

impl AgentPaths {
    /// The agent directory for `gw`: `gateways/<name>/agent/` in the user's config, or
    /// `$XDG_RUNTIME_DIR/openshell/<name>/` when that gives a shorter socket path. Too long
    /// either way (Unix sockets take 107 bytes) is an error that says what to shorten.
    pub fn locate(gw: &ResolvedGateway, env: &Env) -> Result<AgentPaths, CliError> {
        if gw.source == Source::Endpoint {
            return Err(CliError::hint(
                format!(
                    "the connection agent serves registered gateways only, and '{}' is a bare endpoint",
                    gw.endpoint
                ),
                format!(
                    "Register it first: openshell gateway add {} --name <name>",
                    gw.endpoint
                ),
            ));
        }
        let mut dirs = vec![gw.user_dir.join("agent")];
        if let Some(rt) = &env.xdg_runtime_dir {
            dirs.push(rt.join("openshell").join(&gw.name));
        }
        let dir = dirs
            .into_iter()
            .min_by_key(|d| d.join(SOCKET_FILE).as_os_str().len())
            .expect("at least one candidate");
        let socket = dir.join(SOCKET_FILE);
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(CliError::hint(
                format!(
                    "the agent's socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets",
                    socket.display()
                ),
                "Set XDG_RUNTIME_DIR to a short directory you own (e.g. /run/user/$(id -u)), or use a shorter XDG_CONFIG_HOME",
            ));
        }
        Ok(AgentPaths {
            log: dir.join(LOG_FILE),
            socket,
            dir,
        })
    }
}

/// A digest of everything that decides which gateway and identity an agent serves: the
/// endpoint and auth mode as resolved from metadata.json, the size, mtime and inode of the
/// credential files (ca.crt, tls.crt, tls.key, edge_token) and of this executable.
/// (metadata.json's own mtime is left out: every direct connection rewrites it to remember
/// the path that worked.) File
/// contents are not read, so no secret goes into it. The agent records it at start; a
/// command whose fingerprint differs is refused and the agent exits.
pub fn fingerprint(gw: &ResolvedGateway) -> String {
    // `DefaultHasher::new()` has fixed keys: equal digests across processes of one build,
    // and the executable's own identity is hashed too, so two builds never compare.
    let mut h = std::hash::DefaultHasher::new();
    env!("CARGO_PKG_VERSION").hash(&mut h);
    gw.name.hash(&mut h);
    gw.endpoint.hash(&mut h);
    gw.auth.as_str().hash(&mut h);
    let exe = std::env::current_exe().ok();
    let files = [
        Some(gw.mtls_dir.join("ca.crt")),
        Some(gw.mtls_dir.join("tls.crt")),
        Some(gw.mtls_dir.join("tls.key")),
        Some(gw.edge_token_path.clone()),
        exe,
    ];
    for path in files.iter().flatten() {
        path.hash(&mut h);
        match std::fs::metadata(path) {
            Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.ino()).hash(&mut h),
            Err(_) => "absent".hash(&mut h),
        }
    }
    format!("{:016x}", h.finish())
}

/// What `agent status -o json` prints (the agent serves it on `status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub running: bool,
    pub gateway: String,
    pub socket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    pub requests_served: u64,
    pub tunnels_opened: u64,
    /// Connections to the gateway made after the first.
    pub reconnects: u64,
    pub zero_rtt: ZeroRttCounts,
    pub clients: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_disconnect_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persist_secs: Option<f64>,
}

/// The agent's connection to the gateway.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Upstream {
    pub connected: bool,
    /// `quic` or `tcp` (the last connection's when not connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Smoothed RTT (QUIC only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_since: Option<String>,
    /// Early data on the current connection: none, pending, accepted or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_rtt: Option<String>,
}

/// Reconnects that tried 0-RTT, by the gateway's answer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ZeroRttCounts {
    pub accepted: u64,
    pub rejected: u64,
}

/// Why a command does not go through an agent, or `None` when it may.
fn bypass_reason(gw: &ResolvedGateway, global: &GlobalArgs, env: &Env) -> Option<&'static str> {
    if global.no_agent {
        Some("--no-agent")
    } else if env.no_agent {
        Some("OPENSHELL_NO_AGENT")
    } else if global.transport != TransportChoice::Auto {
        // An explicit path is a request to connect over it, which the agent's own
        // connection may not use.
        Some("--transport is not auto")
    } else if gw.source == Source::Endpoint {
        Some("unregistered endpoint")
    } else {
        None
    }
}

/// The agent's connection for `gw` when one is running and serves this registration;
/// `None` (connect directly) otherwise. A socket nobody listens on is removed. Never an
/// error: the agent is an accelerator, and every failure falls back silently (debug log),
/// except a socket of another user, which is refused with a warning before anything is
/// sent to it (its owner, its directory's, and the serving process's uid are checked).
pub async fn connect_if_running(gw: &ResolvedGateway, global: &GlobalArgs) -> Option<Connection> {
    let env = Env::process();
    if let Some(why) = bypass_reason(gw, global, env) {
        tracing::debug!(reason = why, "not using the connection agent");
        return None;
    }
    let paths = match AgentPaths::locate(gw, env) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "no usable agent socket path");
            return None;
        }
    };
    // The common case, no agent: one stat.
    if std::fs::symlink_metadata(&paths.socket).is_err() {
        return None;
    }
    let endpoint = Endpoint::parse(&gw.endpoint).ok()?;
    match openshell_transport::connect_agent(&paths.socket, &endpoint, &fingerprint(gw)).await {
        Ok(conn) => {
            tracing::debug!(socket = %paths.socket.display(), "using the connection agent");
            Some(conn)
        }
        Err(TransportError::NoAgent { .. }) => {
            remove_stale(&paths.socket);
            None
        }
        // Said out loud: someone is listening where this user's agent would, and the user
        // should know; the command itself is safe on its own connection.
        Err(TransportError::UntrustedAgent(why)) => {
            eprintln!(
                "⚠ {why}
  Connecting to the gateway directly."
            );
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "connection agent not usable; connecting directly");
            None
        }
    }
}

/// Removes a socket file nobody listens on (an agent killed without cleaning up).
pub fn remove_stale(socket: &Path) {
    match std::fs::remove_file(socket) {
        Ok(()) => tracing::debug!(socket = %socket.display(), "removed a stale agent socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::debug!(error = %e, socket = %socket.display(), "cannot remove a stale agent socket")
        }
    }
}

/// Parses a duration: a number with a unit (`ms`, `s`, `m`, `h`), or bare seconds. Zero
/// is refused (an agent that drops everything at once serves nothing).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let fix = "use a positive number with a unit, e.g. 500ms, 30s, 10m or 1h";
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: {fix}"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("'{text}': unknown unit '{other}': {fix}")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 366.0 * 86400.0) {
        return Err(format!("'{text}' is out of range: {fix}"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `12.5s`, `10m`, `1h` for messages.
pub fn format_duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", s / 3600.0)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;
    use std::time::Duration;

    fn gw(user_dir: &Path) -> ResolvedGateway {
        ResolvedGateway {
            name: "local".into(),
            endpoint: "https://127.0.0.1:17670".into(),
            auth: AuthMode::Mtls,
            source: Source::User,
            mtls_dir: user_dir.join("mtls"),
            edge_token_path: user_dir.join("edge_token"),
            user_dir: user_dir.to_path_buf(),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "abc", "0", "0s", "10 parsecs", "-5s", "1e400", "10d"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("e.g."), "{bad}: {err}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
    }

    #[test]
    fn socket_goes_where_the_path_is_shorter_and_fits() {
        let g = gw(Path::new("/home/u/.config/openshell/gateways/local"));
        let mut env = Env::default();
        let p = AgentPaths::locate(&g, &env).unwrap();
        assert_eq!(
            p.socket,
            Path::new("/home/u/.config/openshell/gateways/local/agent/agent.sock")
        );
        env.xdg_runtime_dir = Some("/run/user/1000".into());
        let p = AgentPaths::locate(&g, &env).unwrap();
        assert_eq!(
            p.socket,
            Path::new("/run/user/1000/openshell/local/agent.sock")
        );

        let long = format!("/{}", "x".repeat(120));
        let g = gw(Path::new(&long));
        let err = AgentPaths::locate(&g, &Env::default()).unwrap_err();
        assert!(err.to_string().contains("107-byte limit"), "{err}");
        assert!(err.hint_text().unwrap().contains("XDG_RUNTIME_DIR"));
        // A short runtime dir rescues it.
        env.xdg_runtime_dir = Some("/run/user/0".into());
        assert!(AgentPaths::locate(&g, &env).is_ok());
    }

    #[test]
    fn fingerprint_follows_the_credential_files() {
        let dir = tempfile::tempdir().unwrap();
        let g = gw(dir.path());
        let before = fingerprint(&g);
        assert_eq!(before, fingerprint(&g));
        std::fs::create_dir_all(&g.mtls_dir).unwrap();
        std::fs::write(g.mtls_dir.join("tls.crt"), b"new certificate").unwrap();
        assert_ne!(before, fingerprint(&g));
        let mut other = g.clone();
        other.endpoint = "https://127.0.0.1:1".into();
        assert_ne!(fingerprint(&g), fingerprint(&other));
    }
}
