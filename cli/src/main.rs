//! `openshell`: the command line for OpenShell Edge gateways.
//!
//! Thin by design: parse arguments, run the command, print the error chain, exit non-zero on
//! failure. Exit codes are a contract: 0 success, 1 failure, 2 usage error (clap), and
//! commands that forward a remote exit code (exec) return it unchanged.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = openshell_cli::args::Cli::parse();
    openshell_cli::output::init_logging(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(openshell_cli::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            openshell_cli::output::print_error(&err);
            ExitCode::FAILURE
        }
    }
}
