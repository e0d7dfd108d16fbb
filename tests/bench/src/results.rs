//! The results file (`bench-results/results.json`): every number the report prints comes
//! from here, so a report can be regenerated without re-running the benchmark.

use serde::{Deserialize, Serialize};

use crate::plan::{Cell, Plan};
use crate::stats::Summary;

/// What one client worker measured on one connection path (printed by `worker` as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientRun {
    /// `quic` or `tcp`.
    pub transport: String,
    /// Congestion controller of the QUIC sender on both ends (TCP uses the kernel's).
    pub congestion: String,
    /// In-process: new connector (no ticket) -> connect -> first Ping answered.
    pub connect_full: Summary,
    /// In-process: connector holding a ticket -> 0-RTT connect -> first Ping answered;
    /// only samples where the gateway accepted early data.
    pub connect_0rtt: Summary,
    /// How long `Connection::close()` took after the full-handshake samples (the CLI
    /// waits for it before exiting).
    #[serde(default)]
    pub close_wait: Summary,
    pub zero_rtt_attempts: u32,
    pub zero_rtt_accepted: u32,
    /// Warm unary Ping latency, open loop (one RPC started every interval).
    pub warm_rpc: Summary,
    /// Warm Ping latency with RPCs spaced wider than the RTT (one alone on the wire).
    #[serde(default)]
    pub sparse_rpc: Summary,
    /// QUIC only: the same two phases with hedging off, run first on the same connection
    /// (the hedged figures above use the worker's policy, `auto` unless told otherwise).
    #[serde(default)]
    pub warm_rpc_unhedged: Summary,
    #[serde(default)]
    pub sparse_rpc_unhedged: Summary,
    pub rpc_errors: u32,
    /// QUIC only: per hedged RPC phase, how many reads went out twice and how many found
    /// no room in the congestion window for the second copy.
    #[serde(default)]
    pub hedge_decisions: Vec<HedgeDecisions>,
    /// 32-byte echo every 50 ms through a tunnel, nothing else running.
    pub echo_idle: Summary,
    /// The same probe on a second tunnel while a bulk transfer runs on the first.
    pub echo_bulk: Summary,
    /// Echoes not back before the end of their phase (counted, not in the percentiles).
    pub echo_missing: u32,
    /// Bulk echo tunnel: bytes echoed back per second during the measured window.
    pub bulk_mbps: f64,
    pub bulk_bytes: u64,
    pub bulk_secs: f64,
    /// quinn path counters of the client (the uploading sender) during the window.
    pub quic_sent_packets: Option<u64>,
    pub quic_lost_packets: Option<u64>,
    /// Anything that failed in this worker, in words.
    pub errors: Vec<String>,
}

/// Hedging decisions of one RPC phase (see `ClientRun::hedge_decisions`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HedgeDecisions {
    pub phase: String,
    pub hedged: u64,
    pub no_room: u64,
}

impl ClientRun {
    /// quinn's self-induced loss: lost / sent packets of the sender, in percent.
    pub fn quic_loss_pct(&self) -> Option<f64> {
        match (self.quic_lost_packets, self.quic_sent_packets) {
            (Some(l), Some(s)) if s > 0 => Some(100.0 * l as f64 / s as f64),
            _ => None,
        }
    }
}

/// Emulator counters of one direction, as a difference over one worker's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirDelta {
    pub packets_in: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub reordered: u64,
}

impl DirDelta {
    /// Queue (tail) drops as a share of packets offered, in percent: loss the senders
    /// caused themselves by overrunning the 1000-packet queue.
    pub fn queue_drop_pct(&self) -> f64 {
        if self.packets_in == 0 {
            0.0
        } else {
            100.0 * self.dropped_queue as f64 / self.packets_in as f64
        }
    }
}

/// Both directions: `up` is client -> gateway (namespace A -> B).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkDelta {
    pub up: DirDelta,
    pub down: DirDelta,
}

/// Whole-process `openshell status` wall times.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CliRuns {
    pub wall: Summary,
    pub failures: u32,
    pub first_error: Option<String>,
}

/// One transport in one cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Side {
    pub cli: CliRuns,
    pub client: ClientRun,
    pub link: LinkDelta,
}

/// Whole-process `openshell status` through the connection agent (`openshell agent`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentCli {
    /// The agent holds a warm connection: the command costs its RPCs only.
    pub warm: CliRuns,
    /// The agent dropped its idle connection and reconnects for the command (0-RTT when
    /// the gateway accepts the ticket it kept).
    pub reconnect: CliRuns,
    /// Per successful reconnect sample, in order: whether the gateway accepted 0-RTT.
    pub reconnect_zero_rtt: Vec<bool>,
}

