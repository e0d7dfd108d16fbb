//! The gateway side of the wire: one port, QUIC (HTTP/3) on UDP and TLS + HTTP/2 on TCP,
//! serving the same gRPC service and the same tunnels on both.
//!
//! ```text
//!  UDP :17670 ── quinn ── h3 ──┐                    ┌─ gRPC: tonic Routes (GrpcService)
//!                              ├─ per request ──────┤
//!  TCP :17670 ── rustls ─ h2 ──┘  (RequestContext)  └─ CONNECT: TunnelService -> splice
//! ```
//!
//! Every request carries a `RequestContext` extension: the connection (peer, transport,
//! principal) and whether it was served from 0-RTT early data. Requests that change state
//! and every tunnel wait until the handshake is confirmed (see `quic.rs`).

mod quic;
mod registry;
mod tcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

pub use registry::{ConnectionRegistry, ConnectionSummary};

use crate::config::QuicTuning;
use crate::identity::Principal;
use crate::tls::ServerTls;
use crate::{BoxIo, TransportError, TransportKind};

/// The gRPC side: tonic `Routes` behind whatever layers the gateway adds.
pub type GrpcService = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Decides where a CONNECT tunnel goes. The gateway never dials a host:port named by the
/// client: the request names a target (header `openshell-tunnel`) and this service maps it.
pub trait TunnelService: Send + Sync + 'static {
    fn open(
        &self,
        ctx: RequestContext,
        headers: HeaderMap,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelRefusal>>;
}

/// Why a tunnel was not opened; becomes the CONNECT response status.
#[derive(Debug, Clone)]
pub struct TunnelRefusal {
    pub status: StatusCode,
    pub reason: String,
}

impl TunnelRefusal {
    pub fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        TunnelRefusal {
            status,
            reason: reason.into(),
        }
    }
}

/// One accepted connection, as handlers see it.
#[derive(Debug)]
pub struct ConnMeta {
    pub id: u64,
    pub peer: SocketAddr,
    pub transport: TransportKind,
    client: std::sync::OnceLock<PeerCert>,
    quic: Option<quinn::Connection>,
    /// The trust the peer's chain is checked against now (`None`: plaintext).
    tls: Option<Arc<ServerTls>>,
    /// The trust generation under which the chain last verified (0: not yet).
    verified: AtomicU64,
}

/// The client certificate chain a connection presented (or its resumed session restored),
/// and the principal read from it.
#[derive(Debug)]
pub(crate) struct PeerCert {
    principal: Principal,
    chain: Vec<CertificateDer<'static>>,
}

impl PeerCert {
    pub(crate) fn from_chain(chain: &[CertificateDer<'static>]) -> Option<PeerCert> {
        Some(PeerCert {
            principal: Principal::from_certificate(chain.first()?)?,
            chain: chain.to_vec(),
        })
    }
}

impl ConnMeta {
    fn new(
        id: u64,
        peer: SocketAddr,
        transport: TransportKind,
        quic: Option<quinn::Connection>,
        tls: Option<Arc<ServerTls>>,
    ) -> Self {
        ConnMeta {
            id,
            peer,
            transport,
            client: std::sync::OnceLock::new(),
            quic,
            tls,
            verified: AtomicU64::new(0),
        }
    }

    fn client(&self) -> Option<&PeerCert> {
        if let Some(c) = self.client.get() {
            return Some(c);
        }
        let identity = self.quic.as_ref()?.peer_identity()?;
        let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        let c = PeerCert::from_chain(&chain)?;
        Some(self.client.get_or_init(|| c))
    }

    /// The verified client certificate's principal, if the peer presented one. On QUIC it
    /// is read once the identity is known (restored from the session on resumption).
    pub fn principal(&self) -> Option<&Principal> {
        self.client().map(|c| &c.principal)
    }

