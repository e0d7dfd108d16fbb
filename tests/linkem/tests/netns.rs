//! Real namespaces, real TUN devices, the real binary. Needs root, /dev/net/tun and
//! iproute2: without them every test here FAILS saying what is missing, unless
//! OPENSHELL_SKIP_NETNS_TESTS=1 is set, in which case each prints that it was skipped.
//!
//! Only addresses inside the namespaces these tests create are used.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use openshell_linkem::probe::ProbeReport;
use openshell_linkem::{Direction, Impairment, Link, Side};

const BIN: &str = env!("CARGO_BIN_EXE_openshell-linkem");

/// The one place the skip switch is read.
fn require_netns(test: &str) -> bool {
    if std::env::var("OPENSHELL_SKIP_NETNS_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: OPENSHELL_SKIP_NETNS_TESTS=1");
        return false;
    }
    if let Err(e) = openshell_linkem::preflight() {
        panic!(
            "{test} cannot run: {e}. These tests need root, /dev/net/tun and iproute2; \
             set OPENSHELL_SKIP_NETNS_TESTS=1 to skip them deliberately."
        );
    }
    true
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Kills the child (bounded wait) when dropped, so a failing assertion leaks nothing.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// First stdout line of `child`, waiting at most `timeout`.
fn first_line(child: &mut Child, timeout: Duration) -> String {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send((line, reader));
    });
    let (line, reader) = rx
        .recv_timeout(timeout)
        .expect("no output line within the timeout");
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {}
    });
    line
}

