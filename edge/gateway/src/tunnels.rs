//! Where CONNECT tunnels go. The client names a target; this decides, never the client:
//! `echo`, `source` and `sink` (built in, for diagnostics and benchmarks: they measure a
//! path without a service behind it), `service/NAME` (operator-registered with
//! `--tunnel-target NAME=HOST:PORT`), `sandbox/NAME/ssh` and `sandbox/NAME/port/P` (a user
//! reaching into a sandbox through its supervisor), and `relay/ID` (a supervisor connecting
//! back for a relay the gateway asked for; see `relays.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use openshell_transport::{BoxIo, RequestContext, TunnelRefusal, TunnelService, TunnelTarget};

use crate::audit::{AuditLog, Outcome};
use crate::auth::{Caller, Revocations};
use crate::authz::{Action, Denial};
use crate::relays::Relays;
use crate::services::sandboxes::Sandboxes;

/// Buffer of the in-process echo target.
const ECHO_BUFFER: usize = 256 * 1024;
/// Buffer of the pipe joining a user's tunnel to a supervisor's relay stream.
const RELAY_BUFFER: usize = 256 * 1024;
/// The authorization path of relay streams: only sandbox credentials may open them, like
/// the Supervisor service's RPCs.
const RELAY_PATH: &str = "/openshell.v1.Supervisor/Relay";

pub struct Tunnels {
    pub services: BTreeMap<String, String>,
    pub tls: bool,
    pub revocations: Arc<Revocations>,
    pub sandboxes: Arc<Sandboxes>,
    pub relays: Arc<Relays>,
    pub audit: Arc<AuditLog>,
}

impl TunnelService for Tunnels {
    fn open(
        &self,
        ctx: RequestContext,
        headers: HeaderMap,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelRefusal>> {
        let decision = self.decide(&ctx, &headers);
        let sandboxes = self.sandboxes.clone();
        let relays = self.relays.clone();
        let audit = self.audit.clone();
        Box::pin(async move {
            let (route, caller, target) = decision?;
            let opened = match route {
                Route::Echo => Ok(echo()),
                Route::Source => Ok(source()),
                Route::Sink => Ok(sink()),
                Route::Sandbox(name, kind, port) => {
                    let caller = caller.as_ref().expect("user tunnels have a caller");
                    to_sandbox(&sandboxes, &relays, caller, &name, kind, port).await
                }
                Route::Relay(id, sandbox) => {
                    let deliver = relays
                        .claim(&id, &sandbox)
                        .map_err(|e| TunnelRefusal::new(StatusCode::NOT_FOUND, e.to_string()))?;
                    let (user_side, supervisor_side) = tokio::io::duplex(RELAY_BUFFER);
                    deliver.send(Ok(Box::new(user_side))).map_err(|_| {
                        TunnelRefusal::new(StatusCode::GONE, format!("relay '{id}' was abandoned"))
                    })?;
                    return Ok(Box::new(supervisor_side) as BoxIo);
                }
                Route::Dial(name, addr) => match tokio::net::TcpStream::connect(&addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        Ok(Box::new(stream) as BoxIo)
                    }
                    Err(e) => Err(TunnelRefusal::new(
                        StatusCode::BAD_GATEWAY,
                        format!("tunnel target '{name}' is unreachable: {e}"),
                    )),
                },
            };
            // Users' tunnels are audited with their outcome; relay streams (the other half
            // of a user's tunnel) are not, or every tunnel would appear twice.
            if let Some(c) = &caller {
                let (result, reason) = match &opened {
                    Ok(_) => (Outcome::Ok, String::new()),
                    Err(r) => (Outcome::Error, r.reason.clone()),
                };
                audit.record(&c.audit_event(TUNNEL_ACTION, &target, result, &reason));
            }
            opened
        })
    }
}

/// The action name of tunnels in audit lines.
const TUNNEL_ACTION: &str = "tunnel.open";

enum Route {
    Echo,
    Source,
    Sink,
    Dial(String, String),
    /// A user's tunnel into sandbox NAME: ssh or a port inside it.
    Sandbox(String, openshell_proto::relay_open::Target, u32),
    /// A supervisor (of the sandbox with this id) connecting back for relay ID.
    Relay(String, String),
}

