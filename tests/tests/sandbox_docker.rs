//! Sandboxes end to end on the real Docker engine: the gateway creates a container from the
//! locally built sandbox image, hands it a freshly minted sandbox credential, the supervisor
//! inside dials back, and the sandbox is Ready only then. Stop, start, main-process exit,
//! bad input, gateway restart and delete, through the real `openshell` CLI.

use std::process::Command;
use std::time::Duration;

use openshell_tests::sandboxes::image;
use openshell_tests::{SandboxEnv, assert_eventually};

/// Two gateways with their own state directories and default ids on one engine: the second
/// one's start-up reconcile, which removes workloads of its id that it has no record of,
/// leaves the first one's sandbox alone. (Every gateway used to default to the id
/// `openshell`, so each removed the other's sandboxes as leaks.)
#[test]
fn a_second_gateway_on_the_engine_leaves_the_first_ones_sandboxes_alone() {
    let a = SandboxEnv::docker();
    a.u.run(&["sandbox", "create", "--name", "first"]).ok();
    assert_eq!(a.containers().len(), 1);

    let b = SandboxEnv::docker();
    assert_ne!(a.id, b.id, "two state directories share a gateway id");
    assert_eventually!(
        Duration::from_secs(30),
        b.logs().contains("reconciled sandboxes with the runtime"),
        "the second gateway did not reconcile:\n{}",
        b.logs()
    );
    assert!(!b.logs().contains("removing a workload"), "{}", b.logs());
    assert_eq!(a.containers().len(), 1, "{}", b.logs());
    assert_eq!(a.phase("first"), "Ready");
    let list = b.u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    // A restart keeps the id (and so the sandbox) of its state directory.
    let mut a = a;
    let id = a.id.clone();
    a.restart_gateway();
    assert_eventually!(
        Duration::from_secs(30),
        a.logs().contains("reconciled sandboxes with the runtime"),
        "no reconcile after the restart:\n{}",
        a.logs()
    );
    assert!(
        a.logs().contains(&format!("gateway id {id}")),
        "{}",
        a.logs()
    );
    assert_eq!(a.containers().len(), 1);
    assert_eventually!(
        Duration::from_secs(30),
        a.phase("first") == "Ready",
        "not Ready after the restart: {}",
        a.phase("first")
    );
}

