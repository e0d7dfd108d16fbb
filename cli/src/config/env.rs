//! The one place the CLI reads its environment. Everything else takes an [`Env`], so unit
//! tests build one by hand instead of mutating the process environment.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Default system layer root (read-only registrations installed by an administrator).
pub const DEFAULT_SYSTEM_DIR: &str = "/etc/openshell";

/// Default time `gateway add`/`gateway login` waits for the browser callback. Five minutes
/// leaves time to sign in with a second factor; longer keeps a forgotten command (and its
/// loopback listener) alive for nothing.
pub const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// A snapshot of every environment variable the CLI uses.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `OPENSHELL_GATEWAY`: gateway name overriding the active one. Blank counts as unset.
    pub gateway: Option<String>,
    /// `OPENSHELL_GATEWAY_ENDPOINT`: endpoint URL used when `--gateway-endpoint` is absent
    /// (as upstream). Blank counts as unset.
    pub gateway_endpoint: Option<String>,
    /// `OPENSHELL_SYSTEM_GATEWAY_DIR` as given (validated by [`Env::system_dir`]).
    pub system_gateway_dir: Option<String>,
    /// `XDG_CONFIG_HOME`; only an absolute value counts (XDG base directory spec).
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// `OPENSHELL_NO_BROWSER` = `1`/`true`/`yes`: print login URLs instead of opening them.
    pub no_browser: bool,
    /// `OPENSHELL_LOGIN_TIMEOUT_SECS`: how long to wait for the login callback. Default
    /// [`DEFAULT_LOGIN_TIMEOUT`]; tests shorten it.
    pub login_timeout: Duration,
    /// `OPENSHELL_HEDGE` as given: `off`, `auto` (default) or `always`; when small reads
    /// are sent twice on a lossy QUIC path. Validated where a connection is configured.
    pub hedge: Option<String>,
    /// `OPENSHELL_CONGESTION` as given: the QUIC congestion controller of this end (it
    /// governs uploads): `tolerant` (default), `cubic`, `newreno` or `bbr`.
    pub congestion: Option<String>,
    /// `OPENSHELL_NO_AGENT` = `1`/`true`/`yes`: connect directly even when a connection
    /// agent runs for the gateway (as `--no-agent`).
    pub no_agent: bool,
    /// `XDG_RUNTIME_DIR`; only an absolute value counts. The agent's socket goes there when
    /// that path is shorter than the one under the gateway's config directory.
    pub xdg_runtime_dir: Option<PathBuf>,
}

