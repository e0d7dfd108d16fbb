//! The `openshell` CLI as a library, so the binary stays a thin `main`.
//!
//! Layout: `args` (clap definitions), `config` (the on-disk gateway registry under
//! `~/.config/openshell`), `client` (connecting to the resolved gateway over QUIC or TCP),
//! `agent` (the per-gateway connection agent), `commands/*` (one module per command group),
//! `output` (tables, JSON, YAML, errors).

pub mod agent;
pub mod args;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;

use std::process::ExitCode;

pub use error::CliError;

/// Runs one parsed command line.
pub async fn run(cli: args::Cli) -> Result<ExitCode, CliError> {
    commands::dispatch(cli).await
}