#[test]
fn sandbox_lifecycle_on_docker() {
    let mut s = SandboxEnv::docker();

    // Create waits until the supervisor inside has connected back.
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
    assert!(r.stderr.contains("Created sandbox: demo"), "{}", r.stderr);
    assert!(r.stdout.contains("Phase: Ready"), "{}", r.stdout);
    let list =
        s.u.run(&["sandbox", "list", "-o", "json", "--selector", "team=a"])
            .ok()
            .json();
    assert_eq!(list[0]["name"], "demo");
    assert_eq!(list[0]["phase"], "Ready");
    assert_eq!(list[0]["supervisor_connected"], true);
    assert_eq!(s.containers().len(), 1);

    // Stop keeps the workload; the supervisor's session ends with it.
    s.u.run(&["sandbox", "stop", "demo"]).ok();
    assert_eventually!(
        Duration::from_secs(20),
        s.phase("demo") == "Stopped",
        "not Stopped: {}",
        s.phase("demo")
    );
    let got =
        s.u.run(&["sandbox", "get", "demo", "-o", "json"])
            .ok()
            .json();
    assert_eq!(got["supervisor_connected"], false, "{got}");
    s.u.run(&["sandbox", "start"]).ok(); // last used: demo
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("demo") == "Ready",
        "not Ready after start: {}",
        s.phase("demo")
    );

    // A main process that exits puts the sandbox in Error with its code.
    s.u.run(&[
        "sandbox",
        "create",
        "--name",
        "quits",
        "--no-wait",
        "--",
        "sh",
        "-c",
        "sleep 1; exit 3",
    ])
    .ok();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("quits") == "Error",
        "not Error: {}",
        s.phase("quits")
    );
    let got =
        s.u.run(&["sandbox", "get", "quits", "-o", "json"])
            .ok()
            .json();
    assert!(got["reason"].as_str().unwrap().contains("code 3"), "{got}");

    // A watch sees a new sandbox come up and go away.
    let mut watch =
        s.u.command()
            .args(["sandbox", "watch", "watched"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let watch_out = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(watch_out)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines: Vec<String> = Vec::new();
    let wait_for = |lines: &mut Vec<String>, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !lines.iter().any(|l| l.contains(what)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("no '{what}' event; watch printed {lines:?}"),
            }
        }
    };
    s.u.run(&["sandbox", "create", "--name", "watched", "--no-wait"])
        .ok();
    wait_for(&mut lines, "watched Ready");
    s.u.run(&["sandbox", "delete", "watched"]).ok();
    wait_for(&mut lines, "DELETED watched");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(lines[0].starts_with("ADDED watched"), "{lines:?}");

    // Its output, through the gateway.
    s.u.run(&[
        "sandbox",
        "create",
        "--name",
        "talker",
        "--no-wait",
        "--",
        "sh",
        "-c",
        "echo hello-out; echo hello-err >&2; sleep 600",
    ])
    .ok();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("talker") == "Ready",
        "not Ready: {}",
        s.phase("talker")
    );
    let mut logs = s.u.run(&["sandbox", "logs", "talker"]);
    for _ in 0..50 {
        if logs.stdout.contains("hello-out") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        logs = s.u.run(&["sandbox", "logs", "talker"]);
    }
    let logs = logs.ok();
    assert!(logs.stdout.contains("hello-out"), "{}", logs.stdout);
    assert!(logs.stderr.contains("hello-err"), "{}", logs.stderr);
    s.u.run(&["sandbox", "delete", "talker"]).ok();

    // Bad input: nothing half-created.
    let r = s.u.run(&["sandbox", "create", "--name", "demo"]).fails();
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    let r =
        s.u.run(&["sandbox", "create", "--name", "Bad_Name"])
            .fails();
    assert!(r.stderr.contains("invalid sandbox name"), "{}", r.stderr);
    let r =
        s.u.run(&[
            "sandbox",
            "create",
            "--name",
            "noimg",
            "--image",
            "openshell-test/missing:1",
        ])
        .fails();
    assert!(
        r.stderr.contains("openshell-test/missing:1"),
        "{}",
        r.stderr
    );
    assert!(s.u.run(&["sandbox", "get", "noimg"]).code != 0);
    let r = s.u.run(&["sandbox", "get", "nosuch"]).fails();
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    assert_eq!(s.containers().len(), 2);

    // A gateway restart keeps the sandbox running and its supervisor comes back.
    let port = s.gw.as_ref().unwrap().addr.port();
    let mut gw = s.gw.take().unwrap();
    gw.terminate();
    gw.wait_exit(Duration::from_secs(15))
        .expect("gateway did not stop");
    drop(gw);
    // While it is away: the sandbox's container stops, and a workload with this gateway's
    // labels but no record appears (as a crash between create and record would leave).
    let stopped = Command::new("docker")
        .args(["stop", "-t", "1", "openshell-demo"])
        .output()
        .unwrap();
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let orphan = format!("openshell-orphan-{}", std::process::id());
    let leaked = Command::new("docker")
        .args(["run", "-d", "--name", &orphan])
        .args(["--label", "openshell.managed=true"])
        .args(["--label", &format!("openshell.gateway={}", s.id)])
        .args(["--label", "openshell.sandbox-id=orphan-1"])
        .args(["--label", "openshell.sandbox-name=orphan"])
        .args(["--label", &format!("openshell.image={}", image())])
        .args([image(), "sh", "-c", "sleep 600"])
        .output()
        .unwrap();
    assert!(
        leaked.status.success(),
        "{}",
        String::from_utf8_lossy(&leaked.stderr)
    );
    s.gw = Some(s.spawn(&format!("0.0.0.0:{port}")));
    // The leaked workload is removed; the stopped sandbox, meant to run, is restarted and
    // its supervisor comes back (below).
    assert_eventually!(
        Duration::from_secs(15),
        !s.containers().contains(&orphan),
        "the leaked workload was not removed: {:?}",
        s.containers()
    );
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("demo") == "Ready",
        "not Ready after a gateway restart: {}",
        s.phase("demo")
    );

    // Delete removes workloads and records.
    s.u.run(&["sandbox", "delete", "--all"]).ok();
    assert!(s.containers().is_empty(), "{:?}", s.containers());
    let list = s.u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

