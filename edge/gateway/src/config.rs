//! Gateway settings: command-line flags and `OPENSHELL_*` environment variables (read here
//! and nowhere else), validated into a `GatewayConfig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use openshell_driver_kubernetes::PullPolicy;
use openshell_transport::{Congestion, Listeners, QuicTuning};

use crate::GatewayError;

/// The OpenShell Edge gateway: control RPCs, SSH and port-forward tunnels and sandbox
/// callbacks on one mTLS port (QUIC on UDP, TLS + HTTP/2 on TCP as the fallback).
#[derive(Debug, Parser)]
#[command(name = "openshell-gateway", version, about)]
pub struct Args {
    /// Address and port to listen on, for both UDP (QUIC) and TCP (fallback).
    #[arg(long, env = "OPENSHELL_LISTEN", default_value = "127.0.0.1:17670")]
    pub listen: SocketAddr,

    /// State directory (database, default PKI directory, credential keys).
    /// Default: $XDG_STATE_HOME/openshell/gateway (~/.local/state/openshell/gateway).
    #[arg(long, env = "OPENSHELL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// PKI directory made by `openshell pki init` (ca.crt, server/tls.{crt,key}, crl.pem).
    /// Default: <state-dir>/pki.
    #[arg(long, env = "OPENSHELL_PKI_DIR")]
    pub pki_dir: Option<PathBuf>,

    /// Server certificate (overrides <pki-dir>/server/tls.crt).
    #[arg(long, env = "OPENSHELL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (overrides <pki-dir>/server/tls.key).
    #[arg(long, env = "OPENSHELL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle that client certificates must chain to (overrides the PKI's trust bundle).
    #[arg(long, env = "OPENSHELL_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve plaintext HTTP/2 on TCP without TLS or authentication. Loopback only.
    #[arg(long, env = "OPENSHELL_DISABLE_TLS")]
    pub disable_tls: bool,

