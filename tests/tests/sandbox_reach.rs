//! Reaching into sandboxes through the edge, on the real Docker engine and the real Podman
//! service: port forwards, exec, SSH (the CLI's own and plain OpenSSH with `ssh-config`),
//! an interactive shell, upload and download. Every byte rides a CONNECT tunnel on the CLI's
//! connection, relayed by the gateway through the sandbox supervisor's own connection; no
//! sandbox port is published on the host.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use openshell_tests::{Run, SandboxEnv, assert_eventually};

const MIB: usize = 1024 * 1024;

fn sha256_file(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn sha256_bytes(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Waits for a child, killing it (and failing) after `limit`.
fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{:?} did not end within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn random_file(path: &std::path::Path, bytes: usize) {
    let out = Command::new("head")
        .arg("-c")
        .arg(bytes.to_string())
        .arg("/dev/urandom")
        .stdout(std::fs::File::create(path).unwrap())
        .status()
        .unwrap();
    assert!(out.success());
}

fn exec(s: &SandboxEnv, name: &str, script: &str) -> Run {
    s.u.run(&["sandbox", "exec", name, "--", "sh", "-c", script])
}

fn create_ready(s: &SandboxEnv, name: &str, command: &[&str]) {
    let mut args = vec!["sandbox", "create", "--name", name];
    if !command.is_empty() {
        args.push("--");
        args.extend_from_slice(command);
    }
    let r = s.u.run(&args);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, s.logs());
}

/// Forward: 100 MiB served by busybox httpd inside the sandbox, fetched through a local
/// port; a port nobody listens on; background start, list, stop.
fn forwards(s: &SandboxEnv) {
    let port = openshell_tests::free_port();
    let serve = format!(
        "d=$HOME/srv && mkdir -p $d && head -c {} /dev/urandom > $d/big && sha256sum $d/big > $d/big.sha && exec busybox httpd -f -p {port} -h $d",
        100 * MIB
    );
    create_ready(s, "web", &["sh", "-c", &serve]);
    let r =
        s.u.run(&["forward", "start", &port.to_string(), "web", "-d"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, s.logs());
    let list = s.u.run(&["forward", "list", "-o", "json"]).ok().json();
    assert_eq!(list[0]["sandbox"], "web", "{list}");
    assert_eq!(list[0]["port"], port, "{list}");
    assert_eq!(list[0]["running"], true, "{list}");

    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    // httpd writes the file before it listens, so once the .sha answers the data is there.
    let mut expected: String;
    assert_eventually!(
        Duration::from_secs(60),
        {
            let out = Command::new("curl")
                .args(["-sf", &url("big.sha")])
                .output()
                .unwrap();
            expected = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            !expected.is_empty()
        },
        "the sandbox's web server never answered through the forward"
    );
    let body = Command::new("curl")
        .args(["-sf", &url("big")])
        .output()
        .unwrap();
    assert!(body.status.success());
    assert_eq!(body.stdout.len(), 100 * MIB);
    assert_eq!(sha256_bytes(&body.stdout), expected);

    // A port with nothing behind it: the local connection is closed, the forward says why.
    let dead = openshell_tests::free_port();
    let r =
        s.u.run(&["forward", "start", &dead.to_string(), "web", "-d"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "15",
            &format!("http://127.0.0.1:{dead}/"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = s.u.path(&format!("xdg/openshell/forwards/web-{dead}.log"));
    assert_eventually!(
        Duration::from_secs(10),
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!("nothing accepts connections on port {dead}")),
        "the forward did not report the dead port: {:?}",
        std::fs::read_to_string(&log)
    );

    // Stop frees the local port; a second forward on a taken port is refused.
    let r =
        s.u.run(&["forward", "start", &port.to_string(), "web", "-d"])
            .fails();
    assert!(r.stderr.contains("already running"), "{}", r.stderr);
    s.u.run(&["forward", "stop", &port.to_string()]).ok();
    s.u.run(&["forward", "stop", &dead.to_string(), "web"]).ok();
    let list = s.u.run(&["forward", "list", "-o", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    let r = s.u.run(&["forward", "stop", &port.to_string()]).fails();
    assert!(r.stderr.contains("no background forward"), "{}", r.stderr);
    let r = s.u.run(&["forward", "start", "http", "web"]).fails();
    assert!(r.stderr.contains("not a port"), "{}", r.stderr);
    s.u.run(&["sandbox", "delete", "web"]).ok();
}

/// Exec: output streams, exit codes, stdin, terminal.
fn execs(s: &SandboxEnv) {
    let r = exec(s, "box", "echo out; echo err >&2; exit 7");
    assert_eq!(r.code, 7, "{}\n{}\n{}", r.stdout, r.stderr, s.logs());
    assert_eq!(r.stdout, "out\n");
    assert!(r.stderr.contains("err"), "{}", r.stderr);
    let r =
        s.u.run(&[
            "sandbox",
            "exec",
            "box",
            "-w",
            "/tmp",
            "-e",
            "GREETING=hi there",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING from $(pwd)\"",
        ])
        .ok();
    assert_eq!(r.stdout, "hi there from /tmp\n");
    // stdin streams through and ends.
    let mut child =
        s.u.command()
            .args(["sandbox", "exec", "box", "--", "wc", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![b'x'; MIB];
        for _ in 0..8 {
            stdin.write_all(&chunk).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (8 * MIB).to_string()
    );
    // --tty gives the command a terminal.
    let r = s.u.run(&[
        "sandbox",
        "exec",
        "box",
        "--tty",
        "--",
        "sh",
        "-c",
        "test -t 1 && echo tty",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("tty"), "{}", r.stdout);
    // A command that does not exist: 127 as in a shell.
    let r =
        s.u.run(&["sandbox", "exec", "box", "--", "no-such-command"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
}

/// Plain OpenSSH with the printed Host block, and the pinned host key doing its job.
fn plain_ssh(s: &SandboxEnv) {
    let config = s.u.run(&["sandbox", "ssh-config", "box"]).ok().stdout;
    assert!(config.contains("Host openshell-box"), "{config}");
    assert!(config.contains("StrictHostKeyChecking yes"), "{config}");
    assert!(!config.contains("StrictHostKeyChecking no"), "{config}");
    let file = s.u.path("ssh_config");
    std::fs::write(&file, &config).unwrap();
    let out =
        s.u.command_for("ssh")
            .arg("-F")
            .arg(&file)
            .args([
                "-o",
                "BatchMode=yes",
                "openshell-box",
                "echo",
                "via-ssh",
                "$((6*7))",
            ])
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-ssh 42\n");
    // scp rides the same path (sftp subsystem).
    let local = s.u.path("scp-me");
    std::fs::write(&local, b"copied by scp\n").unwrap();
    let out =
        s.u.command_for("scp")
            .arg("-F")
            .arg(&file)
            .arg("-q")
            .arg(&local)
            .arg("openshell-box:/tmp/scp-me")
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        exec(s, "box", "cat /tmp/scp-me").ok().stdout,
        "copied by scp\n"
    );

    // Another key for the sandbox's alias: ssh refuses to talk to it.
    let fake = s.u.path("wrong_known_hosts");
    std::fs::write(
        &fake,
        "openshell-box ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFa\n",
    )
    .unwrap();
    let out =
        s.u.command_for("ssh")
            .arg("-F")
            .arg(&file)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", fake.display()))
            .args(["-o", "BatchMode=yes", "openshell-box", "true"])
            .output()
            .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Host key verification failed")
            || err.contains("HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );
}

/// `sandbox connect` is an interactive shell on a terminal; Ctrl-D (end of input) ends it.
fn interactive(s: &SandboxEnv) {
    let openshell = openshell_tests::bin("openshell");
    let mut child =
        s.u.command_for("script")
            .args(["-qfec"])
            .arg(format!("{} sandbox connect box", openshell.display()))
            .arg("/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    stdin.write_all(b"echo interactive-$((20+22))\n").unwrap();
    stdin
        .write_all(b"test -t 0 && echo on-a-terminal\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Ctrl-D at an empty prompt ends the shell, and with it the command.
    stdin.write_all(b"\x04").unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(20));
    drop(stdin);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("interactive-42"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("on-a-terminal"), "{text}");
    assert!(out.status.success(), "{:?}", out.status);
}

/// Upload and download: 100 MiB each way with equal digests, directories, atomicity.
fn transfers(s: &SandboxEnv) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    random_file(&big, 100 * MIB);
    let local_sum = sha256_file(&big);
    s.u.run(&["sandbox", "upload", "box", big.to_str().unwrap(), "/tmp"])
        .ok();
    let remote = exec(s, "box", "sha256sum /tmp/big.bin").ok().stdout;
    assert!(remote.starts_with(&local_sum), "{remote} vs {local_sum}");

    let back = dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    s.u.run(&[
        "sandbox",
        "download",
        "box",
        "/tmp/big.bin",
        back.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(sha256_file(&back.join("big.bin")), local_sum);

    // A directory tree, uploaded to a new name and downloaded back.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/deep.txt"), "deep\n").unwrap();
    std::fs::write(tree.join("top.txt"), "top\n").unwrap();
    s.u.run(&[
        "sandbox",
        "upload",
        "box",
        tree.to_str().unwrap(),
        "/tmp/project",
    ])
    .ok();
    assert_eq!(
        exec(s, "box", "cat /tmp/project/a/b/deep.txt").ok().stdout,
        "deep\n"
    );
    s.u.run(&[
        "sandbox",
        "download",
        "box",
        "/tmp/project",
        back.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::read_to_string(back.join("project/top.txt")).unwrap(),
        "top\n"
    );

    // Modes from the sandbox are not trusted: no setuid, setgid, sticky or world-write
    // lands locally, and the user's umask applies (the CLI inherits this process's).
    exec(
        s,
        "box",
        "mkdir /tmp/modes && echo x >/tmp/modes/tool && chmod 6777 /tmp/modes/tool && chmod 1777 /tmp/modes",
    )
    .ok();
    s.u.run(&[
        "sandbox",
        "download",
        "box",
        "/tmp/modes",
        back.to_str().unwrap(),
    ])
    .ok();
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    };
    let allowed = 0o777 & !(umask | 0o002);
    assert_eq!(mode(&back.join("modes/tool")), allowed);
    assert_eq!(mode(&back.join("modes")), allowed);

    // Bad input: nothing is written on either side.
    let r =
        s.u.run(&["sandbox", "upload", "box", "/no/such/file"])
            .fails();
    assert!(r.stderr.contains("/no/such/file"), "{}", r.stderr);
    let r =
        s.u.run(&[
            "sandbox",
            "download",
            "box",
            "/tmp/nope",
            back.to_str().unwrap(),
        ])
        .fails();
    assert!(r.stderr.contains("failed"), "{}", r.stderr);
    assert!(!back.join("nope").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&back)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".openshell"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Stop/start keeps files; a stopped sandbox refuses tunnels with the fix.
fn stop_start_and_refusals(s: &mut SandboxEnv) {
    exec(s, "box", "echo kept > \"$HOME/kept.txt\"").ok();
    s.u.run(&["sandbox", "stop", "box"]).ok();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("box") == "Stopped",
        "not Stopped: {}",
        s.phase("box")
    );
    let r = exec(s, "box", "true");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("openshell sandbox start box"),
        "{}",
        r.stderr
    );
    // The raw tunnel (what ssh's ProxyCommand opens) is refused by the gateway too.
    let r = s.u.run(&["ssh-proxy", "box"]).fails();
    assert!(r.stderr.contains("start"), "{}", r.stderr);
    let r = exec(s, "nosuch", "true");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    s.u.run(&["sandbox", "start", "box"]).ok();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("box") == "Ready",
        "not Ready after start: {}",
        s.phase("box")
    );
    assert_eq!(
        exec(s, "box", "cat \"$HOME/kept.txt\"").ok().stdout,
        "kept\n"
    );

    // After a gateway restart the supervisor comes back and tunnels work again.
    s.restart_gateway();
    assert_eventually!(
        Duration::from_secs(30),
        s.phase("box") == "Ready",
        "not Ready after a gateway restart: {}",
        s.phase("box")
    );
    assert_eq!(exec(s, "box", "echo back").ok().stdout, "back\n");
}

/// The sandbox's credential is out of the workload's reach (issue 14, item 3): exec and SSH
/// sessions run as the unprivileged `sandbox` user with no capabilities and no new
/// privileges; the credential files, the supervisor's environment and memory are closed to
/// it; nothing secret is in the runtime's view of the container. The supervisor itself read
/// the files: the sandbox is Ready.
fn credential_is_out_of_reach(s: &SandboxEnv) {
    let who = exec(
        s,
        "box",
        "id -u; id -g; echo $HOME; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status",
    )
    .ok();
    assert_eq!(
        who.stdout,
        "1000\n1000\n/sandbox\nCapEff:\t0000000000000000\nCapBnd:\t00000000000000e1\nNoNewPrivs:\t1\n",
        "{}",
        who.stderr
    );
    for (what, script) in [
        ("the key", "cat /run/openshell/credentials/tls.key"),
        ("the credential directory", "ls /run/openshell/credentials"),
        ("the supervisor's environment", "cat /proc/1/environ"),
        ("the supervisor's memory", "head -c 16 /proc/1/mem"),
    ] {
        let r = exec(s, "box", script);
        assert_ne!(r.code, 0, "the workload read {what}: {}", r.stdout);
        assert!(
            r.stderr.contains("Permission denied") || r.stderr.contains("Operation not permitted"),
            "{what}: {}",
            r.stderr
        );
    }
    // No way back to root through a setuid binary: no-new-privileges.
    let container = s
        .containers()
        .into_iter()
        .find(|c| c.ends_with("-box"))
        .unwrap();
    let inspect = s
        .runtime_cli()
        .args(["inspect", &container])
        .output()
        .unwrap();
    let inspect = String::from_utf8_lossy(&inspect.stdout);
    for secret in [
        "PRIVATE KEY",
        "OPENSHELL_TLS",
        "OPENSSH PRIVATE",
        "BEGIN CERTIFICATE",
    ] {
        assert!(
            !inspect.contains(secret),
            "{secret} in {container}'s spec: {inspect}"
        );
    }
}

fn scenario(mut s: SandboxEnv) {
    forwards(&s);
    create_ready(&s, "box", &[]);
    credential_is_out_of_reach(&s);
    execs(&s);
    plain_ssh(&s);
    interactive(&s);
    // Clients came and went (forwards stopped, ssh sessions ended): the sandbox is untouched.
    assert_eq!(s.phase("box"), "Ready");
    transfers(&s);
    stop_start_and_refusals(&mut s);
    s.u.run(&["sandbox", "delete", "--all"]).ok();
    assert!(s.containers().is_empty(), "{:?}", s.containers());
}

#[test]
fn reach_sandboxes_on_docker() {
    scenario(SandboxEnv::docker());
}

#[test]
fn reach_sandboxes_on_podman() {
    scenario(SandboxEnv::podman());
}
