//! Sandboxes end to end on the real Docker engine: the gateway creates a container from the
//! locally built sandbox image, hands it a freshly minted sandbox credential, the supervisor
//! inside dials back, and the sandbox is Ready only then. Stop, start, main-process exit,
//! bad input, gateway restart and delete, through the real `openshell` CLI.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use openshell_tests::{CliUser, Gateway, assert_eventually};

const IMAGE: &str = "openshell-test/sandbox:e2e";

/// Builds the sandbox image (with the supervisor this test run built) unless it is current.
fn build_image() {
    let bin = openshell_tests::bin("openshell-sandbox");
    let target_dir: PathBuf = bin.parent().unwrap().parent().unwrap().to_path_buf();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repo.join("scripts/build-sandbox-image"))
        .args(["--runtime", "docker", "--tag", IMAGE])
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

/// Containers this test's gateway owns.
fn containers(gateway_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=openshell.gateway={gateway_id}"),
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

struct Setup {
    u: CliUser,
    gw: Option<Gateway>,
    id: String,
    state: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        build_image();
        let u = CliUser::new();
        u.run(&["pki", "init"]).ok();
        let id = format!("e2e-{}", std::process::id());
        let state = tempfile::tempdir().unwrap();
        let mut s = Setup {
            u,
            gw: None,
            id,
            state,
        };
        let gw = s.spawn("0.0.0.0:0");
        let port = gw.addr.port();
        s.gw = Some(gw);
        s.u.run(&["pki", "issue", "alice", "--gateway", "local"])
            .ok();
        s.u.run(&[
            "gateway",
            "add",
            &format!("https://127.0.0.1:{port}"),
            "--name",
            "local",
        ])
        .ok();
        s
    }

    fn spawn(&self, listen: &str) -> Gateway {
        Gateway::builder()
            .pki(&self.u.default_pki_dir())
            .state_dir(self.state.path())
            .listen(listen)
            .arg("--drivers")
            .arg("docker")
            .arg("--sandbox-image")
            .arg(IMAGE)
            .arg("--gateway-id")
            .arg(&self.id)
            .arg("--shutdown-grace")
            .arg("1s")
            .spawn()
    }

    fn phase(&self, name: &str) -> String {
        let r = self.u.run(&["sandbox", "get", name, "-o", "json"]);
        if r.code != 0 {
            return format!("error: {}", r.stderr);
        }
        r.json()["phase"].as_str().unwrap_or("").to_string()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in containers(&self.id) {
            let _ = Command::new("docker").args(["rm", "-f", &c]).output();
        }
    }
}

#[test]
fn sandbox_lifecycle_on_docker() {
    let mut s = Setup::new();

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
    assert_eq!(containers(&s.id).len(), 1);

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
    assert_eq!(containers(&s.id).len(), 2);

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
        .args(["--label", &format!("openshell.image={IMAGE}")])
        .args([IMAGE, "sh", "-c", "sleep 600"])
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
        !containers(&s.id).contains(&orphan),
        "the leaked workload was not removed: {:?}",
        containers(&s.id)
    );
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("demo") == "Ready",
        "not Ready after a gateway restart: {}",
        s.phase("demo")
    );

    // Delete removes workloads and records.
    s.u.run(&["sandbox", "delete", "--all"]).ok();
    assert!(containers(&s.id).is_empty(), "{:?}", containers(&s.id));
    let list = s.u.run(&["sandbox", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0);
}
