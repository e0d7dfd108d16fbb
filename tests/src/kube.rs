//! `KubeCluster::start()`: a real Kubernetes API server (kube-apiserver 1.20, built from
//! Debian's source by `scripts/build-kube-apiserver`) on etcd, both on free loopback ports
//! in a temp dir, with token users and RBAC on. Both processes stop when the cluster is
//! dropped, and when the test process exits (each runs under a shell that stops it once
//! its stdin, held here, closes).
//!
//! There is no scheduler, controller manager or kubelet: Pods are stored, never run. Tests
//! play the node themselves ([`KubeCluster::set_pod_running`] patches a Pod's status,
//! and a test may start the real supervisor with the Pod's environment).
//!
//! Users (`tokens.csv`): [`ADMIN`] is in `system:masters`; [`NOBODY`] is authenticated but
//! has no RBAC rights at all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// The admin user's token (group `system:masters`).
pub const ADMIN: &str = "admin-token";
/// A user with no rights (every request but discovery is forbidden by RBAC).
pub const NOBODY: &str = "nobody-token";

/// Where scripts/build-kube-apiserver caches the binary (`OPENSHELL_KUBE_CACHE` overrides
/// the directory).
pub fn apiserver_binary() -> PathBuf {
    let dir = std::env::var_os("OPENSHELL_KUBE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/openshell-edge/kube"));
    dir.join("kube-apiserver")
}

