//! The Kubernetes driver against a real kube-apiserver (1.20, on etcd, started by
//! [`KubeCluster`]): Pods and Secrets with ownership labels, the credential only in the
//! Secret, watch, stop/start, RBAC denial, a missing namespace or kubeconfig, an apiserver
//! that goes away and comes back; and end to end through the gateway and the CLI, with the
//! test playing the node (it marks the Pod Running and starts the real supervisor with the
//! Pod's environment), so the sandbox really becomes Ready.
//!
//! The shared conformance suite runs against this driver too (tests/tests/drivers.rs).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openshell_driver_kubernetes::{KubeError, KubernetesConfig, KubernetesDriver, PullPolicy};
use openshell_drivers::{
    ComputeDriver, DriverError, GatewayId, SandboxId, SandboxName, SandboxSpec, WorkloadEvent,
    WorkloadState,
};
use openshell_tests::kube::{ADMIN, KubeCluster, NOBODY, secret_value};
use openshell_tests::{CliUser, Gateway, assert_eventually};

fn random_hex(n: usize) -> String {
    hex::encode((0..n).map(|_| rand::random::<u8>()).collect::<Vec<_>>())
}

/// A namespace of its own for one test, in the shared cluster.
fn namespace(cluster: &KubeCluster, tag: &str) -> String {
    cluster.create_namespace(&format!("{tag}-{}", random_hex(3)))
}

async fn driver(cluster: &KubeCluster, ns: &str, token: &str) -> KubernetesDriver {
    let gw = GatewayId::new(format!("kt-{}", random_hex(4))).unwrap();
    let config = KubernetesConfig::new(gw)
        .with_kubeconfig(cluster.kubeconfig(token, ns))
        .with_namespace(ns);
    KubernetesDriver::connect(config).await.unwrap()
}

fn spec() -> SandboxSpec {
    let mut credentials = openshell_drivers::Credentials::default();
    credentials.insert("tls.key", "very secret key").unwrap();
    credentials.insert("tls.crt", "cert").unwrap();
    credentials.insert("ca.pem", "ca").unwrap();
    SandboxSpec {
        command: vec!["/bin/sleep".into(), "600".into()],
        env: [
            (
                "OPENSHELL_ENDPOINT".into(),
                "https://gw.example:17670".into(),
            ),
            ("GREETING".into(), "hello".into()),
        ]
        .into(),
        credentials,
        ..SandboxSpec::new("openshell/sandbox:dev")
    }
}

