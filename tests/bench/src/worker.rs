//! The client side of one measurement, run as its own process inside the client's network
//! namespace (`openshell-bench worker ...`); prints one `ClientRun` as JSON on stdout.
//!
//! Phases, in order, on one transport:
//! ```text
//! connect  fresh Connector -> connect -> Ping            (full handshake, N times)
//!          Connector with a ticket -> 0-RTT connect -> Ping (N times, QUIC only)
//! rpc      one warm connection, a Ping started every interval (open loop)
//! echo     tunnel A: 32-byte echo every 50 ms, nothing else running
//! bulk     tunnel B: 64 KiB writes as fast as the echo comes back;
//!          after the warm-up, the same echo probe on tunnel A during the window
//! ```
//! Every wait is bounded; a phase that fails records its error and the next one runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use openshell_proto::PingRequest;
use openshell_proto::diagnostics_client::DiagnosticsClient;
use openshell_transport::tls::ClientMaterial;
use openshell_transport::{
    BoxIo, Channel, ClientConfig, Congestion, Connection, Connector, Endpoint, Hedge, PathHint,
    TunnelTarget, ZeroRtt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::results::{ClientRun, HedgeDecisions};
use crate::stats::Summary;

/// Bound on any single RPC, connect or tunnel open.
const OP_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval of the interactive echo probe.
const ECHO_EVERY: Duration = Duration::from_millis(50);
const ECHO_FRAME: usize = 32;
const BULK_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Quic,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Connect,
    Rpc,
    /// Warm RPCs spaced wider than the RTT: each one alone on the wire, so a lost packet
    /// is recovered by a timer (PTO/RTO), not by later packets' acknowledgements.
    Sparse,
    Echo,
    Bulk,
}

/// Where to connect and with which credentials (shared by `worker` and `hold`).
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Gateway URL, e.g. https://10.203.0.2:17670.
    #[arg(long)]
    pub endpoint: String,
    /// Directory with ca.crt, tls.crt and tls.key.
    #[arg(long)]
    pub creds: PathBuf,
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// QUIC congestion controller of this (sending) end.
    #[arg(long, default_value = "tolerant")]
    pub congestion: Congestion,
    /// Hedging of idempotent reads on QUIC (off, auto, always). With a policy other than
    /// off, the RPC phases also run without hedging first, on the same connection.
    #[arg(long, default_value = "auto")]
    pub hedge: Hedge,
}

impl Target {
    pub fn connector(&self) -> anyhow::Result<Connector> {
        let read = |f: &str| {
            let p = self.creds.join(f);
            std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        let material = ClientMaterial::from_pem(
            &read("ca.crt")?,
            Some((&read("tls.crt")?, &read("tls.key")?)),
        )?;
        let mut cfg = ClientConfig::new(Endpoint::parse(&self.endpoint)?, Some(material));
        cfg.hint = match self.transport {
            Transport::Quic => PathHint::QuicOnly,
            Transport::Tcp => PathHint::TcpOnly,
        };
        cfg.tuning.congestion = self.congestion;
        cfg.hedge = self.hedge;
        cfg.connect_timeout = OP_TIMEOUT;
        Ok(Connector::new(cfg)?)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub target: Target,
    /// Phases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "connect,rpc,echo,bulk"
    )]
    pub phases: Vec<Phase>,
    /// The link's RTT, used only to wait long enough for session tickets.
    #[arg(long, default_value_t = 0)]
    pub rtt_ms: u32,
    #[arg(long, default_value_t = 3)]
    pub connects: u32,
    #[arg(long, default_value_t = 500)]
    pub rpcs: u32,
    #[arg(long, default_value_t = 15)]
    pub rpc_interval_ms: u32,
    #[arg(long, default_value_t = 0)]
    pub sparse_rpcs: u32,
    #[arg(long, default_value_t = 200)]
    pub sparse_interval_ms: u32,
    #[arg(long, default_value_t = 5)]
    pub echo_secs: u32,
    #[arg(long, default_value_t = 2)]
    pub bulk_warmup_secs: u32,
    #[arg(long, default_value_t = 6)]
    pub bulk_secs: u32,
    /// What the bulk phase moves: both ways through an echo tunnel, or one way.
    #[arg(long, value_enum, default_value = "echo")]
    pub bulk_mode: BulkMode,
}