    /// Audit log: one JSON line per change, tunnel and refusal (0600, rotated at 16 MiB,
    /// five old files kept). Default: <state-dir>/audit.log.
    #[arg(long, env = "OPENSHELL_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// Plain-HTTP listener for /healthz, /readyz and Prometheus /metrics (off by default).
    #[arg(long, env = "OPENSHELL_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Which listeners to run on the port.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "quic,tcp",
        env = "OPENSHELL_TRANSPORTS"
    )]
    pub transports: Vec<TransportArg>,

    /// A named tunnel target clients may reach: NAME=HOST:PORT (repeatable). Clients name
    /// the target (`service/NAME`); they can never choose an address themselves.
    #[arg(long = "tunnel-target", value_name = "NAME=HOST:PORT")]
    pub tunnel_targets: Vec<String>,

    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "human",
        env = "OPENSHELL_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// Log level filter (RUST_LOG takes precedence).
    #[arg(long, default_value = "info", env = "OPENSHELL_LOG_LEVEL")]
    pub log_level: String,

    /// How long a graceful shutdown waits for in-flight work.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "OPENSHELL_SHUTDOWN_GRACE")]
    pub shutdown_grace: Duration,

    /// QUIC keep-alive interval (must be below the idle timeout).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub quic_keep_alive: Duration,

    /// QUIC idle timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub quic_idle_timeout: Duration,

    /// Concurrent bidirectional streams per connection (RPCs plus tunnels).
    #[arg(long, default_value_t = 1024)]
    pub quic_max_streams: u32,

    /// Per-stream receive window in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub quic_stream_window: u32,

    /// Per-connection receive window in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    pub quic_connection_window: u32,

    /// UDP socket buffer size request in bytes (capped by net.core.rmem_max).
    #[arg(long, default_value_t = 4 << 20)]
    pub udp_buffer: usize,

    /// Congestion controller for data the gateway sends: cubic, newreno, bbr or tolerant.
    #[arg(long, default_value = "tolerant", env = "OPENSHELL_CONGESTION")]
    pub congestion: Congestion,

    /// Compute driver: docker, podman, kubernetes or vm. Default: auto-detect (Kubernetes when
    /// in a cluster or given --kubeconfig, then Podman, then Docker, whichever answers).
    #[arg(long, alias = "driver", env = "OPENSHELL_DRIVERS", value_enum)]
    pub drivers: Option<DriverChoice>,

    /// Podman API socket. Default: $XDG_RUNTIME_DIR/podman/podman.sock if it exists, else
    /// /run/podman/podman.sock.
    #[arg(long, env = "OPENSHELL_PODMAN_SOCKET")]
    pub podman_socket: Option<PathBuf>,

    /// Image for sandboxes whose create request names none (built locally by
    /// scripts/build-sandbox-image; nothing is pulled).
    #[arg(
        long,
        default_value = "openshell/sandbox:dev",
        env = "OPENSHELL_SANDBOX_IMAGE"
    )]
    pub sandbox_image: String,

    /// URL sandboxes dial to reach this gateway. Default: https://host.docker.internal:PORT
    /// (Docker) or https://host.containers.internal:PORT (Podman); the gateway must then
    /// listen on an address containers can reach (e.g. --listen 0.0.0.0:17670). On
    /// Kubernetes there is no such alias: set it to the address Pods reach the gateway by
    /// (its Service).
    #[arg(long, env = "OPENSHELL_SANDBOX_CALLBACK")]
    pub sandbox_callback: Option<String>,

    /// Kubernetes driver: the kubeconfig to use (its current context). Default: in a cluster
    /// (KUBERNETES_SERVICE_HOST set) the Pod's service account, else what kubectl uses
    /// (KUBECONFIG or ~/.kube/config). Giving it makes auto-detection try Kubernetes first.
    #[arg(long, env = "OPENSHELL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubernetes driver: namespace of the sandbox Pods and Secrets; it must exist.
    /// Default: the kubeconfig context's namespace (in a cluster: the gateway's own), else
    /// `default`.
    #[arg(long, env = "OPENSHELL_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,

    /// Kubernetes driver: service account of the sandbox Pods (its token is never mounted).
    /// Default: the namespace's `default`.
    #[arg(long, env = "OPENSHELL_K8S_SERVICE_ACCOUNT")]
    pub k8s_service_account: Option<String>,

    /// Kubernetes driver: RuntimeClass of the sandbox Pods (gVisor, Kata, ...). Default: the
    /// node's runtime.
    #[arg(long, env = "OPENSHELL_K8S_RUNTIME_CLASS")]
    pub k8s_runtime_class: Option<String>,

    /// Kubernetes driver: image pull policy of the sandbox containers: Always,
    /// IfNotPresent or Never.
    #[arg(
        long,
        default_value = "IfNotPresent",
        env = "OPENSHELL_K8S_IMAGE_PULL_POLICY",
        value_parser = parse_pull_policy
    )]
    pub k8s_image_pull_policy: PullPolicy,

    /// This gateway's id, written into the ownership labels of its workloads; it removes
    /// workloads labelled with it that it has no record of. Default: an id generated at the
    /// state directory's first start and kept in `<state-dir>/gateway-id` (a state
    /// directory from before then keeps `openshell`). Two gateways on one runtime must
    /// never share it.
    #[arg(long, env = "OPENSHELL_GATEWAY_ID")]
    pub gateway_id: Option<String>,

    /// How often the PKI files are checked for changes (certificate rotation, revocation).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub reload_interval: Duration,

    /// Lifetime of the credential each sandbox's supervisor holds (e.g. 30d, 12h, 90s).
    /// Supervisors renew it over their session when a third of it is left, and as soon as
    /// the CA changes (`pki rotate-ca`), so a shorter one limits what a stolen credential is
    /// worth, at the price of more renewals (each adds an entry to the PKI index).
    #[arg(
        long,
        default_value = "30d",
        env = "OPENSHELL_SANDBOX_CREDENTIAL_VALIDITY"
    )]
    pub sandbox_credential_validity: openshell_pki::Duration,

    /// A sandbox whose supervisor has not connected this long after its create or start
    /// is shown as Error, with the workload's last output.
    #[arg(long, default_value = "180s", value_parser = parse_duration, env = "OPENSHELL_READY_TIMEOUT")]
    pub ready_timeout: Duration,

    /// VM driver: where per-sandbox VM directories (disk, console log, credentials) and
    /// exported images live. Default: <state-dir>/vm.
    #[arg(long, env = "OPENSHELL_VM_STATE_DIR")]
    pub vm_state_dir: Option<PathBuf>,

    /// VM driver: the guest kernel artifacts made by scripts/build-vm-kernel.
    #[arg(
        long,
        env = "OPENSHELL_VM_KERNEL_DIR",
        default_value = openshell_driver_vm::DEFAULT_KERNEL_DIR
    )]
    pub vm_kernel_dir: PathBuf,

    /// VM driver: the QEMU binary.
    #[arg(long, env = "OPENSHELL_VM_QEMU", default_value = "qemu-system-x86_64")]
    pub vm_qemu: PathBuf,

    /// VM driver: the CLI sandbox images are exported with (docker or podman).
    #[arg(long, env = "OPENSHELL_VM_IMAGE_TOOL", default_value = "docker", value_parser = ["docker", "podman"])]
    pub vm_image_tool: String,

    /// VM driver: a VM whose init has not started the main process by then is an Error
    /// (with its console tail).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub vm_boot_timeout: Duration,
}

