//! SSH into sandboxes through the gateway: `sandbox connect`, `sandbox exec`,
//! `sandbox ssh-config` and the `ssh-proxy` they all ride on.
//!
//! ```text
//! ssh (OpenSSH client) ── ProxyCommand: openshell ssh-proxy -g GW NAME
//!                              │ stdin/stdout = the SSH byte stream
//!                              └─ CONNECT sandbox/NAME/ssh on the CLI's QUIC connection
//!                                   gateway ── relay ── supervisor's embedded SSH server
//! ```
//!
//! Host keys are pinned, never skipped: the gateway generates each sandbox's SSH host key at
//! create and reports its public half in the sandbox's status (read over the CLI's mTLS
//! connection). Before every connection the CLI writes it to the gateway's own known_hosts
//! file (`gateways/<gw>/known_hosts`, alias `openshell-<sandbox>`) and runs ssh with
//! `StrictHostKeyChecking=yes` against that file, so a sandbox that answers with any other
//! key is refused by ssh itself.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use openshell_proto::open_shell_client::OpenShellClient;
use openshell_proto::{GetSandboxRequest, SandboxPhase};
use openshell_transport::TunnelTarget;

use crate::CliError;
use crate::args::GlobalArgs;
use crate::client::GatewayConnection;
use crate::config::ResolvedGateway;

/// The known_hosts file of one gateway's sandboxes.
pub const KNOWN_HOSTS_FILE: &str = "known_hosts";

/// `openshell ssh-proxy`: the ProxyCommand of ssh connections to sandboxes.
#[derive(Debug, clap::Args)]
pub struct SshProxyArgs {
    /// Sandbox name.
    #[arg(value_name = "NAME", required_unless_present = "name_flag")]
    pub name: Option<String>,
    /// Sandbox name (upstream spelling; same as the positional NAME).
    #[arg(long = "name", id = "name_flag", conflicts_with = "name")]
    pub name_flag: Option<String>,
    /// Gateway name (upstream spelling; same as the global -g).
    #[arg(long = "gateway-name")]
    pub gateway_name: Option<String>,
}

/// Everything needed to run `ssh` against one sandbox.
pub struct SshTarget {
    /// The host alias ssh uses (`openshell-<name>`), also the known_hosts entry.
    pub alias: String,
    pub known_hosts: PathBuf,
    /// `openshell ssh-proxy ...` as one shell-quoted ProxyCommand line.
    pub proxy_command: String,
}

/// Single-quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Replaces the known_hosts entry of `alias` (atomically; other entries are kept).
pub fn pin_host_key(known_hosts: &Path, alias: &str, key: &str) -> Result<(), CliError> {
    let key = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let existing = std::fs::read_to_string(known_hosts).unwrap_or_default();
    let mut out: Vec<String> = existing
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(alias))
        .map(str::to_string)
        .collect();
    out.push(format!("{alias} {key}"));
    if let Some(dir) = known_hosts.parent() {
        openshell_pki::fs::ensure_private_dir(dir)?;
    }
    openshell_pki::fs::write_public(known_hosts, (out.join("\n") + "\n").as_bytes())?;
    Ok(())
}

/// The command line that re-invokes this CLI as ssh's ProxyCommand, with the same gateway
/// selection as the current invocation.
fn proxy_command(gw: &ResolvedGateway, global: &GlobalArgs, name: &str) -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "openshell".to_string());
    let mut words = vec![shell_quote(&exe)];
    match &global.gateway_endpoint {
        Some(url) => words.extend(["--gateway-endpoint".into(), shell_quote(url)]),
        None => words.extend(["-g".into(), shell_quote(&gw.name)]),
    }
    if global.transport != crate::args::TransportChoice::Auto {
        let t = match global.transport {
            crate::args::TransportChoice::Quic => "quic",
            _ => "tcp",
        };
        words.extend(["--transport".into(), t.into()]);
    }
    words.extend(["ssh-proxy".into(), shell_quote(name)]);
    words.join(" ")
}

/// One sandbox by name, or the gateway's answer as the error users see.
pub async fn get_sandbox(
    conn: &GatewayConnection,
    name: &str,
) -> Result<openshell_proto::Sandbox, CliError> {
    let mut api = OpenShellClient::new(conn.conn.channel());
    match api
        .get_sandbox(GetSandboxRequest {
            name: name.to_string(),
        })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => Err(conn.rpc_error(s).await),
    }
}

