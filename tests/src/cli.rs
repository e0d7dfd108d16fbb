//! `CliUser`: one isolated user of the real `openshell` binary (own HOME, XDG config and
//! state directories, and an empty system layer), and `Run`, a finished command to assert on.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any one `openshell` command may run in a test. The slowest real one (a sandbox
/// in a software-emulated VM) takes about two minutes; past this the command is hung, and it
/// is killed so the test fails with what it printed instead of stalling the whole run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// A finished command: exit code and captured output.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts exit 1 (a failed command, as opposed to a usage error).
    pub fn fails(self) -> Run {
        assert_eq!(
            self.code, 1,
            "expected exit 1\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Stdout parsed as YAML.
    pub fn yaml(&self) -> serde_yaml::Value {
        serde_yaml::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not YAML ({e}):\n{}", self.stdout))
    }
}

/// One isolated user: HOME, XDG_CONFIG_HOME, XDG_STATE_HOME and a system layer, all under
/// one temp dir.
pub struct CliUser {
    tmp: tempfile::TempDir,
}

impl Default for CliUser {
    fn default() -> Self {
        Self::new()
    }
}

impl CliUser {
    pub fn new() -> CliUser {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["home", "xdg", "state", "system"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        CliUser { tmp }
    }

    /// A path inside this user's temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// `$XDG_CONFIG_HOME/openshell`.
    pub fn user_root(&self) -> PathBuf {
        self.path("xdg/openshell")
    }

    /// `$XDG_CONFIG_HOME/openshell/gateways/<name>`.
    pub fn gw_dir(&self, name: &str) -> PathBuf {
        self.user_root().join("gateways").join(name)
    }

    /// `$XDG_STATE_HOME/openshell/gateway/pki`: the default PKI directory.
    pub fn default_pki_dir(&self) -> PathBuf {
        self.path("state/openshell/gateway/pki")
    }

    /// The `openshell` command with this user's environment and nothing inherited that
    /// could change its behaviour.
    pub fn command(&self) -> Command {
        self.command_for(crate::bin("openshell"))
    }

    /// Another program (ssh, script) with this user's environment, so the `openshell` it
    /// runs (a ProxyCommand) sees this user's configuration.
    pub fn command_for(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for var in [
            "OPENSHELL_GATEWAY",
            "OPENSHELL_GATEWAY_ENDPOINT",
            "OPENSHELL_LOGIN_TIMEOUT_SECS",
            "OPENSHELL_TRANSPORT",
            "OPENSHELL_NO_AGENT",
            "XDG_RUNTIME_DIR",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg"))
            .env("XDG_STATE_HOME", self.path("state"))
            .env("OPENSHELL_SYSTEM_GATEWAY_DIR", self.path("system"))
            .env("OPENSHELL_NO_BROWSER", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let mut cmd = self.command();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        finish_within(cmd, args, COMMAND_DEADLINE)
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// Issues `alice` a certificate from this user's default PKI (`pki init`) and registers
    /// the gateway listening on `port` of 127.0.0.1 as `local`, the active gateway.
    pub fn enroll(&self, port: u16) {
        self.run(&["pki", "issue", "alice", "--gateway", "local"])
            .ok();
        self.register(port);
    }

    /// Registers the gateway listening on `port` of 127.0.0.1 as `local`, the active
    /// gateway, with the credentials already in `gateways/local/mtls/`.
    pub fn register(&self, port: u16) {
        self.run(&[
            "gateway",
            "add",
            &format!("https://127.0.0.1:{port}"),
            "--name",
            "local",
        ])
        .ok();
    }

    /// The phase of sandbox `name` on the active gateway, or the error text.
    pub fn sandbox_phase(&self, name: &str) -> String {
        let r = self.run(&["sandbox", "get", name, "-o", "json"]);
        if r.code != 0 {
            return format!("error: {}", r.stderr);
        }
        r.json()["phase"].as_str().unwrap_or("").to_string()
    }
}

/// Output of one pipe, read by its own thread as it arrives; `done` hangs up at EOF.
struct Drained {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drained {
    fn start<R: Read + Send + 'static>(pipe: Option<R>) -> Drained {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let sink = buf.clone();
        std::thread::spawn(move || {
            let _hang_up_at_eof = done_tx;
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Drained { buf, done }
    }

    /// What arrived, after waiting briefly for EOF (a daemon the command started may hold
    /// the pipe open after the command exits).
    fn text(self) -> String {
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        let bytes = std::mem::take(&mut *self.buf.lock().unwrap());
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `cmd` to completion, capturing its output; kills it and panics, showing what it
/// printed so far, when it is still running after `deadline`.
fn finish_within(mut cmd: Command, args: &[&str], deadline: Duration) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run openshell");
    let out = Drained::start(child.stdout.take());
    let err = Drained::start(child.stderr.take());
    let end = Instant::now() + deadline;
    let status = loop {
        match child.try_wait().expect("cannot wait for openshell") {
            Some(status) => break Some(status),
            None if Instant::now() >= end => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let (stdout, stderr) = (out.text(), err.text());
    match status {
        Some(status) => Run {
            code: status.code().unwrap_or(-1),
            stdout,
            stderr,
        },
        None => panic!(
            "`openshell {}` was still running after {deadline:?} and was killed\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        ),
    }
}
