//! The orchestrator: one emulated link for the whole run, the gateway in namespace B, the
//! CLI and the client workers in namespace A, each cell measured for QUIC and then TCP
//! against the same gateway process.
//!
//! ```text
//!   host netns: openshell-bench run  (owns the Link, writes results)
//!     ├─ netns A: openshell status ... / openshell-bench worker ...  (clients)
//!     │      │ 10.203.n.1  ── emulated link: delay, loss, 100 Mbit/s, 1000-packet queue ──
//!     └─ netns B: openshell-gateway --listen 10.203.n.2:17670            (server)
//!               127.0.0.1 inside B: the loopback and memory phases
//! ```
//! Everything is bounded: each child has a timeout and is killed on drop, the link and its
//! namespaces go when the `Link` drops, and SIGINT/SIGTERM stop the run between steps
//! (results so far are kept).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use openshell_linkem::{Direction, Impairment, Link, Side as NetSide};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::plan::{Cell, Plan, QUEUE_PACKETS, RATE_BPS};
use crate::report;
use crate::results::{
    CcResult, CellResult, CliRuns, ClientRun, DirDelta, LinkDelta, Loopback, Memory, Meta, Results,
    Side,
};
use crate::stats::Summary;

mod agent;

const GATEWAY_PORT: u16 = 17670;
const LOOPBACK_PORT: u16 = 17671;
/// The gateway's and the CLI's default QUIC controller: the loopback and memory phases
/// measure what a user gets.
const DEFAULT_CONGESTION: &str = "tolerant";
/// Connections per `hold` process in the memory phase.
const CONNS_PER_HOLDER: u32 = 2500;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// About three minutes: the floor, 100 ms with 0% and 2% loss, fewer samples,
    /// memory at 1,000 only.
    #[arg(long)]
    pub quick: bool,
    /// Only these cells (names like rtt100-loss2, comma-separated); the floor always runs.
    #[arg(long, value_delimiter = ',')]
    pub cells: Vec<String>,
    /// Leave out the link matrix (run only the other phases).
    #[arg(long)]
    pub skip_matrix: bool,
    /// Override the plan's sparse RPC count (more samples make its p99 firmer; each
    /// costs 200 ms).
    #[arg(long)]
    pub sparse_rpcs: Option<u32>,
    /// Override the plan's echo and bulk windows, seconds each (the echo probe sends one
    /// frame per 50 ms, so 20 s gives 400 samples to each of its idle and bulk p99s).
    #[arg(long)]
    pub echo_secs: Option<u32>,
    /// QUIC congestion controller of the gateway and the clients in the matrix (the
    /// gateway's default is tolerant); the comparison phase always runs all four.
    #[arg(long, default_value = "tolerant", value_parser = ["cubic", "newreno", "bbr", "tolerant"])]
    pub matrix_congestion: String,
    /// What the matrix's and the comparison's bulk phases move: one way from the client
    /// to the gateway's `sink` (the client is the sender, so its own loss count is the
    /// self-induced loss), or both ways through an echo tunnel (ACKs then queue behind
    /// data on the way back). Loopback always echoes.
    #[arg(long, default_value = "upload", value_parser = ["upload", "echo"])]
    pub bulk_mode: String,
    #[arg(long)]
    pub skip_cc: bool,
    #[arg(long)]
    pub skip_loopback: bool,
    #[arg(long)]
    pub skip_memory: bool,
    /// Results directory (results.json, summary.md, *.svg).
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Directory holding openshell and openshell-gateway [default: this binary's directory].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seed of the link's random draws (recorded in the results).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The command line to record in the results (scripts/bench passes its own).
    #[arg(long, default_value = "")]
    pub record_command: String,
}

