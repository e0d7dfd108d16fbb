//! `openshell status` (and the path memory behind it) against a live, a stopped and a
//! refusing gateway, with PKI made by `openshell pki` itself.

use openshell_tests::{CliUser, Gateway};

/// A user with a PKI from `openshell pki init`, a running gateway on it (Docker driver), a
/// certificate installed with `openshell pki issue --gateway local` and the gateway
/// registered.
fn live() -> (CliUser, Gateway) {
    live_with(&[])
}

fn live_with(env: &[(&str, &str)]) -> (CliUser, Gateway) {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let mut b = Gateway::builder()
        .pki(&u.default_pki_dir())
        .arg("--drivers")
        .arg("docker");
    for (k, v) in env {
        b = b.env(k, v);
    }
    let gw = b.spawn();
    u.run(&[
        "pki",
        "issue",
        "alice",
        "--role",
        "admin",
        "--gateway",
        "local",
    ])
    .ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "local"])
        .ok();
    (u, gw)
}

#[test]
fn connected_and_authenticated_over_quic_and_tcp() {
    let (u, _gw) = live();
    let r = u.run(&["status"]).ok();
    for line in [
        "Gateway: local",
        "Status: Connected",
        "Authentication: Authenticated (mTLS)",
        "Version: ",
        "Transport: QUIC",
    ] {
        assert!(
            r.stdout.contains(line),
            "missing '{line}' in:\n{}",
            r.stdout
        );
    }
    let r = u.run(&["--transport", "tcp", "status"]).ok();
    assert!(
        r.stdout.contains("Transport: TCP (fallback)"),
        "{}",
        r.stdout
    );
    let j = u.run(&["status", "-o", "json"]).ok().json();
    assert_eq!(j["status"], "connected");
    assert_eq!(j["authentication"]["status"], "authenticated");
    assert_eq!(j["transport"]["kind"], "quic");
    let y = u.run(&["status", "-o", "yaml"]).ok().yaml();
    assert_eq!(y["gateway"].as_str(), Some("local"));
    // The path that worked is remembered for the registration.
    let list = u.run(&["gateway", "list", "-o", "json"]).ok().json();
    assert_eq!(list[0]["transport_last_used"], "quic");
}

#[test]
fn stopped_gateway_is_disconnected_and_fails() {
    let (u, gw) = live();
    drop(gw);
    let started = std::time::Instant::now();
    let r = u.run(&["status"]).fails();
    assert!(r.stdout.contains("Status: Disconnected"), "{}", r.stdout);
    assert!(r.stdout.contains("unreachable"), "{}", r.stdout);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "status took {:?} against a stopped gateway",
        started.elapsed()
    );
    assert_eq!(
        u.run(&["status", "-o", "json"]).fails().json()["status"],
        "disconnected"
    );
}

#[test]
fn revoked_certificate_is_connected_but_failed_with_the_fix() {
    let (u, gw) = live();
    u.run(&["status"]).ok();
    u.run(&["pki", "revoke", "alice", "--reason", "laptop lost"])
        .ok();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(5),
        gw.logs().contains("TLS material reloaded"),
        "gateway did not pick up the CRL:\n{}",
        gw.logs()
    );
    for transport in ["quic", "tcp"] {
        let r = u.run(&["--transport", transport, "status"]).fails();
        assert!(
            r.stdout.contains("Status: Connected"),
            "{transport}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains("Authentication: Failed (") && r.stdout.contains("revoked"),
            "{transport}: {}",
            r.stdout
        );
        assert!(
            r.stderr.contains("openshell pki issue"),
            "{transport}: no hint on stderr: {}",
            r.stderr
        );
    }
}

#[test]
fn no_gateway_configured_is_not_an_error() {
    let u = CliUser::new();
    let r = u.run(&["status"]).ok();
    assert!(r.stdout.contains("No gateway configured."), "{}", r.stdout);
    assert!(r.stdout.contains("openshell gateway add <endpoint>"));
    assert_eq!(
        u.run(&["status", "-o", "json"]).ok().json()["status"],
        "not_configured"
    );
}

#[test]
fn missing_credentials_say_how_to_get_them() {
    let (u, _gw) = live();
    std::fs::remove_file(u.gw_dir("local").join("mtls/tls.key")).unwrap();
    let r = u.run(&["status"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("tls.key") && r.stderr.contains("openshell pki issue"),
        "{}",
        r.stderr
    );
}

#[test]
fn completions_for_every_shell() {
    let u = CliUser::new();
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let r = u.run(&["completions", shell]).ok();
        assert!(r.stdout.contains("openshell"), "{shell}");
        assert!(r.stdout.len() > 1000, "{shell}: suspiciously short script");
    }
    assert_eq!(u.run(&["completions", "tcsh"]).code, 2);
}

