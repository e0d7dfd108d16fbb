//! The Pod, Secret and NetworkPolicy of a sandbox: built from a [`SandboxSpec`] and read
//! back into a [`WorkloadStatus`]. Pure functions, no I/O, so they are unit-tested without a
//! cluster.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStateWaiting, EnvVar, Pod, PodSpec, ResourceRequirements,
    Secret, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use openshell_drivers::{
    CREDENTIAL_DIR, DriverError, GatewayId, LABEL_GATEWAY, LABEL_MANAGED, LABEL_PREFIX,
    LABEL_SANDBOX_ID, LABEL_SANDBOX_NAME, SUPERVISOR_CAPABILITIES, SandboxId, SandboxName,
    SandboxSpec, WorkloadState, WorkloadStatus,
};

use crate::KubernetesConfig;

/// The Pod volume of the credential: the Secret's files, root-only (0400), at
/// [`CREDENTIAL_DIR`]. Nothing secret is in the Pod spec or the container's environment.
const CREDENTIAL_VOLUME: &str = "openshell-credential";
/// Mode of the credential files: read-only, for root (the supervisor) alone.
const CREDENTIAL_MODE: i32 = 0o400;

/// The Secret annotation holding the Pod as created (JSON), from which `start` recreates it.
pub(crate) const TEMPLATE_ANNOTATION: &str = "openshell.pod-template";
/// The one container of a sandbox Pod.
pub(crate) const CONTAINER: &str = "sandbox";

/// `openshell.managed=true,openshell.gateway=G[,openshell.sandbox-id=ID]`.
pub(crate) fn selector(gateway: &GatewayId, id: Option<&SandboxId>) -> String {
    let mut s = format!("{LABEL_MANAGED}=true,{LABEL_GATEWAY}={gateway}");
    if let Some(id) = id {
        s.push_str(&format!(",{LABEL_SANDBOX_ID}={id}"));
    }
    s
}

/// Whether labels mark an object of `gateway`; the apiserver filters too, this guards
/// against objects whose labels were edited between the list and the read.
pub(crate) fn owned_by(meta: &ObjectMeta, gateway: &GatewayId) -> bool {
    let labels = meta.labels.as_ref();
    let is = |k: &str, v: &str| labels.and_then(|l| l.get(k)).map(String::as_str) == Some(v);
    is(LABEL_MANAGED, "true") && is(LABEL_GATEWAY, gateway.as_str())
}

/// The sandbox id an object belongs to, from its label.
pub(crate) fn id_of(meta: &ObjectMeta) -> Option<SandboxId> {
    let v = meta.labels.as_ref()?.get(LABEL_SANDBOX_ID)?;
    SandboxId::new(v.as_str()).ok()
}

/// A CPU limit in cores as a Kubernetes quantity in millicores (`0.5` -> `500m`).
pub(crate) fn cpu_quantity(cores: f64) -> Result<Quantity, DriverError> {
    let milli = (cores * 1000.0).round();
    if milli < 1.0 {
        return Err(DriverError::InvalidSpec(format!(
            "cpu {cores} is below the 0.001 core (1m) a Kubernetes limit can express"
        )));
    }
    Ok(Quantity(format!("{}m", milli as u64)))
}

/// Parses a CPU quantity (`500m`, `2`, `1.5`) into cores.
pub(crate) fn parse_cpu(q: &Quantity) -> Option<f64> {
    let s = q.0.trim();
    match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => s.parse::<f64>().ok(),
    }
}

/// Parses a memory quantity (`67108864`, `64Mi`, `1G`) into bytes.
pub(crate) fn parse_memory(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let units: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().ok()?.checked_mul(factor);
        }
    }
    s.parse::<u64>().ok()
}

/// The Pod and Secret names of a sandbox.
pub(crate) fn object_name(config: &KubernetesConfig, name: &SandboxName) -> String {
    format!("{}{}", config.name_prefix, name)
}

fn ownership_labels(
    config: &KubernetesConfig,
    id: &SandboxId,
    name: &SandboxName,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_GATEWAY.to_string(), config.gateway.to_string()),
        (LABEL_SANDBOX_ID.to_string(), id.to_string()),
        (LABEL_SANDBOX_NAME.to_string(), name.to_string()),
    ])
}

