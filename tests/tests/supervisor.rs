//! Per-sandbox credentials: minted from the gateway's CA for one sandbox, accepted only for
//! that sandbox's supervisor callbacks; user certificates cannot make them.

use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::supervisor_client::SupervisorClient;
use openshell_proto::{
    GetGatewayInfoRequest, ReportMainProcessExitRequest, SupervisorHello, SupervisorMessage,
    supervisor_message,
};
use openshell_tests::{CliUser, Gateway};
use openshell_transport::tls::ClientMaterial;
use openshell_transport::{ClientConfig, Connection, Connector, Endpoint};

async fn connect(gw: &Gateway, ca: &[u8], cert: &[u8], key: &[u8]) -> Connection {
    let m = ClientMaterial::from_pem(ca, Some((cert, key))).unwrap();
    Connector::new(ClientConfig::new(
        Endpoint::parse(&gw.endpoint()).unwrap(),
        Some(m),
    ))
    .unwrap()
    .connect()
    .await
    .unwrap()
}

fn hello(id: &str) -> SupervisorMessage {
    SupervisorMessage {
        msg: Some(supervisor_message::Msg::Hello(SupervisorHello {
            sandbox_id: id.into(),
            instance_id: "test".into(),
            supervisor_version: "test".into(),
            ssh_host_key: String::new(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_credential_acts_only_for_its_sandbox() {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let pki = openshell_pki::PkiDir::new(u.default_pki_dir());
    let gw = Gateway::builder().pki(pki.path()).spawn();
    let ca = std::fs::read(pki.ca_cert_path()).unwrap();
    let (cert, key, _serial) = openshell_pki::Ca::load(&pki)
        .unwrap()
        .mint_sandbox_credential("sb1", openshell_pki::Duration::parse("1h").unwrap())
        .unwrap();
    let sandbox = connect(&gw, &ca, cert.as_bytes(), key.as_bytes()).await;
    let mut sup = SupervisorClient::new(sandbox.channel());

    // Its own id, but the gateway has no such sandbox (never created, or deleted): refused,
    // so the credential of a deleted sandbox opens no session.
    let err = sup
        .connect_supervisor(futures::stream::iter(vec![hello("sb1")]))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("no record"), "{}", err.message());

    // Another sandbox's id: refused.
    let err = sup
        .connect_supervisor(futures::stream::iter(vec![hello("sb2")]))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("'sb1' cannot act for sandbox 'sb2'"),
        "{}",
        err.message()
    );
    let err = sup
        .report_main_process_exit(ReportMainProcessExitRequest {
            sandbox_id: "sb2".into(),
            exit_code: 0,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // The user API is closed to sandbox credentials.
    let err = OpenShellClient::new(sandbox.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // And a user certificate cannot use the supervisor callbacks.
    u.run(&["pki", "issue", "alice", "--gateway", "local"]).ok();
    let mtls = u.gw_dir("local").join("mtls");
    let user = connect(
        &gw,
        &ca,
        &std::fs::read(mtls.join("tls.crt")).unwrap(),
        &std::fs::read(mtls.join("tls.key")).unwrap(),
    )
    .await;
    let err = SupervisorClient::new(user.channel())
        .connect_supervisor(futures::stream::iter(vec![hello("sb1")]))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
}

/// The real `openshell-sandbox` binary inside a real container: its session survives a
/// gateway restart, and it reports its main process's exit (the gateway logs the code and the
/// sandbox shows it).
#[test]
fn supervisor_reconnects_after_a_gateway_restart_and_reports_its_main_exit() {
    let mut s = openshell_tests::SandboxEnv::docker();
    s.u.run(&[
        "sandbox",
        "create",
        "--name",
        "quitter",
        "--",
        "sh",
        "-c",
        "while [ ! -f /tmp/stop ]; do sleep 0.1; done; exit 3",
    ])
    .ok();
    s.restart_gateway();
    let connected =
        |s: &openshell_tests::SandboxEnv| s.logs().matches("supervisor connected").count();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(20),
        connected(&s) >= 1 && s.phase("quitter") == "Ready",
        "the supervisor did not reconnect to the restarted gateway:\n{}",
        s.logs()
    );
    let touched = s
        .runtime_cli()
        .args(["exec", "openshell-quitter", "touch", "/tmp/stop"])
        .output()
        .unwrap();
    assert!(touched.status.success());
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(20),
        s.phase("quitter") == "Error",
        "not Error after the main process exited: {}",
        s.phase("quitter")
    );
    let got =
        s.u.run(&["sandbox", "get", "quitter", "-o", "json"])
            .ok()
            .json();
    assert!(got["reason"].as_str().unwrap().contains("code 3"), "{got}");
    assert!(
        s.logs()
            .lines()
            .any(|l| l.contains("main process exited") && l.contains("code=3")),
        "{}",
        s.logs()
    );
}

/// Issue 14, item 4: a sandbox renews its credential over its session before it expires. With
/// a 40 s validity (plus the minute every certificate is backdated) the first renewal comes
/// about 7 s after the create; once the minted credential has expired, a restarted gateway
/// only lets in a supervisor that holds a renewed one, and the sandbox is Ready again.
#[test]
fn a_sandbox_renews_its_credential_before_it_expires() {
    let mut s = openshell_tests::SandboxEnv::docker_with(&["--sandbox-credential-validity", "40s"]);
    let created = std::time::Instant::now();
    s.u.run(&["sandbox", "create", "--name", "fresh"]).ok();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(30),
        s.logs().contains("sandbox credential renewed"),
        "no renewal within 30 s:\n{}",
        s.logs()
    );
    // The renewed files replaced the minted ones in the sandbox (for its next start). The
    // supervisor logs that once it has stored them and reconnected, a moment after the
    // gateway signed.
    let supervisor_log = || {
        let out = s
            .runtime_cli()
            .args(["logs", "openshell-fresh"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    };
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(20),
        supervisor_log().contains("sandbox credential renewed"),
        "the supervisor did not report a renewal:\n{}",
        supervisor_log()
    );
    assert!(
        !supervisor_log().contains("kept in memory only"),
        "{}",
        supervisor_log()
    );
    let wait = std::time::Duration::from_secs(45).saturating_sub(created.elapsed());
    std::thread::sleep(wait);
    s.restart_gateway();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(30),
        s.phase("fresh") == "Ready",
        "not Ready with a renewed credential after the minted one expired: {}\n{}",
        s.phase("fresh"),
        s.logs()
    );
    let r =
        s.u.run(&["sandbox", "exec", "fresh", "--", "echo", "still here"]);
    assert_eq!(r.stdout, "still here\n", "{}\n{}", r.stderr, s.logs());
}

/// Issue 14, item 4: a `pki rotate-ca` does not strand sandboxes. The gateway announces the
/// new issuing CA in its heartbeats; the supervisor renews from it during the overlap, so when
/// the old CA stops being trusted (its connections are closed then) the sandbox reconnects
/// and stays Ready.
#[test]
fn a_ca_rotation_does_not_strand_a_sandbox() {
    let s = openshell_tests::SandboxEnv::docker();
    s.u.run(&["sandbox", "create", "--name", "rotated"]).ok();
    s.u.run(&["pki", "rotate-ca", "--overlap", "25s"]).ok();
    let rotated = std::time::Instant::now();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(25),
        s.logs().contains("sandbox credential renewed"),
        "the supervisor did not renew from the new CA during the overlap:\n{}",
        s.logs()
    );
    // The user needs a certificate of the new CA too, once the overlap is over (issued
    // into the gateway's credential directory).
    s.u.run(&["pki", "issue", "alice", "--gateway", "local", "--force"])
        .ok();
    std::thread::sleep(std::time::Duration::from_secs(30).saturating_sub(rotated.elapsed()));
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(30),
        s.phase("rotated") == "Ready",
        "not Ready after the old CA's overlap ended: {}\n{}",
        s.phase("rotated"),
        s.logs()
    );
    let r =
        s.u.run(&["sandbox", "exec", "rotated", "--", "echo", "fine"]);
    assert_eq!(r.stdout, "fine\n", "{}\n{}", r.stderr, s.logs());
}

/// Issue 14, item 4: a sandbox stopped for longer than its credential lives starts again. Its
/// supervisor renews only while it runs, so `start` gives it a freshly minted credential
/// before the workload starts (the old one expired 40 s after the create).
#[test]
fn a_sandbox_stopped_past_its_credentials_life_starts_again() {
    let s = openshell_tests::SandboxEnv::docker_with(&["--sandbox-credential-validity", "40s"]);
    let created = std::time::Instant::now();
    s.u.run(&["sandbox", "create", "--name", "sleeper"]).ok();
    s.u.run(&["sandbox", "stop", "sleeper"]).ok();
    // Any credential it renewed before the stop lived 40 s too.
    std::thread::sleep(std::time::Duration::from_secs(50).saturating_sub(created.elapsed()));
    s.u.run(&["sandbox", "start", "sleeper"]).ok();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(30),
        s.phase("sleeper") == "Ready",
        "not Ready after a start past its credential's life: {}\n{}",
        s.phase("sleeper"),
        s.logs()
    );
    let r =
        s.u.run(&["sandbox", "exec", "sleeper", "--", "echo", "awake"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "awake\n"), "{}", r.stderr);
}
