//! `Gateway::builder()...spawn()`: runs the real `openshell-gateway` binary on a free
//! loopback port with its own state directory, captures its log, and stops it on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::testpki::ClientCreds;

/// Builder for a gateway process.
#[derive(Debug, Default)]
pub struct GatewayBuilder {
    pki_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    health: bool,
}

/// A running gateway.
pub struct Gateway {
    child: Option<Child>,
    /// The port both QUIC and TCP listen on.
    pub addr: SocketAddr,
    /// `--health-listen` address, when requested.
    pub health: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _state: Option<tempfile::TempDir>,
    pub state_dir: PathBuf,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }
}

impl GatewayBuilder {
    /// Use this PKI directory (from `TestPki::dir()` or `openshell pki init`).
    pub fn pki(mut self, dir: &Path) -> Self {
        self.pki_dir = Some(dir.to_path_buf());
        self
    }

    /// Keep state here (to restart a gateway on the same state).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Listen on this address instead of 127.0.0.1:0.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_string());
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Also serve /healthz, /readyz and /metrics on a loopback port.
    pub fn health(mut self) -> Self {
        self.health = true;
        self
    }

    /// Starts the gateway and waits until it listens (panics with its log otherwise).
    pub fn spawn(self) -> Gateway {
        let (state_tmp, state_dir) = match self.state_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let mut cmd = Command::new(crate::bin("openshell-gateway"));
        cmd.arg("--listen")
            .arg(self.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--log-level")
            .arg("info,openshell_gateway=debug,openshell_transport=debug");
        if let Some(pki) = &self.pki_dir {
            cmd.arg("--pki-dir").arg(pki);
        }
        if self.health {
            cmd.arg("--health-listen").arg("127.0.0.1:0");
        }
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start openshell-gateway");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, Option<String>)>();
        let stderr = child.stderr.take().unwrap();
        let log_w = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log_w.lock().unwrap().push_str(&line);
                log_w.lock().unwrap().push('\n');
                if let Some(a) = after(&line, "health listener on http://") {
                    let _ = tx.send(("health".into(), Some(a)));
                }
                if let Some(a) = after(&line, "listening on ") {
                    let _ = tx.send(("listen".into(), Some(a)));
                }
            }
            let _ = tx.send(("exit".into(), None));
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut addr, mut health) = (None, None);
        while addr.is_none() || (self.health && health.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((kind, Some(a))) if kind == "listen" => addr = a.parse().ok(),
                Ok((kind, Some(a))) if kind == "health" => health = a.parse().ok(),
                Ok(_) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "openshell-gateway did not start listening; its log:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        Gateway {
            child: Some(child),
            addr: addr.unwrap(),
            health,
            log,
            _state: state_tmp,
            state_dir,
        }
    }
}

fn after(line: &str, marker: &str) -> Option<String> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    (!addr.is_empty()).then_some(addr)
}

impl Gateway {
    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Everything the gateway logged so far.
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Client settings for this gateway with the given credentials.
    pub fn client_config(&self, creds: &ClientCreds) -> openshell_transport::ClientConfig {
        let endpoint = openshell_transport::Endpoint::parse(&self.endpoint()).unwrap();
        openshell_transport::ClientConfig::new(endpoint, Some(creds.material()))
    }

    /// GET a path on the health listener; returns (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        let addr = self.health.expect("gateway was spawned without .health()");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// The value of an unlabelled metric from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Retries `cond` until it holds or `timeout` passes; panics with `msg` otherwise.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if std::time::Instant::now() >= deadline {
                panic!($($msg)+);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }};
}

/// Connects with `cfg` and returns why the gateway refused: the connect error, or (TLS 1.3
/// rejects client certificates after the handshake) the reason the first RPC failed.
/// Panics if the gateway answered.
pub async fn refusal(cfg: openshell_transport::ClientConfig) -> String {
    let conn = match openshell_transport::Connector::new(cfg)
        .unwrap()
        .connect()
        .await
    {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let status = openshell_proto::open_shell_client::OpenShellClient::new(conn.channel())
        .get_gateway_info(openshell_proto::GetGatewayInfoRequest {})
        .await
        .expect_err("the gateway answered a client it should have refused");
    // The close frame may trail the failed stream by a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.explain(&status)
        .map(|e| e.to_string())
        .unwrap_or_else(|| status.to_string())
}