    /// Whether the peer's certificate still chains to a CA trusted now (and is not revoked
    /// by the current CRLs): a resumed session restores it unverified, and trust may have
    /// changed since the handshake (`pki init --force`, the end of a CA rotation's overlap,
    /// a new `--tls-client-ca`). The result is kept per trust generation, so the chain is
    /// verified once per connection and once after each reload, not on every request.
    /// A connection without a client certificate (or without TLS) passes: whether one is
    /// required is the caller's decision.
    pub fn verify_trust(&self) -> Result<(), TransportError> {
        let (Some(tls), Some(client)) = (&self.tls, self.client()) else {
            return Ok(());
        };
        let generation = tls.generation();
        if self.verified.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        // Failures are not cached: the connection is refused and closed anyway, and each
        // refusal should say why.
        tls.verify_peer(&client.chain)
            .map_err(|e| TransportError::PeerUntrusted(crate::close::describe_peer_error(&e)))?;
        self.verified.store(generation, Ordering::Release);
        Ok(())
    }
}

#[cfg(feature = "fuzzing")]
impl ConnMeta {
    /// A connection as the fuzz targets need it: no socket, the given principal.
    #[doc(hidden)]
    pub fn for_fuzzing(
        peer: SocketAddr,
        transport: TransportKind,
        principal: Option<Principal>,
    ) -> Self {
        // No trust to re-check against (`tls: None`), so the chain is never read.
        let meta = ConnMeta::new(0, peer, transport, None, None);
        if let Some(principal) = principal {
            let _ = meta.client.set(PeerCert {
                principal,
                chain: Vec::new(),
            });
        }
        meta
    }
}

/// Serves one HTTP/2 connection on `io` exactly as the TCP listener serves an accepted
/// (TLS-terminated) socket, with the given principal, gRPC service and tunnel service.
/// Returns when the connection ends. For the `h2_server` fuzz target.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub async fn serve_h2_for_fuzzing<IO>(
    io: IO,
    principal: Option<Principal>,
    grpc: GrpcService,
    tunnels: Arc<dyn TunnelService>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), None);
    let (_drain_tx, draining) = watch::channel(false);
    let shared = Shared {
        grpc,
        tunnels,
        registry: Arc::new(ConnectionRegistry::default()),
        metrics: Arc::new(TransportMetrics::default()),
        draining,
        next_id: Arc::new(AtomicU64::new(1)),
        config: Arc::new(config),
    };
    // No TLS here, so no chain to re-verify: the principal stands as given.
    let client = principal.map(|principal| PeerCert {
        principal,
        chain: Vec::new(),
    });
    tcp::serve_h2(io, SocketAddr::from(([127, 0, 0, 1], 1)), client, shared).await;
}

/// Per-request context, inserted as a request extension.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub conn: Arc<ConnMeta>,
    /// True when the request was served before the handshake was confirmed (0-RTT).
    pub early_data: bool,
}

/// Which listeners to run on the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub quic: bool,
    pub tcp: bool,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            quic: true,
            tcp: true,
        }
    }
}

/// Server settings. TLS is required unless `tls` is `None`, which the gateway allows only
/// on loopback (plaintext HTTP/2 on TCP; QUIC always needs TLS).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub listeners: Listeners,
    pub tls: Option<Arc<ServerTls>>,
    pub tuning: QuicTuning,
    /// How long a graceful shutdown waits for in-flight requests and tunnels before closing
    /// connections. Default 10 s.
    pub shutdown_grace: Duration,
    /// Bound on a TCP TLS handshake. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// TCP connections in their TLS handshake at once, in all. Default 512: a handshake
    /// takes a round trip or two, so this is far above what real clients need at once,
    /// and it bounds the tasks and buffers a flood of silent sockets can pin for up to
    /// `tls_handshake_timeout` each. Connections beyond it are closed at accept.
    pub max_tls_handshakes: usize,
    /// TCP connections in their TLS handshake at once from one IP address. Default 32: one
    /// host (or a NAT in front of many) rarely opens more at once, and one flooding host
    /// then takes at most this share of `max_tls_handshakes`.
    pub max_tls_handshakes_per_ip: usize,
    /// HTTP/2 keep-alive on the TCP path. Default 20 s interval, 10 s timeout.
    pub h2_keepalive: Duration,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, tls: Option<Arc<ServerTls>>) -> Self {
        ServerConfig {
            listen,
            listeners: Listeners::default(),
            tls,
            tuning: QuicTuning::default(),
            shutdown_grace: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_tls_handshakes: 512,
            max_tls_handshakes_per_ip: 32,
            h2_keepalive: Duration::from_secs(20),
        }
    }
}

/// Counters the gateway exports on /metrics.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    pub quic_connections: AtomicU64,
    pub tcp_connections: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub requests: AtomicU64,
    pub early_requests_served: AtomicU64,
    pub early_requests_deferred: AtomicU64,
    pub tunnels_opened: AtomicU64,
    pub tunnels_refused: AtomicU64,
    pub streams_open: AtomicU64,
}

impl TransportMetrics {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Resolves when the flag becomes true (or its sender is gone); holds no borrow across
/// the await, so it can sit in a `select!` of a `Send` task.
pub(crate) async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}

