//! Which compute driver this gateway uses. All backends compiled into this build are listed
//! by `GetGatewayInfo`; exactly one is active, chosen with `--drivers` or auto-detected as
//! upstream does (Kubernetes when in a cluster, then Podman, then Docker, whichever answers;
//! the VM driver only when named).

use std::sync::Arc;

use openshell_driver_docker::{DockerConfig, DockerDriver, PodmanConfig, PodmanDriver};
use openshell_driver_kubernetes::{ClusterSource, KubernetesConfig, KubernetesDriver};
use openshell_drivers::{ComputeDriver, DriverHealth, GatewayId};

use crate::GatewayError;
use crate::config::{DriverChoice, KubernetesSettings};

/// Backends compiled into this build, in auto-detection order (Kubernetes only when a
/// cluster is configured, see [`KubernetesSettings::configured`]).
pub const COMPILED: &[&str] = &["kubernetes", "podman", "docker"];

/// The compute side of the gateway.
pub struct Compute {
    pub active: Option<(&'static str, Arc<dyn ComputeDriver>)>,
}

/// Runtime settings of the drivers (each has working defaults).
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Podman's API socket; `None` = the default discovery of `PodmanConfig::new`.
    pub podman_socket: Option<std::path::PathBuf>,
    pub kubernetes: KubernetesSettings,
}

async fn kubernetes(
    gateway: &GatewayId,
    kube: &KubernetesSettings,
) -> Result<KubernetesDriver, GatewayError> {
    let mut config = KubernetesConfig::new(gateway.clone());
    config.source = match (&kube.kubeconfig, kube.in_cluster) {
        (Some(path), _) => ClusterSource::Kubeconfig(path.clone()),
        (None, true) => ClusterSource::InCluster,
        (None, false) => ClusterSource::Infer,
    };
    config.namespace = kube.namespace.clone();
    config.service_account = kube.service_account.clone();
    config.runtime_class = kube.runtime_class.clone();
    config.image_pull_policy = kube.image_pull_policy;
    KubernetesDriver::connect(config)
        .await
        .map_err(|e| GatewayError::Config(e.to_string()))
}

async fn build(
    name: &'static str,
    gateway: &GatewayId,
    settings: &DriverSettings,
) -> Result<Arc<dyn ComputeDriver>, GatewayError> {
    let driver: Arc<dyn ComputeDriver> = match name {
        "kubernetes" => Arc::new(kubernetes(gateway, &settings.kubernetes).await?),
        "docker" => Arc::new(DockerDriver::new(
            DockerConfig::new(gateway.clone()).map_err(|e| GatewayError::Config(e.to_string()))?,
        )),
        "podman" => {
            let mut config = PodmanConfig::new(gateway.clone());
            if let Some(socket) = &settings.podman_socket {
                config.endpoint = openshell_driver_docker::Endpoint::Unix(socket.clone());
            }
            Arc::new(PodmanDriver::new(config))
        }
        other => {
            return Err(GatewayError::Config(format!(
                "the {other} compute driver is not part of this build yet: use docker, podman or kubernetes"
            )));
        }
    };
    Ok(driver)
}

impl Compute {
    /// Selects the driver: the one named, or the first compiled backend whose runtime
    /// answers. A named driver whose runtime is down is still selected (and reported
    /// unhealthy) so the gateway starts and recovers when the runtime returns.
    pub async fn select(
        choice: Option<DriverChoice>,
        gateway: &str,
        settings: &DriverSettings,
    ) -> Result<Compute, GatewayError> {
        let gateway = GatewayId::new(gateway).map_err(|e| GatewayError::Config(e.to_string()))?;
        if let Some(choice) = choice {
            let name = choice.name();
            let driver = build(name, &gateway, settings).await?;
            let info = driver.info().await;
            if let DriverHealth::Unhealthy(why) = &info.health {
                tracing::warn!(driver = name, reason = %why, "compute driver is not healthy yet");
            }
            return Ok(Compute {
                active: Some((name, driver)),
            });
        }
        for name in COMPILED {
            if *name == "kubernetes" && !settings.kubernetes.configured() {
                continue;
            }
            let driver = build(name, &gateway, settings).await?;
            if driver.info().await.is_healthy() {
                tracing::info!(driver = name, "compute driver auto-detected");
                return Ok(Compute {
                    active: Some((name, driver)),
                });
            }
        }
        tracing::warn!(
            "no compute runtime answered (kubernetes when configured, podman, docker): sandboxes are unavailable until one runs; choose one with --drivers"
        );
        Ok(Compute { active: None })
    }

    /// The compiled drivers as `GetGatewayInfo` reports them.
    pub async fn describe(&self) -> Vec<openshell_proto::ComputeDriverInfo> {
        let mut out = Vec::new();
        for name in COMPILED {
            let mut d = openshell_proto::ComputeDriverInfo {
                name: name.to_string(),
                ..Default::default()
            };
            if let Some((active, driver)) = &self.active
                && active == name
            {
                let info = driver.info().await;
                d.active = true;
                d.driver_version = info.version.unwrap_or_default();
                d.health = match info.health {
                    DriverHealth::Healthy => "ok".into(),
                    DriverHealth::Unhealthy(why) => why,
                };
            }
            out.push(d);
        }
        out
    }
}
