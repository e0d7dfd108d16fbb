//! The Docker backend: the Docker Engine API on the daemon's socket.

use openshell_drivers::{DriverError, GatewayId};

use crate::engine::{ContainerSettings, Endpoint, Engine, Flavor, forward_to_engine};

/// Docker's socket when `DOCKER_HOST` is not set.
pub const DOCKER_DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How to reach Docker and how to shape containers.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// The owning gateway, written to every container's labels. No default.
    pub gateway: GatewayId,
    /// The daemon's API. Default: `DOCKER_HOST` when set, else
    /// `unix:///var/run/docker.sock` ([`DOCKER_DEFAULT_SOCKET`]).
    pub endpoint: Endpoint,
    /// Container naming, network, stop grace and request timeout; see each field.
    pub containers: ContainerSettings,
}

impl DockerConfig {
    /// The defaults for `gateway`. This is the one place `DOCKER_HOST` is read.
    pub fn new(gateway: GatewayId) -> Result<Self, DriverError> {
        let endpoint = match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => Endpoint::parse(&host)?,
            _ => Endpoint::Unix(DOCKER_DEFAULT_SOCKET.into()),
        };
        Ok(Self {
            gateway,
            endpoint,
            containers: ContainerSettings::default(),
        })
    }

    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = endpoint;
        self
    }
}

/// Runs sandboxes as Docker containers. Construction does no I/O: a daemon that is down
/// shows up as [`DriverError::RuntimeUnavailable`] on calls and as unhealthy in `info`.
pub struct DockerDriver {
    engine: Engine,
}

impl DockerDriver {
    pub fn new(config: DockerConfig) -> Self {
        let flavor = Flavor {
            name: "docker",
            down_hint: "start the Docker daemon (`dockerd &` or `systemctl start docker`), or \
                        point DOCKER_HOST at one that runs"
                .into(),
            ulimits: Vec::new(),
            extra_hosts: vec!["host.docker.internal:host-gateway".into()],
        };
        Self {
            engine: Engine::new(flavor, config.gateway, config.endpoint, config.containers),
        }
    }
}

forward_to_engine!(DockerDriver);
