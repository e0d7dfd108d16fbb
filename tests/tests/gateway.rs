//! The gateway process: persistence, 0-RTT rules, revocation and rotation without restart,
//! health and metrics, and refusing bad input.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::{
    CreateProviderRequest, GetGatewayInfoRequest, GetProviderRequest, ListProvidersRequest,
    UpdateProviderRequest,
};
use openshell_tests::{Gateway, TestPki, assert_eventually};
use openshell_transport::{Connector, PathHint, TunnelTarget, ZeroRtt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn provider(name: &str) -> CreateProviderRequest {
    CreateProviderRequest {
        name: name.into(),
        r#type: "openai".into(),
        config: [("base_url".to_string(), "https://api.example".to_string())].into(),
        credentials: [("OPENAI_API_KEY".to_string(), "sk-test-123".to_string())].into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_restart_and_versions_guard_updates() {
    let pki = TestPki::new();
    let state = tempfile::tempdir().unwrap();
    let creds = pki.client("alice", &[]);
    {
        let gw = Gateway::builder()
            .pki(pki.dir())
            .state_dir(state.path())
            .spawn();
        let conn = Connector::new(gw.client_config(&creds))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut api = OpenShellClient::new(conn.channel());
        let p = api
            .create_provider(provider("openai"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.credential_keys, vec!["OPENAI_API_KEY".to_string()]);
        let dup = api.create_provider(provider("openai")).await.unwrap_err();
        assert_eq!(dup.code(), tonic::Code::AlreadyExists, "{dup:?}");
        let v = p.meta.unwrap().resource_version;
        let upd = |v| UpdateProviderRequest {
            name: "openai".into(),
            resource_version: v,
            config: [("org".to_string(), "acme".to_string())].into(),
            ..Default::default()
        };
        api.update_provider(upd(v)).await.unwrap();
        let stale = api.update_provider(upd(v)).await.unwrap_err();
        assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
        let bad = api.create_provider(provider("no/slash")).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("no/slash"), "{}", bad.message());
    }
    // The credential value is not stored in the clear.
    let db = std::fs::read(state.path().join("openshell.db")).unwrap();
    let wal = std::fs::read(state.path().join("openshell.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(11).any(|w| w == b"sk-test-123"));
    }
    let gw = Gateway::builder()
        .pki(pki.dir())
        .state_dir(state.path())
        .spawn();
    let conn = Connector::new(gw.client_config(&creds))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = OpenShellClient::new(conn.channel());
    let p = api
        .get_provider(GetProviderRequest {
            name: "openai".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.config.get("org").map(String::as_str), Some("acme"));
    let all = api
        .list_providers(ListProvidersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.providers.len(), 1);
}

/// Sends datagrams `delay` after they were queued, in order.
fn delayed_sender(
    socket: Arc<tokio::net::UdpSocket>,
    delay: Duration,
) -> tokio::sync::mpsc::UnboundedSender<(Vec<u8>, Option<SocketAddr>)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Option<SocketAddr>)>();
    tokio::spawn(async move {
        let mut queue = std::collections::VecDeque::new();
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some((d, to)) => queue.push_back((tokio::time::Instant::now() + delay, d, to)),
                    None => break,
                },
                _ = async {
                    match queue.front() {
                        Some((at, _, _)) => tokio::time::sleep_until(*at).await,
                        None => std::future::pending::<()>().await,
                    }
                } => {
                    let (_, d, to) = queue.pop_front().unwrap();
                    let _ = match to {
                        Some(to) => socket.send_to(&d, to).await,
                        None => socket.send(&d).await,
                    };
                }
            }
        }
    });
    tx
}

/// A UDP relay between a client and the gateway that records what the client sent, with a
/// one-way delay so the handshake takes a real round trip (as on any network).
struct Relay {
    addr: SocketAddr,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    recording: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(gateway: SocketAddr) -> Relay {
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(gateway).await.unwrap();
        let addr = front.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let recording = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let one_way = Duration::from_millis(20);
        let to_gateway = delayed_sender(back.clone(), one_way);
        let to_client = delayed_sender(front.clone(), one_way);
        {
            let (front, recorded, recording, client) = (
                front.clone(),
                recorded.clone(),
                recording.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().unwrap() = Some(from);
                    if recording.load(std::sync::atomic::Ordering::SeqCst) {
                        recorded.lock().unwrap().push(buf[..n].to_vec());
                    }
                    let _ = to_gateway.send((buf[..n].to_vec(), None));
                }
            });
        }
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let to = *client.lock().unwrap();
                if let Some(to) = to {
                    let _ = to_client.send((buf[..n].to_vec(), Some(to)));
                }
            }
        });
        Relay {
            addr,
            recorded,
            recording,
        }
    }
}

