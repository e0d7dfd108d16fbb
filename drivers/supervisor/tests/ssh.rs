//! The supervisor's SSH server driven by the real OpenSSH client (`ssh`, `scp`, `sftp`).
//!
//! The harness stands in for the relay: it accepts TCP on 127.0.0.1 and hands each
//! connection to `SshServer::serve`, exactly as the supervisor hands it a relay stream. The
//! client pins the server's host key (`StrictHostKeyChecking=yes` with a known_hosts file
//! holding that key), reads no user configuration (`-F /dev/null`) and never prompts
//! (`BatchMode=yes`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use openshell_supervisor::SshServer;

/// An SSH server on a loopback port, and a known_hosts file that pins its key.
struct Harness {
    port: u16,
    dir: tempfile::TempDir,
    known_hosts: PathBuf,
    _process: Option<ServerProcess>,
}

/// A server process, killed with its harness.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Accepts TCP on 127.0.0.1:0 and hands each connection to `SshServer::serve` on a runtime
/// of its own (a thread); returns the port.
fn serve_on_loopback(server: SshServer) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(e) = server.serve(stream).await {
                        eprintln!("harness: connection ended: {e}");
                    }
                });
            }
        });
    });
    port
}

/// Set for the copy of this test binary that runs [`server_process`].
const SERVER_DIR_VAR: &str = "SSH_TEST_SERVER_DIR";

