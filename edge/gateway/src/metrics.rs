//! Prometheus metrics in the text exposition format: RPC counts and latencies (recorded by
//! the auth layer), transport counters, and per-connection QUIC path statistics read at
//! scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openshell_transport::server::{ConnectionRegistry, TransportMetrics};

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// RPC counters by (method, code) and latency histograms by method.
#[derive(Debug, Default)]
pub struct RpcMetrics {
    calls: Mutex<BTreeMap<(String, String), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

impl RpcMetrics {
    /// Records one RPC. `elapsed` runs until the response head (for streams: the start).
    pub fn record(&self, method: &str, code: &str, elapsed: Duration) {
        *self
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((method.to_string(), code.to_string()))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut lat = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = lat.entry(method.to_string()).or_insert_with(|| Histogram {
            counts: vec![0; BUCKETS.len()],
            ..Histogram::default()
        });
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric.
pub fn render(
    rpc: &RpcMetrics,
    transport: &TransportMetrics,
    registry: &ConnectionRegistry,
) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let _ = writeln!(
        out,
        "# HELP openshell_connections_total Connections accepted, by transport.\n# TYPE openshell_connections_total counter"
    );
    let _ = writeln!(
        out,
        "openshell_connections_total{{transport=\"quic\"}} {}",
        transport.quic_connections.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "openshell_connections_total{{transport=\"tcp\"}} {}",
        transport.tcp_connections.load(Ordering::Relaxed)
    );
    let conns = registry.summaries();
    gauge(
        &mut out,
        "openshell_connections_open",
        "Connections currently open.",
        conns.len() as f64,
    );
    counter(
        &mut out,
        "openshell_handshake_failures_total",
        "Connections that failed during or right after the handshake.",
        transport.handshake_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "openshell_streams_total",
        "Requests (streams) received, RPCs and tunnels.",
        transport.requests.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "openshell_streams_open",
        "QUIC request streams currently open.",
        transport.streams_open.load(Ordering::Relaxed) as f64,
    );
    counter(
        &mut out,
        "openshell_early_data_served_total",
        "Idempotent requests served from 0-RTT early data.",
        transport.early_requests_served.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "openshell_early_data_deferred_total",
        "Early requests held until the handshake was confirmed.",
        transport.early_requests_deferred.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "openshell_tunnels_opened_total",
        "Tunnels opened.",
        transport.tunnels_opened.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "openshell_tunnels_refused_total",
        "Tunnels refused.",
        transport.tunnels_refused.load(Ordering::Relaxed),
    );
    let quic: Vec<_> = conns.iter().filter(|c| c.rtt.is_some()).collect();
    let _ = writeln!(
        out,
        "# HELP openshell_quic_rtt_seconds Smoothed RTT of each open QUIC connection.\n# TYPE openshell_quic_rtt_seconds gauge"
    );
    for c in &quic {
        let _ = writeln!(
            out,
            "openshell_quic_rtt_seconds{{conn=\"{}\"}} {}",
            c.id,
            c.rtt.unwrap_or_default().as_secs_f64()
        );
    }
    counter(
        &mut out,
        "openshell_quic_lost_packets",
        "Packets declared lost on the open QUIC connections.",
        quic.iter().map(|c| c.lost_packets).sum(),
    );
    counter(
        &mut out,
        "openshell_quic_sent_packets",
        "Packets sent on the open QUIC connections.",
        quic.iter().map(|c| c.sent_packets).sum(),
    );

    let _ = writeln!(
        out,
        "# HELP openshell_rpc_requests_total RPCs by method and gRPC code.\n# TYPE openshell_rpc_requests_total counter"
    );
    for ((method, code), n) in rpc.calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(
            out,
            "openshell_rpc_requests_total{{method=\"{}\",code=\"{}\"}} {n}",
            escape(method),
            escape(code)
        );
    }
    let _ = writeln!(
        out,
        "# HELP openshell_rpc_duration_seconds Time from request to response head.\n# TYPE openshell_rpc_duration_seconds histogram"
    );
    for (method, h) in rpc.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let m = escape(method);
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "openshell_rpc_duration_seconds_bucket{{method=\"{m}\",le=\"{b}\"}} {}",
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "openshell_rpc_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "openshell_rpc_duration_seconds_sum{{method=\"{m}\"}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "openshell_rpc_duration_seconds_count{{method=\"{m}\"}} {}",
            h.count
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = RpcMetrics::default();
        m.record("/a/B", "Ok", Duration::from_millis(3));
        m.record("/a/B", "Ok", Duration::from_millis(300));
        let text = render(
            &m,
            &TransportMetrics::default(),
            &ConnectionRegistry::default(),
        );
        assert!(text.contains("openshell_rpc_requests_total{method=\"/a/B\",code=\"Ok\"} 2"));
        assert!(text.contains("le=\"0.005\"} 1"));
        assert!(text.contains("le=\"0.5\"} 2"));
        assert!(text.contains("openshell_rpc_duration_seconds_count{method=\"/a/B\"} 2"));
    }
}
