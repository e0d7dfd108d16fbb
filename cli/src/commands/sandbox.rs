//! `openshell sandbox create|list|get|delete|stop|start`: sandbox lifecycle on the active
//! gateway. `create` waits until the sandbox is Ready (its supervisor connected back). The
//! last sandbox used is remembered per gateway, so NAME may be left out afterwards.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::{
    CreateSandboxRequest, DeleteSandboxRequest, GetSandboxRequest, ListSandboxesRequest, Sandbox,
    SandboxPhase, SandboxSpec, StartSandboxRequest, StopSandboxRequest,
};
use serde::Serialize;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::client::GatewayConnection;
use crate::config::ResolvedGateway;
use crate::output::{OutputFormat, emit, table};

#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    #[command(subcommand)]
    pub command: SandboxCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox and wait until it is Ready.
    Create(CreateArgs),
    /// List your sandboxes (`--all`: every owner's, for admins and viewers).
    List {
        /// Only sandboxes with these labels (k=v, repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        selector: Vec<String>,
        /// Every owner's sandboxes, not only yours (admins and viewers).
        #[arg(short = 'A', long)]
        all: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show one sandbox.
    Get {
        name: Option<String>,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Delete sandboxes (their workloads and records).
    Delete {
        names: Vec<String>,
        /// Delete every sandbox you own.
        #[arg(long, conflicts_with = "names")]
        all: bool,
    },
    /// Print a sandbox's output (its main process's stdout and stderr).
    Logs {
        name: Option<String>,
        /// Keep printing new output until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (0 = all).
        #[arg(short = 'n', long, default_value_t = 0)]
        tail: u32,
    },
    /// Follow status changes (one line per change) until interrupted.
    Watch {
        /// Only this sandbox (default: all of yours).
        name: Option<String>,
        #[arg(long, value_delimiter = ',')]
        selector: Vec<String>,
        /// Every owner's sandboxes, not only yours (admins and viewers).
        #[arg(short = 'A', long)]
        all: bool,
    },
    /// Stop a sandbox (its files are kept).
    Stop { name: Option<String> },
    /// Start a stopped sandbox.
    Start { name: Option<String> },
    /// Open an interactive shell in a sandbox (over SSH through the gateway; Ctrl-D exits).
    Connect { name: Option<String> },
    /// Run a command in a sandbox; its exit code becomes this command's.
    Exec(ExecArgs),
    /// Print an ssh_config Host block for a sandbox (plain ssh, scp, VS Code Remote-SSH).
    SshConfig { name: Option<String> },
    /// Copy a local file or directory into a sandbox.
    Upload {
        name: String,
        local: std::path::PathBuf,
        /// Where in the sandbox (an existing directory receives it by name; default: home).
        dest: Option<String>,
    },
    /// Copy a file or directory out of a sandbox.
    Download {
        name: String,
        path: String,
        /// Where locally (an existing directory receives it by name; default: .).
        dest: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Sandbox name (default: the last one used).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// Sandbox name (same as NAME).
    #[arg(short = 'n', long = "name", id = "name_flag", conflicts_with = "name")]
    pub name_flag: Option<String>,
    /// Allocate a terminal (default: when stdin and stdout are terminals).
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never allocate a terminal.
    #[arg(long)]
    pub no_tty: bool,
    /// Working directory inside the sandbox.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Environment for the command (K=V, repeatable).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Give up after this many seconds (exit 124); 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Sandbox name (default: generated).
    #[arg(long)]
    pub name: Option<String>,
    /// Local image (default: the gateway's, built by scripts/build-sandbox-image).
    #[arg(long)]
    pub image: Option<String>,
    /// CPU limit in cores (e.g. 1.5).
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory limit: bytes or with a unit (512m, 2g).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Environment variable for the main process (repeatable).
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Label (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Return once created instead of waiting for Ready.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for Ready.
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    pub timeout: u64,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// The sandbox's main process (default: none, the sandbox idles).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `512m`, `2g`, `1024k` or plain bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!("'{s}' is not a size: use bytes or a number with k, m or g (e.g. 512m)")
        })
}

fn pairs(what: &str, items: &[String]) -> Result<HashMap<String, String>, CliError> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| CliError::msg(format!("{what} '{kv}' must be KEY=VALUE")))
        })
        .collect()
}