#[test]
fn gateway_info_reports_version_listeners_and_path() {
    let (u, gw) = live();
    let r = u.run(&["gateway", "info"]).ok();
    for line in [
        "Gateway Info",
        "Gateway: local",
        "Status: healthy",
        &format!("quic://{}", gw.addr),
        &format!("tcp://{}", gw.addr),
        "Transport: QUIC",
        "Caller: alice",
        "Compute drivers:",
        "docker (active)  version ",
        "health ok",
        "podman (compiled in)",
    ] {
        assert!(
            r.stdout.contains(line),
            "missing '{line}' in:\n{}",
            r.stdout
        );
    }
    let j = u.run(&["gateway", "info", "-o", "json"]).ok().json();
    assert_eq!(j["status"], "healthy");
    assert_eq!(j["transport"]["kind"], "quic");
    let drivers = j["compute_drivers"].as_array().unwrap();
    let docker = drivers.iter().find(|d| d["name"] == "docker").unwrap();
    assert_eq!(docker["active"], true);
    assert!(
        !docker["driver_version"].as_str().unwrap().is_empty(),
        "{docker}"
    );
    let j = u
        .run(&["--transport", "tcp", "gateway", "info", "-o", "yaml"])
        .ok()
        .yaml();
    assert_eq!(j["transport"]["kind"].as_str(), Some("tcp"));
    // No gateway at all.
    let nobody = CliUser::new();
    let r = nobody.run(&["gateway", "info"]).fails();
    assert!(r.stderr.contains("No gateway configured."), "{}", r.stderr);
}

#[test]
fn doctor_checks_each_path_and_says_what_to_do() {
    let (u, gw) = live();
    let r = u.run(&["doctor", "check"]).ok();
    for line in [
        "Gateway",
        "Client key",
        "Client certificate",
        "QUIC (UDP)",
        "TCP fallback",
        "Authentication",
        "Compute driver",
        "SSH client",
        "All checks passed.",
    ] {
        assert!(
            r.stdout.contains(line),
            "missing '{line}' in:\n{}",
            r.stdout
        );
    }
    // A key others can read is a failure with its fix.
    use std::os::unix::fs::PermissionsExt;
    let key = u.gw_dir("local").join("mtls/tls.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = u.run(&["doctor", "check"]).fails();
    assert!(r.stdout.contains("chmod 600"), "{}", r.stdout);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The gateway gone: both paths fail, each line says so.
    drop(gw);
    let r = u.run(&["doctor", "check"]).fails();
    let quic = r.stdout.lines().find(|l| l.starts_with("QUIC")).unwrap();
    let tcp = r.stdout.lines().find(|l| l.starts_with("TCP")).unwrap();
    assert!(
        quic.contains("fail") && quic.contains("UDP may be blocked"),
        "{quic}"
    );
    assert!(tcp.contains("fail") && tcp.contains("unreachable"), "{tcp}");
}

#[test]
fn long_waits_spin_on_a_terminal_and_stay_quiet_when_piped() {
    let (u, gw) = live();
    drop(gw); // connecting now takes about a second before giving up
    let piped = u.run(&["status"]);
    assert!(!piped.stderr.contains("connecting to"), "{}", piped.stderr);
    // The same command on a pseudo-terminal (util-linux `script`).
    let template = u.command();
    let mut cmd = std::process::Command::new("script");
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let bin = openshell_tests::bin("openshell");
    let out = cmd
        .args(["-qec", &format!("{} status", bin.display()), "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) is needed; scripts/test installs it");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connecting to https://"), "{text}");
    assert!(text.contains("Status: Disconnected"), "{text}");
}

#[test]
fn a_runtime_that_is_down_shows_in_info_and_doctor() {
    let (u, _gw) = live_with(&[("DOCKER_HOST", "unix:///nonexistent/docker.sock")]);
    let r = u.run(&["gateway", "info"]).ok();
    assert!(r.stdout.contains("docker (active)"), "{}", r.stdout);
    assert!(
        r.stdout.contains("/nonexistent/docker.sock"),
        "{}",
        r.stdout
    );
    let r = u.run(&["doctor", "check"]).fails();
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("Compute driver"))
        .unwrap();
    assert!(
        line.contains("fail") && line.contains("unhealthy"),
        "{line}"
    );
}
