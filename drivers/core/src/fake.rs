//! [`FakeDriver`]: an in-memory **test double** of a container runtime, for the gateway's unit
//! tests and the conformance suite. It runs nothing; it models what the gateway can observe
//! of a runtime (states, labels, name clashes, images, events, logs, a per-workload
//! filesystem) and offers hooks to play the parts a real workload would (print a line, exit,
//! write a file) and to take the runtime down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use tokio::sync::broadcast;

use crate::{
    ComputeDriver, Credentials, DriverError, DriverHealth, DriverInfo, EventStream, GatewayId,
    LogLine, LogOptions, LogStream, OutputStream, SandboxId, SandboxName, SandboxSpec,
    WorkloadEvent, WorkloadState, WorkloadStatus,
};

const RUNTIME: &str = "fake";
const ENDPOINT: &str = "memory://fake-runtime";

/// A fake runtime shared by any number of [`FakeDriver`]s (one per gateway id), as several
/// gateways may share one Docker daemon. Cloning shares the same runtime.
#[derive(Clone)]
pub struct FakeRuntime {
    inner: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<FakeEvent>,
    /// `(workload key, line)`; `None` marks the end of a run (stop, exit or removal).
    output: broadcast::Sender<(u64, Option<LogLine>)>,
}

#[derive(Clone)]
enum FakeEvent {
    Workload(GatewayId, WorkloadEvent),
    /// The runtime went down: watchers get an error and their stream ends.
    Down,
}

#[derive(Default)]
struct State {
    available: bool,
    images: BTreeSet<String>,
    next_key: u64,
    workloads: BTreeMap<u64, Workload>,
}

struct Workload {
    gateway: GatewayId,
    id: SandboxId,
    name: SandboxName,
    spec: SandboxSpec,
    state: WorkloadState,
    files: BTreeMap<String, Vec<u8>>,
    logs: Vec<LogLine>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeRuntime {
    /// An empty, reachable runtime with no images.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Shared {
                state: Mutex::new(State {
                    available: true,
                    ..State::default()
                }),
                events: broadcast::channel(1024).0,
                output: broadcast::channel(1024).0,
            }),
        }
    }

    /// A driver for `gateway` on this runtime.
    pub fn driver(&self, gateway: GatewayId) -> FakeDriver {
        FakeDriver {
            runtime: self.clone(),
            gateway,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts an image in the local store.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_string());
    }

    /// Takes the runtime down (`false`) or brings it back (`true`). While down, every driver
    /// call fails with [`DriverError::RuntimeUnavailable`]; workloads are kept.
    pub fn set_available(&self, available: bool) {
        let mut state = self.lock();
        if state.available && !available {
            let _ = self.inner.events.send(FakeEvent::Down);
        }
        state.available = available;
    }

    /// Every workload on the runtime, whoever owns it: `(gateway, sandbox id, state)`.
    pub fn all_workloads(&self) -> Vec<(GatewayId, SandboxId, WorkloadState)> {
        self.lock()
            .workloads
            .values()
            .map(|w| (w.gateway.clone(), w.id.clone(), w.state.clone()))
            .collect()
    }
}

/// An in-memory fake [`ComputeDriver`] (a named test double, not a backend): one gateway's
/// view of a [`FakeRuntime`].
///
/// Conventions standing in for a real workload:
/// - the main process exits with code 0 when stopped (it handles SIGTERM);
/// - a command whose program is [`FakeDriver::FAILING_PROGRAM`] fails to start;
/// - [`FakeDriver::print`], [`FakeDriver::exit`], [`FakeDriver::write_file`] and
///   [`FakeDriver::read_file`] act as the workload would (need it running, like `exec`).
#[derive(Clone)]
pub struct FakeDriver {
    runtime: FakeRuntime,
    gateway: GatewayId,
}

impl FakeDriver {
    /// The program that the fake refuses to start, as a real runtime refuses a missing one.
    pub const FAILING_PROGRAM: &'static str = "/fake/fails-to-start";

    /// A driver on a fresh runtime that holds `images`.
    pub fn new(gateway: GatewayId, images: &[&str]) -> Self {
        let runtime = FakeRuntime::new();
        for image in images {
            runtime.add_image(image);
        }
        runtime.driver(gateway)
    }

