//! QUIC listener: one task per connection driving h3, one task per request.
//!
//! 0-RTT: every connection is accepted with `into_0rtt`, so requests that arrive in early
//! data can be read before the handshake completes. Early data is replayable, so:
//!
//! ```text
//!  request arrives ──> handshake confirmed? ──yes──> serve
//!                            │ no
//!                            ├── idempotent read (proto::IDEMPOTENT_READS) ──> serve now
//!                            └── anything else, every CONNECT ──> wait for confirmation
//! ```
//!
//! A replayed flight can never confirm the handshake (it lacks the client's keys), so a
//! deferred request from a replay is never executed; and rustls' stateful ticket cache
//! makes each ticket single-use, so a replay is not even offered early data.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use tokio::sync::watch;
use tower::ServiceExt;
use tracing::Instrument;

use super::{ConnMeta, RequestContext, ServerConfig, Shared, TransportMetrics, wait_true};
use crate::h3io::{self, H3Body, ServerSend};
use crate::tls::{ALPN_H3, ServerTls};
use crate::{TransportError, TransportKind};

pub(super) fn bind(
    config: &ServerConfig,
    tls: &Arc<ServerTls>,
    addr: SocketAddr,
) -> Result<quinn::Endpoint, TransportError> {
    let sessions = rustls::server::ServerSessionMemoryCache::new(4096);
    let rustls_cfg = tls.server_config(ALPN_H3, true, sessions)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_cfg)
        .map_err(|e| TransportError::Config(format!("QUIC TLS configuration: {e}")))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(config.tuning.transport_config()?);
    // Connection migration stays on: a client whose address changes keeps its connection.
    server_config.migration(true);
    let socket = config
        .tuning
        .bind_udp(addr)
        .map_err(|e| TransportError::bind(addr, e))?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Config("no async runtime for QUIC".into()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(|e| TransportError::bind(addr, e))
}

pub(super) async fn accept_loop(endpoint: quinn::Endpoint, shared: Shared) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            let span = tracing::info_span!("conn", transport = "quic", %peer);
            async move {
                if let Err(e) = serve_connection(incoming, shared.clone()).await {
                    TransportMetrics::inc(&shared.metrics.handshake_failures);
                    tracing::info!(error = %e, "connection failed");
                }
            }
            .instrument(span)
            .await
        });
    }
}