/// Waits until the driver reports `want` (the node's reports reach it through its watch).
async fn state_soon(d: &KubernetesDriver, id: &SandboxId, want: WorkloadState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = d.get(id).await.unwrap().state;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {now:?}, not {want:?}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sandbox_name(tag: &str) -> SandboxName {
    SandboxName::new(format!("{tag}-{}", random_hex(3))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_is_a_labelled_pod_with_its_credential_in_a_secret() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "shape");
    let gw = GatewayId::new(format!("kt-{}", random_hex(4))).unwrap();
    let mut config = KubernetesConfig::new(gw.clone())
        .with_kubeconfig(c.kubeconfig(ADMIN, "default"))
        .with_namespace(&ns);
    c.create_service_account(&ns, "runner");
    let rc = serde_json::json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": format!("gvisor-{ns}")}, "handler": "runsc"});
    c.api(
        "POST",
        "/apis/node.k8s.io/v1/runtimeclasses",
        Some(&rc.to_string()),
    );
    config.service_account = Some("runner".into());
    config.runtime_class = Some(format!("gvisor-{ns}"));
    config.image_pull_policy = PullPolicy::Never;
    let d = KubernetesDriver::connect(config).await.unwrap();

    let info = d.info().await;
    assert!(info.is_healthy(), "{info:?}");
    assert_eq!(info.version.as_deref(), Some("v1.20.2"));
    assert!(info.endpoint.contains(&c.url), "{info:?}");

    let id = SandboxId::generate();
    let name = sandbox_name("shape");
    let mut s = spec();
    s.cpu = Some(0.5);
    s.memory = Some(64 << 20);
    s.labels = [("team".into(), "edge".into())].into();
    let st = d.create(&id, &name, &s).await.unwrap();
    // No kubelet has looked at it yet.
    assert_eq!(st.state, WorkloadState::Creating);
    assert_eq!(
        st.spec,
        SandboxSpec {
            credentials: Default::default(),
            ..s.clone()
        },
        "the spec reads back whole, without the credential"
    );
    let object = format!("openshell-{name}");
    assert_eq!(st.runtime_id, format!("{ns}/{object}"));
    assert_eq!(c.names(&ns, "pods"), std::slice::from_ref(&object));
    assert_eq!(c.names(&ns, "secrets"), std::slice::from_ref(&object));

    // The Pod as the apiserver stores it.
    let pod = c.api(
        "GET",
        &format!("/api/v1/namespaces/{ns}/pods/{object}"),
        None,
    );
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["openshell.managed"], "true");
    assert_eq!(labels["openshell.gateway"], gw.as_str());
    assert_eq!(labels["openshell.sandbox-id"], id.as_str());
    assert_eq!(labels["openshell.sandbox-name"], name.as_str());
    assert_eq!(labels["team"], "edge");
    let spec_json = &pod["spec"];
    assert_eq!(spec_json["restartPolicy"], "Never");
    assert_eq!(spec_json["serviceAccountName"], "runner");
    assert_eq!(spec_json["runtimeClassName"], format!("gvisor-{ns}"));
    assert_eq!(spec_json["automountServiceAccountToken"], false);
    let container = &spec_json["containers"][0];
    assert_eq!(container["imagePullPolicy"], "Never");
    assert_eq!(container["resources"]["limits"]["cpu"], "500m");
    assert_eq!(container["resources"]["requests"]["cpu"], "500m");
    assert_eq!(
        container["resources"]["limits"]["memory"],
        (64u64 << 20).to_string()
    );
    let pod_text = pod.to_string();
    assert!(
        !pod_text.contains("very secret key"),
        "the credential is inline in the pod: {pod_text}"
    );
    let env: BTreeMap<String, serde_json::Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    assert_eq!(
        env["OPENSHELL_ENDPOINT"]["value"], "https://gw.example:17670",
        "the callback endpoint is in the pod's environment"
    );
    assert!(
        !env.keys().any(|k| k.starts_with("OPENSHELL_TLS")),
        "credential variables in the pod: {env:?}"
    );
    // The credential: a root-only Secret volume at the supervisor's credential directory.
    let volume = &spec_json["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], object.as_str(), "{volume}");
    assert_eq!(volume["secret"]["defaultMode"], 0o400, "{volume}");
    let mount = &container["volumeMounts"][0];
    assert_eq!(mount["name"], volume["name"], "{mount}");
    assert_eq!(mount["mountPath"], "/run/openshell/credentials");
    assert_eq!(mount["readOnly"], true);
    assert_eq!(
        secret_value(c, &ns, &object, "tls.key").as_deref(),
        Some("very secret key")
    );
    // A start after a long stop gets a fresh credential: the Secret's files are replaced,
    // the ones not named stay.
    let mut fresh = openshell_drivers::Credentials::default();
    fresh.insert("tls.key", "fresh key").unwrap();
    d.refresh_credentials(&id, &fresh).await.unwrap();
    assert_eq!(
        secret_value(c, &ns, &object, "tls.key").as_deref(),
        Some("fresh key")
    );
    assert_eq!(
        secret_value(c, &ns, &object, "tls.crt").as_deref(),
        Some("cert")
    );
    // Few capabilities, no privilege escalation.
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false, "{security}");
    assert_eq!(security["capabilities"]["drop"][0], "ALL", "{security}");
    // No ingress to the sandbox: its own NetworkPolicy, selecting it by id.
    let policy = c.api(
        "GET",
        &format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{object}"),
        None,
    );
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["openshell.sandbox-id"],
        id.as_str(),
        "{policy}"
    );
    assert_eq!(policy["spec"]["policyTypes"][0], "Ingress", "{policy}");
    assert!(
        policy["spec"]["ingress"]
            .as_array()
            .is_none_or(|rules| rules.is_empty()),
        "{policy}"
    );
    let secret = c.api(
        "GET",
        &format!("/api/v1/namespaces/{ns}/secrets/{object}"),
        None,
    );
    assert_eq!(
        secret["metadata"]["labels"]["openshell.sandbox-id"],
        id.as_str()
    );

    // get and list agree; another gateway on the same namespace sees nothing.
    assert_eq!(d.get(&id).await.unwrap(), st);
    assert_eq!(d.list().await.unwrap(), std::slice::from_ref(&st));
    let other = KubernetesDriver::connect(
        KubernetesConfig::new(GatewayId::new("someone-else").unwrap())
            .with_kubeconfig(c.kubeconfig(ADMIN, &ns)),
    )
    .await
    .unwrap();
    assert!(other.list().await.unwrap().is_empty());
    assert!(matches!(
        other.get(&id).await,
        Err(DriverError::NotFound { .. })
    ));
    other.delete(&id).await.unwrap();
    assert_eq!(c.names(&ns, "pods"), std::slice::from_ref(&object));

    // The same name again is refused, and leaves nothing.
    let e = d
        .create(&SandboxId::generate(), &name, &spec())
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::AlreadyExists { .. }), "{e:?}");
    assert!(e.to_string().contains(name.as_str()), "{e}");

    // No node runs it yet: no output (the apiserver answers an empty log).
    let lines: Vec<_> = d
        .logs(&id, openshell_drivers::LogOptions::default())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(lines.is_empty(), "{lines:?}");

    // The node reports the pod running, then its main process exits.
    c.set_pod_running(&ns, &object);
    state_soon(&d, &id, WorkloadState::Running).await;
    c.set_pod_exited(&ns, &object, 3);
    state_soon(&d, &id, WorkloadState::Stopped { exit_code: 3 }).await;

    // Delete removes the Pod and the Secret; again is fine.
    d.delete(&id).await.unwrap();
    assert!(c.names(&ns, "pods").is_empty());
    assert!(c.names(&ns, "secrets").is_empty());
    assert!(matches!(
        d.get(&id).await,
        Err(DriverError::NotFound { .. })
    ));
    d.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_deletes_the_pod_and_start_recreates_it_from_the_secret() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "stop");
    let d = driver(c, &ns, ADMIN).await;
    let id = SandboxId::generate();
    let name = sandbox_name("stop");
    let object = format!("openshell-{name}");
    let created = d.create(&id, &name, &spec()).await.unwrap();
    c.set_pod_running(&ns, &object);
    let uid = |c: &KubeCluster| {
        c.api(
            "GET",
            &format!("/api/v1/namespaces/{ns}/pods/{object}"),
            None,
        )["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = uid(c);

    let stopped = d.stop(&id).await.unwrap();
    assert_eq!(stopped.state, WorkloadState::Stopped { exit_code: 0 });
    assert_eq!(stopped.spec, created.spec);
    assert!(c.names(&ns, "pods").is_empty(), "the pod is still there");
    assert_eq!(c.names(&ns, "secrets"), std::slice::from_ref(&object));
    assert_eq!(d.list().await.unwrap(), std::slice::from_ref(&stopped));
    // Stopping again is fine.
    assert_eq!(d.stop(&id).await.unwrap(), stopped);

    let started = d.start(&id).await.unwrap();
    assert_eq!(started.state, WorkloadState::Creating);
    assert_eq!(started.spec, created.spec, "the same spec and credential");
    assert_eq!(started.runtime_id, created.runtime_id);
    assert_ne!(uid(c), first, "a new pod");
    // A running pod is left alone by start.
    c.set_pod_running(&ns, &object);
    let second = uid(c);
    assert_eq!(d.start(&id).await.unwrap().state, WorkloadState::Running);
    assert_eq!(uid(c), second);
    // An exited pod is replaced.
    c.set_pod_exited(&ns, &object, 1);
    assert_eq!(d.start(&id).await.unwrap().state, WorkloadState::Creating);
    assert_ne!(uid(c), second);

    d.delete(&id).await.unwrap();
    for r in [d.start(&id).await, d.stop(&id).await] {
        let e = r.unwrap_err();
        assert!(matches!(e, DriverError::NotFound { .. }), "{e:?}");
    }
}

async fn expect(events: &mut openshell_drivers::EventStream, id: &SandboxId, want: WorkloadState) {
    // The apiserver may report a state more than once (a delete is a modification first).
    let mut seen = Vec::new();
    loop {
        let e = next_event(events).await;
        assert_eq!(&e.id, id, "an event for another sandbox: {e:?}");
        if e.state == want {
            return;
        }
        assert!(seen.len() < 5, "no {want:?} event; saw {seen:?}");
        seen.push(e.state);
    }
}

async fn next_event(events: &mut openshell_drivers::EventStream) -> WorkloadEvent {
    match tokio::time::timeout(Duration::from_secs(20), events.next()).await {
        Ok(Some(Ok(e))) => e,
        other => panic!("no event within 20 s: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_the_pods_through_the_apiserver() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "watch");
    let d = driver(c, &ns, ADMIN).await;
    let mut events = d.watch().await.unwrap();
    // Another gateway's sandbox in the same namespace never shows.
    let other = driver(c, &ns, ADMIN).await;
    other
        .create(&SandboxId::generate(), &sandbox_name("noise"), &spec())
        .await
        .unwrap();

    let id = SandboxId::generate();
    let name = sandbox_name("watched");
    let object = format!("openshell-{name}");
    d.create(&id, &name, &spec()).await.unwrap();
    expect(&mut events, &id, WorkloadState::Creating).await;
    c.set_pod_running(&ns, &object);
    expect(&mut events, &id, WorkloadState::Running).await;
    c.set_pod_exited(&ns, &object, 7);
    expect(&mut events, &id, WorkloadState::Stopped { exit_code: 7 }).await;
    d.stop(&id).await.unwrap();
    expect(&mut events, &id, WorkloadState::Stopped { exit_code: 0 }).await;
    d.start(&id).await.unwrap();
    expect(&mut events, &id, WorkloadState::Creating).await;
    d.delete(&id).await.unwrap();
    expect(&mut events, &id, WorkloadState::Missing).await;

    // A stopped sandbox has no pod: its deletion is seen through its Secret.
    let id2 = SandboxId::generate();
    d.create(&id2, &sandbox_name("quiet"), &spec())
        .await
        .unwrap();
    d.stop(&id2).await.unwrap();
    let mut seen = Vec::new();
    for want in [
        WorkloadState::Stopped { exit_code: 0 },
        WorkloadState::Missing,
    ] {
        loop {
            let e = next_event(&mut events).await;
            // The Pod and Secret watches are separate streams: late events of the first
            // sandbox (a second Missing) may still arrive.
            if e.id == id {
                continue;
            }
            assert_eq!(e.id, id2, "{e:?}");
            seen.push(e.state.clone());
            if e.state == want {
                break;
            }
            assert!(seen.len() < 6, "no {want:?}; saw {seen:?}");
        }
        if want != WorkloadState::Missing {
            d.delete(&id2).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_clearly_and_leaves_nothing() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "bad");

    // A kubeconfig that is not there.
    let missing = c.dir().join("no-such-kubeconfig");
    let e = KubernetesDriver::connect(
        KubernetesConfig::new(GatewayId::new("gw").unwrap()).with_kubeconfig(&missing),
    )
    .await
    .err()
    .expect("a missing kubeconfig was accepted");
    assert!(matches!(e, KubeError::KubeconfigMissing { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&missing.display().to_string()) && msg.contains("--kubeconfig"),
        "{msg}"
    );
    // A kubeconfig that is not one.
    let junk = c.dir().join("junk-kubeconfig");
    std::fs::write(&junk, "this: [is not a kubeconfig").unwrap();
    let e = KubernetesDriver::connect(
        KubernetesConfig::new(GatewayId::new("gw").unwrap()).with_kubeconfig(&junk),
    )
    .await
    .err()
    .expect("a broken kubeconfig was accepted");
    assert!(matches!(e, KubeError::Kubeconfig { .. }), "{e:?}");
    // A namespace name that cannot be one.
    let e = KubernetesDriver::connect(
        KubernetesConfig::new(GatewayId::new("gw").unwrap())
            .with_kubeconfig(c.kubeconfig(ADMIN, &ns))
            .with_namespace("Not_A_Namespace"),
    )
    .await
    .err()
    .expect("a bad namespace was accepted");
    assert!(e.to_string().contains("Not_A_Namespace"), "{e}");

    // A namespace that does not exist: info says so, create fails and makes nothing.
    let gone = format!("missing-{}", random_hex(3));
    let d = driver(c, &gone, ADMIN).await;
    let info = d.info().await;
    assert!(
        matches!(&info.health, openshell_drivers::DriverHealth::Unhealthy(why) if why.contains(&format!("namespace `{gone}` does not exist"))),
        "{info:?}"
    );
    let e = d
        .create(&SandboxId::generate(), &sandbox_name("x"), &spec())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("namespace `{gone}` does not exist"))
            && msg.contains("kubectl create namespace"),
        "{msg}"
    );
    assert!(!e.is_transient());

    // A user RBAC refuses everything.
    let d = driver(c, &ns, NOBODY).await;
    let e = d
        .create(&SandboxId::generate(), &sandbox_name("x"), &spec())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("403 Forbidden") && msg.contains("RBAC"),
        "{msg}"
    );
    assert!(msg.contains(&format!("namespace `{ns}`")), "{msg}");
    assert!(d.list().await.unwrap_err().to_string().contains("403"));
    // A token the apiserver does not know.
    let d = driver(c, &ns, "made-up-token").await;
    let info = d.info().await;
    assert!(!info.is_healthy(), "{info:?}");
    let e = d.list().await.unwrap_err().to_string();
    assert!(e.contains("401 Unauthorized"), "{e}");

    // A spec the apiserver refuses once the Secret exists: the Secret goes again.
    let d = driver(c, &ns, ADMIN).await;
    let bad_label = SandboxSpec {
        labels: [("team".into(), "not a label value!".into())].into(),
        ..spec()
    };
    let e = d
        .create(&SandboxId::generate(), &sandbox_name("lbl"), &bad_label)
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::InvalidSpec(_)), "{e:?}");
    assert!(e.to_string().contains("not a label value!"), "{e}");
    let e = d
        .create(
            &SandboxId::generate(),
            &sandbox_name("cpu"),
            &SandboxSpec {
                cpu: Some(0.0001),
                ..spec()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::InvalidSpec(_)), "{e:?}");
    assert!(
        c.names(&ns, "pods").is_empty(),
        "{:?}",
        c.names(&ns, "pods")
    );
    assert!(
        c.names(&ns, "secrets").is_empty(),
        "{:?}",
        c.names(&ns, "secrets")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_that_goes_away_is_reported_and_records_survive() {
    // A cluster of its own: this test stops its apiserver.
    let c = KubeCluster::start();
    let ns = c.create_namespace("down");
    let d = driver(&c, &ns, ADMIN).await;
    let id = SandboxId::generate();
    let created = d.create(&id, &sandbox_name("kept"), &spec()).await.unwrap();
    let mut events = d.watch().await.unwrap();

    // Status comes from the driver's watch, not from asking the apiserver on every read:
    // many reads, (almost) no list requests (the apiserver's own request counter; this
    // cluster serves this test only).
    let lists = || {
        c.curl(ADMIN, "GET", "/metrics", None)
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_request_total{")
                    && l.contains("verb=\"LIST\"")
                    && (l.contains("resource=\"pods\"") || l.contains("resource=\"secrets\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    // The driver's copy syncs right after it starts (a list and a watch).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = lists();
    for _ in 0..25 {
        assert_eq!(d.get(&id).await.unwrap(), created);
        assert_eq!(d.list().await.unwrap().len(), 1);
    }
    let after = lists();
    assert!(
        after - before <= 2.0,
        "50 reads made {} list requests",
        after - before
    );

    c.stop_apiserver();
    // Reads come from the driver's watched copy until its watch notices (at once, as
    // the connection closes).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while d.list().await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "list still answers 10 s after the apiserver stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = d.info().await;
    assert!(!info.is_healthy(), "{info:?}");
    assert_eq!(info.version, None);
    let results = [
        d.create(&SandboxId::generate(), &sandbox_name("down"), &spec())
            .await
            .map(|_| ()),
        d.get(&id).await.map(|_| ()),
        d.list().await.map(|_| ()),
        d.delete(&id).await,
        d.stop(&id).await.map(|_| ()),
        d.watch().await.map(|_| ()),
    ];
    for r in results {
        let e = r.unwrap_err();
        assert!(matches!(e, DriverError::RuntimeUnavailable { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&c.url),
            "{e} does not name {}",
            c.url
        );
        assert!(e.is_transient());
    }
    // The open watch ends with the same kind of error.
    let end = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("the watch did not notice the apiserver going away");
    match end {
        Some(Err(e)) => assert!(e.is_transient(), "{e:?}"),
        other => panic!("expected an error, got {other:?}"),
    }

    // Back again: the same driver works and nothing was lost.
    c.start_apiserver();
    assert!(d.info().await.is_healthy());
    assert_eq!(d.get(&id).await.unwrap(), created);
    d.delete(&id).await.unwrap();
    assert!(d.list().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// End to end: gateway + CLI + the real supervisor, the test playing the node.

/// Plays the kubelet for the sandbox Pods of `ns`: marks each new Pod Running and starts
/// the real supervisor for it as a local process, with the environment the Pod would get
/// (plain values from the Pod spec, `secretKeyRef` values from the Secret) and the Pod's
/// command after `--`. Stops a supervisor when its Pod is deleted.
struct Node {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(cluster: &'static KubeCluster, ns: String) -> Node {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let supervisor = openshell_tests::bin("openshell-sandbox");
        let thread = std::thread::spawn(move || {
            let mut running: BTreeMap<String, (String, Child)> = BTreeMap::new();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                let pods = cluster.api("GET", &format!("/api/v1/namespaces/{ns}/pods"), None);
                let mut live = Vec::new();
                for pod in pods["items"].as_array().into_iter().flatten() {
                    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
                    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
                    live.push(uid.clone());
                    if running.contains_key(&uid) {
                        continue;
                    }
                    let child = run_pod(cluster, &ns, pod, &supervisor);
                    cluster.set_pod_running(&ns, &name);
                    running.insert(uid, (name, child));
                }
                let gone: Vec<String> = running
                    .keys()
                    .filter(|uid| !live.contains(uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    let (_, mut child) = running.remove(&uid).unwrap();
                    let _ = child.kill();
                    let _ = child.wait();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            for (_, (_, mut child)) in running {
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        Node {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the supervisor as the Pod's container would run it.
fn run_pod(cluster: &KubeCluster, ns: &str, pod: &serde_json::Value, supervisor: &Path) -> Child {
    let container = &pod["spec"]["containers"][0];
    let mut cmd = Command::new(supervisor);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap();
        if let Some(v) = var["value"].as_str() {
            cmd.env(name, v);
        }
    }
    // The kubelet's part: the Secret volume's files, root-only, in a directory the
    // supervisor is pointed at (the Pod mounts it at /run/openshell/credentials). The
    // workload runs as `nobody`, a user of this host (the default `sandbox` is not).
    let secret = pod["spec"]["volumes"][0]["secret"]["secretName"]
        .as_str()
        .expect("the pod mounts no credential secret");
    let dir = std::env::temp_dir().join(format!("openshell-kube-cred-{}", random_hex(6)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for key in ["ca.pem", "tls.crt", "tls.key", "ssh_host_key"] {
        if let Some(v) = secret_value(cluster, ns, secret, key) {
            std::fs::write(dir.join(key), v).unwrap();
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o400))
                .unwrap();
        }
    }
    cmd.env("OPENSHELL_CREDENTIAL_DIR", &dir)
        .env("OPENSHELL_RUN_AS", "nobody");
    // The Pod runs /usr/local/bin/openshell-sandbox [-- COMMAND]; run this build's.
    let command: Vec<&str> = container["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        command[0].ends_with("openshell-sandbox"),
        "the pod does not run the supervisor: {command:?}"
    );
    cmd.args(&command[1..]);
    cmd.spawn().expect("cannot start openshell-sandbox")
}

struct Setup {
    u: CliUser,
    gw: Option<Gateway>,
    id: String,
    ns: String,
    kubeconfig: std::path::PathBuf,
    port: u16,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(cluster: &'static KubeCluster) -> Setup {
        let u = CliUser::new();
        u.run(&["pki", "init"]).ok();
        let ns = cluster.create_namespace(&format!("e2e-{}", random_hex(3)));
        let mut s = Setup {
            kubeconfig: cluster.kubeconfig(ADMIN, "default"),
            u,
            gw: None,
            id: format!("e2e-{}", random_hex(4)),
            ns,
            port: openshell_tests::free_port(),
            state: tempfile::tempdir().unwrap(),
        };
        s.gw = Some(s.spawn());
        s.u.enroll(s.port);
        s
    }

    fn spawn(&self) -> Gateway {
        // The supervisor runs on this host (the test is the node): it dials 127.0.0.1.
        Gateway::builder()
            .pki(&self.u.default_pki_dir())
            .state_dir(self.state.path())
            .listen(&format!("127.0.0.1:{}", self.port))
            .args_for_kube(&self.kubeconfig, &self.ns, self.port, &self.id)
            .spawn()
    }

    fn phase(&self, name: &str) -> String {
        self.u.sandbox_phase(name)
    }
}

#[test]
fn a_sandbox_becomes_ready_on_kubernetes_through_the_gateway() {
    let c = KubeCluster::shared();
    let mut s = Setup::new(c);
    let _node = Node::start(c, s.ns.clone());

    // gateway info: every compiled driver, kubernetes active with the apiserver's version.
    let info = s.u.run(&["gateway", "info", "-o", "json"]).ok().json();
    let drivers = info["compute_drivers"]
        .as_array()
        .expect("no compute_drivers");
    let names: Vec<&str> = drivers
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for want in ["kubernetes", "podman", "docker"] {
        assert!(names.contains(&want), "{info}");
    }
    let kube = drivers.iter().find(|d| d["name"] == "kubernetes").unwrap();
    assert_eq!(kube["active"], true, "{info}");
    assert_eq!(kube["driver_version"], "v1.20.2", "{info}");

    // Create waits until the supervisor (started by the "node") has connected back.
    let t = std::time::Instant::now();
    let r = s.u.run(&[
        "sandbox", "create", "--name", "demo", "--cpu", "0.5", "--memory", "256m", "--label",
        "team=a",
    ]);
    assert_eq!(
        r.code,
        0,
        "{}\n{}\n{}",
        r.stdout,
        r.stderr,
        s.gw.as_ref().unwrap().logs()
    );
    assert!(r.stdout.contains("Phase: Ready"), "{}", r.stdout);
    eprintln!("sandbox create to Ready on Kubernetes: {:?}", t.elapsed());
    assert_eq!(c.names(&s.ns, "pods"), ["openshell-demo"]);
    assert_eq!(c.names(&s.ns, "secrets"), ["openshell-demo"]);
    let pod = c.api(
        "GET",
        &format!("/api/v1/namespaces/{}/pods/openshell-demo", s.ns),
        None,
    );
    assert!(
        !pod.to_string().contains("PRIVATE KEY"),
        "a private key is in the pod spec"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "500m"
    );
    // Exec through the gateway's relay to the supervisor (here on the node the test plays):
    // the same path as on every other driver.
    let r = s.u.run(&[
        "sandbox",
        "exec",
        "demo",
        "--",
        "sh",
        "-c",
        "echo from-the-pod; exit 5",
    ]);
    assert_eq!(r.code, 5, "{}\n{}", r.stderr, s.gw.as_ref().unwrap().logs());
    assert_eq!(r.stdout, "from-the-pod\n");

    // Stop deletes the pod (the supervisor goes with it); start brings it back Ready.
    s.u.run(&["sandbox", "stop", "demo"]).ok();
    assert_eventually!(
        Duration::from_secs(20),
        s.phase("demo") == "Stopped",
        "not Stopped: {}",
        s.phase("demo")
    );
    assert!(c.names(&s.ns, "pods").is_empty());
    s.u.run(&["sandbox", "start", "demo"]).ok();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("demo") == "Ready",
        "not Ready after start: {}",
        s.phase("demo")
    );

    // A gateway restart re-lists its pods: the sandbox is still there and Ready.
    let mut gw = s.gw.take().unwrap();
    gw.terminate();
    gw.wait_exit(Duration::from_secs(15))
        .expect("gateway did not stop");
    drop(gw);
    s.gw = Some(s.spawn());
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("demo") == "Ready",
        "not Ready after a gateway restart: {}",
        s.phase("demo")
    );
    let list = s.u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Bad input: nothing half-created.
    let r = s.u.run(&["sandbox", "create", "--name", "demo"]).fails();
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    // Delete removes pod, secret and record.
    s.u.run(&["sandbox", "delete", "demo"]).ok();
    assert!(c.names(&s.ns, "pods").is_empty());
    assert!(c.names(&s.ns, "secrets").is_empty());
    let list = s.u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn the_gateway_refuses_a_missing_kubeconfig_and_reports_a_namespace_that_is_not_there() {
    let c = KubeCluster::shared();
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("nope.yaml");
    let out = Command::new(openshell_tests::bin("openshell-gateway"))
        .args(["--listen", "127.0.0.1:0", "--drivers", "kubernetes"])
        .arg("--state-dir")
        .arg(state.path())
        .arg("--pki-dir")
        .arg(u.default_pki_dir())
        .arg("--kubeconfig")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("kubeconfig {} does not exist", missing.display())),
        "{err}"
    );

    // A namespace that does not exist: the gateway runs, says so, and creates nothing.
    let port = openshell_tests::free_port();
    let gw = Gateway::builder()
        .pki(&u.default_pki_dir())
        .listen(&format!("127.0.0.1:{port}"))
        .arg("--drivers")
        .arg("kubernetes")
        .arg("--kubeconfig")
        .arg(c.kubeconfig(ADMIN, "default").to_str().unwrap())
        .arg("--k8s-namespace")
        .arg("not-there")
        .arg("--sandbox-callback")
        .arg(&format!("https://127.0.0.1:{port}"))
        .spawn();
    u.enroll(gw.addr.port());
    let r = u
        .run(&["sandbox", "create", "--name", "x", "--no-wait"])
        .fails();
    assert!(
        r.stderr.contains("namespace `not-there` does not exist"),
        "{}",
        r.stderr
    );
    let list = u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}

/// A gateway on `cluster` through `kubeconfig` (no `--drivers`: auto-detection) with a CLI
/// user registered with it.
fn gateway_with(kubeconfig: &Path, ns: &str, extra: &[&str]) -> (CliUser, Gateway) {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let port = openshell_tests::free_port();
    let mut b = Gateway::builder()
        .pki(&u.default_pki_dir())
        .listen(&format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(kubeconfig.to_str().unwrap())
        .arg("--k8s-namespace")
        .arg(ns)
        .arg("--sandbox-callback")
        .arg(&format!("https://127.0.0.1:{port}"))
        .arg("--gateway-id")
        .arg(&format!("gw-{}", random_hex(4)));
    for a in extra {
        b = b.arg(a);
    }
    let gw = b.spawn();
    u.enroll(port);
    (u, gw)
}

fn active_driver(u: &CliUser) -> serde_json::Value {
    let info = u.run(&["gateway", "info", "-o", "json"]).ok().json();
    info["compute_drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["active"] == true)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_given_kubeconfig_is_auto_detected_and_an_apiserver_outage_keeps_the_records() {
    // A cluster of its own: this test stops its apiserver.
    let c = KubeCluster::start();
    let ns = c.create_namespace("outage");
    let (u, gw) = gateway_with(&c.kubeconfig(ADMIN, "default"), &ns, &[]);
    // No --drivers, but a kubeconfig: Kubernetes first.
    let active = active_driver(&u);
    assert_eq!(active["name"], "kubernetes", "{active}\n{}", gw.logs());
    assert_eq!(active["health"], "ok", "{active}");

    u.run(&["sandbox", "create", "--name", "kept", "--no-wait"])
        .ok();
    let phase = |u: &CliUser| u.run(&["sandbox", "get", "kept", "-o", "json"]).ok().json();
    assert_eq!(phase(&u)["phase"], "Provisioning", "{}", phase(&u));

    c.stop_apiserver();
    // Reads still answer from the records and say what is wrong.
    assert_eventually!(
        Duration::from_secs(10),
        phase(&u)["phase"] == "Error",
        "not Error: {}",
        phase(&u)
    );
    let got = phase(&u);
    assert!(
        got["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{got}"
    );
    let active = active_driver(&u);
    assert!(
        active["health"].as_str().unwrap().contains(&c.url),
        "{active}"
    );
    let r = u
        .run(&["sandbox", "create", "--name", "later", "--no-wait"])
        .fails();
    assert!(
        r.stderr.contains("kubernetes is not reachable") && r.stderr.contains(&c.url),
        "{}",
        r.stderr
    );

    c.start_apiserver();
    assert_eventually!(
        Duration::from_secs(20),
        phase(&u)["phase"] == "Provisioning",
        "not back: {}",
        phase(&u)
    );
    let list = u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["kept"], "the failed create left a record: {list}");
    assert_eq!(c.names(&ns, "pods"), ["openshell-kept"]);
    assert_eq!(c.names(&ns, "secrets"), ["openshell-kept"]);
}

/// Held by the tests that depend on whether the in-cluster files exist.
static IN_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn kubernetes_is_auto_detected_only_when_configured() {
    let _serial = IN_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    // Inside a cluster (KUBERNETES_SERVICE_HOST set) Kubernetes is tried first: here the
    // service account files are missing, so the gateway says that and stops.
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let state = tempfile::tempdir().unwrap();
    let gateway = || {
        let mut cmd = Command::new(openshell_tests::bin("openshell-gateway"));
        cmd.args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .arg("--pki-dir")
            .arg(u.default_pki_dir())
            .env_remove("OPENSHELL_DRIVERS")
            .env_remove("OPENSHELL_KUBECONFIG");
        cmd
    };
    let out = gateway()
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in-cluster Kubernetes config"), "{err}");

    // Outside a cluster and without --kubeconfig it is never picked, even with a
    // kubeconfig in KUBECONFIG: no surprise clusters.
    let c = KubeCluster::shared();
    let gw = Gateway::builder()
        .pki(&u.default_pki_dir())
        .env(
            "KUBECONFIG",
            c.kubeconfig(ADMIN, "default").to_str().unwrap(),
        )
        .spawn();
    u.enroll(gw.addr.port());
    let active = active_driver(&u);
    assert_ne!(active["name"], "kubernetes", "{active}");
}

#[test]
fn without_rights_the_gateway_says_so_and_leaves_nothing() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "rbac");
    let (u, _gw) = gateway_with(
        &c.kubeconfig(NOBODY, "default"),
        &ns,
        &["--drivers", "kubernetes"],
    );
    let r = u
        .run(&["sandbox", "create", "--name", "denied", "--no-wait"])
        .fails();
    assert!(
        r.stderr.contains("403 Forbidden") && r.stderr.contains("RBAC"),
        "{}",
        r.stderr
    );
    let list = u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert!(c.names(&ns, "pods").is_empty());
    assert!(c.names(&ns, "secrets").is_empty());
}

#[test]
fn a_restarted_gateway_removes_leaked_pods_and_recreates_missing_ones() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "reconcile");
    let state = tempfile::tempdir().unwrap();
    let kubeconfig = c.kubeconfig(ADMIN, "default");
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let port = openshell_tests::free_port();
    let id = format!("gw-{}", random_hex(4));
    let spawn = || {
        Gateway::builder()
            .pki(&u.default_pki_dir())
            .state_dir(state.path())
            .listen(&format!("127.0.0.1:{port}"))
            .args_for_kube(&kubeconfig, &ns, port, &id)
            .spawn()
    };
    let mut gw = spawn();
    u.enroll(port);
    u.run(&["sandbox", "create", "--name", "kept", "--no-wait"])
        .ok();
    let first_uid = c.api(
        "GET",
        &format!("/api/v1/namespaces/{ns}/pods/openshell-kept"),
        None,
    )["metadata"]["uid"]
        .clone();

    gw.terminate();
    gw.wait_exit(Duration::from_secs(15))
        .expect("gateway did not stop");
    drop(gw);
    // While it is away: its sandbox's pod goes, and a pod with its labels but no record
    // appears (as a crash between create and record would leave).
    c.api(
        "DELETE",
        &format!("/api/v1/namespaces/{ns}/pods/openshell-kept"),
        None,
    );
    let orphan = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "openshell-orphan", "labels": {
            "openshell.managed": "true", "openshell.gateway": id,
            "openshell.sandbox-id": "orphan-1", "openshell.sandbox-name": "orphan"}},
        "spec": {"automountServiceAccountToken": false,
            "containers": [{"name": "sandbox", "image": "x"}]}});
    let made = c.api(
        "POST",
        &format!("/api/v1/namespaces/{ns}/pods"),
        Some(&orphan.to_string()),
    );
    assert_eq!(made["metadata"]["name"], "openshell-orphan", "{made}");
    assert_eq!(c.names(&ns, "pods"), ["openshell-orphan"]);

    let gw = spawn();
    assert_eventually!(
        Duration::from_secs(20),
        c.names(&ns, "pods") == ["openshell-kept"],
        "pods after the restart: {:?}\n{}",
        c.names(&ns, "pods"),
        gw.logs()
    );
    let uid = c.api(
        "GET",
        &format!("/api/v1/namespaces/{ns}/pods/openshell-kept"),
        None,
    )["metadata"]["uid"]
        .clone();
    assert_ne!(uid, first_uid, "the pod was recreated");
}

/// The flags every gateway of these tests gets.
trait KubeArgs {
    fn args_for_kube(self, kubeconfig: &Path, ns: &str, port: u16, id: &str) -> Self;
}

impl KubeArgs for openshell_tests::gateway::GatewayBuilder {
    fn args_for_kube(self, kubeconfig: &Path, ns: &str, port: u16, id: &str) -> Self {
        self.arg("--drivers")
            .arg("kubernetes")
            .arg("--kubeconfig")
            .arg(kubeconfig.to_str().unwrap())
            .arg("--k8s-namespace")
            .arg(ns)
            .arg("--sandbox-callback")
            .arg(&format!("https://127.0.0.1:{port}"))
            .arg("--gateway-id")
            .arg(id)
            .arg("--shutdown-grace")
            .arg("1s")
    }
}

/// The service account files a Pod gets, written where the in-cluster config reads them
/// (a fixed path), and removed again on drop.
struct InClusterFiles {
    root: std::path::PathBuf,
    created_secrets_dir: bool,
}

impl InClusterFiles {
    fn write(cluster: &KubeCluster, ns: &str) -> InClusterFiles {
        let secrets = Path::new("/var/run/secrets");
        let root = secrets.join("kubernetes.io");
        assert!(
            !root.exists(),
            "{} exists already: this test writes its own service account there; run it on a \
             machine that is not a Kubernetes node",
            root.display()
        );
        let created_secrets_dir = !secrets.exists();
        let dir = root.join("serviceaccount");
        std::fs::create_dir_all(&dir).unwrap();
        let files = InClusterFiles {
            root,
            created_secrets_dir,
        };
        std::fs::write(dir.join("token"), ADMIN).unwrap();
        std::fs::write(dir.join("ca.crt"), &cluster.ca_pem).unwrap();
        std::fs::write(dir.join("namespace"), ns).unwrap();
        files
    }
}

impl Drop for InClusterFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        if self.created_secrets_dir {
            let _ = std::fs::remove_dir(self.root.parent().unwrap());
        }
    }
}

#[test]
fn in_a_cluster_the_gateway_uses_its_service_account() {
    let c = KubeCluster::shared();
    let ns = namespace(c, "incluster");
    let _serial = IN_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let _files = InClusterFiles::write(c, &ns);
    let port = c.url.rsplit(':').next().unwrap().to_string();
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw_port = openshell_tests::free_port();
    // No --drivers, no --kubeconfig, no namespace: all from the Pod's environment.
    let gw = Gateway::builder()
        .pki(&u.default_pki_dir())
        .listen(&format!("127.0.0.1:{gw_port}"))
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .arg("--sandbox-callback")
        .arg(&format!("https://127.0.0.1:{gw_port}"))
        .spawn();
    u.enroll(gw_port);
    let active = active_driver(&u);
    assert_eq!(active["name"], "kubernetes", "{active}\n{}", gw.logs());
    assert_eq!(active["driver_version"], "v1.20.2", "{active}");
    u.run(&["sandbox", "create", "--name", "inside", "--no-wait"])
        .ok();
    assert_eq!(c.names(&ns, "pods"), ["openshell-inside"]);
    u.run(&["sandbox", "delete", "inside"]).ok();
    assert!(c.names(&ns, "pods").is_empty());
    assert!(c.names(&ns, "secrets").is_empty());
}