/// Start the UDP echo server in side B on `port`; returns once it is bound.
fn start_echo(link: &Link, port: u16) -> Reaped {
    let mut child = link
        .command(Side::B, BIN)
        .args(["echo", "--listen", &format!("{}:{port}", link.b().addr)])
        .args(["--idle-timeout", "20s", "--max-duration", "120s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn echo");
    let line = first_line(&mut child, Duration::from_secs(10));
    assert!(line.contains("listening"), "echo did not start: {line:?}");
    Reaped(child)
}

/// Probe side B's echo server from side A.
fn probe(link: &Link, port: u16, count: u32, interval: &str, size: u16, wait: &str) -> ProbeReport {
    let out = link
        .command(Side::A, BIN)
        .args(["probe", "--target", &format!("{}:{port}", link.b().addr)])
        .args(["--count", &count.to_string(), "--interval", interval])
        .args(["--size", &size.to_string(), "--wait", wait])
        .output()
        .expect("run probe");
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe prints a JSON report")
}

fn namespaces() -> Vec<String> {
    openshell_linkem::list_namespaces().expect("ip netns list")
}

fn root_links() -> String {
    let out = Command::new("ip").args(["-br", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rtt_and_loss_are_what_is_configured_and_change_at_runtime() {
    if !require_netns("rtt_and_loss_are_what_is_configured_and_change_at_runtime") {
        return;
    }
    let delay50 = Impairment::builder().delay(ms(50)).build().unwrap();
    let link = Link::builder()
        .impairment(delay50.clone())
        .seed(42)
        .build()
        .unwrap();
    let _echo = start_echo(&link, 7001);

    // 2 x 50 ms, no loss.
    let r = probe(&link, 7001, 100, "10ms", 64, "1s");
    let rtt = r.rtt_ms.expect("replies");
    eprintln!("50ms each way, no loss: {r:?}");
    assert_eq!((r.sent, r.received), (100, 100), "{r:?}");
    assert!(
        // Nothing early; the tail is bounded loosely since the machine is shared.
        rtt.min >= 100.0 && rtt.p50 < 115.0 && rtt.p95 < 130.0,
        "{rtt:?}"
    );

    // Same link, 10 % loss each way: round trip loses 1 - 0.9^2 = 19 %.
    link.set_both(delay50.to_builder().loss(0.10).build().unwrap());
    let before = [link.stats(Direction::AtoB), link.stats(Direction::BtoA)];
    let r = probe(&link, 7001, 1000, "2ms", 64, "1s");
    eprintln!("50ms each way, 10% loss each way: {r:?}");
    // 5 sigma of a binomial proportion with n = 1000, p = 0.19 is 6.2 points.
    assert!((r.loss_percent - 19.0).abs() < 6.2, "{r:?}");
    let after = [link.stats(Direction::AtoB), link.stats(Direction::BtoA)];
    let dropped = (after[0].dropped_loss - before[0].dropped_loss)
        + (after[1].dropped_loss - before[1].dropped_loss);
    // Nothing but probes crosses the link, so the emulator's counters explain every loss.
    assert_eq!(after[0].packets_in - before[0].packets_in, r.sent);
    assert_eq!(dropped, r.sent - r.received, "{after:?}");
    assert!(r.rtt_ms.unwrap().p50 < 115.0);

    // Faster link without rebuilding the namespaces.
    link.set_both(Impairment::builder().delay(ms(10)).build().unwrap());
    let r = probe(&link, 7001, 50, "10ms", 64, "1s");
    let rtt = r.rtt_ms.expect("replies");
    eprintln!("10ms each way: {r:?}");
    assert_eq!(r.received, 50);
    assert!(rtt.min >= 20.0 && rtt.p50 < 30.0, "{rtt:?}");
    assert_eq!(link.forwarder_error(), None);
    link.close().unwrap();
}

#[test]
fn rate_and_queue_limits_shape_real_traffic() {
    if !require_netns("rate_and_queue_limits_shape_real_traffic") {
        return;
    }
    let imp = Impairment::builder().rate_bps(1_000_000).build().unwrap();
    let link = Link::builder().impairment(imp.clone()).build().unwrap();
    let _echo = start_echo(&link, 7002);

    // 200 probes of 1000 B payload (1028 B IP) every 1 ms: ~8.2 Mbit/s offered to a
    // 1 Mbit/s wire. Each packet needs 8.224 ms on the wire, so probe k returns after
    // about (k+1)*8.224 - k*1 + 8.224 ms: ~16 ms for the first, ~1.45 s for the last.
    let r = probe(&link, 7002, 200, "1ms", 1000, "3s");
    let rtt = r.rtt_ms.expect("replies");
    eprintln!("1 Mbit/s, 200 x 1028 B back to back: {r:?}");
    assert_eq!(r.received, 200, "queue 1000 must hold the whole burst");
    assert!(rtt.min >= 16.4 && rtt.min < 40.0, "{rtt:?}");
    assert!(rtt.max > 1300.0 && rtt.max < 1700.0, "{rtt:?}");

    // A 10-packet queue tail-drops most of the same burst.
    link.set_both(imp.to_builder().queue_limit(10).build().unwrap());
    let r = probe(&link, 7002, 200, "1ms", 1000, "3s");
    let s = link.stats(Direction::AtoB);
    eprintln!("1 Mbit/s, queue 10: {r:?} a->b {s:?}");
    assert!(r.received < 60, "{r:?}");
    assert!(s.dropped_queue > 140, "{s:?}");
    link.close().unwrap();
}

#[test]
fn teardown_leaves_no_namespace_or_device() {
    if !require_netns("teardown_leaves_no_namespace_or_device") {
        return;
    }
    let link = Link::builder()
        .addresses(Ipv4Addr::new(10, 77, 1, 1), Ipv4Addr::new(10, 77, 1, 2))
        .build()
        .unwrap();
    let (a, b) = (link.a().clone(), link.b().clone());
    let all = namespaces();
    assert!(all.contains(&a.netns) && all.contains(&b.netns), "{all:?}");
    for ep in [&a, &b] {
        let out = Command::new("ip")
            .args(["-n", &ep.netns, "-br", "addr", "show", "dev", &ep.device])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&ep.addr.to_string()), "{text}");
    }
    // Devices live only inside the namespaces, never in ours.
    assert!(!root_links().contains(&a.device));
    drop(link);
    let all = namespaces();
    assert!(
        !all.contains(&a.netns) && !all.contains(&b.netns),
        "{all:?}"
    );
    let links = root_links();
    assert!(
        !links.contains(&a.device) && !links.contains(&b.device),
        "{links}"
    );
    assert!(!std::path::Path::new(&format!("/run/netns/{}", a.netns)).exists());
}

#[test]
fn stale_namespaces_of_dead_owners_are_removed_live_ones_kept() {
    if !require_netns("stale_namespaces_of_dead_owners_are_removed_live_ones_kept") {
        return;
    }
    // A pid that just exited: its owner is gone.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("osl-{dead}-0-a");
    // pid 1 is always alive: a namespace "owned" by it must survive.
    let live = "osl-1-999-b".to_string();
    for ns in [&stale, &live] {
        let _ = Command::new("ip")
            .args(["netns", "delete", ns])
            .stderr(Stdio::null())
            .status();
        assert!(
            Command::new("ip")
                .args(["netns", "add", ns])
                .status()
                .unwrap()
                .success()
        );
    }
    // A real crash: `up` killed with SIGKILL cannot clean up after itself.
    let mut crashed = Command::new(BIN)
        .args(["up"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = first_line(&mut crashed, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let orphan = v["a"]["netns"].as_str().unwrap().to_string();
    crashed.kill().unwrap();
    crashed.wait().unwrap();
    assert!(
        namespaces().contains(&orphan),
        "SIGKILL should leave {orphan} behind"
    );

    let link = Link::builder().build().unwrap();
    let all = namespaces();
    let _ = Command::new("ip").args(["netns", "delete", &live]).status();
    assert!(
        !all.contains(&orphan),
        "crashed run's namespace survived: {all:?}"
    );
    assert!(!all.contains(&stale), "stale namespace survived: {all:?}");
    assert!(
        all.contains(&live),
        "a live owner's namespace was removed: {all:?}"
    );
    drop(link);
}

/// Start `openshell-linkem up`, send `signal`, check it cleaned up and exited 0.
fn up_then_signal(signal: &str) {
    let mut child = Command::new(BIN)
        .args(["up", "--delay", "5ms", "--loss", "1%"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut child = Reaped(child);
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("up prints its endpoints");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    let names = [
        v["a"]["netns"].as_str().unwrap(),
        v["b"]["netns"].as_str().unwrap(),
    ];
    assert!(names.iter().all(|n| namespaces().iter().any(|m| m == n)));
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "up did not exit after {signal}");
        std::thread::sleep(ms(20));
    };
    assert!(status.success(), "{signal}: {status:?}");
    let stats = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("final stats line");
    assert!(stats.contains("\"a_to_b\""), "{stats}");
    let all = namespaces();
    assert!(
        names.iter().all(|n| !all.iter().any(|m| m == n)),
        "{signal}: {all:?}"
    );
}

#[test]
fn binary_up_cleans_up_on_sigterm_and_sigint() {
    if !require_netns("binary_up_cleans_up_on_sigterm_and_sigint") {
        return;
    }
    up_then_signal("-TERM");
    up_then_signal("-INT");
}

#[test]
fn binary_run_executes_both_commands_across_the_link() {
    if !require_netns("binary_run_executes_both_commands_across_the_link") {
        return;
    }
    let script = format!(
        "sleep 0.5; exec {BIN} probe --target \"$OPENSHELL_LINKEM_B_ADDR:7003\" --count 20 --interval 5ms --wait 1s"
    );
    let out = Command::new(BIN)
        .args(["run", "--delay", "20ms", "--"])
        .args(["sh", "-c", &script])
        .args([
            "--",
            BIN,
            "echo",
            "--listen",
            "0.0.0.0:7003",
            "--max-duration",
            "30s",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let report: ProbeReport = serde_json::from_str(
        stdout
            .lines()
            .find(|l| l.contains("\"sent\""))
            .expect("probe report"),
    )
    .unwrap();
    assert_eq!(report.received, 20, "{report:?}");
    let rtt = report.rtt_ms.unwrap();
    assert!(rtt.min >= 40.0 && rtt.p50 < 55.0, "{rtt:?}");

    // CMD_A's exit code is the contract.
    let out = Command::new(BIN)
        .args(["run", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

#[test]
fn jitter_burst_loss_and_reordering_on_a_real_link() {
    if !require_netns("jitter_burst_loss_and_reordering_on_a_real_link") {
        return;
    }
    // 20 ms +- 10 ms each way, order kept: RTT within 20..60 ms (+ slack), no reordering.
    let jitter = Impairment::builder()
        .delay(ms(20))
        .jitter(ms(10))
        .build()
        .unwrap();
    // Seeded: the same probes meet the same random draws every run.
    let link = Link::builder().impairment(jitter).seed(7).build().unwrap();
    let _echo = start_echo(&link, 7004);
    let r = probe(&link, 7004, 200, "5ms", 64, "1s");
    let rtt = r.rtt_ms.expect("replies");
    eprintln!("20ms +- 10ms each way: {r:?}");
    assert_eq!((r.received, r.reordered), (200, 0), "{r:?}");
    assert!(rtt.min >= 20.0 && rtt.p95 < 65.0, "{rtt:?}");
    assert!(rtt.max - rtt.min > 10.0, "no visible jitter: {rtt:?}");

    // Burst loss only on A->B: every lost probe is a burst drop there.
    link.set(
        Direction::AtoB,
        Impairment::builder()
            .delay(ms(5))
            .burst_loss(openshell_linkem::GilbertElliott::new(0.05, 0.3))
            .build()
            .unwrap(),
    );
    link.set(
        Direction::BtoA,
        Impairment::builder().delay(ms(5)).build().unwrap(),
    );
    let before = link.stats(Direction::AtoB).dropped_burst;
    let r = probe(&link, 7004, 1000, "1ms", 64, "1s");
    let burst = link.stats(Direction::AtoB).dropped_burst - before;
    eprintln!("burst loss p=5% r=30% on a->b: {r:?}, burst drops {burst}");
    assert_eq!(burst, r.sent - r.received);
    // Model mean 0.05 / 0.35 = 14.3 %; bursts make the spread wider than Bernoulli's.
    assert!(r.loss_percent > 6.0 && r.loss_percent < 25.0, "{r:?}");

    // Hold back 20 % of A->B packets by 10 ms: probes 2 ms apart overtake them.
    link.set(
        Direction::AtoB,
        Impairment::builder()
            .delay(ms(5))
            .reorder(0.2, ms(10))
            .build()
            .unwrap(),
    );
    let before = link.stats(Direction::AtoB).reordered;
    let r = probe(&link, 7004, 500, "2ms", 64, "1s");
    let reordered = link.stats(Direction::AtoB).reordered - before;
    eprintln!("reorder 20% +10ms on a->b: {r:?}, emulator counted {reordered}");
    assert_eq!(r.received, 500);
    assert!(r.reordered > 50 && r.reordered < 150, "{r:?}");
    // The emulator's count is what the receiver saw (the return path keeps order).
    assert_eq!(reordered, r.reordered);
    link.close().unwrap();
}
