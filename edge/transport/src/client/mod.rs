//! The client side: connect to a gateway over QUIC, fall back to TCP when UDP gets no
//! answer, and expose one `Channel` for tonic clients plus CONNECT tunnels.
//!
//! ```text
//! connect()
//!   http://  ──────────────────────────────> h2c (plaintext loopback gateway)
//!   https:// ── hint TcpOnly/PreferTcp ─────> TLS + HTTP/2 (then QUIC if TCP fails)
//!            ── hint Auto ── QUIC ──ok────> HTTP/3
//!                             │ no answer within `fallback_after`
//!                             └── race QUIC and TCP, first success wins
//! ```
//!
//! A rejected client certificate is *not* a reason to fall back (TCP would be refused the
//! same way), and is reported with the gateway's reason.

mod agent;
mod h2;
mod hedge;
mod quic;
mod tcp;

pub use agent::{connect_agent, connect_agent_unchecked};
pub use hedge::{Hedge, HedgeCounts};

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response};
use tokio::sync::watch;

use crate::config::QuicTuning;
use crate::tls::ClientMaterial;
use crate::tunnel::TunnelTarget;
use crate::{BoxError, BoxIo, TransportError, TransportKind};

/// Default port of a gateway.
pub const DEFAULT_PORT: u16 = 17670;

/// `https://host:port` or `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses a gateway URL. No scheme means https; no port means 17670; a path other than
    /// `/` is refused.
    pub fn parse(url: &str) -> Result<Endpoint, TransportError> {
        let url = url.trim();
        if url.ends_with("://") {
            return Err(TransportError::Config(format!(
                "'{url}' has no host: expected https://HOST[:PORT]"
            )));
        }
        let url = url.trim_end_matches('/');
        let with_scheme = if url.contains("://") {
            url.to_string()
        } else {
            format!("https://{url}")
        };
        let uri: http::Uri = with_scheme.parse().map_err(|e| {
            TransportError::Config(format!(
                "'{url}' is not a gateway URL ({e}): expected https://HOST[:PORT]"
            ))
        })?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => {
                return Err(TransportError::Config(format!(
                    "'{url}': unsupported scheme '{other}', use https:// (or http:// for a plaintext loopback gateway)"
                )));
            }
            None => true,
        };
        let authority = uri.authority().ok_or_else(|| {
            TransportError::Config(format!("'{url}' has no host: expected https://HOST[:PORT]"))
        })?;
        if !matches!(uri.path(), "" | "/") {
            return Err(TransportError::Config(format!(
                "'{url}' has a path; a gateway URL is just https://HOST[:PORT]"
            )));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(TransportError::Config(format!("'{url}' has no host")));
        }
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(DEFAULT_PORT),
        })
    }

    /// `host:port`, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority()
        )
    }

    async fn resolve(&self) -> Result<SocketAddr, TransportError> {
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| TransportError::Resolve {
                host: self.host.clone(),
                detail: e.to_string(),
            })?;
        addrs.next().ok_or_else(|| TransportError::Resolve {
            host: self.host.clone(),
            detail: "no addresses".into(),
        })
    }
}

/// What the caller remembers about this gateway's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathHint {
    /// QUIC first, TCP when UDP gets no answer in time.
    #[default]
    Auto,
    /// TCP worked last time and QUIC did not: go straight to TCP (QUIC if TCP fails).
    PreferTcp,
    QuicOnly,
    TcpOnly,
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    /// Required for https endpoints.
    pub tls: Option<ClientMaterial>,
    /// Sent as `authorization: Bearer` on every request (edge mode, TCP path).
    pub bearer: Option<String>,
    pub tuning: QuicTuning,
    /// How long QUIC may go unanswered before TCP is tried in parallel. Default 1.5 s: above
    /// one handshake at 300 ms RTT with a lost packet's first retransmit, below human patience.
    pub fallback_after: Duration,
    /// Bound on the whole connection attempt. Default 10 s.
    pub connect_timeout: Duration,
    pub hint: PathHint,
    /// TLS server name; defaults to the endpoint host.
    pub server_name: Option<String>,
    /// When idempotent reads are sent twice on QUIC (see `hedge`). Default `auto`.
    pub hedge: Hedge,
}

