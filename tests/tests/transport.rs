//! The wire, end to end: the real `openshell-gateway` on loopback and the transport client.

use std::time::Duration;

use futures::StreamExt;
use openshell_proto::diagnostics_client::DiagnosticsClient;
use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::{
    Chunk, DownloadRequest, GetGatewayInfoRequest, GetSandboxRequest, HealthRequest, PingRequest,
};
use openshell_tests::{Gateway, TestPki};
use openshell_transport::{Connection, Connector, Hedge, PathHint, TransportKind, TunnelTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn connector(gw: &Gateway, creds: &openshell_tests::ClientCreds, hint: PathHint) -> Connector {
    let mut cfg = gw.client_config(creds);
    cfg.hint = hint;
    Connector::new(cfg).unwrap()
}

/// A connection as the ordinary user `alice`.
async fn connect_alice(gw: &Gateway, pki: &TestPki, hint: PathHint) -> Connection {
    connector(gw, &pki.client("alice", &[]), hint)
        .connect()
        .await
        .unwrap()
}

async fn exercise_rpc_shapes(conn: &Connection) {
    let mut diag = DiagnosticsClient::new(conn.channel());
    // unary
    let pong = diag
        .ping(PingRequest {
            payload: b"hello".to_vec(),
            response_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pong.payload, b"hello");
    // server streaming
    let mut down = diag
        .download(DownloadRequest {
            chunks: 100,
            chunk_size: 4096,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(c) = down.next().await {
        let c = c.unwrap();
        assert_eq!(c.data.len(), 4096);
        seqs.push(c.seq);
    }
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    // client streaming: the gateway's checksum must equal ours
    let data: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for d in &data {
        ctx.update(d);
    }
    let expected = hex::encode(ctx.finish().as_ref());
    let chunks: Vec<Chunk> = data
        .iter()
        .enumerate()
        .map(|(i, d)| Chunk {
            seq: i as u64,
            data: d.clone(),
        })
        .collect();
    let summary = diag
        .upload(futures::stream::iter(chunks.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.chunks, 50);
    assert_eq!(summary.sha256, expected);
    // bidi
    let echoed: Vec<Chunk> = diag
        .echo(futures::stream::iter(chunks.clone()))
        .await
        .unwrap()
        .into_inner()
        .map(|c| c.unwrap())
        .collect()
        .await;
    assert_eq!(echoed, chunks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rpc_shapes_over_quic_and_tcp() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let creds = pki.client("alice", &["admin"]);
    for (hint, kind) in [
        (PathHint::QuicOnly, TransportKind::Quic),
        (PathHint::TcpOnly, TransportKind::Tcp),
    ] {
        let conn = connector(&gw, &creds, hint).connect().await.unwrap();
        assert_eq!(conn.transport(), kind);
        exercise_rpc_shapes(&conn).await;
        let info = OpenShellClient::new(conn.channel())
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.transport, kind.as_str());
        let caller = info.caller.unwrap();
        assert_eq!(caller.subject, "alice");
        assert_eq!(caller.roles, vec!["admin".to_string()]);
        assert_eq!(caller.certificate_serial, creds.serial);
    }
}

/// One Ping whose answer must carry `payload` back.
async fn ping_echoes(mut diag: DiagnosticsClient<openshell_transport::Channel>, payload: Vec<u8>) {
    let pong = diag
        .ping(PingRequest {
            payload: payload.clone(),
            response_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pong.payload, payload);
}

/// Hedging sends reads twice on QUIC; whichever copy answers, callers must see exactly what
/// one unhedged call would: their own payload, whole large answers, error statuses, and
/// streaming calls (never hedged) unchanged. Over TCP the policy is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_reads_answer_exactly_like_single_ones() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let creds = pki.client("alice", &["admin"]);
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        let conn = connector(&gw, &creds, hint).connect().await.unwrap();
        let hedged = conn.channel().hedging(Hedge::Always);
        let mut diag = DiagnosticsClient::new(hedged.clone());
        // Many at once, each with its own payload: answers must not cross.
        let calls =
            (0..200u32).map(|i| ping_echoes(diag.clone(), format!("ping {i}").into_bytes()));
        futures::future::join_all(calls).await;
        let big = diag
            .ping(PingRequest {
                payload: Vec::new(),
                response_size: 1 << 20,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(big.payload, vec![0x5a; 1 << 20]);
        // An error status comes through the hedged path as it does through a single call.
        let mut api = OpenShellClient::new(hedged);
        let hedged_err = api
            .get_sandbox(GetSandboxRequest {
                name: "no-such-sandbox".into(),
            })
            .await
            .unwrap_err();
        let single_err = OpenShellClient::new(conn.channel().hedging(Hedge::Off))
            .get_sandbox(GetSandboxRequest {
                name: "no-such-sandbox".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(hedged_err.code(), single_err.code());
        assert_eq!(hedged_err.message(), single_err.message());
        assert_ne!(hedged_err.code(), tonic::Code::Ok);
        let info = api
            .get_gateway_info(GetGatewayInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.caller.unwrap().subject, "alice");
        // Streaming reads are not hedged and still arrive whole and in order.
        let chunks: Vec<u64> = diag
            .download(DownloadRequest {
                chunks: 50,
                chunk_size: 1000,
            })
            .await
            .unwrap()
            .into_inner()
            .map(|c| c.unwrap().seq)
            .collect()
            .await;
        assert_eq!(chunks, (0..50).collect::<Vec<_>>());
        // Over QUIC the reads really went out twice while the window had room (the 200
        // concurrent ones fill it, so some find none); TCP has no hedging to count.
        match (hint, conn.hedge_counts()) {
            (PathHint::QuicOnly, Some(c)) => {
                assert!(c.hedged > 0 && c.hedged + c.no_room >= 200, "{c:?}")
            }
            (PathHint::TcpOnly, None) => {}
            (hint, counts) => panic!("{hint:?}: unexpected hedge counts {counts:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_rpcs_say_so() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let conn = connect_alice(&gw, &pki, PathHint::QuicOnly).await;
    let err = OpenShellClient::new(conn.channel())
        .get_inference(openshell_proto::GetInferenceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_rpcs_share_one_connection() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).health().spawn();
    let conn = connect_alice(&gw, &pki, PathHint::QuicOnly).await;
    let calls = (0..1000u32).map(|i| {
        ping_echoes(
            DiagnosticsClient::new(conn.channel()),
            i.to_be_bytes().to_vec(),
        )
    });
    tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("1000 concurrent RPCs did not finish in 60 s");
    // Every RPC rode the same QUIC connection.
    let text = gw.http_get("/metrics").1;
    assert!(
        text.contains("openshell_connections_total{transport=\"quic\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("method=\"/openshell.v1.Diagnostics/Ping\",code=\"Ok\"} 1000"),
        "{text}"
    );
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for 100 MiB.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Sends `total` bytes through an echo tunnel while reading them back; returns the
/// SHA-256 of what was sent and of what came back.
async fn echo_transfer(
    tunnel: openshell_transport::BoxIo,
    total: usize,
    mid: Option<tokio::sync::oneshot::Sender<()>>,
) -> (String, String) {
    let (mut rd, mut wr) = tokio::io::split(tunnel);
    let writer = tokio::spawn(async move {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut sent = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0;
        let mut mid = mid;
        while written < total {
            let n = buf.len().min(total - written);
            fill(&mut buf[..n], &mut state);
            sent.update(&buf[..n]);
            wr.write_all(&buf[..n]).await.unwrap();
            written += n;
            if written >= total / 2
                && let Some(tx) = mid.take()
            {
                let _ = tx.send(());
            }
        }
        wr.shutdown().await.unwrap();
        hex::encode(sent.finish().as_ref())
    });
    let mut got = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0;
    loop {
        let n = rd.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        read += n;
    }
    assert_eq!(read, total, "tunnel returned {read} of {total} bytes");
    (writer.await.unwrap(), hex::encode(got.finish().as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_keep_flowing_while_a_tunnel_moves_100_mib() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        let conn = connect_alice(&gw, &pki, hint).await;
        let tunnel = conn.open_tunnel(&TunnelTarget::Echo).await.unwrap();
        let transfer = tokio::spawn(echo_transfer(tunnel, 100 << 20, None));
        let mut diag = DiagnosticsClient::new(conn.channel());
        let mut rpcs = 0;
        while !transfer.is_finished() {
            let started = std::time::Instant::now();
            diag.ping(PingRequest::default()).await.unwrap();
            rpcs += 1;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "an RPC waited {:?} behind the tunnel",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (sent, got) = transfer.await.unwrap();
        assert_eq!(sent, got, "{hint:?}: checksums differ");
        assert!(rpcs > 0, "{hint:?}: no RPC ran during the transfer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_sends_its_pattern_and_sink_counts_what_arrived() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        let conn = connect_alice(&gw, &pki, hint).await;
        // source: the byte at offset i is i mod 256 (a 64 KiB pattern, endlessly).
        let mut source = conn.open_tunnel(&TunnelTarget::Source).await.unwrap();
        let mut got = vec![0u8; 3 << 20];
        source.read_exact(&mut got).await.unwrap();
        let wrong = got.iter().enumerate().position(|(i, b)| *b != i as u8);
        assert_eq!(wrong, None, "{hint:?}: source pattern broken");
        // It drains what the client writes instead of stalling on it.
        source.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        source.read_exact(&mut got[..1024]).await.unwrap();
        drop(source);

        // sink: running totals, and after the client's end of stream, the exact total.
        let sent: u64 = (5 << 20) + 123;
        let mut sink = conn.open_tunnel(&TunnelTarget::Sink).await.unwrap();
        let mut left = sent as usize;
        let chunk = vec![0x5au8; 64 * 1024];
        while left > 0 {
            let n = left.min(chunk.len());
            sink.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        sink.shutdown().await.unwrap();
        let mut receipts = Vec::new();
        sink.read_to_end(&mut receipts).await.unwrap();
        assert_eq!(
            receipts.len() % 8,
            0,
            "{hint:?}: receipts are 8-byte totals"
        );
        let totals: Vec<u64> = receipts
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert!(
            totals.windows(2).all(|w| w[0] <= w[1]),
            "{hint:?}: {totals:?}"
        );
        assert_eq!(totals.last(), Some(&sent), "{hint:?}: final total");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_targets_are_chosen_by_the_gateway() {
    let pki = TestPki::new();
    // A TCP service the operator registered under a name.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"registered-service\n").await.unwrap();
    });
    let gw = Gateway::builder()
        .pki(pki.dir())
        .arg("--tunnel-target")
        .arg(&format!("db={svc_addr}"))
        .spawn();
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        let conn = connect_alice(&gw, &pki, hint).await;
        let err = conn
            .open_tunnel(&TunnelTarget::Service("nope".into()))
            .await
            .err()
            .expect("unknown target must be refused");
        assert!(
            err.to_string().contains("no tunnel target named 'nope'"),
            "{err}"
        );
        let err = conn
            .open_tunnel(&TunnelTarget::SandboxSsh("box".into()))
            .await
            .err()
            .expect("a tunnel to a sandbox that does not exist must be refused");
        assert!(
            err.to_string().contains("404") && err.to_string().contains("'box' does not exist"),
            "{err}"
        );
    }
    let conn = connect_alice(&gw, &pki, PathHint::QuicOnly).await;
    let mut t = conn
        .open_tunnel(&TunnelTarget::Service("db".into()))
        .await
        .unwrap();
    let mut line = String::new();
    t.read_to_string(&mut line).await.unwrap();
    assert_eq!(line, "registered-service\n");
}

async fn rejection(gw: &Gateway, creds: &openshell_tests::ClientCreds, hint: PathHint) -> String {
    let mut cfg = gw.client_config(creds);
    cfg.hint = hint;
    openshell_tests::gateway::refusal(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_rejection_matrix() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let now = time::OffsetDateTime::now_utc();
    let expired = pki.client_valid(
        "old",
        &[],
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let mut no_cert = pki.client("x", &[]);
    no_cert.cert_pem.clear();
    let cases: Vec<(&str, openshell_tests::ClientCreds, &str)> = vec![
        ("foreign CA", pki.foreign_client("mallory"), "another CA"),
        ("expired", expired, "expired"),
        (
            "server cert as client cert",
            pki.server_as_client(),
            "not valid for client authentication",
        ),
    ];
    for hint in [PathHint::QuicOnly, PathHint::TcpOnly] {
        for (name, creds, expect) in &cases {
            let msg = rejection(&gw, creds, hint).await;
            assert!(
                msg.contains("rejected") && msg.contains(expect),
                "{hint:?} {name}: got '{msg}'"
            );
        }
        // No certificate at all.
        let mut cfg = gw.client_config(&pki.client("x", &[]));
        cfg.tls = Some(
            openshell_transport::tls::ClientMaterial::from_pem(pki.ca_pem().as_bytes(), None)
                .unwrap(),
        );
        cfg.hint = hint;
        let msg = openshell_tests::gateway::refusal(cfg).await;
        assert!(
            msg.contains("requires a client certificate"),
            "{hint:?} no cert: {msg}"
        );
    }
    // The gateway kept serving the good client throughout.
    let conn = connect_alice(&gw, &pki, PathHint::QuicOnly).await;
    OpenShellClient::new(conn.channel())
        .health(HealthRequest {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_tcp_when_udp_is_unbound_or_blackholed() {
    let pki = TestPki::new();
    // Unbound: the gateway serves TCP only.
    let gw = Gateway::builder()
        .pki(pki.dir())
        .arg("--transports")
        .arg("tcp")
        .spawn();
    let creds = pki.client("alice", &[]);
    let started = std::time::Instant::now();
    let conn = connector(&gw, &creds, PathHint::Auto)
        .connect()
        .await
        .unwrap();
    assert_eq!(conn.transport(), TransportKind::Tcp);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    exercise_rpc_shapes(&conn).await;
    drop(gw);

    // Blackholed: something holds the UDP port and swallows every datagram.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = blackhole.local_addr().unwrap().port();
    let gw = Gateway::builder()
        .pki(pki.dir())
        .listen(&format!("127.0.0.1:{port}"))
        .arg("--transports")
        .arg("tcp")
        .spawn();
    let conn = connector(&gw, &creds, PathHint::Auto)
        .connect()
        .await
        .unwrap();
    assert_eq!(conn.transport(), TransportKind::Tcp);
    exercise_rpc_shapes(&conn).await;
    let mut buf = [0u8; 2048];
    blackhole.set_nonblocking(true).unwrap();
    assert!(
        blackhole.recv(&mut buf).is_ok(),
        "the client never tried QUIC before falling back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_migrates_mid_transfer() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let conn = connect_alice(&gw, &pki, PathHint::QuicOnly).await;
    let tunnel = conn.open_tunnel(&TunnelTarget::Echo).await.unwrap();
    let (mid_tx, mid_rx) = tokio::sync::oneshot::channel();
    let transfer = tokio::spawn(echo_transfer(tunnel, 32 << 20, Some(mid_tx)));
    mid_rx.await.unwrap();
    let before = conn.quic_stats().unwrap();
    let fresh = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let new_port = fresh.local_addr().unwrap().port();
    conn.rebind(fresh).unwrap();
    let (sent, got) = tokio::time::timeout(Duration::from_secs(120), transfer)
        .await
        .expect("transfer stalled after migration")
        .unwrap();
    assert_eq!(sent, got, "bytes changed across the migration");
    let after = conn.quic_stats().unwrap();
    assert!(after.path.sent_packets > before.path.sent_packets);
    // The gateway still answers on the migrated connection.
    DiagnosticsClient::new(conn.channel())
        .ping(PingRequest::default())
        .await
        .unwrap();
    assert_ne!(new_port, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_leaves_no_client_hanging() {
    let pki = TestPki::new();
    let mut gw = Gateway::builder()
        .pki(pki.dir())
        .arg("--shutdown-grace")
        .arg("2s")
        .spawn();
    let creds = pki.client("alice", &[]);
    let quic = connector(&gw, &creds, PathHint::QuicOnly)
        .connect()
        .await
        .unwrap();
    let tcp = connector(&gw, &creds, PathHint::TcpOnly)
        .connect()
        .await
        .unwrap();
    // Long-lived work on both: an open tunnel (never finishes by itself).
    let mut t1 = quic.open_tunnel(&TunnelTarget::Echo).await.unwrap();
    let mut t2 = tcp.open_tunnel(&TunnelTarget::Echo).await.unwrap();
    t1.write_all(b"x").await.unwrap();
    t2.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    t1.read_exact(&mut b).await.unwrap();
    t2.read_exact(&mut b).await.unwrap();

    let started = std::time::Instant::now();
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("gateway did not exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", gw.logs());
    // Both tunnels end (EOF or error) instead of hanging.
    for t in [&mut t1, &mut t2] {
        let r = tokio::time::timeout(Duration::from_secs(5), t.read(&mut b)).await;
        assert!(r.is_ok(), "a tunnel kept hanging after the gateway exited");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // New RPCs fail promptly with a reason.
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        DiagnosticsClient::new(quic.channel()).ping(PingRequest::default()),
    )
    .await
    .expect("an RPC hung after shutdown")
    .unwrap_err();
    let reason = quic
        .explain(&err)
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(reason.contains("shutting down"), "{reason} / {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_does_not_hurt_other_clients() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let creds = pki.client("alice", &[]);
    let conn = connector(&gw, &creds, PathHint::QuicOnly)
        .connect()
        .await
        .unwrap();
    // Garbage datagrams.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 42u64;
    for len in [1usize, 20, 1200, 1500] {
        let mut buf = vec![0u8; len];
        fill(&mut buf, &mut state);
        sock.send_to(&buf, gw.addr).unwrap();
    }
    // Garbage on TCP (not TLS at all), and a TLS-less HTTP/2 preface.
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        &[0xffu8; 4096],
    ] {
        if let Ok(mut s) = tokio::net::TcpStream::connect(gw.addr).await {
            let _ = s.write_all(junk).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut sink)).await;
        }
    }
    // A request stream with garbage: a tunnel that names no target.
    let err = conn.open_tunnel(&TunnelTarget::Echo).await;
    assert!(err.is_ok());
    DiagnosticsClient::new(conn.channel())
        .ping(PingRequest::default())
        .await
        .unwrap();
    let again = connector(&gw, &creds, PathHint::TcpOnly)
        .connect()
        .await
        .unwrap();
    exercise_rpc_shapes(&again).await;
}

/// Silent TCP sockets (no TLS ClientHello) hold a handshake slot for up to the handshake
/// timeout; one address gets at most 32 at once and the next is closed at accept, so a
/// flood from one host cannot pin unbounded tasks. Real clients get in once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_handshakes_are_capped_per_address() {
    let pki = TestPki::new();
    let gw = Gateway::builder().pki(pki.dir()).spawn();
    let creds = pki.client("alice", &[]);
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a 33rd silent handshake from one address was kept open: {r:?}"
    );
    // The held ones are still waiting (their timeout is 10 s), not closed.
    let r = tokio::time::timeout(Duration::from_millis(200), held[0].read(&mut buf)).await;
    assert!(r.is_err(), "a held handshake was closed early: {r:?}");
    drop(held);
    // The gateway frees their slots as it reads their EOF.
    let connector = connector(&gw, &creds, PathHint::TcpOnly);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let conn = loop {
        match connector.connect().await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no room after the flood ended: {e}"),
        }
    };
    OpenShellClient::new(conn.channel())
        .get_gateway_info(GetGatewayInfoRequest {})
        .await
        .unwrap();
}
