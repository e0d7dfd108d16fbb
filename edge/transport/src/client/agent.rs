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
/// the agent itself rather than through it). The ownership checks of [`check_owner`] and
/// [`check_peer`] still apply: nothing is sent to a socket of another user.
pub async fn connect_agent_unchecked(
    socket: &Path,
    endpoint: &Endpoint,
) -> Result<Connection, TransportError> {
    let uid = rustix::process::geteuid().as_raw();
    check_owner(socket, uid)?;
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
    check_peer(&stream, socket, uid)?;
    let cfg = ClientConfig::new(endpoint.clone(), None);
    h2::handshake(stream, Peer::Agent, &cfg, http::uri::Scheme::HTTP, None).await
}

/// What to do about an agent socket that is not this user's.
const NOT_YOURS_FIX: &str = "another user may be impersonating your agent: remove it (or \
     its directory), or point XDG_RUNTIME_DIR at a directory only you can write";

/// Refuses a socket that is not this user's before connecting: the agent relays every
/// request (provider credentials among them) and every tunnel, so an impostor listening
/// where the agent would would see them all. The socket must be a socket owned by `uid`,
/// in a directory owned by `uid` that nobody else may write (or someone else could swap
/// the socket). A missing socket is [`TransportError::NoAgent`].
pub(crate) fn check_owner(socket: &Path, uid: u32) -> Result<(), TransportError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TransportError::NoAgent {
                socket: socket.display().to_string(),
                detail: e.to_string(),
            });
        }
        Err(e) => {
            return Err(TransportError::Agent(format!(
                "cannot inspect the agent socket {}: {e}",
                socket.display()
            )));
        }
    };
    let refuse = |what: String| {
        Err(TransportError::UntrustedAgent(format!(
            "not using the agent socket {}: {what}; {NOT_YOURS_FIX}",
            socket.display()
        )))
    };
    if !meta.file_type().is_socket() {
        return refuse("it is not a socket".into());
    }
    if meta.uid() != uid {
        return refuse(format!(
            "it belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        ));
    }
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dmeta = std::fs::symlink_metadata(dir)
        .map_err(|e| TransportError::Agent(format!("cannot inspect {}: {e}", dir.display())))?;
    if !dmeta.is_dir() {
        return refuse(format!("{} is not a directory", dir.display()));
    }
    if dmeta.uid() != uid {
        return refuse(format!(
            "its directory {} belongs to uid {}, not to you (uid {uid})",
            dir.display(),
            dmeta.uid()
        ));
    }
    if dmeta.mode() & 0o022 != 0 {
        return refuse(format!(
            "its directory {} is writable by others (mode {:04o})",
            dir.display(),
            dmeta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Refuses a connected socket whose listening process runs as another uid (SO_PEERCRED),
/// before a byte is written: the file checks cannot see who holds the listening end.
pub(crate) fn check_peer(
    stream: &UnixStream,
    socket: &Path,
    uid: u32,
) -> Result<(), TransportError> {
    let cred = stream.peer_cred().map_err(|e| {
        TransportError::Agent(format!(
            "cannot read the credentials of the agent at {}: {e}",
            socket.display()
        ))
    })?;
    if cred.uid() != uid {
        return Err(TransportError::UntrustedAgent(format!(
            "not using the agent socket {}: the process serving it runs as uid {} (pid {}), not as you (uid {uid}); {NOT_YOURS_FIX}",
            socket.display(),
            cred.uid(),
            cred.pid()
                .map_or_else(|| "unknown".to_string(), |p| p.to_string())
        )));
    }
    Ok(())
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
    async fn sockets_of_other_users_or_in_open_directories_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let me = rustix::process::geteuid().as_raw();
        assert!(matches!(
            check_owner(&socket, me),
            Err(TransportError::NoAgent { .. })
        ));
        let _listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        check_owner(&socket, me).unwrap();
        // As seen by another uid: neither the socket nor the directory is theirs.
        let err = check_owner(&socket, me + 1).unwrap_err().to_string();
        assert!(err.contains(&format!("belongs to uid {me}")), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_owner(&socket, me).unwrap_err().to_string();
        assert!(err.contains("writable by others"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let err = check_owner(&file, me).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");

        let stream = UnixStream::connect(&socket).await.unwrap();
        check_peer(&stream, &socket, me).unwrap();
        let err = check_peer(&stream, &socket, me + 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("runs as uid {me}")), "{err}");
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
