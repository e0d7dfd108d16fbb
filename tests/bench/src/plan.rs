//! What a run measures: the cells of the link matrix and the per-measurement counts of the
//! quick and full modes. Pure; the orchestrator turns it into link settings and processes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Link rate of every impaired cell (the issue's 100 Mbit/s link).
pub const RATE_BPS: u64 = 100_000_000;
/// Tail-drop queue of every impaired cell, in packets (netem's default limit).
pub const QUEUE_PACKETS: usize = 1000;

/// One link condition, applied identically in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Short stable name used in tables and file names, e.g. `rtt100-loss2`.
    pub name: String,
    /// Round-trip time; each direction gets half as one-way delay. 0 = the unimpaired floor.
    pub rtt_ms: u32,
    /// Independent random loss per direction, in percent.
    pub loss_pct: f64,
    /// Reordering: share of packets (percent) held back by `reorder_extra_ms`.
    pub reorder_pct: f64,
    pub reorder_extra_ms: u32,
    /// Whether the cell is the unimpaired floor (no delay, no rate limit).
    pub floor: bool,
}

impl Cell {
    pub fn impaired(rtt_ms: u32, loss_pct: f64) -> Cell {
        Cell {
            name: format!("rtt{rtt_ms}-loss{}", fmt_num(loss_pct)),
            rtt_ms,
            loss_pct,
            reorder_pct: 0.0,
            reorder_extra_ms: 0,
            floor: false,
        }
    }

    pub fn reordering(rtt_ms: u32, pct: f64, extra_ms: u32) -> Cell {
        Cell {
            name: format!("rtt{rtt_ms}-reorder{}", fmt_num(pct)),
            rtt_ms,
            loss_pct: 0.0,
            reorder_pct: pct,
            reorder_extra_ms: extra_ms,
            floor: false,
        }
    }

    /// The same emulator path with no impairment at all: the local floor.
    pub fn floor() -> Cell {
        Cell {
            name: "floor".into(),
            rtt_ms: 0,
            loss_pct: 0.0,
            reorder_pct: 0.0,
            reorder_extra_ms: 0,
            floor: true,
        }
    }

    pub fn one_way_delay(&self) -> Duration {
        Duration::from_micros(u64::from(self.rtt_ms) * 500)
    }

    /// Human label: `100 ms / 2%`, `100 ms / reorder 5% +10 ms`, `floor`.
    pub fn label(&self) -> String {
        if self.floor {
            "floor (no impairment)".into()
        } else if self.reorder_pct > 0.0 {
            format!(
                "{} ms / reorder {}% +{} ms",
                self.rtt_ms,
                fmt_num(self.reorder_pct),
                self.reorder_extra_ms
            )
        } else {
            format!("{} ms / {}%", self.rtt_ms, fmt_num(self.loss_pct))
        }
    }
}

/// `2` for 2.0, `0.5` for 0.5.
pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// Quick or full: which cells, and how much of each measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: String,
    pub cells: Vec<Cell>,
    /// Cells of the congestion-control comparison (QUIC only, all three controllers).
    pub cc_cells: Vec<Cell>,
    /// Warm unary RPCs per cell and transport, issued open-loop every `rpc_interval_ms`.
    pub rpcs: u32,
    pub rpc_interval_ms: u32,
    /// Sparse warm RPCs (spaced `sparse_interval_ms`, wider than the RTT) in the cells
    /// whose RTT is listed in `sparse_rtts` (one row only: they cost RTT each).
    pub sparse_rpcs: u32,
    pub sparse_interval_ms: u32,
    pub sparse_rtts: Vec<u32>,
    /// Whole `openshell status` processes per cell and transport.
    pub cli_runs: u32,
    /// In-process connect + first RPC samples (full handshake, and 0-RTT) per cell.
    pub connects: u32,
    /// Interactive echo (one every 50 ms) without load, seconds.
    pub echo_secs: u32,
    /// Bulk ramp-up before the measured window, seconds.
    pub bulk_warmup_secs: u32,
    /// Bulk measured window (the echo probe runs during it), seconds.
    pub bulk_secs: u32,
    /// Bulk window of each congestion-control sample, seconds (after the same warm-up).
    pub cc_bulk_secs: u32,
    /// Loopback: warm RPCs (every `loopback_rpc_interval_ms`) and bulk seconds.
    pub loopback_rpcs: u32,
    pub loopback_rpc_interval_ms: u32,
    pub loopback_bulk_secs: u32,
    /// Connection counts of the memory measurement.
    pub memory_counts: Vec<u32>,
}

