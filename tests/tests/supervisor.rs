//! Per-sandbox credentials: minted from the gateway's CA for one sandbox, accepted only for
//! that sandbox's supervisor callbacks; user certificates cannot make them.

use futures::StreamExt;
use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::supervisor_client::SupervisorClient;
use openshell_proto::{
    GetGatewayInfoRequest, Heartbeat, ReportMainProcessExitRequest, SupervisorHello,
    SupervisorMessage, gateway_message, supervisor_message,
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

    // Its own sandbox: a session, and heartbeats answered.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("sb1")).await.unwrap();
    let mut down = sup
        .connect_supervisor(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = down.next().await.unwrap().unwrap();
    assert!(
        matches!(first.msg, Some(gateway_message::Msg::Accepted(ref a)) if a.heartbeat_interval_secs > 0),
        "{first:?}"
    );
    tx.send(SupervisorMessage {
        msg: Some(supervisor_message::Msg::Heartbeat(Heartbeat {
            sent_at_ms: 1,
        })),
    })
    .await
    .unwrap();
    let beat = down.next().await.unwrap().unwrap();
    assert!(
        matches!(beat.msg, Some(gateway_message::Msg::Heartbeat(_))),
        "{beat:?}"
    );

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

/// The real `openshell-sandbox` binary, run on the host with the environment a compute
/// driver gives it: it connects with its own credential, survives a gateway restart, and
/// reports its main process's exit before exiting with the same code.
#[test]
fn supervisor_reconnects_after_a_gateway_restart_and_reports_its_main_exit() {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let pki = openshell_pki::PkiDir::new(u.default_pki_dir());
    let state = tempfile::tempdir().unwrap();
    let spawn = |listen: &str| {
        Gateway::builder()
            .pki(pki.path())
            .state_dir(state.path())
            .listen(listen)
            .arg("--shutdown-grace")
            .arg("1s")
            .spawn()
    };
    let mut gw = spawn("127.0.0.1:0");
    let addr = gw.addr;
    let (cert, key, _) = openshell_pki::Ca::load(&pki)
        .unwrap()
        .mint_sandbox_credential("sb1", openshell_pki::Duration::parse("1h").unwrap())
        .unwrap();
    let stop = u.path("stop-main");
    let mut sup = std::process::Command::new(openshell_tests::bin("openshell-sandbox"))
        .env("OPENSHELL_ENDPOINT", format!("https://{addr}"))
        .env("OPENSHELL_SANDBOX_ID", "sb1")
        .env("OPENSHELL_SERVER_NAME", "localhost")
        .env(
            "OPENSHELL_TLS_CA_PEM",
            std::fs::read_to_string(pki.ca_cert_path()).unwrap(),
        )
        .env("OPENSHELL_TLS_CERT_PEM", &cert)
        .env("OPENSHELL_TLS_KEY_PEM", &key)
        .env_remove("RUST_LOG")
        .args(["--", "sh", "-c"])
        .arg(format!(
            "while [ ! -f {} ]; do sleep 0.1; done; exit 3",
            stop.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let connected = |g: &Gateway| g.logs().matches("supervisor connected").count();
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(15),
        connected(&gw) >= 1,
        "the supervisor never connected:\n{}",
        gw.logs()
    );
    gw.terminate();
    gw.wait_exit(std::time::Duration::from_secs(15))
        .expect("gateway did not stop");
    drop(gw);
    let gw = spawn(&addr.to_string());
    openshell_tests::assert_eventually!(
        std::time::Duration::from_secs(20),
        connected(&gw) >= 1,
        "the supervisor did not reconnect to the restarted gateway:\n{}",
        gw.logs()
    );
    std::fs::write(&stop, b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(s) = sup.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "supervisor did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3));
    assert!(
        gw.logs()
            .lines()
            .any(|l| l.contains("main process exited") && l.contains("code=3")),
        "{}",
        gw.logs()
    );
}
