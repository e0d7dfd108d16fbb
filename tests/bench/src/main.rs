//! `openshell-bench`: the transport benchmark of issue 7. QUIC and the TCP fallback
//! (TLS 1.3 and HTTP/2) against one gateway process, side by side, over the packet-level
//! link emulator; results as JSON, Markdown tables and SVG charts.
//!
//! Owns: the measurement plan, the client-side measurements, result files and charts.
//! Does not own: the link emulator (`openshell-linkem`), the transport or the gateway.
//! A benchmark tool, not a library: errors are `anyhow` throughout, like a script's.
//!
//! Subcommands: `run` (as root; `scripts/bench` is the front door), `worker` and `hold`
//! (started by `run` inside a namespace), `report` (re-render from results.json).
//! Exit codes: 0 done, 1 failed or interrupted (partial results are still written),
//! 2 bad flags.

mod plan;
mod report;
mod results;
mod run;
mod stats;
mod svg;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "openshell-bench",
    about = "QUIC vs TCP transport benchmark over the link emulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the benchmark (needs root: it creates network namespaces).
    Run(run::RunArgs),
    /// One client measurement; prints JSON. Started by `run` inside a namespace.
    Worker(worker::WorkerArgs),
    /// Hold many idle connections for the memory measurement. Started by `run`.
    Hold(worker::HoldArgs),
    /// Re-render summary.md and the charts from a results.json.
    Report {
        #[arg(long, default_value = "bench-results")]
        dir: PathBuf,
    },
}

/// Environment variable with a tracing filter for a worker's own events (e.g.
/// `openshell_transport::congestion=trace` for the controller's rounds); they go to stderr.
const LOG_ENV: &str = "OPENSHELL_BENCH_LOG";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Ok(filter) = std::env::var(LOG_ENV) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await.map(|_| ()),
            Command::Worker(args) => {
                let out = worker::run(args).await?;
                println!("{}", serde_json::to_string(&out)?);
                Ok(())
            }
            Command::Hold(args) => worker::hold(args).await,
            Command::Report { dir } => {
                let text = std::fs::read(dir.join("results.json"))?;
                let results: results::Results = serde_json::from_slice(&text)?;
                run::write_report(&dir, &results)?;
                print!("{}", report::markdown(&results));
                Ok(())
            }
        }
    });
    // Workers leave tasks (bulk writers, keep-alives) behind; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
