//! The pure model behind the `tolerant` controller: a BBR-style estimate of the path
//! (bottleneck bandwidth as the windowed maximum of per-round delivery rates, and the minimum
//! RTT) that sizes the congestion window as gain x bandwidth x min RTT.
//!
//! Why not quinn's Cubic or BBR (measured in BENCHMARKS.md): Cubic halves its window on every
//! loss, so 2% random loss holds it near 1 Mbit/s. quinn's BBR ignores loss but overshoots
//! the bottleneck (quinn paces at 1.25 x window / RTT, and BBR's window is 2 x BDP) and
//! overflows a 1000-packet queue, losing ~40% of what it sends.
//!
//! This model differs in three ways:
//! - The window is about 1 x BDP in steady state, with one probing round at 1.25 and one
//!   draining round at 0.75 every eight rounds. quinn's pacer sends at 1.25 x window /
//!   smoothed RTT, so the window is both the inflight cap and (through the pacer) the rate.
//! - Random loss is not a congestion signal: the loss rate of each round is compared with a
//!   slowly learned background rate. Only a round whose loss clearly exceeds it (queue
//!   overflow) lowers the bandwidth estimate.
//! - Startup doubles per round like BBR's but caps the window at 2 x the measured BDP and
//!   leaves on a bandwidth plateau, on a loss burst, or when the RTT shows a standing queue.
//!
//! No I/O and no clock: every input carries its own `Instant`, so unit tests drive it with
//! synthetic ACK and loss sequences.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Gains of the eight ProbeBW rounds: probe up, drain what the probe queued, cruise.
const PROBE_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Rounds the bandwidth filter remembers (a probe happens every 8).
const BW_WINDOW_ROUNDS: usize = 10;
/// Startup window cap, in BDPs: room to double per round (the per-packet rate samples track
/// the latest rate). BBR uses 2.89, which overflowed the 1000-packet queue here by 5%.
const STARTUP_CWND_GAIN: f64 = 2.0;
/// Startup ends after this many non-app-limited rounds without 25% bandwidth growth.
const PLATEAU_ROUNDS: u32 = 3;
/// A round with fewer packets than this says nothing about its loss rate (at 2% random
/// loss, 3 of 20 lost happens in 1 round of 14; 10 of 100 in less than 1 in 10,000).
const MIN_ROUND_PACKETS: u64 = 100;
/// Startup ends on a round losing more than this (a doubling that overflowed the queue).
const STARTUP_LOSS_EXIT: f64 = 0.10;
/// Extra loss (absolute) over the background rate that marks a round congested.
const CONGESTED_MARGIN: f64 = 0.03;
/// Weight of a new round in the background loss EWMA.
const BG_LOSS_WEIGHT: f64 = 1.0 / 8.0;
/// Bandwidth estimate kept after a congested round.
const CONGESTED_BW_FACTOR: f64 = 0.85;
/// A round whose smallest RTT exceeds min RTT x this (plus `QUEUE_SLACK`) saw a queue.
const QUEUE_RTT_FACTOR: f64 = 1.5;
const QUEUE_SLACK: Duration = Duration::from_millis(5);
/// Rounds in a row with a standing queue before the estimate is trimmed in ProbeBW.
const STANDING_QUEUE_ROUNDS: u32 = 3;
/// Bandwidth estimate kept after a standing queue.
const STANDING_QUEUE_BW_FACTOR: f64 = 0.9;
/// A ProbeBW cycle whose estimate grew by this factor goes back to startup.
const REGROW_FACTOR: f64 = 1.2;
/// Window headroom for delayed and aggregated ACKs: this much time at the estimated rate
/// (quinn's default max_ack_delay). With 5 ms the window sat at ~1 x BDP and left the link
/// idle between ACKs: 54 Mbit/s at 20 ms / 0% loss where Cubic got 88. It matters most at
/// short RTTs (+1.25 BDP at 20 ms, +0.25 BDP at 100 ms).
const ACK_AGGREGATION_ALLOWANCE: Duration = Duration::from_millis(25);

/// Which phase the model is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Doubling per round until the bandwidth stops growing.
    Startup,
    /// One window of 1 x BDP until the startup queue is gone.
    Drain,
    /// Steady state; the index into `PROBE_GAINS`.
    ProbeBw(usize),
}

