//! `openshell-linkem`: an emulated lossy link from the shell. Thin: parse arguments, turn
//! them into a validated [`Impairment`], run.
//!
//! Exit codes: 0 success; 1 runtime failure (link setup, I/O); 2 invalid arguments or
//! settings; `run` exits with CMD_A's code (128+N if a signal N killed it), or 130/143 if
//! the emulator itself got SIGINT/SIGTERM.

use std::ffi::OsString;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use openshell_linkem::probe::{ProbeConfig, run_echo, run_probe};
use openshell_linkem::{Direction, GilbertElliott, Impairment, JitterOrder, Link, Side, parse};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "openshell-linkem",
    version,
    about = "Emulate a lossy network link between two network namespaces (a netem replacement).",
    long_about = "Emulate a lossy network link between two network namespaces joined by TUN \
devices and a userspace forwarder (a netem replacement). Needs root, /dev/net/tun and iproute2.\n\n\
Exit codes: 0 success; 1 runtime failure; 2 invalid arguments or settings; `run` exits with \
CMD_A's code."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a link, print its endpoints as one JSON line, forward until SIGINT/SIGTERM
    /// (or --duration), then clean up and print the counters as one JSON line.
    Up {
        #[command(flatten)]
        link: LinkArgs,
        /// Stop by itself after this long.
        #[arg(long, value_parser = parse::duration)]
        duration: Option<Duration>,
    },
    /// Run CMD_A in namespace A and (optionally) CMD_B in namespace B, then clean up. CMD_B
    /// starts first and is killed when CMD_A exits. Both get OPENSHELL_LINKEM_{A,B}_ADDR
    /// and OPENSHELL_LINKEM_{A,B}_NETNS in their environment.
    ///
    /// Example: openshell-linkem run --delay 50ms -- curl http://10.203.0.2:8000/ -- python3 -m http.server
    Run {
        #[command(flatten)]
        link: LinkArgs,
        /// CMD_A... [-- CMD_B...]
        #[arg(last = true, required = true, num_args = 1.., value_name = "CMD")]
        commands: Vec<OsString>,
    },
    /// UDP echo server (run it inside a namespace): prints {"listening":ADDR}, then echoes
    /// datagrams until idle or --max-duration.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "10s", value_parser = parse::duration)]
        idle_timeout: Duration,
        #[arg(long, default_value = "120s", value_parser = parse::duration)]
        max_duration: Duration,
    },
    /// Measure RTT and loss against an `echo` server; prints one JSON report.
    Probe {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        #[arg(long, default_value = "10ms", value_parser = parse::duration)]
        interval: Duration,
        /// Datagram payload bytes (12..=65000).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(12..=65000))]
        size: u16,
        /// How long to wait for replies after the last send.
        #[arg(long, default_value = "1s", value_parser = parse::duration)]
        wait: Duration,
    },
}

#[derive(Args)]
struct LinkArgs {
    #[command(flatten)]
    imp: ImpairmentArgs,
    /// Which directions get the impairment; the other one stays perfect.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    direction: Which,
    /// Seed of the random draws (default: random, printed by `up`).
    #[arg(long)]
    seed: Option<u64>,
    /// MTU of both devices.
    #[arg(long, default_value_t = openshell_linkem::DEFAULT_MTU)]
    mtu: u32,
    /// Address of side A (default 10.203.<n>.1).
    #[arg(long, requires = "addr_b")]
    addr_a: Option<Ipv4Addr>,
    /// Address of side B (default 10.203.<n>.2).
    #[arg(long, requires = "addr_a")]
    addr_b: Option<Ipv4Addr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    Both,
    AToB,
    BToA,
}