/// Direction of the bulk phase's transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BulkMode {
    /// Writes to an echo tunnel; goodput is what comes back (both directions loaded).
    Echo,
    /// Reads from the gateway's `source` target (the gateway sends).
    Download,
    /// Writes to the gateway's `sink` target; goodput is what its receipts count.
    Upload,
}

/// Runs the phases and returns what they measured; phase failures land in `errors`.
pub async fn run(args: WorkerArgs) -> anyhow::Result<ClientRun> {
    let mut out = ClientRun {
        transport: args.target.transport.as_str().into(),
        congestion: args.target.congestion.to_string(),
        ..ClientRun::default()
    };
    if args.phases.contains(&Phase::Connect) {
        connect_phase(&args, &mut out).await;
    }
    let needs_conn = args
        .phases
        .iter()
        .any(|p| matches!(p, Phase::Rpc | Phase::Sparse | Phase::Echo | Phase::Bulk));
    if !needs_conn {
        return Ok(out);
    }
    let connector = args.target.connector()?;
    let conn = connector
        .connect()
        .await
        .context("warm connection failed")?;
    // The unhedged baseline of the same connection first, so hedging is judged against it.
    let baseline = args.target.transport == Transport::Quic && args.target.hedge != Hedge::Off;
    if args.phases.contains(&Phase::Rpc) {
        (out.warm_rpc_unhedged, out.warm_rpc) = rpc_pair(
            &conn,
            baseline,
            args.rpcs,
            args.rpc_interval_ms,
            "rpc",
            &mut out,
        )
        .await;
    }
    if args.phases.contains(&Phase::Sparse) {
        (out.sparse_rpc_unhedged, out.sparse_rpc) = rpc_pair(
            &conn,
            baseline,
            args.sparse_rpcs,
            args.sparse_interval_ms,
            "sparse rpc",
            &mut out,
        )
        .await;
    }
    if args.phases.contains(&Phase::Echo) {
        match echo_alone(&conn, args.echo_secs).await {
            Ok((samples, missing)) => {
                out.echo_idle = Summary::of(&samples);
                out.echo_missing += missing;
            }
            Err(e) => out.errors.push(format!("echo: {e:#}")),
        }
    }
    if args.phases.contains(&Phase::Bulk)
        && let Err(e) = bulk_phase(&conn, &args, &mut out).await
    {
        out.errors.push(format!("bulk: {e:#}"));
    }
    Ok(out)
}

/// An RPC phase without hedging (when `baseline`), then with the connection's policy.
async fn rpc_pair(
    conn: &Connection,
    baseline: bool,
    count: u32,
    interval_ms: u32,
    what: &str,
    out: &mut ClientRun,
) -> (Summary, Summary) {
    let mut unhedged = Summary::default();
    if baseline {
        let plain = conn.channel().hedging(Hedge::Off);
        let label = format!("{what} without hedging");
        unhedged = rpc_summary(plain, count, interval_ms, &label, out).await;
    }
    let before = conn.hedge_counts().unwrap_or_default();
    let hedged = rpc_summary(conn.channel(), count, interval_ms, what, out).await;
    let after = conn.hedge_counts().unwrap_or_default();
    out.hedge_decisions.push(HedgeDecisions {
        phase: what.to_string(),
        hedged: after.hedged - before.hedged,
        no_room: after.no_room - before.no_room,
    });
    (unhedged, hedged)
}

/// One RPC phase; failures are counted in `out` and left out of the summary.
async fn rpc_summary(
    channel: Channel,
    count: u32,
    interval_ms: u32,
    what: &str,
    out: &mut ClientRun,
) -> Summary {
    match rpc_phase(channel, count, interval_ms).await {
        Ok((samples, errors)) => {
            out.rpc_errors += errors.len() as u32;
            if let Some(e) = errors.first() {
                out.errors
                    .push(format!("{what} ({} failed, first): {e}", errors.len()));
            }
            Summary::of(&samples)
        }
        Err(e) => {
            out.errors.push(format!("{what}: {e:#}"));
            Summary::default()
        }
    }
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow::anyhow!("{what}: no answer within {OP_TIMEOUT:?}")),
    }
}

