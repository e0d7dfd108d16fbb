//! Errors of setting the driver up (finding the cluster). Calls on a working driver return
//! [`openshell_drivers::DriverError`], mapped in `driver.rs`.

use std::path::PathBuf;

/// Why the driver could not be set up. Messages are lowercase and say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// The kubeconfig named in the settings is not there.
    #[error(
        "kubeconfig {} does not exist: pass --kubeconfig with the path of a kubeconfig file \
         (kubectl config view --raw > FILE writes one)",
        path.display()
    )]
    KubeconfigMissing { path: PathBuf },

    /// The kubeconfig exists but cannot be used.
    #[error("cannot use kubeconfig {}: {reason}; fix the file or pass another with --kubeconfig", path.display())]
    Kubeconfig { path: PathBuf, reason: String },

    /// In-cluster settings were asked for outside a cluster, or are broken.
    #[error(
        "cannot use the in-cluster Kubernetes config ({reason}): run the gateway in a Pod with \
         a service account, or pass --kubeconfig"
    )]
    NotInCluster { reason: String },

    /// Neither a kubeconfig nor in-cluster settings were found.
    #[error(
        "no Kubernetes cluster configured ({reason}): pass --kubeconfig, set KUBECONFIG, or \
         run the gateway in a cluster"
    )]
    NoCluster { reason: String },

    /// The namespace setting is not a valid namespace name.
    #[error(
        "invalid Kubernetes namespace `{0}`: use 1 to 63 of [a-z0-9-], starting and ending \
         with a letter or digit"
    )]
    InvalidNamespace(String),

    /// The HTTP client could not be built from the config (bad certificates, for example).
    #[error("cannot build a Kubernetes client from {source_desc}: {reason}")]
    Client { source_desc: String, reason: String },
}
