//! Results -> Markdown tables, target verdicts and SVG charts. Pure: everything printed is
//! computed from a `Results` value, so `openshell-bench report` regenerates it from the file.

use std::fmt::Write as _;

use crate::plan::Cell;
use crate::results::{CellResult, ClientRun, Results};
use crate::stats::{Summary, ratio};
use crate::svg::{Chart, PALETTE, Series};

/// Where one issue target stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run (or informational only).
    pub met: Option<bool>,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "n/a",
        }
    }
}

pub fn f1(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "–".into()
    }
}

fn f2(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "–".into()
    }
}

fn opt(x: Option<f64>, f: fn(f64) -> String) -> String {
    x.map(f).unwrap_or_else(|| "–".into())
}

/// `p50 / p99` of a summary, or a dash when nothing was measured.
pub fn p50_p99(s: &Summary) -> String {
    if s.is_empty() {
        "–".into()
    } else {
        format!("{} / {}", f1(s.p50_ms), f1(s.p99_ms))
    }
}

fn p50_95_99(s: &Summary) -> String {
    if s.is_empty() {
        "–".into()
    } else {
        format!("{} / {} / {}", f1(s.p50_ms), f1(s.p95_ms), f1(s.p99_ms))
    }
}

fn p50(s: &Summary) -> Option<f64> {
    (!s.is_empty()).then_some(s.p50_ms)
}

fn p99(s: &Summary) -> Option<f64> {
    (!s.is_empty()).then_some(s.p99_ms)
}

fn both<T>(a: Option<T>, b: Option<T>) -> Option<(T, T)> {
    Some((a?, b?))
}

/// The target cell of the issue: 100 ms RTT, 2% loss.
pub const TARGET_CELL: &str = "rtt100-loss2";
const COLD_CELL: &str = "rtt100-loss0";