fn ping_request() -> PingRequest {
    PingRequest {
        payload: vec![0x42; 32],
        response_size: 0,
    }
}

async fn ping(conn: &Connection) -> anyhow::Result<()> {
    let mut client = DiagnosticsClient::new(conn.channel());
    bounded("ping", client.ping(ping_request())).await?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Full-handshake and 0-RTT connect + first RPC, each on a fresh connection.
async fn connect_phase(args: &WorkerArgs, out: &mut ClientRun) {
    // A new ticket arrives about one RTT after the handshake; wait for it before closing.
    let ticket_wait = Duration::from_millis(u64::from(args.rtt_ms) * 2 + 200);
    let mut full = Vec::new();
    let mut close = Vec::new();
    for _ in 0..args.connects {
        let sample = async {
            let connector = args.target.connector()?;
            let t0 = Instant::now();
            let conn = connector.connect().await?;
            ping(&conn).await?;
            let took = t0.elapsed();
            let t1 = Instant::now();
            conn.close().await;
            anyhow::Ok((ms(took), ms(t1.elapsed())))
        }
        .await;
        match sample {
            Ok((v, c)) => {
                full.push(v);
                close.push(c);
            }
            Err(e) => out.errors.push(format!("connect (full): {e:#}")),
        }
    }
    out.connect_full = Summary::of(&full);
    out.close_wait = Summary::of(&close);
    if args.target.transport != Transport::Quic {
        return;
    }
    let result = async {
        let connector = args.target.connector()?;
        let conn = connector.connect().await?;
        ping(&conn).await?;
        tokio::time::sleep(ticket_wait).await;
        conn.close().await;
        let mut zero = Vec::new();
        for _ in 0..args.connects {
            // One failed sample is recorded and the next one still runs.
            let t0 = Instant::now();
            let conn = match connector.connect().await {
                Ok(c) => c,
                Err(e) => {
                    out.errors.push(format!("connect (0-RTT): {e}"));
                    continue;
                }
            };
            let pinged = ping(&conn).await;
            let took = t0.elapsed();
            let state = tokio::time::timeout(OP_TIMEOUT, conn.zero_rtt_settled())
                .await
                .unwrap_or(ZeroRtt::Pending);
            if state != ZeroRtt::NotAttempted {
                out.zero_rtt_attempts += 1;
            }
            match pinged {
                Err(e) => out.errors.push(format!("connect (0-RTT): {e:#}")),
                Ok(()) if state == ZeroRtt::Accepted => {
                    out.zero_rtt_accepted += 1;
                    zero.push(ms(took));
                }
                Ok(()) => {}
            }
            tokio::time::sleep(ticket_wait).await;
            conn.close().await;
        }
        anyhow::Ok(zero)
    }
    .await;
    match result {
        Ok(zero) => out.connect_0rtt = Summary::of(&zero),
        Err(e) => out.errors.push(format!("connect (0-RTT): {e:#}")),
    }
}

/// Open loop: RPC i starts at `start + i * interval` whether or not earlier ones finished,
/// so a stall shows in every RPC it delays (no coordinated omission).
async fn rpc_phase(
    channel: Channel,
    count: u32,
    interval_ms: u32,
) -> anyhow::Result<(Vec<f64>, Vec<String>)> {
    let client = DiagnosticsClient::new(channel);
    // Warm-up; a failed RPC here is not fatal (the measured ones count their errors).
    let mut warm_ok = 0;
    for _ in 0..20 {
        warm_ok += u32::from(
            bounded("ping", client.clone().ping(ping_request()))
                .await
                .is_ok(),
        );
    }
    if warm_ok == 0 {
        anyhow::bail!("every warm-up RPC failed");
    }
    let start = Instant::now();
    let interval = Duration::from_millis(u64::from(interval_ms));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let at = start + interval * i;
        let mut client = client.clone();
        tasks.spawn(async move {
            tokio::time::sleep_until(at).await;
            let t0 = Instant::now();
            bounded("ping", client.ping(ping_request()))
                .await
                .map(|_| ms(t0.elapsed()))
        });
    }
    let mut samples = Vec::with_capacity(count as usize);
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(v)) => samples.push(v),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    Ok((samples, errors))
}

