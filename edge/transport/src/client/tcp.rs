//! TCP fallback client: TLS 1.3 + HTTP/2 (h2c for a plaintext loopback gateway); tunnels are
//! HTTP/2 CONNECT requests upgraded to byte streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Channel, ChannelInner, ClientConfig, Connection, Origin, ZeroRtt, bearer_value};
use crate::tunnel::{TARGET_HEADER, TunnelTarget};
use crate::{BoxIo, TransportError, TransportKind};

/// How the TCP connection ended, recorded by its driver task: (rejected by TLS, words).
pub(super) type TcpClose = Option<(bool, String)>;

pub(super) async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    cfg: &ClientConfig,
) -> Result<Connection, TransportError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| TransportError::Unreachable {
            addr: addr.to_string(),
            detail: format!("TCP: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(tls) => {
            let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
                TransportError::Config(format!(
                    "'{server_name}' is not a valid TLS server name: {e}"
                ))
            })?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| match crate::close::describe_tls_in_chain(&e) {
                    Some(text) if text.starts_with("the gateway's certificate") => {
                        TransportError::ServerCertificate(text)
                    }
                    Some(text) => TransportError::Rejected(text),
                    None => TransportError::Unreachable {
                        addr: addr.to_string(),
                        detail: format!("TLS: {e}"),
                    },
                })?;
            handshake(stream, addr, cfg, http::uri::Scheme::HTTPS).await
        }
        None => handshake(tcp, addr, cfg, http::uri::Scheme::HTTP).await,
    }
}

async fn handshake<IO>(
    io: IO,
    addr: SocketAddr,
    cfg: &ClientConfig,
    scheme: http::uri::Scheme,
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
    let (closed_tx, closed_rx) = watch::channel::<TcpClose>(None);
    tokio::spawn(async move {
        let outcome = match conn.await {
            Ok(()) => (false, "the gateway closed the connection".to_string()),
            Err(e) => match crate::close::describe_tls_in_chain(&e) {
                Some(text) => (true, text),
                None => {
                    tracing::debug!(error = ?e, "HTTP/2 connection failed");
                    (false, format!("the connection to the gateway failed: {e}"))
                }
            },
        };
        let _ = closed_tx.send(Some(outcome));
    });
    let (_zero_tx, zero_rx) = watch::channel(ZeroRtt::NotAttempted);
    let authority = http::uri::Authority::try_from(cfg.endpoint.authority())
        .map_err(|e| TransportError::Config(format!("bad authority: {e}")))?;
    Ok(Connection {
        channel: Channel {
            inner: ChannelInner::H2(send),
            origin: Origin { scheme, authority },
            bearer: bearer_value(&cfg.bearer)?,
            hedge: cfg.hedge,
            hedger: None,
        },
        kind: TransportKind::Tcp,
        zero_rtt: zero_rx,
        remote: addr,
        quic: None,
        tcp_closed: Some(closed_rx),
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
    mut send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    origin: &Origin,
    target: &TunnelTarget,
    bearer: &Option<HeaderValue>,
) -> Result<BoxIo, TransportError> {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(origin.authority.as_str())
        .header(TARGET_HEADER, target.to_string())
        .body(tonic::body::Body::empty())
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    if let Some(b) = bearer {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, b.clone());
    }
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| TransportError::Closed(format!("cannot open tunnel: {e}")))?;
    if resp.status() != StatusCode::OK {
        return Err(super::quic::refused(resp.status(), resp.headers()));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| TransportError::Protocol(format!("tunnel upgrade failed: {e}")))?;
    Ok(Box::new(TokioIo::new(upgraded)))
}