pub fn verdicts(r: &Results) -> Vec<Verdict> {
    let mut out = Vec::new();
    let floor = r.floor();
    let cold = r.cell(COLD_CELL);
    let rtt = 100.0;

    // 1. cold command with 0-RTT, in-process (whole-process 0-RTT is impossible, see docs).
    let z = both(
        cold.and_then(|c| p50(&c.quic.client.connect_0rtt)),
        floor.and_then(|c| p50(&c.quic.client.connect_0rtt)),
    );
    out.push(match z {
        Some((q, f)) => Verdict {
            target: "cold command, QUIC 0-RTT within 1.3 RTT of the local floor (100 ms, 0%)"
                .into(),
            measured: format!(
                "in-process 0-RTT connect+first RPC p50 {} ms vs floor {} ms: +{} ms = {} RTT",
                f1(q),
                f1(f),
                f1(q - f),
                f2((q - f) / rtt)
            ),
            met: Some(q - f <= 1.3 * rtt),
        },
        None => missing("cold command, QUIC 0-RTT within 1.3 RTT of the local floor"),
    });
    for (name, pick) in [
        (
            "QUIC",
            (|c: &CellResult| p50(&c.quic.cli.wall)) as fn(&CellResult) -> Option<f64>,
        ),
        ("TCP", |c: &CellResult| p50(&c.tcp.cli.wall)),
    ] {
        if let Some((q, f)) = both(cold.and_then(pick), floor.and_then(pick)) {
            out.push(Verdict {
                target: format!("(context) whole `openshell status` process over {name}, no ticket (TCP expected about 3 RTT)"),
                measured: format!(
                    "p50 {} ms vs floor {} ms: +{} ms = {} RTT",
                    f1(q),
                    f1(f),
                    f1(q - f),
                    f2((q - f) / rtt)
                ),
                met: None,
            });
        }
    }

    let target = r.cell(TARGET_CELL);
    // 2. warm RPC p99, dense (>= 500 samples) and sparse.
    for (kind, pick) in [
        (
            "dense",
            (|c: &ClientRun| p99(&c.warm_rpc)) as fn(&ClientRun) -> Option<f64>,
        ),
        ("sparse", |c: &ClientRun| p99(&c.sparse_rpc)),
    ] {
        let name = format!("warm RPC p99 at 100 ms / 2%: QUIC at most 0.6x TCP ({kind})");
        out.push(
            match target.and_then(|c| both(pick(&c.quic.client), pick(&c.tcp.client))) {
                Some((q, t)) => Verdict {
                    target: name,
                    measured: format!("QUIC {} ms, TCP {} ms: {}x", f1(q), f1(t), f2(q / t)),
                    met: Some(q <= 0.6 * t),
                },
                None => missing(&name),
            },
        );
    }
    // 3. echo during bulk.
    out.push(
        match target
            .and_then(|c| both(p99(&c.quic.client.echo_bulk), p99(&c.quic.client.echo_idle)))
        {
            Some((b, i)) => Verdict {
                target: "echo p99 during bulk at 100 ms / 2%: QUIC at most 1.5x its idle p99"
                    .into(),
                measured: format!(
                    "during bulk {} ms, idle {} ms: {}x",
                    f1(b),
                    f1(i),
                    f2(b / i)
                ),
                met: Some(b <= 1.5 * i),
            },
            None => missing("echo p99 during bulk at 100 ms / 2%: QUIC at most 1.5x idle"),
        },
    );
    // 4. goodput, with the matrix controller and each controller of the comparison.
    let goodput_target =
        "bulk goodput at 100 ms / 2% / 100 Mbit/s: >= 40 Mbit/s with <= 5% self-induced loss";
    let mut runs: Vec<(String, &ClientRun)> = Vec::new();
    if let Some(c) = target
        && c.quic.client.bulk_secs > 0.0
    {
        runs.push((
            format!("{} (matrix)", c.quic.client.congestion),
            &c.quic.client,
        ));
    }
    for cc in r.cc.iter().filter(|c| c.cell.name == TARGET_CELL) {
        runs.push((format!("{} (comparison)", cc.congestion), &cc.client));
    }
    if runs.is_empty() {
        out.push(missing(goodput_target));
    }
    for (cc, run) in runs {
        let loss = run.quic_loss_pct();
        out.push(Verdict {
            target: format!("{goodput_target} [QUIC {cc}]"),
            measured: format!(
                "{} Mbit/s, quinn lost/sent {}%",
                f1(run.bulk_mbps),
                opt(loss, f1)
            ),
            met: Some(run.bulk_mbps >= 40.0 && loss.is_some_and(|l| l <= 5.0)),
        });
    }
    // 5. loopback.
    match &r.loopback {
        Some(lb) => {
            let rpc = both(p50(&lb.quic.warm_rpc), p50(&lb.tcp.warm_rpc));
            out.push(match rpc {
                Some((q, t)) => Verdict {
                    target: "loopback warm RPC: QUIC at most 1.25x TCP's latency (p50)".into(),
                    measured: format!("QUIC {} ms, TCP {} ms: {}x", f2(q), f2(t), f2(q / t)),
                    met: Some(q <= 1.25 * t),
                },
                None => missing("loopback warm RPC: QUIC at most 1.25x TCP"),
            });
            out.push(Verdict {
                target: "loopback tunnel: at least 1 Gbit/s per direction (QUIC)".into(),
                measured: format!(
                    "QUIC {} Mbit/s, TCP {} Mbit/s (echoed back, each direction)",
                    f1(lb.quic.bulk_mbps),
                    f1(lb.tcp.bulk_mbps)
                ),
                met: (lb.quic.bulk_secs > 0.0).then_some(lb.quic.bulk_mbps >= 1000.0),
            });
        }
        None => out.push(missing("loopback RPC and tunnel")),
    }
    out
}

fn missing(target: &str) -> Verdict {
    Verdict {
        target: target.into(),
        measured: "not measured in this run".into(),
        met: None,
    }
}

fn impaired(r: &Results) -> impl Iterator<Item = &CellResult> {
    r.cells.iter().filter(|c| !c.cell.floor)
}