/// Set by SIGINT/SIGTERM; every step checks it.
#[derive(Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    fn install() -> Stop {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("openshell-bench: interrupted, cleaning up");
            let _ = tx.send(true);
        });
        Stop(rx)
    }

    fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.is_set() {
            bail!("interrupted");
        }
        Ok(())
    }

    async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|s| *s).await;
    }

    async fn sleep(&self, d: Duration) -> anyhow::Result<()> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.wait() => bail!("interrupted"),
        }
    }
}

/// Files and binaries of one run.
struct Env {
    work: tempfile::TempDir,
    openshell: PathBuf,
    gateway: PathBuf,
    me: PathBuf,
    started: Instant,
}

impl Env {
    fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    fn creds(&self) -> PathBuf {
        self.path("creds")
    }

    /// `openshell` with its own HOME and config dirs.
    fn cli(&self, cmd: &mut std::process::Command) {
        for var in [
            "OPENSHELL_GATEWAY",
            "OPENSHELL_GATEWAY_ENDPOINT",
            "OPENSHELL_TRANSPORT",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("xdg"))
            .env("XDG_STATE_HOME", self.path("state-home"))
            .env("OPENSHELL_SYSTEM_GATEWAY_DIR", self.path("system"))
            .env("NO_COLOR", "1");
    }

    fn log(&self, msg: impl AsRef<str>) {
        let t = self.started.elapsed().as_secs();
        eprintln!("[{:02}:{:02}] {}", t / 60, t % 60, msg.as_ref());
    }
}

/// Runs a child to completion within `limit`, killing it on timeout or interrupt.
async fn output(
    cmd: std::process::Command,
    limit: Duration,
    stop: &Stop,
) -> anyhow::Result<std::process::Output> {
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("cannot start a child process")?;
    tokio::select! {
        r = tokio::time::timeout(limit, child.wait_with_output()) => match r {
            Ok(r) => Ok(r?),
            Err(_) => bail!("no result within {limit:?} (killed)"),
        },
        _ = stop.wait() => bail!("interrupted"),
    }
}

fn ok_output(what: &str, out: &std::process::Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// A gateway process; killed when dropped.
struct Gateway {
    child: tokio::process::Child,
    pid: u32,
}

impl Gateway {
    async fn start(
        env: &Env,
        link: &Link,
        listen: &str,
        congestion: &str,
        tag: &str,
        stop: &Stop,
    ) -> anyhow::Result<Gateway> {
        let log = env.path(&format!("gateway-{tag}.log"));
        let state = env.path(&format!("state-{tag}"));
        std::fs::create_dir_all(&state)?;
        let mut cmd = link.command(NetSide::B, &env.gateway);
        cmd.args([
            "--listen",
            listen,
            "--congestion",
            congestion,
            "--log-level",
            "warn,openshell_gateway=info",
        ])
        .arg("--pki-dir")
        .arg(env.path("pki"))
        .arg("--state-dir")
        .arg(&state)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start openshell-gateway")?;
        let pid = child.id().context("gateway exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("openshell-gateway exited ({status}): {}", text.trim());
            }
            if Instant::now() > deadline {
                bail!(
                    "openshell-gateway did not log 'listening on' within 20 s: {}",
                    text.trim()
                );
            }
            stop.sleep(Duration::from_millis(50)).await?;
        }
        // `ip netns exec` execs the program, so the pid is the gateway's own.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.trim().starts_with("openshell-gat") {
            bail!("pid {pid} is '{}', not the gateway", comm.trim());
        }
        Ok(Gateway { child, pid })
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/PID/status")
    }

    /// user + system CPU seconds so far.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(ticks as f64 / clock_ticks())
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn impairment(cell: &Cell) -> anyhow::Result<Impairment> {
    if cell.floor {
        return Ok(Impairment::builder().queue_limit(QUEUE_PACKETS).build()?);
    }
    let mut b = Impairment::builder()
        .delay(cell.one_way_delay())
        .loss(cell.loss_pct / 100.0)
        .rate_bps(RATE_BPS)
        .queue_limit(QUEUE_PACKETS);
    if cell.reorder_pct > 0.0 {
        b = b.reorder(
            cell.reorder_pct / 100.0,
            Duration::from_millis(u64::from(cell.reorder_extra_ms)),
        );
    }
    Ok(b.build()?)
}