fn phase_name(s: &Sandbox) -> &'static str {
    match s.status.as_ref().map(|st| st.phase()) {
        Some(SandboxPhase::Provisioning) => "Provisioning",
        Some(SandboxPhase::Ready) => "Ready",
        Some(SandboxPhase::Stopping) => "Stopping",
        Some(SandboxPhase::Stopped) => "Stopped",
        Some(SandboxPhase::Starting) => "Starting",
        Some(SandboxPhase::Error) => "Error",
        Some(SandboxPhase::Deleting) => "Deleting",
        _ => "Unknown",
    }
}

#[derive(Debug, Serialize)]
struct View {
    name: String,
    id: String,
    owner: String,
    phase: &'static str,
    reason: String,
    image: String,
    supervisor_connected: bool,
    labels: std::collections::BTreeMap<String, String>,
    created_at_ms: i64,
}

fn view(s: &Sandbox) -> View {
    let meta = s.meta.clone().unwrap_or_default();
    let status = s.status.clone().unwrap_or_default();
    View {
        name: meta.name,
        id: meta.id,
        owner: meta.owner,
        phase: phase_name(s),
        reason: status.reason,
        image: s
            .spec
            .as_ref()
            .map(|sp| sp.image.clone())
            .unwrap_or_default(),
        supervisor_connected: status.supervisor_connected,
        labels: meta.labels.into_iter().collect(),
        created_at_ms: meta.created_at_ms,
    }
}

fn render_list(items: &[View]) -> String {
    if items.is_empty() {
        return "No sandboxes found.\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.owner.clone(),
                v.phase.into(),
                v.image.clone(),
                v.reason.clone(),
            ]
        })
        .collect();
    table(&["NAME", "OWNER", "PHASE", "IMAGE", "REASON"], &rows)
}

fn render_one(v: &View) -> String {
    let mut out = format!(
        "Sandbox: {}\n  Id: {}\n  Owner: {}\n  Phase: {}\n  Image: {}\n  Supervisor: {}\n",
        v.name,
        v.id,
        v.owner,
        v.phase,
        v.image,
        if v.supervisor_connected {
            "connected"
        } else {
            "not connected"
        }
    );
    if !v.reason.is_empty() {
        out.push_str(&format!("  Reason: {}\n", v.reason));
    }
    out
}

fn last_sandbox_path(gw: &ResolvedGateway) -> std::path::PathBuf {
    gw.user_dir.join(crate::config::registry::LAST_SANDBOX_FILE)
}

fn remember(gw: &ResolvedGateway, name: &str) {
    if gw.source == crate::config::Source::User {
        let _ = openshell_pki::fs::write_public(
            &last_sandbox_path(gw),
            format!("default\n{name}\n").as_bytes(),
        );
    }
}

pub(crate) fn name_or_last(gw: &ResolvedGateway, name: Option<String>) -> Result<String, CliError> {
    if let Some(n) = name {
        return Ok(n);
    }
    let last = std::fs::read_to_string(last_sandbox_path(gw))
        .ok()
        .and_then(|t| t.lines().nth(1).map(|l| l.trim().to_string()))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CliError::msg("No sandbox name provided and no last-used sandbox."))?;
    eprintln!("→ Using sandbox '{last}' (last used)");
    Ok(last)
}

async fn call<T>(
    conn: &GatewayConnection,
    r: Result<tonic::Response<T>, tonic::Status>,
) -> Result<T, CliError> {
    match r {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => Err(conn.rpc_error(s).await),
    }
}