impl Env {
    /// The process environment, read once and shared for the life of the process. The first
    /// call prints any warning about ignored values to stderr.
    pub fn process() -> &'static Env {
        static ENV: OnceLock<Env> = OnceLock::new();
        ENV.get_or_init(|| {
            let env = Env::from_lookup(|k| std::env::var(k).ok());
            for w in env.warnings() {
                eprintln!("⚠ {w}");
            }
            env
        })
    }

    /// Builds a snapshot from a lookup function (the process environment or a test map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Env {
        let non_blank = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        Env {
            gateway: non_blank("OPENSHELL_GATEWAY").map(|v| v.trim().to_string()),
            gateway_endpoint: non_blank("OPENSHELL_GATEWAY_ENDPOINT").map(|v| v.trim().to_string()),
            system_gateway_dir: get("OPENSHELL_SYSTEM_GATEWAY_DIR"),
            xdg_config_home: non_blank("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            home: non_blank("HOME").map(PathBuf::from),
            no_browser: get("OPENSHELL_NO_BROWSER").is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            }),
            no_agent: get("OPENSHELL_NO_AGENT").is_some_and(|v| {
                matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
            }),
            xdg_runtime_dir: non_blank("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            login_timeout: non_blank("OPENSHELL_LOGIN_TIMEOUT_SECS")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_LOGIN_TIMEOUT),
            hedge: non_blank("OPENSHELL_HEDGE"),
            congestion: non_blank("OPENSHELL_CONGESTION"),
        }
    }

    /// Root of the read-only system layer: a non-empty absolute `OPENSHELL_SYSTEM_GATEWAY_DIR`,
    /// else `/etc/openshell`.
    pub fn system_dir(&self) -> PathBuf {
        match &self.system_gateway_dir {
            Some(v) if Path::new(v).is_absolute() => PathBuf::from(v),
            _ => PathBuf::from(DEFAULT_SYSTEM_DIR),
        }
    }

    /// Root of the per-user layer: `$XDG_CONFIG_HOME/openshell`, else
    /// `$HOME/.config/openshell`; `None` when neither is set.
    pub fn user_dir(&self) -> Option<PathBuf> {
        let base = match (&self.xdg_config_home, &self.home) {
            (Some(xdg), _) => xdg.clone(),
            (None, Some(home)) => home.join(".config"),
            (None, None) => return None,
        };
        Some(base.join("openshell"))
    }

    /// Values that were set but ignored, worded for the user.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = &self.system_gateway_dir
            && !Path::new(v).is_absolute()
        {
            let what = if v.is_empty() {
                "is empty".to_string()
            } else {
                format!("is not an absolute path ('{v}')")
            };
            out.push(format!(
                "OPENSHELL_SYSTEM_GATEWAY_DIR {what}; using {DEFAULT_SYSTEM_DIR}"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Env {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn blank_gateway_is_unset() {
        assert_eq!(env(&[("OPENSHELL_GATEWAY", "  ")]).gateway, None);
        assert_eq!(
            env(&[("OPENSHELL_GATEWAY", " prod ")]).gateway.as_deref(),
            Some("prod")
        );
    }

    #[test]
    fn system_dir_must_be_absolute() {
        let e = env(&[("OPENSHELL_SYSTEM_GATEWAY_DIR", "rel/dir")]);
        assert_eq!(e.system_dir(), PathBuf::from(DEFAULT_SYSTEM_DIR));
        assert_eq!(e.warnings().len(), 1);
        let e = env(&[("OPENSHELL_SYSTEM_GATEWAY_DIR", "")]);
        assert_eq!(e.system_dir(), PathBuf::from(DEFAULT_SYSTEM_DIR));
        assert!(e.warnings()[0].contains("empty"));
        let e = env(&[("OPENSHELL_SYSTEM_GATEWAY_DIR", "/opt/os")]);
        assert_eq!(e.system_dir(), PathBuf::from("/opt/os"));
        assert!(e.warnings().is_empty());
    }

    #[test]
    fn user_dir_prefers_absolute_xdg() {
        let e = env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")]);
        assert_eq!(e.user_dir().unwrap(), PathBuf::from("/x/openshell"));
        let e = env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "relative")]);
        assert_eq!(e.user_dir().unwrap(), PathBuf::from("/h/.config/openshell"));
        assert_eq!(env(&[]).user_dir(), None);
    }

    #[test]
    fn no_browser_and_timeout() {
        let e = env(&[
            ("OPENSHELL_NO_BROWSER", "true"),
            ("OPENSHELL_LOGIN_TIMEOUT_SECS", "7"),
        ]);
        assert!(e.no_browser);
        assert_eq!(e.login_timeout, Duration::from_secs(7));
        assert_eq!(env(&[]).login_timeout, DEFAULT_LOGIN_TIMEOUT);
        assert!(!env(&[("OPENSHELL_NO_BROWSER", "0")]).no_browser);
    }

    #[test]
    fn no_agent_and_runtime_dir() {
        assert!(env(&[("OPENSHELL_NO_AGENT", "1")]).no_agent);
        assert!(!env(&[("OPENSHELL_NO_AGENT", "0")]).no_agent);
        assert!(!env(&[]).no_agent);
        let e = env(&[("XDG_RUNTIME_DIR", "/run/user/1000")]);
        assert_eq!(e.xdg_runtime_dir, Some(PathBuf::from("/run/user/1000")));
        assert_eq!(env(&[("XDG_RUNTIME_DIR", "rel")]).xdg_runtime_dir, None);
    }
}
