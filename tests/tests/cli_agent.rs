//! `openshell agent`: the per-gateway connection agent, with the real binaries. Commands go
//! through a running agent (its counters prove it), survive a gateway restart and an idle
//! disconnect (reconnecting with 0-RTT), fall back to a direct connection when the agent
//! died, is bypassed, or serves an outdated registration, and the socket is owner-only and
//! refuses other uids.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use openshell_tests::{CliUser, Gateway, SandboxEnv, assert_eventually};

/// A running agent, killed (SIGKILL) on drop if a test left it running.
struct Agent<'a> {
    u: &'a CliUser,
    pid: u32,
    socket: PathBuf,
}

impl<'a> Agent<'a> {
    /// `agent start` with `extra` flags; asserts it printed the socket path.
    fn start(u: &'a CliUser, extra: &[&str]) -> Agent<'a> {
        let mut args = vec!["agent", "start"];
        args.extend_from_slice(extra);
        let r = u.run(&args).ok();
        let socket = PathBuf::from(r.stdout.trim());
        assert!(socket.is_absolute(), "no socket path on stdout: {r:?}");
        let st = agent_status(u);
        assert_eq!(st["running"], true, "{st}");
        Agent {
            u,
            pid: st["pid"].as_u64().expect("pid") as u32,
            socket,
        }
    }

    fn status(&self) -> serde_json::Value {
        agent_status(self.u)
    }

    fn alive(&self) -> bool {
        alive(self.pid)
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive (the agent is reparented, but be exact about it).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn agent_status(u: &CliUser) -> serde_json::Value {
    u.run(&["agent", "status", "-o", "json"]).json()
}

fn counter(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// A user with a PKI, a gateway on it, a certificate and the gateway registered as `local`.
fn live_on(listen: &str, state: Option<&std::path::Path>) -> (CliUser, Gateway) {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = spawn_gateway(&u, listen, state);
    u.enroll(gw.addr.port());
    (u, gw)
}

fn spawn_gateway(u: &CliUser, listen: &str, state: Option<&std::path::Path>) -> Gateway {
    let mut b = Gateway::builder()
        .pki(&u.default_pki_dir())
        .listen(listen)
        .arg("--drivers")
        .arg("docker")
        .arg("--shutdown-grace")
        .arg("1s");
    if let Some(s) = state {
        b = b.state_dir(s);
    }
    b.spawn()
}

fn live() -> (CliUser, Gateway) {
    live_on("127.0.0.1:0", None)
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn commands_and_tunnels_go_through_the_agent() {
    let (u, gw) = live();
    let agent = Agent::start(&u, &[]);
    assert!(
        agent.socket.starts_with(u.gw_dir("local")),
        "{:?}",
        agent.socket
    );
    assert_eq!(mode(agent.socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&agent.socket), 0o600);

    let r = u.run(&["status"]).ok();
    assert!(
        r.stdout.contains("Transport: QUIC (via agent)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Authentication: Authenticated (mTLS)"),
        "{}",
        r.stdout
    );
    let before = agent.status();
    assert_eq!(before["upstream"]["connected"], true, "{before}");
    assert_eq!(before["upstream"]["transport"], "quic", "{before}");
    assert!(before["upstream"]["rtt_ms"].as_f64().is_some(), "{before}");
    assert!(
        before["upstream"]["connected_since"].is_string(),
        "{before}"
    );

    // Each status is two RPCs (Health and GetGatewayInfo), both served by the agent.
    let j = u.run(&["status", "-o", "json"]).ok().json();
    assert_eq!(j["transport"]["via_agent"], true, "{j}");
    assert_eq!(j["transport"]["kind"], "quic", "{j}");
    let after = agent.status();
    assert_eq!(
        counter(&after, "requests_served"),
        counter(&before, "requests_served") + 2,
        "{after}"
    );
    assert_eq!(counter(&after, "reconnects"), 0, "{after}");

    // Bypassed: by flag, by environment, and by an explicit transport.
    for (args, env) in [
        (vec!["--no-agent", "status", "-o", "json"], vec![]),
        (
            vec!["status", "-o", "json"],
            vec![("OPENSHELL_NO_AGENT", "1")],
        ),
        (vec!["--transport", "tcp", "status", "-o", "json"], vec![]),
    ] {
        let j = u.run_with(&args, &env).ok().json();
        assert_eq!(j["transport"]["via_agent"], false, "{args:?} {env:?}: {j}");
    }
    let r = u.run(&["--no-agent", "status"]).ok();
    assert!(r.stdout.contains("Transport: QUIC\n"), "{}", r.stdout);
    assert_eq!(
        counter(&agent.status(), "requests_served"),
        counter(&after, "requests_served"),
        "a bypassing command went through the agent"
    );

    // Ordinary commands that are not `status` use it too.
    let before = counter(&agent.status(), "requests_served");
    u.run(&["sandbox", "list"]).ok();
    assert!(counter(&agent.status(), "requests_served") > before);

    // A CONNECT tunnel through the agent: the gateway's echo target.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let endpoint = openshell_transport::Endpoint::parse(&gw.endpoint()).unwrap();
        let conn = openshell_transport::connect_agent_unchecked(&agent.socket, &endpoint)
            .await
            .unwrap();
        assert!(conn.via_agent());
        let mut t = conn
            .open_tunnel(&openshell_transport::TunnelTarget::Echo)
            .await
            .unwrap();
        t.write_all(b"through the agent").await.unwrap();
        let mut buf = [0u8; 17];
        t.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"through the agent");
        // A target the gateway refuses is refused with its reason, not as a broken tunnel.
        let err = conn
            .open_tunnel(&openshell_transport::TunnelTarget::Service("nosuch".into()))
            .await
            .err()
            .expect("an unknown service was opened");
        assert!(err.to_string().contains("tunnel refused"), "{err}");
    });
    assert_eq!(counter(&agent.status(), "tunnels_opened"), 2);

    // Idempotent start: reported, not duplicated.
    let r = u.run(&["agent", "start"]).ok();
    assert_eq!(PathBuf::from(r.stdout.trim()), agent.socket);
    assert!(r.stderr.contains("already running"), "{}", r.stderr);
    assert_eq!(agent.status()["pid"].as_u64(), Some(u64::from(agent.pid)));

    let r = u.run(&["agent", "status"]).ok();
    assert!(r.stdout.contains("Status: running"), "{}", r.stdout);
    assert!(r.stdout.contains("Upstream: QUIC since"), "{}", r.stdout);

    // Stop: the socket goes, the process exits, the next command connects directly.
    let r = u.run(&["agent", "stop"]).ok();
    assert!(r.stderr.contains("Stopped the agent"), "{}", r.stderr);
    assert!(!agent.socket.exists());
    assert!(!agent.alive(), "agent still running after stop");
    let j = u.run(&["status", "-o", "json"]).ok().json();
    assert_eq!(j["transport"]["via_agent"], false, "{j}");
    let r = u.run(&["agent", "status", "-o", "json"]).fails();
    assert_eq!(r.json()["running"], false);
}

#[test]
fn reconnects_after_a_gateway_restart_and_with_0rtt_after_idling() {
    let state = tempfile::tempdir().unwrap();
    let port = openshell_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (u, mut gw) = live_on(&listen, Some(state.path()));
    let agent = Agent::start(&u, &["--idle-disconnect", "1500ms"]);
    u.run(&["status"]).ok();

    // The gateway restarts (same port, state and PKI): the next command still works,
    // through the agent, which reconnected.
    gw.terminate();
    gw.wait_exit(Duration::from_secs(15))
        .expect("gateway did not stop");
    drop(gw);
    let _gw = spawn_gateway(&u, &listen, Some(state.path()));
    let r = u.run(&["status"]).ok();
    assert!(r.stdout.contains("via agent"), "{}", r.stdout);
    let st = agent.status();
    assert_eq!(counter(&st, "reconnects"), 1, "{st}");

    // Idle past --idle-disconnect: the agent drops its connection; the next command
    // reconnects with the ticket the last connection left, in 0-RTT.
    assert_eventually!(
        Duration::from_secs(10),
        agent.status()["upstream"]["connected"] == false,
        "the idle connection was not dropped: {}",
        agent.status()
    );
    let accepted_before = agent.status()["zero_rtt"]["accepted"].as_u64().unwrap();
    let r = u.run(&["status"]).ok();
    assert!(
        r.stdout.contains("Transport: QUIC (0-RTT, via agent)"),
        "{}",
        r.stdout
    );
    let st = agent.status();
    assert_eq!(counter(&st, "reconnects"), 2, "{st}");
    assert_eq!(
        st["zero_rtt"]["accepted"].as_u64(),
        Some(accepted_before + 1),
        "{st}"
    );
    assert_eq!(st["upstream"]["zero_rtt"], "accepted", "{st}");
    let r = u.run(&["agent", "status"]).ok();
    assert!(r.stdout.contains("resumed with 0-RTT"), "{}", r.stdout);
}

#[test]
fn a_killed_agent_leaves_a_stale_socket_that_commands_clean_up() {
    let (u, _gw) = live();
    let agent = Agent::start(&u, &[]);
    Command::new("kill")
        .args(["-KILL", &agent.pid.to_string()])
        .status()
        .unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        !agent.alive(),
        "agent survived kill -9"
    );
    assert!(agent.socket.exists(), "kill -9 cannot remove its socket");
    let r = u.run(&["-vv", "status"]).ok();
    assert!(r.stdout.contains("Transport: QUIC\n"), "{}", r.stdout);
    assert!(
        r.stderr.contains("removed a stale agent socket"),
        "{}",
        r.stderr
    );
    assert!(!agent.socket.exists(), "the stale socket is still there");
    // And a new agent starts where the dead one was.
    let again = Agent::start(&u, &[]);
    assert_eq!(again.socket, agent.socket);
    u.run(&["agent", "stop"]).ok();
}

/// `agent run` processes (live, not zombies) started for this user.
fn agents_of(u: &CliUser) -> Vec<u32> {
    let home = format!("HOME={}", u.path("home").display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let is_agent =
            cmdline.windows(10).any(|w| w == b"agent\0run\0") || cmdline.ends_with(b"agent\0run");
        let ours = environ.split(|b| *b == 0).any(|v| v == home.as_bytes());
        if is_agent && ours && alive(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn agents_started_at_once_end_up_as_one() {
    let (u, _gw) = live();
    // Where the socket goes, then a stale one there (as a killed agent leaves): every
    // starter sees it, finds nobody listening and removes it; without a lock one could
    // remove the socket another had just bound and leave that agent unreachable.
    let socket = {
        let agent = Agent::start(&u, &[]);
        u.run(&["agent", "stop"]).ok();
        agent.socket.clone()
    };
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let runs: Vec<_> = std::thread::scope(|s| {
        let starts: Vec<_> = (0..4)
            .map(|_| s.spawn(|| u.run(&["agent", "start"])))
            .collect();
        starts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sockets: Vec<String> = runs.into_iter().map(|r| r.ok().stdout).collect();
    assert!(
        sockets.iter().all(|s| s.trim() == socket.to_str().unwrap()),
        "{sockets:?}"
    );
    // The losers exit; exactly one agent is left, and it is the one on the socket.
    assert_eventually!(
        Duration::from_secs(10),
        agents_of(&u).len() == 1,
        "agents running: {:?}",
        agents_of(&u)
    );
    let st = agent_status(&u);
    assert_eq!(
        agents_of(&u),
        vec![st["pid"].as_u64().unwrap() as u32],
        "{st}"
    );
    u.run(&["status"]).ok();
    u.run(&["agent", "stop"]).ok();
    assert_eventually!(
        Duration::from_secs(10),
        agents_of(&u).is_empty(),
        "agents left after stop: {:?}",
        agents_of(&u)
    );
}

#[test]
fn new_credentials_retire_the_agent() {
    let (u, _gw) = live();
    let agent = Agent::start(&u, &[]);
    u.run(&["status"]).ok();
    assert_eq!(counter(&agent.status(), "requests_served"), 2);
    // A new certificate for the registration (as `pki issue --force` or `gateway add`
    // again would install).
    u.run(&["pki", "issue", "alice", "--gateway", "local", "--force"])
        .ok();
    let j = u.run(&["status", "-o", "json"]).ok().json();
    assert_eq!(j["transport"]["via_agent"], false, "{j}");
    assert_eventually!(
        Duration::from_secs(10),
        !agent.alive() && !agent.socket.exists(),
        "the agent kept running on the old credentials"
    );
    let log = std::fs::read_to_string(agent.socket.with_file_name("agent.log")).unwrap();
    assert!(log.contains("agent stopped"), "{log}");
}

#[test]
fn other_uids_are_refused() {
    let (u, _gw) = live();
    let agent = Agent::start(&u, &[]);
    let url = "http://agent/openshell-agent/status";
    let curl = |as_nobody: bool| {
        let mut c = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"]);
            c
        } else {
            Command::new("curl")
        };
        c.args([
            "-sS",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            "--unix-socket",
        ])
        .arg(&agent.socket)
        .arg(url);
        c.output().unwrap()
    };
    // The owner gets an answer over the same protocol.
    let own = curl(false);
    assert!(own.status.success(), "{own:?}");
    assert!(String::from_utf8_lossy(&own.stdout).contains("\"running\":true"));

    // Only for this test: let others reach the socket file (the directories are 0700 and
    // the socket 0600, which alone keep them out), so the agent's own uid check is what
    // refuses them.
    let mut dir = agent.socket.parent().unwrap().to_path_buf();
    while dir != std::path::Path::new("/tmp") && dir.parent().is_some() {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        if dir == u.path("") {
            break;
        }
        dir = dir.parent().unwrap().to_path_buf();
    }
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let other = curl(true);
    assert!(!other.status.success(), "uid 65534 was served: {other:?}");
    assert!(!String::from_utf8_lossy(&other.stdout).contains("running"));
    let log = || std::fs::read_to_string(agent.socket.with_file_name("agent.log")).unwrap();
    assert_eventually!(
        Duration::from_secs(5),
        log().contains("refused a connection from uid 65534"),
        "no refusal in the agent's log:\n{}",
        log()
    );
    // The refusal did not hurt the agent.
    assert!(curl(false).status.success());
    u.run(&["agent", "stop"]).ok();
}

/// A listener of uid 65534 (`nobody`) where `local`'s agent socket would be: records, one
/// line per connection, how many bytes each one sent it.
const IMPOSTOR: &str = r#"
import socket, sys
path, log = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(16)
while True:
    c, _ = s.accept()
    c.settimeout(3)
    got = 0
    try:
        while True:
            d = c.recv(65536)
            if not d:
                break
            got += len(d)
    except OSError:
        pass
    with open(log, "a") as f:
        f.write("%d\n" % got)
    c.close()
"#;

/// The client side of the uid check: a socket in the agent's place that another user owns,
/// or that another user's process serves, gets nothing: the command says why and connects
/// directly. (The CLI used to send its requests, provider credentials included, to whoever
/// listened there.)
#[test]
fn a_socket_of_another_uid_is_never_used() {
    use std::os::unix::fs::chown;
    let (u, _gw) = live();
    let agent_dir = u.gw_dir("local").join("agent");
    let socket = agent_dir.join("agent.sock");
    let log_dir = u.path("impostor");
    for d in [&agent_dir, &log_dir] {
        std::fs::create_dir_all(d).unwrap();
        chown(d, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    // Only for this test: let uid 65534 reach its directories through ours.
    let mut dir = u.gw_dir("local");
    loop {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        if dir == u.path("") {
            break;
        }
        dir = dir.parent().unwrap().to_path_buf();
    }
    let log = log_dir.join("connections");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _impostor = Kill(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(["/usr/bin/python3", "-c", IMPOSTOR])
            .arg(&socket)
            .arg(&log)
            .spawn()
            .expect("setpriv and /usr/bin/python3 are needed"),
    );
    assert_eventually!(
        Duration::from_secs(10),
        socket.exists(),
        "the impostor did not listen"
    );
    let connections = || std::fs::read_to_string(&log).unwrap_or_default();

    // Its socket, in its directory: refused before connecting.
    let r = u.run(&["status"]).ok();
    assert!(r.stdout.contains("Status: Connected"), "{}", r.stdout);
    assert!(!r.stdout.contains("via agent"), "{}", r.stdout);
    assert!(
        r.stderr
            .contains(&format!("not using the agent socket {}", socket.display()))
            && r.stderr.contains("belongs to uid 65534"),
        "{}",
        r.stderr
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(connections(), "", "the CLI connected to the impostor");

    // Socket and directory handed to us, the listening end still its: refused by the
    // peer's uid, right after connecting and before a byte is sent.
    chown(&agent_dir, Some(0), Some(0)).unwrap();
    chown(&socket, Some(0), Some(0)).unwrap();
    let r = u.run(&["sandbox", "list"]).ok();
    assert!(
        r.stderr
            .contains("the process serving it runs as uid 65534"),
        "{}",
        r.stderr
    );
    assert_eventually!(
        Duration::from_secs(10),
        !connections().is_empty(),
        "the impostor saw no connection"
    );
    assert_eq!(connections(), "0\n", "bytes reached the impostor");

    // The agent commands refuse it with the same words.
    let r = u.run(&["agent", "status"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("runs as uid 65534"), "{}", r.stderr);
    assert_eq!(connections(), "0\n0\n");
}

#[test]
fn bad_input_is_one_clear_error() {
    let (u, _gw) = live();
    for (flag, value) in [
        ("--persist", "abc"),
        ("--idle-disconnect", "0"),
        ("--persist", "5 parsecs"),
    ] {
        let r = u.run(&["agent", "start", flag, value]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains(&format!("'{value}'")), "{}", r.stderr);
        assert!(
            r.stderr.contains("e.g. 500ms, 30s, 10m or 1h"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let r = u.run(&["-g", "nosuch", "agent", "start"]).fails();
    assert!(r.stderr.contains("nosuch"), "{}", r.stderr);

    let r = u.run(&["agent", "stop"]).fails();
    assert!(
        r.stderr.contains("no agent is running for gateway 'local'"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("openshell agent start -g local"),
        "{}",
        r.stderr
    );
    let r = u.run(&["agent", "status"]).fails();
    assert!(r.stdout.contains("not running"), "{}", r.stdout);

    let r = u
        .run(&[
            "--gateway-endpoint",
            "https://127.0.0.1:1",
            "agent",
            "start",
        ])
        .fails();
    assert!(
        r.stderr.contains("registered gateways only"),
        "{}",
        r.stderr
    );

    // A config directory so deep the socket path cannot fit; XDG_RUNTIME_DIR is the fix.
    let deep = u.path(&format!("{}/{}", "d".repeat(60), "e".repeat(60)));
    std::fs::create_dir_all(&deep).unwrap();
    let deep_s = deep.display().to_string();
    let env = [("XDG_CONFIG_HOME", deep_s.as_str())];
    u.run_with(&["pki", "issue", "bob", "--gateway", "deep"], &env)
        .ok();
    u.run_with(&["gateway", "add", &_gw.endpoint(), "--name", "deep"], &env)
        .ok();
    let r = u.run_with(&["-g", "deep", "agent", "start"], &env).fails();
    assert!(r.stderr.contains("107-byte limit"), "{}", r.stderr);
    assert!(r.stderr.contains("XDG_RUNTIME_DIR"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    // Ordinary commands are not hurt by it.
    u.run_with(&["-g", "deep", "status"], &env).ok();
    // The fix works.
    let rt = tempfile::tempdir().unwrap();
    let rt_s = rt.path().display().to_string();
    let env = [
        ("XDG_CONFIG_HOME", deep_s.as_str()),
        ("XDG_RUNTIME_DIR", rt_s.as_str()),
    ];
    let r = u.run_with(&["-g", "deep", "agent", "start"], &env).ok();
    assert!(r.stdout.trim().starts_with(&rt_s), "{}", r.stdout);
    let r = u.run_with(&["-g", "deep", "status"], &env).ok();
    assert!(r.stdout.contains("via agent"), "{}", r.stdout);
    u.run_with(&["-g", "deep", "agent", "stop"], &env).ok();
}

#[test]
fn sandbox_exec_through_the_agent() {
    let s = SandboxEnv::docker();
    let agent = Agent::start(&s.u, &[]);
    let r = s.u.run(&["sandbox", "create", "--name", "agentbox"]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, s.logs());
    let before = agent.status();
    let r = s.u.run(&[
        "sandbox",
        "exec",
        "agentbox",
        "--",
        "sh",
        "-c",
        "echo via-agent; exit 3",
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout, "via-agent\n");
    let after = agent.status();
    assert!(
        counter(&after, "tunnels_opened") > counter(&before, "tunnels_opened"),
        "exec did not tunnel through the agent: {after}"
    );
    s.u.run(&["sandbox", "delete", "agentbox"]).ok();
    s.u.run(&["agent", "stop"]).ok();
}