#[derive(Args)]
struct ImpairmentArgs {
    /// One-way delay, e.g. 50ms (0..=60s).
    #[arg(long, default_value = "0", value_parser = parse::duration, allow_hyphen_values = true)]
    delay: Duration,
    /// Uniform jitter half-width, e.g. 5ms (0..=delay).
    #[arg(long, default_value = "0", value_parser = parse::duration, allow_hyphen_values = true)]
    jitter: Duration,
    /// Let jitter reorder packets (default: keep order).
    #[arg(long)]
    jitter_reorder: bool,
    /// Independent loss, e.g. 2% or 0.02.
    #[arg(long, value_parser = parse::probability, allow_hyphen_values = true)]
    loss: Option<f64>,
    /// Gilbert-Elliott burst loss p,r (Good->Bad, Bad->Good), e.g. 1%,30%.
    #[arg(long, value_parser = parse::burst_loss)]
    burst_loss: Option<GilbertElliott>,
    /// Hold back a share of packets by a delay so later ones overtake, e.g. 5%,10ms.
    #[arg(long, value_parser = parse::reorder)]
    reorder: Option<(f64, Duration)>,
    /// Rate limit, e.g. 100mbit, 512kbit.
    #[arg(long, value_parser = parse::rate)]
    rate: Option<u64>,
    /// Queue limit in packets (tail drop).
    #[arg(long, default_value_t = openshell_linkem::DEFAULT_QUEUE)]
    queue: usize,
}

impl ImpairmentArgs {
    fn to_impairment(&self) -> openshell_linkem::Result<Impairment> {
        let mut b = Impairment::builder()
            .delay(self.delay)
            .jitter(self.jitter)
            .jitter_order(if self.jitter_reorder {
                JitterOrder::Reorder
            } else {
                JitterOrder::Keep
            })
            .loss(self.loss.unwrap_or(0.0))
            .queue_limit(self.queue);
        if let Some(ge) = self.burst_loss {
            b = b.burst_loss(ge);
        }
        if let Some((p, d)) = self.reorder {
            b = b.reorder(p, d);
        }
        if let Some(rate) = self.rate {
            b = b.rate_bps(rate);
        }
        b.build()
    }
}

