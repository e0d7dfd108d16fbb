//! The [`ComputeDriver`] trait.

use futures::stream::BoxStream;

use crate::{
    Credentials, DriverError, DriverInfo, LogLine, LogOptions, SandboxId, SandboxName, SandboxSpec,
    WorkloadEvent, WorkloadStatus,
};

/// State changes of this gateway's workloads; see [`ComputeDriver::watch`].
pub type EventStream = BoxStream<'static, Result<WorkloadEvent, DriverError>>;
/// Output lines of one workload; see [`ComputeDriver::logs`].
pub type LogStream = BoxStream<'static, Result<LogLine, DriverError>>;

/// Runs sandboxes as workloads on one runtime. Object safe: the gateway holds an
/// `Arc<dyn ComputeDriver>` chosen by its config.
///
/// Every call reads the runtime; a driver keeps no record of its own (see the crate docs).
/// Workloads are addressed by [`SandboxId`] and found through the ownership labels, so a
/// driver only ever sees and touches the workloads of its own gateway.
///
/// When the runtime cannot be reached every call returns
/// [`DriverError::RuntimeUnavailable`] and [`info`](Self::info) reports it as unhealthy;
/// once it is back the same driver works again, nothing needs rebuilding.
#[async_trait::async_trait]
pub trait ComputeDriver: Send + Sync + 'static {
    /// Backend name, version and health. Never fails: an unreachable runtime is reported
    /// as [`DriverHealth::Unhealthy`](crate::DriverHealth::Unhealthy).
    async fn info(&self) -> DriverInfo;

    /// Creates the workload and starts it. Nothing is left behind on failure: a workload
    /// that was created but did not start is removed before the error is returned.
    ///
    /// Errors: [`DriverError::AlreadyExists`] when the id or the name is taken,
    /// [`DriverError::ImageNotFound`] when the image is not in the local store,
    /// [`DriverError::InvalidSpec`] for a spec the runtime refuses.
    async fn create(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<WorkloadStatus, DriverError>;

    /// Starts a stopped workload; a running one is left alone. The filesystem is the one it
    /// had when it stopped.
    async fn start(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError>;

    /// Replaces the credential files delivered at create (see [`crate::credentials`]) with
    /// `credentials`, for the workload's next start: a sandbox stopped for longer than its
    /// credential lives must not come back with an expired one. Files not named in
    /// `credentials` are kept (the SSH host key). [`DriverError::NotFound`] when there is no
    /// workload.
    async fn refresh_credentials(
        &self,
        id: &SandboxId,
        credentials: &Credentials,
    ) -> Result<(), DriverError>;

    /// Stops the main process (SIGTERM, then SIGKILL after the backend's grace period) and
    /// keeps the workload and its filesystem. A stopped workload is left alone.
    async fn stop(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError>;

    /// Removes the workload, running or not, with its filesystem. Idempotent: deleting a
    /// workload that does not exist succeeds.
    async fn delete(&self, id: &SandboxId) -> Result<(), DriverError>;

    /// Reads one workload. [`DriverError::NotFound`] when there is none.
    async fn get(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError>;

    /// All workloads of this gateway (those carrying its ownership labels), by name.
    async fn list(&self) -> Result<Vec<WorkloadStatus>, DriverError>;

    /// State changes of this gateway's workloads from the moment of the call on. A removed
    /// workload is reported as [`WorkloadState::Missing`](crate::WorkloadState::Missing).
    ///
    /// The stream ends after yielding an error (the runtime went away, for example). Events
    /// can be missed while nobody watches, so after a new `watch` the caller re-reads
    /// [`list`](Self::list) rather than trusting the stream alone.
    async fn watch(&self) -> Result<EventStream, DriverError>;

    /// The output of the workload's main process, one line per item, from its start
    /// (across restarts), or only its last lines ([`LogOptions::tail`]). With
    /// [`LogOptions::follow`] the stream goes on until the workload stops; without, it ends
    /// after the lines written so far. No line is longer than [`MAX_LINE`](crate::MAX_LINE)
    /// bytes (longer ones come in pieces, see [`LineSplitter`](crate::LineSplitter)), and the
    /// stream is produced as it is read: memory stays bounded whatever the workload printed.
    async fn logs(&self, id: &SandboxId, opts: LogOptions) -> Result<LogStream, DriverError>;

    /// Called once when the gateway shuts down. Workloads that must not outlive it (VMs
    /// are processes of the gateway's host, not of a runtime daemon) are stopped here, so
    /// the gateway restarts them at its next start; the default does nothing, since
    /// containers keep running under their runtime.
    async fn shutdown(&self) {}
}
