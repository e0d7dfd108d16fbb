//! TCP fallback listener: TLS 1.3 (ALPN h2) + HTTP/2, or plaintext h2c on loopback when the
//! gateway runs without TLS. Serves the same gRPC service and tunnels as QUIC; tunnels are
//! HTTP/2 CONNECT requests whose stream hyper hands over as an upgraded byte stream.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::Instrument;

use super::{ConnMeta, PeerCert, RequestContext, Shared, TransportMetrics, wait_true};
use crate::tls::ALPN_H2;
use crate::{TransportError, TransportKind};

pub(super) async fn bind(addr: SocketAddr) -> Result<TcpListener, TransportError> {
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .map_err(|e| TransportError::bind(addr, e))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| TransportError::bind(addr, e))?;
    socket
        .bind(addr)
        .map_err(|e| TransportError::bind(addr, e))?;
    socket
        .listen(1024)
        .map_err(|e| TransportError::bind(addr, e))
}

/// Connections in their TLS handshake, in all and per IP (see
/// `ServerConfig::max_tls_handshakes`).
struct Handshakes {
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
    max: usize,
    max_per_ip: usize,
}

/// One handshake's place; released when dropped (handshake done, failed or timed out).
struct HandshakeSlot {
    handshakes: Arc<Handshakes>,
    ip: std::net::IpAddr,
}

impl Handshakes {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<std::net::IpAddr, usize>> {
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<HandshakeSlot> {
        use std::sync::atomic::Ordering;
        let mut map = self.lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= self.max_per_ip || self.total.load(Ordering::Relaxed) >= self.max {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(HandshakeSlot {
            handshakes: self.clone(),
            ip,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let mut map = self.handshakes.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.handshakes.total.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn accept_loop(listener: TcpListener, shared: Shared) {
    let handshakes = Arc::new(Handshakes {
        per_ip: Default::default(),
        total: Default::default(),
        max: shared.config.max_tls_handshakes,
        max_per_ip: shared.config.max_tls_handshakes_per_ip,
    });
    let acceptor = shared.config.tls.as_ref().map(|tls| {
        let sessions = rustls::server::ServerSessionMemoryCache::new(1024);
        tls.server_config(ALPN_H2, false, sessions)
            .map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)))
    });
    let acceptor = match acceptor.transpose() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "TCP listener cannot start");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Only TLS has a handshake to bound (plaintext is loopback only).
        let slot = match acceptor {
            Some(_) => match handshakes.enter(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    TransportMetrics::inc(&shared.metrics.handshake_failures);
                    tracing::debug!(%peer, "too many TLS handshakes at once: connection closed");
                    continue;
                }
            },
            None => None,
        };
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let span = tracing::info_span!("conn", transport = "tcp", %peer);
        tokio::spawn(
            async move {
                match acceptor {
                    Some(acceptor) => {
                        let hs = tokio::time::timeout(
                            shared.config.tls_handshake_timeout,
                            acceptor.accept(stream).into_fallible(),
                        )
                        .await;
                        drop(slot);
                        match hs {
                            Ok(Ok(tls)) => {
                                let client = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(PeerCert::from_chain);
                                serve_h2(tls, peer, client, shared).await
                            }
                            Ok(Err((e, tcp))) => {
                                TransportMetrics::inc(&shared.metrics.handshake_failures);
                                tracing::info!(error = %e, "TLS handshake failed");
                                linger_after_alert(tcp).await;
                            }
                            Err(_) => {
                                TransportMetrics::inc(&shared.metrics.handshake_failures);
                                tracing::info!("TLS handshake timed out");
                            }
                        }
                    }
                    None => serve_h2(stream, peer, None, shared).await,
                }
            }
            .instrument(span),
        );
    }
}

/// After a refused handshake the alert is on its way, but the client (TLS 1.3 finishes
/// first on its side) may already have sent requests we never read. Closing a socket with
/// unread data sends RST, which can destroy the alert in the client's buffers before it is
/// read. So: half-close, drain briefly, then close, and the client reads the real reason.
async fn linger_after_alert(mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

pub(super) async fn serve_h2<IO>(io: IO, peer: SocketAddr, client: Option<PeerCert>, shared: Shared)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let meta = ConnMeta::new(
        shared.next_conn_id(),
        peer,
        TransportKind::Tcp,
        None,
        shared.config.tls.clone(),
    );
    if let Some(c) = client {
        let _ = meta.client.set(c);
    }
    let meta = Arc::new(meta);
    let (_registration, mut close_rx) = shared.registry.register_tcp(meta.clone());
    TransportMetrics::inc(&shared.metrics.tcp_connections);

    let svc_shared = shared.clone();
    let svc_meta = meta.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        let ctx = RequestContext {
            conn: svc_meta.clone(),
            early_data: false,
        };
        async move { Ok::<_, std::convert::Infallible>(handle(req, ctx, shared).await) }
    });
    let keepalive = shared.config.h2_keepalive;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(keepalive))
        .keep_alive_timeout(keepalive / 2)
        .max_concurrent_streams(shared.config.tuning.max_bidi_streams)
        .initial_stream_window_size(shared.config.tuning.stream_receive_window)
        .initial_connection_window_size(shared.config.tuning.receive_window);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = shared.draining.clone();
    let mut goaway_sent = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = wait_true(&mut draining), if !goaway_sent => {
                goaway_sent = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = close_rx.changed() => {
                let reason = close_rx.borrow().clone().unwrap_or_default();
                tracing::info!(%reason, "closing connection");
                return;
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    ctx: RequestContext,
    shared: Shared,
) -> Response<tonic::body::Body> {
    TransportMetrics::inc(&shared.metrics.requests);
    if req.method() == Method::CONNECT {
        return tunnel(req, ctx, shared).await;
    }
    let mut req = req.map(tonic::body::Body::new);
    req.extensions_mut().insert(ctx);
    let Ok(resp) = shared.grpc.clone().oneshot(req).await;
    resp
}

async fn tunnel(
    mut req: Request<Incoming>,
    ctx: RequestContext,
    shared: Shared,
) -> Response<tonic::body::Body> {
    let headers = req.headers().clone();
    match shared.tunnels.open(ctx, headers).await {
        Ok(backend) => {
            TransportMetrics::inc(&shared.metrics.tunnels_opened);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                crate::tunnel::splice_upgrade(upgrade, backend, "tunnel").await;
            });
            Response::new(tonic::body::Body::empty())
        }
        Err(refusal) => {
            TransportMetrics::inc(&shared.metrics.tunnels_refused);
            let mut resp = Response::new(tonic::body::Body::empty());
            *resp.status_mut() = refusal.status;
            if let Ok(v) =
                http::HeaderValue::from_str(&super::quic::sanitize_header(&refusal.reason))
            {
                resp.headers_mut().insert(crate::tunnel::REASON_HEADER, v);
            }
            resp
        }
    }
}