/// The Secret and the Pod of a new sandbox. The Secret holds the credential variables and
/// the Pod's template.
pub(crate) fn build(
    config: &KubernetesConfig,
    id: &SandboxId,
    name: &SandboxName,
    spec: &SandboxSpec,
) -> Result<(Secret, Pod), DriverError> {
    let object = object_name(config, name);
    let env: Vec<EnvVar> = spec
        .env
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    let secret_data: BTreeMap<String, ByteString> = spec
        .credentials
        .files()
        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
        .collect();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = spec.cpu {
        limits.insert("cpu".to_string(), cpu_quantity(cpu)?);
    }
    if let Some(memory) = spec.memory {
        limits.insert("memory".to_string(), Quantity(memory.to_string()));
    }
    let mut pod_labels = spec.labels.clone();
    pod_labels.extend(ownership_labels(config, id, name));
    let grace = i64::try_from(config.stop_grace.as_secs()).unwrap_or(i64::MAX);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(object.clone()),
            namespace: None,
            labels: Some(pod_labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(spec.image.clone()),
                image_pull_policy: Some(config.image_pull_policy.as_str().into()),
                command: (!spec.command.is_empty()).then(|| spec.command.clone()),
                env: (!env.is_empty()).then_some(env),
                volume_mounts: Some(vec![VolumeMount {
                    name: CREDENTIAL_VOLUME.into(),
                    mount_path: CREDENTIAL_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                }]),
                // The supervisor keeps only what it needs; the workload runs as a user with
                // none (see openshell_drivers::SUPERVISOR_CAPABILITIES).
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        add: Some(SUPERVISOR_CAPABILITIES.map(String::from).to_vec()),
                    }),
                    ..Default::default()
                }),
                // Requests equal to limits: the scheduler reserves what the sandbox may use.
                resources: (!limits.is_empty()).then(|| ResourceRequirements {
                    requests: Some(limits.clone()),
                    limits: Some(limits),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: CREDENTIAL_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(object.clone()),
                    default_mode: Some(CREDENTIAL_MODE),
                    optional: Some(false),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            // The gateway decides restarts (and start recreates the Pod).
            restart_policy: Some("Never".into()),
            hostname: Some(name.to_string()),
            service_account_name: config.service_account.clone(),
            // A sandbox runs untrusted code: no token for the cluster's API in it.
            automount_service_account_token: Some(false),
            runtime_class_name: config.runtime_class.clone(),
            termination_grace_period_seconds: Some(grace),
            ..Default::default()
        }),
        status: None,
    };
    let template = serde_json::to_string(&pod)
        .map_err(|e| DriverError::InvalidSpec(format!("cannot encode the pod: {e}")))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(object),
            labels: Some(ownership_labels(config, id, name)),
            annotations: Some(BTreeMap::from([(
                TEMPLATE_ANNOTATION.to_string(),
                template,
            )])),
            ..Default::default()
        },
        data: Some(secret_data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    Ok((secret, pod))
}

/// The sandbox's NetworkPolicy: no ingress to its Pod at all. A sandbox needs none (its
/// supervisor dials the gateway; users reach it through that session), so no other sandbox,
/// nor anything else in the cluster, reaches its ports. Egress is the sandbox policy's to
/// decide, inside the sandbox. Enforced by the cluster's network plugin, if it enforces
/// NetworkPolicy (most do; kubenet and flannel alone do not).
pub(crate) fn network_policy(
    config: &KubernetesConfig,
    id: &SandboxId,
    name: &SandboxName,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(object_name(config, name)),
            labels: Some(ownership_labels(config, id, name)),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    LABEL_SANDBOX_ID.to_string(),
                    id.to_string(),
                )])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(Vec::new()),
            egress: None,
        }),
    }
}

/// The Pod a stopped sandbox's Secret holds, to create it again.
pub(crate) fn template_of(secret: &Secret) -> Option<Pod> {
    let json = secret
        .metadata
        .annotations
        .as_ref()?
        .get(TEMPLATE_ANNOTATION)?;
    serde_json::from_str(json).ok()
}

/// Waiting reasons that mean the container will not start without a change.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
];

fn waiting_error(w: &ContainerStateWaiting) -> Option<String> {
    let reason = w.reason.as_deref()?;
    FATAL_WAITING
        .contains(&reason)
        .then(|| match w.message.as_deref() {
            Some(m) if !m.is_empty() => format!("the container cannot start ({reason}): {m}"),
            _ => format!("the container cannot start ({reason})"),
        })
}

