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

use crate::auth::Revocations;
use crate::relays::{RELAY_TIMEOUT, Relays};
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
        Box::pin(async move {
            match decision? {
                Route::Echo => Ok(echo()),
                Route::Source => Ok(source()),
                Route::Sink => Ok(sink()),
                Route::Sandbox(name, target, port) => {
                    to_sandbox(&sandboxes, &relays, &name, target, port).await
                }
                Route::Relay(id, sandbox) => {
                    let deliver = relays
                        .claim(&id, &sandbox)
                        .map_err(|e| TunnelRefusal::new(StatusCode::NOT_FOUND, e.to_string()))?;
                    let (user_side, supervisor_side) = tokio::io::duplex(RELAY_BUFFER);
                    deliver.send(Ok(Box::new(user_side))).map_err(|_| {
                        TunnelRefusal::new(StatusCode::GONE, format!("relay '{id}' was abandoned"))
                    })?;
                    Ok(Box::new(supervisor_side) as BoxIo)
                }
                Route::Dial(name, addr) => {
                    let stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| {
                        TunnelRefusal::new(
                            StatusCode::BAD_GATEWAY,
                            format!("tunnel target '{name}' is unreachable: {e}"),
                        )
                    })?;
                    let _ = stream.set_nodelay(true);
                    Ok(Box::new(stream) as BoxIo)
                }
            }
        })
    }
}

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
    name: &str,
    target: openshell_proto::relay_open::Target,
    port: u32,
) -> Result<BoxIo, TunnelRefusal> {
    use openshell_proto::{GatewayMessage, RelayOpen, gateway_message};
    let reach = sandboxes.reachable(name).await.map_err(|e| {
        let status = match &e {
            crate::GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            crate::GatewayError::Precondition(_) => StatusCode::CONFLICT,
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
    let (relay, waiter) = relays
        .request(&reach.id, std::time::Instant::now())
        .map_err(|e| TunnelRefusal::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()))?;
    let ask = GatewayMessage {
        msg: Some(gateway_message::Msg::RelayOpen(RelayOpen {
            relay_id: relay.clone(),
            target: target as i32,
            port,
        })),
    };
    if reach.session.tx.send(ask).await.is_err() {
        relays.cancel(&relay);
        return Err(TunnelRefusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the supervisor of sandbox '{name}' just disconnected: retry in a moment"),
        ));
    }
    tracing::debug!(sandbox = %name, %relay, "relay requested");
    match tokio::time::timeout(RELAY_TIMEOUT, waiter).await {
        Ok(Ok(Ok(io))) => Ok(io),
        Ok(Ok(Err(why))) => Err(TunnelRefusal::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox '{name}': {why}"),
        )),
        Ok(Err(_)) | Err(_) => {
            relays.cancel(&relay);
            Err(TunnelRefusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the supervisor of sandbox '{name}' did not connect back within {} s: check `openshell sandbox logs {name}`",
                    RELAY_TIMEOUT.as_secs()
                ),
            ))
        }
    }
}

impl Tunnels {
    fn decide(&self, ctx: &RequestContext, headers: &HeaderMap) -> Result<Route, TunnelRefusal> {
        let target = TunnelTarget::from_headers(headers).ok_or_else(|| {
            TunnelRefusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "missing or malformed '{}' header",
                    openshell_transport::tunnel::TARGET_HEADER
                ),
            )
        })?;
        // Tunnels are authorized like RPCs: the same certificate checks apply. Relay streams
        // are the supervisors' (sandbox credentials only); every other target is for users.
        let path = match target {
            TunnelTarget::Relay(_) => RELAY_PATH,
            _ => "/openshell.v1.Tunnel/Open",
        };
        let caller = crate::auth::authorize(
            path,
            headers,
            Some(ctx),
            self.tls,
            &self.revocations,
            std::time::SystemTime::now(),
        )
        .map_err(|s| TunnelRefusal::new(StatusCode::FORBIDDEN, s.message()))?;
        tracing::info!(%target, "tunnel requested");
        use openshell_proto::relay_open::Target;
        match target {
            TunnelTarget::Echo => Ok(Route::Echo),
            TunnelTarget::Source => Ok(Route::Source),
            TunnelTarget::Sink => Ok(Route::Sink),
            TunnelTarget::Service(name) => match self.services.get(&name) {
                Some(addr) => Ok(Route::Dial(name, addr.clone())),
                None => Err(TunnelRefusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no tunnel target named '{name}' is registered on this gateway"),
                )),
            },
            TunnelTarget::SandboxSsh(name) => Ok(Route::Sandbox(name, Target::Ssh, 0)),
            TunnelTarget::SandboxPort(name, port) => {
                Ok(Route::Sandbox(name, Target::Tcp, u32::from(port)))
            }
            TunnelTarget::Relay(id) => {
                let sandbox = caller
                    .and_then(|c| c.0.sandbox_id().map(str::to_string))
                    .ok_or_else(|| {
                        TunnelRefusal::new(
                            StatusCode::FORBIDDEN,
                            "relay streams are for sandbox supervisors only",
                        )
                    })?;
                Ok(Route::Relay(id, sandbox))
            }
        }
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