/// Everything a connection task needs.
#[derive(Clone)]
struct Shared {
    grpc: GrpcService,
    tunnels: Arc<dyn TunnelService>,
    registry: Arc<ConnectionRegistry>,
    metrics: Arc<TransportMetrics>,
    draining: watch::Receiver<bool>,
    next_id: Arc<AtomicU64>,
    config: Arc<ServerConfig>,
}

impl Shared {
    fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// A bound gateway port, ready to serve.
pub struct Server {
    quic: Option<quinn::Endpoint>,
    tcp: Option<tokio::net::TcpListener>,
    local_addr: SocketAddr,
    shared: Shared,
    drain_tx: watch::Sender<bool>,
}

impl Server {
    /// Binds the UDP and TCP sockets on one port (with port 0, TCP takes the port UDP got).
    pub async fn bind(
        config: ServerConfig,
        grpc: GrpcService,
        tunnels: Arc<dyn TunnelService>,
    ) -> Result<Server, TransportError> {
        config.tuning.validate()?;
        if !config.listeners.quic && !config.listeners.tcp {
            return Err(TransportError::Config(
                "no listener enabled: enable QUIC, TCP or both".into(),
            ));
        }
        if config.tls.is_none() && !config.listen.ip().is_loopback() {
            return Err(TransportError::Config(format!(
                "refusing plaintext on {}: without TLS the gateway listens on loopback only (use 127.0.0.1 or provide TLS material)",
                config.listen
            )));
        }
        // Port 0: UDP picks a free port and TCP must then get the same number, which another
        // process may hold; pick again a few times before giving up.
        let attempts = if config.listen.port() == 0 { 16 } else { 1 };
        let mut tries = 0;
        let (quic, tcp, addr) = loop {
            tries += 1;
            let mut addr = config.listen;
            let quic = match (&config.tls, config.listeners.quic) {
                (Some(tls), true) => {
                    let ep = quic::bind(&config, tls, addr)?;
                    addr = ep.local_addr().map_err(|e| TransportError::bind(addr, e))?;
                    Some(ep)
                }
                _ => None,
            };
            let tcp = if config.listeners.tcp {
                match tcp::bind(addr).await {
                    Ok(l) => {
                        addr = l.local_addr().map_err(|e| TransportError::bind(addr, e))?;
                        Some(l)
                    }
                    Err(_) if tries < attempts && quic.is_some() => continue,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            break (quic, tcp, addr);
        };
        let (drain_tx, draining) = watch::channel(false);
        let shared = Shared {
            grpc,
            tunnels,
            registry: Arc::new(ConnectionRegistry::default()),
            metrics: Arc::new(TransportMetrics::default()),
            draining,
            next_id: Arc::new(AtomicU64::new(1)),
            config: Arc::new(config),
        };
        Ok(Server {
            quic,
            tcp,
            local_addr: addr,
            shared,
            drain_tx,
        })
    }

    /// The bound address (both protocols use its port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live connections, for metrics and for closing revoked peers.
    pub fn registry(&self) -> Arc<ConnectionRegistry> {
        self.shared.registry.clone()
    }

    pub fn metrics(&self) -> Arc<TransportMetrics> {
        self.shared.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then drains: stops accepting, tells clients to go
    /// away (HTTP/3 and HTTP/2 GOAWAY), waits up to the grace period for in-flight work,
    /// then closes what is left with the reason "gateway shutting down".
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), TransportError> {
        let Server {
            quic,
            tcp,
            shared,
            drain_tx,
            ..
        } = self;
        let quic_task = quic
            .clone()
            .map(|ep| tokio::spawn(quic::accept_loop(ep, shared.clone())));
        let tcp_task = tcp.map(|l| tokio::spawn(tcp::accept_loop(l, shared.clone())));

        shutdown.await;
        tracing::info!("shutting down: draining connections");
        let _ = drain_tx.send(true);
        if let Some(ep) = &quic {
            ep.set_server_config(None);
        }
        if let Some(t) = tcp_task {
            t.abort();
        }
        let grace = shared.config.shutdown_grace;
        let drained = tokio::time::timeout(grace, shared.registry.wait_empty()).await;
        if drained.is_err() {
            tracing::warn!(
                open = shared.registry.len(),
                "grace period over: closing remaining connections"
            );
        }
        shared.registry.close_all(crate::close::SHUTTING_DOWN);
        if let Some(ep) = quic {
            ep.close(
                crate::close::h3_no_error(),
                crate::close::SHUTTING_DOWN.as_bytes(),
            );
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        if let Some(t) = quic_task {
            t.abort();
        }
        Ok(())
    }
}
