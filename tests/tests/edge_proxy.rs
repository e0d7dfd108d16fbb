//! Edge mode end to end: a real nginx authenticates users with a bearer token and forwards
//! to the gateway's TCP path with its own `edge-proxy` certificate; the CLI signs in through
//! the browser flow (the test is the browser, curl its engine) and then works through it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use openshell_tests::nginx::{Nginx, NginxConfig};
use openshell_tests::{CliUser, Gateway};

const TOKEN: &str = "edge-token-7f3a9c";

struct Setup {
    u: CliUser,
    _gw: Gateway,
    nginx: Nginx,
}

fn setup() -> Setup {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let pki = u.default_pki_dir();
    let gw = Gateway::builder().pki(&pki).spawn();
    let proxy = u.path("proxy-creds");
    u.run(&[
        "pki",
        "issue",
        "edge-proxy",
        "--role",
        "edge-proxy",
        "--out",
        proxy.to_str().unwrap(),
    ])
    .ok();
    let nginx = Nginx::start(&NginxConfig {
        server_cert: &pki.join("server/tls.crt"),
        server_key: &pki.join("server/tls.key"),
        proxy_cert: &proxy.join("tls.crt"),
        proxy_key: &proxy.join("tls.key"),
        gateway_ca: &pki.join("ca.crt"),
        gateway: gw.addr,
        token: TOKEN,
        user: "alice",
        extra_users: &[],
    });
    // The proxy's CA (here the same PKI) is what the CLI trusts for this gateway.
    let mtls = u.gw_dir("production").join("mtls");
    std::fs::create_dir_all(&mtls).unwrap();
    std::fs::copy(pki.join("ca.crt"), mtls.join("ca.crt")).unwrap();
    Setup { u, _gw: gw, nginx }
}

/// Runs `gateway add` (or `login`) and plays the browser: opens the printed login URL with
/// curl, which follows the identity provider's redirect to the CLI's callback.
fn sign_in(s: &Setup, args: &[&str]) {
    let mut cmd = s.u.command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let mut lines = stderr.lines();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("no login URL; stderr: {seen:?}"))
            .unwrap();
        seen.push(line.clone());
        if let Some(at) = line.find("https://")
            && line.contains("/auth/connect?")
        {
            break line[at..].trim().to_string();
        }
    };
    let curl = std::process::Command::new("curl")
        .args(["-sS", "-L", "--max-time", "20", "--cacert"])
        .arg(s.u.gw_dir("production").join("mtls/ca.crt"))
        .arg(&url)
        .output()
        .expect("curl is needed (scripts/test installs it)");
    let page = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.status.success() && page.contains("close this window"),
        "login page flow failed: {page} {}\nnginx: {}",
        String::from_utf8_lossy(&curl.stderr),
        s.nginx.error_log()
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen:?} {rest:?}");
}

#[test]
fn sign_in_through_the_proxy_and_work_through_it() {
    let s = setup();
    let endpoint = format!("https://{}", s.nginx.addr);
    // Without --auth: the proxy asks for no client certificate, so this is edge (a
    // browser sign-in), and with no terminal and no --browser that is an error at once.
    let r =
        s.u.run(&["gateway", "add", &endpoint, "--name", "detected"])
            .fails();
    assert!(
        r.stderr.contains("needs a browser sign-in") && r.stderr.contains("--browser"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Cannot tell"), "{}", r.stderr);
    assert!(!r.stderr.contains("pki issue"), "{}", r.stderr);
    sign_in(
        &s,
        &[
            "gateway",
            "add",
            &endpoint,
            "--name",
            "production",
            "--auth",
            "edge",
            "--browser",
        ],
    );
    let token = s.u.gw_dir("production").join("edge_token");
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim(), TOKEN);

    let r = s.u.run(&["status"]).ok();
    assert!(r.stdout.contains("Status: Connected"), "{}", r.stdout);
    assert!(r.stdout.contains("Authenticated (edge)"), "{}", r.stdout);
    assert!(r.stdout.contains("Transport: TCP"), "{}", r.stdout);
    // The gateway saw the user the proxy vouched for, not the proxy itself.
    let info = s.u.run(&["gateway", "info", "-o", "json"]).ok().json();
    assert_eq!(info["caller"], "alice", "{info}");
    assert!(
        s.nginx
            .access_log()
            .contains("/openshell.v1.OpenShell/GetGatewayInfo")
    );

    // A token the proxy does not accept: connected, authentication failed, fix named.
    std::fs::write(&token, "stale-token").unwrap();
    let r = s.u.run(&["status"]).fails();
    assert!(r.stdout.contains("Status: Connected"), "{}", r.stdout);
    assert!(r.stdout.contains("Authentication: Failed"), "{}", r.stdout);
    assert!(
        r.stderr.contains("openshell gateway login production"),
        "{}",
        r.stderr
    );

    // Signing in again fixes it; logging out removes the token.
    sign_in(&s, &["gateway", "login", "production", "--browser"]);
    s.u.run(&["status"]).ok();
    s.u.run(&["gateway", "logout", "production"]).ok();
    assert!(!token.exists());
    let r = s.u.run(&["status"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("openshell gateway login production"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_proxy_refuses_requests_without_a_token() {
    let s = setup();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--http2",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(s.u.gw_dir("production").join("mtls/ca.crt"))
        .arg(format!(
            "https://{}/openshell.v1.OpenShell/GetGatewayInfo",
            s.nginx.addr
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