impl ClientConfig {
    pub fn new(endpoint: Endpoint, tls: Option<ClientMaterial>) -> Self {
        ClientConfig {
            endpoint,
            tls,
            bearer: None,
            tuning: QuicTuning::default(),
            fallback_after: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(10),
            hint: PathHint::Auto,
            server_name: None,
            hedge: Hedge::default(),
        }
    }
}

/// Whether the first requests went out in 0-RTT early data, and whether the gateway took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroRtt {
    /// Full handshake (no ticket, or TCP).
    NotAttempted,
    /// Sent in early data; the handshake has not finished yet.
    Pending,
    Accepted,
    /// The gateway refused early data; quinn resent the requests after the handshake.
    Rejected,
}

impl ZeroRtt {
    pub fn as_str(self) -> &'static str {
        match self {
            ZeroRtt::NotAttempted => "none",
            ZeroRtt::Pending => "pending",
            ZeroRtt::Accepted => "accepted",
            ZeroRtt::Rejected => "rejected",
        }
    }

    /// The inverse of [`ZeroRtt::as_str`].
    pub fn parse(s: &str) -> Option<ZeroRtt> {
        [
            ZeroRtt::NotAttempted,
            ZeroRtt::Pending,
            ZeroRtt::Accepted,
            ZeroRtt::Rejected,
        ]
        .into_iter()
        .find(|z| z.as_str() == s)
    }
}

/// Connects to one gateway, reusing TLS configuration (and so session tickets) across
/// connections made by this process.
pub struct Connector {
    config: ClientConfig,
    quic: Option<quic::QuicClient>,
    tcp_tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("endpoint", &self.config.endpoint)
            .finish()
    }
}

