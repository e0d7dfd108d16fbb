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

/// Whether `e` (an RPC refusal) or the connection's close reason says the certificate is
/// no longer trusted: the resumed connection's first request and the gateway's periodic
/// check race, and either must refuse it with that reason.
fn refused_as_untrusted(conn: &openshell_transport::Connection, e: &tonic::Status) -> bool {
    let untrusted = "no longer trusted";
    (e.code() == tonic::Code::Unauthenticated && e.message().contains(untrusted))
        || conn
            .close_reason()
            .is_some_and(|r| r.to_string().contains(untrusted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ca_closes_open_connections_and_refuses_resumed_sessions() {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = Gateway::builder().pki(&u.default_pki_dir()).spawn();
    u.run(&["pki", "issue", "alice", "--gateway", "old"]).ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "old"])
        .ok();

    // One connector per path keeps its session tickets, as the CLI agent does.
    let old = material(&u, "old");
    let connectors =
        [PathHint::QuicOnly, PathHint::TcpOnly].map(|h| connector(&gw, old.clone(), h));
    let mut open = Vec::new();
    for c in &connectors {
        let conn = c.connect().await.unwrap();
        OpenShellClient::new(conn.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .unwrap();
        open.push(conn);
    }

    // The PKI is replaced: alice's CA is trusted no more. Within 2 s the gateway reloads and
    // closes both connections.
    u.run(&["pki", "init", "--force"]).ok();
    let replaced = std::time::Instant::now();
    assert_eventually!(
        Duration::from_secs(2),
        open.iter().all(|c| c.close_reason().is_some()),
        "connections of a no longer trusted CA stayed open: {:?}\n{}",
        open.iter().map(|c| c.close_reason()).collect::<Vec<_>>(),
        gw.logs()
    );
    let took = replaced.elapsed();
    // QUIC carries the reason (TCP just ends).
    let reason = open[0].close_reason().unwrap().to_string();
    assert!(reason.contains("no longer trusted"), "{reason}");
    eprintln!("open connections closed {took:?} after the CA was replaced");

    // Reconnecting resumes the old session (QUIC even in 0-RTT): the restored certificate is
    // verified again and refused.
    for (c, hint) in connectors.iter().zip(["quic", "tcp"]) {
        let conn = c.connect().await.unwrap();
        let r = OpenShellClient::new(conn.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await;
        let e = r.expect_err("a resumed session of an untrusted certificate was served");
        assert!(refused_as_untrusted(&conn, &e), "{hint}: {e:?}");
        if hint == "quic" {
            assert_eq!(
                conn.zero_rtt_settled().await,
                openshell_transport::ZeroRtt::Accepted,
                "the QUIC reconnection did not resume its session"
            );
        }
        assert_eventually!(
            Duration::from_secs(2),
            conn.close_reason().is_some(),
            "{hint}: the resumed connection stayed open"
        );
    }

    // The new CA's certificates work: the gateway did not simply refuse everyone.
    u.run(&["pki", "issue", "bob", "--gateway", "new"]).ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "new"])
        .ok();
    u.run(&["-g", "new", "status"]).ok();
}

/// The end of a CA rotation's overlap is a trust change on a timer, with no file changing:
/// a connection of the old CA's certificate is served during the overlap and closed within
/// 2 s of its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_rotation_overlap_closes_the_old_cas_connections() {
    let u = CliUser::new();
    u.run(&["pki", "init"]).ok();
    let gw = Gateway::builder().pki(&u.default_pki_dir()).spawn();
    u.run(&["pki", "issue", "alice", "--gateway", "old"]).ok();
    u.run(&["gateway", "add", &gw.endpoint(), "--name", "old"])
        .ok();
    let conn = connector(&gw, material(&u, "old"), PathHint::QuicOnly)
        .connect()
        .await
        .unwrap();
    let info = || async {
        OpenShellClient::new(conn.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
    };
    info().await.unwrap();

    let reloads = gw.logs().matches("TLS material reloaded").count();
    u.run(&["pki", "rotate-ca", "--overlap", "3s"]).ok();
    // The overlap ends at most 3 s from here (the CLI recorded it before returning).
    let rotated = std::time::Instant::now();
    wait_reload(&gw, reloads);
    if rotated.elapsed() < Duration::from_secs(2) {
        info().await.expect("refused during the overlap");
    }
    assert_eventually!(
        Duration::from_secs(5).saturating_sub(rotated.elapsed()),
        conn.close_reason().is_some(),
        "the old CA's connection outlived the overlap by more than 2 s\n{}",
        gw.logs()
    );
    eprintln!(
        "closed {:?} after the rotation (overlap 3 s)",
        rotated.elapsed()
    );
    let reason = conn.close_reason().unwrap().to_string();
    assert!(reason.contains("no longer trusted"), "{reason}");
}
