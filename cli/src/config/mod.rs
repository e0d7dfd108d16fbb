//! The on-disk gateway registry under `$XDG_CONFIG_HOME/openshell` (default
//! `~/.config/openshell`) plus the read-only system layer (`/etc/openshell` or
//! `OPENSHELL_SYSTEM_GATEWAY_DIR`), and the resolution of which gateway a command talks to.

use std::path::PathBuf;

/// How the CLI authenticates to a gateway (`auth_mode` in metadata.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Client certificate from `gateways/<name>/mtls/{ca.crt,tls.crt,tls.key}`.
    Mtls,
    /// Bearer token from `gateways/<name>/edge_token`, through an authenticating proxy (TCP).
    Edge,
    /// `http://` loopback or port-forward: no TLS, no credentials.
    Plaintext,
}

/// Where a registration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    User,
    System,
    /// `--gateway-endpoint URL` with no matching registration.
    Endpoint,
}

/// Everything the transport needs to reach one gateway: the result of resolution.
#[derive(Debug, Clone)]
pub struct ResolvedGateway {
    /// Registered name (or the raw endpoint when none matched).
    pub name: String,
    /// `https://host:port` or `http://host:port`, no trailing slash.
    pub endpoint: String,
    pub auth: AuthMode,
    pub source: Source,
    /// `gateways/<name>/mtls` in the user layer (may not exist).
    pub mtls_dir: PathBuf,
    /// `gateways/<name>/edge_token` in the user layer (may not exist).
    pub edge_token_path: PathBuf,
    /// Per-user directory for this gateway (`gateways/<name>`), where the transport keeps
    /// what it learned (e.g. which path worked last: `transport.json`).
    pub user_dir: PathBuf,
}
