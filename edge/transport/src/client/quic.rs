//! QUIC client: an endpoint per connection (so a connection can migrate on its own), HTTP/3
//! on top, requests as h3 streams, tunnels as CONNECT streams.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

use super::hedge::{self, Hedger};
use super::{Channel, ChannelInner, ClientConfig, Connection, Origin, ZeroRtt, bearer_value};
use crate::config::QuicTuning;
use crate::h3io::{self, ClientSend, H3Body};
use crate::tls::{ALPN_H3, ClientMaterial};
use crate::tunnel::{REASON_HEADER, TARGET_HEADER, TunnelTarget};
use crate::{BoxError, BoxIo, TransportError, TransportKind};

/// Buffer between a tunnel's user and its QUIC stream pump.
const TUNNEL_BUFFER: usize = 256 * 1024;

pub(super) struct QuicClient {
    config: quinn::ClientConfig,
    tuning: QuicTuning,
}

impl QuicClient {
    pub(super) fn new(
        material: &ClientMaterial,
        tuning: &QuicTuning,
    ) -> Result<Self, TransportError> {
        let rustls_cfg = material.client_config(ALPN_H3, true)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(rustls_cfg))
            .map_err(|e| TransportError::Config(format!("QUIC TLS configuration: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(tuning.transport_config()?);
        Ok(QuicClient {
            config,
            tuning: tuning.clone(),
        })
    }

    pub(super) async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        cfg: &ClientConfig,
    ) -> Result<Connection, TransportError> {
        let local: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = self
            .tuning
            .bind_udp(local)
            .map_err(|e| TransportError::Config(format!("cannot open a UDP socket: {e}")))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Config("no async runtime for QUIC".into()))?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(|e| TransportError::Config(format!("cannot open a QUIC endpoint: {e}")))?;
        let connecting = endpoint
            .connect_with(self.config.clone(), addr, server_name)
            .map_err(|e| TransportError::Config(format!("cannot connect to {addr}: {e}")))?;

        let (zero_tx, zero_rx) = watch::channel(ZeroRtt::NotAttempted);
        let conn = match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let _ = zero_tx.send(ZeroRtt::Pending);
                tokio::spawn(async move {
                    let ok = accepted.await;
                    let _ = zero_tx.send(if ok {
                        ZeroRtt::Accepted
                    } else {
                        ZeroRtt::Rejected
                    });
                });
                conn
            }
            Err(connecting) => connecting.await.map_err(|e| classify(&e))?,
        };

        let (mut driver, send) = h3::client::builder()
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| {
                conn.close_reason()
                    .map(|r| classify(&r))
                    .unwrap_or_else(|| {
                        TransportError::Protocol(format!("HTTP/3 setup failed: {e}"))
                    })
            })?;
        tokio::spawn(async move {
            // h3's connection driver must be polled or nothing moves.
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        let authority = http::uri::Authority::try_from(cfg.endpoint.authority())
            .map_err(|e| TransportError::Config(format!("bad authority: {e}")))?;
        Ok(Connection {
            channel: Channel {
                inner: ChannelInner::H3(send),
                origin: Origin {
                    scheme: http::uri::Scheme::HTTPS,
                    authority,
                },
                bearer: bearer_value(&cfg.bearer)?,
                hedge: cfg.hedge,
                hedger: Some(Arc::new(Hedger::new(conn.clone()))),
                agent: None,
            },
            kind: TransportKind::Quic,
            zero_rtt: zero_rx,
            remote: Some(addr),
            quic: Some((conn, endpoint)),
            h2_closed: None,
        })
    }
}