async fn open_echo(conn: &Connection) -> anyhow::Result<BoxIo> {
    bounded("open tunnel", conn.open_tunnel(&TunnelTarget::Echo)).await
}

async fn echo_alone(conn: &Connection, secs: u32) -> anyhow::Result<(Vec<f64>, u32)> {
    let io = open_echo(conn).await?;
    echo_probe(io, secs).await
}

/// Sends a stamped 32-byte frame every 50 ms for `secs` and times each echo from the
/// moment it was *due* (a write held up by the connection counts against it). Returns the
/// latencies and how many frames had not come back 5 s after the last was due.
async fn echo_probe(io: BoxIo, secs: u32) -> anyhow::Result<(Vec<f64>, u32)> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let n = u64::from(secs) * 1000 / ECHO_EVERY.as_millis() as u64;
    let start = Instant::now();
    let writer = async move {
        let mut frame = [0u8; ECHO_FRAME];
        for seq in 0..n {
            let due = ECHO_EVERY * seq as u32;
            tokio::time::sleep_until(start + due).await;
            frame[..8].copy_from_slice(&seq.to_be_bytes());
            frame[8..16].copy_from_slice(&(due.as_nanos() as u64).to_be_bytes());
            wr.write_all(&frame).await?;
            wr.flush().await?;
        }
        std::io::Result::Ok(wr)
    };
    let deadline = start + ECHO_EVERY * n as u32 + Duration::from_secs(5);
    let reader = async move {
        let mut frame = [0u8; ECHO_FRAME];
        let mut samples = Vec::with_capacity(n as usize);
        while (samples.len() as u64) < n {
            match tokio::time::timeout_at(deadline, rd.read_exact(&mut frame)).await {
                Ok(Ok(_)) => {
                    let due = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
                    let now = start.elapsed().as_nanos() as u64;
                    samples.push(now.saturating_sub(due) as f64 / 1e6);
                }
                _ => break,
            }
        }
        samples
    };
    let write = tokio::time::timeout_at(deadline, writer);
    let (w, samples) = tokio::join!(write, reader);
    if let Ok(Ok(mut wr)) = w {
        let _ = wr.shutdown().await;
    }
    let missing = n.saturating_sub(samples.len() as u64) as u32;
    Ok((samples, missing))
}

