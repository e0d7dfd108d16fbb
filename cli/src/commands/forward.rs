//! `openshell forward start|stop|list`: a local TCP port that reaches the same port inside a
//! sandbox. Each accepted connection becomes one CONNECT tunnel `sandbox/NAME/port/P` on the
//! CLI's QUIC connection (reconnected when it breaks); the gateway relays it through the
//! sandbox's supervisor, which connects to 127.0.0.1:P inside the sandbox.
//!
//! `--background` re-runs the same command detached; the forward then lives in
//! `forwards/<sandbox>-<port>.pid` (`<pid>\t<sandbox_id>\t<bind>`, as upstream) and writes its
//! log next to it. `stop` and `list` work from those files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use openshell_transport::{Connection, TunnelTarget};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::config::ResolvedGateway;
use crate::output::{OutputFormat, emit, table};

/// Set in the environment of a background forward's process.
const CHILD_MARKER: &str = "OPENSHELL_FORWARD_CHILD";

#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    #[command(subcommand)]
    pub command: ForwardCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ForwardCommand {
    /// Forward a local port to the same port inside a sandbox.
    Start {
        /// Local port, optionally with the address to bind ([ADDR:]PORT; default 127.0.0.1).
        #[arg(value_name = "[ADDR:]PORT")]
        spec: String,
        /// Sandbox name (default: the last one used).
        name: Option<String>,
        /// Run in the background (stop it with `openshell forward stop PORT`).
        #[arg(short = 'd', long)]
        background: bool,
    },
    /// Stop a background forward.
    Stop {
        port: u16,
        /// Only this sandbox's forward on PORT.
        name: Option<String>,
    },
    /// List background forwards.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// Parses `[ADDR:]PORT` (IPv6 as `[::1]:PORT`).
pub fn parse_spec(spec: &str) -> Result<SocketAddr, CliError> {
    let bad = || {
        CliError::hint(
            format!("'{spec}' is not a port to forward"),
            "Give [ADDR:]PORT, e.g. 8080 or 0.0.0.0:8080",
        )
    };
    if let Ok(port) = spec.parse::<u16>() {
        if port == 0 {
            return Err(bad());
        }
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let addr: SocketAddr = spec.parse().map_err(|_| bad())?;
    if addr.port() == 0 {
        return Err(bad());
    }
    Ok(addr)
}

fn forwards_dir(gw: &ResolvedGateway) -> PathBuf {
    // gateways/<name>/ -> the config root's forwards/
    gw.user_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("forwards")
}

#[derive(Debug, Serialize)]
struct Entry {
    sandbox: String,
    port: u16,
    bind: String,
    pid: u32,
    sandbox_id: String,
    running: bool,
    #[serde(skip)]
    file: PathBuf,
}

fn read_entries(dir: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pid"))
        else {
            continue;
        };
        let Some((sandbox, port)) = stem.rsplit_once('-') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut f = text.trim().split('\t');
        let pid = f.next().and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
        let sandbox_id = f.next().unwrap_or("").to_string();
        let bind = f.next().unwrap_or("").to_string();
        out.push(Entry {
            sandbox: sandbox.to_string(),
            port,
            bind,
            pid,
            sandbox_id,
            running: is_forward_process(pid),
            file: path,
        });
    }
    out.sort_by(|a, b| (&a.sandbox, a.port).cmp(&(&b.sandbox, b.port)));
    out
}

/// True when `pid` is alive and is an `openshell forward` process (not a reused pid).
fn is_forward_process(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let words: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            words.iter().any(|w| w.ends_with(b"openshell")) && words.contains(&&b"forward"[..])
        })
        .unwrap_or(false)
}