impl Connector {
    pub fn new(config: ClientConfig) -> Result<Connector, TransportError> {
        config.tuning.validate()?;
        let (quic, tcp_tls) = if config.endpoint.tls {
            let material = config.tls.as_ref().ok_or_else(|| {
                TransportError::Config(format!(
                    "{} uses TLS but no gateway CA was given",
                    config.endpoint.url()
                ))
            })?;
            (
                Some(quic::QuicClient::new(material, &config.tuning)?),
                Some(Arc::new(
                    material.client_config(crate::tls::ALPN_H2, false)?,
                )),
            )
        } else {
            (None, None)
        };
        Ok(Connector {
            config,
            quic,
            tcp_tls,
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn server_name(&self) -> String {
        self.config
            .server_name
            .clone()
            .unwrap_or_else(|| self.config.endpoint.host.clone())
    }

    /// Connects by the path rules in the module docs.
    pub async fn connect(&self) -> Result<Connection, TransportError> {
        let total = self.config.connect_timeout;
        let fut = self.connect_inner();
        tokio::time::timeout(total, fut).await.unwrap_or_else(|_| {
            Err(TransportError::Unreachable {
                addr: self.config.endpoint.authority(),
                detail: format!("no answer within {total:?} on UDP or TCP"),
            })
        })
    }

    async fn connect_inner(&self) -> Result<Connection, TransportError> {
        let addr = self.config.endpoint.resolve().await?;
        if !self.config.endpoint.tls {
            return self.connect_tcp_at(addr).await;
        }
        match self.config.hint {
            PathHint::TcpOnly => self.connect_tcp_at(addr).await,
            PathHint::QuicOnly => self.connect_quic_at(addr).await,
            PathHint::PreferTcp => match self.connect_tcp_at(addr).await {
                Ok(c) => Ok(c),
                Err(e) if is_definitive(&e) => Err(e),
                Err(_) => self.connect_quic_at(addr).await,
            },
            PathHint::Auto => self.race(addr).await,
        }
    }

    async fn race(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let quic = self.connect_quic_at(addr);
        let mut quic = std::pin::pin!(quic);
        let quic_err = tokio::select! {
            r = &mut quic => match r {
                Ok(c) => return Ok(c),
                Err(e) if is_definitive(&e) => return Err(e),
                Err(e) => Some(e),
            },
            _ = tokio::time::sleep(self.config.fallback_after) => None,
        };
        tracing::debug!(?quic_err, "QUIC slow or failed, trying TCP");
        let tcp = self.connect_tcp_at(addr);
        let mut tcp = std::pin::pin!(tcp);
        match quic_err {
            Some(qe) => tcp.await.map_err(|te| combine(qe, te)),
            None => {
                let mut tcp_err = None;
                let mut quic_err = None;
                // Once TCP has failed outright (e.g. refused), QUIC gets one more second: a
                // gateway that is down should not cost the whole connect timeout.
                let last_chance = tokio::time::sleep(Duration::from_secs(3600));
                let mut last_chance = std::pin::pin!(last_chance);
                loop {
                    tokio::select! {
                        r = &mut quic, if quic_err.is_none() => match r {
                            Ok(c) => return Ok(c),
                            Err(e) => quic_err = Some(e),
                        },
                        r = &mut tcp, if tcp_err.is_none() => match r {
                            Ok(c) => return Ok(c),
                            Err(e) if is_definitive(&e) => return Err(e),
                            Err(e) => {
                                tcp_err = Some(e);
                                last_chance
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + Duration::from_secs(1));
                            }
                        },
                        _ = &mut last_chance, if quic_err.is_none() && tcp_err.is_some() => {
                            quic_err = Some(TransportError::Unreachable {
                                addr: addr.to_string(),
                                detail: "no answer over QUIC (UDP)".into(),
                            });
                        }
                    }
                    if let (Some(_), Some(_)) = (&quic_err, &tcp_err) {
                        return Err(combine(
                            quic_err.take().expect("checked"),
                            tcp_err.take().expect("checked"),
                        ));
                    }
                }
            }
        }
    }

    /// QUIC only (0-RTT when this connector holds a ticket for the gateway).
    pub async fn connect_quic(&self) -> Result<Connection, TransportError> {
        let addr = self.config.endpoint.resolve().await?;
        self.connect_quic_at(addr).await
    }

    /// TCP only.
    pub async fn connect_tcp(&self) -> Result<Connection, TransportError> {
        let addr = self.config.endpoint.resolve().await?;
        self.connect_tcp_at(addr).await
    }

    async fn connect_quic_at(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let client = self.quic.as_ref().ok_or_else(|| {
            TransportError::Config("QUIC needs TLS: the endpoint is http://".into())
        })?;
        client
            .connect(addr, &self.server_name(), &self.config)
            .await
    }

    async fn connect_tcp_at(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        tcp::connect(
            addr,
            &self.server_name(),
            self.tcp_tls.clone(),
            &self.config,
        )
        .await
    }
}

/// Failures that another path would only repeat: credential or certificate problems.
fn is_definitive(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Rejected(_)
            | TransportError::ServerCertificate(_)
            | TransportError::Config(_)
    )
}

fn combine(quic: TransportError, tcp: TransportError) -> TransportError {
    if is_definitive(&tcp) {
        return tcp;
    }
    let quic = match quic {
        TransportError::Unreachable { detail, .. } => detail,
        other => format!("QUIC: {other}"),
    };
    match tcp {
        TransportError::Unreachable { addr, detail } => TransportError::Unreachable {
            addr,
            detail: format!("{quic}; {detail}"),
        },
        other => other,
    }
}

/// An established connection to a gateway, direct or through the local agent.
pub struct Connection {
    channel: Channel,
    kind: TransportKind,
    zero_rtt: watch::Receiver<ZeroRtt>,
    /// The gateway's address; `None` through the agent.
    remote: Option<SocketAddr>,
    quic: Option<(quinn::Connection, quinn::Endpoint)>,
    h2_closed: Option<watch::Receiver<h2::H2Close>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("transport", &self.transport())
            .field("via_agent", &self.via_agent())
            .field("remote", &self.remote)
            .finish()
    }
}

impl Connection {
    /// A cloneable channel for tonic clients (`OpenShellClient::new(conn.channel())`).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The path to the gateway. Through the agent: the path of the agent's own connection
    /// as its latest answer named it (QUIC until an answer says otherwise).
    pub fn transport(&self) -> TransportKind {
        match &self.channel.agent {
            Some(seen) => seen.kind().unwrap_or(TransportKind::Quic),
            None => self.kind,
        }
    }

    /// True when this connection goes through the local agent's Unix socket.
    pub fn via_agent(&self) -> bool {
        self.channel.agent.is_some()
    }

    /// The gateway's address (`None` through the agent, which holds the real connection).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// Early-data state right now. Through the agent: that of the agent's connection as its
    /// latest answer reported it.
    pub fn zero_rtt(&self) -> ZeroRtt {
        *self.zero_rtt.borrow()
    }