    /// The runtime this driver talks to.
    pub fn runtime(&self) -> &FakeRuntime {
        &self.runtime
    }

    fn unavailable() -> DriverError {
        DriverError::RuntimeUnavailable {
            runtime: RUNTIME.into(),
            endpoint: ENDPOINT.into(),
            reason: "taken down by the test".into(),
            hint: "bring it back with FakeRuntime::set_available(true)".into(),
        }
    }

    /// Locks the runtime, failing while it is down.
    fn state(&self) -> Result<MutexGuard<'_, State>, DriverError> {
        let state = self.runtime.lock();
        if state.available {
            Ok(state)
        } else {
            Err(Self::unavailable())
        }
    }

    fn key_of(&self, state: &State, id: &SandboxId) -> Result<u64, DriverError> {
        state
            .workloads
            .iter()
            .find(|(_, w)| w.gateway == self.gateway && &w.id == id)
            .map(|(k, _)| *k)
            .ok_or_else(|| DriverError::NotFound {
                runtime: RUNTIME.into(),
                id: id.clone(),
            })
    }

    fn status(key: u64, w: &Workload) -> WorkloadStatus {
        WorkloadStatus {
            id: w.id.clone(),
            name: w.name.clone(),
            state: w.state.clone(),
            runtime_id: format!("fake-{key}"),
            spec: w.spec.clone(),
        }
    }

    fn emit(&self, id: &SandboxId, state: WorkloadState) {
        // No receivers is fine: nobody watches.
        let _ = self.runtime.inner.events.send(FakeEvent::Workload(
            self.gateway.clone(),
            WorkloadEvent {
                id: id.clone(),
                state,
            },
        ));
    }

    fn end_output(&self, key: u64) {
        let _ = self.runtime.inner.output.send((key, None));
    }

    /// Moves a running workload to `Stopped { exit_code }`, as its main process exiting would.
    fn finish(&self, state: &mut State, key: u64, exit_code: i64) {
        let w = state.workloads.get_mut(&key).expect("key from this state");
        if w.state == WorkloadState::Running {
            w.state = WorkloadState::Stopped { exit_code };
            self.emit(&w.id, w.state.clone());
            self.end_output(key);
        }
    }

    fn running_key(&self, state: &State, id: &SandboxId) -> Result<u64, DriverError> {
        let key = self.key_of(state, id)?;
        if state.workloads[&key].state != WorkloadState::Running {
            return Err(DriverError::Backend {
                runtime: RUNTIME.into(),
                op: format!("reach sandbox {id}"),
                message: "it is not running: start it first".into(),
            });
        }
        Ok(key)
    }

    /// The workload's main process prints `line` on stdout.
    pub fn print(&self, id: &SandboxId, line: &str) -> Result<(), DriverError> {
        let mut state = self.state()?;
        let key = self.running_key(&state, id)?;
        let line = LogLine {
            stream: OutputStream::Stdout,
            line: line.to_string(),
        };
        state
            .workloads
            .get_mut(&key)
            .expect("key from this state")
            .logs
            .push(line.clone());
        let _ = self.runtime.inner.output.send((key, Some(line)));
        Ok(())
    }

    /// The workload's main process exits by itself with `code`.
    pub fn exit(&self, id: &SandboxId, code: i64) -> Result<(), DriverError> {
        let mut state = self.state()?;
        let key = self.running_key(&state, id)?;
        self.finish(&mut state, key, code);
        Ok(())
    }

    /// Writes a file inside the running workload.
    pub fn write_file(&self, id: &SandboxId, path: &str, data: &[u8]) -> Result<(), DriverError> {
        let mut state = self.state()?;
        let key = self.running_key(&state, id)?;
        let w = state.workloads.get_mut(&key).expect("key from this state");
        w.files.insert(path.to_string(), data.to_vec());
        Ok(())
    }

    /// Reads a file inside the running workload; `None` when it does not exist.
    pub fn read_file(&self, id: &SandboxId, path: &str) -> Result<Option<Vec<u8>>, DriverError> {
        let state = self.state()?;
        let key = self.running_key(&state, id)?;
        Ok(state.workloads[&key].files.get(path).cloned())
    }
}

