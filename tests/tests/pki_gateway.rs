//! `openshell pki` against a running gateway: rotation of the server certificate and of the
//! CA without dropping established connections, and the overlap in which both CAs work.

use std::time::Duration;

use openshell_proto::GetGatewayInfoRequest;
use openshell_proto::open_shell_client::OpenShellClient;
use openshell_tests::{CliUser, Gateway, assert_eventually};
use openshell_transport::tls::ClientMaterial;
use openshell_transport::{ClientConfig, Connector, Endpoint, PathHint, TunnelTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn material(u: &CliUser, gateway: &str) -> ClientMaterial {
    let dir = u.gw_dir(gateway).join("mtls");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    ClientMaterial::from_pem(&read("ca.crt"), Some((&read("tls.crt"), &read("tls.key")))).unwrap()
}

fn connector(gw: &Gateway, m: ClientMaterial, hint: PathHint) -> Connector {
    let mut cfg = ClientConfig::new(Endpoint::parse(&gw.endpoint()).unwrap(), Some(m));
    cfg.hint = hint;
    Connector::new(cfg).unwrap()
}

async fn echo_roundtrip(t: &mut openshell_transport::BoxIo, msg: &[u8]) {
    t.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut buf))
        .await
        .expect("tunnel stalled")
        .unwrap();
    assert_eq!(buf, msg);
}

fn wait_reload(gw: &Gateway, before: usize) {
    assert_eventually!(
        Duration::from_secs(5),
        gw.logs().matches("TLS material reloaded").count() > before,
        "the gateway did not reload:\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_server_and_ca_without_dropping_connections() {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = Gateway::builder().pki(&u.default_pki_dir()).spawn();
    u.run(&["pki", "issue", "alice", "--gateway", "old"]).ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "old"])
        .ok();
    u.run(&["status"]).ok();

    let old_material = material(&u, "old");
    let quic = connector(&gw, old_material.clone(), PathHint::QuicOnly)
        .connect()
        .await
        .unwrap();
    let tcp = connector(&gw, old_material.clone(), PathHint::TcpOnly)
        .connect()
        .await
        .unwrap();
    let mut t1 = quic.open_tunnel(&TunnelTarget::Echo).await.unwrap();
    let mut t2 = tcp.open_tunnel(&TunnelTarget::Echo).await.unwrap();
    echo_roundtrip(&mut t1, b"before").await;
    echo_roundtrip(&mut t2, b"before").await;

    // Server certificate rotation.
    let reloads = gw.logs().matches("TLS material reloaded").count();
    u.run(&["pki", "rotate-server"]).ok();
    wait_reload(&gw, reloads);
    echo_roundtrip(&mut t1, b"after server rotation").await;
    echo_roundtrip(&mut t2, b"after server rotation").await;
    u.run(&["status"]).ok();

    // CA rotation: the old CA stays trusted for the overlap.
    let reloads = gw.logs().matches("TLS material reloaded").count();
    u.run(&["pki", "rotate-ca", "--overlap", "1h"]).ok();
    wait_reload(&gw, reloads);
    echo_roundtrip(&mut t1, b"after CA rotation").await;
    echo_roundtrip(&mut t2, b"after CA rotation").await;
    // A user still holding the old CA's certificate and trust gets in during the overlap.
    let r = u.run(&["-g", "old", "status"]);
    assert_eq!(
        r.code, 0,
        "old credentials refused during the overlap:\n{}\n{}",
        r.stdout, r.stderr
    );
    // A certificate from the new CA works too.
    u.run(&["pki", "issue", "bob", "--gateway", "new"]).ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "new"])
        .ok();
    u.run(&["-g", "new", "status"]).ok();
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        let fresh = connector(&gw, material(&u, "new"), hint)
            .connect()
            .await
            .unwrap();
        OpenShellClient::new(fresh.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_from_pki_issue_is_refused() {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = Gateway::builder().pki(&u.default_pki_dir()).spawn();
    u.run(&[
        "pki",
        "issue",
        "shortlived",
        "--validity",
        "2s",
        "--gateway",
        "local",
    ])
    .ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "local"])
        .ok();
    u.run(&["status"]).ok();
    // Keep a connection open across the expiry: the gateway closes it.
    let live = connector(&gw, material(&u, "local"), PathHint::QuicOnly)
        .connect()
        .await
        .unwrap();
    OpenShellClient::new(live.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = u.run(&["status"]).fails();
    assert!(r.stdout.contains("expired"), "{}", r.stdout);
    assert_eventually!(
        Duration::from_secs(3),
        live.close_reason().is_some(),
        "a connection with an expired certificate stayed open"
    );
}