    /// Early-data state once the handshake has finished.
    pub async fn zero_rtt_settled(&self) -> ZeroRtt {
        // Through the agent the value is what its last answer said and nothing else will
        // change it: waiting for a "pending" to settle would wait forever.
        if self.via_agent() {
            return *self.zero_rtt.borrow();
        }
        let mut rx = self.zero_rtt.clone();
        let _ = rx.wait_for(|z| *z != ZeroRtt::Pending).await;
        *rx.borrow()
    }

    /// Opens a byte tunnel to `target` (a CONNECT stream on this connection).
    pub async fn open_tunnel(&self, target: &TunnelTarget) -> Result<BoxIo, TransportError> {
        let result = match &self.channel.inner {
            ChannelInner::H3(send) => {
                quic::open_tunnel(send.clone(), &self.channel.origin, target).await
            }
            ChannelInner::H2(send) => h2::open_tunnel(&self.channel, send.clone(), target).await,
        };
        result.map_err(|e| self.explain_error(e))
    }

    /// Why the connection closed, if it did: the gateway's reason in words.
    pub fn close_reason(&self) -> Option<TransportError> {
        if let Some((conn, _)) = &self.quic {
            let reason = conn.close_reason()?;
            return Some(quic::classify(&reason));
        }
        let rx = self.h2_closed.as_ref()?;
        let reason = rx.borrow().clone()?;
        Some(h2::classify_text(reason))
    }

    /// Replaces a failed RPC's status with the connection's close reason when that is what
    /// really happened (e.g. the gateway rejected our certificate after the handshake).
    pub fn explain(&self, status: &tonic::Status) -> Option<TransportError> {
        if let Some(reason) = self.close_reason() {
            return Some(reason);
        }
        let src: &(dyn std::error::Error + 'static) = status;
        crate::close::describe_tls_in_chain(src).map(TransportError::Rejected)
    }

    fn explain_error(&self, e: TransportError) -> TransportError {
        match e {
            TransportError::TunnelRefused { .. } => e,
            other => self.close_reason().unwrap_or(other),
        }
    }

    /// Moves the QUIC connection to a new local UDP socket (connection migration), as when a
    /// laptop changes networks.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), TransportError> {
        match &self.quic {
            Some((_, endpoint)) => endpoint
                .rebind(socket)
                .map_err(|e| TransportError::Protocol(format!("cannot rebind: {e}"))),
            None => Err(TransportError::Protocol(
                "only QUIC connections can migrate".into(),
            )),
        }
    }

    /// How this connection's reads were hedged so far (QUIC only).
    pub fn hedge_counts(&self) -> Option<HedgeCounts> {
        self.channel.hedger.as_ref().map(|h| h.counts())
    }

    /// QUIC path statistics (RTT, loss), when on QUIC.
    pub fn quic_stats(&self) -> Option<quinn::ConnectionStats> {
        self.quic.as_ref().map(|(c, _)| c.stats())
    }

    /// Closes the connection and lets the endpoint send the CONNECTION_CLOSE (so the gateway
    /// frees the connection now rather than at its idle timeout). It does not wait out
    /// QUIC's draining period (3 PTOs, hundreds of ms on a slow link): a CLI command's wall
    /// time should not include it.
    pub async fn close(&self) {
        if let Some((conn, _endpoint)) = &self.quic {
            conn.close(crate::close::h3_no_error(), b"client done");
            // The endpoint's driver task sends the close frame once it runs.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Origin used to build absolute request URIs.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) scheme: http::uri::Scheme,
    pub(crate) authority: http::uri::Authority,
}

impl Origin {
    fn absolutize<B>(&self, req: &mut Request<B>) -> Result<(), BoxError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()?;
        Ok(())
    }
}

#[derive(Clone)]
enum ChannelInner {
    H3(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>),
    H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>),
}

/// A tower service carrying gRPC requests over whichever transport the connection uses.
#[derive(Clone)]
pub struct Channel {
    inner: ChannelInner,
    origin: Origin,
    bearer: Option<HeaderValue>,
    hedge: Hedge,
    /// QUIC only: what `auto` hedging looks at.
    hedger: Option<Arc<hedge::Hedger>>,
    /// Set on connections through the agent: what its answers say about its upstream.
    agent: Option<Arc<AgentSeen>>,
}

impl Channel {
    /// The same channel with another hedging policy (e.g. `off` to measure without it).
    pub fn hedging(mut self, policy: Hedge) -> Channel {
        self.hedge = policy;
        self
    }
}