fn rpc_count(gw: &Gateway, method: &str) -> u64 {
    let (_, text) = gw.http_get("/metrics");
    text.lines()
        .filter(|l| {
            l.starts_with(&format!(
                "openshell_rpc_requests_total{{method=\"{method}\""
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_rtt_serves_reads_early_and_never_runs_a_mutation_twice() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).health().spawn();
    let relay = Relay::start(gw.addr).await;
    let creds = pki.client("alice", &[]);
    let mut cfg = gw.client_config(&creds);
    cfg.endpoint =
        openshell_transport::Endpoint::parse(&format!("https://{}", relay.addr)).unwrap();
    cfg.server_name = Some("localhost".into());
    cfg.hint = PathHint::QuicOnly;
    let connector = Connector::new(cfg).unwrap();

    // First connection: full handshake, receives session tickets.
    let first = connector.connect().await.unwrap();
    assert_eq!(first.zero_rtt(), ZeroRtt::NotAttempted);
    OpenShellClient::new(first.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.close().await;

    // Second connection: requests go out in 0-RTT; record the client's flight.
    relay
        .recording
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let second = connector.connect().await.unwrap();
    assert_eq!(second.zero_rtt(), ZeroRtt::Pending, "no ticket was used");
    let mut api = OpenShellClient::new(second.channel());
    let mut reader = api.clone();
    let (info, created) = tokio::join!(
        reader.get_gateway_info(GetGatewayInfoRequest {}),
        api.create_provider(provider("early"))
    );
    relay
        .recording
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let info = info.unwrap().into_inner();
    created.unwrap();
    assert_eq!(second.zero_rtt_settled().await, ZeroRtt::Accepted);
    assert!(info.early_data, "the read was not served from early data");
    assert!(gw.metric("openshell_early_data_served_total") >= 1.0);
    assert!(
        gw.metric("openshell_early_data_deferred_total") >= 1.0,
        "the mutation was not held until the handshake was confirmed"
    );
    assert_eq!(rpc_count(&gw, "/openshell.v1.OpenShell/CreateProvider"), 1);

    // Replay the recorded flight (ClientHello + 0-RTT packets) from another address.
    let flight = relay.recorded.lock().unwrap().clone();
    assert!(!flight.is_empty());
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..2 {
        for d in &flight {
            attacker.send_to(d, gw.addr).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rpc_count(&gw, "/openshell.v1.OpenShell/CreateProvider"),
        1,
        "a replayed early mutation was executed\n{}",
        gw.logs()
    );
    let list = api
        .list_providers(ListProvidersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.providers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_live_connections_and_refuses_resumption() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let victim = pki.client("bob", &[]);
    let bystander = pki.client("carol", &[]);
    let connector = Connector::new({
        let mut c = gw.client_config(&victim);
        c.hint = PathHint::QuicOnly;
        c
    })
    .unwrap();
    let live = connector.connect().await.unwrap();
    let tcp_live = Connector::new({
        let mut c = gw.client_config(&victim);
        c.hint = PathHint::TcpOnly;
        c
    })
    .unwrap()
    .connect()
    .await
    .unwrap();
    let other = Connector::new(gw.client_config(&bystander))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for c in [&live, &tcp_live, &other] {
        OpenShellClient::new(c.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // tickets arrive

    pki.revoke(&victim.serial);
    let revoked_at = std::time::Instant::now();
    // Live connections of the revoked certificate close within 2 s; others stay.
    loop {
        let quic_closed = live.close_reason().is_some();
        let tcp_closed = OpenShellClient::new(tcp_live.channel())
            .health(openshell_proto::HealthRequest {})
            .await
            .is_err();
        if quic_closed && tcp_closed {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "revoked connections still open after 2 s (quic closed: {quic_closed}, tcp closed: {tcp_closed})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = live.close_reason().unwrap().to_string();
    assert!(reason.contains("revoked"), "{reason}");
    OpenShellClient::new(other.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .expect("an unrelated client was disconnected");

    // A resumed (0-RTT) session restores the revoked certificate without re-verifying it;
    // the request-time check must still refuse it.
    let resumed = connector.connect().await.unwrap();
    let err = OpenShellClient::new(resumed.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap_err();
    let text = resumed
        .explain(&err)
        .map(|e| e.to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(text.contains("revoked"), "resumed session: {text}");
    // A fresh full handshake is refused too.
    let mut fresh = gw.client_config(&victim);
    fresh.hint = PathHint::TcpOnly;
    let msg = openshell_tests::gateway::refusal(fresh).await;
    assert!(msg.contains("revoked"), "fresh handshake: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_rotation_keeps_an_open_tunnel_flowing() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let creds = pki.client("alice", &[]);
    let conn = Connector::new(gw.client_config(&creds))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tunnel = conn.open_tunnel(&TunnelTarget::Echo).await.unwrap();
    let mut buf = [0u8; 5];
    tunnel.write_all(b"hello").await.unwrap();
    tunnel.read_exact(&mut buf).await.unwrap();

    pki.rotate_server();
    assert_eventually!(
        Duration::from_secs(5),
        gw.logs().contains("TLS material reloaded"),
        "the gateway did not reload the rotated certificate:\n{}",
        gw.logs()
    );
    // The old tunnel keeps flowing, and new connections handshake with the new certificate.
    tunnel.write_all(b"again").await.unwrap();
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        let mut c = gw.client_config(&creds);
        c.hint = hint;
        let fresh = Connector::new(c).unwrap().connect().await.unwrap();
        OpenShellClient::new(fresh.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .unwrap();
    }
}

#[test]
fn health_readiness_and_metrics() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).health().spawn();
    let (code, body) = gw.http_get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = gw.http_get("/readyz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["checks"]["database"]["status"], "healthy");
    assert!(v["checks"]["database"]["latency_ms"].is_number());
    let (code, body) = gw.http_get("/metrics");
    assert_eq!(code, 200);
    for series in [
        "openshell_connections_total{transport=\"quic\"}",
        "openshell_connections_open",
        "openshell_quic_lost_packets",
        "# TYPE openshell_rpc_duration_seconds histogram",
    ] {
        assert!(body.contains(series), "missing {series} in:\n{body}");
    }
    assert_eq!(gw.http_get("/nope").0, 404);
}

/// Whether the peer closes `s` within `within` (EOF or reset), without us sending more.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The health listener is unauthenticated: sockets that never finish a request are closed
/// after the header timeout (5 s), and at most 64 are served at once; the next is closed at
/// accept. Probes work again as soon as the flood is gone.
#[test]
fn the_health_listener_bounds_idle_connections() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).health().spawn();
    let addr = gw.health.unwrap();
    let mut held: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // Half a request: headers never finished.
    {
        use std::io::Write;
        held[0]
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
    }
    let mut extra = std::net::TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a 65th connection was kept open"
    );
    let started = std::time::Instant::now();
    assert!(
        closed_within(&mut held[0], Duration::from_secs(8)),
        "unfinished headers held a connection open"
    );
    let took = started.elapsed();
    eprintln!("a connection with unfinished headers was closed after {took:?}");
    assert!(
        took >= Duration::from_secs(3),
        "closed before the header timeout: {took:?}"
    );
    drop(held);
    assert_eventually!(
        Duration::from_secs(8),
        gw.http_get("/healthz").0 == 200,
        "probes fail after the flood ended"
    );
}

#[test]
fn json_logs_are_json() {
    let pki = TestPki::new();
    let gw = Gateway::builder()
        .pki(pki.dir())
        .arg("--log-format")
        .arg("json")
        .spawn();
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("listening on"))
        .expect("no listening line");
    let v: serde_json::Value = serde_json::from_str(line).expect("log line is not JSON");
    assert!(v["fields"]["addr"].is_string(), "{line}");
}

/// Runs the gateway binary expecting it to fail; returns (exit code, stderr).
fn gateway_fails(args: &[&str]) -> (i32, String) {
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(openshell_tests::bin("openshell-gateway"))
        .args(args)
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_input_gets_one_clear_error() {
    let pki = TestPki::new();
    let dir = pki.dir().to_str().unwrap().to_string();

    // Port in use (UDP held by someone else).
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let (code, err) = gateway_fails(&["--pki-dir", &dir, "--listen", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("--listen"),
        "{err}"
    );

    // No PKI at all.
    let empty = tempfile::tempdir().unwrap();
    let (code, err) = gateway_fails(&[
        "--pki-dir",
        empty.path().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("openshell pki init") && err.contains("tls.crt"),
        "{err}"
    );

    // Garbage certificate.
    let garbage = TestPki::new();
    std::fs::write(
        garbage.path("server/tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (code, err) = gateway_fails(&[
        "--pki-dir",
        garbage.dir().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server certificate") && err.contains("tls.crt"),
        "{err}"
    );

    // Key that does not match the certificate.
    let mismatch = TestPki::new();
    let other = TestPki::new();
    std::fs::copy(
        other.path("server/tls.key"),
        mismatch.path("server/tls.key"),
    )
    .unwrap();
    let (code, err) = gateway_fails(&[
        "--pki-dir",
        mismatch.dir().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("does not match"), "{err}");

    // A world-readable key.
    let open = TestPki::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        open.path("server/tls.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (code, err) = gateway_fails(&[
        "--pki-dir",
        open.dir().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("chmod 600"), "{err}");

    // Plaintext off loopback.
    let (code, err) = gateway_fails(&["--disable-tls", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("loopback"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_loopback_gateway_serves_h2c() {
    let gw = Gateway::builder().arg("--disable-tls").spawn();
    let endpoint = openshell_transport::Endpoint::parse(&format!("http://{}", gw.addr)).unwrap();
    let conn = Connector::new(openshell_transport::ClientConfig::new(endpoint, None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let info = OpenShellClient::new(conn.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.transport, "tcp");
    assert_eq!(info.caller.unwrap().auth, "none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_gateway_is_reported_with_its_address() {
    // A port nobody listens on (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pki = TestPki::new();
    let creds = pki.client("alice", &[]);
    let endpoint =
        openshell_transport::Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
    let mut cfg = openshell_transport::ClientConfig::new(endpoint, Some(creds.material()));
    cfg.fallback_after = Duration::from_millis(300);
    cfg.connect_timeout = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let err = Connector::new(cfg)
        .unwrap()
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("unreachable"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}