/// Checks the sandbox can be reached, pins its host key, and says how to ssh to it.
pub async fn prepare(
    conn: &GatewayConnection,
    global: &GlobalArgs,
    name: &str,
) -> Result<SshTarget, CliError> {
    let sandbox = get_sandbox(conn, name).await?;
    let status = sandbox.status.unwrap_or_default();
    if status.phase != SandboxPhase::Ready as i32 {
        let phase = SandboxPhase::try_from(status.phase)
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("SANDBOX_PHASE_")
                    .to_lowercase()
            })
            .unwrap_or_else(|_| "unknown".into());
        let hint = if phase == "stopped" {
            format!("Start it with: openshell sandbox start {name}")
        } else {
            format!("Check it with: openshell sandbox get {name}")
        };
        let reason = if status.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", status.reason)
        };
        return Err(CliError::hint(
            format!("sandbox {name} is not ready (phase {phase}{reason})"),
            hint,
        ));
    }
    if status.ssh_host_key.trim().is_empty() {
        return Err(CliError::hint(
            format!(
                "the gateway has no SSH host key for sandbox {name}, so its identity cannot be checked"
            ),
            format!(
                "Recreate the sandbox: openshell sandbox delete {name} && openshell sandbox create --name {name}"
            ),
        ));
    }
    let gw = &conn.gateway;
    let alias = format!("openshell-{name}");
    let known_hosts = gw.user_dir.join(KNOWN_HOSTS_FILE);
    pin_host_key(&known_hosts, &alias, &status.ssh_host_key)?;
    Ok(SshTarget {
        alias,
        known_hosts,
        proxy_command: proxy_command(gw, global, name),
    })
}

/// The `-o` options every ssh to a sandbox uses.
fn ssh_options(t: &SshTarget) -> Vec<String> {
    vec![
        format!("ProxyCommand={}", t.proxy_command),
        format!("HostKeyAlias={}", t.alias),
        format!("UserKnownHostsFile={}", t.known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".into(),
        "StrictHostKeyChecking=yes".into(),
        "BatchMode=yes".into(),
        "ServerAliveInterval=15".into(),
        "ServerAliveCountMax=3".into(),
        "LogLevel=ERROR".into(),
    ]
}

/// An `ssh` command to the sandbox (no user config: `-F /dev/null`), before its own flags.
pub fn ssh_command(t: &SshTarget) -> Result<std::process::Command, CliError> {
    let ssh = find_ssh()?;
    let mut cmd = std::process::Command::new(ssh);
    cmd.args(["-F", "/dev/null"]);
    for o in ssh_options(t) {
        cmd.arg("-o").arg(o);
    }
    Ok(cmd)
}

pub(crate) fn find_ssh() -> Result<PathBuf, CliError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("ssh"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError::hint(
                "the OpenSSH client (ssh) is not installed",
                "Install it: sudo apt-get install openssh-client",
            )
        })
}

/// Runs a prepared ssh command with the terminal attached; its exit code becomes ours.
pub fn run_ssh(mut cmd: std::process::Command) -> Result<ExitCode, CliError> {
    let status = cmd
        .status()
        .map_err(|e| CliError::msg(format!("cannot run ssh: {e}")))?;
    Ok(exit_code_of(status))
}

/// A child's exit status as our exit code: its code, or 128+signal when it was killed.
pub fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
        _ => ExitCode::FAILURE,
    }
}

/// `sandbox connect NAME`: an interactive shell with a pseudo-terminal.
pub async fn connect(
    conn: &GatewayConnection,
    global: &GlobalArgs,
    name: &str,
) -> Result<ExitCode, CliError> {
    let t = prepare(conn, global, name).await?;
    let mut cmd = ssh_command(&t)?;
    cmd.args(["-o", "RequestTTY=yes", "-o", "SetEnv=TERM=xterm-256color"]);
    if let Ok(term) = std::env::var("TERM") {
        cmd.arg("-o").arg(format!("SetEnv=TERM={term}"));
    }
    cmd.arg(format!("sandbox@{}", t.alias));
    run_ssh(cmd)
}

/// How `sandbox exec` should run the command.
#[derive(Debug, Default)]
pub struct ExecOptions {
    /// None = a terminal when stdin and stdout are terminals.
    pub tty: Option<bool>,
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    /// Seconds; 0 = no limit.
    pub timeout: u64,
}

/// The remote command line: `cd DIR && exec env K=V CMD...`, every word quoted.
pub fn remote_command(command: &[String], opts: &ExecOptions) -> String {
    let mut line = String::new();
    if let Some(dir) = &opts.workdir {
        line.push_str(&format!("cd {} && ", shell_quote(dir)));
    }
    line.push_str("exec ");
    if !opts.env.is_empty() {
        line.push_str("env ");
        for (k, v) in &opts.env {
            line.push_str(&shell_quote(&format!("{k}={v}")));
            line.push(' ');
        }
    }
    line.push_str(
        &command
            .iter()
            .map(|w| shell_quote(w))
            .collect::<Vec<_>>()
            .join(" "),
    );
    line
}