/// Asks the sandbox's supervisor to connect back for a new relay and waits for it.
async fn to_sandbox(
    sandboxes: &Sandboxes,
    relays: &Relays,
    caller: &Caller,
    name: &str,
    target: openshell_proto::relay_open::Target,
    port: u32,
) -> Result<BoxIo, TunnelRefusal> {
    use openshell_proto::{GatewayMessage, RelayOpen, gateway_message};
    let reach = sandboxes.reachable(caller, name).await.map_err(|e| {
        let status = match &e {
            crate::GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            crate::GatewayError::Precondition(_) => StatusCode::CONFLICT,
            crate::GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let reason = match e {
            crate::GatewayError::NotFound(_) => format!(
                "sandbox '{name}' does not exist: list sandboxes with `openshell sandbox list`"
            ),
            other => other.to_string(),
        };
        TunnelRefusal::new(status, reason)
    })?;
    let timeout = relays.limits().timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let (relay, waiter) = relays
        .request(&reach.id, caller.subject(), std::time::Instant::now())
        .map_err(|e| TunnelRefusal::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
    let ask = GatewayMessage {
        msg: Some(gateway_message::Msg::RelayOpen(RelayOpen {
            relay_id: relay.clone(),
            target: target as i32,
            port,
        })),
    };
    let timed_out = || {
        TunnelRefusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the supervisor of sandbox '{name}' did not connect back within {} s: check `openshell sandbox logs {name}`",
                timeout.as_secs()
            ),
        )
    };
    match ask_supervisor(&reach.session.tx, ask, deadline).await {
        Ok(()) => {}
        Err(AskError::Gone) => {
            relays.cancel(&relay);
            return Err(TunnelRefusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the supervisor of sandbox '{name}' just disconnected: retry in a moment"),
            ));
        }
        Err(AskError::TimedOut) => {
            relays.cancel(&relay);
            tracing::warn!(sandbox = %name, %relay, "the supervisor is not reading its control stream");
            return Err(timed_out());
        }
    }
    tracing::debug!(sandbox = %name, %relay, "relay requested");
    match tokio::time::timeout_at(deadline, waiter).await {
        Ok(Ok(Ok(io))) => Ok(io),
        Ok(Ok(Err(why))) => Err(TunnelRefusal::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox '{name}': {why}"),
        )),
        Ok(Err(_)) | Err(_) => {
            relays.cancel(&relay);
            Err(timed_out())
        }
    }
}

/// Why a relay request did not reach the supervisor.
#[derive(Debug, PartialEq, Eq)]
enum AskError {
    /// Its session ended.
    Gone,
    /// Its control queue stayed full until the deadline: it stopped reading.
    TimedOut,
}

/// Queues `msg` on a supervisor's control stream, waiting no later than `deadline` for
/// room: a supervisor that stops reading fills the queue, and a plain `send` would then
/// hang the user's tunnel (and its task) for as long as the session lives.
async fn ask_supervisor(
    tx: &tokio::sync::mpsc::Sender<openshell_proto::GatewayMessage>,
    msg: openshell_proto::GatewayMessage,
    deadline: tokio::time::Instant,
) -> Result<(), AskError> {
    match tokio::time::timeout_at(deadline, tx.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(AskError::Gone),
        Err(_) => Err(AskError::TimedOut),
    }
}

impl Tunnels {
    /// Authenticates the caller, checks the role's right to the kind of tunnel, and picks
    /// the route. Ownership of a sandbox is checked when it is looked up (`to_sandbox`).
    /// Refusals are audited here; opened tunnels when their outcome is known.
    #[allow(clippy::type_complexity)]
    fn decide(
        &self,
        ctx: &RequestContext,
        headers: &HeaderMap,
    ) -> Result<(Route, Option<Caller>, String), TunnelRefusal> {
        let target = TunnelTarget::from_headers(headers).ok_or_else(|| {
            TunnelRefusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "missing or malformed '{}' header",
                    openshell_transport::tunnel::TARGET_HEADER
                ),
            )
        })?;
        let shown = target.to_string();
        // Tunnels are authenticated like RPCs: the same certificate checks apply. Relay
        // streams are the supervisors' (sandbox credentials only); every other target is
        // for users.
        let path = match target {
            TunnelTarget::Relay(_) => RELAY_PATH,
            _ => "/openshell.v1.Tunnel/Open",
        };
        let caller = crate::auth::authenticate(
            path,
            headers,
            Some(ctx),
            self.tls,
            &self.revocations,
            std::time::SystemTime::now(),
        )
        .map_err(|r| {
            self.audit
                .record(&r.audit_event(Some(ctx.conn.peer), TUNNEL_ACTION, &shown));
            TunnelRefusal::new(StatusCode::FORBIDDEN, r.status.message())
        })?;
        tracing::info!(target = %shown, "tunnel requested");
        use openshell_proto::relay_open::Target;
        if let TunnelTarget::Relay(id) = target {
            let sandbox = caller
                .and_then(|c| c.sandbox_id().map(str::to_string))
                .ok_or_else(|| {
                    TunnelRefusal::new(
                        StatusCode::FORBIDDEN,
                        "relay streams are for sandbox supervisors only",
                    )
                })?;
            return Ok((Route::Relay(id, sandbox), None, shown));
        }
        let caller = caller.ok_or_else(|| {
            TunnelRefusal::new(
                StatusCode::FORBIDDEN,
                "tunnels need an authenticated caller",
            )
        })?;
        let action = match target {
            TunnelTarget::SandboxSsh(_) | TunnelTarget::SandboxPort(..) => Action::ReachSandbox,
            _ => Action::OpenServiceTunnel,
        };
        if let Err(Denial::Forbidden(m)) = caller.may(action, None) {
            self.audit
                .record(&caller.audit_event(TUNNEL_ACTION, &shown, Outcome::Denied, &m));
            return Err(TunnelRefusal::new(StatusCode::FORBIDDEN, m));
        }
        let route = match target {
            TunnelTarget::Echo => Route::Echo,
            TunnelTarget::Source => Route::Source,
            TunnelTarget::Sink => Route::Sink,
            TunnelTarget::Service(name) => match self.services.get(&name) {
                Some(addr) => Route::Dial(name, addr.clone()),
                None => {
                    let reason =
                        format!("no tunnel target named '{name}' is registered on this gateway");
                    self.audit.record(&caller.audit_event(
                        TUNNEL_ACTION,
                        &shown,
                        Outcome::Error,
                        &reason,
                    ));
                    return Err(TunnelRefusal::new(StatusCode::NOT_FOUND, reason));
                }
            },
            TunnelTarget::SandboxSsh(name) => Route::Sandbox(name, Target::Ssh, 0),
            TunnelTarget::SandboxPort(name, port) => {
                Route::Sandbox(name, Target::Tcp, u32::from(port))
            }
            TunnelTarget::Relay(_) => unreachable!("handled above"),
        };
        Ok((route, Some(caller), shown))
    }
}