async fn bulk_phase(
    conn: &Connection,
    args: &WorkerArgs,
    out: &mut ClientRun,
) -> anyhow::Result<()> {
    let probe_io = open_echo(conn).await?;
    let target = match args.bulk_mode {
        BulkMode::Echo => TunnelTarget::Echo,
        BulkMode::Download => TunnelTarget::Source,
        BulkMode::Upload => TunnelTarget::Sink,
    };
    let bulk_io = bounded("open tunnel", conn.open_tunnel(&target)).await?;
    let (mut rd, mut wr) = tokio::io::split(bulk_io);
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mode = args.bulk_mode;
    // A download only reads: nothing to write.
    let writer = (mode != BulkMode::Download).then(|| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let chunk = vec![0xabu8; BULK_CHUNK];
            while !stop.load(Ordering::Relaxed) {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        })
    });
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            if mode == BulkMode::Upload {
                // The sink's receipts: running totals of what reached the gateway.
                let mut total = [0u8; 8];
                while rd.read_exact(&mut total).await.is_ok() {
                    received.store(u64::from_be_bytes(total), Ordering::Relaxed);
                }
                return;
            }
            let mut buf = vec![0u8; BULK_CHUNK];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(u64::from(args.bulk_warmup_secs))).await;
    let window = Duration::from_secs(u64::from(args.bulk_secs));
    let b0 = received.load(Ordering::Relaxed);
    let s0 = conn.quic_stats();
    let t0 = Instant::now();
    let measure = async {
        tokio::time::sleep(window).await;
        (
            received.load(Ordering::Relaxed),
            conn.quic_stats(),
            t0.elapsed(),
        )
    };
    let (probe, (b1, s1, took)) = tokio::join!(echo_probe(probe_io, args.bulk_secs), measure);
    stop.store(true, Ordering::Relaxed);
    if let Some(writer) = writer {
        writer.abort();
    }
    reader.abort();
    out.bulk_bytes = b1 - b0;
    out.bulk_secs = took.as_secs_f64();
    out.bulk_mbps = out.bulk_bytes as f64 * 8.0 / out.bulk_secs / 1e6;
    if let (Some(s0), Some(s1)) = (s0, s1) {
        out.quic_sent_packets = Some(s1.path.sent_packets - s0.path.sent_packets);
        out.quic_lost_packets = Some(s1.path.lost_packets - s0.path.lost_packets);
    }
    let (samples, missing) = probe?;
    out.echo_bulk = Summary::of(&samples);
    out.echo_missing += missing;
    Ok(())
}

/// `hold`: opens many idle connections (then one tunnel on each) and keeps them until
/// stdin closes, reporting progress as lines on stdout:
/// `connected OK FAILED [first error]`, then after a `tunnels` line on stdin,
/// `tunnels OK FAILED [first error]`.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub count: u32,
    /// Connection handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Give up connecting after this many seconds (report how far it got).
    #[arg(long, default_value_t = 150)]
    pub deadline_secs: u64,
}

pub async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncBufReadExt;

    let connector = Arc::new(args.target.connector()?);
    let deadline = Instant::now() + Duration::from_secs(args.deadline_secs);
    let attempts = futures::stream::iter(0..args.count)
        .map(|_| {
            let c = connector.clone();
            async move { tokio::time::timeout_at(deadline, c.connect()).await }
        })
        .buffer_unordered(args.concurrency.max(1));
    let results: Vec<_> = attempts.collect().await;
    let mut conns = Vec::new();
    let mut first_err = None;
    for r in results {
        match r {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                first_err.get_or_insert_with(|| e.to_string());
            }
            Err(_) => {
                first_err.get_or_insert_with(|| "deadline reached".to_string());
            }
        }
    }
    // Make sure each connection is really established (the gateway saw it): one RPC each.
    let checked = futures::stream::iter(conns.iter())
        .map(|c| async move {
            // Retried: an RPC can fail on its own (see BENCHMARKS.md) on a healthy connection.
            let mut last = ping(c).await;
            for _ in 0..2 {
                if last.is_ok() {
                    break;
                }
                last = ping(c).await;
            }
            last
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let failed_pings = checked.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = checked.iter().find(|r| r.is_err()) {
        first_err.get_or_insert_with(|| format!("{e:#}"));
    }
    println!(
        "connected {} {} {}",
        conns.len() - failed_pings,
        args.count as usize - conns.len() + failed_pings,
        first_err.clone().unwrap_or_default()
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut tunnels = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() != "tunnels" {
            continue;
        }
        let opened = futures::stream::iter(conns.iter())
            .map(|c| async move {
                let mut io = open_echo(c).await?;
                // One round trip, so the gateway has set the tunnel up completely.
                io.write_all(b"x").await?;
                let mut b = [0u8; 1];
                bounded("echo", io.read_exact(&mut b)).await?;
                anyhow::Ok(io)
            })
            .buffer_unordered(args.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
        let mut err = None;
        for r in opened {
            match r {
                Ok(io) => tunnels.push(io),
                Err(e) => {
                    err.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        println!(
            "tunnels {} {} {}",
            tunnels.len(),
            conns.len() - tunnels.len(),
            err.unwrap_or_default()
        );
    }
    drop(tunnels);
    drop(conns);
    Ok(())
}