/// Tunables the connection supplies.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Largest datagram size in bytes (the current MTU).
    pub max_datagram: u64,
    /// Window before any measurement.
    pub initial_window: u64,
}

impl Params {
    fn min_window(&self) -> u64 {
        4 * self.max_datagram
    }
}

/// What was known when a batch of packets left. As in BBR, the delivery-rate sample of its
/// ACK is (delivered now - `delivered`) over the longer of the ACK interval
/// (now - `delivered_time`) and the send interval (`sent` - `first_sent`); the longer one
/// keeps ACK compression from inflating the rate.
#[derive(Debug, Clone, Copy)]
struct SendRecord {
    sent: Instant,
    delivered: u64,
    delivered_time: Instant,
    /// Send time of the packet most recently acknowledged when this one left.
    first_sent: Instant,
}

/// Per-round bookkeeping. A round ends when a packet sent after its start is acknowledged.
#[derive(Debug, Clone)]
struct Round {
    /// Packets sent at or after this instant end the round when acknowledged.
    start: Instant,
    delivered_at_start: u64,
    acked: u64,
    lost: u64,
    min_rtt: Option<Duration>,
    app_limited: bool,
    /// Highest per-packet delivery rate seen in the round (bytes per second).
    max_rate: f64,
}

/// The model's whole state.
#[derive(Debug, Clone)]
pub struct Model {
    params: Params,
    mode: Mode,
    cwnd: u64,
    /// Delivery rate samples (bytes per second), one per completed round.
    bw_samples: VecDeque<f64>,
    min_rtt: Option<Duration>,
    delivered: u64,
    /// When `delivered` last grew.
    delivered_time: Option<Instant>,
    /// Send time of the most recently acknowledged packet.
    last_acked_sent: Option<Instant>,
    /// Sends not yet acknowledged or passed by a later ACK, oldest first.
    sends: VecDeque<SendRecord>,
    round: Option<Round>,
    rounds: u64,
    /// Startup plateau detection.
    full_bw: f64,
    full_bw_rounds: u32,
    /// Learned random loss rate of non-congested rounds; `None` until the first full round.
    bg_loss: Option<f64>,
    standing_queue_rounds: u32,
    congested_rounds: u64,
    /// Bandwidth estimate when the current ProbeBW cycle began.
    cycle_bw: f64,
    /// Bandwidth estimate just before the last congested round cut it.
    overflow_bw: f64,
}

impl Model {
    pub fn new(params: Params) -> Model {
        Model {
            params,
            mode: Mode::Startup,
            cwnd: params.initial_window.max(params.min_window()),
            bw_samples: VecDeque::with_capacity(BW_WINDOW_ROUNDS),
            min_rtt: None,
            delivered: 0,
            delivered_time: None,
            last_acked_sent: None,
            sends: VecDeque::new(),
            round: None,
            rounds: 0,
            full_bw: 0.0,
            full_bw_rounds: 0,
            bg_loss: None,
            standing_queue_rounds: 0,
            congested_rounds: 0,
            cycle_bw: 0.0,
            overflow_bw: 0.0,
        }
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.cwnd.max(self.params.min_window())
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Estimated bottleneck bandwidth in bytes per second (0 before the first round).
    pub fn bandwidth(&self) -> f64 {
        self.bw_samples.iter().copied().fold(0.0, f64::max)
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Learned background (random) loss rate.
    pub fn background_loss(&self) -> Option<f64> {
        self.bg_loss
    }

    /// Rounds judged congested (loss clearly above background) so far.
    pub fn congested_rounds(&self) -> u64 {
        self.congested_rounds
    }

    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    pub fn set_max_datagram(&mut self, bytes: u64) {
        self.params.max_datagram = bytes;
    }

    /// Estimated bandwidth-delay product in bytes, once both are known.
    fn bdp(&self) -> Option<f64> {
        let bw = self.bandwidth();
        let rtt = self.min_rtt?;
        (bw > 0.0).then_some(bw * rtt.as_secs_f64())
    }

    /// Packets were sent at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        if self.round.is_none() {
            self.start_round(now);
        }
        if self.sends.back().is_none_or(|r| r.sent < now) {
            let delivered_time = *self.delivered_time.get_or_insert(now);
            let first_sent = *self.last_acked_sent.get_or_insert(now);
            self.sends.push_back(SendRecord {
                sent: now,
                delivered: self.delivered,
                delivered_time,
                first_sent,
            });
        }
    }

