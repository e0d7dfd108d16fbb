//! `openshell agent start|stop|status`: the per-gateway connection agent (see
//! [`crate::agent`]). `start` re-runs this binary as `agent run` detached (its own session,
//! output to `agent.log` next to the socket) and waits until it answers on its socket.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use openshell_pki::fs::DirLock;
use openshell_transport::{Connection, Endpoint, TransportError};

use crate::CliError;
use crate::agent::daemon::{self, Lifetimes};
use crate::agent::{AgentPaths, AgentStatus, format_duration, parse_duration};
use crate::args::{GlobalArgs, TransportChoice};
use crate::config::{Env, ResolvedGateway};
use crate::output::{OutputFormat, emit};

/// Set in the environment of the detached agent started by `agent start`.
const CHILD_MARKER: &str = "OPENSHELL_AGENT_CHILD";
/// Held by `agent start` while it checks for an agent and starts one.
const START_LOCK_FILE: &str = "agent.start.lock";
/// How long `start` waits for the agent to answer, and `stop` for it to exit.
const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: AgentCommand,
}

#[derive(Debug, clap::Args)]
pub struct LifetimeArgs {
    /// Exit after this long with no client connected (e.g. 30s, 10m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    pub persist: Duration,
    /// Close the gateway connection after this long without requests; the next command
    /// reconnects, with 0-RTT.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    pub idle_disconnect: Duration,
}

