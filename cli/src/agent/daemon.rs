//! The running agent: binds the socket, holds the upstream connection, and decides when to
//! drop it (idle) and when to exit (no clients, stop, SIGTERM, changed registration).
//!
//! ```text
//!  accept ──> serve_client (transport) ──> AgentBackend: upstream() / control() / activity
//!  tick (<= 1 s) ──> idle for --idle-disconnect: close the upstream connection
//!                ──> no client for --persist, or the registration changed: shut down
//!  shut down: remove the socket, GOAWAY to clients, wait for in-flight work (<= 10 s),
//!             close the upstream connection, exit 0
//! ```

use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, Method, StatusCode};
use openshell_pki::fs::DirLock;
use openshell_transport::agent::{AgentBackend, ControlReply, FINGERPRINT_HEADER};
use openshell_transport::{Connection, Connector, TransportError, ZeroRtt};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{AgentPaths, AgentStatus, Upstream, ZeroRttCounts};
use crate::CliError;
use crate::config::ResolvedGateway;

/// How long shutting down waits for in-flight requests and tunnels.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Lifetimes of a running agent.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Drop the gateway connection after this long without requests (and no tunnel
    /// open). Default 60 s: past it the gateway's idle timers would start to matter, and
    /// reconnecting costs one 0-RTT round trip.
    pub idle_disconnect: Duration,
    /// Exit after this long without clients. Default 10 min (as ControlPersist users
    /// tend to set): long enough to span a working session's pauses.
    pub persist: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            idle_disconnect: Duration::from_secs(60),
            persist: Duration::from_secs(600),
        }
    }
}

struct Agent {
    gw: ResolvedGateway,
    paths: AgentPaths,
    lifetimes: Lifetimes,
    connector: Connector,
    fingerprint: String,
    started_at: SystemTime,
    /// Held while connecting, so concurrent requests share one new connection.
    upstream: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// The same connection, readable without waiting (status, response headers).
    current: Mutex<Option<(Arc<Connection>, SystemTime)>>,
    last_transport: Mutex<Option<&'static str>>,
    requests: AtomicU64,
    tunnels: AtomicU64,
    connects: AtomicU64,
    zero_rtt_accepted: Arc<AtomicU64>,
    zero_rtt_rejected: Arc<AtomicU64>,
    clients: AtomicU64,
    in_flight: AtomicU64,
    /// When a request or tunnel last began or ended (the idle-disconnect clock).
    last_request: Mutex<Instant>,
    /// When a client last connected, disconnected or made a request (the persist clock).
    /// Status queries count here but not above: looking at the agent keeps it alive
    /// without keeping its gateway connection up.
    last_client: Mutex<Instant>,
    shutdown: watch::Sender<bool>,
}

/// Decrements its counter and stamps the activity clock when dropped.
struct Guard {
    agent: Arc<Agent>,
    client: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let counter = if self.client {
            &self.agent.clients
        } else {
            &self.agent.in_flight
        };
        counter.fetch_sub(1, Ordering::SeqCst);
        self.agent.touch(!self.client);
    }
}

