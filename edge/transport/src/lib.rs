//! Both ends of the OpenShell wire.
//!
//! Owns: QUIC endpoints (quinn + rustls, ALPN `h3`), the adapter that carries tonic gRPC over
//! HTTP/3 (one request = one QUIC stream), byte tunnels as HTTP CONNECT streams on the same
//! connection, the TCP fallback (TLS 1.3 + HTTP/2) serving the same services, mTLS
//! identities, 0-RTT gating, the client's QUIC-first / TCP-fallback connector, the
//! ownership checks of the local agent's socket, and the probe of whether an endpoint asks
//! for a client certificate (`probe`).
//!
//! Does not own: what RPCs do (the gateway), where tunnels go (a `TunnelService` the
//! gateway provides), certificate issuance (`openshell-pki`), or configuration files.

pub mod agent;
pub mod client;
pub mod close;
pub mod config;
pub mod congestion;
mod h3io;
pub mod identity;
pub mod probe;
pub mod server;
pub mod tls;
pub mod tunnel;

use std::net::SocketAddr;

pub use client::{
    Channel, ClientConfig, Connection, Connector, Endpoint, Hedge, HedgeCounts, PathHint, ZeroRtt,
    connect_agent, connect_agent_unchecked,
};
pub use config::{Congestion, QuicTuning};
pub use identity::{AuthKind, Principal};
pub use server::{
    ConnMeta, GrpcService, Listeners, RequestContext, Server, ServerConfig, TunnelRefusal,
    TunnelService,
};
pub use tunnel::TunnelTarget;

/// Boxed error used at the tower/tonic boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A bidirectional byte stream: a tunnel as its user or its backend sees it.
pub trait AsyncIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncIo for T {}

/// A boxed tunnel byte stream.
pub type BoxIo = Box<dyn AsyncIo>;

/// Which path a connection took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC on UDP (HTTP/3).
    Quic,
    /// TLS (or plaintext on loopback) on TCP (HTTP/2): the fallback.
    Tcp,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
        }
    }

    /// The inverse of [`TransportKind::as_str`].
    pub fn parse(s: &str) -> Option<TransportKind> {
        match s {
            "quic" => Some(TransportKind::Quic),
            "tcp" => Some(TransportKind::Tcp),
            _ => None,
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong on the wire, worded for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("invalid transport configuration: {0}")]
    Config(String),
    #[error(
        "cannot listen on {addr}: {source} (is another process using the port? choose another with --listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot resolve gateway address {host}: {detail}")]
    Resolve { host: String, detail: String },
    #[error("gateway at {addr} is unreachable: {detail}")]
    Unreachable { addr: String, detail: String },
    /// The gateway refused our credentials (alert or close after the handshake).
    #[error("the gateway rejected the connection: {0}")]
    Rejected(String),
    /// We refused the gateway's certificate.
    #[error("{0}")]
    ServerCertificate(String),
    /// The peer's certificate no longer verifies against the trust in force now.
    #[error("client certificate no longer trusted: {0}")]
    PeerUntrusted(String),
    #[error("{0}")]
    Closed(String),
    #[error("tunnel refused ({status}): {reason}")]
    TunnelRefused { status: u16, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Nothing listens on the agent's socket (no file, or one left by an agent that died).
    #[error("no agent listens on {socket}: {detail}")]
    NoAgent { socket: String, detail: String },
    /// The local agent could not be used (refused, unanswered, or not speaking our protocol).
    #[error("{0}")]
    Agent(String),
    /// The agent's socket, or the process serving it, belongs to another user: nothing was
    /// sent to it.
    #[error("{0}")]
    UntrustedAgent(String),
}

impl TransportError {
    pub(crate) fn bind(addr: SocketAddr, source: std::io::Error) -> Self {
        TransportError::Bind { addr, source }
    }
}
