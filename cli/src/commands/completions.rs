//! `openshell completions bash|zsh|fish|powershell`: a completion script on stdout.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::CliError;
use crate::args::Cli;

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// Shell to generate completions for.
    pub shell: clap_complete::Shell,
}

pub fn run(args: CompletionsArgs) -> Result<ExitCode, CliError> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "openshell", &mut buf);
    crate::output::print_stdout(&String::from_utf8_lossy(&buf))?;
    Ok(ExitCode::SUCCESS)
}
