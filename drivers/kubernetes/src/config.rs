//! How to reach the cluster and how to shape sandbox Pods.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use openshell_drivers::GatewayId;

/// Where the cluster's address and credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    /// This kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// The Pod's own service account (`KUBERNETES_SERVICE_HOST`/`_PORT` and the token and
    /// CA mounted under /var/run/secrets/kubernetes.io/serviceaccount).
    InCluster,
    /// What kubectl would use: `KUBECONFIG` or `~/.kube/config`, else in-cluster.
    Infer,
}

impl fmt::Display for ClusterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kubeconfig(p) => write!(f, "kubeconfig {}", p.display()),
            Self::InCluster => f.write_str("in-cluster service account"),
            Self::Infer => f.write_str("KUBECONFIG, ~/.kube/config or in-cluster"),
        }
    }
}

/// When the kubelet pulls the sandbox image (the container's `imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    /// Pull only when the node lacks the image (Kubernetes' own default for tagged images).
    #[default]
    IfNotPresent,
    /// Never pull: the image must be on the node already.
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(Self::Always),
            "ifnotpresent" | "if-not-present" => Ok(Self::IfNotPresent),
            "never" => Ok(Self::Never),
            _ => Err(format!(
                "image pull policy `{s}` is not Always, IfNotPresent or Never"
            )),
        }
    }
}

/// Settings of the Kubernetes driver. [`KubernetesConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// The owning gateway, written to every Pod's and Secret's labels. No default.
    pub gateway: GatewayId,
    /// Where the cluster is. Default [`ClusterSource::Infer`].
    pub source: ClusterSource,
    /// Namespace of the sandboxes' Pods and Secrets. Default `None`: the kubeconfig
    /// context's namespace, or the gateway's own namespace in a cluster, else `default`.
    /// It must exist; the driver never creates namespaces.
    pub namespace: Option<String>,
    /// Service account the sandbox Pods run as. Default `None`: the namespace's `default`.
    /// Its token is never mounted into sandboxes (`automountServiceAccountToken: false`).
    pub service_account: Option<String>,
    /// RuntimeClass of the sandbox Pods (gVisor, Kata, ...). Default `None`: the node's.
    pub runtime_class: Option<String>,
    /// The containers' `imagePullPolicy`. Default `IfNotPresent`.
    pub image_pull_policy: PullPolicy,
    /// Pod and Secret name = this prefix + the sandbox name. Default `openshell-`. Objects
    /// are found by their labels, so changing it loses nothing.
    pub name_prefix: String,
    /// The Pods' `terminationGracePeriodSeconds`: how long stop and delete let the sandbox
    /// exit after SIGTERM. Default 10 s (the Docker driver's too). Longer gives the sandbox
    /// more time to save work and makes stop slower.
    pub stop_grace: Duration,
    /// Limit for one API request (not for watches). Default 30 s.
    pub request_timeout: Duration,
}

impl KubernetesConfig {
    /// The defaults for `gateway`.
    pub fn new(gateway: GatewayId) -> Self {
        Self {
            gateway,
            source: ClusterSource::Infer,
            namespace: None,
            service_account: None,
            runtime_class: None,
            image_pull_policy: PullPolicy::default(),
            name_prefix: "openshell-".into(),
            stop_grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }

    pub fn with_kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.source = ClusterSource::Kubeconfig(path.into());
        self
    }

    pub fn with_namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = Some(ns.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies() {
        assert_eq!("never".parse::<PullPolicy>().unwrap(), PullPolicy::Never);
        assert_eq!(
            "IfNotPresent".parse::<PullPolicy>().unwrap().as_str(),
            "IfNotPresent"
        );
        let e = "sometimes".parse::<PullPolicy>().unwrap_err();
        assert!(e.contains("sometimes") && e.contains("IfNotPresent"), "{e}");
    }
}