/// Not a test of its own: the server for tests that need the server process to have an
/// environment of their choosing (the test binary runs itself with `--ignored --exact`).
/// Writes "PORT PUBLIC_KEY" to `$SSH_TEST_SERVER_DIR/addr`, then serves until killed.
#[test]
#[ignore = "started by other tests as a separate server process"]
fn server_process() {
    let Some(dir) = std::env::var_os(SERVER_DIR_VAR) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let server = SshServer::new(None).unwrap();
    let public = server.public_key_openssh();
    let port = serve_on_loopback(server);
    let tmp = dir.join("addr.tmp");
    std::fs::write(&tmp, format!("{port} {public}")).unwrap();
    std::fs::rename(&tmp, dir.join("addr")).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

impl Harness {
    /// A server in this test process.
    fn start() -> Harness {
        let server = SshServer::new(None).expect("ssh server");
        let public = server.public_key_openssh();
        let port = serve_on_loopback(server);
        Harness::pinned(port, &public, None)
    }

    /// A server in a process of its own, with `env` added to (and `OPENSHELL_*` removed
    /// from) the environment it inherits.
    fn start_process(env: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--ignored", "--exact", "server_process", "--nocapture"])
            .env(SERVER_DIR_VAR, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OPENSHELL_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap();
        let addr = dir.path().join("addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&addr) {
                break text;
            }
            assert!(Instant::now() < deadline, "server process never came up");
            std::thread::sleep(Duration::from_millis(20));
        };
        let (port, public) = text.split_once(' ').unwrap();
        Harness::pinned(port.parse().unwrap(), public, Some(ServerProcess(child)))
    }

    /// Known hosts pin `public` for the server on `port`.
    fn pinned(port: u16, public: &str, process: Option<ServerProcess>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {public}\n")).unwrap();
        Harness {
            port,
            dir,
            known_hosts,
            _process: process,
        }
    }

    /// Options every OpenSSH tool gets: no user config, pinned host key, no prompts.
    fn common_opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `ssh [opts] -p PORT tester@127.0.0.1 [command]`.
    fn ssh(&self, opts: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        // The caller's options first: for ssh the first value given for an option wins.
        cmd.args(opts)
            .args(self.common_opts())
            .args(["-p", &self.port.to_string(), "tester@127.0.0.1"])
            .args(command);
        cmd
    }

    fn run(&self, opts: &[&str], command: &[&str]) -> Output {
        let mut cmd = self.ssh(opts, command);
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Runs a command with stdin closed, failing the test if it takes longer than `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn (is openssh-client installed?)");
    wait_output(child, limit)
}

fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("command did not finish within {limit:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sftp_server_installed() -> bool {
    ["/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server"]
        .iter()
        .any(|p| Path::new(p).is_file())
}

#[test]
fn exec_output_and_exit_codes() {
    let h = Harness::start();
    let out = h.run(&[], &["echo hello; exit 0"]);
    assert_eq!(text(&out.stdout), "hello\n");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));

    let out = h.run(&[], &["exit 3"]);
    assert_eq!(out.status.code(), Some(3));

    // A command the shell cannot find: the shell's own 127 and message on stderr.
    let out = h.run(&[], &["no-such-command-here"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // Killed by a signal: the server sends exit-signal (no exit-status), which OpenSSH
    // reports as exit 255 and, in verbose mode, as the signal's name.
    let out = h.run(&["-o", "LogLevel=DEBUG"], &["kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("exit-signal"),
        "no exit-signal in: {}",
        text(&out.stderr)
    );
}

#[test]
fn stderr_is_separate_without_a_tty() {
    let h = Harness::start();
    let out = h.run(&[], &["echo out; echo err >&2; echo out2"]);
    assert_eq!(text(&out.stdout), "out\nout2\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert!(out.status.success());
    // No terminal unless asked for.
    let out = h.run(&[], &["tty"]);
    assert_eq!(text(&out.stdout), "not a tty\n");
}

#[test]
fn shell_without_a_tty_reads_commands_from_stdin() {
    // `ssh -T host` (how VS Code and scripts drive a remote shell): a login shell with
    // pipes, commands on stdin.
    let h = Harness::start();
    let mut child = h
        .ssh(&["-T"], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo via-shell; echo shell-err >&2; exit 6\n")
        .unwrap();
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(text(&out.stdout), "via-shell\n");
    assert_eq!(text(&out.stderr), "shell-err\n");
    assert_eq!(out.status.code(), Some(6));
}

#[test]
fn env_requests_reach_the_program() {
    let h = Harness::start();
    let out = h.run(
        &["-o", "SetEnv=SSH_TEST_GREETING=hello-from-env"],
        &["echo \"$SSH_TEST_GREETING\""],
    );
    assert_eq!(text(&out.stdout), "hello-from-env\n");
}

/// A deterministic, incompressible byte stream (xorshift64).
/// Writes `total` pseudo-random bytes (from `seed`) in `chunk`-sized writes; their SHA-256.
fn send_pattern(
    out: &mut impl Write,
    total: usize,
    seed: u64,
    chunk: usize,
) -> ring::digest::Digest {
    let mut sent = ring::digest::Context::new(&ring::digest::SHA256);
    let mut state = seed;
    let mut buf = vec![0u8; chunk];
    let mut left = total;
    while left > 0 {
        let n = left.min(buf.len());
        fill(&mut state, &mut buf[..n]);
        sent.update(&buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    sent.finish()
}

fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Streams `total` pseudo-random bytes into `ssh REMOTE` and reads its stdout back;
/// returns the bytes read, whether both sha256 sums match, and the time taken.
fn stream_through(h: &Harness, remote: &str, total: usize) -> (usize, bool, Duration) {
    let mut child = h
        .ssh(&[], &[remote])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let sent = send_pattern(&mut stdin, total, 0x9e37_79b9_7f4a_7c15, 256 * 1024);
        // Dropping stdin sends EOF, which must reach the remote program so that it exits.
        drop(stdin);
        sent
    });
    let mut received = ring::digest::Context::new(&ring::digest::SHA256);
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        received.update(&buf[..n]);
        got += n;
    }
    let elapsed = started.elapsed();
    let sent = writer.join().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "ssh {remote} failed: {status:?}");
    let same = sent.as_ref() == received.finish().as_ref();
    (got, same, elapsed)
}

#[test]
fn stdin_streams_100_mib_through_cat() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let h = Harness::start();
    let (got, same, elapsed) = stream_through(&h, "cat", TOTAL);
    assert_eq!(got, TOTAL);
    assert!(same, "sha256 of what came back differs from what was sent");
    let mb_s = TOTAL as f64 / 1e6 / elapsed.as_secs_f64();
    eprintln!(
        "ssh stdin->cat->stdout: {} MiB in {:.2} s = {mb_s:.1} MB/s (each way, concurrently)",
        TOTAL / (1024 * 1024),
        elapsed.as_secs_f64()
    );
}

#[test]
fn a_program_slow_to_read_gets_all_its_input() {
    // The program reads nothing for 2 s while the client sends more than the server queues
    // for it (32 MiB): the connection must wait, then resume, without losing or stalling.
    const TOTAL: usize = 48 * 1024 * 1024;
    let h = Harness::start();
    let (got, same, _) = stream_through(&h, "sleep 2; cat", TOTAL);
    assert_eq!(got, TOTAL);
    assert!(same, "sha256 of what came back differs from what was sent");
}

/// Runs `ssh -tt` on a pseudo-terminal of the given size, like a user at a terminal.
struct TerminalSsh {
    pty: pty_process::blocking::Pty,
    child: std::process::Child,
}

impl TerminalSsh {
    fn start(h: &Harness, rows: u16, cols: u16, command: &str) -> TerminalSsh {
        let (pty, pts) = pty_process::blocking::open().unwrap();
        pty.resize(pty_process::Size::new(rows, cols)).unwrap();
        let mut args = h.common_opts();
        args.extend(
            [
                "-tt",
                "-p",
                &h.port.to_string(),
                "tester@127.0.0.1",
                command,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let child = pty_process::blocking::Command::new("ssh")
            .args(args)
            .spawn(pts)
            .unwrap();
        TerminalSsh { pty, child }
    }

    /// Reads the terminal until `needle` appears (or it closes, or `limit` passes).
    fn read_until(&mut self, seen: &mut String, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            match self.pty.read(&mut buf) {
                Ok(0) | Err(_) => return seen.contains(needle),
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        true
    }
}

#[test]
fn tty_has_the_requested_size_and_follows_resizes() {
    let h = Harness::start();
    let mut term = TerminalSsh::start(
        &h,
        40,
        100,
        "tty; echo TERM=$TERM; stty size; echo READY; read line; stty size; exit 4",
    );
    let mut seen = String::new();
    assert!(
        term.read_until(&mut seen, "READY", Duration::from_secs(20)),
        "no READY in {seen:?}"
    );
    assert!(seen.contains("/dev/pts/"), "not a terminal: {seen:?}");
    assert!(seen.contains("TERM="), "{seen:?}");
    assert!(seen.contains("40 100"), "size not passed: {seen:?}");
    // The user's terminal changes size: ssh sends window-change, the remote pty follows.
    term.pty.resize(pty_process::Size::new(30, 120)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    term.pty.write_all(b"go\r").unwrap();
    assert!(
        term.read_until(&mut seen, "30 120", Duration::from_secs(20)),
        "resize not seen: {seen:?}"
    );
    let status = term.child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(4),
        "exit status through a pty: {seen:?}"
    );
}

#[test]
fn tty_exec_exit_code_and_merged_output() {
    let h = Harness::start();
    let out = h.run(&["-tt"], &["echo to-stderr >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    // On a terminal stderr and stdout are one stream, sent as channel data.
    assert!(text(&out.stdout).contains("to-stderr"), "{:?}", out);
}

#[test]
fn sftp_and_scp_round_trip() {
    let h = Harness::start();
    let local = h.path("local.bin");
    let mut data = vec![0u8; 3 * 1024 * 1024 + 17];
    fill(&mut 42u64, &mut data);
    std::fs::write(&local, &data).unwrap();
    let remote_dir = h.path("remote");
    std::fs::create_dir(&remote_dir).unwrap();

    let mut sftp = Command::new("sftp");
    let batch = h.path("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}/up.bin\nls {}\nget {}/up.bin {}\n",
            local.display(),
            remote_dir.display(),
            remote_dir.display(),
            remote_dir.display(),
            h.path("down.bin").display()
        ),
    )
    .unwrap();
    sftp.args(h.common_opts())
        .args(["-P", &h.port.to_string(), "-b"])
        .arg(&batch)
        .arg("tester@127.0.0.1");
    let out = run_with_timeout(&mut sftp, Duration::from_secs(60));
    if !sftp_server_installed() {
        // Without OpenSSH's sftp-server the subsystem is refused, cleanly.
        assert!(!out.status.success());
        assert!(
            text(&out.stderr).contains("subsystem request failed"),
            "{}",
            text(&out.stderr)
        );
        eprintln!(
            "sftp-server is not installed (apt-get install openssh-sftp-server): checked the refusal only"
        );
        return;
    }
    assert!(out.status.success(), "sftp: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("up.bin"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(std::fs::read(remote_dir.join("up.bin")).unwrap(), data);
    assert_eq!(std::fs::read(h.path("down.bin")).unwrap(), data);

    // scp (OpenSSH 9 speaks sftp underneath), both directions.
    let mut scp = Command::new("scp");
    scp.args(h.common_opts())
        .args(["-P", &h.port.to_string()])
        .arg(&local)
        .arg(format!("tester@127.0.0.1:{}/scp.bin", remote_dir.display()));
    let out = run_with_timeout(&mut scp, Duration::from_secs(60));
    assert!(out.status.success(), "scp up: {}", text(&out.stderr));
    assert_eq!(std::fs::read(remote_dir.join("scp.bin")).unwrap(), data);
    let mut scp = Command::new("scp");
    scp.args(h.common_opts())
        .args(["-P", &h.port.to_string()])
        .arg(format!("tester@127.0.0.1:{}/scp.bin", remote_dir.display()))
        .arg(h.path("scp-down.bin"));
    let out = run_with_timeout(&mut scp, Duration::from_secs(60));
    assert!(out.status.success(), "scp down: {}", text(&out.stderr));
    assert_eq!(std::fs::read(h.path("scp-down.bin")).unwrap(), data);
}

/// A loopback echo server (one thread per connection), standing in for a service that runs
/// inside the sandbox.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[test]
fn direct_tcpip_with_w_and_l() {
    let h = Harness::start();
    let echo = echo_server();

    // ssh -W: stdin/stdout spliced to the target.
    let mut child = h
        .ssh(&["-W", &format!("127.0.0.1:{echo}")], &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ping over -W\n")
        .unwrap();
    // stdin dropped: EOF travels to the echo server, which closes, which ends ssh.
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(text(&out.stdout), "ping over -W\n", "{}", text(&out.stderr));

    // A target that refuses: the channel open fails and ssh says so.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = h.run(&["-W", &format!("127.0.0.1:{closed}")], &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stdio forwarding failed"),
        "{}",
        text(&out.stderr)
    );

    // ssh -L: a local port forwarded to the target.
    let local = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut fwd = h
        .ssh(
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("127.0.0.1:{local}:127.0.0.1:{echo}"),
            ],
            &[],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", local)) {
            break c;
        }
        assert!(Instant::now() < deadline, "ssh -L never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for round in 0..3 {
        let msg = format!("round {round} over -L\n");
        conn.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0u8; msg.len()];
        conn.read_exact(&mut got).unwrap();
        assert_eq!(text(&got), msg);
    }
    // Bulk both ways at once through the forward (an echo peer is the case where a server
    // that waits for its consumer while holding its only loop deadlocks).
    const BULK: usize = 40 * 1024 * 1024;
    let mut writer_conn = conn.try_clone().unwrap();
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let sent = send_pattern(&mut writer_conn, BULK, 7, 64 * 1024);
        writer_conn.shutdown(std::net::Shutdown::Write).unwrap();
        sent
    });
    let mut received = ring::digest::Context::new(&ring::digest::SHA256);
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < BULK {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "forward closed after {got} bytes");
        received.update(&buf[..n]);
        got += n;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        writer.join().unwrap().as_ref(),
        received.finish().as_ref(),
        "bytes changed on the way through ssh -L"
    );
    eprintln!(
        "ssh -L echo: {} MiB each way in {:.2} s = {:.1} MB/s",
        BULK / (1024 * 1024),
        elapsed.as_secs_f64(),
        BULK as f64 / 1e6 / elapsed.as_secs_f64()
    );
    drop(conn);
    let _ = fwd.kill();
    let _ = fwd.wait();
}

#[test]
fn many_channels_on_one_connection() {
    let h = Harness::start();
    let control = h.path("ctl");
    let control_opt = format!("ControlPath={}", control.display());
    // The master connection, in the background.
    let mut master = h
        .ssh(&["-M", "-N", "-o", &control_opt], &[])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !control.exists() {
        assert!(Instant::now() < deadline, "master never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Eight sessions at once, each a channel of the same SSH connection.
    let children: Vec<_> = (0..8)
        .map(|i| {
            h.ssh(
                &["-o", &control_opt, "-o", "ControlMaster=no"],
                &[&format!("sleep 0.5; echo channel-{i}; exit {i}")],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = wait_output(child, Duration::from_secs(30));
        assert_eq!(text(&out.stdout), format!("channel-{i}\n"));
        assert_eq!(out.status.code(), Some(i as i32));
    }
    let _ = master.kill();
    let _ = master.wait();
}

#[test]
fn keepalives_are_answered() {
    let h = Harness::start();
    // The client gives up after 2 unanswered keepalives (2 s); the command takes 4 s.
    let out = h.run(
        &["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"],
        &["sleep 4; echo still-here"],
    );
    assert_eq!(text(&out.stdout), "still-here\n", "{}", text(&out.stderr));
    assert!(out.status.success());
}

#[test]
fn program_is_killed_when_the_connection_drops() {
    let h = Harness::start();
    let pid_file = h.path("pid");
    let mut child = h
        .ssh(
            &[],
            &[&format!(
                "echo $$ > {}; exec sleep 1000",
                pid_file.display()
            )],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Ok(s) = std::fs::read_to_string(&pid_file)
            && let Ok(pid) = s.trim().parse::<u32>()
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "remote program never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    // The client dies without a word: the TCP connection just closes.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "remote program {pid} still runs after its connection closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_different_host_key_is_refused() {
    let h = Harness::start();
    let other = SshServer::new(None).unwrap();
    std::fs::write(
        &h.known_hosts,
        format!("[127.0.0.1]:{} {}\n", h.port, other.public_key_openssh()),
    )
    .unwrap();
    let marker = h.path("must-not-exist");
    let out = h.run(&[], &[&format!("touch {}", marker.display())]);
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("Host key verification failed"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !marker.exists(),
        "the command ran despite the wrong host key"
    );
}

#[test]
fn programs_run_at_home_without_the_supervisors_secrets() {
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_str().unwrap().to_string();
    let h = Harness::start_process(&[
        ("HOME", &home_path),
        (
            "OPENSHELL_TLS_KEY_PEM",
            "-----BEGIN PRIVATE KEY----- secret",
        ),
        ("OPENSHELL_SSH_HOST_KEY_PEM", "secret host key"),
        ("OPENSHELL_SANDBOX_ID", "sbx-test"),
    ]);
    let out = h.run(&[], &["pwd; env"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().next(), Some(home_path.as_str()), "{stdout}");
    assert!(stdout.contains("OPENSHELL_SANDBOX_ID=sbx-test"), "{stdout}");
    assert!(!stdout.contains("secret"), "a secret leaked: {stdout}");
    assert!(!stdout.contains("OPENSHELL_TLS_KEY_PEM"), "{stdout}");
}

#[test]
fn a_program_that_cannot_start_says_why_and_exits_127() {
    // $SHELL names a file that is not executable: the login shell cannot start.
    let dir = tempfile::tempdir().unwrap();
    let shell = dir.path().join("not-a-shell");
    std::fs::write(&shell, "just text").unwrap();
    let h = Harness::start_process(&[("SHELL", shell.to_str().unwrap())]);
    let out = h.run(&["-T"], &[]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("openshell-sandbox: cannot start the login shell")
            && stderr.contains("not-a-shell"),
        "{stderr}"
    );
}

#[tokio::test]
async fn garbage_ends_the_connection_without_a_panic() {
    use tokio::io::AsyncWriteExt;
    let server = SshServer::new(None).unwrap();
    let mut state = 0x1234_5678u64;
    for case in 0..40 {
        let (mut client, stream) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn({
            let server = server.clone();
            async move { server.serve(stream).await }
        });
        let mut junk = vec![0u8; 1 + (case * 997) % 8192];
        fill(&mut state, &mut junk);
        // Half the cases pass the version exchange and send junk as binary packets.
        if case % 2 == 0 {
            let _ = client.write_all(b"SSH-2.0-fuzz\r\n").await;
        }
        let _ = client.write_all(&junk).await;
        drop(client);
        let ended = tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap_or_else(|_| panic!("case {case}: the server did not end the connection"));
        // A panic in the server shows up as a join error.
        assert!(ended.is_ok(), "case {case}: the server panicked");
    }
}
