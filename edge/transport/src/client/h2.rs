//! HTTP/2 client over any byte stream: the TCP fallback (TLS or h2c) and the local agent's
//! Unix socket (h2c) both hand their stream here. Tunnels are HTTP/2 CONNECT requests
//! upgraded to byte streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::{AgentSeen, Channel, ChannelInner, ClientConfig, Connection, Origin, ZeroRtt};
use crate::tunnel::{TARGET_HEADER, TunnelTarget};
use crate::{BoxIo, TransportError, TransportKind};

/// How the HTTP/2 connection ended, recorded by its driver task: (rejected by TLS, words).
pub(super) type H2Close = Option<(bool, String)>;

/// Who is at the other end of the stream, for the words of a close reason.
#[derive(Debug, Clone, Copy)]
pub(super) enum Peer {
    /// A gateway over TCP; `remote` is its address.
    Gateway(SocketAddr),
    /// The local agent over its Unix socket.
    Agent,
}

/// Runs the HTTP/2 handshake on `io` and builds the connection around it.
pub(super) async fn handshake<IO>(
    io: IO,
    peer: Peer,
    cfg: &ClientConfig,
    scheme: http::uri::Scheme,
    bearer: Option<HeaderValue>,
) -> Result<Connection, TransportError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(cfg.tuning.stream_receive_window)
        .initial_connection_window_size(cfg.tuning.receive_window)
        .handshake::<_, tonic::body::Body>(TokioIo::new(io))
        .await
        .map_err(|e| match crate::close::describe_tls_in_chain(&e) {
            Some(text) => TransportError::Rejected(text),
            None => TransportError::Protocol(format!("HTTP/2 setup failed: {e}")),
        })?;
    let who = match peer {
        Peer::Gateway(_) => "the gateway",
        Peer::Agent => "the agent",
    };
    let (closed_tx, closed_rx) = watch::channel::<H2Close>(None);
    tokio::spawn(async move {
        let outcome = match conn.await {
            Ok(()) => (false, format!("{who} closed the connection")),
            Err(e) => match crate::close::describe_tls_in_chain(&e) {
                Some(text) => (true, text),
                None => {
                    tracing::debug!(error = ?e, "HTTP/2 connection failed");
                    (false, format!("the connection to {who} failed: {e}"))
                }
            },
        };
        let _ = closed_tx.send(Some(outcome));
    });
    let (zero_tx, zero_rx) = watch::channel(ZeroRtt::NotAttempted);
    let authority = http::uri::Authority::try_from(cfg.endpoint.authority())
        .map_err(|e| TransportError::Config(format!("bad authority: {e}")))?;
    let (remote, agent) = match peer {
        Peer::Gateway(addr) => (Some(addr), None),
        Peer::Agent => (None, Some(Arc::new(AgentSeen::new(zero_tx)))),
    };
    Ok(Connection {
        channel: Channel {
            inner: ChannelInner::H2(send),
            origin: Origin { scheme, authority },
            bearer,
            hedge: cfg.hedge,
            hedger: None,
            agent,
        },
        kind: TransportKind::Tcp,
        zero_rtt: zero_rx,
        remote,
        quic: None,
        h2_closed: Some(closed_rx),
    })
}

pub(super) fn classify_text((rejected, text): (bool, String)) -> TransportError {
    if rejected {
        TransportError::Rejected(text)
    } else {
        TransportError::Closed(text)
    }
}

pub(super) async fn open_tunnel(
    channel: &Channel,
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    target: &TunnelTarget,
) -> Result<BoxIo, TransportError> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(channel.origin.authority.as_str())
        .header(TARGET_HEADER, target.to_string())
        .body(tonic::body::Body::empty())
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    if let Some(b) = &channel.bearer {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, b.clone());
    }
    let resp = send_request(send, req)
        .await
        .map_err(|e| TransportError::Closed(format!("cannot open tunnel: {e}")))?;
    if let Some(agent) = &channel.agent {
        agent.observe(resp.headers());
    }
    if resp.status() != StatusCode::OK {
        return Err(super::quic::refused(resp.status(), resp.headers()));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| TransportError::Protocol(format!("tunnel upgrade failed: {e}")))?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// Sends one request once the connection can take another stream.
pub(super) async fn send_request(
    mut send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    req: Request<tonic::body::Body>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    send.ready().await?;
    send.send_request(req).await
}