#[async_trait::async_trait]
impl ComputeDriver for FakeDriver {
    async fn info(&self) -> DriverInfo {
        let health = match self.state() {
            Ok(_) => DriverHealth::Healthy,
            Err(e) => DriverHealth::Unhealthy(e.to_string()),
        };
        DriverInfo {
            name: RUNTIME.into(),
            endpoint: ENDPOINT.into(),
            version: (health == DriverHealth::Healthy).then(|| env!("CARGO_PKG_VERSION").into()),
            health,
        }
    }

    async fn create(
        &self,
        id: &SandboxId,
        name: &SandboxName,
        spec: &SandboxSpec,
    ) -> Result<WorkloadStatus, DriverError> {
        spec.validate()?;
        let mut state = self.state()?;
        if let Some(w) = state
            .workloads
            .values()
            .find(|w| (w.gateway == self.gateway && &w.id == id) || &w.name == name)
        {
            let what = if &w.name == name {
                format!("a workload named `{name}`")
            } else {
                format!("a workload for sandbox {id}")
            };
            return Err(DriverError::AlreadyExists { what });
        }
        if !state.images.contains(&spec.image) {
            return Err(DriverError::ImageNotFound {
                runtime: RUNTIME.into(),
                image: spec.image.clone(),
            });
        }
        if spec.command.first().map(String::as_str) == Some(Self::FAILING_PROGRAM) {
            // Created, failed to start, removed again: nothing is left.
            return Err(DriverError::Backend {
                runtime: RUNTIME.into(),
                op: format!("start sandbox {id}"),
                message: format!("{} cannot be executed", Self::FAILING_PROGRAM),
            });
        }
        let key = state.next_key;
        state.next_key += 1;
        // The credential becomes files, as on a real runtime; the spec never holds it.
        let files = credential_files(&spec.credentials);
        let workload = Workload {
            gateway: self.gateway.clone(),
            id: id.clone(),
            name: name.clone(),
            spec: SandboxSpec {
                credentials: Default::default(),
                ..spec.clone()
            },
            state: WorkloadState::Running,
            files,
            logs: Vec::new(),
        };
        let status = Self::status(key, &workload);
        state.workloads.insert(key, workload);
        self.emit(id, WorkloadState::Creating);
        self.emit(id, WorkloadState::Running);
        Ok(status)
    }

    async fn refresh_credentials(
        &self,
        id: &SandboxId,
        credentials: &Credentials,
    ) -> Result<(), DriverError> {
        let mut state = self.state()?;
        let key = self.key_of(&state, id)?;
        let w = state.workloads.get_mut(&key).expect("key from this state");
        w.files.extend(credential_files(credentials));
        Ok(())
    }

    async fn start(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let mut state = self.state()?;
        let key = self.key_of(&state, id)?;
        let w = state.workloads.get_mut(&key).expect("key from this state");
        if w.state != WorkloadState::Running {
            w.state = WorkloadState::Running;
            self.emit(id, WorkloadState::Running);
        }
        Ok(Self::status(key, w))
    }

    async fn stop(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let mut state = self.state()?;
        let key = self.key_of(&state, id)?;
        self.finish(&mut state, key, 0);
        Ok(Self::status(key, &state.workloads[&key]))
    }