/// The workload state a Pod is in.
pub(crate) fn state_of(pod: &Pod) -> WorkloadState {
    let status = pod.status.as_ref();
    let container = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
    let container_state = container.and_then(|c| c.state.as_ref());
    let exit_code = container_state
        .and_then(|s| s.terminated.as_ref())
        .map(|t| i64::from(t.exit_code));
    match status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending") {
        "Pending" => match container_state
            .and_then(|s| s.waiting.as_ref())
            .and_then(waiting_error)
        {
            Some(e) => WorkloadState::Error(e),
            None => WorkloadState::Creating,
        },
        "Running" => match exit_code {
            // Between the container's exit and the kubelet's phase update.
            Some(exit_code) => WorkloadState::Stopped { exit_code },
            None => WorkloadState::Running,
        },
        "Succeeded" => WorkloadState::Stopped {
            exit_code: exit_code.unwrap_or(0),
        },
        "Failed" => match exit_code {
            Some(exit_code) => WorkloadState::Stopped { exit_code },
            None => {
                let why = status
                    .and_then(|s| s.message.clone().or(s.reason.clone()))
                    .unwrap_or_else(|| "no reason given".into());
                WorkloadState::Error(format!("the pod failed: {why}"))
            }
        },
        "Unknown" => WorkloadState::Error(
            "the pod's node stopped reporting its state (phase Unknown): delete the sandbox \
             or wait for the node"
                .into(),
        ),
        other => WorkloadState::Error(format!("the pod reports an unknown phase `{other}`")),
    }
}

