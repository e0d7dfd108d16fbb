//! `SandboxEnv::docker()` / `SandboxEnv::podman()`: a CLI user with a PKI, a gateway on a
//! real container runtime with the sandbox image this test run built, and cleanup of every
//! container the gateway made. Podman runs as its API service on a socket in a temp dir,
//! started here and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{CliUser, Gateway};

/// The sandbox image the black-box tests build (with the supervisor of this build):
/// `openshell-test/sandbox:e2e`, or `...:e2e-SUFFIX` with `OPENSHELL_TEST_IMAGE_SUFFIX` set,
/// so two work trees testing different supervisors on one engine do not rebuild each
/// other's image mid-test.
pub fn image() -> &'static str {
    test_image("e2e")
}

/// The tag `openshell-test/sandbox:KIND`, suffixed as [`image`] explains.
pub fn test_image(kind: &str) -> &'static str {
    static TAGS: std::sync::Mutex<Vec<(String, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let mut tags = TAGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, tag)) = tags.iter().find(|(k, _)| k == kind) {
        return tag;
    }
    let tag = match std::env::var("OPENSHELL_TEST_IMAGE_SUFFIX") {
        Ok(s) if !s.is_empty() => format!("openshell-test/sandbox:{kind}-{s}"),
        _ => format!("openshell-test/sandbox:{kind}"),
    };
    let tag: &'static str = Box::leak(tag.into_boxed_str());
    tags.push((kind.to_string(), tag));
    tag
}

/// A container runtime the gateway drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
        }
    }
}

