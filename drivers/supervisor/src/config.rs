//! The supervisor's settings, all from `OPENSHELL_*` environment variables (read here and
//! nowhere else) that the compute driver sets when it creates the sandbox, and its
//! credential, from files only root can read (see `openshell_drivers::credentials`).
//!
//! | variable | meaning |
//! |---|---|
//! | `OPENSHELL_ENDPOINT` | the gateway, `https://HOST:PORT` (required) |
//! | `OPENSHELL_SANDBOX_ID` | this sandbox's id (required) |
//! | `OPENSHELL_CREDENTIAL_DIR` | where the driver put this sandbox's credential (default `/run/openshell/credentials`): `ca.pem`, `tls.crt`, `tls.key` (required) and `ssh_host_key` (default: an ephemeral key, so clients that pinned the key refuse it after a restart) |
//! | `OPENSHELL_SERVER_NAME` | TLS name of the gateway (default: the endpoint's host) |
//! | `OPENSHELL_TRANSPORT` | `auto` (default: QUIC, TCP when UDP gets no answer), `quic` or `tcp` (the MicroVM driver sets `tcp`: its guest can only reach the gateway over TCP) |
//! | `OPENSHELL_RUN_AS` | the user the workload runs as (default `sandbox`, see `workload`) |
//!
//! No secret is ever taken from the environment: it would show in the runtime's view of the
//! sandbox (`docker inspect`, the Pod spec) and in `/proc/1/environ`.

use openshell_transport::{ClientConfig, Endpoint, PathHint};

use std::path::{Path, PathBuf};

use openshell_drivers::credentials::{self, CREDENTIAL_DIR};

use crate::renew::Credential;
use crate::ssh::{SshError, SshServer};
use crate::workload::{Workload, WorkloadError};

/// A missing or unusable setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{0} is not set: the compute driver must pass it to the sandbox")]
    Missing(&'static str),
    #[error(
        "cannot read the sandbox credential {path}: {source}; the compute driver puts it in OPENSHELL_CREDENTIAL_DIR (default {CREDENTIAL_DIR})"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{var}: {detail}")]
    Invalid { var: &'static str, detail: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
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
    /// Where the credential files are (renewals are written back there).
    pub credential_dir: PathBuf,
    /// The credential `client` was built with.
    pub credential: Credential,
    /// Who the main process and the sessions run as.
    pub workload: Workload,
}

fn var(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A credential file; `None` when it does not exist and `optional`.
fn read_file(dir: &Path, name: &str, optional: bool) -> Result<Option<Vec<u8>>, ConfigError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
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
        let credential_dir = var("OPENSHELL_CREDENTIAL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(CREDENTIAL_DIR));
        let required =
            |name| read_file(&credential_dir, name, false).map(|b| b.unwrap_or_default());
        let ca = required(credentials::CA_FILE)?;
        let cert = required(credentials::CERT_FILE)?;
        let key = required(credentials::KEY_FILE)?;
        let invalid = |e: String| ConfigError::Invalid {
            var: "OPENSHELL_CREDENTIAL_DIR",
            detail: format!("{}: {e}", credential_dir.display()),
        };
        let credential = Credential::from_pem(ca, cert, key).map_err(|e| invalid(e.to_string()))?;
        let material = credential.material().map_err(|e| invalid(e.to_string()))?;
        let host_key = read_file(&credential_dir, credentials::SSH_HOST_KEY_FILE, true)?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let mut client = ClientConfig::new(endpoint, Some(material));
        client.server_name = var("OPENSHELL_SERVER_NAME");
        client.hint = match var("OPENSHELL_TRANSPORT").as_deref() {
            None | Some("auto") => PathHint::Auto,
            Some("quic") => PathHint::QuicOnly,
            Some("tcp") => PathHint::TcpOnly,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "OPENSHELL_TRANSPORT",
                    detail: format!("`{other}` is not one of auto, quic, tcp"),
                });
            }
        };
        let workload = Workload::from_env()?;
        Ok(Config {
            sandbox_id,
            client,
            ssh: SshServer::new(host_key.as_deref())?.run_as(workload.clone()),
            credential_dir,
            credential,
            workload,
        })
    }
}
