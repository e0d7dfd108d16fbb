//! The local connection agent's wire side: it serves CLI processes of the same user over a
//! Unix socket, speaking what the gateway's TCP fallback speaks (HTTP/2: gRPC requests and
//! CONNECT tunnels with the `openshell-tunnel` header) but in cleartext, and forwards each
//! request and tunnel on its own long-lived connection to the gateway.
//!
//! ```text
//!  openshell ──h2c/Unix──> agent ── serve_client ──┬─ /openshell-agent/* ─> AgentBackend::control
//!  (peer uid checked       (one per user           ├─ gRPC ──> upstream Channel  ─┐
//!   with SO_PEERCRED)       and gateway)            └─ CONNECT ─> open_tunnel ─────┴─> gateway
//! ```
//!
//! The agent changes nothing about what the gateway allows: requests go out on the agent's
//! connection exactly as the CLI would have sent them, so only `IDEMPOTENT_READS` are served
//! from 0-RTT early data (the gateway defers everything else until the handshake is
//! confirmed), and certificate verification is the connector's.
//!
//! Owns: the socket protocol (control paths, headers), the peer check, forwarding. Does not
//! own: when to connect, when to exit, where the socket lives (the CLI's `agent` module
//! implements [`AgentBackend`]).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::client::Connection;
use crate::tunnel::{REASON_HEADER, TunnelTarget};
use crate::{TransportError, ZeroRtt};

/// Requests under this path are for the agent itself (status, stop, the identity check).
pub const CONTROL_PREFIX: &str = "/openshell-agent/";
/// Request header of `hello`: the caller's fingerprint of the gateway registration.
pub const FINGERPRINT_HEADER: &str = "openshell-agent-fingerprint";
/// Response header: the agent's path to the gateway (`quic` or `tcp`).
pub const UPSTREAM_HEADER: &str = "openshell-agent-upstream";
/// Response header: early-data state of the agent's connection (`none`, `accepted`, ...).
pub const ZERO_RTT_HEADER: &str = "openshell-agent-zero-rtt";

/// How long a forwarded answer waits for the agent's handshake to settle so its 0-RTT
/// header is final. A response normally arrives after it has; the wait covers a busy
/// machine scheduling the handshake's task late. Past it the header says "pending".
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// Bound on a request body kept for a resend after refused early data (the idempotent
/// reads are small unary requests).
const MAX_REPLAYABLE_BODY: usize = 1024 * 1024;

/// Keeps the agent from idling out while held (a connected client, a request in flight).
pub type Activity = Box<dyn Send + Sync>;

/// An answer to a control request.
#[derive(Debug, Clone)]
pub struct ControlReply {
    pub status: StatusCode,
    /// JSON or text, as the path defines.
    pub body: Bytes,
}

/// What the agent process provides: its upstream connection, its own endpoints, and the
/// activity tracking its timers use.
pub trait AgentBackend: Send + Sync + 'static {
    /// A live connection to the gateway: the current one, or a new one (0-RTT when the
    /// connector holds a ticket) when there is none or it has closed.
    fn upstream(&self) -> BoxFuture<'_, Result<Arc<Connection>, TransportError>>;
    /// The current connection, without connecting.
    fn current(&self) -> Option<Arc<Connection>>;
    /// A request for the agent itself; `what` is the path after [`CONTROL_PREFIX`].
    fn control(&self, method: &Method, what: &str, headers: &HeaderMap) -> ControlReply;
    /// Held for the life of one client connection.
    fn client(&self) -> Activity;
    /// Held while one forwarded request (until its response body ends) or tunnel is open.
    fn request(&self, tunnel: bool) -> Activity;
}

/// Serves one accepted client until it disconnects or `shutdown` turns true (then the
/// client is told to go away and in-flight requests finish). Connections from any uid
/// other than `allowed_uid` are closed at once, before a byte is read.
pub async fn serve_client(
    stream: UnixStream,
    allowed_uid: u32,
    backend: Arc<dyn AgentBackend>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), TransportError> {
    let cred = stream
        .peer_cred()
        .map_err(|e| TransportError::Agent(format!("cannot read the peer's credentials: {e}")))?;
    if cred.uid() != allowed_uid {
        return Err(TransportError::Agent(format!(
            "refused a connection from uid {} (pid {:?}): only uid {allowed_uid} may use this agent",
            cred.uid(),
            cred.pid()
        )));
    }
    let _client = backend.client();
    let svc_backend = backend.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let backend = svc_backend.clone();
        async move { Ok::<_, Infallible>(handle(req, backend).await) }
    });
    let tuning = crate::QuicTuning::default();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(tuning.max_bidi_streams)
        .initial_stream_window_size(tuning.stream_receive_window)
        .initial_connection_window_size(tuning.receive_window);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut goaway_sent = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "agent client connection ended");
                }
                return Ok(());
            }
            _ = crate::server::wait_true(&mut shutdown), if !goaway_sent => {
                goaway_sent = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    backend: Arc<dyn AgentBackend>,
) -> Response<tonic::body::Body> {
    if let Some(what) = req.uri().path().strip_prefix(CONTROL_PREFIX) {
        let reply = backend.control(req.method(), what, req.headers());
        let mut resp = Response::new(tonic::body::Body::new(http_body_util::Full::new(
            reply.body,
        )));
        *resp.status_mut() = reply.status;
        if let Some(conn) = backend.current() {
            upstream_headers(resp.headers_mut(), &conn);
        }
        return resp;
    }
    if req.method() == Method::CONNECT {
        return tunnel(req, backend).await;
    }
    forward(req, backend).await
}