fn delta(link: &Link, before: &[openshell_linkem::DirectionStats; 2]) -> LinkDelta {
    let d = |dir: Direction, b: &openshell_linkem::DirectionStats| {
        let a = link.stats(dir);
        DirDelta {
            packets_in: a.packets_in - b.packets_in,
            dropped_loss: (a.dropped_loss + a.dropped_burst) - (b.dropped_loss + b.dropped_burst),
            dropped_queue: a.dropped_queue - b.dropped_queue,
            reordered: a.reordered - b.reordered,
        }
    };
    LinkDelta {
        up: d(Direction::AtoB, &before[0]),
        down: d(Direction::BtoA, &before[1]),
    }
}

fn snapshot(link: &Link) -> [openshell_linkem::DirectionStats; 2] {
    [link.stats(Direction::AtoB), link.stats(Direction::BtoA)]
}

/// Options of one worker process.
struct WorkerSpec<'a> {
    endpoint: String,
    transport: &'a str,
    congestion: &'a str,
    phases: &'a str,
    rtt_ms: u32,
    connects: u32,
    rpcs: u32,
    rpc_interval_ms: u32,
    sparse_rpcs: u32,
    sparse_interval_ms: u32,
    echo_secs: u32,
    bulk_warmup_secs: u32,
    bulk_secs: u32,
    bulk_mode: &'a str,
}

impl WorkerSpec<'_> {
    /// A generous bound on the worker's run time, for hang protection only.
    fn limit(&self) -> Duration {
        let rtt = f64::from(self.rtt_ms) / 1000.0;
        let connects = f64::from(self.connects) * 2.0 * (8.0 * rtt + 1.5);
        let rpcs = (f64::from(self.rpcs) * f64::from(self.rpc_interval_ms)
            + f64::from(self.sparse_rpcs) * f64::from(self.sparse_interval_ms))
            / 1000.0;
        let rest = f64::from(self.echo_secs + self.bulk_warmup_secs + self.bulk_secs) + 15.0;
        Duration::from_secs_f64(60.0 + 2.0 * (connects + rpcs + rest))
    }
}

