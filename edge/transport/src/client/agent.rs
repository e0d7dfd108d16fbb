//! Client of the local connection agent: HTTP/2 cleartext over the agent's Unix socket.
//! Requests and tunnels look exactly as they do to a gateway; the agent forwards them on
//! its own connection (see [`crate::agent`]).

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::net::UnixStream;

use super::h2::{self, Peer};
use super::{ChannelInner, ClientConfig, Connection, Endpoint};
use crate::TransportError;
use crate::agent::{CONTROL_PREFIX, FINGERPRINT_HEADER};

/// A control request must not hang a command: past this the agent counts as unusable.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to the agent listening on `socket` for the gateway at `endpoint`, and checks
/// (one round trip on the socket) that it serves the same registration: `fingerprint` is
/// what the caller computed from the gateway's files now. A mismatch is an error, and the
/// agent then shuts itself down.
///
/// [`TransportError::NoAgent`] means nothing listens there (no file, or a stale one).
pub async fn connect_agent(
    socket: &Path,
    endpoint: &Endpoint,
    fingerprint: &str,
) -> Result<Connection, TransportError> {
    let conn = connect_agent_unchecked(socket, endpoint).await?;
    let fp = HeaderValue::from_str(fingerprint)
        .map_err(|_| TransportError::Config("agent fingerprint is not a header value".into()))?;
    let (status, _, body) = conn.agent_request(Method::GET, "hello", Some(fp)).await?;
    if status != StatusCode::OK {
        return Err(TransportError::Agent(format!(
            "the agent at {} refused this command: {}",
            socket.display(),
            String::from_utf8_lossy(&body).trim()
        )));
    }
    Ok(conn)
}

/// Connects without the identity check (for `agent status` and `agent stop`, which talk to
/// the agent itself rather than through it).
pub async fn connect_agent_unchecked(
    socket: &Path,
    endpoint: &Endpoint,
) -> Result<Connection, TransportError> {
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        let detail = e.to_string();
        let socket = socket.display().to_string();
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                TransportError::NoAgent { socket, detail }
            }
            _ => {
                TransportError::Agent(format!("cannot connect to the agent at {socket}: {detail}"))
            }
        }
    })?;
    let cfg = ClientConfig::new(endpoint.clone(), None);
    h2::handshake(stream, Peer::Agent, &cfg, http::uri::Scheme::HTTP, None).await
}

impl Connection {
    /// A request to the agent itself (`GET|POST /openshell-agent/<what>`): status (bytes
    /// of its body) and headers. Only on connections made by [`connect_agent`].
    pub async fn agent_request(
        &self,
        method: Method,
        what: &str,
        fingerprint: Option<HeaderValue>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), TransportError> {
        let (ChannelInner::H2(send), Some(seen)) = (&self.channel.inner, &self.channel.agent)
        else {
            return Err(TransportError::Config(
                "not a connection to the local agent".into(),
            ));
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!(
                "http://{}{CONTROL_PREFIX}{what}",
                self.channel.origin.authority
            ))
            .body(tonic::body::Body::empty())
            .map_err(|e| TransportError::Protocol(e.to_string()))?;
        if let Some(fp) = fingerprint {
            req.headers_mut().insert(FINGERPRINT_HEADER, fp);
        }
        let send = send.clone();
        let exchange = async move {
            let resp = h2::send_request(send, req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, hyper::Error>((parts.status, parts.headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(CONTROL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                TransportError::Agent(format!(
                    "the agent did not answer within {CONTROL_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| {
                self.close_reason().unwrap_or_else(|| {
                    TransportError::Agent(format!("the agent did not answer: {e}"))
                })
            })?;
        seen.observe(&headers);
        Ok((status, headers, body))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::UnixListener;

    use super::*;
    use crate::ZeroRtt;
    use crate::agent::{UPSTREAM_HEADER, ZERO_RTT_HEADER};

    /// A fake agent (for this unit test only): answers every request with an empty 200
    /// whose headers report a QUIC upstream in the given 0-RTT state.
    fn fake_agent(listener: UnixListener, zero_rtt: &'static str) {
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |_req| async move {
                    let resp = http::Response::builder()
                        .header(UPSTREAM_HEADER, "quic")
                        .header(ZERO_RTT_HEADER, zero_rtt)
                        .body(http_body_util::Empty::<Bytes>::new())
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
    }

    #[tokio::test]
    async fn a_pending_0rtt_state_from_the_agent_is_returned_not_waited_for() {
        // The agent answers "pending" when its own handshake has not settled in time (a
        // loaded machine). Nothing updates the state afterwards, so waiting for it to
        // settle hung `openshell status` forever (CI, session 4).
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        fake_agent(UnixListener::bind(&socket).unwrap(), "pending");
        let endpoint = Endpoint::parse("https://127.0.0.1:1").unwrap();
        let conn = connect_agent_unchecked(&socket, &endpoint).await.unwrap();
        let (status, _, _) = conn
            .agent_request(Method::GET, "status", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(conn.via_agent());
        assert_eq!(conn.zero_rtt(), ZeroRtt::Pending);
        let settled = tokio::time::timeout(Duration::from_secs(2), conn.zero_rtt_settled())
            .await
            .expect("zero_rtt_settled() waited on a state only the agent's answers change");
        assert_eq!(settled, ZeroRtt::Pending);
    }
}