    fn start_round(&mut self, now: Instant) {
        self.round = Some(Round {
            start: now,
            delivered_at_start: self.delivered,
            acked: 0,
            lost: 0,
            min_rtt: None,
            app_limited: false,
            max_rate: 0.0,
        });
    }

    /// One packet of `bytes` sent at `sent` was acknowledged at `now`; `min_rtt` is the
    /// connection's minimum RTT (quinn's estimator, which knows the peer's ACK delay).
    pub fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        min_rtt: Duration,
    ) {
        // This packet's own RTT, ACK delay included: a queue shows in it all the same.
        let latest_rtt = now.saturating_duration_since(sent);
        self.delivered += bytes;
        self.delivered_time = Some(now);
        self.last_acked_sent = Some(self.last_acked_sent.map_or(sent, |t| t.max(sent)));
        // ACKs arrive in send order except for reordering; older records are for packets
        // that were lost or acknowledged already.
        while self.sends.front().is_some_and(|r| r.sent < sent) {
            self.sends.pop_front();
        }
        let rate = self.sends.front().filter(|r| r.sent == sent).and_then(|r| {
            let ack_elapsed = now.saturating_duration_since(r.delivered_time);
            let send_elapsed = r.sent.saturating_duration_since(r.first_sent);
            let elapsed = ack_elapsed.max(send_elapsed).as_secs_f64();
            (elapsed > 0.0).then(|| (self.delivered - r.delivered) as f64 / elapsed)
        });
        if !min_rtt.is_zero() {
            self.min_rtt = Some(self.min_rtt.map_or(min_rtt, |m| m.min(min_rtt)));
        }
        if self.mode == Mode::Startup {
            // Slow-start growth: one window more per round, capped in `update_window`.
            self.cwnd += bytes;
        }
        let Some(round) = self.round.as_mut() else {
            self.start_round(now);
            return;
        };
        round.acked += 1;
        if let Some(rate) = rate {
            round.max_rate = round.max_rate.max(rate);
        }
        round.app_limited |= app_limited;
        if !latest_rtt.is_zero() {
            round.min_rtt = Some(round.min_rtt.map_or(latest_rtt, |m| m.min(latest_rtt)));
        }
        if sent >= round.start {
            self.end_round(now);
        }
    }

    /// Packets carrying `bytes` were declared lost. `persistent` is quinn's persistent
    /// congestion (everything sent over a long period lost): start over.
    pub fn on_loss(&mut self, now: Instant, bytes: u64, persistent: bool) {
        if persistent {
            self.bw_samples.clear();
            self.mode = Mode::Startup;
            self.full_bw = 0.0;
            self.full_bw_rounds = 0;
            self.cwnd = self.params.min_window();
            self.start_round(now);
            return;
        }
        if let Some(round) = self.round.as_mut() {
            round.lost += bytes.div_ceil(self.params.max_datagram.max(1)).max(1);
        }
    }

    /// A batch of ACKs was processed; `in_flight` bytes remain outstanding.
    pub fn on_end_acks(&mut self, in_flight: u64) {
        self.update_window();
        // Drain's window is 1 x BDP (plus ACK headroom): once in flight fits in it, the
        // queue startup built is gone.
        if self.mode == Mode::Drain && in_flight <= self.cwnd {
            self.mode = Mode::ProbeBw(2);
            self.update_window();
        }
    }

    fn end_round(&mut self, now: Instant) {
        let Some(round) = self.round.take() else {
            return;
        };
        self.rounds += 1;
        let elapsed = now.saturating_duration_since(round.start).as_secs_f64();
        let delivered = self.delivered - round.delivered_at_start;
        let average = if elapsed > 0.0 {
            delivered as f64 / elapsed
        } else {
            0.0
        };
        // The per-packet samples see a probe's extra rate; the round average is the
        // fallback when no ACK matched a send record.
        let sample = average.max(round.max_rate);
        // An app-limited round under-states the path; keep it only if it shows more.
        if !round.app_limited || sample > self.bandwidth() {
            if self.bw_samples.len() == BW_WINDOW_ROUNDS {
                self.bw_samples.pop_front();
            }
            self.bw_samples.push_back(sample);
        }

        let packets = round.acked + round.lost;
        let loss = (packets >= MIN_ROUND_PACKETS).then(|| round.lost as f64 / packets as f64);
        let queued = match (round.min_rtt, self.min_rtt) {
            (Some(r), Some(m)) => r > m.mul_f64(QUEUE_RTT_FACTOR) + QUEUE_SLACK,
            _ => false,
        };

        match self.mode {
            Mode::Startup => self.startup_round(round.app_limited, loss, queued),
            Mode::Drain | Mode::ProbeBw(_) => self.probe_round(loss, queued),
        }
        self.start_round(now);
    }

    fn startup_round(&mut self, app_limited: bool, loss: Option<f64>, queued: bool) {
        let overflow = loss.is_some_and(|l| l > STARTUP_LOSS_EXIT);
        if let Some(l) = loss.filter(|_| !overflow) {
            self.learn_background(l);
        }
        if !app_limited {
            // The filtered estimate, not the raw sample: one low round is not a plateau.
            let bw = self.bandwidth();
            if bw >= self.full_bw * 1.25 {
                self.full_bw = bw;
                self.full_bw_rounds = 0;
            } else {
                self.full_bw_rounds += 1;
            }
        }
        if overflow {
            // The last doubling overflowed the queue: what got through is the path's rate.
            self.congested_rounds += 1;
            self.overflow_bw = self.bandwidth();
            self.trim_bandwidth(CONGESTED_BW_FACTOR);
        }
        // A queue alone is not enough: early rounds see delayed ACKs and scheduling noise
        // on a few packets. A queue while the rate stopped growing is the bottleneck.
        let queue_exit = queued && !app_limited && self.full_bw_rounds >= 1;
        if overflow || queue_exit || self.full_bw_rounds >= PLATEAU_ROUNDS {
            self.mode = Mode::Drain;
        }
    }

    fn probe_round(&mut self, loss: Option<f64>, queued: bool) {
        let congested = match (loss, self.bg_loss) {
            (Some(l), Some(bg)) => l > bg + bg.max(CONGESTED_MARGIN),
            (Some(l), None) => l > STARTUP_LOSS_EXIT,
            _ => false,
        };
        if congested {
            self.congested_rounds += 1;
            self.overflow_bw = self.bandwidth();
            self.trim_bandwidth(CONGESTED_BW_FACTOR);
        } else if let Some(l) = loss {
            self.learn_background(l);
        }
        self.standing_queue_rounds = if queued {
            self.standing_queue_rounds + 1
        } else {
            0
        };
        if self.standing_queue_rounds >= STANDING_QUEUE_ROUNDS {
            self.standing_queue_rounds = 0;
            self.trim_bandwidth(STANDING_QUEUE_BW_FACTOR);
        }
        if let Mode::ProbeBw(phase) = self.mode {
            if phase == 0 {
                self.cycle_bw = self.bandwidth();
            }
            // A probe that found 20% more than the cycle started with means startup left
            // too early (noise, a competing flow that went away): grow quickly again
            // instead of 25% per eight rounds.
            // Recovering to where the last overflow happened is not new room.
            let bw = self.bandwidth();
            if !congested
                && self.cycle_bw > 0.0
                && bw > self.cycle_bw * REGROW_FACTOR
                && bw > self.overflow_bw
            {
                self.mode = Mode::Startup;
                self.full_bw = 0.0;
                self.full_bw_rounds = 0;
                return;
            }
            self.mode = if congested {
                // Drain what the overflow left queued before cruising again.
                Mode::ProbeBw(1)
            } else {
                Mode::ProbeBw((phase + 1) % PROBE_GAINS.len())
            };
        }
    }

    fn learn_background(&mut self, loss: f64) {
        self.bg_loss = Some(match self.bg_loss {
            None => loss,
            Some(bg) => bg + (loss - bg) * BG_LOSS_WEIGHT,
        });
    }

    /// Lowers every remembered sample to `factor` x the current estimate, so the cut is not
    /// undone by an older, higher sample still in the window.
    fn trim_bandwidth(&mut self, factor: f64) {
        let cap = self.bandwidth() * factor;
        for s in self.bw_samples.iter_mut() {
            *s = s.min(cap);
        }
    }

    fn update_window(&mut self) {
        let Some(bdp) = self.bdp() else {
            return;
        };
        let min = self.params.min_window();
        let headroom = self.bandwidth() * ACK_AGGREGATION_ALLOWANCE.as_secs_f64();
        self.cwnd = match self.mode {
            Mode::Startup => {
                let cap = (STARTUP_CWND_GAIN * bdp) as u64;
                self.cwnd.min(cap.max(self.params.initial_window))
            }
            Mode::Drain => (bdp + headroom) as u64,
            Mode::ProbeBw(phase) => (PROBE_GAINS[phase] * bdp + headroom) as u64,
        }
        .max(min);
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic ACK/loss sequences: a tiny discrete-time path model (a rate-limited
    //! bottleneck with a tail-drop queue, fixed propagation delay and seeded random loss)
    //! feeds the model exactly what quinn would. No sockets, no clock.

    use super::*;

    const MSS: u64 = 1200;

    fn params() -> Params {
        Params {
            max_datagram: MSS,
            initial_window: 10 * MSS,
        }
    }

    /// Deterministic xorshift, so every run draws the same losses.
    struct Rng(u64);
    impl Rng {
        fn chance(&mut self, p: f64) -> bool {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % 1_000_000) as f64 / 1_000_000.0 < p
        }
    }

    struct Outcome {
        /// Goodput over the second half, as a share of the bottleneck rate.
        utilisation: f64,
        /// Packets dropped by the queue over all packets sent.
        queue_drop_share: f64,
        model: Model,
    }

    /// Runs a bulk sender for `secs` over a path of `rate` bytes/s, `rtt`, a queue of
    /// `queue` packets and `loss` random loss (applied after the queue, like the emulator).
    /// Losses are declared one RTT after the packet was sent (quinn's time threshold is
    /// 9/8 RTT; the exact value does not matter to the model).
    fn simulate(rate: f64, rtt: Duration, queue: usize, loss: f64, secs: u64) -> Outcome {
        let start = Instant::now();
        let tick = Duration::from_micros(100);
        let mut model = Model::new(params());
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Packets waiting at the bottleneck: their send times.
        let mut queued: VecDeque<Instant> = VecDeque::new();
        // (arrival of the ACK at the sender, send time) or (loss declared at, 0) events.
        let mut acks: VecDeque<(Instant, Instant)> = VecDeque::new();
        let mut losses: VecDeque<Instant> = VecDeque::new();
        let mut in_flight: u64 = 0;
        let mut service_credit = 0.0;
        let (mut sent, mut dropped, mut delivered_late) = (0u64, 0u64, 0u64);
        let end = start + Duration::from_secs(secs);
        let half = start + Duration::from_secs(secs / 2);
        let mut now = start;
        while now < end {
            // Send while the window allows (pacing is quinn's job, not the model's).
            while in_flight + MSS <= model.window() {
                model.on_sent(now);
                in_flight += MSS;
                sent += 1;
                if queued.len() >= queue {
                    dropped += 1;
                    losses.push_back(now + rtt);
                } else {
                    queued.push_back(now);
                }
            }
            // The bottleneck serves `rate` bytes per second.
            service_credit += rate * tick.as_secs_f64();
            while service_credit >= MSS as f64 {
                let Some(t) = queued.pop_front() else {
                    service_credit = 0.0;
                    break;
                };
                service_credit -= MSS as f64;
                if rng.chance(loss) {
                    losses.push_back(t + rtt);
                } else {
                    acks.push_back((now + rtt, t));
                }
            }
            while losses.front().is_some_and(|&t| t <= now) {
                losses.pop_front();
                in_flight -= MSS;
                model.on_loss(now, MSS, false);
            }
            let mut any = false;
            while acks.front().is_some_and(|&(t, _)| t <= now) {
                let (_, t_sent) = acks.pop_front().unwrap();
                in_flight -= MSS;
                model.on_ack(now, t_sent, MSS, false, rtt);
                if t_sent >= half {
                    delivered_late += 1;
                }
                any = true;
            }
            if any {
                model.on_end_acks(in_flight);
            }
            now += tick;
        }
        let late_secs = (end - half).as_secs_f64() - rtt.as_secs_f64();
        eprintln!(
            "sent {sent} dropped {dropped} bw {:.1} Mbit/s bg {:?} congested {} rounds {} mode {:?}",
            model.bandwidth() * 8e-6,
            model.background_loss(),
            model.congested_rounds(),
            model.rounds(),
            model.mode()
        );
        Outcome {
            utilisation: (delivered_late * MSS) as f64 / late_secs / rate,
            queue_drop_share: dropped as f64 / sent as f64,
            model,
        }
    }

    const MBIT: f64 = 1_000_000.0 / 8.0;

    #[test]
    fn random_loss_does_not_collapse_the_window() {
        // The cell: 100 Mbit/s, 100 ms, 2% random loss, 1000-packet queue.
        let o = simulate(100.0 * MBIT, Duration::from_millis(100), 1000, 0.02, 8);
        assert!(o.utilisation > 0.8, "utilisation {}", o.utilisation);
        assert!(
            o.queue_drop_share < 0.05,
            "queue drops {}",
            o.queue_drop_share
        );
        let bg = o.model.background_loss().unwrap();
        assert!((0.01..0.04).contains(&bg), "background loss {bg}");
        assert!(matches!(o.model.mode(), Mode::ProbeBw(_)));
    }

    #[test]
    fn clean_link_fills_the_pipe_without_overflowing() {
        let o = simulate(100.0 * MBIT, Duration::from_millis(20), 1000, 0.0, 4);
        assert!(o.utilisation > 0.9, "utilisation {}", o.utilisation);
        assert!(
            o.queue_drop_share < 0.01,
            "queue drops {}",
            o.queue_drop_share
        );
        let bw = o.model.bandwidth() / MBIT;
        assert!(
            (80.0..130.0).contains(&bw),
            "bandwidth estimate {bw} Mbit/s"
        );
    }

    #[test]
    fn shallow_queue_overflow_is_noticed_and_backed_off() {
        // 300 ms at 100 Mbit/s is ~3100 packets in flight; a 200-packet queue overflows on
        // every overshoot. The model must see the loss as congestion, not as background.
        // Known weakness, asserted as such: startup leaves early on that overflow, and
        // ProbeBW regrows only 25% per eight rounds (2.4 s at 300 ms), so utilisation after
        // 12 s is low.
        // This simulated sender does not pace (quinn does), so its startup bursts overflow
        // the short queue harder than a real link would: 8% drops, hence the 10% bound.
        let o = simulate(100.0 * MBIT, Duration::from_millis(300), 200, 0.01, 12);
        assert!(
            o.queue_drop_share < 0.10,
            "queue drops {}",
            o.queue_drop_share
        );
        assert!(o.model.congested_rounds() >= 1);
        assert!(o.model.background_loss().unwrap() < 0.03);
        assert!(o.utilisation > 0.15, "utilisation {}", o.utilisation);
    }

    #[test]
    fn loss_burst_above_background_cuts_the_estimate() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(100);
        let mut m = Model::new(params());
        // Rounds of 200 packets each, 2% lost, at a steady 2.4 MB/s.
        let mut now = t0;
        let round = |m: &mut Model, now: &mut Instant, lost: u64| {
            let sent_at = *now;
            m.on_sent(sent_at);
            *now += rtt;
            for _ in 0..lost {
                m.on_loss(*now, MSS, false);
            }
            for _ in 0..(200 - lost) {
                m.on_ack(*now, sent_at, MSS, false, rtt);
            }
            m.on_end_acks(0);
        };
        for _ in 0..12 {
            round(&mut m, &mut now, 4);
        }
        assert!(matches!(m.mode(), Mode::ProbeBw(_)), "{:?}", m.mode());
        assert_eq!(m.congested_rounds(), 0);
        let before = m.bandwidth();
        // A round losing 20% is queue overflow, not the 2% background.
        round(&mut m, &mut now, 40);
        assert_eq!(m.congested_rounds(), 1);
        assert!(
            m.bandwidth() < before * 0.9,
            "{} vs {before}",
            m.bandwidth()
        );
        assert_eq!(m.mode(), Mode::ProbeBw(1), "drains after the overflow");
        // 2% again is background: no further cut.
        let after = m.bandwidth();
        round(&mut m, &mut now, 4);
        assert_eq!(m.congested_rounds(), 1);
        assert!(m.bandwidth() >= after * 0.99);
    }

    #[test]
    fn persistent_congestion_starts_over() {
        let o = simulate(10.0 * MBIT, Duration::from_millis(50), 1000, 0.0, 2);
        let mut m = o.model;
        assert!(m.window() > 20 * MSS);
        m.on_loss(Instant::now(), 10 * MSS, true);
        assert_eq!(m.mode(), Mode::Startup);
        assert_eq!(m.window(), 4 * MSS);
        assert_eq!(m.bandwidth(), 0.0);
    }
}