async fn worker(
    env: &Env,
    link: &Link,
    side: NetSide,
    spec: &WorkerSpec<'_>,
    stop: &Stop,
) -> anyhow::Result<ClientRun> {
    let mut cmd = link.command(side, &env.me);
    cmd.arg("worker")
        .args(["--endpoint", &spec.endpoint])
        .arg("--creds")
        .arg(env.creds())
        .args([
            "--transport",
            spec.transport,
            "--congestion",
            spec.congestion,
        ])
        .args(["--phases", spec.phases])
        .args(["--rtt-ms", &spec.rtt_ms.to_string()])
        .args(["--connects", &spec.connects.to_string()])
        .args(["--rpcs", &spec.rpcs.to_string()])
        .args(["--rpc-interval-ms", &spec.rpc_interval_ms.to_string()])
        .args(["--sparse-rpcs", &spec.sparse_rpcs.to_string()])
        .args(["--sparse-interval-ms", &spec.sparse_interval_ms.to_string()])
        .args(["--echo-secs", &spec.echo_secs.to_string()])
        .args(["--bulk-warmup-secs", &spec.bulk_warmup_secs.to_string()])
        .args(["--bulk-secs", &spec.bulk_secs.to_string()])
        .args(["--bulk-mode", spec.bulk_mode])
        .env_remove("RUST_LOG");
    let out = output(cmd, spec.limit(), stop).await?;
    ok_output("worker", &out)?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "worker printed no result: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

/// `n` whole `openshell status` processes in namespace A, timed from spawn to exit.
async fn cli_runs(env: &Env, link: &Link, transport: &str, n: u32, stop: &Stop) -> CliRuns {
    let mut walls = Vec::new();
    let mut runs = CliRuns::default();
    for _ in 0..n {
        if stop.is_set() {
            break;
        }
        let mut cmd = link.command(NetSide::A, &env.openshell);
        env.cli(&mut cmd);
        cmd.args([
            "-g",
            "bench",
            "--transport",
            transport,
            "status",
            "-o",
            "json",
        ]);
        let t0 = Instant::now();
        let result = output(cmd, Duration::from_secs(60), stop).await;
        let took = t0.elapsed();
        match result.and_then(|o| ok_output("openshell status", &o).map(|_| o)) {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                if text.contains(&format!("\"kind\": \"{transport}\""))
                    || text.contains(&format!("\"kind\":\"{transport}\""))
                {
                    walls.push(took.as_secs_f64() * 1000.0);
                } else {
                    runs.failures += 1;
                    runs.first_error.get_or_insert_with(|| {
                        format!("unexpected status output: {}", text.trim())
                    });
                }
            }
            Err(e) => {
                runs.failures += 1;
                runs.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        let _ = stop.sleep(Duration::from_millis(100)).await;
    }
    runs.wall = Summary::of(&walls);
    runs
}

fn run_cmd(mut cmd: std::process::Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    ok_output(what, &out)
}

/// PKI with the namespace addresses as SANs, a client certificate, and a registered
/// gateway `bench` for the CLI.
fn setup_pki(env: &Env, link: &Link) -> anyhow::Result<()> {
    for d in ["home", "xdg", "system", "state-home"] {
        std::fs::create_dir_all(env.path(d))?;
    }
    let mut init = std::process::Command::new(&env.openshell);
    env.cli(&mut init);
    init.args(["pki", "init", "--dir"])
        .arg(env.path("pki"))
        .args([
            "--san",
            &link.b().addr.to_string(),
            "--san",
            &link.a().addr.to_string(),
        ]);
    run_cmd(init, "openshell pki init")?;
    let mut issue = std::process::Command::new(&env.openshell);
    env.cli(&mut issue);
    issue
        .args(["pki", "issue", "bench", "--dir"])
        .arg(env.path("pki"))
        .arg("--out")
        .arg(env.creds());
    run_cmd(issue, "openshell pki issue")?;

    let mtls = env.path("xdg/openshell/gateways/bench/mtls");
    std::fs::create_dir_all(&mtls)?;
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(env.creds().join(f), mtls.join(f))?;
    }
    set_mode(&mtls, 0o700)?;
    set_mode(&mtls.join("tls.key"), 0o600)?;
    let mut add = std::process::Command::new(&env.openshell);
    env.cli(&mut add);
    add.args([
        "gateway",
        "add",
        &format!("https://{}:{GATEWAY_PORT}", link.b().addr),
        "--name",
        "bench",
    ]);
    run_cmd(add, "openshell gateway add")
}

fn set_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

fn write_results(out_dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let tmp = out_dir.join(".results.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(r)?)?;
    std::fs::rename(tmp, out_dir.join("results.json"))?;
    Ok(())
}

/// Writes summary.md and the SVG charts next to results.json.
pub fn write_report(out_dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(out_dir.join("summary.md"), report::markdown(r))?;
    for (name, svg) in report::charts(r) {
        std::fs::write(out_dir.join(name), svg)?;
    }
    Ok(())
}

pub async fn run(args: RunArgs) -> anyhow::Result<Results> {
    openshell_linkem::preflight()?;
    let removed = openshell_linkem::remove_stale()?;
    let me = std::env::current_exe()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => me.parent().context("no binary directory")?.to_path_buf(),
    };
    let env = Env {
        work: tempfile::Builder::new()
            .prefix("openshell-bench-")
            .tempdir()?,
        openshell: bin_dir.join("openshell"),
        gateway: bin_dir.join("openshell-gateway"),
        me,
        started: Instant::now(),
    };
    for b in [&env.openshell, &env.gateway] {
        if !b.is_file() {
            bail!(
                "{} is missing: build it with scripts/bench (cargo build --release -p openshell-cli -p openshell-gateway)",
                b.display()
            );
        }
    }
    if !removed.is_empty() {
        env.log(format!(
            "removed stale namespaces of crashed runs: {removed:?}"
        ));
    }
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    }
    .only_cells(&args.cells);
    if let Some(secs) = args.echo_secs {
        plan.echo_secs = secs;
        plan.bulk_secs = secs;
    }
    if let Some(n) = args.sparse_rpcs {
        plan.sparse_rpcs = n;
    }
    let stop = Stop::install();

    let mut builder = Link::builder().impairment(Impairment::default());
    if let Some(seed) = args.seed {
        builder = builder.seed(seed);
    }
    let link = builder.build()?;
    env.log(format!(
        "link up: A {} ({}), B {} ({}), seed {}",
        link.a().addr,
        link.a().netns,
        link.b().addr,
        link.b().netns,
        link.seed()
    ));
    let started_utc = utc_now();
    let mut results = Results {
        meta: Meta {
            command: if args.record_command.is_empty() {
                std::env::args().collect::<Vec<_>>().join(" ")
            } else {
                args.record_command.clone()
            },
            started_utc,
            git_rev: sh("git", &["rev-parse", "--short", "HEAD"]),
            kernel: sh("uname", &["-r"]),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            tcp_congestion: sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &link.a().netns,
                    "cat",
                    "/proc/sys/net/ipv4/tcp_congestion_control",
                ],
            ),
            nofile_limit: sh("sh", &["-c", "ulimit -n"]),
            link_seed: link.seed(),
            loadavg_start: loadavg(),
            matrix_congestion: args.matrix_congestion.clone(),
            bulk_mode: args.bulk_mode.clone(),
            ..Meta::default()
        },
        plan: plan.clone(),
        cells: Vec::new(),
        cc: Vec::new(),
        loopback: None,
        memory: Vec::new(),
        failures: Vec::new(),
    };
    let body = measure(&env, &link, &plan, &args, &stop, &mut results).await;
    if let Err(e) = &body {
        results.failures.push(format!("run stopped: {e:#}"));
        env.log(format!("run stopped: {e:#}"));
    }
    results.meta.finished_utc = utc_now();
    results.meta.loadavg_end = loadavg();
    results.meta.duration_secs = env.started.elapsed().as_secs_f64();
    if let Some(err) = link.forwarder_error() {
        results.failures.push(format!("link forwarder: {err}"));
    }
    link.close()?;
    write_results(&args.out, &results)?;
    write_report(&args.out, &results)?;
    env.log(format!("results in {}", args.out.display()));
    if stop.is_set() {
        bail!(
            "interrupted; partial results written to {}",
            args.out.display()
        );
    }
    Ok(results)
}