async fn serve_connection(incoming: quinn::Incoming, shared: Shared) -> Result<(), String> {
    let connecting = incoming.accept().map_err(|e| e.to_string())?;
    let (conn, zero_rtt): (quinn::Connection, futures::future::BoxFuture<'static, bool>) =
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, Box::pin(accepted)),
            // quinn documents this as infallible on the server; if it ever fails, fall back
            // to a full handshake, after which everything is confirmed.
            Err(connecting) => {
                let conn = connecting.await.map_err(|e| e.to_string())?;
                (conn, Box::pin(async { true }))
            }
        };
    let (confirmed_tx, confirmed) = watch::channel(false);
    let conn_for_hs = conn.clone();
    tokio::spawn(async move {
        // Resolves when the handshake completes (client Finished received and verified).
        let _ = zero_rtt.await;
        if conn_for_hs.close_reason().is_none() {
            let _ = confirmed_tx.send(true);
        }
    });

    let meta = Arc::new(ConnMeta::new(
        shared.next_conn_id(),
        conn.remote_address(),
        TransportKind::Quic,
        Some(conn.clone()),
        shared.config.tls.clone(),
    ));
    let _registration = shared.registry.register_quic(meta.clone(), conn.clone());
    TransportMetrics::inc(&shared.metrics.quic_connections);

    let mut h3conn: h3::server::Connection<h3_quinn::Connection, Bytes> = h3::server::builder()
        .max_field_section_size(64 * 1024)
        .build(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| close_text(&conn, e.to_string()))?;
    if let Some(p) = meta.principal() {
        tracing::info!(subject = %p.subject, "connection established");
    }

    let mut draining = shared.draining.clone();
    let mut goaway_sent = false;
    loop {
        let accepted = tokio::select! {
            r = h3conn.accept() => r,
            _ = wait_true(&mut draining), if !goaway_sent => {
                goaway_sent = true;
                // GOAWAY: finish what is in flight, accept nothing new.
                let _ = h3conn.shutdown(0).await;
                continue;
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                let meta = meta.clone();
                let confirmed = confirmed.clone();
                tokio::spawn(async move {
                    match resolver.resolve_request().await {
                        Ok((req, stream)) => {
                            handle_request(req, stream, meta, confirmed, shared).await
                        }
                        Err(e) => tracing::debug!(error = %e, "malformed request stream"),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(error = %close_text(&conn, e.to_string()), "connection ended");
                }
                break;
            }
        }
    }
    Ok(())
}

fn close_text(conn: &quinn::Connection, fallback: String) -> String {
    conn.close_reason()
        .map(|r| r.to_string())
        .unwrap_or(fallback)
}

type ServerStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

async fn handle_request(
    req: http::Request<()>,
    stream: ServerStream,
    meta: Arc<ConnMeta>,
    mut confirmed: watch::Receiver<bool>,
    shared: Shared,
) {
    let metrics = &shared.metrics;
    TransportMetrics::inc(&metrics.requests);
    metrics
        .streams_open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _open = StreamGauge(metrics.clone());

    let is_connect = req.method() == Method::CONNECT;
    let mut early = !*confirmed.borrow();
    if early {
        if !is_connect && openshell_proto::is_idempotent_read(req.uri().path()) {
            TransportMetrics::inc(&metrics.early_requests_served);
        } else {
            TransportMetrics::inc(&metrics.early_requests_deferred);
            if confirmed.wait_for(|c| *c).await.is_err() {
                // The handshake never completed (e.g. a replayed flight): drop the request.
                tracing::info!(path = %req.uri().path(), "early request dropped: handshake not confirmed");
                return;
            }
            early = false;
        }
    }
    let ctx = RequestContext {
        conn: meta.clone(),
        early_data: early,
    };

    if is_connect {
        tunnel(req, stream, ctx, &shared).await;
        return;
    }

    let (mut send, recv) = stream.split();
    let mut req = req.map(|()| tonic::body::Body::new(H3Body::new(recv)));
    req.extensions_mut().insert(ctx);
    let Ok(resp) = shared.grpc.clone().oneshot(req).await;
    let (parts, body) = resp.into_parts();
    if send
        .send_response(Response::from_parts(parts, ()))
        .await
        .is_err()
    {
        return;
    }
    if let Err(e) = h3io::send_body(&mut send, body).await {
        tracing::debug!(error = %e, "response body not delivered");
    }
}

async fn tunnel(
    req: http::Request<()>,
    mut stream: ServerStream,
    ctx: RequestContext,
    shared: &Shared,
) {
    let (parts, ()) = req.into_parts();
    match shared.tunnels.open(ctx, parts.headers).await {
        Ok(io) => {
            TransportMetrics::inc(&shared.metrics.tunnels_opened);
            let ok = Response::builder()
                .status(StatusCode::OK)
                .body(())
                .expect("static response");
            if stream.send_response(ok).await.is_err() {
                return;
            }
            let (send, recv): (ServerSend, _) = stream.split();
            h3io::pump(send, recv, io).await;
        }
        Err(refusal) => {
            TransportMetrics::inc(&shared.metrics.tunnels_refused);
            let resp = Response::builder()
                .status(refusal.status)
                .header(
                    crate::tunnel::REASON_HEADER,
                    sanitize_header(&refusal.reason),
                )
                .body(())
                .expect("status and sanitized header are valid");
            let _ = stream.send_response(resp).await;
            let _ = stream.finish().await;
        }
    }
}

/// Header values must be visible ASCII; refusal reasons are ours but may quote input.
pub(super) fn sanitize_header(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(512)
        .collect()
}

struct StreamGauge(Arc<TransportMetrics>);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0
            .streams_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
