//! One module per command group; `dispatch` routes a parsed command line to it.

pub mod agent;
pub mod completions;
pub mod doctor;
pub mod forward;
pub mod gateway;
pub mod gateway_info;
pub mod pki;
pub mod sandbox;
pub mod ssh;
pub mod status;
pub mod transfer;
pub mod whoami;

use std::process::ExitCode;

use crate::CliError;
use crate::args::{Cli, Command};

pub async fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    let global = cli.global;
    match cli.command {
        Command::Gateway(args) => gateway::run(args, &global).await,
        Command::Status(args) => status::run(args, &global).await,
        Command::Agent(args) => agent::run(args, &global).await,
        Command::Pki(args) => pki::run(args, &global).await,
        Command::Sandbox(args) => sandbox::run(args, &global).await,
        Command::Doctor(args) => doctor::run(args, &global).await,
        Command::Forward(args) => forward::run(args, &global).await,
        Command::SshProxy(args) => ssh::proxy(args, &global).await,
        Command::Completions(args) => completions::run(args),
        Command::Whoami(args) => whoami::run(args, &global).await,
    }
}
