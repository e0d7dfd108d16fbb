//! Sandboxes end to end on the MicroVM driver (`--drivers vm`) with real QEMU: the gateway
//! boots a `-M microvm` guest (Debian's cloud kernel, a disk made from the locally built
//! sandbox image), the supervisor inside dials back over QEMU's user network, and the
//! sandbox is Ready only then. Stop/start, delete, gateway shutdown and bad input, through
//! the real `openshell` CLI. Under TCG (this machine's /dev/kvm is PVM) a boot takes a few
//! seconds, so the boots are few.
//! `openshell sandbox exec` reaches into the VM like into a container: through the gateway's
//! relay to the supervisor's SSH server, over the guest's one connection (TCP: QEMU forwards
//! the guest's connections to the gateway, and nothing else).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openshell_tests::{CliUser, Gateway, assert_eventually};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Docker daemon the image is built in and exported from; started when it is down.
fn ensure_docker() {
    let up = || {
        Command::new("docker")
            .arg("info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if up() {
        return;
    }
    let log = std::env::temp_dir().join(format!("openshell-vm-dockerd-{}.log", std::process::id()));
    // Left running for later tests, as the conformance suite does; the shell detaches it.
    let started = Command::new("sh")
        .arg("-c")
        .arg(format!("dockerd >{} 2>&1 &", log.display()))
        .status()
        .expect("cannot run sh");
    assert!(
        started.success(),
        "cannot start dockerd (apt-get install -y docker.io)"
    );
    assert_eventually!(
        Duration::from_secs(30),
        up(),
        "dockerd did not answer; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The guest kernel artifacts (cached outside the checkout) and the sandbox image with the
/// supervisor this test run built; both steps are no-ops when current.
fn build_artifacts() {
    ensure_docker();
    let out = Command::new(repo().join("scripts/build-vm-kernel"))
        .output()
        .expect("cannot run scripts/build-vm-kernel");
    assert!(
        out.status.success(),
        "building the VM kernel artifacts failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = openshell_tests::bin("openshell-sandbox");
    let target_dir: PathBuf = bin.parent().unwrap().parent().unwrap().to_path_buf();
    let out = Command::new(repo().join("scripts/build-sandbox-image"))
        .args([
            "--runtime",
            "docker",
            "--tag",
            openshell_tests::sandboxes::test_image("vm"),
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(repo())
        .output()
        .expect("cannot run scripts/build-sandbox-image");
    assert!(
        out.status.success(),
        "building the sandbox image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pids of QEMU processes whose command line mentions `needle` (a state dir).
fn qemu_pids(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with("qemu-system") && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

struct Setup {
    u: CliUser,
    gw: Option<Gateway>,
    state: tempfile::TempDir,
    vm_dir: PathBuf,
}

impl Setup {
    fn new(extra: &[&str]) -> Setup {
        let u = CliUser::new();
        u.run(&["pki", "init"]).ok();
        let state = tempfile::tempdir().unwrap();
        let vm_dir = state.path().join("vm");
        let mut s = Setup {
            u,
            gw: None,
            state,
            vm_dir,
        };
        let gw = s.spawn("127.0.0.1:0", extra);
        let port = gw.addr.port();
        s.gw = Some(gw);
        s.u.enroll(port);
        s
    }

    fn spawn(&self, listen: &str, extra: &[&str]) -> Gateway {
        let mut b = Gateway::builder()
            .pki(&self.u.default_pki_dir())
            .state_dir(&self.state.path().join("gw"))
            .listen(listen)
            .arg("--drivers")
            .arg("vm")
            .arg("--vm-state-dir")
            .arg(self.vm_dir.to_str().unwrap())
            .arg("--sandbox-image")
            .arg(openshell_tests::sandboxes::test_image("vm"))
            .arg("--shutdown-grace")
            .arg("1s");
        for a in extra {
            b = b.arg(a);
        }
        b.spawn()
    }

    fn gw(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }

    fn phase(&self, name: &str) -> String {
        self.u.sandbox_phase(name)
    }

    fn sandbox_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.vm_dir.join("sandboxes"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn vms(&self) -> Vec<u32> {
        qemu_pids(self.vm_dir.to_str().unwrap())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The harness kills the gateway with SIGKILL, which leaves its VMs running.
        for pid in self.vms() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[test]
fn vm_sandbox_lifecycle() {
    build_artifacts();
    let mut s = Setup::new(&[]);
    assert!(
        s.gw().logs().contains("using TCG") || s.gw().logs().contains("using KVM"),
        "no accelerator line in the gateway log:\n{}",
        s.gw().logs()
    );

    // Create boots the VM and waits for its supervisor: Ready.
    let t = Instant::now();
    let r = s.u.run(&[
        "sandbox", "create", "--name", "demo", "--cpu", "1", "--memory", "384m",
    ]);
    let boot = t.elapsed();
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, s.gw().logs());
    assert!(r.stdout.contains("Phase: Ready"), "{}", r.stdout);
    eprintln!("vm create-to-Ready (first boot, incl. image export and mkfs): {boot:?}");

    // One QEMU, with the limits asked for and no secret on its command line.
    let pids = s.vms();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let cmd = cmdline(pids[0]);
    assert!(cmd.contains("-smp 1 ") && cmd.contains("-m 384M "), "{cmd}");
    assert!(cmd.contains("microvm"), "{cmd}");
    assert!(
        !cmd.contains("PRIVATE KEY") && !cmd.contains("OPENSHELL_TLS"),
        "{cmd}"
    );
    let dirs = s.sandbox_dirs();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = s.vm_dir.join("sandboxes").join(&dirs[0]);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("env.json")), 0o600);
    assert!(
        !dir.join("initrd.cpio").exists(),
        "the per-start initramfs (with credentials) was left on disk"
    );

    // The console is the sandbox's log. The supervisor's line may reach the serial console
    // after the gateway already counts the sandbox Ready (slow under TCG): poll for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let logs = s.u.run(&["sandbox", "logs", "demo"]).ok();
        if logs.stdout.contains("connected to the gateway") || Instant::now() > deadline {
            break logs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        logs.stdout
            .contains("openshell-init: starting the main process"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout.contains("connected to the gateway"),
        "{}",
        logs.stdout
    );

    // Exec through the relay into the guest: output, exit code, and a file the stop/start
    // below must keep.
    let t = Instant::now();
    let r = s.u.run(&[
        "sandbox",
        "exec",
        "demo",
        "--",
        "sh",
        "-c",
        "uname -r; echo kept > \"$HOME/exec-file\"; exit 3",
    ]);
    eprintln!("vm exec round trip: {:?}", t.elapsed());
    assert_eq!(r.code, 3, "{}\n{}\n{}", r.stdout, r.stderr, s.gw().logs());
    assert!(r.stdout.contains("cloud-amd64"), "{}", r.stdout);

    // The guest reaches the gateway and nothing else of the host (issue 14, item 1): not a
    // service on the host's loopback, not even the gateway's own port at slirp's host
    // address; only the one forward QEMU makes to the gateway.
    assert!(
        cmd.contains("restrict=on") && cmd.contains("guestfwd="),
        "{cmd}"
    );
    let host_service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    host_service.set_nonblocking(true).unwrap();
    let port = host_service.local_addr().unwrap().port();
    let gw_port = s.gw().addr.port();
    let probe = s.u.run(&[
        "sandbox",
        "exec",
        "demo",
        "--",
        "sh",
        "-c",
        &format!(
            "for p in {port} {gw_port}; do echo | nc -w 3 10.0.2.2 $p >/dev/null 2>&1 && echo reached $p; done; echo probed"
        ),
    ]);
    assert_eq!(probe.stdout, "probed\n", "{}", probe.stderr);
    assert!(
        host_service.accept().is_err(),
        "the guest connected to a host loopback service"
    );
    // Its credential: root-only in the guest, where the workload runs as `sandbox`; 0600 in
    // a 0700 directory on the host.
    let r = s.u.run(&[
        "sandbox",
        "exec",
        "demo",
        "--",
        "sh",
        "-c",
        "id -u; cat /run/openshell/credentials/tls.key",
    ]);
    assert_ne!(r.code, 0, "the workload read the key: {}", r.stdout);
    assert_eq!(r.stdout, "1000\n");
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert_eq!(mode(&dir.join("credentials")), 0o700);
    assert_eq!(mode(&dir.join("credentials").join("tls.key")), 0o600);
    let minted = std::fs::read(dir.join("credentials").join("tls.crt")).unwrap();

    // Stop ends the VM (the main process gets SIGTERM) and keeps its disk; start boots it
    // again.
    s.u.run(&["sandbox", "stop", "demo"]).ok();
    assert_eventually!(
        Duration::from_secs(20),
        s.phase("demo") == "Stopped",
        "not Stopped: {}",
        s.phase("demo")
    );
    assert!(s.vms().is_empty(), "{:?}", s.vms());
    assert!(dir.join("disk.img").exists());
    // A clean stop: the init asked over the console SIGTERMed the supervisor, which exited.
    let logs = s.u.run(&["sandbox", "logs", "demo"]).ok();
    assert!(
        logs.stdout
            .contains("openshell-init: main process exited with code 0"),
        "{}",
        logs.stdout
    );
    let t = Instant::now();
    s.u.run(&["sandbox", "start", "demo"]).ok();
    assert_ne!(
        s.phase("demo"),
        "Ready",
        "Ready before the new supervisor connected"
    );
    assert_eventually!(
        Duration::from_secs(120),
        s.phase("demo") == "Ready",
        "not Ready after start: {}\n{}",
        s.phase("demo"),
        s.gw().logs()
    );
    eprintln!("vm start-to-Ready (second boot): {:?}", t.elapsed());
    // The start gave it a freshly minted credential (one stopped past its life would
    // otherwise come back with an expired one).
    assert_ne!(
        std::fs::read(dir.join("credentials").join("tls.crt")).unwrap(),
        minted,
        "start kept the credential minted at create"
    );
    let r = s.u.run(&[
        "sandbox",
        "exec",
        "demo",
        "--",
        "sh",
        "-c",
        "cat \"$HOME/exec-file\"",
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, s.gw().logs());
    assert_eq!(r.stdout, "kept\n");

    // Bad input: clear errors, nothing left behind.
    let r =
        s.u.run(&["sandbox", "create", "--name", "tiny", "--memory", "64m"])
            .fails();
    assert!(r.stderr.contains("at least 128 MiB"), "{}", r.stderr);
    let r =
        s.u.run(&["sandbox", "create", "--name", "huge", "--cpu", "64"])
            .fails();
    assert!(r.stderr.contains("CPUs"), "{}", r.stderr);
    let r = s.u.run(&[
        "sandbox",
        "create",
        "--name",
        "noimg",
        "--image",
        "openshell-test/missing:1",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("openshell-test/missing:1"),
        "{}",
        r.stderr
    );
    for name in ["tiny", "huge", "noimg"] {
        assert!(
            s.u.run(&["sandbox", "get", name]).code != 0,
            "{name} exists"
        );
    }
    assert_eq!(s.sandbox_dirs(), dirs, "a failed create left files");
    assert_eq!(s.vms().len(), 1);

    // Delete removes the VM process and its files.
    s.u.run(&["sandbox", "delete", "demo"]).ok();
    assert!(s.vms().is_empty(), "{:?}", s.vms());
    assert!(s.sandbox_dirs().is_empty(), "{:?}", s.sandbox_dirs());

    // A gateway shutdown stops its VMs (they are its host's processes, not a daemon's);
    // the next start boots them again.
    s.u.run(&["sandbox", "create", "--name", "keeper"]).ok();
    assert_eq!(s.vms().len(), 1);
    let port = s.gw().addr.port();
    let mut gw = s.gw.take().unwrap();
    gw.terminate();
    gw.wait_exit(Duration::from_secs(20))
        .expect("gateway did not stop");
    drop(gw);
    assert!(
        s.vms().is_empty(),
        "VMs outlived the gateway: {:?}",
        s.vms()
    );
    s.gw = Some(s.spawn(&format!("127.0.0.1:{port}"), &[]));
    assert_eventually!(
        Duration::from_secs(120),
        s.phase("keeper") == "Ready",
        "not Ready after a gateway restart: {}\n{}",
        s.phase("keeper"),
        s.gw().logs()
    );
    s.u.run(&["sandbox", "delete", "--all"]).ok();
    assert!(s.vms().is_empty(), "{:?}", s.vms());
    assert!(s.sandbox_dirs().is_empty(), "{:?}", s.sandbox_dirs());
}

/// A host without QEMU or kernel artifacts, and a VM that fails to start: one clear error
/// each, and nothing left behind. No VM boots here.
#[test]
fn vm_host_problems_are_reported() {
    build_artifacts();
    let empty = tempfile::tempdir().unwrap();
    let s = Setup::new(&["--vm-kernel-dir", empty.path().to_str().unwrap()]);
    let r = s.u.run(&["sandbox", "create", "--name", "nokernel"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("vmlinuz") && r.stderr.contains("scripts/build-vm-kernel"),
        "{}",
        r.stderr
    );
    assert!(s.sandbox_dirs().is_empty());
    drop(s);

    let s = Setup::new(&["--vm-qemu", "/nonexistent/qemu-system-x86_64"]);
    let r = s.u.run(&["sandbox", "create", "--name", "noqemu"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("not installed") && r.stderr.contains("qemu-system-x86"),
        "{}",
        r.stderr
    );
    assert!(s.sandbox_dirs().is_empty());
    drop(s);

    // A "kernel" QEMU cannot load: the create fails with QEMU's reason.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("vmlinuz"), b"not a kernel").unwrap();
    std::fs::copy(
        Path::new(openshell_driver_vm::DEFAULT_KERNEL_DIR).join("initrd-base.cpio"),
        bad.path().join("initrd-base.cpio"),
    )
    .unwrap();
    let s = Setup::new(&["--vm-kernel-dir", bad.path().to_str().unwrap()]);
    let r = s.u.run(&["sandbox", "create", "--name", "badkernel"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("qemu exited"), "{}", r.stderr);
    assert!(s.sandbox_dirs().is_empty(), "{:?}", s.sandbox_dirs());
    assert!(s.vms().is_empty());
}

/// The driver on its own: the main process's exit code and output come back through the
/// console, environment values arrive unevaluated and do not disturb the guest's init,
/// files on the disk survive a stop/start (a second boot), ids and names are
/// unique, another gateway sees nothing, watch reports the transitions, delete is
/// idempotent. Two boots.
#[tokio::test(flavor = "multi_thread")]
async fn vm_driver_exit_codes_persistence_and_ownership() {
    use futures::StreamExt;
    use openshell_driver_vm::{VmConfig, VmDriver};
    use openshell_drivers::{
        ComputeDriver, DriverError, GatewayId, SandboxId, SandboxName, SandboxSpec, WorkloadState,
    };

    build_artifacts();
    let state = tempfile::tempdir().unwrap();
    let driver = VmDriver::new(VmConfig::new(
        GatewayId::new("vm-driver-test").unwrap(),
        state.path(),
    ));
    let other = VmDriver::new(VmConfig::new(
        GatewayId::new("vm-driver-other").unwrap(),
        state.path(),
    ));
    assert!(
        driver.info().await.is_healthy(),
        "{:?}",
        driver.info().await
    );

    let id = SandboxId::generate();
    let name = SandboxName::new("persist").unwrap();
    let spec = SandboxSpec {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "if [ -f /root/mark ]; then echo second-boot $GREETING; else echo first-boot; \
             tr '\\0' '\\n' </proc/$$/environ | grep -E '^(IFS|B|TRICK)='; \
             echo x >/root/mark; sync; fi; exit 3"
                .into(),
        ],
        // Values the guest's init once evaluated in its own shell: IFS and B (the init's
        // busybox path) broke its later commands, `$(...)` would run.
        env: [
            ("GREETING".into(), "hello 'vm'".into()),
            ("IFS".into(), "/b".into()),
            ("B".into(), "/bin/false".into()),
            ("TRICK".into(), "$(echo pwned) `echo pwned`".into()),
        ]
        .into(),
        ..SandboxSpec::new(openshell_tests::sandboxes::test_image("vm"))
    };
    let mut events = driver.watch().await.unwrap();
    let st = driver.create(&id, &name, &spec).await.unwrap();
    assert!(
        matches!(st.state, WorkloadState::Creating | WorkloadState::Running),
        "{st:?}"
    );
    let stopped = WorkloadState::Stopped { exit_code: 3 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("no Stopped event")
            .unwrap()
            .unwrap();
        assert_eq!(e.id, id);
        if e.state == stopped {
            break;
        }
    }
    assert_eq!(driver.get(&id).await.unwrap().state, stopped);

    // Duplicates and ownership.
    let dup = driver
        .create(&id, &SandboxName::new("other").unwrap(), &spec)
        .await;
    assert!(
        matches!(dup, Err(DriverError::AlreadyExists { .. })),
        "{dup:?}"
    );
    let dup = driver.create(&SandboxId::generate(), &name, &spec).await;
    assert!(
        matches!(dup, Err(DriverError::AlreadyExists { .. })),
        "{dup:?}"
    );
    assert!(other.list().await.unwrap().is_empty());
    assert!(matches!(
        other.get(&id).await,
        Err(DriverError::NotFound { .. })
    ));

    // The second boot finds the file the first one wrote.
    driver.start(&id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let lines = loop {
        let logs = driver
            .logs(&id, openshell_drivers::LogOptions::default())
            .await
            .unwrap();
        let lines: Vec<String> = logs.map(|l| l.unwrap().line).collect().await;
        if lines.iter().any(|l| l.starts_with("second-boot")) || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(lines.iter().any(|l| l == "first-boot"), "{lines:?}");
    // A tail is read from the end of the console: the same lines, in the same order.
    let tail_opts = openshell_drivers::LogOptions {
        follow: false,
        tail: Some(3),
    };
    let tail: Vec<String> = driver
        .logs(&id, tail_opts)
        .await
        .unwrap()
        .map(|l| l.unwrap().line)
        .collect()
        .await;
    let full: Vec<String> = driver
        .logs(&id, openshell_drivers::LogOptions::default())
        .await
        .unwrap()
        .map(|l| l.unwrap().line)
        .collect()
        .await;
    assert_eq!(tail.len(), 3, "{tail:?}");
    assert!(
        full.windows(3).any(|w| w == tail.as_slice()),
        "tail {tail:?} is not a run of {full:?}"
    );
    for want in ["IFS=/b", "B=/bin/false", "TRICK=$(echo pwned) `echo pwned`"] {
        assert!(lines.iter().any(|l| l == want), "{want}: {lines:?}");
    }
    assert!(
        lines.iter().any(|l| l == "second-boot hello 'vm'"),
        "{lines:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.get(&id).await.unwrap().state != stopped {
        assert!(Instant::now() < deadline, "the second boot did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    driver.delete(&id).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("no Missing event after delete")
            .unwrap()
            .unwrap();
        if e.id == id && e.state == WorkloadState::Missing {
            break;
        }
    }
    driver.delete(&id).await.unwrap();
    assert!(matches!(
        driver.get(&id).await,
        Err(DriverError::NotFound { .. })
    ));
    assert!(driver.list().await.unwrap().is_empty());
}

/// VMs that never report in: one whose guest init fails (an unloadable kernel module), and
/// one whose supervisor cannot reach the gateway (a callback nobody listens on), which the
/// gateway turns into Error after `--ready-timeout`. Both errors carry the console's last
/// lines; delete leaves nothing. Two boots.
#[test]
fn vm_that_never_reports_in_is_an_error_with_its_console() {
    build_artifacts();
    // The kernel artifacts with a module list naming a module that does not exist (a
    // later cpio archive replaces the file of an earlier one).
    let kdir = tempfile::tempdir().unwrap();
    let base = Path::new(openshell_driver_vm::DEFAULT_KERNEL_DIR);
    std::fs::copy(base.join("vmlinuz"), kdir.path().join("vmlinuz")).unwrap();
    std::fs::copy(
        base.join("initrd-base.cpio"),
        kdir.path().join("initrd-base.cpio"),
    )
    .unwrap();
    let overlay = kdir.path().join("overlay");
    std::fs::create_dir_all(overlay.join("lib/modules")).unwrap();
    std::fs::write(overlay.join("lib/modules/order"), "nosuchmod\n").unwrap();
    let appended = Command::new("sh")
        .arg("-c")
        .arg("find lib | cpio -o -H newc --quiet >> ../initrd-base.cpio")
        .current_dir(&overlay)
        .status()
        .unwrap();
    assert!(appended.success());

    let s = Setup::new(&["--vm-kernel-dir", kdir.path().to_str().unwrap()]);
    let r = s.u.run(&["sandbox", "create", "--name", "broken"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("the VM ended before its main process did")
            && r.stderr.contains("cannot load kernel module nosuchmod"),
        "{}",
        r.stderr
    );
    assert!(s.vms().is_empty(), "{:?}", s.vms());
    s.u.run(&["sandbox", "delete", "broken"]).ok();
    assert!(s.sandbox_dirs().is_empty(), "{:?}", s.sandbox_dirs());
    drop(s);

    let s = Setup::new(&[
        "--sandbox-callback",
        "https://127.0.0.1:1",
        "--ready-timeout",
        "15s",
    ]);
    let t = Instant::now();
    let r = s.u.run(&["sandbox", "create", "--name", "lonely"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("the supervisor did not connect within 15 s")
            && r.stderr.contains("its last output:"),
        "{}",
        r.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    eprintln!("{}", r.stderr);
    s.u.run(&["sandbox", "delete", "lonely"]).ok();
    assert!(s.vms().is_empty(), "{:?}", s.vms());
    assert!(s.sandbox_dirs().is_empty(), "{:?}", s.sandbox_dirs());
}
