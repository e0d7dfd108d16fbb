//! One conformance suite for every compute driver: the in-memory fake, Docker, Podman and
//! Kubernetes (a real kube-apiserver; the cases that need a running process are left out).
//!
//! Each case is a generic async fn over a [`Harness`]; `conformance!` runs every case
//! against each backend. The real backends run against real runtimes that the harness
//! brings up when needed:
//! - Docker: the daemon at /var/run/docker.sock; started (`dockerd`) if it does not answer.
//! - Podman: installed with apt if missing; its API service is started on a socket in a
//!   temp dir with a containers.conf whose default ulimits fit under this host's hard
//!   limits, and stopped when the test process exits.
//!
//! The test image (`openshell-test/busybox:1`, busybox-static from Debian, imported
//! locally) is built once per runtime and kept. Each test uses its own gateway ids and
//! removes every container carrying them when it ends; nothing else is touched. What the
//! driver reports is checked against the runtime's own CLI (`inspect`, `exec`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use openshell_driver_docker::{
    ContainerSettings, DockerConfig, DockerDriver, Endpoint, PodmanConfig, PodmanDriver,
};
use openshell_driver_kubernetes::{KubernetesConfig, KubernetesDriver};
use openshell_drivers::{
    ComputeDriver, DriverError, FakeDriver, FakeRuntime, GatewayId, LABEL_GATEWAY, LABEL_MANAGED,
    LABEL_SANDBOX_ID, LABEL_SANDBOX_NAME, LogLine, SandboxId, SandboxName, SandboxSpec,
    WorkloadState, WorkloadStatus,
};

use openshell_tests::kube::{self, KubeCluster};

const TEST_IMAGE: &str = "openshell-test/busybox:1";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Container names of test sandboxes start with this, so they are easy to spot.
const NAME_PREFIX: &str = "openshell-test-";

/// The workload every case runs: prints `started`, runs until SIGTERM, then exits with the
/// code in /tmp/exit-code (0 when absent).
const MAIN: &str = "trap 'exit $(cat /tmp/exit-code 2>/dev/null || echo 0)' TERM; \
                    echo started; while :; do sleep 3600 & wait $!; done";

fn random_hex(n: usize) -> String {
    hex::encode((0..n).map(|_| rand::random::<u8>()).collect::<Vec<_>>())
}

fn name(prefix: &str) -> SandboxName {
    SandboxName::new(format!("{prefix}-{}", random_hex(4))).unwrap()
}

fn gateway_id() -> GatewayId {
    GatewayId::new(format!("conformance-{}", random_hex(6))).unwrap()
}

/// What the runtime itself says about a container (through its CLI, not the driver).
#[derive(Debug)]
struct Observed {
    env: Vec<String>,
    labels: BTreeMap<String, String>,
    nano_cpus: i64,
    memory: i64,
    restart_policy: String,
    ulimits: Vec<(String, i64, i64)>,
}

/// A backend under test and the means to play the workload's part.
trait Harness: Send + Sync {
    /// This test's driver (its own gateway id).
    fn driver(&self) -> Arc<dyn ComputeDriver>;
    /// A driver for another gateway on the same runtime.
    fn other_driver(&self) -> Arc<dyn ComputeDriver>;
    /// A driver whose runtime is down, and what its errors must name.
    fn down_driver(&self) -> (Arc<dyn ComputeDriver>, String);
    fn image(&self) -> String;
    /// A command that cannot start.
    fn failing_command(&self) -> Vec<String>;
    /// The main process prints `line` on stdout.
    async fn print(&self, st: &WorkloadStatus, line: &str);
    /// The main process exits with `code`.
    async fn exit(&self, st: &WorkloadStatus, code: i64);
    async fn write_file(&self, st: &WorkloadStatus, path: &str, data: &str);
    async fn read_file(&self, st: &WorkloadStatus, path: &str) -> Option<String>;
    /// The runtime's own view of the container; `None` for the fake, which has no other view.
    async fn observe(&self, st: &WorkloadStatus) -> Option<Observed>;
    /// Whether the runtime has a workload with this runtime id, whoever owns it.
    async fn exists(&self, runtime_id: &str) -> bool;
    /// Whether the main process has set itself up (MAIN printed `started`, so its SIGTERM
    /// trap is in place); the fake is ready at once.
    fn prints_started(&self) -> bool;
    /// Where nothing runs workloads by itself (Kubernetes with no kubelet), the harness
    /// plays the node: it reports the workload's main process as running.
    async fn node_starts(&self, _st: &WorkloadStatus) {}
}

/// A workload just created or started, once its node runs it: as it is where the runtime
/// runs it at once, else after the harness played the node.
async fn running(h: &impl Harness, d: &dyn ComputeDriver, st: WorkloadStatus) -> WorkloadStatus {
    if st.state != WorkloadState::Creating {
        return st;
    }
    h.node_starts(&st).await;
    // The node's report reaches the driver through the runtime, not at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = d.get(&st.id).await.unwrap();
        if now.state != WorkloadState::Creating || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until MAIN is past its setup: a stop before the trap is set would end in SIGKILL
/// (exit 137) after the grace period instead of exit 0.
/// `starts` counts the starts so far (logs span restarts).
async fn wait_ready(h: &impl Harness, id: &SandboxId, starts: usize) {
    if !h.prints_started() {
        return;
    }
    let d = h.driver();
    eventually(
        "the workload to print `started`",
        Duration::from_secs(20),
        || async {
            let logs = d
                .logs(id, openshell_drivers::LogOptions::default())
                .await
                .unwrap();
            let lines = collect_logs(logs).await;
            lines.iter().filter(|l| l.line == "started").count() >= starts
        },
    )
    .await;
}

fn spec(h: &impl Harness) -> SandboxSpec {
    SandboxSpec {
        command: vec!["/bin/sh".into(), "-c".into(), MAIN.into()],
        ..SandboxSpec::new(h.image())
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads events until `want` arrives for `id` (within 30 s); every event must be about `id`.
async fn expect_event(
    events: &mut openshell_drivers::EventStream,
    id: &SandboxId,
    want: WorkloadState,
) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let e = match tokio::time::timeout_at(deadline, events.next()).await {
            Err(_) => panic!("no {want:?} event within 30 s; saw {seen:?}"),
            Ok(None) => panic!("the event stream ended while waiting for {want:?}; saw {seen:?}"),
            Ok(Some(Err(e))) => panic!("the event stream failed while waiting for {want:?}: {e}"),
            Ok(Some(Ok(e))) => e,
        };
        assert_eq!(&e.id, id, "an event for another sandbox: {e:?}");
        if e.state == want {
            return;
        }
        seen.push(e.state);
    }
}

async fn collect_logs(stream: openshell_drivers::LogStream) -> Vec<LogLine> {
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.map(|l| l.unwrap()).collect(),
    )
    .await
    .expect("the log stream did not end within 30 s")
}