async fn measure(
    env: &Env,
    link: &Link,
    plan: &Plan,
    args: &RunArgs,
    stop: &Stop,
    results: &mut Results,
) -> anyhow::Result<()> {
    setup_pki(env, link)?;
    let endpoint = format!("https://{}:{GATEWAY_PORT}", link.b().addr);
    let listen = format!("{}:{GATEWAY_PORT}", link.b().addr);
    let cells: &[Cell] = if args.skip_matrix { &[] } else { &plan.cells };
    let matrix_cc = args.matrix_congestion.as_str();
    let gw = Gateway::start(env, link, &listen, matrix_cc, "matrix", stop).await?;
    for cell in cells {
        stop.check()?;
        link.set_both(impairment(cell)?);
        stop.sleep(Duration::from_millis(300)).await?;
        let mut sides = Vec::new();
        for transport in ["quic", "tcp"] {
            let cli = cli_runs(env, link, transport, plan.cli_runs, stop).await;
            let before = snapshot(link);
            let sparse = plan.sparse_rtts.contains(&cell.rtt_ms) && !cell.floor;
            let spec = WorkerSpec {
                endpoint: endpoint.clone(),
                transport,
                congestion: matrix_cc,
                phases: if sparse {
                    "connect,rpc,sparse,echo,bulk"
                } else {
                    "connect,rpc,echo,bulk"
                },
                rtt_ms: cell.rtt_ms,
                connects: plan.connects,
                rpcs: plan.rpcs,
                rpc_interval_ms: plan.rpc_interval_ms,
                sparse_rpcs: if sparse { plan.sparse_rpcs } else { 0 },
                sparse_interval_ms: plan.sparse_interval_ms,
                echo_secs: plan.echo_secs,
                bulk_warmup_secs: plan.bulk_warmup_secs,
                bulk_secs: plan.bulk_secs,
                bulk_mode: &args.bulk_mode,
            };
            let client = match worker(env, link, NetSide::A, &spec, stop).await {
                Ok(c) => c,
                Err(e) => ClientRun {
                    transport: transport.into(),
                    errors: vec![format!("{e:#}")],
                    ..ClientRun::default()
                },
            };
            let link_delta = delta(link, &before);
            env.log(format!(
                "{} {transport}: status p50 {} ms, rpc p50/p99 {}, echo idle/bulk p99 {}/{} ms, bulk {} Mbit/s{}",
                cell.name,
                report::f1(cli.wall.p50_ms),
                report::p50_p99(&client.warm_rpc),
                report::f1(client.echo_idle.p99_ms),
                report::f1(client.echo_bulk.p99_ms),
                report::f1(client.bulk_mbps),
                if client.errors.is_empty() { String::new() } else { format!(", errors: {:?}", client.errors) }
            ));
            sides.push(Side {
                cli,
                client,
                link: link_delta,
            });
            // Let queues drain before the next transport starts.
            stop.sleep(Duration::from_millis(u64::from(cell.rtt_ms) * 3 + 500))
                .await?;
        }
        let tcp = sides.pop().unwrap_or_default();
        let quic = sides.pop().unwrap_or_default();
        let agent = agent::agent_runs(env, link, stop).await;
        env.log(format!(
            "{} agent: status warm p50 {} ms, after idle p50 {} ms, 0-RTT {}/{}",
            cell.name,
            report::f1(agent.warm.wall.p50_ms),
            report::f1(agent.reconnect.wall.p50_ms),
            agent.zero_rtt_accepted().0,
            agent.zero_rtt_accepted().1
        ));
        results.cells.push(CellResult {
            cell: cell.clone(),
            quic,
            tcp,
            agent: Some(agent),
        });
        write_results(&args.out, results)?;
    }
    gw.stop().await;

    if !args.skip_cc {
        for cc in ["cubic", "newreno", "bbr", "tolerant"] {
            stop.check()?;
            if plan.cc_cells.is_empty() {
                break;
            }
            let gw = Gateway::start(env, link, &listen, cc, &format!("cc-{cc}"), stop).await?;
            for cell in &plan.cc_cells {
                stop.check()?;
                link.set_both(impairment(cell)?);
                stop.sleep(Duration::from_millis(300)).await?;
                let before = snapshot(link);
                let spec = WorkerSpec {
                    endpoint: endpoint.clone(),
                    transport: "quic",
                    congestion: cc,
                    phases: "bulk",
                    rtt_ms: cell.rtt_ms,
                    connects: 0,
                    rpcs: 0,
                    rpc_interval_ms: 0,
                    sparse_rpcs: 0,
                    sparse_interval_ms: 0,
                    echo_secs: 0,
                    bulk_warmup_secs: plan.bulk_warmup_secs,
                    bulk_secs: plan.cc_bulk_secs,
                    bulk_mode: &args.bulk_mode,
                };
                let client = worker(env, link, NetSide::A, &spec, stop)
                    .await
                    .unwrap_or_else(|e| ClientRun {
                        transport: "quic".into(),
                        congestion: cc.into(),
                        errors: vec![format!("{e:#}")],
                        ..ClientRun::default()
                    });
                let link_delta = delta(link, &before);
                env.log(format!(
                    "cc {cc} {}: {} Mbit/s, quinn lost/sent {}%, queue drops up {}%",
                    cell.name,
                    report::f1(client.bulk_mbps),
                    client.quic_loss_pct().map(report::f1).unwrap_or_default(),
                    report::f1(link_delta.up.queue_drop_pct())
                ));
                results.cc.push(CcResult {
                    cell: cell.clone(),
                    congestion: cc.into(),
                    client,
                    link: link_delta,
                });
                write_results(&args.out, results)?;
                stop.sleep(Duration::from_millis(u64::from(cell.rtt_ms) * 3 + 500))
                    .await?;
            }
            gw.stop().await;
        }
    }

    if !args.skip_loopback {
        stop.check()?;
        match loopback(env, link, plan, stop).await {
            Ok(lb) => results.loopback = Some(lb),
            Err(e) => results.failures.push(format!("loopback: {e:#}")),
        }
        write_results(&args.out, results)?;
    }

    if !args.skip_memory {
        for transport in ["quic", "tcp"] {
            for &n in &plan.memory_counts {
                stop.check()?;
                match memory(env, link, transport, n, stop).await {
                    Ok(m) => {
                        env.log(format!(
                            "memory {transport} {n}: {} connections ({} KiB each), {} tunnels ({} KiB each){}",
                            m.connections,
                            m.per_connection_kib().map(report::f1).unwrap_or_default(),
                            m.tunnels,
                            m.per_tunnel_kib().map(report::f1).unwrap_or_default(),
                            m.note.as_deref().map(|n| format!(": {n}")).unwrap_or_default()
                        ));
                        results.memory.push(m);
                    }
                    Err(e) => results
                        .failures
                        .push(format!("memory {transport} {n}: {e:#}")),
                }
                write_results(&args.out, results)?;
            }
        }
    }
    Ok(())
}

