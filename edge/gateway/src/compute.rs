//! Which compute driver this gateway uses. All backends compiled into this build are listed
//! by `GetGatewayInfo`; exactly one is active, chosen with `--drivers` or auto-detected as
//! upstream does (Kubernetes when in a cluster, then Podman, then Docker, whichever answers;
//! the VM driver only when named).

use std::sync::Arc;

use openshell_driver_docker::{DockerConfig, DockerDriver, PodmanConfig, PodmanDriver};
use openshell_driver_vm::{VmConfig, VmDriver};
use openshell_drivers::{ComputeDriver, DriverHealth, GatewayId};

use crate::GatewayError;
use crate::config::{DriverChoice, VmOptions};

/// Backends compiled into this build, in auto-detection order.
pub const COMPILED: &[&str] = &["podman", "docker", "vm"];
/// Backends used only when named: a VM per sandbox is a choice, not a fallback.
const NAMED_ONLY: &[&str] = &["vm"];

/// The compute side of the gateway.
pub struct Compute {
    pub active: Option<(&'static str, Arc<dyn ComputeDriver>)>,
}

fn build(
    name: &'static str,
    gateway: &GatewayId,
    vm: &VmOptions,
) -> Result<Arc<dyn ComputeDriver>, GatewayError> {
    let driver: Arc<dyn ComputeDriver> = match name {
        "docker" => Arc::new(DockerDriver::new(
            DockerConfig::new(gateway.clone()).map_err(|e| GatewayError::Config(e.to_string()))?,
        )),
        "podman" => Arc::new(PodmanDriver::new(PodmanConfig::new(gateway.clone()))),
        "vm" => Arc::new(VmDriver::new(VmConfig {
            kernel_dir: vm.kernel_dir.clone(),
            qemu: vm.qemu.clone(),
            image_tool: vm.image_tool.clone(),
            boot_timeout: vm.boot_timeout,
            ..VmConfig::new(gateway.clone(), vm.state_dir.clone())
        })),
        other => {
            return Err(GatewayError::Config(format!(
                "the {other} compute driver is not part of this build yet: use docker or podman"
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
        vm: &VmOptions,
    ) -> Result<Compute, GatewayError> {
        let gateway = GatewayId::new(gateway).map_err(|e| GatewayError::Config(e.to_string()))?;
        if let Some(choice) = choice {
            let name = choice.name();
            let driver = build(name, &gateway, vm)?;
            let info = driver.info().await;
            if let DriverHealth::Unhealthy(why) = &info.health {
                tracing::warn!(driver = name, reason = %why, "compute driver is not healthy yet");
            }
            return Ok(Compute {
                active: Some((name, driver)),
            });
        }
        for name in COMPILED.iter().filter(|n| !NAMED_ONLY.contains(n)) {
            let driver = build(name, &gateway, vm)?;
            if driver.info().await.is_healthy() {
                tracing::info!(driver = name, "compute driver auto-detected");
                return Ok(Compute {
                    active: Some((name, driver)),
                });
            }
        }
        tracing::warn!(
            "no container runtime answered (podman, docker): sandboxes are unavailable until one runs; choose one with --drivers"
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
