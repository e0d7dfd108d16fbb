//! Command-line grammar (clap). Each command group's arguments live with its command module;
//! this file only assembles the tree and the global flags.

use clap::{Args, Parser, Subcommand};

use crate::commands;

/// OpenShell Edge: provision and reach AI-agent sandboxes through a gateway.
#[derive(Debug, Parser)]
#[command(name = "openshell", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Gateway to use (a registered name); overrides OPENSHELL_GATEWAY and the active gateway.
    #[arg(short = 'g', long = "gateway", global = true, value_name = "NAME")]
    pub gateway: Option<String>,
    /// Gateway endpoint URL to use directly, bypassing the registry lookup.
    #[arg(long, global = true, value_name = "URL")]
    pub gateway_endpoint: Option<String>,
    /// Which path to the gateway: auto (QUIC, TCP when UDP is blocked), quic or tcp.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "OPENSHELL_TRANSPORT"
    )]
    pub transport: TransportChoice,
    /// Connect directly even when a connection agent runs for the gateway (also
    /// OPENSHELL_NO_AGENT=1).
    #[arg(long, global = true)]
    pub no_agent: bool,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// Path selection (`--transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    #[default]
    Auto,
    Quic,
    Tcp,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, select and inspect gateways.
    #[command(visible_alias = "gw")]
    Gateway(commands::gateway::GatewayArgs),
    /// Reachability, authentication and version of the active gateway.
    Status(commands::status::StatusArgs),
    /// Who the active gateway says you are: subject, roles, authentication, certificate.
    Whoami(commands::whoami::WhoamiArgs),
    /// Create, list, inspect, stop, start and delete sandboxes.
    #[command(visible_alias = "sb")]
    Sandbox(commands::sandbox::SandboxArgs),
    /// Forward local ports to ports inside sandboxes.
    #[command(visible_alias = "fwd")]
    Forward(commands::forward::ForwardArgs),
    /// Relay stdin/stdout to a sandbox's SSH server (ssh's ProxyCommand; see `sandbox ssh-config`).
    #[command(hide = true)]
    SshProxy(commands::ssh::SshProxyArgs),
    /// A per-gateway background agent that keeps the connection warm for every command.
    Agent(commands::agent::AgentArgs),
    /// Certificate authority: issue, list, inspect, revoke and rotate certificates.
    Pki(commands::pki::PkiArgs),
    /// Diagnose configuration, credentials and connectivity.
    #[command(visible_alias = "dr")]
    Doctor(commands::doctor::DoctorArgs),
    /// Print a shell completion script to stdout.
    Completions(commands::completions::CompletionsArgs),
}
