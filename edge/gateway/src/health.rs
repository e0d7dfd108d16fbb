//! The plain-HTTP health listener (`--health-listen`): `/healthz` (liveness, always 200
//! while the process serves), `/readyz` (200 only when the database answers) and
//! Prometheus `/metrics`. Kept off the main port so probes need no client certificate.
//!
//! Unauthenticated, so bounded: at most [`MAX_CONNECTIONS`] at once (more are closed at
//! accept), [`HEADER_TIMEOUT`] to send a request's headers, [`CONNECTION_LIFETIME`] in all,
//! and one request per connection. A probe needs none of this; a client that opens sockets
//! and sends nothing cannot make the gateway hold more than that.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;

use crate::GatewayError;

/// Connections served at once. A probe or a scrape holds one for milliseconds; 64 leaves
/// room for many monitors while bounding what an idle-socket flood can hold.
pub const MAX_CONNECTIONS: usize = 64;
/// Time to send the request headers. Probes send them at once; raising it lets idle sockets
/// hold slots longer.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Time a connection may live in all (a slow reader of /metrics included).
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
pub struct HealthState {
    pub store: Arc<dyn openshell_store::Store>,
    pub rpc: Arc<crate::metrics::RpcMetrics>,
    pub transport: Arc<openshell_transport::server::TransportMetrics>,
    pub registry: Arc<openshell_transport::server::ConnectionRegistry>,
}

pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, GatewayError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::HealthBind { addr, source })
}

pub async fn serve(listener: tokio::net::TcpListener, state: HealthState) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // Full: close at once rather than queue, so the accept loop never stalls.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "health listener full: connection closed");
            drop(stream);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

async fn route(req: Request<Incoming>, state: &HealthState) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" | "/health" => {
            let (code, db) = match state.store.ping().await {
                Ok(latency) => (
                    StatusCode::OK,
                    serde_json::json!({"status": "healthy", "latency_ms": latency.as_secs_f64() * 1000.0}),
                ),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "unhealthy", "error": e.to_string()}),
                ),
            };
            let body = serde_json::json!({
                "status": if code == StatusCode::OK { "healthy" } else { "unhealthy" },
                "version": crate::VERSION,
                "checks": {"database": db},
            });
            text(code, "application/json", format!("{body}\n"))
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(&state.rpc, &state.transport, &state.registry),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn text(code: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    resp
}