// ---------------------------------------------------------------------------------------
// The cases

async fn info_reports_a_healthy_runtime(h: &impl Harness) {
    let info = h.driver().info().await;
    assert!(info.is_healthy(), "{info:?}");
    assert!(
        !info.version.as_deref().unwrap_or("").is_empty(),
        "{info:?}"
    );
    assert!(!info.endpoint.is_empty(), "{info:?}");
}

async fn create_runs_and_applies_the_spec(h: &impl Harness) {
    let d = h.driver();
    let id = SandboxId::generate();
    let name = name("spec");
    let mut s = spec(h);
    s.cpu = Some(0.5);
    s.memory = Some(64 << 20);
    s.env = [
        ("GREETING".into(), "hello world".into()),
        ("EMPTY".into(), String::new()),
    ]
    .into();
    s.labels = [("team".into(), "edge".into())].into();
    let t = Instant::now();
    let st = d.create(&id, &name, &s).await.unwrap();
    eprintln!("create-to-Running: {:?}", t.elapsed());
    let st = running(h, d.as_ref(), st).await;
    assert_eq!(st.state, WorkloadState::Running);
    assert_eq!((&st.id, &st.name), (&id, &name));
    assert_eq!(st.spec.image, s.image);
    assert_eq!(st.spec.cpu, Some(0.5));
    assert_eq!(st.spec.memory, Some(64 << 20));
    assert_eq!(st.spec.labels, s.labels, "only user labels are reported");
    assert_eq!(st.spec.command, s.command);
    for (k, v) in &s.env {
        assert_eq!(st.spec.env.get(k), Some(v), "{:?}", st.spec.env);
    }
    assert_eq!(d.get(&id).await.unwrap(), st);

    if let Some(o) = h.observe(&st).await {
        assert!(
            o.env.contains(&"GREETING=hello world".to_string()),
            "{:?}",
            o.env
        );
        assert!(o.env.contains(&"EMPTY=".to_string()), "{:?}", o.env);
        assert_eq!(o.nano_cpus, 500_000_000);
        assert_eq!(o.memory, 64 << 20);
        assert!(
            matches!(o.restart_policy.as_str(), "no" | "" | "Never"),
            "restart policy {:?}",
            o.restart_policy
        );
        assert_eq!(o.labels.get("team").map(String::as_str), Some("edge"));
        assert_eq!(
            o.labels.get(LABEL_MANAGED).map(String::as_str),
            Some("true")
        );
        assert_eq!(o.labels.get(LABEL_SANDBOX_ID), Some(&id.to_string()));
        assert_eq!(o.labels.get(LABEL_SANDBOX_NAME), Some(&name.to_string()));
        assert!(o.labels.contains_key(LABEL_GATEWAY));
        eprintln!("ulimits: {:?}", o.ulimits);
    }
}

async fn list_shows_only_this_gateways_workloads(h: &impl Harness) {
    let (mine, theirs) = (h.driver(), h.other_driver());
    assert!(mine.list().await.unwrap().is_empty());
    let (a, b) = (SandboxId::generate(), SandboxId::generate());
    let (na, nb) = (name("mine"), name("theirs"));
    mine.create(&a, &na, &spec(h)).await.unwrap();
    let st = theirs.create(&b, &nb, &spec(h)).await.unwrap();
    running(h, theirs.as_ref(), st).await;
    let listed: Vec<_> = mine
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.name))
        .collect();
    assert_eq!(listed, [(a.clone(), na)]);
    let listed: Vec<_> = theirs
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&b));
    // Another gateway's workload is invisible, not just unlisted.
    assert!(matches!(
        mine.get(&b).await,
        Err(DriverError::NotFound { .. })
    ));
    mine.delete(&b).await.unwrap();
    assert_eq!(theirs.get(&b).await.unwrap().state, WorkloadState::Running);
}

async fn stop_and_start_keep_files_and_report_exit_codes(h: &impl Harness) {
    let d = h.driver();
    let id = SandboxId::generate();
    let st = d.create(&id, &name("files"), &spec(h)).await.unwrap();
    wait_ready(h, &id, 1).await;
    h.write_file(&st, "/root/note", "kept across restarts")
        .await;

    let stopped = d.stop(&id).await.unwrap();
    assert_eq!(stopped.state, WorkloadState::Stopped { exit_code: 0 });
    assert_eq!(
        d.get(&id).await.unwrap().state,
        WorkloadState::Stopped { exit_code: 0 }
    );
    // Stopping a stopped workload is fine.
    assert_eq!(
        d.stop(&id).await.unwrap().state,
        WorkloadState::Stopped { exit_code: 0 }
    );

    let started = d.start(&id).await.unwrap();
    assert_eq!(started.state, WorkloadState::Running);
    assert_eq!(
        started.runtime_id, st.runtime_id,
        "the same workload, not a new one"
    );
    assert_eq!(d.start(&id).await.unwrap().state, WorkloadState::Running);
    wait_ready(h, &id, 2).await;
    assert_eq!(
        h.read_file(&started, "/root/note").await.as_deref(),
        Some("kept across restarts")
    );

    // The main process ending by itself is seen with its code.
    h.exit(&started, 5).await;
    eventually(
        "the workload to stop with code 5",
        Duration::from_secs(20),
        || async { d.get(&id).await.unwrap().state == WorkloadState::Stopped { exit_code: 5 } },
    )
    .await;
}

