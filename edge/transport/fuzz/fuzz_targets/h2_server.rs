//! The gateway's HTTP/2 server (the TCP fallback) fed arbitrary bytes after the client
//! preface: hyper's HTTP/2 framing and HPACK, the request heads it accepts, and the
//! transport's dispatch (gRPC requests to the service, CONNECT to the tunnel service, which
//! parses `openshell-tunnel` and echoes). The connection is served exactly as the TCP
//! listener serves an accepted socket (`serve_h2`, via the `fuzzing` feature's entry point)
//! over an in-memory pipe, on a paused clock: keep-alive timers fire without waiting, and
//! every input must end the connection without a panic or a hang.
//!
//! Input: the bytes a client sends after `PRI * HTTP/2.0...` (frames). The seed corpus in
//! `seeds/h2_server` holds a SETTINGS frame followed by a gRPC POST and by CONNECT requests.
#![no_main]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use libfuzzer_sys::fuzz_target;
use openshell_transport::{
    BoxIo, GrpcService, RequestContext, TunnelRefusal, TunnelService, TunnelTarget,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opens an in-process echo for any well-formed target, refuses the rest (as the gateway
/// refuses a malformed target with 400).
struct EchoTunnels;

impl TunnelService for EchoTunnels {
    fn open(
        &self,
        _ctx: RequestContext,
        headers: HeaderMap,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelRefusal>> {
        let target = TunnelTarget::from_headers(&headers);
        Box::pin(async move {
            if target.is_none() {
                // A reason with bytes no header may carry, as one quoting input could:
                // the listener must sanitize it, not fail.
                return Err(TunnelRefusal::new(
                    StatusCode::BAD_REQUEST,
                    "missing or malformed 'openshell-tunnel' header\r\n\u{7f}é",
                ));
            }
            let (client, server) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(server);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
            Ok(Box::new(client) as BoxIo)
        })
    }
}

/// Reads the request body (bounded) and answers, like a unary RPC.
fn grpc() -> GrpcService {
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        |req: http::Request<tonic::body::Body>| async move {
            use http_body_util::BodyExt;
            let body = http_body_util::Limited::new(req.into_body(), 1 << 20);
            let _ = body.collect().await;
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        },
    ))
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(openshell_transport::server::serve_h2_for_fuzzing(
            server,
            None,
            grpc(),
            Arc::new(EchoTunnels),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async move {
            let _ = wr.write_all(PREFACE).await;
            let _ = wr.write_all(data).await;
            // Give the server time to answer and to run tunnels before the client leaves.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = wr.shutdown().await;
        };
        let read = async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        // Virtual time: the keep-alive (20 s interval, 10 s timeout) ends a stuck
        // connection well within this bound; reaching it means the server hangs.
        tokio::time::timeout(Duration::from_secs(600), async {
            tokio::join!(write, read);
            let _ = serve.await;
        })
        .await
        .expect("the HTTP/2 connection did not end");
    });
});