pub async fn run(args: ForwardArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let gw = crate::config::resolve(global)?;
    let dir = forwards_dir(&gw);
    match args.command {
        ForwardCommand::Start {
            spec,
            name,
            background,
        } => {
            let bind = parse_spec(&spec)?;
            let name = crate::commands::sandbox::name_or_last(&gw, name)?;
            if background && std::env::var_os(CHILD_MARKER).is_none() {
                return start_background(&dir, &name, bind);
            }
            serve(&gw, global, &dir, &name, bind).await
        }
        ForwardCommand::Stop { port, name } => {
            let matching: Vec<Entry> = read_entries(&dir)
                .into_iter()
                .filter(|e| e.port == port && name.as_ref().is_none_or(|n| *n == e.sandbox))
                .collect();
            if matching.is_empty() {
                return Err(CliError::hint(
                    format!("no background forward on port {port}"),
                    "See them with: openshell forward list",
                ));
            }
            for e in matching {
                if e.running {
                    if let Some(pid) = rustix::process::Pid::from_raw(e.pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                    }
                    // Wait for it to go, so the port is free when we return.
                    for _ in 0..50 {
                        if !is_forward_process(e.pid) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let _ = std::fs::remove_file(&e.file);
                let _ = std::fs::remove_file(e.file.with_extension("log"));
                eprintln!("Stopped forward {} -> {}:{}", e.bind, e.sandbox, e.port);
            }
            Ok(ExitCode::SUCCESS)
        }
        ForwardCommand::List { output } => {
            let entries = read_entries(&dir);
            emit(output, &entries, |items| {
                if items.is_empty() {
                    return "No forwards.\n".to_string();
                }
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|e| {
                        vec![
                            e.sandbox.clone(),
                            e.port.to_string(),
                            e.bind.clone(),
                            e.pid.to_string(),
                            if e.running { "running" } else { "dead" }.to_string(),
                        ]
                    })
                    .collect();
                table(&["SANDBOX", "PORT", "BIND", "PID", "STATUS"], &rows)
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Re-runs this command detached and waits until it is listening (or says why not).
fn start_background(dir: &Path, name: &str, bind: SocketAddr) -> Result<ExitCode, CliError> {
    openshell_pki::fs::ensure_private_dir(dir)?;
    let pidfile = dir.join(format!("{name}-{}.pid", bind.port()));
    if let Some(e) = read_entries(dir)
        .into_iter()
        .find(|e| e.file == pidfile && e.running)
    {
        return Err(CliError::hint(
            format!(
                "a forward of port {} to {name} is already running (pid {})",
                e.port, e.pid
            ),
            format!("Stop it with: openshell forward stop {} {name}", e.port),
        ));
    }
    let _ = std::fs::remove_file(&pidfile);
    let log = dir.join(format!("{name}-{}.log", bind.port()));
    let log_file = std::fs::File::create(&log)?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(CHILD_MARKER, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    // Its own process group: Ctrl-C in this terminal does not reach it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn()?;
    for _ in 0..300 {
        if pidfile.exists() {
            eprintln!(
                "Forwarding {bind} -> sandbox {name} port {} in the background (pid {}); stop it with: openshell forward stop {} {name}",
                bind.port(),
                child.id(),
                bind.port()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_file(&log);
            let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(CliError::msg(format!(
                "the background forward exited ({status}): {}",
                last.trim_start_matches("error: ")
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    Err(CliError::msg(format!(
        "the background forward did not start listening within 30 s; see {}",
        log.display()
    )))
}

/// Listens on `bind` and relays every connection until interrupted.
async fn serve(
    gw: &ResolvedGateway,
    global: &GlobalArgs,
    dir: &Path,
    name: &str,
    bind: SocketAddr,
) -> Result<ExitCode, CliError> {
    let conn = crate::client::connect(gw, global).await?;
    let sandbox = crate::commands::ssh::get_sandbox(&conn, name).await?;
    let sandbox_id = sandbox.meta.map(|m| m.id).unwrap_or_default();
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        CliError::hint(
            format!("cannot listen on {bind}: {e}"),
            "Choose another local port, or stop what uses it (openshell forward list)",
        )
    })?;
    let port = bind.port();
    let pidfile = if std::env::var_os(CHILD_MARKER).is_some() {
        openshell_pki::fs::ensure_private_dir(dir)?;
        let path = dir.join(format!("{name}-{port}.pid"));
        openshell_pki::fs::write_public(
            &path,
            format!("{}\t{sandbox_id}\t{bind}\n", std::process::id()).as_bytes(),
        )?;
        Some(path)
    } else {
        eprintln!("Forwarding {bind} -> sandbox {name} port {port} (Ctrl-C to stop)");
        None
    };
    let shared = Arc::new(Mutex::new(Arc::new(conn.conn)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => break Err(CliError::msg(format!("cannot accept on {bind}: {e}"))),
                };
                let _ = socket.set_nodelay(true);
                let shared = shared.clone();
                let gw = gw.clone();
                let global = global.clone();
                let target = TunnelTarget::SandboxPort(name.to_string(), port);
                tokio::spawn(async move {
                    if let Err(e) = relay_one(socket, &shared, &gw, &global, &target).await {
                        eprintln!("warning: connection from {peer} not forwarded: {e}");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break Ok(ExitCode::SUCCESS),
            _ = term.recv() => break Ok(ExitCode::SUCCESS),
        }
    };
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// One local connection: a tunnel on the shared connection (reconnecting once if it broke).
async fn relay_one(
    mut socket: tokio::net::TcpStream,
    shared: &Mutex<Arc<Connection>>,
    gw: &ResolvedGateway,
    global: &GlobalArgs,
    target: &TunnelTarget,
) -> Result<(), CliError> {
    let conn = shared.lock().await.clone();
    let mut tunnel = match conn.open_tunnel(target).await {
        Ok(t) => t,
        Err(e) if conn.close_reason().is_some() => {
            tracing::info!(error = %e, "gateway connection lost; reconnecting");
            let fresh = Arc::new(crate::client::connect(gw, global).await?.conn);
            *shared.lock().await = fresh.clone();
            fresh.open_tunnel(target).await?
        }
        Err(e) => return Err(e.into()),
    };
    let _ = tokio::io::copy_bidirectional(&mut socket, &mut tunnel).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse_spec("8080").unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(parse_spec("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_spec("[::1]:9").unwrap().to_string(), "[::1]:9");
        for bad in ["0", "x", "1.2.3.4", "70000", "host:80"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }
}