/// Reads a sandbox back from its Pod (if it runs) and its Secret (if it has one). The spec
/// comes from the Pod, or from the Secret's template when the sandbox is stopped; the
/// credential is never read back.
pub(crate) fn status_of(
    namespace: &str,
    pod: Option<&Pod>,
    secret: Option<&Secret>,
) -> Result<WorkloadStatus, String> {
    let template = match (pod, secret) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => template_of(s).ok_or("its secret holds no readable pod template")?,
        (None, None) => return Err("neither a pod nor a secret".into()),
    };
    let meta = &template.metadata;
    let mut labels = meta.labels.clone().unwrap_or_default();
    let id = id_of(meta).ok_or("it has no valid sandbox id label")?;
    let name = labels
        .get(LABEL_SANDBOX_NAME)
        .and_then(|n| SandboxName::new(n.as_str()).ok())
        .ok_or("it has no valid sandbox name label")?;
    labels.retain(|k, _| !k.starts_with(LABEL_PREFIX));
    let container = template
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .ok_or("it has no `sandbox` container")?;
    let env: BTreeMap<String, String> = container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
        .collect();
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let spec = SandboxSpec {
        image: container.image.clone().unwrap_or_default(),
        cpu: limits.and_then(|l| l.get("cpu")).and_then(parse_cpu),
        memory: limits.and_then(|l| l.get("memory")).and_then(parse_memory),
        env,
        labels,
        command: container.command.clone().unwrap_or_default(),
        credentials: Default::default(),
    };
    let state = match pod {
        Some(p) => state_of(p),
        // Stopped by the gateway: the Pod was deleted, the Secret kept.
        None => WorkloadState::Stopped { exit_code: 0 },
    };
    let object = meta.name.clone().unwrap_or_default();
    Ok(WorkloadStatus {
        id,
        name,
        state,
        runtime_id: format!("{namespace}/{object}"),
        spec,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus,
    };

    use super::*;

    fn config() -> KubernetesConfig {
        KubernetesConfig::new(GatewayId::new("gw").unwrap())
    }

    #[test]
    fn quantities() {
        assert_eq!(cpu_quantity(0.5).unwrap().0, "500m");
        assert_eq!(cpu_quantity(2.0).unwrap().0, "2000m");
        assert!(cpu_quantity(0.0001).is_err());
        for (q, cores) in [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("2000m", 2.0)] {
            assert_eq!(parse_cpu(&Quantity(q.into())), Some(cores), "{q}");
        }
        for (q, bytes) in [
            ("67108864", 64 << 20),
            ("64Mi", 64 << 20),
            ("1G", 1_000_000_000),
            ("2Ki", 2048),
        ] {
            assert_eq!(parse_memory(&Quantity(q.into())), Some(bytes), "{q}");
        }
        assert_eq!(parse_memory(&Quantity("lots".into())), None);
    }

    #[test]
    fn credential_is_a_root_only_secret_volume_and_never_read_back() {
        let id = SandboxId::generate();
        let name = SandboxName::new("box").unwrap();
        let mut credentials = openshell_drivers::Credentials::default();
        credentials.insert("tls.key", "PRIVATE").unwrap();
        let spec = SandboxSpec {
            cpu: Some(0.25),
            memory: Some(32 << 20),
            env: [("OPENSHELL_ENDPOINT".into(), "https://gw:1".into())].into(),
            labels: [("team".into(), "edge".into())].into(),
            command: vec!["/bin/sh".into()],
            credentials,
            ..SandboxSpec::new("img:1")
        };
        let (secret, pod) = build(&config(), &id, &name, &spec).unwrap();
        let pod_json = serde_json::to_string(&pod).unwrap();
        assert!(!pod_json.contains("PRIVATE"), "{pod_json}");
        assert!(pod_json.contains("https://gw:1"));
        assert_eq!(pod.metadata.name.as_deref(), Some("openshell-box"));
        let podspec = pod.spec.as_ref().unwrap();
        let c = &podspec.containers[0];
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.limits, r.requests);
        assert_eq!(secret.data.as_ref().unwrap()["tls.key"].0, b"PRIVATE");
        let volume = podspec.volumes.as_ref().unwrap()[0]
            .secret
            .as_ref()
            .unwrap();
        assert_eq!(volume.secret_name.as_deref(), Some("openshell-box"));
        assert_eq!(volume.default_mode, Some(0o400));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, CREDENTIAL_DIR);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        // Read back without the credential.
        let expected = SandboxSpec {
            credentials: Default::default(),
            ..spec
        };
        let from_pod = status_of("ns", Some(&pod), Some(&secret)).unwrap();
        assert_eq!(from_pod.spec, expected);
        assert_eq!(from_pod.state, WorkloadState::Creating);
        assert_eq!(from_pod.runtime_id, "ns/openshell-box");
        let stopped = status_of("ns", None, Some(&secret)).unwrap();
        assert_eq!(stopped.spec, expected);
        assert_eq!(stopped.state, WorkloadState::Stopped { exit_code: 0 });
    }

    #[test]
    fn the_network_policy_admits_no_ingress_to_its_sandbox_only() {
        let id = SandboxId::generate();
        let policy = network_policy(&config(), &id, &SandboxName::new("box").unwrap());
        let spec = policy.spec.unwrap();
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        assert_eq!(spec.ingress.as_deref(), Some(&[][..]));
        let selected = spec.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(selected[LABEL_SANDBOX_ID], id.to_string());
        assert_eq!(policy.metadata.name.as_deref(), Some("openshell-box"));
    }

    #[test]
    fn pod_phases() {
        let pod = |phase: &str, terminated: Option<i32>, waiting: Option<&str>| Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: CONTAINER.into(),
                    state: Some(ContainerState {
                        terminated: terminated.map(|exit_code| ContainerStateTerminated {
                            exit_code,
                            ..Default::default()
                        }),
                        waiting: waiting.map(|r| ContainerStateWaiting {
                            reason: Some(r.into()),
                            message: Some("no such image".into()),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(state_of(&Pod::default()), WorkloadState::Creating);
        assert_eq!(
            state_of(&pod("Pending", None, Some("ContainerCreating"))),
            WorkloadState::Creating
        );
        assert!(
            matches!(state_of(&pod("Pending", None, Some("ErrImagePull"))), WorkloadState::Error(e) if e.contains("no such image"))
        );
        assert_eq!(
            state_of(&pod("Running", None, None)),
            WorkloadState::Running
        );
        assert_eq!(
            state_of(&pod("Failed", Some(5), None)),
            WorkloadState::Stopped { exit_code: 5 }
        );
        assert_eq!(
            state_of(&pod("Succeeded", Some(0), None)),
            WorkloadState::Stopped { exit_code: 0 }
        );
        assert!(matches!(
            state_of(&pod("Unknown", None, None)),
            WorkloadState::Error(_)
        ));
    }
}