/// All the tables, as Markdown.
/// Whole-process `status` through the connection agent, warm and after an idle
/// disconnect, with RTTs over the same measurement at the floor.
fn agent_table(r: &Results, s: &mut String) {
    if !r.cells.iter().any(|c| c.agent.is_some()) {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Cold command through the connection agent (ms, p50 / p99)\n"
    );
    let _ = writeln!(
        s,
        "Whole `openshell status` processes served by `openshell agent` (a local process holding the QUIC connection). Warm: the agent's connection is up. After idle: it was dropped by `--idle-disconnect` and the agent reconnects, in 0-RTT when the gateway accepts its in-memory ticket. RTTs over floor = (p50 - floor p50) / RTT.\n"
    );
    let _ = writeln!(
        s,
        "| cell | warm agent | RTTs over floor | after idle (reconnect) | RTTs over floor | 0-RTT accepted / samples | failures |\n|---|---|---|---|---|---|---|"
    );
    let floor = r.floor().and_then(|c| c.agent.as_ref());
    let over = |c: &CellResult, pick: fn(&crate::results::AgentCli) -> &Summary| {
        let here = c.agent.as_ref().and_then(|a| p50(pick(a)));
        let base = floor.and_then(|a| p50(pick(a)));
        match (here, base) {
            _ if c.cell.floor || c.cell.rtt_ms == 0 => "–".to_string(),
            (Some(h), Some(b)) => f2((h - b) / f64::from(c.cell.rtt_ms)),
            _ => "–".to_string(),
        }
    };
    for c in &r.cells {
        let Some(a) = &c.agent else { continue };
        let (ok, n) = a.zero_rtt_accepted();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {ok} / {n} | {} |",
            c.cell.label(),
            p50_p99(&a.warm.wall),
            over(c, |a| &a.warm.wall),
            p50_p99(&a.reconnect.wall),
            over(c, |a| &a.reconnect.wall),
            a.warm.failures + a.reconnect.failures
        );
    }
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.meta;
    let _ = writeln!(s, "Run: `{}`  ", m.command);
    let _ = writeln!(
        s,
        "{} to {} ({:.0} s), load average {} at the start and {} at the end, git {}, {} CPUs, kernel {}, link seed {}, TCP congestion control `{}`, QUIC congestion control in the matrix `{}`, bulk transfers {}.\n",
        m.started_utc,
        m.finished_utc,
        m.duration_secs,
        m.loadavg_start,
        m.loadavg_end,
        m.git_rev,
        m.cpus,
        m.kernel,
        m.link_seed,
        m.tcp_congestion,
        m.matrix_congestion,
        m.bulk_description()
    );

    let _ = writeln!(s, "### Targets\n");
    let _ = writeln!(s, "| target | measured | status |\n|---|---|---|");
    for v in verdicts(r) {
        let _ = writeln!(s, "| {} | {} | {} |", v.target, v.measured, v.word());
    }

    let _ = writeln!(s, "\n### Cold command (ms, p50 / p99)\n");
    let _ = writeln!(
        s,
        "Whole process = `openshell status` from spawn to exit (QUIC cannot carry a ticket across processes). In-process = one connect + first Ping from a process that is already running.\n"
    );
    let _ = writeln!(
        s,
        "| cell | process QUIC | process TCP | in-process QUIC full | in-process QUIC 0-RTT (accepted/tried) | in-process TCP | QUIC close() wait |\n|---|---|---|---|---|---|---|"
    );
    for c in &r.cells {
        let q = &c.quic.client;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} ({}/{}) | {} | {} |",
            c.cell.label(),
            p50_p99(&c.quic.cli.wall),
            p50_p99(&c.tcp.cli.wall),
            p50_p99(&q.connect_full),
            p50_p99(&q.connect_0rtt),
            q.zero_rtt_accepted,
            q.zero_rtt_attempts,
            p50_p99(&c.tcp.client.connect_full),
            p50_p99(&q.close_wait)
        );
    }

    agent_table(r, &mut s);

    let _ = writeln!(s, "\n### Warm unary RPC (ms, p50 / p95 / p99)\n");
    let _ = writeln!(
        s,
        "Dense: one Ping started every {} ms on one warm connection (open loop, several in flight). Sparse: one every {} ms, so each is alone on the wire and a lost packet waits for a timer.\n",
        r.plan.rpc_interval_ms, r.plan.sparse_interval_ms
    );
    let _ = writeln!(
        s,
        "| cell | n Q/T | QUIC dense | TCP dense | p99 Q/T | QUIC sparse | TCP sparse | sparse p99 Q/T | errors Q/T |\n|---|---|---|---|---|---|---|---|---|"
    );
    let rat99 =
        |a: &Summary, b: &Summary| opt(both(p99(a), p99(b)).and_then(|(a, b)| ratio(a, b)), f2);
    for c in &r.cells {
        let (q, t) = (&c.quic.client, &c.tcp.client);
        let _ = writeln!(
            s,
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {}/{} |",
            c.cell.label(),
            q.warm_rpc.n,
            t.warm_rpc.n,
            p50_95_99(&q.warm_rpc),
            p50_95_99(&t.warm_rpc),
            rat99(&q.warm_rpc, &t.warm_rpc),
            p50_95_99(&q.sparse_rpc),
            p50_95_99(&t.sparse_rpc),
            rat99(&q.sparse_rpc, &t.sparse_rpc),
            q.rpc_errors,
            t.rpc_errors
        );
    }

    if r.cells
        .iter()
        .any(|c| c.quic.client.warm_rpc_unhedged.n > 0)
    {
        let _ = writeln!(
            s,
            "\n### QUIC request hedging (ms, p50 / p95 / p99)\n\nThe same connection, hedging off first, then the worker's policy (`auto`: idempotent reads go out twice, rtt/10 apart, while the connection has lost a packet in the last 30 s). The tables above use the hedged figures. \"Sent twice\" counts the reads of the hedged phase that went out twice and those whose second copy found no room in the congestion window.\n"
        );
        let _ = writeln!(
            s,
            "| cell | QUIC dense, off | QUIC dense, hedged | TCP dense | hedged/TCP p99 | dense sent twice / no room | QUIC sparse, off | QUIC sparse, hedged | TCP sparse | hedged/TCP p99 | sparse sent twice / no room |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for c in &r.cells {
            let (q, t) = (&c.quic.client, &c.tcp.client);
            if q.warm_rpc_unhedged.n == 0 {
                continue;
            }
            let decisions = |phase: &str| {
                q.hedge_decisions
                    .iter()
                    .find(|d| d.phase == phase)
                    .map(|d| format!("{} / {}", d.hedged, d.no_room))
                    .unwrap_or_else(|| "–".into())
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.cell.label(),
                p50_95_99(&q.warm_rpc_unhedged),
                p50_95_99(&q.warm_rpc),
                p50_95_99(&t.warm_rpc),
                rat99(&q.warm_rpc, &t.warm_rpc),
                decisions("rpc"),
                p50_95_99(&q.sparse_rpc_unhedged),
                p50_95_99(&q.sparse_rpc),
                p50_95_99(&t.sparse_rpc),
                rat99(&q.sparse_rpc, &t.sparse_rpc),
                decisions("sparse rpc"),
            );
        }
    }

    let _ = writeln!(s, "\n### Interactive echo every 50 ms (ms, p50 / p99)\n");
    let _ = writeln!(
        s,
        "| cell | QUIC idle | QUIC during bulk | QUIC bulk/idle p99 | TCP idle | TCP during bulk | TCP bulk/idle p99 | late echoes Q/T |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &r.cells {
        let (q, t) = (&c.quic.client, &c.tcp.client);
        let rat = |x: &ClientRun| {
            opt(
                both(p99(&x.echo_bulk), p99(&x.echo_idle)).and_then(|(a, b)| ratio(a, b)),
                f2,
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            c.cell.label(),
            p50_p99(&q.echo_idle),
            p50_p99(&q.echo_bulk),
            rat(q),
            p50_p99(&t.echo_idle),
            p50_p99(&t.echo_bulk),
            rat(t),
            q.echo_missing,
            t.echo_missing
        );
    }

    let _ = writeln!(
        s,
        "\n### Bulk tunnel goodput (Mbit/s, {}) and loss\n",
        r.meta.bulk_direction()
    );
    let _ = writeln!(
        s,
        "quinn lost/sent = the client's (uploading sender's) own loss count. Queue drops = packets the emulator's 1000-packet queue refused, as a share of packets offered (up = client to gateway); they are what the senders did to themselves, on top of the random loss.\n"
    );
    let _ = writeln!(
        s,
        "| cell | QUIC Mbit/s | quinn lost/sent % | QUIC queue drops up/down % | TCP Mbit/s | TCP queue drops up/down % |\n|---|---|---|---|---|---|"
    );
    for c in impaired(r) {
        let (q, t) = (&c.quic, &c.tcp);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} / {} | {} | {} / {} |",
            c.cell.label(),
            f1(q.client.bulk_mbps),
            opt(q.client.quic_loss_pct(), f2),
            f2(q.link.up.queue_drop_pct()),
            f2(q.link.down.queue_drop_pct()),
            f1(t.client.bulk_mbps),
            f2(t.link.up.queue_drop_pct()),
            f2(t.link.down.queue_drop_pct())
        );
    }

    if !r.cc.is_empty() {
        let _ = writeln!(
            s,
            "\n### Congestion control (QUIC, both ends): Mbit/s (quinn lost/sent %, queue drops up %)\n"
        );
        let ccs = cc_names(r);
        let _ = write!(s, "| cell |");
        for cc in &ccs {
            let _ = write!(s, " {cc} |");
        }
        let _ = writeln!(s, "\n|---|{}", "---|".repeat(ccs.len()));
        let mut cells: Vec<&Cell> = Vec::new();
        for c in &r.cc {
            if !cells.contains(&&c.cell) {
                cells.push(&c.cell);
            }
        }
        for cell in cells {
            let _ = write!(s, "| {} |", cell.label());
            for cc in &ccs {
                match r.cc.iter().find(|c| &c.cell == cell && &c.congestion == cc) {
                    Some(c) => {
                        let _ = write!(
                            s,
                            " {} ({}, {}) |",
                            f1(c.client.bulk_mbps),
                            opt(c.client.quic_loss_pct(), f1),
                            f1(c.link.up.queue_drop_pct())
                        );
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
    }

    if let Some(lb) = &r.loopback {
        let _ = writeln!(
            s,
            "\n### Plain loopback (inside one namespace, no emulator)\n"
        );
        let _ = writeln!(
            s,
            "| transport | warm RPC p50 / p95 / p99 (ms) | n | tunnel Mbit/s each direction | gateway CPU s during the run |\n|---|---|---|---|---|"
        );
        for (name, run, cpu) in [
            ("QUIC", &lb.quic, lb.gateway_cpu_secs_quic),
            ("TCP", &lb.tcp, lb.gateway_cpu_secs_tcp),
        ] {
            let w = &run.warm_rpc;
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                if w.is_empty() {
                    "–".into()
                } else {
                    format!("{} / {} / {}", f2(w.p50_ms), f2(w.p95_ms), f2(w.p99_ms))
                },
                w.n,
                f1(run.bulk_mbps),
                f2(cpu)
            );
        }
    }

    if !r.memory.is_empty() {
        let _ = writeln!(s, "\n### Gateway memory (RSS from /proc/PID/status)\n");
        let _ = writeln!(
            s,
            "| transport | target | client processes | connections reached | KiB per idle connection | tunnels reached | KiB per open tunnel | RSS base / conns / tunnels (MiB) | connect time s | note |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for m in &r.memory {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
                m.transport,
                m.target,
                m.client_processes,
                m.connections,
                opt(m.per_connection_kib(), f1),
                m.tunnels,
                opt(m.per_tunnel_kib(), f1),
                f1(m.rss_base_kib as f64 / 1024.0),
                f1(m.rss_connections_kib as f64 / 1024.0),
                f1(m.rss_tunnels_kib as f64 / 1024.0),
                f1(m.connect_secs),
                m.note.clone().unwrap_or_default()
            );
        }
    }

    let mut errors: Vec<String> = r.failures.clone();
    for c in &r.cells {
        for side in [&c.quic, &c.tcp] {
            for e in &side.client.errors {
                errors.push(format!("{} {}: {e}", c.cell.name, side.client.transport));
            }
            if side.cli.failures > 0 {
                errors.push(format!(
                    "{} CLI failures: {} ({})",
                    c.cell.name,
                    side.cli.failures,
                    side.cli.first_error.clone().unwrap_or_default()
                ));
            }
        }
    }
    for c in &r.cc {
        for e in &c.client.errors {
            errors.push(format!("cc {} {}: {e}", c.cell.name, c.congestion));
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(s, "\n### Errors during the run\n");
        for e in errors {
            let _ = writeln!(s, "- {}", e.replace('\n', " "));
        }
    }
    s
}

fn cc_names(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for c in &r.cc {
        if !v.contains(&c.congestion) {
            v.push(c.congestion.clone());
        }
    }
    v
}

fn rtts(r: &Results) -> Vec<u32> {
    let mut v: Vec<u32> = impaired(r)
        .filter(|c| c.cell.reorder_pct == 0.0)
        .map(|c| c.cell.rtt_ms)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Per transport and RTT, `metric` against loss, over the loss cells of the matrix.
fn by_loss(r: &Results, metric: fn(&ClientRun) -> Option<f64>) -> Vec<Series> {
    let mut out = Vec::new();
    for (t, dash) in [("QUIC", ""), ("TCP", "6 4")] {
        for (i, rtt) in rtts(r).into_iter().enumerate() {
            let points = impaired(r)
                .filter(|c| c.cell.rtt_ms == rtt && c.cell.reorder_pct == 0.0)
                .filter_map(|c| {
                    let run = if t == "QUIC" {
                        &c.quic.client
                    } else {
                        &c.tcp.client
                    };
                    metric(run).map(|y| (c.cell.loss_pct, y))
                })
                .collect();
            out.push(Series {
                name: format!("{t} {rtt} ms"),
                color: PALETTE[i % PALETTE.len()].into(),
                dash: dash.into(),
                points,
            });
        }
    }
    out
}

/// `(file name, SVG)` for every chart.
pub fn charts(r: &Results) -> Vec<(String, String)> {
    let x = "random loss each direction (%)".to_string();
    let mut out = vec![
        (
            "warm-rpc-p99.svg".to_string(),
            Chart {
                title: "Warm unary RPC p99 vs loss (QUIC solid, TCP dashed)".into(),
                x_label: x.clone(),
                y_label: "p99 latency (ms, log)".into(),
                log_y: true,
                series: by_loss(r, |c| p99(&c.warm_rpc)),
            },
        ),
        (
            "echo-p99-during-bulk.svg".to_string(),
            Chart {
                title: "Interactive echo p99 during a bulk transfer vs loss".into(),
                x_label: x.clone(),
                y_label: "p99 latency (ms, log)".into(),
                log_y: true,
                series: by_loss(r, |c| p99(&c.echo_bulk)),
            },
        ),
        (
            "goodput.svg".to_string(),
            Chart {
                title: "Bulk tunnel goodput vs loss (100 Mbit/s link)".into(),
                x_label: x.clone(),
                y_label: format!("Mbit/s {} (log)", r.meta.bulk_direction()),
                log_y: true,
                series: by_loss(r, |c| (c.bulk_secs > 0.0).then_some(c.bulk_mbps)),
            },
        ),
    ];
    if !r.cc.is_empty() {
        let dashes = ["", "6 4", "2 3"];
        let mut goodput = Vec::new();
        let mut loss = Vec::new();
        let mut rtt_list: Vec<u32> = r.cc.iter().map(|c| c.cell.rtt_ms).collect();
        rtt_list.sort_unstable();
        rtt_list.dedup();
        for (i, cc) in cc_names(r).into_iter().enumerate() {
            for (j, rtt) in rtt_list.iter().enumerate() {
                let runs: Vec<_> =
                    r.cc.iter()
                        .filter(|c| {
                            c.congestion == cc && c.cell.rtt_ms == *rtt && c.cell.reorder_pct == 0.0
                        })
                        .collect();
                let series = |points| Series {
                    name: format!("{cc} {rtt} ms"),
                    color: PALETTE[i % PALETTE.len()].into(),
                    dash: dashes[j % dashes.len()].into(),
                    points,
                };
                goodput.push(series(
                    runs.iter()
                        .map(|c| (c.cell.loss_pct, c.client.bulk_mbps))
                        .collect(),
                ));
                loss.push(series(
                    runs.iter()
                        .filter_map(|c| c.client.quic_loss_pct().map(|l| (c.cell.loss_pct, l)))
                        .collect(),
                ));
            }
        }
        out.push((
            "cc-goodput.svg".into(),
            Chart {
                title: "QUIC goodput by congestion controller".into(),
                x_label: x.clone(),
                y_label: format!("Mbit/s {} (log)", r.meta.bulk_direction()),
                log_y: true,
                series: goodput,
            },
        ));
        out.push((
            "cc-self-loss.svg".into(),
            Chart {
                title: "QUIC sender's lost/sent packets by congestion controller".into(),
                x_label: x,
                y_label: "lost / sent (%)".into(),
                log_y: false,
                series: loss,
            },
        ));
    }
    out.into_iter().map(|(n, c)| (n, c.render())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::results::{CcResult, Loopback, Meta, Side};

    fn summary(p50: f64, p99: f64) -> Summary {
        Summary {
            n: 500,
            p50_ms: p50,
            p95_ms: p99,
            p99_ms: p99,
            max_ms: p99,
            mean_ms: p50,
        }
    }

    fn side(transport: &str, rpc_p99: f64, cli: f64, zero: f64) -> Side {
        Side {
            client: ClientRun {
                transport: transport.into(),
                congestion: "cubic".into(),
                warm_rpc: summary(101.0, rpc_p99),
                connect_0rtt: if zero > 0.0 {
                    summary(zero, zero)
                } else {
                    Summary::default()
                },
                echo_idle: summary(101.0, 110.0),
                echo_bulk: summary(120.0, 200.0),
                bulk_mbps: 50.0,
                bulk_secs: 6.0,
                quic_sent_packets: Some(1000),
                quic_lost_packets: Some(30),
                ..ClientRun::default()
            },
            cli: crate::results::CliRuns {
                wall: summary(cli, cli),
                ..Default::default()
            },
            ..Side::default()
        }
    }

    fn sample() -> Results {
        let cell = |c: Cell, q_p99: f64, t_p99: f64, scale: f64| CellResult {
            cell: c,
            quic: side("quic", q_p99, 20.0 + 200.0 * scale, 2.0 + 100.0 * scale),
            tcp: side("tcp", t_p99, 20.0 + 300.0 * scale, 0.0),
            agent: None,
        };
        Results {
            meta: Meta {
                command: "scripts/bench --quick".into(),
                ..Meta::default()
            },
            plan: Plan::quick(),
            cells: vec![
                cell(Cell::floor(), 1.0, 1.0, 0.0),
                cell(Cell::impaired(100, 0.0), 102.0, 103.0, 1.0),
                cell(Cell::impaired(100, 2.0), 216.0, 564.0, 1.0),
            ],
            cc: vec![CcResult {
                cell: Cell::impaired(100, 2.0),
                congestion: "bbr".into(),
                client: ClientRun {
                    bulk_mbps: 65.0,
                    bulk_secs: 4.0,
                    quic_sent_packets: Some(100),
                    quic_lost_packets: Some(30),
                    ..ClientRun::default()
                },
                link: Default::default(),
            }],
            loopback: Some(Loopback {
                quic: ClientRun {
                    warm_rpc: summary(0.4, 1.0),
                    bulk_mbps: 600.0,
                    bulk_secs: 3.0,
                    ..ClientRun::default()
                },
                tcp: ClientRun {
                    warm_rpc: summary(0.3, 0.5),
                    bulk_mbps: 1500.0,
                    bulk_secs: 3.0,
                    ..ClientRun::default()
                },
                ..Loopback::default()
            }),
            memory: vec![],
            failures: vec![],
        }
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let v = verdicts(&sample());
        let find = |prefix: &str| v.iter().find(|v| v.target.starts_with(prefix)).unwrap();
        // 0-RTT: 102 - 2 = 100 ms = 1.0 RTT <= 1.3.
        assert_eq!(find("cold command").met, Some(true));
        assert!(find("cold command").measured.contains("1.00 RTT"));
        // 216 / 564 = 0.38 <= 0.6; sparse was not measured.
        assert_eq!(
            find("warm RPC p99 at 100 ms / 2%: QUIC at most 0.6x TCP (dense)").met,
            Some(true)
        );
        assert_eq!(
            find("warm RPC p99 at 100 ms / 2%: QUIC at most 0.6x TCP (sparse)").met,
            None
        );
        // echo 200 / 110 = 1.8 > 1.5.
        assert_eq!(find("echo p99").met, Some(false));
        // Cubic 50 Mbit/s with 3% loss: met; BBR 65 Mbit/s with 30% loss: not met.
        let goodput: Vec<_> = v
            .iter()
            .filter(|v| v.target.starts_with("bulk goodput"))
            .collect();
        assert_eq!(goodput.len(), 2);
        assert_eq!(goodput[0].met, Some(true));
        assert_eq!(goodput[1].met, Some(false));
        // 0.4 / 0.3 = 1.33 > 1.25; 600 Mbit/s < 1 Gbit/s.
        assert_eq!(find("loopback warm").met, Some(false));
        assert_eq!(find("loopback tunnel").met, Some(false));
    }

    #[test]
    fn missing_cells_are_not_verdicts() {
        let mut r = sample();
        r.cells.retain(|c| c.cell.floor);
        r.cc.clear();
        r.loopback = None;
        assert!(verdicts(&r).iter().all(|v| v.met.is_none()));
    }

    #[test]
    fn markdown_has_every_table_and_the_command() {
        let md = markdown(&sample());
        for heading in [
            "### Targets",
            "### Cold command",
            "### Warm unary RPC",
            "### Interactive echo",
            "### Bulk tunnel goodput (Mbit/s, each direction)",
            "### Congestion control",
            "### Plain loopback",
        ] {
            assert!(md.contains(heading), "missing {heading}");
        }
        assert!(md.contains("scripts/bench --quick"));
        // Results from before the bulk mode existed read as echo (both directions).
        assert!(md.contains("bulk transfers both ways through an echo tunnel"));
        assert!(md.contains("| 100 ms / 2% | 500/500 | 101.0 / 216.0 / 216.0 | 101.0 / 564.0 / 564.0 | 0.38 | – | – | – |"));
        // Empty summaries print a dash, never NaN.
        assert!(!md.contains("NaN"));
    }

    #[test]
    fn charts_render_for_each_metric() {
        let charts = charts(&sample());
        let names: Vec<_> = charts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "warm-rpc-p99.svg",
                "echo-p99-during-bulk.svg",
                "goodput.svg",
                "cc-goodput.svg",
                "cc-self-loss.svg"
            ]
        );
        let (_, rpc) = &charts[0];
        // QUIC and TCP at the one RTT of the sample.
        assert_eq!(rpc.matches("<polyline").count(), 2);
    }
}
