//! The binary's argument contract; needs no root (it fails before touching the system).

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_openshell-linkem");

fn refused(args: &[&str], needle: &str) {
    // `--duration` bounds the run in case a setting were wrongly accepted.
    let out = Command::new(BIN)
        .args(args)
        .args(["--duration", "2s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
}

#[test]
fn impossible_settings_exit_2_naming_field_and_range() {
    refused(
        &["up", "--delay", "-5ms"],
        "negative values are not allowed",
    );
    refused(
        &["up", "--loss", "150%"],
        "invalid loss: 150%; valid range is 0%..=100%",
    );
    refused(&["up", "--loss", "-1%"], "negative");
    refused(&["up", "--loss", "2"], "write a percentage with %");
    refused(
        &["up", "--delay", "5ms", "--jitter", "10ms"],
        "invalid jitter: 10ms; valid range is 0..=5ms",
    );
    refused(&["up", "--rate", "0bit"], "invalid rate: 0 bit/s");
    refused(&["up", "--rate", "100mbps"], "bits per second");
    refused(
        &["up", "--queue", "0"],
        "invalid queue: 0 packets; valid range is 1..=1000000",
    );
    refused(&["up", "--burst-loss", "1%"], "expected p,r");
    refused(&["up", "--burst-loss", "1%,0%"], "invalid burst-loss r");
    refused(&["up", "--reorder", "5%,0ms"], "invalid reorder delay");
    refused(&["up", "--delay", "50"], "missing unit");
    refused(&["up", "--mtu", "100"], "invalid mtu");
}