async fn delete_removes_the_workload_and_is_idempotent(h: &impl Harness) {
    let d = h.driver();
    let id = SandboxId::generate();
    let st = d.create(&id, &name("del"), &spec(h)).await.unwrap();
    assert!(h.exists(&st.runtime_id).await);
    d.delete(&id).await.unwrap();
    assert!(
        !h.exists(&st.runtime_id).await,
        "the container is still there"
    );
    assert!(matches!(
        d.get(&id).await,
        Err(DriverError::NotFound { .. })
    ));
    d.delete(&id).await.unwrap();
    for result in [d.start(&id).await, d.stop(&id).await] {
        let e = result.unwrap_err();
        assert!(matches!(e, DriverError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains(id.as_str()), "{e}");
    }
    assert!(
        d.logs(&id, openshell_drivers::LogOptions::default())
            .await
            .is_err()
    );
    assert!(d.list().await.unwrap().is_empty());
}

async fn duplicates_are_refused(h: &impl Harness) {
    let d = h.driver();
    let (id, taken) = (SandboxId::generate(), name("dup"));
    let st = d.create(&id, &taken, &spec(h)).await.unwrap();
    running(h, d.as_ref(), st).await;

    let e = d
        .create(&SandboxId::generate(), &taken, &spec(h))
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::AlreadyExists { .. }), "{e:?}");
    assert!(e.to_string().contains(taken.as_str()), "{e}");
    let e = d.create(&id, &name("other"), &spec(h)).await.unwrap_err();
    assert!(matches!(e, DriverError::AlreadyExists { .. }), "{e:?}");
    // The same name under another gateway clashes too: names are global on one runtime.
    let e = h
        .other_driver()
        .create(&SandboxId::generate(), &taken, &spec(h))
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::AlreadyExists { .. }), "{e:?}");

    let all = d.list().await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].state, WorkloadState::Running);
    assert!(h.other_driver().list().await.unwrap().is_empty());

    let e = SandboxName::new("Not_A_Name").unwrap_err();
    assert!(matches!(e, DriverError::InvalidName { .. }), "{e:?}");
}

async fn bad_specs_leave_nothing_behind(h: &impl Harness) {
    let d = h.driver();
    let n = name("bad");

    let missing = format!("openshell-test/no-such-image:{}", random_hex(4));
    let e = d
        .create(&SandboxId::generate(), &n, &SandboxSpec::new(&missing))
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::ImageNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains(&missing), "{e}");

    let s = SandboxSpec {
        cpu: Some(0.0),
        ..spec(h)
    };
    let e = d.create(&SandboxId::generate(), &n, &s).await.unwrap_err();
    assert!(matches!(e, DriverError::InvalidSpec(_)), "{e:?}");

    // Created, then failed to start: removed again.
    let s = SandboxSpec {
        command: h.failing_command(),
        ..spec(h)
    };
    let e = d.create(&SandboxId::generate(), &n, &s).await.unwrap_err();
    assert!(
        !matches!(e, DriverError::RuntimeUnavailable { .. }),
        "{e:?}"
    );
    eprintln!("failed start: {e}");

    assert!(
        d.list().await.unwrap().is_empty(),
        "something was left behind"
    );
    // And the name is free.
    let st = d
        .create(&SandboxId::generate(), &n, &spec(h))
        .await
        .unwrap();
    assert_eq!(st.state, WorkloadState::Running);
}

async fn a_runtime_that_is_down_is_reported(h: &impl Harness) {
    let (d, endpoint) = h.down_driver();
    let info = d.info().await;
    assert!(!info.is_healthy(), "{info:?}");
    assert_eq!(info.version, None);
    let id = SandboxId::generate();
    let results = [
        d.create(&id, &name("down"), &spec(h)).await.map(|_| ()),
        d.get(&id).await.map(|_| ()),
        d.list().await.map(|_| ()),
        d.delete(&id).await,
        d.watch().await.map(|_| ()),
    ];
    for r in results {
        let e = r.unwrap_err();
        assert!(matches!(e, DriverError::RuntimeUnavailable { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&endpoint),
            "{e} does not name {endpoint}"
        );
        assert!(e.is_transient());
    }
}

async fn watch_delivers_transitions(h: &impl Harness) {
    let d = h.driver();
    let mut events = d.watch().await.unwrap();
    // Another gateway's workloads never show up.
    h.other_driver()
        .create(&SandboxId::generate(), &name("noise"), &spec(h))
        .await
        .unwrap();
    let id = SandboxId::generate();
    let st = d.create(&id, &name("watched"), &spec(h)).await.unwrap();
    running(h, d.as_ref(), st).await;
    expect_event(&mut events, &id, WorkloadState::Running).await;
    wait_ready(h, &id, 1).await;
    d.stop(&id).await.unwrap();
    expect_event(&mut events, &id, WorkloadState::Stopped { exit_code: 0 }).await;
    let st = d.start(&id).await.unwrap();
    running(h, d.as_ref(), st).await;
    expect_event(&mut events, &id, WorkloadState::Running).await;
    d.delete(&id).await.unwrap();
    expect_event(&mut events, &id, WorkloadState::Missing).await;
}

async fn logs_return_the_output(h: &impl Harness) {
    let d = h.driver();
    let id = SandboxId::generate();
    let st = d.create(&id, &name("logs"), &spec(h)).await.unwrap();
    wait_ready(h, &id, 1).await;
    let hello = format!("hello {}", random_hex(4));
    h.print(&st, &hello).await;
    let lines = || async {
        let logs = d
            .logs(&id, openshell_drivers::LogOptions::default())
            .await
            .unwrap();
        collect_logs(logs)
            .await
            .into_iter()
            .map(|l| l.line)
            .collect::<Vec<_>>()
    };
    eventually(
        "both lines in the logs",
        Duration::from_secs(10),
        || async {
            let got = lines().await;
            // The fake runs no shell, so it never prints `started` itself.
            got.contains(&hello) && (got.contains(&"started".to_string()) || got.len() == 1)
        },
    )
    .await;
    // A tail is the end of the same lines, read from the end.
    let all = lines().await;
    let opts = openshell_drivers::LogOptions {
        follow: false,
        tail: Some(1),
    };
    let tail: Vec<String> = collect_logs(d.logs(&id, opts).await.unwrap())
        .await
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(tail, all[all.len() - 1..], "all lines: {all:?}");

    // Followed logs go on until the workload stops.
    let follower = tokio::spawn(collect_logs(
        d.logs(
            &id,
            openshell_drivers::LogOptions {
                follow: true,
                tail: None,
            },
        )
        .await
        .unwrap(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.print(&st, "later").await;
    eventually("the later line", Duration::from_secs(10), || async {
        lines().await.contains(&"later".to_string())
    })
    .await;
    d.stop(&id).await.unwrap();
    let followed: Vec<_> = follower
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert!(
        followed.contains(&hello) && followed.contains(&"later".into()),
        "{followed:?}"
    );
}

macro_rules! conformance {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;
            conformance!(@cases $harness;
                info_reports_a_healthy_runtime,
                create_runs_and_applies_the_spec,
                list_shows_only_this_gateways_workloads,
                stop_and_start_keep_files_and_report_exit_codes,
                delete_removes_the_workload_and_is_idempotent,
                duplicates_are_refused,
                bad_specs_leave_nothing_behind,
                a_runtime_that_is_down_is_reported,
                watch_delivers_transitions,
                logs_return_the_output,
            );
        }
    };
    // A backend where only some cases apply (named, with the reason at the call).
    ($backend:ident, $harness:expr; $($case:ident),+ $(,)?) => {
        mod $backend {
            use super::*;
            conformance!(@cases $harness; $($case),+);
        }
    };
    (@cases $harness:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = $harness;
                super::$case(&h).await;
            }
        )+
    };
}