/// An in-process echo: whatever is written comes back, until the writer half-closes.
fn echo() -> BoxIo {
    let (client, server) = tokio::io::duplex(ECHO_BUFFER);
    tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(server);
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    });
    Box::new(client)
}

/// Write size of the `source` target and read buffer of the `sink` target.
const BENCH_CHUNK: usize = 64 * 1024;
/// The `sink` target reports its total at most this often (and once more at the end).
const SINK_RECEIPT_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// An in-process source: bytes as fast as the client takes them, until it goes away.
/// Whatever the client writes is read and dropped.
fn source() -> BoxIo {
    use tokio::io::AsyncWriteExt;
    let (client, server) = tokio::io::duplex(ECHO_BUFFER);
    tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(server);
        let mut discard = tokio::io::sink();
        let drain = tokio::io::copy(&mut rd, &mut discard);
        let fill = async move {
            let chunk: Vec<u8> = (0..BENCH_CHUNK).map(|i| i as u8).collect();
            while wr.write_all(&chunk).await.is_ok() {}
        };
        tokio::select! {
            _ = fill => {}
            _ = drain => {}
        }
    });
    Box::new(client)
}

/// An in-process sink: reads and drops everything, writing the running total of bytes
/// received as an 8-byte big-endian number at most every 10 ms and once at the end.
fn sink() -> BoxIo {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(ECHO_BUFFER);
    tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(server);
        let mut buf = vec![0u8; BENCH_CHUNK];
        let mut total: u64 = 0;
        let mut last = std::time::Instant::now();
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            total += n as u64;
            if last.elapsed() >= SINK_RECEIPT_EVERY {
                last = std::time::Instant::now();
                if wr.write_all(&total.to_be_bytes()).await.is_err() {
                    return;
                }
            }
        }
        let _ = wr.write_all(&total.to_be_bytes()).await;
        let _ = wr.shutdown().await;
    });
    Box::new(client)
}

#[cfg(test)]
mod relay_tests {
    use super::*;

    fn ask() -> openshell_proto::GatewayMessage {
        openshell_proto::GatewayMessage::default()
    }

    #[tokio::test]
    async fn a_supervisor_that_stops_reading_cannot_hang_a_tunnel() {
        // A control queue that is full and never read: the supervisor hung.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(ask()).await.unwrap();
        let started = tokio::time::Instant::now();
        let deadline = started + std::time::Duration::from_millis(300);
        assert_eq!(
            ask_supervisor(&tx, ask(), deadline).await,
            Err(AskError::TimedOut)
        );
        let waited = started.elapsed();
        assert!(
            waited < std::time::Duration::from_secs(2),
            "waited {waited:?}"
        );
        // A session that ended is told apart from a hung one.
        drop(rx);
        assert_eq!(
            ask_supervisor(&tx, ask(), deadline).await,
            Err(AskError::Gone)
        );
    }
}