/// Warm RPCs and tunnel throughput over 127.0.0.1 inside namespace B: no emulator.
async fn loopback(env: &Env, link: &Link, plan: &Plan, stop: &Stop) -> anyhow::Result<Loopback> {
    let gw = Gateway::start(
        env,
        link,
        &format!("127.0.0.1:{LOOPBACK_PORT}"),
        DEFAULT_CONGESTION,
        "loopback",
        stop,
    )
    .await?;
    let mut lb = Loopback::default();
    for transport in ["quic", "tcp"] {
        let spec = WorkerSpec {
            endpoint: format!("https://127.0.0.1:{LOOPBACK_PORT}"),
            transport,
            congestion: DEFAULT_CONGESTION,
            phases: "rpc,bulk",
            rtt_ms: 0,
            connects: 0,
            rpcs: plan.loopback_rpcs,
            rpc_interval_ms: plan.loopback_rpc_interval_ms,
            sparse_rpcs: 0,
            sparse_interval_ms: 0,
            echo_secs: 0,
            bulk_warmup_secs: 1,
            bulk_secs: plan.loopback_bulk_secs,
            bulk_mode: "echo",
        };
        let cpu0 = gw.cpu_secs()?;
        let run = worker(env, link, NetSide::B, &spec, stop).await?;
        let cpu = gw.cpu_secs()? - cpu0;
        env.log(format!(
            "loopback {transport}: rpc p50/p99 {} ms, tunnel {} Mbit/s, gateway CPU {cpu:.2} s",
            report::p50_p99(&run.warm_rpc),
            report::f1(run.bulk_mbps)
        ));
        if transport == "quic" {
            lb.quic = run;
            lb.gateway_cpu_secs_quic = cpu;
        } else {
            lb.tcp = run;
            lb.gateway_cpu_secs_tcp = cpu;
        }
    }
    gw.stop().await;
    Ok(lb)
}

