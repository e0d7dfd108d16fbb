//! The Podman backend: Podman's API service (`podman system service`), which speaks the
//! Docker-compatible API the shared engine uses.

use std::path::{Path, PathBuf};

use openshell_drivers::GatewayId;

use crate::engine::{ContainerSettings, Endpoint, Engine, Flavor, Ulimit, forward_to_engine};

/// The rootful service's socket.
pub const PODMAN_SYSTEM_SOCKET: &str = "/run/podman/podman.sock";

/// How to reach Podman and how to shape containers.
#[derive(Debug, Clone, PartialEq)]
pub struct PodmanConfig {
    /// The owning gateway, written to every container's labels. No default.
    pub gateway: GatewayId,
    /// The API service's socket. Default: `$XDG_RUNTIME_DIR/podman/podman.sock` (rootless)
    /// if that socket exists, else `/run/podman/podman.sock` (rootful) if it exists, else
    /// the first of the two that applies.
    pub endpoint: Endpoint,
    /// Container naming, network, stop grace and request timeout; see each field.
    pub containers: ContainerSettings,
    /// Limits set on every container. Default `nofile` and `nproc` at 16384 (soft and
    /// hard). Podman's own default (1048576) is above the hard limits where the service
    /// lacks CAP_SYS_RESOURCE (as in some sandboxes and CI machines), and runc then fails
    /// every start with "error setting rlimits"; these values fit under common hard limits
    /// whatever containers.conf says. Raising them can break starts on such hosts; empty
    /// leaves it to containers.conf.
    pub ulimits: Vec<Ulimit>,
}

/// Picks the default socket: the first candidate that exists, else the first candidate.
fn default_socket(xdg_runtime_dir: Option<&str>, exists: impl Fn(&Path) -> bool) -> PathBuf {
    let candidates: Vec<PathBuf> = xdg_runtime_dir
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join("podman/podman.sock"))
        .into_iter()
        .chain([PathBuf::from(PODMAN_SYSTEM_SOCKET)])
        .collect();
    candidates
        .iter()
        .find(|p| exists(p))
        .unwrap_or(&candidates[0])
        .clone()
}

impl PodmanConfig {
    /// The defaults for `gateway`. This is the one place `XDG_RUNTIME_DIR` is read.
    pub fn new(gateway: GatewayId) -> Self {
        let xdg = std::env::var("XDG_RUNTIME_DIR").ok();
        let socket = default_socket(xdg.as_deref(), |p| p.exists());
        Self {
            gateway,
            endpoint: Endpoint::Unix(socket),
            containers: ContainerSettings::default(),
            ulimits: ["nofile", "nproc"]
                .into_iter()
                .map(|name| Ulimit {
                    name: name.into(),
                    soft: 16384,
                    hard: 16384,
                })
                .collect(),
        }
    }

    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }
}

/// Runs sandboxes as Podman containers through the Podman API service. Construction does no
/// I/O: a service that is down shows up as
/// [`DriverError::RuntimeUnavailable`](openshell_drivers::DriverError::RuntimeUnavailable)
/// on calls and as unhealthy in `info`.
pub struct PodmanDriver {
    engine: Engine,
}

impl PodmanDriver {
    pub fn new(config: PodmanConfig) -> Self {
        let socket = match &config.endpoint {
            Endpoint::Unix(path) => path.display().to_string(),
            Endpoint::Tcp(addr) => format!("tcp://{addr}"),
        };
        let flavor = Flavor {
            name: "podman",
            down_hint: format!(
                "start the Podman API service (`podman system service --time=0 unix://{socket} &`), \
                 or point the gateway's podman endpoint at one that runs"
            ),
            ulimits: config.ulimits,
            // Podman adds host.containers.internal itself.
            extra_hosts: Vec::new(),
        };
        Self {
            engine: Engine::new(flavor, config.gateway, config.endpoint, config.containers),
        }
    }
}

forward_to_engine!(PodmanDriver);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_socket_prefers_one_that_exists() {
        let xdg = Some("/run/user/1000");
        let rootless = PathBuf::from("/run/user/1000/podman/podman.sock");
        assert_eq!(default_socket(xdg, |_| false), rootless);
        assert_eq!(default_socket(xdg, |p| p == rootless), rootless);
        assert_eq!(
            default_socket(xdg, |p| p == Path::new(PODMAN_SYSTEM_SOCKET)),
            PathBuf::from(PODMAN_SYSTEM_SOCKET)
        );
        assert_eq!(
            default_socket(None, |_| false),
            PathBuf::from(PODMAN_SYSTEM_SOCKET)
        );
    }
}