impl Plan {
    /// The whole matrix: RTT {20,100,300} x loss {0,1,2,5} plus a reordering cell.
    pub fn full() -> Plan {
        let mut cells = vec![Cell::floor()];
        for rtt in [20, 100, 300] {
            for loss in [0.0, 1.0, 2.0, 5.0] {
                cells.push(Cell::impaired(rtt, loss));
            }
        }
        cells.push(Cell::reordering(100, 5.0, 10));
        // The clean cells too: a default must not cost goodput where there is no loss.
        let mut cc_cells: Vec<Cell> = [20, 100, 300]
            .into_iter()
            .flat_map(|rtt| [0.0, 1.0, 2.0, 5.0].map(|l| Cell::impaired(rtt, l)))
            .collect();
        cc_cells.push(Cell::reordering(100, 5.0, 10));
        Plan {
            mode: "full".into(),
            cells,
            cc_cells,
            rpcs: 500,
            rpc_interval_ms: 10,
            sparse_rpcs: 60,
            sparse_interval_ms: 200,
            sparse_rtts: vec![100],
            cli_runs: 4,
            connects: 4,
            echo_secs: 5,
            bulk_warmup_secs: 2,
            bulk_secs: 5,
            cc_bulk_secs: 4,
            loopback_rpcs: 2000,
            loopback_rpc_interval_ms: 1,
            loopback_bulk_secs: 5,
            memory_counts: vec![1000, 10000],
        }
    }

    /// About three minutes: the cells the targets are stated for, fewer samples.
    pub fn quick() -> Plan {
        Plan {
            mode: "quick".into(),
            cells: vec![
                Cell::floor(),
                Cell::impaired(100, 0.0),
                Cell::impaired(100, 2.0),
            ],
            cc_cells: vec![Cell::impaired(100, 2.0)],
            rpcs: 150,
            rpc_interval_ms: 10,
            sparse_rpcs: 40,
            sparse_interval_ms: 200,
            sparse_rtts: vec![100],
            cli_runs: 3,
            connects: 3,
            echo_secs: 3,
            bulk_warmup_secs: 2,
            bulk_secs: 4,
            cc_bulk_secs: 4,
            loopback_rpcs: 500,
            loopback_rpc_interval_ms: 1,
            loopback_bulk_secs: 3,
            memory_counts: vec![1000],
        }
    }

    /// Keeps only the cells whose name is listed (the floor always stays: ratios need it).
    pub fn only_cells(mut self, names: &[String]) -> Plan {
        if names.is_empty() {
            return self;
        }
        let all: Vec<Cell> = Plan::full().cells;
        self.cells = all
            .into_iter()
            .filter(|c| c.floor || names.contains(&c.name))
            .collect();
        self.cc_cells = Plan::full()
            .cc_cells
            .into_iter()
            .filter(|c| names.contains(&c.name))
            .collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matrix_is_the_issue_matrix() {
        let p = Plan::full();
        // floor + 3 RTTs x 4 losses + 1 reordering cell.
        assert_eq!(p.cells.len(), 14);
        assert!(p.cells[0].floor);
        assert!(p.cells.iter().any(|c| c.name == "rtt100-loss2"));
        assert!(p.cells.iter().any(|c| c.reorder_pct > 0.0));
        // Every impaired cell: 3 RTTs x 4 losses + the reordering cell.
        assert_eq!(p.cc_cells.len(), 13);
        assert!(p.cc_cells.iter().all(|c| !c.floor));
        assert!(p.rpcs >= 500);
    }

    #[test]
    fn names_and_labels() {
        let c = Cell::impaired(100, 2.0);
        assert_eq!(c.name, "rtt100-loss2");
        assert_eq!(c.label(), "100 ms / 2%");
        assert_eq!(c.one_way_delay(), Duration::from_millis(50));
        assert_eq!(Cell::impaired(20, 0.5).name, "rtt20-loss0.5");
        assert_eq!(
            Cell::reordering(100, 5.0, 10).label(),
            "100 ms / reorder 5% +10 ms"
        );
    }

    #[test]
    fn cell_filter_keeps_the_floor() {
        let p = Plan::quick().only_cells(&["rtt300-loss5".into()]);
        assert_eq!(p.cells.len(), 2);
        assert!(p.cells[0].floor);
        assert_eq!(p.cells[1].name, "rtt300-loss5");
        assert_eq!(p.cc_cells.len(), 1);
        let p = Plan::quick().only_cells(&["floor".into()]);
        assert_eq!(p.cells.len(), 1);
        assert!(p.cc_cells.is_empty());
    }
}