/// A `hold` process and its line-based progress reports.
struct Holder {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Holder {
    /// Waits for the next `<word> OK FAILED [error]` line.
    async fn report(&mut self, word: &str, limit: Duration) -> anyhow::Result<(u32, u32, String)> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .map_err(|_| anyhow::anyhow!("no '{word}' report within {limit:?}"))??
            .with_context(|| format!("holder exited before its '{word}' report"))?;
        let mut parts = line.splitn(4, ' ');
        if parts.next() != Some(word) {
            bail!("unexpected holder output: {line}");
        }
        let ok = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let failed = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((ok, failed, parts.next().unwrap_or("").to_string()))
    }
}

/// Gateway RSS with `n` idle connections, then with one open tunnel on each.
async fn memory(
    env: &Env,
    link: &Link,
    transport: &str,
    n: u32,
    stop: &Stop,
) -> anyhow::Result<Memory> {
    let gw = Gateway::start(
        env,
        link,
        &format!("127.0.0.1:{LOOPBACK_PORT}"),
        DEFAULT_CONGESTION,
        &format!("memory-{transport}-{n}"),
        stop,
    )
    .await?;
    stop.sleep(Duration::from_secs(1)).await?;
    let mut m = Memory {
        transport: transport.into(),
        target: n,
        rss_base_kib: gw.rss_kib()?,
        ..Memory::default()
    };
    let procs = n.div_ceil(CONNS_PER_HOLDER);
    m.client_processes = procs;
    let mut holders = Vec::new();
    let t0 = Instant::now();
    for i in 0..procs {
        let count = CONNS_PER_HOLDER.min(n - i * CONNS_PER_HOLDER);
        let mut cmd = link.command(NetSide::B, &env.me);
        cmd.args([
            "hold",
            "--endpoint",
            &format!("https://127.0.0.1:{LOOPBACK_PORT}"),
        ])
        .arg("--creds")
        .arg(env.creds())
        .args(["--transport", transport, "--count", &count.to_string()])
        .args(["--concurrency", "16", "--deadline-secs", "150"])
        .env_remove("RUST_LOG");
        let mut child = tokio::process::Command::from(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no holder stdout")?;
        holders.push(Holder {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        });
    }
    let mut notes = Vec::new();
    for h in &mut holders {
        let (ok, failed, err) = tokio::select! {
            r = h.report("connected", Duration::from_secs(200)) => r?,
            _ = stop.wait() => bail!("interrupted"),
        };
        m.connections += ok;
        if failed > 0 {
            notes.push(format!("{failed} connections failed: {err}"));
        }
    }
    m.connect_secs = t0.elapsed().as_secs_f64();
    stop.sleep(Duration::from_secs(3)).await?;
    m.rss_connections_kib = gw.rss_kib()?;
    for h in &mut holders {
        if let Some(stdin) = h.child.stdin.as_mut() {
            stdin.write_all(b"tunnels\n").await?;
            stdin.flush().await?;
        }
    }
    for h in &mut holders {
        let (ok, failed, err) = tokio::select! {
            r = h.report("tunnels", Duration::from_secs(200)) => r?,
            _ = stop.wait() => bail!("interrupted"),
        };
        m.tunnels += ok;
        if failed > 0 {
            notes.push(format!("{failed} tunnels failed: {err}"));
        }
    }
    stop.sleep(Duration::from_secs(3)).await?;
    m.rss_tunnels_kib = gw.rss_kib()?;
    if !notes.is_empty() {
        m.note = Some(notes.join("; "));
    }
    for mut h in holders {
        drop(h.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), h.child.wait())
            .await
            .is_err()
        {
            let _ = h.child.start_kill();
        }
    }
    gw.stop().await;
    Ok(m)
}