/// A failure with its exit code.
struct Failure(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(1, e.into())
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Libraries emit events; the binary decides where they go (stderr, stdout is data).
    let filter = std::env::var("OPENSHELL_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::from)
        .and_then(|rt| rt.block_on(run(cli.cmd)));
    match result {
        Ok(code) => code,
        Err(Failure(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode, Failure> {
    match cmd {
        Cmd::Up { link, duration } => up(link, duration).await,
        Cmd::Run { link, commands } => run_commands(link, commands).await,
        Cmd::Echo {
            listen,
            idle_timeout,
            max_duration,
        } => {
            let n = tokio::task::spawn_blocking(move || {
                run_echo(listen, idle_timeout, max_duration, std::io::stdout())
            })
            .await?
            .with_context(|| format!("udp echo on {listen}"))?;
            tracing::info!(echoed = n, "echo finished");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe {
            target,
            count,
            interval,
            size,
            wait,
        } => {
            let cfg = ProbeConfig {
                target,
                count,
                interval,
                size: size.into(),
                wait,
            };
            let report = tokio::task::spawn_blocking(move || run_probe(&cfg))
                .await?
                .with_context(|| format!("udp probe of {target}"))?;
            emit(&serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Print one line to stdout; a closed pipe is not an error (the reader lost interest).
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installed before the link exists, so a signal during setup still leads to teardown.
    fn install() -> anyhow::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// The exit code for the signal received (128 + signal number).
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.term.recv() => 128 + 15,
            _ = self.int.recv() => 128 + 2,
        }
    }
}

fn build_link(args: &LinkArgs) -> Result<Link, Failure> {
    let imp = args.imp.to_impairment().map_err(usage)?;
    let mut b = Link::builder().mtu(args.mtu);
    b = match args.direction {
        Which::Both => b.impairment(imp),
        Which::AToB => b.direction(Direction::AtoB, imp),
        Which::BToA => b.direction(Direction::BtoA, imp),
    };
    if let Some(seed) = args.seed {
        b = b.seed(seed);
    }
    if let (Some(a), Some(bb)) = (args.addr_a, args.addr_b) {
        b = b.addresses(a, bb);
    }
    b.build().map_err(|e| match e {
        openshell_linkem::Error::InvalidSetting { .. } => usage(e),
        e => Failure::from(anyhow::Error::new(e).context("creating the link")),
    })
}

fn stats_json(link: &Link) -> serde_json::Value {
    serde_json::json!({
        "stats": {
            "a_to_b": link.stats(Direction::AtoB),
            "b_to_a": link.stats(Direction::BtoA),
        }
    })
}

async fn up(args: LinkArgs, duration: Option<Duration>) -> Result<ExitCode, Failure> {
    let mut signals = Signals::install()?;
    let link = build_link(&args)?;
    emit(
        &serde_json::json!({
            "a": link.a(),
            "b": link.b(),
            "seed": link.seed(),
            "pid": std::process::id(),
            "a_to_b": link.impairment(Direction::AtoB).to_string(),
            "b_to_a": link.impairment(Direction::BtoA).to_string(),
        })
        .to_string(),
    );
    let timeout = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        sig = signals.recv() => tracing::info!(signal = sig - 128, "stopping on signal"),
        _ = timeout => {}
    }
    let stats = stats_json(&link);
    let forwarder_error = link.forwarder_error();
    link.close().context("tearing down the link")?;
    emit(&stats.to_string());
    if let Some(e) = forwarder_error {
        return Err(anyhow::anyhow!("the forwarder stopped early: {e}").into());
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_commands(args: LinkArgs, commands: Vec<OsString>) -> Result<ExitCode, Failure> {
    let mut parts = commands.splitn(2, |a| a == "--");
    let cmd_a = parts.next().unwrap_or_default().to_vec();
    let cmd_b = parts
        .next()
        .map(<[OsString]>::to_vec)
        .filter(|c| !c.is_empty());
    if cmd_a.is_empty() {
        return Err(usage(anyhow::anyhow!(
            "missing CMD_A: use `openshell-linkem run [FLAGS] -- CMD_A... [-- CMD_B...]`"
        )));
    }
    let mut signals = Signals::install()?;
    let link = build_link(&args)?;
    let spawn = |side: Side, argv: &[OsString]| -> anyhow::Result<tokio::process::Child> {
        let mut cmd = link.command(side, &argv[0]);
        cmd.args(&argv[1..])
            .env("OPENSHELL_LINKEM_A_ADDR", link.a().addr.to_string())
            .env("OPENSHELL_LINKEM_B_ADDR", link.b().addr.to_string())
            .env("OPENSHELL_LINKEM_A_NETNS", &link.a().netns)
            .env("OPENSHELL_LINKEM_B_NETNS", &link.b().netns);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd.spawn()
            .with_context(|| format!("starting {:?} in namespace {side:?}", argv[0]))
    };
    let mut child_b = cmd_b.as_deref().map(|b| spawn(Side::B, b)).transpose()?;
    let mut child_a = spawn(Side::A, &cmd_a)?;
    let code = tokio::select! {
        status = child_a.wait() => {
            let status = status.context("waiting for CMD_A")?;
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(c), _) => c.clamp(0, 255) as u8,
                (None, Some(s)) => (128 + s).clamp(0, 255) as u8,
                _ => 1,
            }
        }
        sig = signals.recv() => {
            let _ = child_a.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child_a.wait()).await;
            sig
        }
    };
    if let Some(b) = child_b.as_mut() {
        let _ = b.start_kill();
        if tokio::time::timeout(Duration::from_secs(5), b.wait())
            .await
            .is_err()
        {
            tracing::warn!("CMD_B did not exit within 5 s of being killed");
        }
    }
    eprintln!("openshell-linkem: {}", stats_json(&link));
    link.close().context("tearing down the link")?;
    Ok(ExitCode::from(code))
}