async fn forward(
    req: Request<Incoming>,
    backend: Arc<dyn AgentBackend>,
) -> Response<tonic::body::Body> {
    let activity = backend.request(false);
    let conn = match backend.upstream().await {
        Ok(c) => c,
        Err(e) => return grpc_error(&e),
    };
    let result = if openshell_proto::is_idempotent_read(req.uri().path()) {
        send_replayable(&conn, req).await
    } else {
        // Anything else would wait at the gateway for the handshake anyway; waiting here
        // means a refused 0-RTT never loses it.
        conn.zero_rtt_settled().await;
        send(&conn, req.map(tonic::body::Body::new)).await
    };
    match result {
        Ok(resp) => {
            settle(&conn).await;
            let (mut parts, body) = resp.into_parts();
            upstream_headers(&mut parts.headers, &conn);
            let body = tonic::body::Body::new(Held {
                body,
                _activity: activity,
            });
            Response::from_parts(parts, body)
        }
        Err(e) => {
            let err = conn.close_reason().unwrap_or_else(|| {
                TransportError::Closed(format!("the gateway did not answer: {e}"))
            });
            grpc_error(&err)
        }
    }
}

async fn send(
    conn: &Connection,
    req: Request<tonic::body::Body>,
) -> Result<Response<tonic::body::Body>, crate::BoxError> {
    conn.channel().oneshot(req).await
}

/// An idempotent read may go out in 0-RTT early data; when the gateway refuses early data
/// (its ticket keys changed, e.g. after a restart) the streams sent early fail and must be
/// sent again, so the (small, unary) request is kept until the handshake has settled.
async fn send_replayable(
    conn: &Connection,
    req: Request<Incoming>,
) -> Result<Response<tonic::body::Body>, crate::BoxError> {
    let (parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, MAX_REPLAYABLE_BODY)
        .collect()
        .await?
        .to_bytes();
    let build = || {
        let mut r = Request::new(tonic::body::Body::new(http_body_util::Full::new(
            body.clone(),
        )));
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        r
    };
    let early = conn.zero_rtt() == ZeroRtt::Pending;
    match send(conn, build()).await {
        Err(e) if early && conn.zero_rtt_settled().await == ZeroRtt::Rejected => {
            tracing::debug!(error = %e, "early data refused; sending the request again");
            send(conn, build()).await
        }
        other => other,
    }
}

async fn tunnel(
    mut req: Request<Incoming>,
    backend: Arc<dyn AgentBackend>,
) -> Response<tonic::body::Body> {
    let Some(target) = TunnelTarget::from_headers(req.headers()) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "missing or malformed tunnel target",
            None,
        );
    };
    let activity = backend.request(true);
    let conn = match backend.upstream().await {
        Ok(c) => c,
        Err(e) => return refusal(StatusCode::BAD_GATEWAY, &e.to_string(), None),
    };
    // Tunnels wait for the handshake at the gateway anyway (never early data).
    conn.zero_rtt_settled().await;
    match conn.open_tunnel(&target).await {
        Ok(upstream) => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                crate::tunnel::splice_upgrade(upgrade, upstream, "agent tunnel").await;
                drop(activity);
            });
            let mut resp = Response::new(tonic::body::Body::empty());
            upstream_headers(resp.headers_mut(), &conn);
            resp
        }
        Err(TransportError::TunnelRefused { status, reason }) => refusal(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            &reason,
            Some(&conn),
        ),
        Err(e) => refusal(StatusCode::BAD_GATEWAY, &e.to_string(), Some(&conn)),
    }
}

/// Waits (briefly) for the handshake of a 0-RTT connection to finish, so the header says
/// whether early data was accepted.
async fn settle(conn: &Connection) {
    if conn.zero_rtt() == ZeroRtt::Pending {
        let _ = tokio::time::timeout(SETTLE_WAIT, conn.zero_rtt_settled()).await;
    }
}

fn upstream_headers(headers: &mut HeaderMap, conn: &Connection) {
    headers.insert(
        UPSTREAM_HEADER,
        HeaderValue::from_static(conn.transport().as_str()),
    );
    headers.insert(
        ZERO_RTT_HEADER,
        HeaderValue::from_static(conn.zero_rtt().as_str()),
    );
}

fn refusal(
    status: StatusCode,
    reason: &str,
    conn: Option<&Connection>,
) -> Response<tonic::body::Body> {
    let mut resp = Response::new(tonic::body::Body::empty());
    *resp.status_mut() = status;
    let clean: String = reason
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&clean) {
        resp.headers_mut().insert(REASON_HEADER, v);
    }
    if let Some(conn) = conn {
        upstream_headers(resp.headers_mut(), conn);
    }
    resp
}

/// A failure to reach the gateway, as the gRPC answer the CLI would have seen connecting
/// itself: refused credentials are UNAUTHENTICATED, everything else UNAVAILABLE.
fn grpc_error(e: &TransportError) -> Response<tonic::body::Body> {
    let code = match e {
        TransportError::Rejected(_) => tonic::Code::Unauthenticated,
        _ => tonic::Code::Unavailable,
    };
    tonic::Status::new(code, format!("agent: {e}")).into_http()
}

/// A response body that keeps the agent's activity guard until the body has been read.
struct Held {
    body: tonic::body::Body,
    _activity: Activity,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