conformance!(fake, FakeHarness::new());
conformance!(docker, RealHarness::new(Runtime::docker()));
conformance!(podman, RealHarness::new(Runtime::podman()));
// Kubernetes: no kubelet runs the Pods (the harness plays the node), so the cases that need
// a real process (files kept across stop/start, which Kubernetes does not keep anyway; exit
// codes, logs, a command that fails to start) and the image check (the node pulls, not the
// driver) are tested in tests/tests/kubernetes.rs instead, or not at all.
conformance!(kubernetes, KubeHarness::new().await;
    info_reports_a_healthy_runtime,
    create_runs_and_applies_the_spec,
    list_shows_only_this_gateways_workloads,
    delete_removes_the_workload_and_is_idempotent,
    duplicates_are_refused,
    a_runtime_that_is_down_is_reported,
    watch_delivers_transitions,
);

// ---------------------------------------------------------------------------------------
// The fake

struct FakeHarness {
    driver: FakeDriver,
    other: FakeDriver,
}

impl FakeHarness {
    fn new() -> Self {
        let runtime = FakeRuntime::new();
        runtime.add_image(TEST_IMAGE);
        Self {
            driver: runtime.driver(gateway_id()),
            other: runtime.driver(gateway_id()),
        }
    }
}

impl Harness for FakeHarness {
    fn driver(&self) -> Arc<dyn ComputeDriver> {
        Arc::new(self.driver.clone())
    }
    fn other_driver(&self) -> Arc<dyn ComputeDriver> {
        Arc::new(self.other.clone())
    }
    fn down_driver(&self) -> (Arc<dyn ComputeDriver>, String) {
        let runtime = FakeRuntime::new();
        runtime.set_available(false);
        let endpoint = futures::executor::block_on(runtime.driver(gateway_id()).info()).endpoint;
        (Arc::new(runtime.driver(gateway_id())), endpoint)
    }
    fn image(&self) -> String {
        TEST_IMAGE.into()
    }
    fn failing_command(&self) -> Vec<String> {
        vec![FakeDriver::FAILING_PROGRAM.into()]
    }
    async fn print(&self, st: &WorkloadStatus, line: &str) {
        self.driver.print(&st.id, line).unwrap();
    }
    async fn exit(&self, st: &WorkloadStatus, code: i64) {
        self.driver.exit(&st.id, code).unwrap();
    }
    async fn write_file(&self, st: &WorkloadStatus, path: &str, data: &str) {
        self.driver
            .write_file(&st.id, path, data.as_bytes())
            .unwrap();
    }
    async fn read_file(&self, st: &WorkloadStatus, path: &str) -> Option<String> {
        let data = self.driver.read_file(&st.id, path).unwrap()?;
        Some(String::from_utf8(data).unwrap())
    }
    async fn observe(&self, _: &WorkloadStatus) -> Option<Observed> {
        None
    }
    fn prints_started(&self) -> bool {
        false
    }
    async fn exists(&self, runtime_id: &str) -> bool {
        let all = self.driver.runtime().all_workloads();
        let ids: Vec<_> = all.iter().map(|(_, id, _)| id.clone()).collect();
        // The fake's runtime ids are `fake-N`; map them through the driver's view.
        for id in ids {
            for d in [&self.driver, &self.other] {
                if let Ok(st) = d.get(&id).await
                    && st.runtime_id == runtime_id
                {
                    return true;
                }
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------------------
// Real runtimes

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Docker,
    Podman,
}

/// A running container runtime and how to reach it.
struct Runtime {
    kind: Kind,
    socket: PathBuf,
    /// For Podman: the containers.conf the service and the CLI use.
    containers_conf: Option<PathBuf>,
}

/// Keeps services started by the harness alive until the test process exits: each runs
/// under a shell that stops it when its stdin (held here) closes.
static KEEPALIVE: Mutex<Vec<Child>> = Mutex::new(Vec::new());

/// `GET /_ping` on a Docker-API socket.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK")
}

fn wait_for_ping(socket: &Path, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ping(socket) {
        assert!(
            Instant::now() < deadline,
            "{what} did not answer on {} within 60 s; its log:\n{}{}",
            socket.display(),
            std::fs::read_to_string(log).unwrap_or_default(),
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `program args` in the background under a shell that stops it when the returned
/// child's stdin closes (dropped, or this process exits). Output goes to `log` (stdout)
/// and `log`.err (stderr).
fn spawn_service(program: &str, args: &[&str], envs: &[(&str, &Path)], log: &Path) -> Child {
    // CLEANUP_DIR (optional) is removed once the service has stopped.
    let script = r#"prog=$1; shift; "$prog" "$@" & pid=$!; read -r _; kill "$pid"; wait "$pid"
        [ -z "$CLEANUP_DIR" ] || rm -rf "$CLEANUP_DIR""#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).arg("sh").arg(program).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

/// Stops a service started by [`spawn_service`] and waits for it.
fn stop_service(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Starts a Podman API service on a socket in `dir`; `conf` is its CONTAINERS_CONF.
/// With `cleanup`, `dir` is removed when the service stops.
fn start_podman_service(dir: &Path, conf: Option<&Path>, cleanup: bool) -> (Child, PathBuf) {
    let socket = dir.join("podman.sock");
    let log = dir.join("podman.log");
    let url = format!("unix://{}", socket.display());
    let mut envs: Vec<(&str, &Path)> = conf.map(|c| ("CONTAINERS_CONF", c)).into_iter().collect();
    if cleanup {
        envs.push(("CLEANUP_DIR", dir));
    }
    let child = spawn_service(
        "podman",
        &["system", "service", "--time=0", &url],
        &envs,
        &log,
    );
    wait_for_ping(&socket, "podman system service", &log);
    (child, socket)
}

/// A containers.conf whose default ulimits fit under this kind of host's hard limits:
/// Podman's defaults (1048576) exceed them when CAP_SYS_RESOURCE is missing, and runc then
/// fails every start.
fn write_containers_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=16384:16384\", \"nproc=16384:16384\"]\n",
    )
    .unwrap();
    conf
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Installs a Debian package when `program` is missing (as root).
fn need_package(program: &str, package: &str) {
    if run(Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}")))
    .status
    .success()
    {
        return;
    }
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if !install().status.success() {
        run_ok(Command::new("apt-get").args(["update", "-qq"]));
        let out = install();
        assert!(
            out.status.success(),
            "{program} is missing and `apt-get install {package}` failed (run as root, or install it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("openshell-drivers-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Runtime {
    fn docker() -> &'static Runtime {
        static DOCKER: OnceLock<Runtime> = OnceLock::new();
        DOCKER.get_or_init(|| {
            let socket = PathBuf::from(DOCKER_SOCKET);
            if !ping(&socket) {
                need_package("dockerd", "docker.io");
                let dir = scratch_dir("dockerd");
                let log = dir.join("dockerd.log");
                let dockerd = spawn_service("dockerd", &[], &[("CLEANUP_DIR", &dir)], &log);
                KEEPALIVE.lock().unwrap().push(dockerd);
                wait_for_ping(&socket, "dockerd", &log);
            }
            let rt = Runtime {
                kind: Kind::Docker,
                socket,
                containers_conf: None,
            };
            rt.ensure_image();
            rt
        })
    }

    fn podman() -> &'static Runtime {
        static PODMAN: OnceLock<Runtime> = OnceLock::new();
        PODMAN.get_or_init(|| {
            need_package("podman", "podman");
            let dir = scratch_dir("podman");
            let conf = write_containers_conf(&dir);
            let (service, socket) = start_podman_service(&dir, Some(&conf), true);
            KEEPALIVE.lock().unwrap().push(service);
            let rt = Runtime {
                kind: Kind::Podman,
                socket,
                containers_conf: Some(conf),
            };
            rt.ensure_image();
            rt
        })
    }

    /// The runtime's own CLI.
    fn cli(&self) -> Command {
        match self.kind {
            Kind::Docker => {
                let mut c = Command::new("docker");
                c.arg("-H").arg(format!("unix://{}", self.socket.display()));
                c
            }
            Kind::Podman => {
                let mut c = Command::new("podman");
                if let Some(conf) = &self.containers_conf {
                    c.env("CONTAINERS_CONF", conf);
                }
                c
            }
        }
    }

    async fn cli_async(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::from(self.cli());
        cmd.args(args);
        cmd.output().await.unwrap()
    }

    /// Builds the test image from busybox-static once; kept by tag for later runs.
    fn ensure_image(&self) {
        static BUILD: Mutex<()> = Mutex::new(());
        let _one_at_a_time = BUILD.lock().unwrap();
        if run(self.cli().args(["image", "inspect", TEST_IMAGE]))
            .status
            .success()
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let download = || {
            run(Command::new("apt-get")
                .args(["download", "-qq", "busybox-static"])
                .current_dir(dir.path()))
        };
        if !download().status.success() {
            run_ok(Command::new("apt-get").args(["update", "-qq"]));
            run_ok(
                Command::new("apt-get")
                    .args(["download", "-qq", "busybox-static"])
                    .current_dir(dir.path()),
            );
        }
        let deb = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .expect("apt-get download left no .deb");
        let root = dir.path().join("rootfs");
        run_ok(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
        let busybox = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| root.join(p))
            .find(|p| p.exists())
            .expect("busybox-static has no busybox binary");
        let bin = busybox.parent().unwrap().to_path_buf();
        let applets = run_ok(Command::new(&busybox).arg("--list")).stdout;
        for applet in String::from_utf8(applets).unwrap().lines() {
            let link = bin.join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", link).unwrap();
            }
        }
        if !root.join("bin").exists() {
            std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        }
        for d in ["tmp", "proc", "sys", "dev", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let tar = dir.path().join("rootfs.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        run_ok(
            self.cli()
                .args([
                    "import",
                    "--change",
                    "ENV PATH=/usr/bin:/bin:/usr/sbin:/sbin",
                ])
                .arg(&tar)
                .arg(TEST_IMAGE),
        );
    }

    fn settings() -> ContainerSettings {
        ContainerSettings {
            name_prefix: NAME_PREFIX.into(),
            stop_grace: Duration::from_secs(5),
            ..ContainerSettings::default()
        }
    }

    fn driver_at(&self, gateway: GatewayId, endpoint: Endpoint) -> Arc<dyn ComputeDriver> {
        match self.kind {
            Kind::Docker => {
                let mut c = DockerConfig::new(gateway).unwrap().with_endpoint(endpoint);
                c.containers = Self::settings();
                Arc::new(DockerDriver::new(c))
            }
            Kind::Podman => {
                let mut c = PodmanConfig::new(gateway).with_endpoint(endpoint);
                c.containers = Self::settings();
                Arc::new(PodmanDriver::new(c))
            }
        }
    }

    fn driver(&self, gateway: GatewayId) -> Arc<dyn ComputeDriver> {
        self.driver_at(gateway, Endpoint::Unix(self.socket.clone()))
    }

    /// Removes every container of `gateway` (only test gateways are passed here).
    fn remove_containers_of(&self, gateway: &GatewayId) {
        let filter = format!("label={LABEL_GATEWAY}={gateway}");
        let out = run(self.cli().args(["ps", "-aq", "--filter", &filter]));
        let ids = String::from_utf8_lossy(&out.stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            run(self.cli().args(["rm", "-f"]).args(&ids));
        }
        let out = run(self
            .cli()
            .args(["network", "ls", "-q", "--filter", &filter]));
        let nets = String::from_utf8_lossy(&out.stdout).to_string();
        let nets: Vec<&str> = nets.split_whitespace().collect();
        if !nets.is_empty() {
            run(self.cli().args(["network", "rm"]).args(&nets));
        }
    }
}

struct RealHarness {
    rt: &'static Runtime,
    gateway: GatewayId,
    other: GatewayId,
    driver: Arc<dyn ComputeDriver>,
    other_driver: Arc<dyn ComputeDriver>,
}

impl RealHarness {
    fn new(rt: &'static Runtime) -> Self {
        let (gateway, other) = (gateway_id(), gateway_id());
        Self {
            rt,
            driver: rt.driver(gateway.clone()),
            other_driver: rt.driver(other.clone()),
            gateway,
            other,
        }
    }

    async fn exec(&self, st: &WorkloadStatus, args: &[&str]) -> Output {
        let mut all = vec!["exec", st.runtime_id.as_str()];
        all.extend_from_slice(args);
        self.rt.cli_async(&all).await
    }

    async fn exec_ok(&self, st: &WorkloadStatus, args: &[&str]) {
        let out = self.exec(st, args).await;
        assert!(
            out.status.success(),
            "exec {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for RealHarness {
    fn drop(&mut self) {
        self.rt.remove_containers_of(&self.gateway);
        self.rt.remove_containers_of(&self.other);
    }
}

impl Harness for RealHarness {
    fn driver(&self) -> Arc<dyn ComputeDriver> {
        self.driver.clone()
    }
    fn other_driver(&self) -> Arc<dyn ComputeDriver> {
        self.other_driver.clone()
    }
    fn down_driver(&self) -> (Arc<dyn ComputeDriver>, String) {
        // Never created: nothing answers there.
        let socket = std::env::temp_dir()
            .join(format!("openshell-drivers-no-runtime-{}", random_hex(4)))
            .join("runtime.sock");
        let d = self
            .rt
            .driver_at(gateway_id(), Endpoint::Unix(socket.clone()));
        (d, socket.display().to_string())
    }
    fn image(&self) -> String {
        TEST_IMAGE.into()
    }
    fn failing_command(&self) -> Vec<String> {
        vec!["/no/such/program".into()]
    }
    async fn print(&self, st: &WorkloadStatus, line: &str) {
        self.exec_ok(st, &["sh", "-c", "echo \"$1\" > /proc/1/fd/1", "sh", line])
            .await;
    }
    async fn exit(&self, st: &WorkloadStatus, code: i64) {
        let code = code.to_string();
        self.exec_ok(
            st,
            &[
                "sh",
                "-c",
                "echo \"$1\" > /tmp/exit-code; kill -TERM 1",
                "sh",
                &code,
            ],
        )
        .await;
    }
    async fn write_file(&self, st: &WorkloadStatus, path: &str, data: &str) {
        self.exec_ok(
            st,
            &["sh", "-c", "printf %s \"$2\" > \"$1\"", "sh", path, data],
        )
        .await;
    }
    async fn read_file(&self, st: &WorkloadStatus, path: &str) -> Option<String> {
        let out = self.exec(st, &["cat", path]).await;
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    }
    async fn observe(&self, st: &WorkloadStatus) -> Option<Observed> {
        let out = self.rt.cli_async(&["inspect", &st.runtime_id]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let c = &v[0];
        let host = &c["HostConfig"];
        Some(Observed {
            env: serde_json::from_value(c["Config"]["Env"].clone()).unwrap_or_default(),
            labels: serde_json::from_value(c["Config"]["Labels"].clone()).unwrap_or_default(),
            nano_cpus: host["NanoCpus"].as_i64().unwrap_or(0),
            memory: host["Memory"].as_i64().unwrap_or(0),
            restart_policy: host["RestartPolicy"]["Name"].as_str().unwrap_or("").into(),
            ulimits: host["Ulimits"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| {
                    (
                        u["Name"].as_str().unwrap_or("").to_string(),
                        u["Soft"].as_i64().unwrap_or(0),
                        u["Hard"].as_i64().unwrap_or(0),
                    )
                })
                .collect(),
        })
    }
    fn prints_started(&self) -> bool {
        true
    }
    async fn exists(&self, runtime_id: &str) -> bool {
        self.rt
            .cli_async(&["inspect", runtime_id])
            .await
            .status
            .success()
    }
}

// ---------------------------------------------------------------------------------------
// Beyond the shared suite: timings, and Podman services of a test's own

/// Removes a gateway's containers when dropped.
struct RemoveOnDrop(&'static Runtime, GatewayId);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.0.remove_containers_of(&self.1);
    }
}

/// The driver's own ulimits let containers start on a service with no containers.conf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_starts_containers_without_a_containers_conf() {
    let rt = Runtime::podman();
    let dir = tempfile::tempdir().unwrap();
    let (service, socket) = start_podman_service(dir.path(), None, false);
    let gateway = gateway_id();
    let _cleanup = RemoveOnDrop(rt, gateway.clone());
    let d = rt.driver_at(gateway, Endpoint::Unix(socket));
    let id = SandboxId::generate();
    let s = SandboxSpec {
        command: vec!["/bin/sh".into(), "-c".into(), MAIN.into()],
        ..SandboxSpec::new(TEST_IMAGE)
    };
    let st = d.create(&id, &name("ulimits"), &s).await.unwrap();
    assert_eq!(st.state, WorkloadState::Running);
    let out = rt
        .cli_async(&["exec", &st.runtime_id, "sh", "-c", "ulimit -n; ulimit -u"])
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "16384\n16384\n");
    d.delete(&id).await.unwrap();
    stop_service(service);
}

/// The runtime goes away under a live driver and comes back: calls fail with
/// RuntimeUnavailable meanwhile, the watch ends with that error, the workload survives,
/// and the same driver works again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_driver_recovers_when_its_service_returns() {
    let rt = Runtime::podman();
    let dir = tempfile::tempdir().unwrap();
    let conf = write_containers_conf(dir.path());
    let (service, socket) = start_podman_service(dir.path(), Some(&conf), false);
    let gateway = gateway_id();
    let _cleanup = RemoveOnDrop(rt, gateway.clone());
    let d = rt.driver_at(gateway, Endpoint::Unix(socket.clone()));
    let id = SandboxId::generate();
    let s = SandboxSpec {
        command: vec!["/bin/sh".into(), "-c".into(), MAIN.into()],
        ..SandboxSpec::new(TEST_IMAGE)
    };
    let before = d.create(&id, &name("survivor"), &s).await.unwrap();
    let mut events = d.watch().await.unwrap();

    stop_service(service);
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("the watch ended without an error"),
            }
        }
    })
    .await
    .expect("the watch did not notice the outage within 30 s");
    assert!(
        matches!(end, DriverError::RuntimeUnavailable { .. }),
        "{end:?}"
    );
    assert!(
        events.next().await.is_none(),
        "the watch goes on after its error"
    );
    let e = d.get(&id).await.unwrap_err();
    assert!(matches!(e, DriverError::RuntimeUnavailable { .. }), "{e:?}");
    let socket_text = socket.display().to_string();
    assert!(e.to_string().contains(&socket_text), "{e}");
    assert!(e.to_string().contains("podman system service"), "{e}");
    assert!(!d.info().await.is_healthy());

    let (service, _) = start_podman_service(dir.path(), Some(&conf), false);
    let after = d.get(&id).await.unwrap();
    assert_eq!(
        after.state,
        WorkloadState::Running,
        "the workload did not survive"
    );
    assert_eq!(after.runtime_id, before.runtime_id);
    assert!(d.info().await.is_healthy());
    assert_eq!(d.list().await.unwrap().len(), 1);
    d.delete(&id).await.unwrap();
    stop_service(service);
}

/// Limits a runtime cannot honour come back as InvalidSpec with the reason, and leave
/// nothing behind.
async fn runtime_refusals_are_invalid_specs(rt: &'static Runtime) {
    let h = RealHarness::new(rt);
    let d = h.driver();
    let s = SandboxSpec {
        memory: Some(1024),
        ..spec(&h)
    };
    let e = d
        .create(&SandboxId::generate(), &name("tiny"), &s)
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::InvalidSpec(_)), "{e:?}");
    assert!(e.to_string().contains("memory"), "{e}");