/// Maps a QUIC connection error to the error users see.
pub(super) fn classify(err: &quinn::ConnectionError) -> TransportError {
    let text = crate::close::describe_quic(err);
    match err {
        quinn::ConnectionError::ConnectionClosed(c)
            if (0x100..0x200).contains(&u64::from(c.error_code)) =>
        {
            TransportError::Rejected(text)
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.reason.as_ref() == crate::close::CERTIFICATE_REVOKED.as_bytes()
                || c.reason.as_ref() == crate::close::CERTIFICATE_EXPIRED.as_bytes()
                || c.reason.as_ref() == crate::close::CERTIFICATE_UNTRUSTED.as_bytes() =>
        {
            TransportError::Rejected(text)
        }
        quinn::ConnectionError::TransportError(t)
            if (0x100..0x200).contains(&u64::from(t.code)) =>
        {
            TransportError::ServerCertificate(text)
        }
        quinn::ConnectionError::TimedOut => TransportError::Closed(text),
        _ => TransportError::Closed(text),
    }
}

pub(super) async fn call(
    mut send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    req: Request<tonic::body::Body>,
) -> Result<Response<tonic::body::Body>, BoxError> {
    let (parts, body) = req.into_parts();
    let stream = send.send_request(Request::from_parts(parts, ())).await?;
    let (mut tx, mut rx): (ClientSend, _) = stream.split();
    tokio::spawn(async move {
        if let Err(e) = h3io::send_body(&mut tx, body).await {
            tracing::debug!(error = %e, "request body not delivered");
        }
    });
    let head = rx.recv_response().await?;
    let (parts, ()) = head.into_parts();
    Ok(Response::from_parts(
        parts,
        tonic::body::Body::new(H3Body::new(rx)),
    ))
}

/// A hedgeable read sent twice, `spacing` apart, on two streams (see `hedge`).
pub(super) async fn call_hedged(
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    req: Request<tonic::body::Body>,
    spacing: std::time::Duration,
) -> Result<Response<tonic::body::Body>, BoxError> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, hedge::MAX_REQUEST)
        .collect()
        .await?;
    let trailers = body.trailers().cloned();
    let data = body.to_bytes();
    let attempt = |mut send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>| {
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = parts.uri.clone();
        *head.version_mut() = parts.version;
        *head.headers_mut() = parts.headers.clone();
        let (data, trailers) = (data.clone(), trailers.clone());
        async move {
            let stream = send.send_request(head).await?;
            let (mut tx, rx): (ClientSend, _) = stream.split();
            tokio::spawn(async move {
                let sent = async {
                    if !data.is_empty() {
                        tx.send_data(data).await?;
                    }
                    if let Some(t) = trailers {
                        tx.send_trailers(t).await?;
                    }
                    tx.finish().await
                };
                if let Err(e) = sent.await {
                    tracing::debug!(error = %e, "hedged request body not delivered");
                }
            });
            let mut rx = rx;
            let head = rx.recv_response().await?;
            let (parts, ()) = head.into_parts();
            let body =
                hedge::Replay::read_ahead(H3Body::new(rx), hedge::MAX_BUFFERED_ANSWER).await?;
            Ok(Response::from_parts(parts, tonic::body::Body::new(body)))
        }
    };
    hedge::race(attempt(send.clone()), attempt(send), spacing).await
}

pub(super) async fn open_tunnel(
    mut send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    origin: &Origin,
    target: &TunnelTarget,
) -> Result<BoxIo, TransportError> {
    let uri = http::Uri::builder()
        .scheme(origin.scheme.clone())
        .authority(origin.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(uri)
        .header(TARGET_HEADER, target.to_string())
        .body(())
        .map_err(|e| TransportError::Protocol(e.to_string()))?;
    let stream = send
        .send_request(req)
        .await
        .map_err(|e| TransportError::Closed(format!("cannot open tunnel: {e}")))?;
    let (tx, mut rx): (ClientSend, _) = stream.split();
    let resp = rx
        .recv_response()
        .await
        .map_err(|e| TransportError::Closed(format!("tunnel not answered: {e}")))?;
    if resp.status() != StatusCode::OK {
        return Err(refused(resp.status(), resp.headers()));
    }
    let (user, pump_side) = tokio::io::duplex(TUNNEL_BUFFER);
    tokio::spawn(h3io::pump(tx, rx, pump_side));
    Ok(Box::new(user))
}

pub(super) fn refused(status: StatusCode, headers: &http::HeaderMap) -> TransportError {
    TransportError::TunnelRefused {
        status: status.as_u16(),
        reason: headers
            .get(REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused"))
            .to_string(),
    }
}
