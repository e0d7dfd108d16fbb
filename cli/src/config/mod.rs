//! The on-disk gateway registry under `$XDG_CONFIG_HOME/openshell` (default
//! `~/.config/openshell`) plus the read-only system layer (`/etc/openshell` or
//! `OPENSHELL_SYSTEM_GATEWAY_DIR`), and the resolution of which gateway a command talks to.
//!
//! Owns: file layout and formats (`registry`, `metadata`), names (`name`), endpoint URLs
//! (`endpoint`), resolution (`resolve`), mTLS bundle import (`bundle`), the browser login
//! that fetches an edge token (`login`), and the CLI's `OPENSHELL_*`, `XDG_CONFIG_HOME` and
//! `HOME` variables (`env`, the one place they are read).
//! Does not own: connecting to a gateway (the transport takes a [`ResolvedGateway`]).

pub mod bundle;
pub mod endpoint;
pub mod env;
pub mod login;
pub mod metadata;
pub mod name;
pub mod registry;
pub mod resolve;

use std::path::PathBuf;

use crate::CliError;
use crate::args::GlobalArgs;

pub use endpoint::Endpoint;
pub use env::Env;
pub use name::GatewayName;
pub use registry::{Layout, Registration};

/// How the CLI authenticates to a gateway (`auth_mode` in metadata.json, `--auth`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Client certificate from `gateways/<name>/mtls/{ca.crt,tls.crt,tls.key}`.
    Mtls,
    /// Bearer token from `gateways/<name>/edge_token`, through an authenticating proxy (TCP).
    // Upstream's `cloudflare_jwt` reads as this.
    #[serde(alias = "cloudflare_jwt")]
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

impl AuthMode {
    /// The name stored in metadata.json and shown by `gateway list`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Mtls => "mtls",
            AuthMode::Edge => "edge",
            AuthMode::Plaintext => "plaintext",
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::User => "user",
            Source::System => "system",
            Source::Endpoint => "endpoint",
        }
    }
}

/// Resolves the gateway a command talks to from the global flags and the process
/// environment: `--gateway-endpoint` (or `OPENSHELL_GATEWAY_ENDPOINT`), then `-g`, then
/// `OPENSHELL_GATEWAY`, then the user's and the system's `active_gateway` (see
/// [`resolve::resolve_in`]). Nothing selected is upstream's "No active gateway." error.
pub fn resolve(global: &GlobalArgs) -> Result<ResolvedGateway, CliError> {
    resolve_optional(global)?.ok_or_else(resolve::no_active_gateway)
}

/// As [`resolve`], but `Ok(None)` when nothing selects a gateway (for `status`, which
/// reports "No gateway configured." and exits 0). Unknown names and corrupt metadata are
/// still errors.
pub fn resolve_optional(global: &GlobalArgs) -> Result<Option<ResolvedGateway>, CliError> {
    let env = Env::process();
    resolve::resolve_optional_in(
        &Layout::from_env(env),
        env,
        global.gateway.as_deref(),
        global
            .gateway_endpoint
            .as_deref()
            .or(env.gateway_endpoint.as_deref()),
    )
}

/// Records which transport path (`quic` or `tcp`) last reached a user-registered gateway in
/// its metadata.json (shown by `gateway list`). System and endpoint-only gateways have no
/// per-user metadata, so nothing is written for them.
pub fn record_transport_used(gateway: &ResolvedGateway, transport: &str) -> Result<(), CliError> {
    if gateway.source != Source::User {
        return Ok(());
    }
    let path = gateway.user_dir.join(registry::METADATA_FILE);
    let (mut meta, _) = metadata::GatewayMetadata::load(&path)
        .map_err(|e| CliError::msg(format!("cannot update {}: {e}", path.display())))?;
    if meta.transport_last_used.as_deref() == Some(transport) {
        return Ok(());
    }
    meta.transport_last_used = Some(transport.to_string());
    openshell_pki::fs::write_public(&path, &meta.to_json())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_memory_is_recorded_for_user_entries_only() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(Some(tmp.path().join("u")), tmp.path().join("s"));
        let name = GatewayName::parse("gw").unwrap();
        let ep = Endpoint::parse_input("http://127.0.0.1:1").unwrap();
        let meta = metadata::GatewayMetadata::new("gw", &ep, false, AuthMode::Plaintext);
        layout.write_metadata(&name, &meta).unwrap();
        let reg = layout.lookup(&name).unwrap().unwrap();
        let mut resolved = resolve::from_registration(&layout, &reg).unwrap();
        record_transport_used(&resolved, "tcp").unwrap();
        let again = layout.lookup(&name).unwrap().unwrap();
        assert_eq!(again.metadata.transport_last_used.as_deref(), Some("tcp"));

        resolved.source = Source::Endpoint;
        record_transport_used(&resolved, "quic").unwrap();
        let again = layout.lookup(&name).unwrap().unwrap();
        assert_eq!(again.metadata.transport_last_used.as_deref(), Some("tcp"));
    }
}