    // More CPUs than the host has: Docker refuses it at create.
    let s = SandboxSpec {
        cpu: Some(1000.0),
        ..spec(&h)
    };
    let result = d.create(&SandboxId::generate(), &name("wide"), &s).await;
    eprintln!("{:?} with 1000 cpus: {result:?}", rt.kind);
    if rt.kind == Kind::Docker {
        let e = result.unwrap_err();
        assert!(matches!(e, DriverError::InvalidSpec(_)), "{e:?}");
        assert!(e.to_string().to_lowercase().contains("cpus"), "{e}");
        assert!(d.list().await.unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_refusals_are_invalid_specs() {
    runtime_refusals_are_invalid_specs(Runtime::docker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_refusals_are_invalid_specs() {
    runtime_refusals_are_invalid_specs(Runtime::podman()).await;
}

/// Hardening (issue 14, items 3 and 6) on a real runtime: the credential is delivered as
/// root-only files and appears nowhere in what the runtime shows; all capabilities but the
/// supervisor's are dropped with no-new-privileges; each sandbox has a network of its own, so
/// one cannot reach another's ports (the test process, on the host, can: the listener is up);
/// delete removes the network.
async fn sandboxes_are_confined_and_apart(rt: &'static Runtime) {
    let h = RealHarness::new(rt);
    let d = h.driver();
    let mut credentials = openshell_drivers::Credentials::default();
    credentials
        .insert("tls.key", "-----BEGIN PRIVATE KEY-----\nSECRET-MATERIAL\n")
        .unwrap();
    let with_credential = SandboxSpec {
        credentials,
        ..spec(&h)
    };
    let (ida, idb) = (SandboxId::generate(), SandboxId::generate());
    let a = d
        .create(&ida, &name("conf-a"), &with_credential)
        .await
        .unwrap();
    let a = running(&h, d.as_ref(), a).await;
    let b = d.create(&idb, &name("conf-b"), &spec(&h)).await.unwrap();
    let b = running(&h, d.as_ref(), b).await;

    // The files: root's alone.
    let out = h
        .exec(
            &a,
            &[
                "stat",
                "-c",
                "%a %u %n",
                "/run/openshell",
                "/run/openshell/credentials",
                "/run/openshell/credentials/tls.key",
            ],
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "700 0 /run/openshell\n700 0 /run/openshell/credentials\n400 0 /run/openshell/credentials/tls.key\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.read_file(&a, "/run/openshell/credentials/tls.key")
            .await
            .as_deref(),
        Some("-----BEGIN PRIVATE KEY-----\nSECRET-MATERIAL\n")
    );
    // Nothing of it in the runtime's view of the container, nor read back.
    let inspect = rt.cli_async(&["inspect", &a.runtime_id]).await;
    let inspect = String::from_utf8_lossy(&inspect.stdout).to_string();
    assert!(!inspect.contains("SECRET-MATERIAL"), "{inspect}");
    assert!(d.get(&ida).await.unwrap().spec.credentials.is_empty());
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let host = &v[0]["HostConfig"];
    // Podman lists what "ALL" dropped from its defaults; the bounding set below is the proof.
    if rt.kind == Kind::Docker {
        let caps: Vec<String> = serde_json::from_value(host["CapDrop"].clone()).unwrap();
        assert!(caps.iter().any(|c| c.eq_ignore_ascii_case("ALL")), "{host}");
    }
    let opts: Vec<String> = serde_json::from_value(host["SecurityOpt"].clone()).unwrap();
    assert!(
        opts.iter().any(|o| o.starts_with("no-new-privileges")),
        "{host}"
    );
    // What the process really has: the supervisor's few capabilities, no new privileges.
    let status = h.read_file(&a, "/proc/1/status").await.unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    // CHOWN (0), KILL (5), SETGID (6), SETUID (7).
    assert_eq!(field("CapBnd:"), "00000000000000e1", "{status}");

    // Apart: each on its own network; a's listener answers the host, not b.
    let ip_of = |st: &WorkloadStatus| {
        let st = st.runtime_id.clone();
        async move {
            let out = rt
                .cli_async(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                    &st,
                ])
                .await;
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    let (ip_a, ip_b) = (ip_of(&a).await, ip_of(&b).await);
    assert!(!ip_a.is_empty() && !ip_b.is_empty() && !ip_a.contains(' '));
    assert!(
        ip_a.starts_with("10.213.") && ip_b.starts_with("10.213."),
        "{ip_a} {ip_b}"
    );
    h.exec_ok(
        &a,
        &["sh", "-c", "nc -ll -p 7000 -e echo hi >/dev/null 2>&1 &"],
    )
    .await;
    let addr: std::net::SocketAddr = format!("{ip_a}:7000").parse().unwrap();
    eventually(
        "a's listener answers the host",
        Duration::from_secs(10),
        || async { std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() },
    )
    .await;
    let probe = h
        .exec(&b, &["sh", "-c", &format!("echo | nc -w 2 {ip_a} 7000")])
        .await;
    assert!(
        !String::from_utf8_lossy(&probe.stdout).contains("hi"),
        "sandbox b reached sandbox a's port: {probe:?}"
    );

    // A fresh credential replaces the delivered one (for a start after a long stop), still
    // root-only; what it does not name stays.
    let mut fresh = openshell_drivers::Credentials::default();
    fresh.insert("tls.crt", "FRESH-CERT").unwrap();
    d.refresh_credentials(&ida, &fresh).await.unwrap();
    let out = h
        .exec(
            &a,
            &[
                "sh",
                "-c",
                "cat /run/openshell/credentials/tls.crt; stat -c ' %a %u' /run/openshell/credentials/tls.crt; test -s /run/openshell/credentials/tls.key && echo kept",
            ],
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FRESH-CERT 400 0\nkept\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let network = format!("{NAME_PREFIX}net-{ida}");
    assert!(
        run(rt.cli().args(["network", "inspect", &network]))
            .status
            .success()
    );
    d.delete(&ida).await.unwrap();
    assert!(
        !run(rt.cli().args(["network", "inspect", &network]))
            .status
            .success(),
        "the sandbox's network outlived it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sandboxes_are_confined_and_apart() {
    sandboxes_are_confined_and_apart(Runtime::docker()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_sandboxes_are_confined_and_apart() {
    sandboxes_are_confined_and_apart(Runtime::podman()).await;
}

// ---------------------------------------------------------------------------------------
// Kubernetes: a real kube-apiserver on etcd (openshell_tests::kube), one namespace per test.

struct KubeHarness {
    cluster: &'static KubeCluster,
    ns: String,
    driver: Arc<dyn ComputeDriver>,
    other: Arc<dyn ComputeDriver>,
    down: (Arc<dyn ComputeDriver>, String),
}

impl KubeHarness {
    async fn new() -> Self {
        let cluster = KubeCluster::shared();
        let ns = cluster.create_namespace(&format!("conformance-{}", random_hex(3)));
        let kubeconfig = cluster.kubeconfig(kube::ADMIN, &ns);
        let connect = |gateway: GatewayId, kubeconfig: PathBuf| async move {
            let mut config = KubernetesConfig::new(gateway).with_kubeconfig(kubeconfig);
            config.name_prefix = NAME_PREFIX.into();
            let d: Arc<dyn ComputeDriver> =
                Arc::new(KubernetesDriver::connect(config).await.unwrap());
            d
        };
        // A kubeconfig pointing at a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down_url = format!("https://127.0.0.1:{port}");
        let text = std::fs::read_to_string(&kubeconfig)
            .unwrap()
            .replace(&cluster.url, &down_url);
        let down_config = cluster.dir().join(format!("down-{}", random_hex(4)));
        std::fs::write(&down_config, text).unwrap();
        Self {
            driver: connect(gateway_id(), kubeconfig.clone()).await,
            other: connect(gateway_id(), kubeconfig).await,
            down: (connect(gateway_id(), down_config).await, down_url),
            cluster,
            ns,
        }
    }

    fn pod(&self, st: &WorkloadStatus) -> serde_json::Value {
        let name = st.runtime_id.rsplit('/').next().unwrap();
        self.cluster.api(
            "GET",
            &format!("/api/v1/namespaces/{}/pods/{name}", self.ns),
            None,
        )
    }
}

impl Harness for KubeHarness {
    fn driver(&self) -> Arc<dyn ComputeDriver> {
        self.driver.clone()
    }
    fn other_driver(&self) -> Arc<dyn ComputeDriver> {
        self.other.clone()
    }
    fn down_driver(&self) -> (Arc<dyn ComputeDriver>, String) {
        self.down.clone()
    }
    fn image(&self) -> String {
        TEST_IMAGE.into()
    }
    fn failing_command(&self) -> Vec<String> {
        unreachable!("no kubelet starts commands here")
    }
    async fn print(&self, _: &WorkloadStatus, _: &str) {
        unreachable!("no kubelet runs the pods here")
    }
    async fn exit(&self, _: &WorkloadStatus, _: i64) {
        unreachable!("no kubelet runs the pods here")
    }
    async fn write_file(&self, _: &WorkloadStatus, _: &str, _: &str) {
        unreachable!("no kubelet runs the pods here")
    }
    async fn read_file(&self, _: &WorkloadStatus, _: &str) -> Option<String> {
        unreachable!("no kubelet runs the pods here")
    }
    async fn observe(&self, st: &WorkloadStatus) -> Option<Observed> {
        let pod = self.pod(st);
        let container = &pod["spec"]["containers"][0];
        let mut env = Vec::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap();
            // An empty value is left out of the stored object.
            let value = var["value"].as_str().unwrap_or_default().to_string();
            env.push(format!("{name}={value}"));
        }
        let limits = &container["resources"]["limits"];
        let cpu = limits["cpu"].as_str().unwrap_or("0");
        let nano_cpus = match cpu.strip_suffix('m') {
            Some(milli) => milli.parse::<i64>().unwrap() * 1_000_000,
            None => cpu.parse::<i64>().unwrap() * 1_000_000_000,
        };
        Some(Observed {
            env,
            labels: serde_json::from_value(pod["metadata"]["labels"].clone()).unwrap(),
            nano_cpus,
            memory: limits["memory"].as_str().unwrap_or("0").parse().unwrap(),
            restart_policy: pod["spec"]["restartPolicy"].as_str().unwrap().to_string(),
            ulimits: Vec::new(),
        })
    }
    async fn exists(&self, runtime_id: &str) -> bool {
        let name = runtime_id.rsplit('/').next().unwrap();
        self.cluster
            .names(&self.ns, "pods")
            .iter()
            .any(|p| p == name)
            || self
                .cluster
                .names(&self.ns, "secrets")
                .iter()
                .any(|s| s == name)
    }
    fn prints_started(&self) -> bool {
        false
    }
    async fn node_starts(&self, st: &WorkloadStatus) {
        let name = st.runtime_id.rsplit('/').next().unwrap();
        self.cluster.set_pod_running(&self.ns, name);
    }
}