/// Settings of the VM driver (`--drivers vm`).
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub state_dir: PathBuf,
    pub kernel_dir: PathBuf,
    pub qemu: PathBuf,
    pub image_tool: String,
    pub boot_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Quic,
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    Docker,
    Podman,
    Kubernetes,
    Vm,
}

impl DriverChoice {
    pub fn name(self) -> &'static str {
        match self {
            DriverChoice::Docker => "docker",
            DriverChoice::Podman => "podman",
            DriverChoice::Kubernetes => "kubernetes",
            DriverChoice::Vm => "vm",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

fn parse_pull_policy(s: &str) -> Result<PullPolicy, String> {
    s.parse()
}

/// Settings of the Kubernetes driver (used when it is selected or auto-detected).
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesSettings {
    /// `--kubeconfig`; `None` = in-cluster when [`in_cluster`](Self::in_cluster), else what
    /// kubectl would use.
    pub kubeconfig: Option<PathBuf>,
    /// Whether the gateway runs in a Pod (`KUBERNETES_SERVICE_HOST` is set).
    pub in_cluster: bool,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub runtime_class: Option<String>,
    pub image_pull_policy: PullPolicy,
}

impl KubernetesSettings {
    /// Whether auto-detection may try Kubernetes: only when a cluster was configured on
    /// purpose (a kubeconfig given, or running inside one), never from a stray
    /// ~/.kube/config.
    pub fn configured(&self) -> bool {
        self.kubeconfig.is_some() || self.in_cluster
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("'{s}' has no unit: use ms, s, m or h (e.g. 10s)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: use e.g. 500ms, 10s, 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("'{s}': unknown unit '{unit}', use ms, s, m or h")),
    }
}

/// Where the TLS material comes from.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The PKI directory (`openshell pki init`): trusted client CAs come from its index
    /// (every CA trusted right now, so a CA rotation's overlap ends on time), and its
    /// `crl.pem` lists revocations.
    pub pki_dir: PathBuf,
    /// A CA bundle file that replaces the PKI's trusted CAs (`--tls-client-ca`).
    pub client_ca_override: Option<PathBuf>,
}

impl TlsPaths {
    pub fn crl(&self) -> PathBuf {
        self.pki_dir.join("crl.pem")
    }

    /// Every file whose change means "reload".
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.cert.clone(),
            self.key.clone(),
            self.crl(),
            self.pki_dir.join("ca.crt"),
            self.pki_dir.join("ca-bundle.pem"),
            self.pki_dir.join("index.json"),
        ];
        files.extend(self.client_ca_override.clone());
        files
    }
}

/// Validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub listeners: Listeners,
    pub state_dir: PathBuf,
    /// Where audit lines go (`<state-dir>/audit.log` unless `--audit-log`).
    pub audit_log: PathBuf,
    /// `None` = plaintext (loopback only).
    pub tls: Option<TlsPaths>,
    pub health_listen: Option<SocketAddr>,
    pub tunnel_targets: BTreeMap<String, String>,
    pub tuning: QuicTuning,
    pub shutdown_grace: Duration,
    pub reload_interval: Duration,
    pub driver: Option<DriverChoice>,
    /// `None`: the state directory's own (see [`crate::identity`]).
    pub gateway_id: Option<String>,
    pub sandbox_image: String,
    pub sandbox_callback: Option<String>,
    pub podman_socket: Option<PathBuf>,
    pub kubernetes: KubernetesSettings,
    pub ready_timeout: Duration,
    pub sandbox_credential_validity: openshell_pki::Duration,
    pub vm: VmOptions,
}