/// Builds the sandbox image for `runtime` (with the supervisor this test run built) unless
/// it is current.
pub fn build_image(runtime: Runtime) {
    let bin = crate::bin("openshell-sandbox");
    let target_dir: PathBuf = bin.parent().unwrap().parent().unwrap().to_path_buf();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repo.join("scripts/build-sandbox-image"))
        .args(["--runtime", runtime.name(), "--tag", image()])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&repo)
        .output()
        .expect("cannot run scripts/build-sandbox-image");
    assert!(
        out.status.success(),
        "building the sandbox image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Podman API service on a socket in a temp dir, with a containers.conf whose default
/// ulimits fit this kind of host (Podman's defaults exceed the hard limits when
/// CAP_SYS_RESOURCE is missing, and every start then fails).
pub struct PodmanService {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl PodmanService {
    pub fn start() -> PodmanService {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=16384:16384\", \"nproc=16384:16384\"]\n",
        )
        .unwrap();
        let mut s = PodmanService { child: None, dir };
        s.resume();
        s
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }

    pub fn containers_conf(&self) -> PathBuf {
        self.dir.path().join("containers.conf")
    }

    /// Starts the service (again) and waits until it answers.
    pub fn resume(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(self.dir.path().join("podman.log")).unwrap();
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", self.containers_conf())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start `podman system service`");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !socket.exists() || !podman_answers(&socket) {
            assert!(
                std::time::Instant::now() < deadline,
                "podman system service did not answer: {}",
                std::fs::read_to_string(self.dir.path().join("podman.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the service (the containers keep running: conmon owns them).
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn podman_answers(socket: &Path) -> bool {
    Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(socket)
        .arg("http://d/_ping")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        self.pause();
    }
}

/// A user, a gateway on a real runtime, and the sandboxes it makes (removed on drop).
pub struct SandboxEnv {
    pub u: CliUser,
    pub gw: Option<Gateway>,
    /// The gateway's id (its default, from the state directory).
    pub id: String,
    pub runtime: Runtime,
    pub podman: Option<PodmanService>,
    state: tempfile::TempDir,
    /// More gateway arguments, on every (re)start.
    extra: Vec<String>,
}

impl SandboxEnv {
    pub fn docker() -> SandboxEnv {
        SandboxEnv::new(Runtime::Docker, &[])
    }

    /// On Docker, with more gateway arguments (kept across restarts).
    pub fn docker_with(gateway_args: &[&str]) -> SandboxEnv {
        SandboxEnv::new(Runtime::Docker, gateway_args)
    }

    pub fn podman() -> SandboxEnv {
        SandboxEnv::new(Runtime::Podman, &[])
    }

    fn new(runtime: Runtime, gateway_args: &[&str]) -> SandboxEnv {
        build_image(runtime);
        let podman = (runtime == Runtime::Podman).then(PodmanService::start);
        let u = CliUser::new();
        u.run(&["pki", "init"]).ok();
        let mut s = SandboxEnv {
            u,
            gw: None,
            id: String::new(),
            runtime,
            podman,
            state: tempfile::tempdir().unwrap(),
            extra: gateway_args.iter().map(|a| a.to_string()).collect(),
        };
        let gw = s.spawn("0.0.0.0:0");
        let port = gw.addr.port();
        s.gw = Some(gw);
        // The gateway's default id, made for its state directory at first start: tests
        // run in parallel on one engine the way independent gateways do.
        s.id = std::fs::read_to_string(s.state.path().join("gateway-id"))
            .expect("the gateway wrote no gateway-id in its state directory")
            .trim()
            .to_string();
        s.u.enroll(port);
        s
    }

    /// The gateway's state directory (database, audit log).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Starts a gateway on this environment's state, listening on `listen`.
    pub fn spawn(&self, listen: &str) -> Gateway {
        let mut b = Gateway::builder()
            .pki(&self.u.default_pki_dir())
            .state_dir(self.state.path())
            .listen(listen)
            .arg("--drivers")
            .arg(self.runtime.name())
            .arg("--sandbox-image")
            .arg(image())
            .arg("--shutdown-grace")
            .arg("1s");
        if let Some(p) = &self.podman {
            b = b
                .arg("--podman-socket")
                .arg(&p.socket().display().to_string());
        }
        for a in &self.extra {
            b = b.arg(a);
        }
        b.spawn()
    }

    /// Stops the gateway and starts a new one on the same port and state.
    pub fn restart_gateway(&mut self) {
        let port = self.gw.as_ref().unwrap().addr.port();
        let mut gw = self.gw.take().unwrap();
        gw.terminate();
        gw.wait_exit(Duration::from_secs(15))
            .expect("gateway did not stop");
        drop(gw);
        self.gw = Some(self.spawn(&format!("0.0.0.0:{port}")));
    }

    /// The runtime's own CLI (`docker` or `podman` with this environment's settings).
    pub fn runtime_cli(&self) -> Command {
        let mut c = Command::new(self.runtime.name());
        if let Some(p) = &self.podman {
            c.env("CONTAINERS_CONF", p.containers_conf());
        }
        c
    }

    /// Containers this environment's gateway owns.
    pub fn containers(&self) -> Vec<String> {
        let out = self
            .runtime_cli()
            .args(["ps", "-a", "--filter"])
            .arg(format!("label=openshell.gateway={}", self.id))
            .args(["--format", "{{.Names}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The sandbox's phase, or the error text.
    pub fn phase(&self, name: &str) -> String {
        self.u.sandbox_phase(name)
    }

    /// The gateway's log so far (for assertion messages).
    pub fn logs(&self) -> String {
        self.gw.as_ref().map(|g| g.logs()).unwrap_or_default()
    }
}

impl Drop for SandboxEnv {
    fn drop(&mut self) {
        for c in self.containers() {
            let _ = self.runtime_cli().args(["rm", "-f", &c]).output();
        }
        // Each sandbox has a network of its own (labelled like its container).
        let label = format!("label=openshell.gateway={}", self.id);
        if let Ok(out) = self
            .runtime_cli()
            .args(["network", "ls", "-q", "--filter", &label])
            .output()
        {
            for net in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.runtime_cli().args(["network", "rm", net]).output();
            }
        }
    }
}
