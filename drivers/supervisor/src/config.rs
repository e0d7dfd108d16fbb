//! The supervisor's settings, all from `OPENSHELL_*` environment variables (read here and
//! nowhere else) that the compute driver sets when it creates the sandbox.
//!
//! | variable | meaning |
//! |---|---|
//! | `OPENSHELL_ENDPOINT` | the gateway, `https://HOST:PORT` (required) |
//! | `OPENSHELL_SANDBOX_ID` | this sandbox's id (required) |
//! | `OPENSHELL_TLS_CA` / `_CERT` / `_KEY` | PEM file paths of the gateway CA and this sandbox's credential |
//! | `OPENSHELL_TLS_CA_PEM` / `_CERT_PEM` / `_KEY_PEM` | the same as PEM text (used when no files are mounted) |
//! | `OPENSHELL_SERVER_NAME` | TLS name of the gateway (default: the endpoint's host) |
//! | `OPENSHELL_SSH_HOST_KEY_PEM` | this sandbox's SSH host key, an OpenSSH private key (default: an ephemeral key, so clients that pinned the key refuse it after a restart) |

use openshell_transport::tls::ClientMaterial;
use openshell_transport::{ClientConfig, Endpoint};

use crate::ssh::{SshError, SshServer};

/// A missing or unusable setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{0} is not set: the compute driver must pass it to the sandbox")]
    Missing(&'static str),
    #[error("cannot read {var}={path}: {source}")]
    Read {
        var: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{var}: {detail}")]
    Invalid { var: &'static str, detail: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// The supervisor's own variables (credentials, keys, the endpoint), removed from the
/// environment of every process it starts (the main process, SSH sessions) so they do not
/// show in `env` or leak to child processes. `OPENSHELL_SANDBOX_ID` stays: it is not secret
/// and programs may use it.
pub fn hidden_from_children() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| hides(&k.to_string_lossy()))
        .collect()
}

pub(crate) fn hides(name: &str) -> bool {
    name.starts_with("OPENSHELL_") && name != "OPENSHELL_SANDBOX_ID"
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub sandbox_id: String,
    pub client: ClientConfig,
    /// The SSH server relays are handed to, with this sandbox's host key (built here, once,
    /// so an ephemeral key stays the same across reconnects).
    pub ssh: SshServer,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A PEM given as text (`<NAME>_PEM`) or as a file path (`<NAME>`).
fn pem(path_var: &'static str, text_var: &'static str) -> Result<Vec<u8>, ConfigError> {
    if let Some(text) = var(text_var) {
        return Ok(text.into_bytes());
    }
    let path = var(path_var).ok_or(ConfigError::Missing(path_var))?;
    std::fs::read(&path).map_err(|source| ConfigError::Read {
        var: path_var,
        path,
        source,
    })
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let endpoint =
            var("OPENSHELL_ENDPOINT").ok_or(ConfigError::Missing("OPENSHELL_ENDPOINT"))?;
        let endpoint = Endpoint::parse(&endpoint).map_err(|e| ConfigError::Invalid {
            var: "OPENSHELL_ENDPOINT",
            detail: e.to_string(),
        })?;
        let sandbox_id =
            var("OPENSHELL_SANDBOX_ID").ok_or(ConfigError::Missing("OPENSHELL_SANDBOX_ID"))?;
        let ca = pem("OPENSHELL_TLS_CA", "OPENSHELL_TLS_CA_PEM")?;
        let cert = pem("OPENSHELL_TLS_CERT", "OPENSHELL_TLS_CERT_PEM")?;
        let key = pem("OPENSHELL_TLS_KEY", "OPENSHELL_TLS_KEY_PEM")?;
        let material = ClientMaterial::from_pem(&ca, Some((&cert, &key))).map_err(|e| {
            ConfigError::Invalid {
                var: "OPENSHELL_TLS_*",
                detail: e.to_string(),
            }
        })?;
        let mut client = ClientConfig::new(endpoint, Some(material));
        client.server_name = var("OPENSHELL_SERVER_NAME");
        Ok(Config {
            sandbox_id,
            client,
            ssh: SshServer::new(var("OPENSHELL_SSH_HOST_KEY_PEM").as_deref())?,
        })
    }
}