    async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        let mut state = self.state()?;
        if let Ok(key) = self.key_of(&state, id) {
            state.workloads.remove(&key);
            self.end_output(key);
            self.emit(id, WorkloadState::Missing);
        }
        Ok(())
    }

    async fn get(&self, id: &SandboxId) -> Result<WorkloadStatus, DriverError> {
        let state = self.state()?;
        let key = self.key_of(&state, id)?;
        Ok(Self::status(key, &state.workloads[&key]))
    }

    async fn list(&self) -> Result<Vec<WorkloadStatus>, DriverError> {
        let state = self.state()?;
        let mut all: Vec<_> = state
            .workloads
            .iter()
            .filter(|(_, w)| w.gateway == self.gateway)
            .map(|(k, w)| Self::status(*k, w))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn watch(&self) -> Result<EventStream, DriverError> {
        let _state = self.state()?;
        let gateway = self.gateway.clone();
        let rx = self.runtime.inner.events.subscribe();
        let stream = futures::stream::unfold(Some(rx), move |rx| {
            let gateway = gateway.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(FakeEvent::Workload(g, event)) if g == gateway => {
                            return Some((Ok(event), Some(rx)));
                        }
                        Ok(FakeEvent::Workload(..)) => continue,
                        Ok(FakeEvent::Down) => return Some((Err(Self::unavailable()), None)),
                        Err(broadcast::error::RecvError::Closed) => return None,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            // Ends the stream, as the trait promises after an error.
                            let e = DriverError::Backend {
                                runtime: RUNTIME.into(),
                                op: "deliver events".into(),
                                message: format!(
                                    "the watcher fell behind and missed {n} events; list again and re-watch"
                                ),
                            };
                            return Some((Err(e), None));
                        }
                    }
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn logs(&self, id: &SandboxId, opts: LogOptions) -> Result<LogStream, DriverError> {
        let follow = opts.follow;
        let state = self.state()?;
        let key = self.key_of(&state, id)?;
        // Subscribe under the lock so no line falls between the snapshot and the live part.
        let rx = self.runtime.inner.output.subscribe();
        let w = &state.workloads[&key];
        let skip = opts.tail.map_or(0, |n| w.logs.len().saturating_sub(n));
        let past: Vec<Result<LogLine, DriverError>> =
            w.logs.iter().skip(skip).cloned().map(Ok).collect();
        let live = follow && w.state == WorkloadState::Running;
        drop(state);
        let past = futures::stream::iter(past);
        if !live {
            return Ok(past.boxed());
        }
        let live = futures::stream::unfold(Some(rx), move |rx| async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok((k, Some(line))) if k == key => return Some((Ok(line), Some(rx))),
                    Ok((k, None)) if k == key => return None,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let e = DriverError::Backend {
                            runtime: RUNTIME.into(),
                            op: "follow logs".into(),
                            message: format!("the reader fell behind and missed {n} lines"),
                        };
                        return Some((Err(e), None));
                    }
                }
            }
        });
        Ok(past.chain(live).boxed())
    }
}

/// A credential as the files a workload would find in [`crate::CREDENTIAL_DIR`].
fn credential_files(credentials: &Credentials) -> BTreeMap<String, Vec<u8>> {
    credentials
        .files()
        .map(|(name, data)| (format!("{}/{name}", crate::CREDENTIAL_DIR), data.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(s: &str) -> GatewayId {
        GatewayId::new(s).unwrap()
    }

    #[tokio::test]
    async fn watch_ends_with_an_error_when_the_runtime_goes_down() {
        let driver = FakeDriver::new(gw("g"), &["img"]);
        let mut events = driver.watch().await.unwrap();
        let id = SandboxId::generate();
        let name = SandboxName::new("a").unwrap();
        driver
            .create(&id, &name, &SandboxSpec::new("img"))
            .await
            .unwrap();
        assert_eq!(
            events.next().await.unwrap().unwrap().state,
            WorkloadState::Creating
        );
        assert_eq!(
            events.next().await.unwrap().unwrap().state,
            WorkloadState::Running
        );
        driver.runtime().set_available(false);
        let e = events.next().await.unwrap().unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(events.next().await.is_none());
        assert!(!driver.info().await.is_healthy());
        driver.runtime().set_available(true);
        assert_eq!(driver.get(&id).await.unwrap().state, WorkloadState::Running);
    }

    #[tokio::test]
    async fn followed_logs_end_when_the_workload_exits() {
        let driver = FakeDriver::new(gw("g"), &["img"]);
        let id = SandboxId::generate();
        let name = SandboxName::new("a").unwrap();
        driver
            .create(&id, &name, &SandboxSpec::new("img"))
            .await
            .unwrap();
        driver.print(&id, "one").unwrap();
        let mut logs = driver
            .logs(
                &id,
                LogOptions {
                    follow: true,
                    tail: None,
                },
            )
            .await
            .unwrap();
        driver.print(&id, "two").unwrap();
        driver.exit(&id, 3).unwrap();
        let lines: Vec<_> = (&mut logs).map(|l| l.unwrap().line).collect().await;
        assert_eq!(lines, ["one", "two"]);
        assert_eq!(
            driver.get(&id).await.unwrap().state,
            WorkloadState::Stopped { exit_code: 3 }
        );
    }
}