/// What the agent's answers said about its own connection to the gateway (response headers
/// [`crate::agent::UPSTREAM_HEADER`] and [`crate::agent::ZERO_RTT_HEADER`]).
pub(crate) struct AgentSeen {
    kind: std::sync::Mutex<Option<TransportKind>>,
    zero_rtt: watch::Sender<ZeroRtt>,
}

impl AgentSeen {
    fn new(zero_rtt: watch::Sender<ZeroRtt>) -> Self {
        AgentSeen {
            kind: std::sync::Mutex::new(None),
            zero_rtt,
        }
    }

    fn kind(&self) -> Option<TransportKind> {
        *self.kind.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observe(&self, headers: &http::HeaderMap) {
        fn text<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
            headers.get(name).and_then(|v| v.to_str().ok())
        }
        if let Some(kind) =
            text(headers, crate::agent::UPSTREAM_HEADER).and_then(TransportKind::parse)
        {
            *self.kind.lock().unwrap_or_else(|p| p.into_inner()) = Some(kind);
        }
        if let Some(z) = text(headers, crate::agent::ZERO_RTT_HEADER).and_then(ZeroRtt::parse) {
            self.zero_rtt.send_replace(z);
        }
    }
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("authority", &self.origin.authority)
            .finish()
    }
}

impl tower_service::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.inner {
            ChannelInner::H3(_) => Poll::Ready(Ok(())),
            ChannelInner::H2(send) => send.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        if let Err(e) = self.origin.absolutize(&mut req) {
            return Box::pin(async move { Err(e) });
        }
        if let Some(b) = &self.bearer {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, b.clone());
        }
        match &self.inner {
            ChannelInner::H3(send) => {
                let spacing = self
                    .hedger
                    .as_ref()
                    .and_then(|h| h.spacing_for(self.hedge, req.uri().path()));
                match spacing {
                    Some(spacing) => {
                        let fut = quic::call_hedged(send.clone(), req, spacing);
                        Box::pin(async move { Ok(grpc_from_http_error(fut.await?)) })
                    }
                    None => {
                        let fut = quic::call(send.clone(), req);
                        Box::pin(async move { Ok(grpc_from_http_error(fut.await?)) })
                    }
                }
            }
            ChannelInner::H2(send) => {
                let fut = send.clone().send_request(req);
                let agent = self.agent.clone();
                Box::pin(async move {
                    let resp = fut.await?;
                    if let Some(seen) = agent {
                        seen.observe(resp.headers());
                    }
                    Ok(grpc_from_http_error(resp.map(tonic::body::Body::new)))
                })
            }
        }
    }
}

/// A proxy in front of the gateway (edge mode) answers plain HTTP errors (401 with an HTML
/// page, 502, ...). Turn those into trailers-only gRPC responses carrying the matching code,
/// so callers see UNAUTHENTICATED instead of a body-decoding error.
fn grpc_from_http_error(resp: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
    let is_grpc = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let status = resp.status();
    if is_grpc || status == http::StatusCode::OK {
        return resp;
    }
    let code = match status.as_u16() {
        400 => tonic::Code::Internal,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::Unimplemented,
        429 | 502 | 503 | 504 => tonic::Code::Unavailable,
        _ => tonic::Code::Unknown,
    };
    let message = format!(
        "HTTP {} from the gateway's endpoint (a proxy in front of it?)",
        status.as_u16()
    );
    let mut out = Response::new(tonic::body::Body::empty());
    let headers = out.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
    out
}

fn bearer_value(token: &Option<String>) -> Result<Option<HeaderValue>, TransportError> {
    token
        .as_ref()
        .map(|t| {
            HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                TransportError::Config(
                    "the stored token contains invalid characters: run `openshell gateway login`"
                        .into(),
                )
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_defaults() {
        let e = Endpoint::parse("gw.example.com").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, DEFAULT_PORT);
        let e = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert!(!e.tls);
        assert_eq!(e.authority(), "127.0.0.1:8080");
        let e = Endpoint::parse("https://[::1]:9000").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.authority(), "[::1]:9000");
    }

    #[test]
    fn bad_endpoints_name_the_input() {
        for bad in ["ftp://x", "https://x/path", "https://", "http://:80"] {
            let err = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains('\''), "{bad}: {err}");
        }
    }
}