impl Agent {
    fn touch(&self, request: bool) {
        let now = Instant::now();
        if request {
            *self.last_request.lock().unwrap_or_else(|p| p.into_inner()) = now;
        }
        *self.last_client.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    /// Time since the last request (idle disconnect).
    fn idle_for(&self) -> Duration {
        self.last_request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Time since the last client activity (persist).
    fn unused_for(&self) -> Duration {
        self.last_client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(c, _)| c.clone())
    }

    async fn connect(&self) -> Result<Arc<Connection>, TransportError> {
        let mut slot = self.upstream.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            tracing::info!(reason = ?conn.close_reason().map(|r| r.to_string()), "gateway connection closed; reconnecting");
        }
        let conn = Arc::new(self.connector.connect().await?);
        let n = self.connects.fetch_add(1, Ordering::SeqCst) + 1;
        let zero = conn.zero_rtt();
        tracing::info!(transport = %conn.transport(), zero_rtt = zero.as_str(), connection = n, "connected to the gateway");
        if zero == ZeroRtt::Pending {
            let (conn2, ok, no) = (
                conn.clone(),
                self.zero_rtt_accepted.clone(),
                self.zero_rtt_rejected.clone(),
            );
            tokio::spawn(async move {
                match conn2.zero_rtt_settled().await {
                    ZeroRtt::Accepted => ok.fetch_add(1, Ordering::SeqCst),
                    _ => no.fetch_add(1, Ordering::SeqCst),
                };
            });
        }
        *self
            .last_transport
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(conn.transport().as_str());
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((conn.clone(), SystemTime::now()));
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Closes the gateway connection if nothing used it for `idle_disconnect`.
    async fn drop_if_idle(&self) {
        if self.current().is_none()
            || self.in_flight.load(Ordering::SeqCst) > 0
            || self.idle_for() < self.lifetimes.idle_disconnect
        {
            return;
        }
        let mut slot = self.upstream.lock().await;
        // Re-checked under the lock: a request takes its activity guard before it asks
        // for the connection, so none is in flight on what is closed here.
        if self.in_flight.load(Ordering::SeqCst) > 0
            || self.idle_for() < self.lifetimes.idle_disconnect
        {
            return;
        }
        if let Some(conn) = slot.take() {
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(
                idle = %super::format_duration(self.lifetimes.idle_disconnect),
                "closing the idle gateway connection"
            );
            conn.close().await;
        }
    }

    fn status(&self) -> AgentStatus {
        let upstream = {
            let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            match current.as_ref() {
                Some((conn, since)) => Upstream {
                    connected: conn.close_reason().is_none(),
                    transport: Some(conn.transport().as_str().to_string()),
                    rtt_ms: conn.quic_stats().map(|s| s.path.rtt.as_secs_f64() * 1000.0),
                    connected_since: Some(crate::output::rfc3339(*since)),
                    zero_rtt: Some(conn.zero_rtt().as_str().to_string()),
                },
                None => Upstream {
                    connected: false,
                    transport: self
                        .last_transport
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .map(str::to_string),
                    ..Upstream::default()
                },
            }
        };
        AgentStatus {
            running: true,
            gateway: self.gw.name.clone(),
            socket: self.paths.socket.display().to_string(),
            pid: Some(std::process::id()),
            started_at: Some(crate::output::rfc3339(self.started_at)),
            upstream: Some(upstream),
            requests_served: self.requests.load(Ordering::SeqCst),
            tunnels_opened: self.tunnels.load(Ordering::SeqCst),
            reconnects: self.connects.load(Ordering::SeqCst).saturating_sub(1),
            zero_rtt: ZeroRttCounts {
                accepted: self.zero_rtt_accepted.load(Ordering::SeqCst),
                rejected: self.zero_rtt_rejected.load(Ordering::SeqCst),
            },
            clients: self.clients.load(Ordering::SeqCst),
            idle_disconnect_secs: Some(self.lifetimes.idle_disconnect.as_secs_f64()),
            persist_secs: Some(self.lifetimes.persist.as_secs_f64()),
        }
    }

    fn begin_shutdown(&self, why: &str) {
        if !*self.shutdown.borrow() {
            tracing::info!(reason = why, "agent shutting down");
            // New commands connect directly from now on.
            super::remove_stale(&self.paths.socket);
            let _ = self.shutdown.send(true);
        }
    }
}

/// The transport's view of the agent.
struct Backend(Arc<Agent>);

impl AgentBackend for Backend {
    fn upstream(&self) -> BoxFuture<'_, Result<Arc<Connection>, TransportError>> {
        Box::pin(self.0.connect())
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.0.current()
    }

    fn control(&self, method: &Method, what: &str, headers: &HeaderMap) -> ControlReply {
        let agent = &self.0;
        let reply = |status, body: String| ControlReply {
            status,
            body: Bytes::from(body),
        };
        match (method, what) {
            (&Method::GET, "hello") => {
                let theirs = headers
                    .get(FINGERPRINT_HEADER)
                    .and_then(|v| v.to_str().ok());
                if theirs == Some(agent.fingerprint.as_str()) {
                    reply(StatusCode::OK, "ok".into())
                } else {
                    agent.begin_shutdown("a command saw a different gateway registration");
                    reply(
                        StatusCode::CONFLICT,
                        "the gateway's registration or credentials changed since this agent started; it is exiting".into(),
                    )
                }
            }
            (&Method::GET, "status") => reply(
                StatusCode::OK,
                serde_json::to_string(&agent.status()).unwrap_or_default(),
            ),
            (&Method::POST, "stop") => {
                agent.begin_shutdown("agent stop");
                reply(
                    StatusCode::OK,
                    serde_json::json!({ "pid": std::process::id() }).to_string(),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                format!("no such agent request: {what}"),
            ),
        }
    }

    fn client(&self) -> openshell_transport::agent::Activity {
        self.0.clients.fetch_add(1, Ordering::SeqCst);
        self.0.touch(false);
        Box::new(Guard {
            agent: self.0.clone(),
            client: true,
        })
    }

    fn request(&self, tunnel: bool) -> openshell_transport::agent::Activity {
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        if tunnel {
            self.0.tunnels.fetch_add(1, Ordering::SeqCst);
        } else {
            self.0.requests.fetch_add(1, Ordering::SeqCst);
        }
        self.0.touch(true);
        Box::new(Guard {
            agent: self.0.clone(),
            client: false,
        })
    }
}

/// Held by the running agent (an advisory `flock`, released by the kernel however it exits).
const LOCK_FILE: &str = "agent.lock";

/// Binds the socket (removing a stale one; refusing if an agent already listens), 0600
/// in a 0700 directory. The returned lock (`agent.lock` beside the socket) is held for the
/// agent's life: two agents started at once cannot both decide the socket is stale and
/// remove each other's.
pub async fn bind(paths: &AgentPaths) -> Result<(UnixListener, DirLock), CliError> {
    openshell_pki::fs::ensure_private_dir(&paths.dir)?;
    let lock_path = paths.dir.join(LOCK_FILE);
    let Some(lock) = DirLock::acquire(&lock_path, Duration::ZERO)? else {
        return Err(CliError::msg(format!(
            "an agent for this gateway is already running (it holds {}); `openshell agent status` shows it",
            lock_path.display()
        )));
    };
    if std::fs::symlink_metadata(&paths.socket).is_ok() {
        if tokio::net::UnixStream::connect(&paths.socket).await.is_ok() {
            return Err(CliError::msg(format!(
                "an agent already listens on {}",
                paths.socket.display()
            )));
        }
        super::remove_stale(&paths.socket);
    }
    let listener = UnixListener::bind(&paths.socket)
        .map_err(|e| CliError::msg(format!("cannot listen on {}: {e}", paths.socket.display())))?;
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, lock))
}

