//! A UDP echo server and an RTT/loss probe, so tests and benchmarks can measure a link
//! without depending on `ping` (not installed on the CI image) or ICMP permissions. Run
//! them inside the link's namespaces through the binary:
//! `ip netns exec B openshell-linkem echo --listen 10.203.0.2:7000` and
//! `ip netns exec A openshell-linkem probe --target 10.203.0.2:7000`.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// First bytes of every probe datagram, so stray traffic is not mistaken for a reply.
const MAGIC: &[u8; 4] = b"OSLP";
const HEADER: usize = 12; // magic + u64 sequence number

/// Echo every datagram back to its sender until `idle_timeout` passes without traffic or
/// `max_duration` since start (both bound the run). Writes one JSON line
/// `{"listening":"ADDR"}` to `ready` once bound. Returns the number of datagrams echoed.
pub fn run_echo(
    listen: SocketAddr,
    idle_timeout: Duration,
    max_duration: Duration,
    mut ready: impl Write,
) -> io::Result<u64> {
    let sock = UdpSocket::bind(listen)?;
    writeln!(
        ready,
        "{}",
        serde_json::json!({ "listening": sock.local_addr()?.to_string() })
    )?;
    ready.flush()?;
    let start = Instant::now();
    let mut last = start;
    let mut echoed = 0u64;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        let left = (last + idle_timeout)
            .min(start + max_duration)
            .saturating_duration_since(now);
        if left.is_zero() {
            return Ok(echoed);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                last = Instant::now();
                // A failed send is a lost reply, which the probe counts as loss.
                if sock.send_to(&buf[..n], from).is_ok() {
                    echoed += 1;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// What to send.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub target: SocketAddr,
    /// Datagrams to send. Bounded by the caller (the CLI allows up to 1 000 000).
    pub count: u32,
    /// Gap between sends.
    pub interval: Duration,
    /// Datagram payload size in bytes (at least 12).
    pub size: usize,
    /// How long to wait for replies after the last send.
    pub wait: Duration,
}

/// Round-trip times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RttSummary {
    pub min: f64,
    pub p50: f64,
    pub mean: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Result of a probe run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub sent: u64,
    pub received: u64,
    pub loss_percent: f64,
    /// Replies that arrived after a reply to a later probe.
    pub reordered: u64,
    pub duplicates: u64,
    /// `None` when nothing came back.
    pub rtt_ms: Option<RttSummary>,
}

/// Nearest-rank percentiles of `samples` (sorted in place).
pub fn summarize(samples: &mut [Duration]) -> Option<RttSummary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let rank = |q: f64| {
        let i = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        ms(samples[i - 1])
    };
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    Some(RttSummary {
        min: ms(samples[0]),
        p50: rank(0.50),
        mean,
        p95: rank(0.95),
        p99: rank(0.99),
        max: ms(samples[samples.len() - 1]),
    })
}

/// Send `count` numbered datagrams to an echo server and measure what comes back. Takes
/// at most `count * interval + wait` (plus scheduling slack).
pub fn run_probe(cfg: &ProbeConfig) -> io::Result<ProbeReport> {
    let bind: SocketAddr = if cfg.target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(cfg.target)?;
    let size = cfg.size.max(HEADER);
    let mut payload = vec![0u8; size];
    payload[..4].copy_from_slice(MAGIC);
    let mut sent_at: Vec<Instant> = Vec::with_capacity(cfg.count as usize);
    let mut got = vec![false; cfg.count as usize];
    let mut rtts = Vec::new();
    let (mut duplicates, mut reordered, mut highest) = (0u64, 0u64, None::<u64>);
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    let mut next_send = start;
    loop {
        let now = Instant::now();
        let all_sent = sent_at.len() == cfg.count as usize;
        if !all_sent && now >= next_send {
            let seq = sent_at.len() as u64;
            payload[4..HEADER].copy_from_slice(&seq.to_be_bytes());
            sent_at.push(Instant::now());
            match sock.send(&payload) {
                // ICMP errors from earlier sends surface here; the datagram counts as lost.
                Ok(_) | Err(_) => {}
            }
            next_send += cfg.interval;
            continue;
        }
        if all_sent && rtts.len() == sent_at.len() {
            break;
        }
        let until = if all_sent {
            sent_at.last().copied().unwrap_or(start) + cfg.wait
        } else {
            next_send
        };
        if all_sent && now >= until {
            break;
        }
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(now)
                .max(Duration::from_micros(100)),
        ))?;
        match sock.recv(&mut buf) {
            Ok(n) if n >= HEADER && &buf[..4] == MAGIC => {
                let arrived = Instant::now();
                let seq = u64::from_be_bytes(buf[4..HEADER].try_into().expect("8 bytes"));
                let Some(at) = sent_at.get(seq as usize) else {
                    continue;
                };
                if std::mem::replace(&mut got[seq as usize], true) {
                    duplicates += 1;
                    continue;
                }
                if highest.is_some_and(|h| seq < h) {
                    reordered += 1;
                }
                highest = Some(highest.map_or(seq, |h| h.max(seq)));
                rtts.push(arrived - *at);
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
    }
    let sent = sent_at.len() as u64;
    let received = rtts.len() as u64;
    Ok(ProbeReport {
        sent,
        received,
        loss_percent: if sent == 0 {
            0.0
        } else {
            100.0 * (sent - received) as f64 / sent as f64
        },
        reordered,
        duplicates,
        rtt_ms: summarize(&mut rtts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<_> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = summarize(&mut v).unwrap();
        assert_eq!(
            (s.min, s.p50, s.p95, s.p99, s.max),
            (1.0, 50.0, 95.0, 99.0, 100.0)
        );
        assert!((s.mean - 50.5).abs() < 1e-9);
        assert_eq!(summarize(&mut []), None);
    }

    #[test]
    fn probe_against_loopback_echo_sees_everything() {
        // Loopback only: an echo thread on 127.0.0.1 and a short probe.
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            struct Ready(std::sync::mpsc::Sender<String>, Vec<u8>);
            impl Write for Ready {
                fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                    self.1.extend_from_slice(b);
                    Ok(b.len())
                }
                fn flush(&mut self) -> io::Result<()> {
                    let _ = self.0.send(String::from_utf8_lossy(&self.1).into_owned());
                    Ok(())
                }
            }
            run_echo(
                "127.0.0.1:0".parse().unwrap(),
                Duration::from_millis(500),
                Duration::from_secs(10),
                Ready(tx, Vec::new()),
            )
        });
        let line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let target: SocketAddr = v["listening"].as_str().unwrap().parse().unwrap();
        let report = run_probe(&ProbeConfig {
            target,
            count: 50,
            interval: Duration::from_millis(1),
            size: 100,
            wait: Duration::from_millis(300),
        })
        .unwrap();
        assert_eq!((report.sent, report.received), (50, 50));
        assert_eq!(report.loss_percent, 0.0);
        assert!(report.rtt_ms.unwrap().max < 100.0);
        assert_eq!(server.join().unwrap().unwrap(), 50);
    }
}
