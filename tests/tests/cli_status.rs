//! `openshell status` (and the path memory behind it) against a live, a stopped and a
//! refusing gateway, with PKI made by `openshell pki` itself.

use openshell_tests::{CliUser, Gateway};

/// A user with a PKI from `openshell pki init`, a running gateway on it, a certificate
/// installed with `openshell pki issue --gateway local` and the gateway registered.
fn live() -> (CliUser, Gateway) {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = Gateway::builder().pki(&u.default_pki_dir()).spawn();
    u.run(&["pki", "issue", "alice", "--role", "admin", "--gateway", "local"])
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
        assert!(r.stdout.contains(line), "missing '{line}' in:\n{}", r.stdout);
    }
    let r = u.run(&["--transport", "tcp", "status"]).ok();
    assert!(r.stdout.contains("Transport: TCP (fallback)"), "{}", r.stdout);
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
    assert_eq!(u.run(&["status", "-o", "json"]).fails().json()["status"], "disconnected");
}

#[test]
fn revoked_certificate_is_connected_but_failed_with_the_fix() {
    let (u, gw) = live();
    u.run(&["status"]).ok();
    u.run(&["pki", "revoke", "alice", "--reason", "laptop lost"]).ok();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(5),
        gw.logs().contains("TLS material reloaded"),
        "gateway did not pick up the CRL:\n{}",
        gw.logs()
    );
    for transport in ["quic", "tcp"] {
        let r = u.run(&["--transport", transport, "status"]).fails();
        assert!(r.stdout.contains("Status: Connected"), "{transport}: {}", r.stdout);
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
    assert_eq!(u.run(&["status", "-o", "json"]).ok().json()["status"], "not_configured");
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