impl AgentCli {
    /// (accepted, samples) of the reconnect cell.
    pub fn zero_rtt_accepted(&self) -> (usize, usize) {
        (
            self.reconnect_zero_rtt.iter().filter(|a| **a).count(),
            self.reconnect_zero_rtt.len(),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub cell: Cell,
    pub quic: Side,
    pub tcp: Side,
    /// Absent in results from before the agent existed.
    #[serde(default)]
    pub agent: Option<AgentCli>,
}

/// One congestion controller in one lossy cell (QUIC, bulk only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CcResult {
    pub cell: Cell,
    pub congestion: String,
    pub client: ClientRun,
    pub link: LinkDelta,
}

/// Plain loopback inside one namespace: no emulator in the path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Loopback {
    pub quic: ClientRun,
    pub tcp: ClientRun,
    /// CPU seconds (user+system) the gateway used during each client's run.
    pub gateway_cpu_secs_quic: f64,
    pub gateway_cpu_secs_tcp: f64,
}

/// Gateway memory with many idle connections, then one open tunnel on each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub transport: String,
    pub target: u32,
    pub client_processes: u32,
    pub connections: u32,
    pub tunnels: u32,
    pub rss_base_kib: u64,
    pub rss_connections_kib: u64,
    pub rss_tunnels_kib: u64,
    pub connect_secs: f64,
    /// Why the target was not reached, when it was not.
    pub note: Option<String>,
}

impl Memory {
    pub fn per_connection_kib(&self) -> Option<f64> {
        (self.connections > 0).then(|| {
            (self.rss_connections_kib as f64 - self.rss_base_kib as f64)
                / f64::from(self.connections)
        })
    }

    pub fn per_tunnel_kib(&self) -> Option<f64> {
        (self.tunnels > 0).then(|| {
            (self.rss_tunnels_kib as f64 - self.rss_connections_kib as f64)
                / f64::from(self.tunnels)
        })
    }
}

/// Where and how the run happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub command: String,
    pub started_utc: String,
    pub finished_utc: String,
    pub duration_secs: f64,
    pub git_rev: String,
    pub kernel: String,
    pub cpus: usize,
    /// Kernel TCP congestion control inside the namespaces (the TCP path's controller).
    pub tcp_congestion: String,
    pub nofile_limit: String,
    /// /proc/loadavg at the start and the end: the machine is shared, so say how busy.
    #[serde(default)]
    pub loadavg_start: String,
    #[serde(default)]
    pub loadavg_end: String,
    pub link_seed: u64,
    /// The gateway's QUIC congestion controller in the matrix (its default).
    pub matrix_congestion: String,
    /// What the bulk phases of the matrix and the comparison moved: `echo` (both ways
    /// through an echo tunnel; every run before session 5) or `upload` (client to gateway).
    #[serde(default = "echo_mode")]
    pub bulk_mode: String,
}

fn echo_mode() -> String {
    "echo".into()
}

impl Meta {
    /// The direction a matrix goodput figure counts, for table headings.
    pub fn bulk_direction(&self) -> &'static str {
        if self.uploads() {
            "client to gateway"
        } else {
            "each direction"
        }
    }

    /// What the bulk phases moved, in words.
    pub fn bulk_description(&self) -> &'static str {
        if self.uploads() {
            "one way (client to gateway)"
        } else {
            "both ways through an echo tunnel"
        }
    }

    fn uploads(&self) -> bool {
        self.bulk_mode == "upload"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub plan: Plan,
    pub cells: Vec<CellResult>,
    pub cc: Vec<CcResult>,
    pub loopback: Option<Loopback>,
    pub memory: Vec<Memory>,
    /// Phases that failed as a whole, in words.
    pub failures: Vec<String>,
}

impl Results {
    pub fn cell(&self, name: &str) -> Option<&CellResult> {
        self.cells.iter().find(|c| c.cell.name == name)
    }

    pub fn floor(&self) -> Option<&CellResult> {
        self.cells.iter().find(|c| c.cell.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_shares() {
        let run = ClientRun {
            quic_sent_packets: Some(200),
            quic_lost_packets: Some(5),
            ..ClientRun::default()
        };
        assert_eq!(run.quic_loss_pct(), Some(2.5));
        assert_eq!(ClientRun::default().quic_loss_pct(), None);
        let d = DirDelta {
            packets_in: 1000,
            dropped_queue: 30,
            ..DirDelta::default()
        };
        assert!((d.queue_drop_pct() - 3.0).abs() < 1e-9);
        assert_eq!(DirDelta::default().queue_drop_pct(), 0.0);
    }

    #[test]
    fn memory_per_item() {
        let m = Memory {
            connections: 1000,
            tunnels: 1000,
            rss_base_kib: 10_000,
            rss_connections_kib: 60_000,
            rss_tunnels_kib: 80_000,
            ..Memory::default()
        };
        assert_eq!(m.per_connection_kib(), Some(50.0));
        assert_eq!(m.per_tunnel_kib(), Some(20.0));
        assert_eq!(Memory::default().per_connection_kib(), None);
    }
}