/// Builds the apiserver when it is not cached yet (once per test process; ~8 minutes).
fn ensure_apiserver() -> PathBuf {
    static BUILT: Mutex<()> = Mutex::new(());
    let _guard = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let bin = apiserver_binary();
    let has_etcd = Command::new("sh")
        .args(["-c", "command -v etcd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if bin.is_file() && has_etcd {
        return bin;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-kube-apiserver");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success() && bin.is_file(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Starts `program args` under a shell that stops it when the child's stdin closes (with
/// SIGTERM), or when a signal name is written to it (`KILL`). With `cleanup`, that
/// directory is removed once the program has stopped (the shared cluster is never dropped:
/// this is what removes its directory when the test process exits).
fn spawn_service(program: &Path, args: &[String], log: &Path, cleanup: Option<&Path>) -> Child {
    let script = r#"prog=$1; shift; "$prog" "$@" & pid=$!; read -r sig; kill -"${sig:-TERM}" "$pid"; wait "$pid"
        [ -z "$CLEANUP_DIR" ] || rm -rf "$CLEANUP_DIR""#;
    let mut cmd = Command::new("sh");
    if let Some(dir) = cleanup {
        cmd.env("CLEANUP_DIR", dir);
    }
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(log).unwrap())
        .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
}

fn stop_service(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

fn write_private(path: &Path, data: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A running etcd + kube-apiserver pair.
pub struct KubeCluster {
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Mutex<Option<Child>>,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<String>,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed the apiserver's serving certificate (PEM).
    pub ca_pem: String,
}

impl KubeCluster {
    /// Starts etcd and the apiserver and waits until `/readyz` answers ok (about 6 s).
    pub fn start() -> KubeCluster {
        let apiserver_bin = ensure_apiserver();
        let dir = tempfile::Builder::new()
            .prefix("openshell-kube-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let (client, peer, secure) = (crate::free_port(), crate::free_port(), crate::free_port());

        // Serving certificate for 127.0.0.1 and localhost, from a CA of our own.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "openshell test kube CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(d.join("ca.crt"), &ca_pem).unwrap();
        std::fs::write(d.join("tls.crt"), cert.pem()).unwrap();
        write_private(&d.join("tls.key"), &key.serialize_pem());
        let sa = KeyPair::generate().unwrap();
        write_private(&d.join("sa.key"), &sa.serialize_pem());
        std::fs::write(d.join("sa.pub"), sa.public_key_pem()).unwrap();
        write_private(
            &d.join("tokens.csv"),
            &format!("{ADMIN},admin,1,\"system:masters\"\n{NOBODY},nobody,2\n"),
        );

        let etcd_args: Vec<String> = [
            format!("--data-dir={}", d.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--log-level=warn".to_string(),
        ]
        .into();
        // etcd stops last (the apiserver needs it), so its wrapper removes the directory.
        let etcd = spawn_service(Path::new("etcd"), &etcd_args, &d.join("etcd.log"), Some(d));
        let p = |name: &str| d.join(name).display().to_string();
        let apiserver_args: Vec<String> = [
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // Its own address is loopback: no Endpoints reconciling for it.
            "--endpoint-reconciler-type=none".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("tls.crt")),
            format!("--tls-private-key-file={}", p("tls.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--logtostderr=true".into(),
            "--v=0".into(),
        ]
        .into();
        let cluster = KubeCluster {
            url: format!("https://127.0.0.1:{secure}"),
            ca_pem,
            etcd: Some(etcd),
            apiserver: Mutex::new(None),
            apiserver_bin,
            apiserver_args,
            dir,
        };
        cluster.start_apiserver();
        cluster
    }

    /// The cluster shared by the tests of one test process (each uses its own namespace
    /// or gateway id). Never stopped before the process exits.
    pub fn shared() -> &'static KubeCluster {
        static SHARED: OnceLock<KubeCluster> = OnceLock::new();
        SHARED.get_or_init(KubeCluster::start)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the apiserver (again, after [`stop_apiserver`](Self::stop_apiserver)) on the
    /// same port and data, and waits until it is ready.
    pub fn start_apiserver(&self) {
        let log = self.dir().join("apiserver.log");
        let child = spawn_service(&self.apiserver_bin, &self.apiserver_args, &log, None);
        *self.apiserver.lock().unwrap() = Some(child);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(90);
        loop {
            if self.curl(ADMIN, "GET", "/readyz", None).trim() == "ok" {
                eprintln!("kube-apiserver ready after {:?}", started.elapsed());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver was not ready within 90 s; its log:\n{}\netcd:\n{}",
                tail(&log.with_extension("err")),
                tail(&self.dir().join("etcd.err"))
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills the apiserver, as a crash would (etcd and its data stay). A graceful stop
    /// would wait up to 60 s for the clients' open watches.
    pub fn stop_apiserver(&self) {
        if let Some(mut child) = self.apiserver.lock().unwrap().take() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = std::io::Write::write_all(&mut stdin, b"KILL\n");
            }
            let _ = child.wait();
        }
    }

    /// One request with curl as the user of `token`; returns the body ("" on no answer).
    pub fn curl(&self, token: &str, method: &str, path: &str, body: Option<&str>) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "10", "-X", method])
            .arg("--cacert")
            .arg(self.dir().join("ca.crt"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"));
        if let Some(b) = body {
            let ctype = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            cmd.args(["-H", &format!("Content-Type: {ctype}"), "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("{}{path}", self.url))
            .output()
            .expect("cannot run curl (apt-get install curl)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`curl`](Self::curl) as admin, parsed as JSON; panics on a non-JSON answer.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> serde_json::Value {
        let out = self.curl(ADMIN, method, path, body);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {out}"))
    }

    /// Creates a namespace (as admin) and returns its name.
    pub fn create_namespace(&self, name: &str) -> String {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let out = self.api("POST", "/api/v1/namespaces", Some(&body.to_string()));
        assert_eq!(out["metadata"]["name"], name, "{out}");
        // The controller manager would add this; Pods need it to pass admission.
        self.create_service_account(name, "default");
        name.to_string()
    }

    /// Creates a service account (as admin).
    pub fn create_service_account(&self, namespace: &str, name: &str) {
        let body = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        let out = self.api(
            "POST",
            &format!("/api/v1/namespaces/{namespace}/serviceaccounts"),
            Some(&body.to_string()),
        );
        assert_eq!(out["metadata"]["name"], name, "{out}");
    }

    /// Writes a kubeconfig for the user of `token` (0600) and returns its path.
    pub fn kubeconfig(&self, token: &str, namespace: &str) -> PathBuf {
        let path = self.dir().join(format!(
            "kubeconfig-{token}-{namespace}-{}",
            rand::random::<u32>()
        ));
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: u\n    namespace: {namespace}\ncurrent-context: test\n",
            url = self.url
        );
        write_private(&path, &yaml);
        path
    }

    /// Plays the kubelet for one Pod: marks it Running with a running `sandbox` container
    /// (a merge patch of its status subresource).
    pub fn set_pod_running(&self, namespace: &str, pod: &str) {
        let now = "2026-01-01T00:00:00Z";
        let body = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "startTime": now,
            "containerStatuses": [{
                "name": "sandbox", "ready": true, "restartCount": 0,
                "image": "test", "imageID": "", "state": {"running": {"startedAt": now}}
            }]
        }});
        let out = self.api(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}/status"),
            Some(&body.to_string()),
        );
        assert_eq!(out["status"]["phase"], "Running", "{out}");
    }

    /// Plays the kubelet for a Pod whose container exited with `code`.
    pub fn set_pod_exited(&self, namespace: &str, pod: &str, code: i32) {
        let now = "2026-01-01T00:00:00Z";
        let phase = if code == 0 { "Succeeded" } else { "Failed" };
        let body = serde_json::json!({"status": {
            "phase": phase,
            "containerStatuses": [{
                "name": "sandbox", "ready": false, "restartCount": 0,
                "image": "test", "imageID": "",
                "state": {"terminated": {"exitCode": code, "startedAt": now, "finishedAt": now}}
            }]
        }});
        let out = self.api(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}/status"),
            Some(&body.to_string()),
        );
        assert_eq!(out["status"]["phase"], phase, "{out}");
    }

    /// Names of the objects of `kind` (`pods`, `secrets`) in `namespace`.
    pub fn names(&self, namespace: &str, kind: &str) -> Vec<String> {
        let out = self.api(
            "GET",
            &format!("/api/v1/namespaces/{namespace}/{kind}"),
            None,
        );
        let mut names: Vec<String> = out["items"]
            .as_array()
            .unwrap_or_else(|| panic!("listing {kind}: {out}"))
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
            // Every namespace gets the default service account's token Secret.
            .filter(|n| !n.starts_with("default-token-"))
            .collect();
        names.sort();
        names
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        self.stop_apiserver();
        if let Some(etcd) = self.etcd.take() {
            stop_service(etcd);
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Reads a value of the Secret `name` (as admin), decoded.
pub fn secret_value(
    cluster: &KubeCluster,
    namespace: &str,
    name: &str,
    key: &str,
) -> Option<String> {
    let out = cluster.api(
        "GET",
        &format!("/api/v1/namespaces/{namespace}/secrets/{name}"),
        None,
    );
    let b64 = out["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("secret {name} key {key} is not base64: {e}"));
    Some(String::from_utf8_lossy(&bytes).into_owned())
}