pub async fn run(args: SandboxArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let gw = crate::config::resolve(global)?;
    let conn = crate::client::connect(&gw, global).await?;
    let mut api = OpenShellClient::new(conn.conn.channel());
    use crate::commands::{ssh, transfer};
    match args.command {
        SandboxCommand::Connect { name } => {
            let name = name_or_last(&gw, name)?;
            remember(&gw, &name);
            return ssh::connect(&conn, global, &name).await;
        }
        SandboxCommand::Exec(e) => {
            let name = name_or_last(&gw, e.name.or(e.name_flag))?;
            remember(&gw, &name);
            let opts = ssh::ExecOptions {
                tty: if e.tty {
                    Some(true)
                } else if e.no_tty {
                    Some(false)
                } else {
                    None
                },
                workdir: e.workdir,
                env: pairs("--env", &e.env)?.into_iter().collect(),
                timeout: e.timeout,
            };
            return ssh::exec(&conn, global, &name, &e.command, &opts).await;
        }
        SandboxCommand::SshConfig { name } => {
            let name = name_or_last(&gw, name)?;
            print!("{}", ssh::ssh_config(&conn, global, &name).await?);
            return Ok(ExitCode::SUCCESS);
        }
        SandboxCommand::Upload { name, local, dest } => {
            remember(&gw, &name);
            return transfer::upload(&conn, global, &name, &local, dest.as_deref()).await;
        }
        SandboxCommand::Download { name, path, dest } => {
            remember(&gw, &name);
            return transfer::download(&conn, global, &name, &path, dest.as_deref()).await;
        }
        _ => {}
    }
    match args.command {
        SandboxCommand::Create(c) => {
            let spec = SandboxSpec {
                image: c.image.unwrap_or_default(),
                cpu: c.cpu.unwrap_or(0.0),
                memory_bytes: c.memory.map(|m| m as i64).unwrap_or(0),
                env: pairs("--env", &c.env)?,
                command: c.command,
                ..Default::default()
            };
            let created = call(
                &conn,
                api.create_sandbox(CreateSandboxRequest {
                    name: c.name.unwrap_or_default(),
                    spec: Some(spec),
                    labels: pairs("--label", &c.labels)?,
                })
                .await,
            )
            .await?;
            let name = view(&created).name;
            remember(&gw, &name);
            eprintln!("Created sandbox: {name}");
            let mut current = created;
            if !c.no_wait {
                let spinner = crate::output::Spinner::start(format!(
                    "waiting for sandbox {name} to be Ready"
                ));
                let deadline = Instant::now() + Duration::from_secs(c.timeout);
                loop {
                    match phase_name(&current) {
                        "Ready" => break,
                        "Error" => {
                            spinner.finish().await;
                            return Err(CliError::hint(
                                format!("sandbox {name} failed: {}", view(&current).reason),
                                format!("Inspect it with: openshell sandbox get {name}"),
                            ));
                        }
                        _ => {}
                    }
                    if Instant::now() >= deadline {
                        spinner.finish().await;
                        return Err(CliError::hint(
                            format!(
                                "sandbox {name} is not Ready after {}s ({}: {})",
                                c.timeout,
                                phase_name(&current),
                                view(&current).reason
                            ),
                            "Check that containers can reach the gateway (it must listen on an address they can reach, e.g. --listen 0.0.0.0:17670)",
                        ));
                    }
                    // Short: Ready usually follows within a few hundred ms, and a poll is
                    // one small RPC on the open connection.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    current = call(
                        &conn,
                        api.get_sandbox(GetSandboxRequest { name: name.clone() })
                            .await,
                    )
                    .await?;
                }
                spinner.finish().await;
            }
            emit(c.output, &view(&current), render_one)?;
        }
        SandboxCommand::List {
            selector,
            all,
            output,
        } => {
            let selector = pairs("--selector", &selector)?;
            let list = call(
                &conn,
                api.list_sandboxes(ListSandboxesRequest {
                    selector,
                    all,
                    ..Default::default()
                })
                .await,
            )
            .await?;
            let views: Vec<View> = list.sandboxes.iter().map(view).collect();
            emit(output, &views, |v| render_list(v))?;
        }
        SandboxCommand::Get { name, output } => {
            let name = name_or_last(&gw, name)?;
            let s = call(
                &conn,
                api.get_sandbox(GetSandboxRequest { name: name.clone() })
                    .await,
            )
            .await?;
            remember(&gw, &name);
            emit(output, &view(&s), render_one)?;
        }
        SandboxCommand::Delete { names, all } => {
            let names = if all {
                call(
                    &conn,
                    api.list_sandboxes(ListSandboxesRequest::default()).await,
                )
                .await?
                .sandboxes
                .iter()
                .map(|s| view(s).name)
                .collect()
            } else if names.is_empty() {
                vec![name_or_last(&gw, None)?]
            } else {
                names
            };
            for name in names {
                call(
                    &conn,
                    api.delete_sandbox(DeleteSandboxRequest { name: name.clone() })
                        .await,
                )
                .await?;
                eprintln!("✓ Deleted sandbox {name}");
            }
        }
        SandboxCommand::Logs { name, follow, tail } => {
            use futures::StreamExt;
            let name = name_or_last(&gw, name)?;
            let mut lines = call(
                &conn,
                api.get_sandbox_logs(openshell_proto::GetSandboxLogsRequest {
                    name,
                    follow,
                    tail,
                    since_ms: 0,
                })
                .await,
            )
            .await?;
            while let Some(line) = lines.next().await {
                let line = match line {
                    Ok(l) => l,
                    Err(s) => return Err(conn.rpc_error(s).await),
                };
                if line.source == "stderr" {
                    eprintln!("{}", line.line);
                } else {
                    crate::output::print_stdout(&format!("{}\n", line.line))?;
                }
            }
        }
        SandboxCommand::Watch {
            name,
            selector,
            all,
        } => {
            use futures::StreamExt;
            let mut events = call(
                &conn,
                api.watch_sandboxes(openshell_proto::WatchSandboxesRequest {
                    name: name.unwrap_or_default(),
                    selector: pairs("--selector", &selector)?,
                    all,
                })
                .await,
            )
            .await?;
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(e) => e,
                    Err(s) => return Err(conn.rpc_error(s).await),
                };
                let kind = match event.kind() {
                    openshell_proto::sandbox_event::Kind::Added => "ADDED",
                    openshell_proto::sandbox_event::Kind::Modified => "MODIFIED",
                    openshell_proto::sandbox_event::Kind::Deleted => "DELETED",
                    openshell_proto::sandbox_event::Kind::Unspecified => "UNKNOWN",
                };
                let sb = event.sandbox.unwrap_or_default();
                let v = view(&sb);
                let line = if kind == "DELETED" {
                    format!("{kind} {}", v.name)
                } else {
                    format!("{kind} {} {} {}", v.name, v.phase, v.reason)
                };
                crate::output::print_stdout(&format!("{}\n", line.trim_end()))?;
            }
        }
        SandboxCommand::Stop { name } => {
            let name = name_or_last(&gw, name)?;
            call(
                &conn,
                api.stop_sandbox(StopSandboxRequest { name: name.clone() })
                    .await,
            )
            .await?;
            eprintln!("✓ Stopped sandbox {name}");
        }
        SandboxCommand::Start { name } => {
            let name = name_or_last(&gw, name)?;
            call(
                &conn,
                api.start_sandbox(StartSandboxRequest { name: name.clone() })
                    .await,
            )
            .await?;
            eprintln!("✓ Started sandbox {name}");
        }
        SandboxCommand::Connect { .. }
        | SandboxCommand::Exec(_)
        | SandboxCommand::SshConfig { .. }
        | SandboxCommand::Upload { .. }
        | SandboxCommand::Download { .. } => unreachable!("handled above"),
    }
    conn.conn.close().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("-1m").is_err());
        assert!(parse_size("10x").is_err());
        assert!(parse_size("0").is_err());
    }
}