/// The gateway's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("no VmHWM in /proc/PID/status")
}

/// A sandbox prints 8 MiB without a single newline. The engine's log driver stores it in
/// entries of 16 KiB (Docker's copier cuts a line at its 16 KiB buffer), and the gateway
/// hands it out in pieces of exactly `MAX_LINE` (also 16 KiB): 512 pieces, none longer,
/// nothing lost. `--tail` asks the engine for the last entries only. The gateway never holds
/// the line: its peak memory grows by less than the output's size.
///
/// The size is chosen to stay inside one json-file of this machine's daemon (`max-size`
/// 10m, `max-file` 3: 608 entries of 16 KiB per file): more output than the daemon keeps
/// (about 29 MiB here) would lose its oldest pieces in the daemon, not in the gateway.
#[test]
fn logs_stay_bounded_whatever_a_sandbox_prints() {
    const PIECE: usize = 16 * 1024;
    const TOTAL: usize = 8 << 20;
    let s = SandboxEnv::docker();
    s.u.run(&[
        "sandbox",
        "create",
        "--name",
        "flood",
        "--",
        "sh",
        "-c",
        &format!("yes x | tr -d '\\n' | head -c {TOTAL}; sleep 600"),
    ])
    .ok();
    let pid = s.gw.as_ref().unwrap().pid();
    let rss_before = peak_rss_kib(pid);
    let pieces = |r: &openshell_tests::Run| -> Vec<usize> {
        r.stdout.lines().map(str::len).collect::<Vec<_>>()
    };
    // The output may still be arriving right after create: wait for all of it.
    let mut all = s.u.run(&["sandbox", "logs", "flood"]).ok();
    for _ in 0..100 {
        if pieces(&all).iter().sum::<usize>() >= TOTAL {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        all = s.u.run(&["sandbox", "logs", "flood"]).ok();
    }
    let got = pieces(&all);
    assert_eq!(
        got.len(),
        TOTAL / PIECE,
        "pieces: {:?}",
        &got[..got.len().min(8)]
    );
    assert!(got.iter().all(|n| *n == PIECE), "a piece is not 16 KiB");
    assert!(all.stdout.lines().all(|l| l.bytes().all(|b| b == b'x')));

    let tail = s.u.run(&["sandbox", "logs", "flood", "--tail", "3"]).ok();
    assert_eq!(pieces(&tail), [PIECE; 3]);

    let rss_after = peak_rss_kib(pid);
    eprintln!(
        "gateway peak RSS {rss_before} KiB before reading {TOTAL} bytes of output, {rss_after} KiB after"
    );
    assert!(
        rss_after - rss_before < (TOTAL / 1024) as u64,
        "the gateway's peak memory grew by {} KiB reading {} KiB of output",
        rss_after - rss_before,
        TOTAL / 1024
    );
}

/// A gateway on loopback with the Docker driver: its containers cannot reach the host's
/// 127.0.0.1, so no supervisor could ever connect back. The create fails at once, naming
/// both fixes, and leaves nothing behind (it used to wait out the whole ready timeout).
#[test]
fn a_create_whose_sandbox_cannot_call_back_fails_at_once() {
    let u = openshell_tests::CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = openshell_tests::Gateway::builder()
        .pki(&u.default_pki_dir())
        .listen("127.0.0.1:0")
        .arg("--drivers")
        .arg("docker")
        .arg("--sandbox-image")
        .arg(image())
        .arg("--ready-timeout")
        .arg("30s")
        .spawn();
    u.enroll(gw.addr.port());
    let started = std::time::Instant::now();
    let r = u.run(&["sandbox", "create", "--name", "lonely"]).fails();
    let took = started.elapsed();
    eprintln!("create refused after {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for fix in ["--listen 0.0.0.0", "--sandbox-callback"] {
        assert!(r.stderr.contains(fix), "{}", r.stderr);
    }
    let list = u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    let id = std::fs::read_to_string(gw.state_dir.join("gateway-id")).unwrap();
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=openshell.gateway={}", id.trim()))
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "a container was created");
}
