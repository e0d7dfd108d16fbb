//! Placeholder replaced by the owner of this module.

use std::process::ExitCode;

use crate::CliError;
use crate::args::GlobalArgs;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {}

pub async fn run(_args: StatusArgs, _global: &GlobalArgs) -> Result<ExitCode, CliError> {
    Err(CliError::msg("this command is not built yet"))
}
