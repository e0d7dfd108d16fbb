//! The Docker Engine API driver both backends share. Docker and Podman's API service agree
//! on everything the driver uses; what differs (name, default endpoint, the hint for a
//! runtime that is down, ulimits) comes in as a [`Flavor`].

use openshell_drivers::errtext::{chain, lowercase_first, root_cause};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EventMessage, HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, LogsOptions, RemoveContainerOptions,
    StartContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures::StreamExt;
use openshell_drivers::{
    Credentials, DriverError, DriverHealth, DriverInfo, EventStream, GatewayId, LABEL_GATEWAY,
    LABEL_IMAGE, LABEL_MANAGED, LABEL_PREFIX, LABEL_SANDBOX_ID, LABEL_SANDBOX_NAME, LineSplitter,
    LogOptions, LogStream, SandboxId, SandboxName, SandboxSpec, WorkloadEvent, WorkloadState,
    WorkloadStatus,
};
use tokio::sync::Mutex;

use crate::isolation;
use crate::raw::{self, RawError};

/// The smallest memory limit a container can have (Docker's documented minimum).
const MIN_MEMORY: u64 = 6 << 20;

/// Where a runtime's API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket (`unix:///var/run/docker.sock`).
    Unix(PathBuf),
    /// Plain HTTP over TCP (`tcp://127.0.0.1:2375`); unauthenticated, so local use only.
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///path`, `/path`, `tcp://host:port` or `http://host:port`.
    pub fn parse(s: &str) -> Result<Self, DriverError> {
        if let Some(path) = s.strip_prefix("unix://") {
            Ok(Self::Unix(PathBuf::from(path)))
        } else if s.starts_with('/') {
            Ok(Self::Unix(PathBuf::from(s)))
        } else if let Some(addr) = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"))
        {
            Ok(Self::Tcp(addr.to_string()))
        } else {
            Err(DriverError::InvalidSpec(format!(
                "runtime endpoint {s:?} is not unix:///PATH, /PATH or tcp://HOST:PORT"
            )))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A resource limit set on every container (`ulimit -n`, `ulimit -u`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    /// `nofile`, `nproc`, ...
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Settings both backends share. Every field has a default ([`Default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSettings {
    /// Container name = this prefix + the sandbox name. Default `openshell-`. Workloads are
    /// found by their labels, not their names, so changing it loses nothing, but names taken
    /// under the old prefix stay taken until those sandboxes are deleted.
    pub name_prefix: String,
    /// Network to attach containers to. Default `None`: a network of its own per sandbox
    /// (see [`crate::isolation`]), so sandboxes cannot reach each other. A named network is
    /// shared: sandboxes on it reach each other's ports.
    pub network: Option<String>,
    /// How long `stop` waits after SIGTERM before SIGKILL. Default 10 s, Docker's own. A
    /// shorter one makes stops faster and gives the sandbox less time to save its work.
    pub stop_grace: Duration,
    /// Limit for one API request (not for streams). Default 60 s; it must stay above
    /// `stop_grace`, since a stop request lasts up to that long.
    pub request_timeout: Duration,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            name_prefix: "openshell-".into(),
            network: None,
            stop_grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// What distinguishes one Docker-API runtime from another.
#[derive(Debug, Clone)]
pub(crate) struct Flavor {
    /// `docker` or `podman`: in messages and [`DriverInfo::name`].
    pub name: &'static str,
    /// What to do when the runtime does not answer at the endpoint.
    pub down_hint: String,
    /// Set on every container; empty = the runtime's defaults.
    pub ulimits: Vec<Ulimit>,
    /// `/etc/hosts` entries added to every container (`NAME:host-gateway` points NAME at the
    /// host), so the supervisor reaches a gateway on the host by a stable name that the
    /// gateway's certificate carries.
    pub extra_hosts: Vec<String>,
}

/// The shared driver; [`crate::DockerDriver`] and [`crate::PodmanDriver`] wrap it.
pub(crate) struct Engine {
    flavor: Flavor,
    gateway: GatewayId,
    endpoint: Endpoint,
    settings: ContainerSettings,
    /// Built on first use, so a gateway can start while its runtime is down. The client
    /// opens a connection per request, so it keeps working across runtime restarts.
    client: Mutex<Option<Docker>>,
}

/// Whole seconds of a duration for the API's integer fields, at least 1 for non-zero.
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn status_code(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether labels mark a workload of `gateway` (and of sandbox `id`).
fn owned_by(labels: &HashMap<String, String>, gateway: &GatewayId, id: Option<&SandboxId>) -> bool {
    let is = |k: &str, v: &str| labels.get(k).map(String::as_str) == Some(v);
    is(LABEL_MANAGED, "true")
        && is(LABEL_GATEWAY, gateway.as_str())
        && id.is_none_or(|id| is(LABEL_SANDBOX_ID, id.as_str()))
}

fn is_name_conflict(e: &BollardError) -> bool {
    status_code(e) == Some(409) || server_message(e).contains("already in use")
}

fn server_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => chain(other),
    }
}

impl Engine {
    pub(crate) fn new(
        flavor: Flavor,
        gateway: GatewayId,
        endpoint: Endpoint,
        settings: ContainerSettings,
    ) -> Self {
        Self {
            flavor,
            gateway,
            endpoint,
            settings,
            client: Mutex::new(None),
        }
    }

    fn unavailable(&self, reason: String) -> DriverError {
        DriverError::RuntimeUnavailable {
            runtime: self.flavor.name.into(),
            endpoint: self.endpoint.to_string(),
            reason,
            hint: self.flavor.down_hint.clone(),
        }
    }

    /// Maps an API error: transport failures mean the runtime is down, anything the
    /// runtime answered is a backend error for `op`.
    fn error(&self, op: &str, e: BollardError) -> DriverError {
        match &e {
            BollardError::SocketNotFoundError(path) => {
                self.unavailable(format!("no socket at {path}"))
            }
            BollardError::RequestTimeoutError => self.unavailable(format!(
                "no answer within {} s",
                secs(self.settings.request_timeout)
            )),
            BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. } => self.unavailable(root_cause(&e)),
            _ => DriverError::Backend {
                runtime: self.flavor.name.into(),
                op: op.to_string(),
                message: server_message(&e),
            },
        }
    }

    async fn client(&self) -> Result<Docker, DriverError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let timeout = secs(self.settings.request_timeout);
        let client = match &self.endpoint {
            Endpoint::Unix(path) => {
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, timeout, bollard::API_DEFAULT_VERSION)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(addr, timeout, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| self.error("connect", e))?;
        // Talk the highest API version both sides know (Docker 20.10 and Podman 4 speak 1.41).
        let client = client
            .negotiate_version()
            .await
            .map_err(|e| self.error("negotiate the API version", e))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    fn container_name(&self, name: &SandboxName) -> String {
        format!("{}{}", self.settings.name_prefix, name)
    }

    /// `label=` filters that select this gateway's workloads (and one sandbox's, with `id`).
    fn filters(&self, id: Option<&SandboxId>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_GATEWAY}={}", self.gateway),
        ];
        if let Some(id) = id {
            labels.push(format!("{LABEL_SANDBOX_ID}={id}"));
        }
        HashMap::from([("label".to_string(), labels)])
    }

    /// Ids of this gateway's containers (of sandbox `id` only, with `id`).
    async fn container_ids(
        &self,
        docker: &Docker,
        id: Option<&SandboxId>,
    ) -> Result<Vec<String>, DriverError> {
        let version = docker.client_version().to_string();
        let found = raw::list_containers(
            &self.endpoint,
            &version,
            &self.filters(id),
            self.settings.request_timeout,
        )
        .await
        .map_err(|e| self.raw_error("list containers", e))?;
        Ok(found
            .into_iter()
            .filter(|c| self.owns(c.labels.as_ref(), id))
            .map(|c| c.id)
            .collect())
    }

    /// The container id of the sandbox's workload, if there is one.
    async fn find(&self, docker: &Docker, id: &SandboxId) -> Result<Option<String>, DriverError> {
        Ok(self
            .container_ids(docker, Some(id))
            .await?
            .into_iter()
            .next())
    }

    /// Whether labels mark a workload of this gateway (and of sandbox `id`). The runtime
    /// filters too; this guards against runtimes whose filters are looser (Podman's event
    /// filters OR values of one key in some versions).
    fn owns(&self, labels: Option<&HashMap<String, String>>, id: Option<&SandboxId>) -> bool {
        labels.is_some_and(|labels| owned_by(labels, &self.gateway, id))
    }

    async fn find_or_not_found(
        &self,
        docker: &Docker,
        id: &SandboxId,
    ) -> Result<String, DriverError> {
        self.find(docker, id)
            .await?
            .ok_or_else(|| DriverError::NotFound {
                runtime: self.flavor.name.into(),
                id: id.clone(),
            })
    }

    /// Maps a failed raw read: no answer means the runtime is down.
    fn raw_error(&self, op: &str, e: RawError) -> DriverError {
        match e {
            RawError::Transport(reason) => self.unavailable(reason),
            RawError::Answer { status, message } => DriverError::Backend {
                runtime: self.flavor.name.into(),
                op: op.to_string(),
                message: match status {
                    Some(code) => format!("{message} (HTTP {code})"),
                    None => message,
                },
            },
        }
    }

    async fn inspect_raw(
        &self,
        docker: &Docker,
        container: &str,
    ) -> Result<raw::Inspect, RawError> {
        let version = docker.client_version().to_string();
        raw::inspect_container(
            &self.endpoint,
            &version,
            container,
            self.settings.request_timeout,
        )
        .await
    }

    async fn inspect(
        &self,
        docker: &Docker,
        container: &str,
    ) -> Result<WorkloadStatus, DriverError> {
        let c = self
            .inspect_raw(docker, container)
            .await
            .map_err(|e| self.raw_error(&format!("inspect container {container}"), e))?;
        self.status_of(c)
    }

    /// Reads a status back from an inspected container.
    fn status_of(&self, c: raw::Inspect) -> Result<WorkloadStatus, DriverError> {
        let container = c.id.clone();
        let bad = |what: &str| DriverError::Backend {
            runtime: self.flavor.name.into(),
            op: format!("read container {container}"),
            message: format!(
                "{what}; remove the container by hand if it was not made by OpenShell"
            ),
        };
        let config = c.config;
        let all_labels = config.labels.unwrap_or_default();
        if !self.owns(Some(&all_labels), None) {
            return Err(bad("it does not carry this gateway's ownership labels"));
        }
        let mut labels: BTreeMap<String, String> = all_labels.into_iter().collect();
        let id = labels
            .get(LABEL_SANDBOX_ID)
            .ok_or_else(|| bad("it has no sandbox id label"))
            .and_then(|v| {
                SandboxId::new(v.as_str()).map_err(|_| bad("its sandbox id label is malformed"))
            })?;
        let name = labels
            .get(LABEL_SANDBOX_NAME)
            .ok_or_else(|| bad("it has no sandbox name label"))
            .and_then(|v| {
                SandboxName::new(v.as_str()).map_err(|_| bad("its sandbox name label is malformed"))
            })?;
        let requested_image = labels.get(LABEL_IMAGE).cloned();
        labels.retain(|k, _| !k.starts_with(LABEL_PREFIX));
        let host = c.host_config;
        let env = config
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect();
        let spec = SandboxSpec {
            image: requested_image.or(config.image).unwrap_or_default(),
            cpu: host.nano_cpus.filter(|n| *n > 0).map(|n| n as f64 / 1e9),
            memory: host
                .memory
                .filter(|m| *m > 0)
                .and_then(|m| u64::try_from(m).ok()),
            env,
            labels,
            command: config.cmd.unwrap_or_default(),
            credentials: Default::default(),
        };
        Ok(WorkloadStatus {
            id,
            name,
            state: state_of(&c.state),
            runtime_id: container,
            spec,
        })
    }

    fn labels(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_GATEWAY.into(), self.gateway.to_string());
        labels.insert(LABEL_SANDBOX_ID.into(), id.to_string());
        labels.insert(LABEL_SANDBOX_NAME.into(), name.to_string());
        labels.insert(LABEL_IMAGE.into(), spec.image.clone());
        labels
    }

    /// The network a sandbox's container joins: the one the operator named, or its own.
    fn network_of(&self, id: &SandboxId) -> String {
        self.settings
            .network
            .clone()
            .unwrap_or_else(|| isolation::network_name(&self.settings.name_prefix, id))
    }

    fn create_body(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<ContainerCreateBody, DriverError> {
        let labels = self.labels(id, name, spec);
        if let Some(m) = spec.memory
            && m < MIN_MEMORY
        {
            // Docker refuses these at create; Podman creates them and runc fails the start.
            return Err(DriverError::InvalidSpec(format!(
                "memory {m} bytes is below the {} MiB minimum of a {} container",
                MIN_MEMORY >> 20,
                self.flavor.name
            )));
        }
        let memory = spec
            .memory
            .map(|m| {
                i64::try_from(m)
                    .map_err(|_| DriverError::InvalidSpec(format!("memory {m} is too large")))
            })
            .transpose()?;
        let ulimits = (!self.flavor.ulimits.is_empty()).then(|| {
            self.flavor
                .ulimits
                .iter()
                .map(|u| ResourcesUlimits {
                    name: Some(u.name.clone()),
                    soft: Some(u.soft),
                    hard: Some(u.hard),
                })
                .collect()
        });
        Ok(ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            hostname: Some(name.to_string()),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(HostConfig {
                nano_cpus: spec.cpu.map(|c| (c * 1e9).round() as i64),
                memory,
                ulimits,
                network_mode: Some(self.network_of(id)),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(isolation::KEPT_CAPABILITIES.map(String::from).to_vec()),
                security_opt: Some(isolation::SECURITY_OPT.map(String::from).to_vec()),
                extra_hosts: (!self.flavor.extra_hosts.is_empty())
                    .then(|| self.flavor.extra_hosts.clone()),
                // The gateway decides restarts.
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub(crate) async fn info(&self) -> DriverInfo {
        let version = match self.client().await {
            Ok(docker) => docker
                .version()
                .await
                .map_err(|e| self.error("read the version", e)),
            Err(e) => Err(e),
        };
        let (version, health) = match version {
            Ok(v) => (
                Some(v.version.unwrap_or_else(|| "unknown".into())),
                DriverHealth::Healthy,
            ),
            Err(e) => (None, DriverHealth::Unhealthy(e.to_string())),
        };
        DriverInfo {
            name: self.flavor.name.into(),
            endpoint: self.endpoint.to_string(),
            version,
            health,
        }
    }

    pub(crate) async fn create(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<WorkloadStatus, DriverError> {
        spec.validate()?;
        let body = self.create_body(id, name, spec)?;
        let docker = self.client().await?;
        if self.find(&docker, id).await?.is_some() {
            return Err(DriverError::AlreadyExists {
                what: format!("a workload for sandbox {id}"),
            });
        }
        let image_missing = || DriverError::ImageNotFound {
            runtime: self.flavor.name.into(),
            image: spec.image.clone(),
        };
        // Checked first so a missing image is reported as such, and never pulled.
        match docker.inspect_image(&spec.image).await {
            Ok(_) => {}
            Err(e) if status_code(&e) == Some(404) => return Err(image_missing()),
            Err(e) => return Err(self.error(&format!("inspect image {}", spec.image), e)),
        }
        let network = match &self.settings.network {
            Some(_) => None,
            None => Some(
                self.create_network(&docker, id, &self.labels(id, name, spec))
                    .await?,
            ),
        };
        let result = self.create_container(&docker, name, spec, body).await;
        let result = match result {
            Ok(container) => match self.deliver(&docker, &container, spec).await {
                Ok(()) => Ok(container),
                Err(e) => {
                    if let Err(cleanup) = self.remove(&docker, &container).await {
                        tracing::warn!(%container, error = %cleanup, "could not remove a container that failed to start");
                    }
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        let container = match result {
            Ok(c) => c,
            Err(e) => {
                if let Some(network) = network {
                    self.remove_network(&docker, &network).await;
                }
                return Err(e);
            }
        };
        self.inspect(&docker, &container).await
    }

    async fn create_container(
        &self,
        docker: &Docker,
        name: &SandboxName,
        spec: &SandboxSpec,
        body: ContainerCreateBody,
    ) -> Result<String, DriverError> {
        let image_missing = || DriverError::ImageNotFound {
            runtime: self.flavor.name.into(),
            image: spec.image.clone(),
        };
        let cname = self.container_name(name);
        let created = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(cname.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| match status_code(&e) {
                // Podman answers a taken name with a 500 saying so.
                Some(409) | Some(500) if is_name_conflict(&e) => DriverError::AlreadyExists {
                    what: format!("a container named `{cname}`"),
                },
                Some(404) => image_missing(),
                Some(400) => DriverError::InvalidSpec(lowercase_first(&server_message(&e))),
                _ => self.error(&format!("create container {cname}"), e),
            })?;
        Ok(created.id)
    }

    /// Puts the credential into the created container, then starts it.
    async fn deliver(
        &self,
        docker: &Docker,
        container: &str,
        spec: &SandboxSpec,
    ) -> Result<(), DriverError> {
        self.put_credentials(docker, container, &spec.credentials)
            .await?;
        docker
            .start_container(container, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.error(&format!("start container {container}"), e))
    }

    /// Writes `credentials` into the container's credential directory (running or not).
    async fn put_credentials(
        &self,
        docker: &Docker,
        container: &str,
        credentials: &Credentials,
    ) -> Result<(), DriverError> {
        if credentials.is_empty() {
            return Ok(());
        }
        let tar = isolation::credential_tar(credentials).map_err(|e| DriverError::Backend {
            runtime: self.flavor.name.into(),
            op: "build the credential archive".into(),
            message: e.to_string(),
        })?;
        docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: "/".into(),
                    ..Default::default()
                }),
                bollard::body_full(tar.into()),
            )
            .await
            .map_err(|e| self.error(&format!("put the credential into container {container}"), e))
    }

    pub(crate) async fn refresh_credentials(
        &self,
        id: &SandboxId,
        credentials: &Credentials,
    ) -> Result<(), DriverError> {
        let docker = self.client().await?;
        let container = self.find_or_not_found(&docker, id).await?;
        self.put_credentials(&docker, &container, credentials).await
    }

    /// Creates the sandbox's own network on a free /28 of the pool.
    async fn create_network(
        &self,
        docker: &Docker,
        id: &SandboxId,
        labels: &HashMap<String, String>,
    ) -> Result<String, DriverError> {
        let name = isolation::network_name(&self.settings.name_prefix, id);
        let mut last = String::new();
        for attempt in 0..16 {
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                labels: Some(isolation::network_labels(labels)),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(isolation::candidate_subnet(id, attempt)),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => return Ok(name),
                Err(e) if isolation::is_subnet_taken(&server_message(&e)) => {
                    last = server_message(&e);
                }
                Err(e) => return Err(self.error(&format!("create network {name}"), e)),
            }
        }
        Err(DriverError::Backend {
            runtime: self.flavor.name.into(),
            op: format!("create network {name}"),
            message: format!(
                "16 subnets of the sandbox pool were tried and all are taken ({last}); delete unused networks (`{} network prune`)",
                self.flavor.name
            ),
        })
    }

    /// Removes a sandbox's own network; one that is gone already is fine, and a failure is
    /// only logged (the network holds nothing; the next delete of the sandbox retries).
    async fn remove_network(&self, docker: &Docker, network: &str) {
        if let Err(e) = docker.remove_network(network).await
            && status_code(&e) != Some(404)
        {
            tracing::warn!(%network, error = %server_message(&e), "could not remove a sandbox network");
        }
    }

    async fn remove(&self, docker: &Docker, container: &str) -> Result<(), DriverError> {
        match docker
            .remove_container(
                container,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Gone already (or being removed by a concurrent delete): the goal is met.
            Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(self.error(&format!("remove container {container}"), e)),
        }
    }

    pub(crate) async fn start(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let docker = self.client().await?;
        let container = self.find_or_not_found(&docker, id).await?;
        docker
            .start_container(&container, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.error(&format!("start container {container}"), e))?;
        self.inspect(&docker, &container).await
    }

    pub(crate) async fn stop(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let docker = self.client().await?;
        let container = self.find_or_not_found(&docker, id).await?;
        let grace = i32::try_from(secs(self.settings.stop_grace)).unwrap_or(i32::MAX);
        docker
            .stop_container(
                &container,
                Some(StopContainerOptions {
                    t: Some(grace),
                    signal: None,
                }),
            )
            .await
            .map_err(|e| self.error(&format!("stop container {container}"), e))?;
        self.inspect(&docker, &container).await
    }

    pub(crate) async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        let docker = self.client().await?;
        if let Some(container) = self.find(&docker, id).await? {
            self.remove(&docker, &container).await?;
        }
        if self.settings.network.is_none() {
            self.remove_network(
                &docker,
                &isolation::network_name(&self.settings.name_prefix, id),
            )
            .await;
        }
        Ok(())
    }

    pub(crate) async fn get(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let docker = self.client().await?;
        let container = self.find_or_not_found(&docker, id).await?;
        self.inspect(&docker, &container).await
    }

    pub(crate) async fn list(&self) -> Result<Vec<WorkloadStatus>, DriverError> {
        let docker = self.client().await?;
        let containers = self.container_ids(&docker, None).await?;
        let mut out = Vec::with_capacity(containers.len());
        for container in containers {
            match self.inspect_raw(&docker, &container).await {
                Ok(c) => match self.status_of(c) {
                    Ok(status) => out.push(status),
                    // Carries our labels but was not made by a driver: not ours to manage.
                    Err(e) => {
                        tracing::warn!(%container, error = %e, "skipping a container with broken ownership labels")
                    }
                },
                // Removed between the list and the inspect.
                Err(RawError::Answer {
                    status: Some(404), ..
                }) => {}
                Err(e) => {
                    return Err(self.raw_error(&format!("inspect container {container}"), e));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) async fn watch(&self) -> Result<EventStream, DriverError> {
        let docker = self.client().await?;
        // Fail now, not on the first poll, when the runtime is down.
        docker.ping().await.map_err(|e| self.error("ping", e))?;
        // The request goes out on the first poll; `since` makes the runtime replay what
        // happened from this second on, so nothing between this call and then is lost.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut filters = self.filters(None);
        filters.insert("type".into(), vec!["container".into()]);
        let events = docker.events(Some(EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        }));
        let ctx = WatchCtx {
            flavor: self.flavor.clone(),
            gateway: self.gateway.clone(),
            endpoint: self.endpoint.clone(),
            docker,
        };
        let stream = futures::stream::unfold(Some((events.boxed(), ctx)), |state| async move {
            let (mut events, ctx) = state?;
            loop {
                match events.next().await {
                    // The runtime never ends the stream by itself: it went away.
                    None => {
                        let err = ctx.closed();
                        return Some((Err(err), None));
                    }
                    Some(Err(e)) => {
                        let err = ctx.error(e);
                        return Some((Err(err), None));
                    }
                    Some(Ok(message)) => {
                        if let Some(event) = ctx.event_of(message).await {
                            return Some((Ok(event), Some((events, ctx))));
                        }
                    }
                }
            }
        });
        Ok(stream.boxed())
    }

    pub(crate) async fn logs(
        &self,
        id: &SandboxId,
        opts: LogOptions,
    ) -> Result<LogStream, DriverError> {
        let docker = self.client().await?;
        let container = self.find_or_not_found(&docker, id).await?;
        // The engine keeps its log entries cut at 16 KiB (as `MAX_LINE`), so its tail
        // counts the same pieces ours would.
        let tail = opts
            .tail
            .map_or_else(|| "all".to_string(), |n| n.to_string());
        let chunks = docker
            .logs(
                &container,
                Some(LogsOptions {
                    follow: opts.follow,
                    stdout: true,
                    stderr: true,
                    tail,
                    ..Default::default()
                }),
            )
            .boxed();
        let ctx = WatchCtx {
            flavor: self.flavor.clone(),
            gateway: self.gateway.clone(),
            endpoint: self.endpoint.clone(),
            docker,
        };
        let lines = futures::stream::unfold(
            Some((chunks, LineSplitter::default(), ctx)),
            |state| async move {
                let (mut chunks, mut splitter, ctx) = state?;
                loop {
                    if let Some(line) = splitter.pop() {
                        return Some((Ok(line), Some((chunks, splitter, ctx))));
                    }
                    match chunks.next().await {
                        Some(Ok(chunk)) => crate::lines::push(&mut splitter, chunk),
                        Some(Err(e)) => return Some((Err(ctx.error(e)), None)),
                        None => {
                            splitter.finish();
                            let line = splitter.pop()?;
                            return Some((Ok(line), Some((chunks, splitter, ctx))));
                        }
                    }
                }
            },
        );
        Ok(lines.boxed())
    }
}

/// What a stream needs after the call that made it returned.
struct WatchCtx {
    flavor: Flavor,
    gateway: GatewayId,
    endpoint: Endpoint,
    docker: Docker,
}

impl WatchCtx {
    fn error(&self, e: BollardError) -> DriverError {
        match &e {
            BollardError::DockerResponseServerError { .. } => DriverError::Backend {
                runtime: self.flavor.name.into(),
                op: "stream from the runtime".into(),
                message: server_message(&e),
            },
            _ => DriverError::RuntimeUnavailable {
                runtime: self.flavor.name.into(),
                endpoint: self.endpoint.to_string(),
                reason: root_cause(&e),
                hint: self.flavor.down_hint.clone(),
            },
        }
    }

    fn closed(&self) -> DriverError {
        DriverError::RuntimeUnavailable {
            runtime: self.flavor.name.into(),
            endpoint: self.endpoint.to_string(),
            reason: "it closed the event stream".into(),
            hint: self.flavor.down_hint.clone(),
        }
    }

    /// Turns a container event into a state change; `None` for events that change no state.
    async fn event_of(&self, message: EventMessage) -> Option<WorkloadEvent> {
        let actor = message.actor?;
        let attributes = actor.attributes.unwrap_or_default();
        if !owned_by(&attributes, &self.gateway, None) {
            return None;
        }
        let id = SandboxId::new(attributes.get(LABEL_SANDBOX_ID)?.as_str()).ok()?;
        let state = match message.action.as_deref()? {
            "create" => WorkloadState::Creating,
            "start" | "unpause" => WorkloadState::Running,
            // Docker says `die`; Podman's service has said `died` in some versions.
            "die" | "died" => {
                let code = attributes
                    .get("exitCode")
                    .or_else(|| attributes.get("containerExitCode"))
                    .and_then(|c| c.parse().ok());
                let code = match code {
                    Some(code) => code,
                    None => self.exit_code(actor.id.as_deref()?).await?,
                };
                WorkloadState::Stopped { exit_code: code }
            }
            "destroy" | "remove" => WorkloadState::Missing,
            "pause" => WorkloadState::Error(PAUSED.into()),
            _ => return None,
        };
        Some(WorkloadEvent { id, state })
    }

    async fn exit_code(&self, container: &str) -> Option<i64> {
        let version = self.docker.client_version().to_string();
        let c =
            raw::inspect_container(&self.endpoint, &version, container, Duration::from_secs(30))
                .await
                .ok()?;
        Some(c.state.exit_code)
    }
}

const PAUSED: &str = "paused outside OpenShell: unpause it, or stop and start the sandbox";

/// Maps the runtime's container state to ours.
fn state_of(s: &raw::State) -> WorkloadState {
    let error = Some(s.error.as_str()).filter(|e| !e.is_empty());
    let exit_code = s.exit_code;
    match s.status.as_str() {
        // Podman: `configured` is created but not yet initialized.
        "created" | "configured" | "initialized" => match error {
            Some(e) => WorkloadState::Error(format!("failed to start: {e}")),
            None => WorkloadState::Creating,
        },
        "restarting" => WorkloadState::Creating,
        "running" | "stopping" => WorkloadState::Running,
        "paused" => WorkloadState::Error(PAUSED.into()),
        // Podman: `stopped` is exited, before its cleanup ran.
        "exited" | "stopped" => match error {
            Some(e) if exit_code != 0 => WorkloadState::Error(format!("failed to start: {e}")),
            _ => WorkloadState::Stopped { exit_code },
        },
        "removing" => WorkloadState::Missing,
        "dead" => WorkloadState::Error(format!(
            "the container is dead{}: delete the sandbox",
            error.map(|e| format!(" ({e})")).unwrap_or_default()
        )),
        "" => WorkloadState::Error("the runtime reports no state for the container".into()),
        other => WorkloadState::Error(format!("the runtime reports an unknown state `{other}`")),
    }
}

/// Implements [`ComputeDriver`](openshell_drivers::ComputeDriver) for a type with an
/// `engine: Engine` field by forwarding every call.
macro_rules! forward_to_engine {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl openshell_drivers::ComputeDriver for $ty {
            async fn info(&self) -> openshell_drivers::DriverInfo {
                self.engine.info().await
            }
            async fn create(
                &self,
                id: &openshell_drivers::SandboxId,
                name: &openshell_drivers::SandboxName,
                spec: &openshell_drivers::SandboxSpec,
            ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
                self.engine.create(id, name, spec).await
            }
            async fn refresh_credentials(
                &self,
                id: &openshell_drivers::SandboxId,
                credentials: &openshell_drivers::Credentials,
            ) -> Result<(), openshell_drivers::DriverError> {
                self.engine.refresh_credentials(id, credentials).await
            }
            async fn start(
                &self,
                id: &openshell_drivers::SandboxId,
            ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
                self.engine.start(id).await
            }
            async fn stop(
                &self,
                id: &openshell_drivers::SandboxId,
            ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
                self.engine.stop(id).await
            }
            async fn delete(
                &self,
                id: &openshell_drivers::SandboxId,
            ) -> Result<(), openshell_drivers::DriverError> {
                self.engine.delete(id).await
            }
            async fn get(
                &self,
                id: &openshell_drivers::SandboxId,
            ) -> Result<openshell_drivers::WorkloadStatus, openshell_drivers::DriverError> {
                self.engine.get(id).await
            }
            async fn list(
                &self,
            ) -> Result<Vec<openshell_drivers::WorkloadStatus>, openshell_drivers::DriverError>
            {
                self.engine.list().await
            }
            async fn watch(
                &self,
            ) -> Result<openshell_drivers::EventStream, openshell_drivers::DriverError> {
                self.engine.watch().await
            }
            async fn logs(
                &self,
                id: &openshell_drivers::SandboxId,
                opts: openshell_drivers::LogOptions,
            ) -> Result<openshell_drivers::LogStream, openshell_drivers::DriverError> {
                self.engine.logs(id, opts).await
            }
        }
    };
}
pub(crate) use forward_to_engine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("unix:///var/run/docker.sock").unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/run/podman/podman.sock")
                .unwrap()
                .to_string(),
            "unix:///run/podman/podman.sock"
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375").unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".into())
        );
        let e = Endpoint::parse("ssh://host").unwrap_err().to_string();
        assert!(
            e.contains("ssh://host") && e.contains("unix:///PATH"),
            "{e}"
        );
    }

    #[test]
    fn states() {
        let st = |status: &str, exit_code, error: &str| {
            state_of(&raw::State {
                status: status.into(),
                exit_code,
                error: error.into(),
            })
        };
        assert_eq!(st("created", 0, ""), WorkloadState::Creating);
        assert_eq!(st("running", 0, ""), WorkloadState::Running);
        assert_eq!(
            st("exited", 137, ""),
            WorkloadState::Stopped { exit_code: 137 }
        );
        assert!(
            matches!(st("exited", 127, "exec: no such file"), WorkloadState::Error(e) if e.contains("no such file"))
        );
        assert!(matches!(st("paused", 0, ""), WorkloadState::Error(e) if e.contains("unpause")));
        assert!(matches!(st("dead", 0, ""), WorkloadState::Error(e) if e.contains("dead")));
        assert_eq!(st("removing", 0, ""), WorkloadState::Missing);
        assert_eq!(
            st("stopped", 3, ""),
            WorkloadState::Stopped { exit_code: 3 }
        );
        assert_eq!(st("configured", 0, ""), WorkloadState::Creating);
        assert!(matches!(st("frozen", 0, ""), WorkloadState::Error(e) if e.contains("`frozen`")));
    }

    #[test]
    fn messages() {
        assert_eq!(lowercase_first("Minimum memory"), "minimum memory");
        assert_eq!(lowercase_first(""), "");
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = BollardError::from(io);
        assert_eq!(root_cause(&e), "Connection refused");
    }

    #[test]
    fn whole_seconds() {
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(10)), 10);
        assert_eq!(secs(Duration::ZERO), 0);
    }
}