/// `sandbox exec NAME -- CMD...`: runs CMD with stdin, stdout and stderr streamed; the
/// remote exit code becomes the CLI's (124 when --timeout expires; 255 when ssh itself fails).
pub async fn exec(
    conn: &GatewayConnection,
    global: &GlobalArgs,
    name: &str,
    command: &[String],
    opts: &ExecOptions,
) -> Result<ExitCode, CliError> {
    use std::io::IsTerminal;
    if command.is_empty() {
        return Err(CliError::hint(
            "no command given",
            format!("Name one after --: openshell sandbox exec {name} -- ls -la"),
        ));
    }
    let t = prepare(conn, global, name).await?;
    let mut cmd = ssh_command(&t)?;
    let tty = opts
        .tty
        .unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal());
    cmd.arg(if tty { "-tt" } else { "-T" });
    cmd.arg(format!("sandbox@{}", t.alias));
    cmd.arg("--").arg(remote_command(command, opts));
    if opts.timeout == 0 {
        return run_ssh(cmd);
    }
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CliError::msg(format!("cannot run ssh: {e}")))?;
    match tokio::time::timeout(std::time::Duration::from_secs(opts.timeout), child.wait()).await {
        Ok(status) => Ok(exit_code_of(status?)),
        Err(_) => {
            let _ = child.kill().await;
            eprintln!(
                "error: the command did not finish within {} s",
                opts.timeout
            );
            Ok(ExitCode::from(124))
        }
    }
}

/// `sandbox ssh-config NAME`: a Host block for ~/.ssh/config (plain ssh, scp, VS Code).
pub async fn ssh_config(
    conn: &GatewayConnection,
    global: &GlobalArgs,
    name: &str,
) -> Result<String, CliError> {
    let t = prepare(conn, global, name).await?;
    let mut out = format!("Host {}\n", t.alias);
    out.push_str("    User sandbox\n");
    for o in ssh_options(&t) {
        // BatchMode and LogLevel suit the CLI's own runs, not an interactive user's.
        if o.starts_with("BatchMode") || o.starts_with("LogLevel") {
            continue;
        }
        let (k, v) = o.split_once('=').unwrap_or((&o, ""));
        out.push_str(&format!("    {k} {v}\n"));
    }
    Ok(out)
}

/// `openshell ssh-proxy NAME`: joins stdin/stdout to the sandbox's SSH server. Writes the
/// pinned host key first, so plain `ssh` with an `ssh-config` block always checks the key
/// the gateway holds now (a recreated sandbox has a new one).
pub async fn proxy(args: SshProxyArgs, global: &GlobalArgs) -> Result<ExitCode, CliError> {
    let mut global = global.clone();
    if args.gateway_name.is_some() {
        global.gateway = args.gateway_name.clone();
    }
    let name = args
        .name
        .or(args.name_flag)
        .ok_or_else(|| CliError::msg("no sandbox name given"))?;
    let gw = crate::config::resolve(&global)?;
    let conn = crate::client::connect(&gw, &global).await?;
    prepare(&conn, &global, &name).await?;
    let tunnel = conn
        .conn
        .open_tunnel(&TunnelTarget::SandboxSsh(name.clone()))
        .await?;
    let (mut from_sandbox, mut to_sandbox) = tokio::io::split(tunnel);
    // Up: ssh's stdin to the sandbox, then a half-close. Down: the sandbox to ssh's stdout;
    // the session is over when the sandbox side ends.
    let upstream = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_sandbox).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_sandbox).await;
    });
    let mut stdout = tokio::io::stdout();
    let result = tokio::io::copy(&mut from_sandbox, &mut stdout).await;
    let _ = tokio::io::AsyncWriteExt::flush(&mut stdout).await;
    upstream.abort();
    conn.conn.close().await;
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::msg(format!(
            "the connection to sandbox {name} broke: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        assert_eq!(shell_quote("ls"), "ls");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn remote_command_quotes_every_word() {
        let opts = ExecOptions {
            workdir: Some("/tmp/my dir".into()),
            env: vec![("A".into(), "x y".into())],
            ..Default::default()
        };
        assert_eq!(
            remote_command(&["echo".into(), "$HOME; rm".into()], &opts),
            "cd '/tmp/my dir' && exec env 'A=x y' echo '$HOME; rm'"
        );
    }

    #[test]
    fn pinning_replaces_only_its_own_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gw").join(KNOWN_HOSTS_FILE);
        pin_host_key(&file, "openshell-a", "ssh-ed25519 AAAA1 comment").unwrap();
        pin_host_key(&file, "openshell-b", "ssh-ed25519 BBBB").unwrap();
        pin_host_key(&file, "openshell-a", "ssh-ed25519 AAAA2").unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            "openshell-b ssh-ed25519 BBBB\nopenshell-a ssh-ed25519 AAAA2\n"
        );
    }
}