/// Runs the agent in this process until it is told to stop, idles out, or its gateway's
/// registration changes.
pub async fn run(
    gw: ResolvedGateway,
    connector: Connector,
    paths: AgentPaths,
    listener: UnixListener,
    lifetimes: Lifetimes,
) -> Result<ExitCode, CliError> {
    let uid = rustix::process::geteuid().as_raw();
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let agent = Arc::new(Agent {
        fingerprint: super::fingerprint(&gw),
        gw,
        paths,
        lifetimes,
        connector,
        started_at: SystemTime::now(),
        upstream: tokio::sync::Mutex::new(None),
        current: Mutex::new(None),
        last_transport: Mutex::new(None),
        requests: AtomicU64::new(0),
        tunnels: AtomicU64::new(0),
        connects: AtomicU64::new(0),
        zero_rtt_accepted: Arc::new(AtomicU64::new(0)),
        zero_rtt_rejected: Arc::new(AtomicU64::new(0)),
        clients: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        last_request: Mutex::new(Instant::now()),
        last_client: Mutex::new(Instant::now()),
        shutdown,
    });
    tracing::info!(
        socket = %agent.paths.socket.display(),
        gateway = %agent.gw.name,
        idle_disconnect = %super::format_duration(lifetimes.idle_disconnect),
        persist = %super::format_duration(lifetimes.persist),
        "agent listening"
    );
    // Connect now, so the first command finds the connection warm.
    let eager = agent.clone();
    tokio::spawn(async move {
        if let Err(e) = eager.connect().await {
            tracing::warn!(error = %e, "cannot connect to the gateway yet; the next command retries");
        }
    });
    let backend: Arc<dyn AgentBackend> = Arc::new(Backend(agent.clone()));
    let tick = (lifetimes.idle_disconnect.min(lifetimes.persist) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let backend = backend.clone();
                    let rx = shutdown_rx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = openshell_transport::agent::serve_client(stream, uid, backend, rx).await {
                            tracing::warn!(error = %e, "agent client refused");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ticker.tick() => {
                if super::fingerprint(&agent.gw) != agent.fingerprint {
                    agent.begin_shutdown("the gateway's registration or credentials changed");
                } else if agent.clients.load(Ordering::SeqCst) == 0
                    && agent.in_flight.load(Ordering::SeqCst) == 0
                    && agent.unused_for() >= lifetimes.persist
                {
                    agent.begin_shutdown("no clients for the persist time");
                } else {
                    agent.drop_if_idle().await;
                }
            }
            _ = term.recv() => agent.begin_shutdown("SIGTERM"),
            _ = tokio::signal::ctrl_c() => agent.begin_shutdown("SIGINT"),
            // The agent has no terminal; a hangup is not a reason to drop the connection.
            _ = hup.recv() => {}
            _ = shutdown_rx.changed() => {}
        }
        if *shutdown_rx.borrow() {
            break;
        }
    }
    drop(listener);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while agent.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(conn) = agent.upstream.lock().await.take() {
        conn.close().await;
    }
    tracing::info!("agent stopped");
    Ok(ExitCode::SUCCESS)
}