impl Args {
    pub fn into_config(self) -> Result<GatewayConfig, GatewayError> {
        let state_dir = self
            .state_dir
            .unwrap_or_else(openshell_pki::default_gateway_state_dir);
        let tls = if self.disable_tls {
            if !self.listen.ip().is_loopback() {
                return Err(GatewayError::Config(format!(
                    "--disable-tls is allowed only on a loopback address, not {}: listen on 127.0.0.1 or keep TLS",
                    self.listen
                )));
            }
            if self.tls_client_ca.is_some() {
                return Err(GatewayError::Config(
                    "--disable-tls conflicts with --tls-client-ca: plaintext has no client certificates".into(),
                ));
            }
            None
        } else {
            let pki = self.pki_dir.unwrap_or_else(|| state_dir.join("pki"));
            Some(TlsPaths {
                cert: self.tls_cert.unwrap_or_else(|| pki.join("server/tls.crt")),
                key: self.tls_key.unwrap_or_else(|| pki.join("server/tls.key")),
                pki_dir: pki,
                client_ca_override: self.tls_client_ca,
            })
        };
        let listeners = Listeners {
            quic: self.transports.contains(&TransportArg::Quic) && tls.is_some(),
            tcp: self.transports.contains(&TransportArg::Tcp),
        };
        if !listeners.quic && !listeners.tcp {
            return Err(GatewayError::Config(if tls.is_none() {
                "plaintext mode serves TCP only: include tcp in --transports".into()
            } else {
                "--transports must name quic, tcp or both".into()
            }));
        }
        let mut tunnel_targets = BTreeMap::new();
        for spec in &self.tunnel_targets {
            let (name, addr) = spec.split_once('=').ok_or_else(|| {
                GatewayError::Config(format!("--tunnel-target '{spec}': expected NAME=HOST:PORT"))
            })?;
            if openshell_transport::TunnelTarget::parse(&format!("service/{name}")).is_none() {
                return Err(GatewayError::Config(format!(
                    "--tunnel-target '{spec}': the name may use letters, digits, '-', '_' and '.'"
                )));
            }
            if !addr.contains(':') {
                return Err(GatewayError::Config(format!(
                    "--tunnel-target '{spec}': the address needs a port (HOST:PORT)"
                )));
            }
            tunnel_targets.insert(name.to_string(), addr.to_string());
        }
        let tuning = QuicTuning {
            keep_alive: self.quic_keep_alive,
            idle_timeout: self.quic_idle_timeout,
            max_bidi_streams: self.quic_max_streams,
            stream_receive_window: self.quic_stream_window,
            receive_window: self.quic_connection_window,
            udp_buffer: self.udp_buffer,
            congestion: self.congestion,
            ..QuicTuning::default()
        };
        tuning
            .validate()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(GatewayConfig {
            listen: self.listen,
            listeners,
            audit_log: self
                .audit_log
                .unwrap_or_else(|| state_dir.join("audit.log")),
            state_dir: state_dir.clone(),
            tls,
            health_listen: self.health_listen,
            tunnel_targets,
            tuning,
            shutdown_grace: self.shutdown_grace,
            reload_interval: self.reload_interval,
            driver: self.drivers,
            gateway_id: self.gateway_id,
            sandbox_image: self.sandbox_image,
            sandbox_callback: self.sandbox_callback,
            podman_socket: self.podman_socket,
            kubernetes: KubernetesSettings {
                kubeconfig: self.kubeconfig,
                in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST")
                    .is_some_and(|v| !v.is_empty()),
                namespace: self.k8s_namespace,
                service_account: self.k8s_service_account,
                runtime_class: self.k8s_runtime_class,
                image_pull_policy: self.k8s_image_pull_policy,
            },
            ready_timeout: self.ready_timeout,
            sandbox_credential_validity: self.sandbox_credential_validity,
            vm: VmOptions {
                state_dir: self.vm_state_dir.unwrap_or_else(|| state_dir.join("vm")),
                kernel_dir: self.vm_kernel_dir,
                qemu: self.vm_qemu,
                image_tool: self.vm_image_tool,
                boot_timeout: self.vm_boot_timeout,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("3x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-3s").is_err());
    }

    #[test]
    fn plaintext_off_loopback_is_refused() {
        let args = Args::parse_from([
            "openshell-gateway",
            "--disable-tls",
            "--listen",
            "0.0.0.0:1",
        ]);
        let err = args.into_config().unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn kubernetes_is_tried_only_when_configured() {
        let settings = |kubeconfig: Option<&str>, in_cluster| KubernetesSettings {
            kubeconfig: kubeconfig.map(PathBuf::from),
            in_cluster,
            namespace: None,
            service_account: None,
            runtime_class: None,
            image_pull_policy: PullPolicy::IfNotPresent,
        };
        assert!(!settings(None, false).configured());
        assert!(settings(Some("/k"), false).configured());
        assert!(settings(None, true).configured());
        let args = Args::parse_from([
            "openshell-gateway",
            "--k8s-image-pull-policy",
            "Never",
            "--kubeconfig",
            "/k",
        ]);
        let config = args.into_config().unwrap();
        assert_eq!(config.kubernetes.image_pull_policy, PullPolicy::Never);
        assert_eq!(config.kubernetes.kubeconfig, Some(PathBuf::from("/k")));
        let bad = Args::try_parse_from(["openshell-gateway", "--k8s-image-pull-policy", "maybe"]);
        assert!(bad.unwrap_err().to_string().contains("IfNotPresent"));
    }

    #[test]
    fn tunnel_target_needs_name_and_port() {
        for bad in ["db", "d b=127.0.0.1:5", "db=localhost"] {
            let args = Args::parse_from(["openshell-gateway", "--tunnel-target", bad]);
            assert!(args.into_config().is_err(), "{bad}");
        }
    }
}
