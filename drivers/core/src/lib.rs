//! The compute-driver seam of the gateway: one [`ComputeDriver`] trait, the types it speaks,
//! its error enum, and [`FakeDriver`], an in-memory test double.
//!
//! A compute driver turns a sandbox into a *workload* on some runtime (a Docker or Podman
//! container today; Kubernetes pods and microVMs later) and reads the workload's state back.
//! The backends live in their own crates (`openshell-driver-docker` holds Docker and Podman).
//!
//! # Who keeps what
//!
//! ```text
//!   gateway (records, in its store)          driver (keeps nothing)        runtime
//!   ------------------------------           ----------------------        -------
//!   sandbox id, name, spec, phase,   --->    create/start/stop/delete ---> containers with
//!   reason, credentials, host key,           get/list/watch/logs <---     ownership labels
//!   desired state (running or not)           (state read on each call)
//! ```
//!
//! - The **gateway** owns the records: what sandboxes exist, what each one should be doing,
//!   its phase (Ready means its supervisor session is live, which no driver can see) and
//!   everything secret. It decides restarts: workloads are created with no restart policy.
//! - The **driver** owns no state. Every answer is read from the runtime, found through the
//!   ownership labels ([`LABEL_MANAGED`], [`LABEL_SANDBOX_ID`], [`LABEL_GATEWAY`]), so a
//!   gateway restart loses nothing and two gateways sharing one runtime never see each
//!   other's workloads. At start the gateway reconciles its records with [`ComputeDriver::list`].
//!
//! This crate does no I/O of its own; it does not talk to any runtime.

pub mod credentials;
mod driver;
mod error;
pub mod errtext;
mod fake;
mod lines;
mod types;

pub use credentials::{CREDENTIAL_DIR, Credentials, SUPERVISOR_CAPABILITIES};
pub use driver::{ComputeDriver, EventStream, LogStream};
pub use error::DriverError;
pub use fake::{FakeDriver, FakeRuntime};
pub use lines::{LineSplitter, LogOptions, MAX_LINE};
pub use types::{
    DriverHealth, DriverInfo, GatewayId, LABEL_GATEWAY, LABEL_IMAGE, LABEL_MANAGED, LABEL_PREFIX,
    LABEL_SANDBOX_ID, LABEL_SANDBOX_NAME, LogLine, OutputStream, SandboxId, SandboxName,
    SandboxSpec, WorkloadEvent, WorkloadState, WorkloadStatus,
};
