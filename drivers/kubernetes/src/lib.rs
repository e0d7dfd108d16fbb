//! The Kubernetes compute backend: [`KubernetesDriver`] runs each sandbox as a Pod in one
//! configured namespace, with the sandbox's credential in a Secret beside it.
//!
//! Owns: turning a sandbox into a labelled Pod, Secret and NetworkPolicy (`--cpu`/`--memory`
//! as equal requests and limits, the gateway's callback endpoint in the environment, the
//! credential as a root-only Secret volume, all capabilities but the supervisor's dropped,
//! no ingress, `restartPolicy: Never`), reading them back, and watching Pods.
//! Does not own: images (pulled by the cluster per the configured pull policy), sandbox
//! records, phases or restarts (the gateway's), the namespace or the RBAC rules (the
//! cluster admin's: the gateway's account needs get/list/watch/create/delete on `pods` and
//! `secrets`, patch on `secrets` (a credential renewed at start), create/delete on
//! `networkpolicies` in the namespace, plus `pods/log` for
//! `sandbox logs`).
//!
//! # What is where
//!
//! ```text
//!   Secret openshell-<name>        (labels: openshell.managed, .gateway, .sandbox-id, .sandbox-name)
//!     data:        ca.pem, tls.crt, tls.key, ssh_host_key   the per-sandbox credential
//!     annotation:  openshell.pod-template             the Pod as created (JSON), for `start`
//!   Pod openshell-<name>           (same labels)
//!     env:         OPENSHELL_ENDPOINT, OPENSHELL_SANDBOX_ID, user variables
//!     volume:      the Secret at /run/openshell/credentials, mode 0400 (never in the Pod spec)
//!     security:    capabilities drop ALL, add the supervisor's few; no privilege escalation
//!   NetworkPolicy openshell-<name> (same labels)
//!     selects the sandbox's Pod by id; no ingress rule, so nothing reaches its ports
//! ```
//!
//! Both carry the ownership labels, so the driver keeps no state: every answer is read from
//! the apiserver, and a restarted gateway re-lists exactly its own sandboxes.
//!
//! # Stop and start
//!
//! A Pod cannot be paused or restarted in place, so **stop deletes the Pod** (SIGTERM, then
//! SIGKILL after the stop grace period, by the kubelet) and keeps the Secret, which also
//! holds the Pod's template. A sandbox with a Secret and no Pod reads as stopped
//! (exit code 0). **Start recreates the Pod** from that template: same name, same spec,
//! same credential, a new Pod uid. **Files written inside the sandbox do not survive a
//! stop**: the container's filesystem goes with the Pod (unlike Docker and Podman, where a
//! stopped container keeps its filesystem). Keep work that must outlive a stop outside
//! the sandbox.
//!
//! # Status
//!
//! Status comes from watches, not polling. The driver keeps a copy of the Pods and Secrets
//! carrying the gateway's labels, filled by one list and kept current by a watch (resumed
//! from the last resource version when the apiserver closes it); `get` and `list`, which
//! the gateway calls for every status it shows, read that copy, and only fall back to the
//! apiserver while the copy is out of sync. Writes (create, start, stop, delete) act on
//! what the apiserver has and put their results into the copy at once.
//! [`ComputeDriver::watch`](openshell_drivers::ComputeDriver::watch) is a Kubernetes watch
//! of its own for each caller. Pod phases map to workload states:
//! `Pending` is creating (or an error for image pull and container config failures),
//! `Running` is running, `Succeeded`/`Failed` are stopped with the container's exit code.
//!
//! # Failures
//!
//! A create that fails half way deletes what it made (the Secret is made first and deleted
//! when the Pod cannot be). An apiserver that does not answer is
//! [`DriverError::RuntimeUnavailable`](openshell_drivers::DriverError); a missing
//! namespace, refused credentials and RBAC denials are backend errors that say what to fix.

mod config;
mod driver;
mod error;
mod mirror;
mod objects;

pub use config::{ClusterSource, KubernetesConfig, PullPolicy};
pub use driver::KubernetesDriver;
pub use error::KubeError;