impl LifetimeArgs {
    fn lifetimes(&self) -> Lifetimes {
        Lifetimes {
            idle_disconnect: self.idle_disconnect,
            persist: self.persist,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Start the agent for the gateway in the background and print its socket path (a
    /// running agent is reported, not duplicated).
    Start(LifetimeArgs),
    /// Stop the gateway's agent.
    Stop,
    /// Whether the gateway's agent runs, and what it has done (exit 1 when it does not run).
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Run the agent in the foreground (what `start` runs detached).
    #[command(hide = true)]
    Run(LifetimeArgs),
}

pub async fn run(args: AgentArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let gw = crate::config::resolve(global)?;
    let paths = AgentPaths::locate(&gw, Env::process())?;
    match args.command {
        AgentCommand::Start(l) => start(&gw, global, &paths, l.lifetimes()).await,
        AgentCommand::Stop => stop(&gw, &paths).await,
        AgentCommand::Status { output } => status(&gw, &paths, output).await,
        AgentCommand::Run(l) => foreground(gw, global, paths, l.lifetimes()).await,
    }
}

/// What is on the socket right now.
enum Found {
    /// An agent for this registration answered.
    Running(Box<Connection>),
    /// An agent answered but serves an older registration (it is exiting now).
    Outdated,
    Nothing,
}

async fn probe(gw: &ResolvedGateway, paths: &AgentPaths) -> Result<Found, CliError> {
    let endpoint = Endpoint::parse(&gw.endpoint)?;
    let conn = match openshell_transport::connect_agent_unchecked(&paths.socket, &endpoint).await {
        Ok(c) => c,
        Err(TransportError::NoAgent { .. }) => {
            crate::agent::remove_stale(&paths.socket);
            return Ok(Found::Nothing);
        }
        Err(e) => return Err(e.into()),
    };
    let fp = http::HeaderValue::from_str(&crate::agent::fingerprint(gw))
        .map_err(|e| CliError::msg(format!("agent fingerprint: {e}")))?;
    let (status, _, _) = match conn.agent_request(Method::GET, "hello", Some(fp)).await {
        Ok(r) => r,
        // It closed on us: it was on its way out.
        Err(_) if conn.close_reason().is_some() => return Ok(Found::Nothing),
        Err(e) => return Err(e.into()),
    };
    Ok(if status == StatusCode::OK {
        Found::Running(Box::new(conn))
    } else {
        Found::Outdated
    })
}

async fn fetch_status(conn: &Connection) -> Result<AgentStatus, CliError> {
    let (code, _, body) = conn.agent_request(Method::GET, "status", None).await?;
    if code != StatusCode::OK {
        return Err(CliError::msg(format!(
            "the agent answered {code} to a status request: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| CliError::msg(format!("the agent's status is not understood ({e})")))
}

async fn start(
    gw: &ResolvedGateway,
    global: &GlobalArgs,
    paths: &AgentPaths,
    lifetimes: Lifetimes,
) -> Result<ExitCode, CliError> {
    // Credential problems are reported here, not buried in the agent's log.
    crate::client::client_config(gw, global.transport)?;
    // One starter at a time: a second waits here, then finds the first one's agent.
    openshell_pki::fs::ensure_private_dir(&paths.dir)?;
    let start_lock = paths.dir.join(START_LOCK_FILE);
    let wait_for = start_lock.clone();
    let _starting = tokio::task::spawn_blocking(move || DirLock::acquire(&wait_for, WAIT))
        .await
        .map_err(|e| CliError::msg(format!("waiting for the start lock: {e}")))??
        .ok_or_else(|| {
            CliError::msg(format!(
                "another `openshell agent start` held {} for {WAIT:?}; try again",
                start_lock.display()
            ))
        })?;
    match probe(gw, paths).await? {
        Found::Running(conn) => {
            let st = fetch_status(&conn).await?;
            eprintln!(
                "An agent for gateway '{}' is already running (pid {}); stop it with: openshell agent stop -g {}",
                gw.name,
                st.pid.unwrap_or_default(),
                gw.name
            );
            crate::output::print_stdout(&format!("{}\n", paths.socket.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        Found::Outdated => wait_gone(paths, None).await?,
        Found::Nothing => {}
    }
    let log = std::fs::File::create(&paths.log)?;
    std::fs::set_permissions(
        &paths.log,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["-v", "-g", &gw.name]);
    if global.transport != TransportChoice::Auto {
        cmd.arg("--transport")
            .arg(format!("{:?}", global.transport).to_lowercase());
    }
    cmd.args(["agent", "run", "--idle-disconnect"])
        .arg(format_duration(lifetimes.idle_disconnect))
        .arg("--persist")
        .arg(format_duration(lifetimes.persist))
        .env(CHILD_MARKER, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group (and, once running, its own session): Ctrl-C and a closed
    // terminal do not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    let endpoint = Endpoint::parse(&gw.endpoint)?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&paths.log).unwrap_or_default();
            let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(CliError::hint(
                format!(
                    "the agent exited at start ({status}): {}",
                    last.trim_start_matches("error: ")
                ),
                format!("Its log: {}", paths.log.display()),
            ));
        }
        if let Ok(conn) =
            openshell_transport::connect_agent_unchecked(&paths.socket, &endpoint).await
            && fetch_status(&conn).await.is_ok()
        {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(CliError::hint(
                format!(
                    "the agent did not answer on {} within {WAIT:?}",
                    paths.socket.display()
                ),
                format!("Its log: {}", paths.log.display()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "Started the agent for gateway '{}' (pid {}); it drops the idle connection after {} and exits after {} without clients",
        gw.name,
        child.id(),
        format_duration(lifetimes.idle_disconnect),
        format_duration(lifetimes.persist)
    );
    crate::output::print_stdout(&format!("{}\n", paths.socket.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Waits until the agent's socket is gone and, when known, its process too.
async fn wait_gone(paths: &AgentPaths, pid: Option<u32>) -> Result<(), CliError> {
    let deadline = Instant::now() + WAIT;
    loop {
        let socket_gone = std::fs::symlink_metadata(&paths.socket).is_err();
        let process_gone = pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            .is_none_or(|p| rustix::process::test_kill_process(p).is_err());
        if socket_gone && process_gone {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::msg(format!(
                "the agent (pid {}) did not exit within {WAIT:?}",
                pid.map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into())
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn not_running(gw: &ResolvedGateway, paths: &AgentPaths) -> CliError {
    CliError::hint(
        format!(
            "no agent is running for gateway '{}' (nothing listens on {})",
            gw.name,
            paths.socket.display()
        ),
        format!("Start one with: openshell agent start -g {}", gw.name),
    )
}

async fn stop(gw: &ResolvedGateway, paths: &AgentPaths) -> Result<ExitCode, CliError> {
    let endpoint = Endpoint::parse(&gw.endpoint)?;
    let conn = match openshell_transport::connect_agent_unchecked(&paths.socket, &endpoint).await {
        Ok(c) => c,
        Err(TransportError::NoAgent { .. }) => {
            crate::agent::remove_stale(&paths.socket);
            return Err(not_running(gw, paths));
        }
        Err(e) => return Err(e.into()),
    };
    let (code, _, body) = conn.agent_request(Method::POST, "stop", None).await?;
    if code != StatusCode::OK {
        return Err(CliError::msg(format!(
            "the agent refused to stop ({code}): {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    let pid = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["pid"].as_u64())
        .map(|p| p as u32);
    drop(conn);
    wait_gone(paths, pid).await?;
    eprintln!(
        "Stopped the agent for gateway '{}'{}",
        gw.name,
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(
    gw: &ResolvedGateway,
    paths: &AgentPaths,
    output: OutputFormat,
) -> Result<ExitCode, CliError> {
    let endpoint = Endpoint::parse(&gw.endpoint)?;
    let report = match openshell_transport::connect_agent_unchecked(&paths.socket, &endpoint).await
    {
        Ok(conn) => {
            let mut st = fetch_status(&conn).await?;
            // This command is one of the clients it counts.
            st.clients = st.clients.saturating_sub(1);
            st
        }
        Err(TransportError::NoAgent { .. }) => {
            crate::agent::remove_stale(&paths.socket);
            AgentStatus {
                running: false,
                gateway: gw.name.clone(),
                socket: paths.socket.display().to_string(),
                ..AgentStatus::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    emit(output, &report, render)?;
    Ok(if report.running {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn render(s: &AgentStatus) -> String {
    if !s.running {
        return format!(
            "Agent for gateway '{}'\n  Status: not running\n  Start one with: openshell agent start -g {}\n",
            s.gateway, s.gateway
        );
    }
    let mut out = format!(
        "Agent for gateway '{}'\n  Status: running (pid {}) since {}\n  Socket: {}\n",
        s.gateway,
        s.pid.unwrap_or_default(),
        s.started_at.as_deref().unwrap_or("?"),
        s.socket
    );
    let path = |t: Option<&str>| match t {
        Some("tcp") => "TCP",
        Some(_) => "QUIC",
        None => "none yet",
    };
    match &s.upstream {
        Some(u) if u.connected => {
            out.push_str(&format!(
                "  Upstream: {} since {}{}{}\n",
                path(u.transport.as_deref()),
                u.connected_since.as_deref().unwrap_or("?"),
                u.rtt_ms
                    .map(|r| format!(", RTT {r:.1} ms"))
                    .unwrap_or_default(),
                match u.zero_rtt.as_deref() {
                    Some("accepted") => ", resumed with 0-RTT",
                    Some("rejected") => ", 0-RTT rejected",
                    _ => "",
                }
            ));
        }
        Some(u) => out.push_str(&format!(
            "  Upstream: disconnected (last path: {}); the next command reconnects\n",
            path(u.transport.as_deref())
        )),
        None => {}
    }
    out.push_str(&format!(
        "  Requests served: {} (tunnels: {})\n  Reconnects: {} (0-RTT accepted {}, rejected {})\n  Other clients connected: {}\n",
        s.requests_served,
        s.tunnels_opened,
        s.reconnects,
        s.zero_rtt.accepted,
        s.zero_rtt.rejected,
        s.clients
    ));
    if let (Some(i), Some(p)) = (s.idle_disconnect_secs, s.persist_secs) {
        out.push_str(&format!(
            "  Idle disconnect: {}, persist: {}\n",
            format_duration(Duration::from_secs_f64(i)),
            format_duration(Duration::from_secs_f64(p))
        ));
    }
    out
}

/// `agent run`: the agent itself, in this process.
async fn foreground(
    gw: ResolvedGateway,
    global: &GlobalArgs,
    paths: AgentPaths,
    lifetimes: Lifetimes,
) -> Result<ExitCode, CliError> {
    if std::env::var_os(CHILD_MARKER).is_some() {
        // Leave the starting terminal's session: no SIGHUP when it closes.
        let _ = rustix::process::setsid();
    }
    let cfg = crate::client::client_config(&gw, global.transport)?;
    let connector = openshell_transport::Connector::new(cfg)?;
    // The lock lives until the agent has finished (and removed its socket).
    let (listener, _lock) = daemon::bind(&paths).await?;
    daemon::run(gw, connector, paths, listener, lifetimes).await
}
