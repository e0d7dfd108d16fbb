//! The scheduling core: a pure state machine deciding, per packet, whether it is dropped
//! or when it is delivered. No I/O and no clock reads: callers pass `now`, so tests drive
//! it with synthetic time and a fixed seed and get the same answers every run.
//!
//! ```text
//!  packet --> Shaper::on_packet(now, len) --Drop(reason)--> counted, discarded
//!                     |
//!                DeliverAt(t)
//!                     v
//!              ReleaseQueue (ordered by t, then arrival) --pop_due(now)--> written out
//! ```
//! [`Lane`] bundles the two with the per-direction counters; the forwarder is a thin loop
//! around a `Lane`.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::impairment::{Impairment, JitterOrder};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Independent (Bernoulli) loss.
    RandomLoss,
    /// Gilbert-Elliott burst loss.
    BurstLoss,
    /// The direction already held `queue_limit` packets (tail drop).
    QueueFull,
}

/// The shaper's decision for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Discard the packet.
    Drop(DropReason),
    /// Deliver the packet at this instant (never earlier than `now`).
    DeliverAt(Instant),
}

/// Decides the fate of each packet of one direction.
#[derive(Debug)]
pub struct Shaper {
    imp: Impairment,
    rng: StdRng,
    /// Gilbert-Elliott state: true while in Bad.
    burst_bad: bool,
    /// When the virtual wire finishes serializing the last accepted packet.
    wire_free_at: Option<Instant>,
    /// Latest delivery time of a packet that was not held back by explicit reordering;
    /// with `JitterOrder::Keep` no later packet is scheduled before it.
    last_in_order: Option<Instant>,
    /// Delivery times of accepted packets; those still in the future are "held" and count
    /// against the queue limit. Bounded by the queue limit.
    held: BinaryHeap<Reverse<Instant>>,
}

impl Shaper {
    /// A shaper whose random draws are fully determined by `seed`.
    pub fn new(imp: Impairment, seed: u64) -> Self {
        Shaper {
            imp,
            rng: StdRng::seed_from_u64(seed),
            burst_bad: false,
            wire_free_at: None,
            last_in_order: None,
            held: BinaryHeap::new(),
        }
    }

    /// The impairment in force.
    pub fn impairment(&self) -> &Impairment {
        &self.imp
    }

    /// Change the impairment for packets arriving from now on. Packets already scheduled
    /// keep their delivery time; the wire and ordering state carry over, so a change never
    /// reorders packets that were in order.
    pub fn set_impairment(&mut self, imp: Impairment) {
        if imp.burst().is_none() {
            self.burst_bad = false;
        }
        self.imp = imp;
    }

    /// Packets accepted and not yet due at `now`.
    pub fn held(&mut self, now: Instant) -> usize {
        self.release_until(now);
        self.held.len()
    }

    fn release_until(&mut self, now: Instant) {
        while let Some(Reverse(t)) = self.held.peek() {
            if *t > now {
                break;
            }
            self.held.pop();
        }
    }

    /// Decide the fate of a packet of `len` bytes arriving at `now`.
    pub fn on_packet(&mut self, now: Instant, len: usize) -> Verdict {
        self.release_until(now);

        // Loss first (as netem does): a lost packet takes no queue slot and no wire time.
        // The burst chain advances on every packet so its bursts keep their length.
        if let Some(ge) = self.imp.burst() {
            let p_loss = if self.burst_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
            let lost = p_loss > 0.0 && self.rng.random::<f64>() < p_loss;
            let flip = if self.burst_bad { ge.r } else { ge.p };
            if flip > 0.0 && self.rng.random::<f64>() < flip {
                self.burst_bad = !self.burst_bad;
            }
            if lost {
                return Verdict::Drop(DropReason::BurstLoss);
            }
        }
        if self.imp.loss() > 0.0 && self.rng.random::<f64>() < self.imp.loss() {
            return Verdict::Drop(DropReason::RandomLoss);
        }
        if self.held.len() >= self.imp.queue_limit() {
            return Verdict::Drop(DropReason::QueueFull);
        }

        let mut at = now;
        if let Some(rate) = self.imp.rate_bps() {
            let start = self.wire_free_at.map_or(now, |free| free.max(now));
            let done = start + serialization_time(len, rate);
            self.wire_free_at = Some(done);
            at = done;
        }
        at += self.imp.delay();
        let jitter = self.imp.jitter();
        if !jitter.is_zero() {
            let half = jitter.as_nanos() as i64; // <= 60 s, fits
            let offset = self.rng.random_range(-half..=half);
            if offset >= 0 {
                at += Duration::from_nanos(offset as u64);
            } else {
                // jitter <= delay, so this never goes below the pre-delay time.
                at -= Duration::from_nanos(offset.unsigned_abs());
            }
        }
        if self.imp.jitter_order() == JitterOrder::Keep
            && let Some(prev) = self.last_in_order
        {
            at = at.max(prev);
        }
        let held_back = match self.imp.reorder() {
            Some(r) if r.probability > 0.0 && self.rng.random::<f64>() < r.probability => {
                Some(r.extra_delay)
            }
            _ => None,
        };
        match held_back {
            Some(extra) => at += extra,
            None => self.last_in_order = Some(self.last_in_order.map_or(at, |p| p.max(at))),
        }
        self.held.push(Reverse(at));
        Verdict::DeliverAt(at)
    }
}

/// Time to put `len` bytes on a wire of `bits_per_second`.
pub fn serialization_time(len: usize, bits_per_second: u64) -> Duration {
    let nanos = (len as u128 * 8 * 1_000_000_000).div_ceil(bits_per_second as u128);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

struct Entry<P> {
    at: Instant,
    seq: u64,
    packet: P,
}

impl<P> PartialEq for Entry<P> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl<P> Eq for Entry<P> {}
impl<P> PartialOrd for Entry<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Entry<P> {
    // Reversed so the BinaryHeap (a max-heap) pops the earliest time, then the earliest
    // arrival among equal times.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A packet leaving the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<P> {
    pub packet: P,
    /// It entered the link before a packet already released (RFC 4737's definition of a
    /// reordered packet, as a receiver would count it).
    pub reordered: bool,
}

/// Packets waiting for their delivery time, released in time order (arrival order among
/// equal times).
pub struct ReleaseQueue<P> {
    heap: BinaryHeap<Entry<P>>,
    next_seq: u64,
    highest_released: Option<u64>,
}

impl<P> std::fmt::Debug for ReleaseQueue<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseQueue")
            .field("len", &self.heap.len())
            .field("next", &self.next_release())
            .finish()
    }
}

impl<P> Default for ReleaseQueue<P> {
    fn default() -> Self {
        ReleaseQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
            highest_released: None,
        }
    }
}

impl<P> ReleaseQueue<P> {
    /// Queue `packet` for delivery at `at`; packets are numbered in push order.
    pub fn push(&mut self, at: Instant, packet: P) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { at, seq, packet });
    }

    /// When the next packet is due, if any.
    pub fn next_release(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.at)
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Released<P>> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let e = self.heap.pop()?;
        let reordered = self.highest_released.is_some_and(|h| e.seq < h);
        self.highest_released = Some(self.highest_released.map_or(e.seq, |h| h.max(e.seq)));
        Some(Released {
            packet: e.packet,
            reordered,
        })
    }
}

/// Counters of one direction. `packets_in = packets_out + dropped_* + still queued`
/// (write errors are counted in `packets_out` too: the packet left the emulator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Dropped by independent loss.
    pub dropped_loss: u64,
    /// Dropped by Gilbert-Elliott burst loss.
    pub dropped_burst: u64,
    /// Dropped because the queue was full.
    pub dropped_queue: u64,
    /// Released after a packet that entered later (RFC 4737).
    pub reordered: u64,
    /// Packets the destination device refused (should stay 0).
    pub write_errors: u64,
}

/// One direction of a link: shaper, release queue and counters.
#[derive(Debug)]
pub struct Lane<P> {
    shaper: Shaper,
    queue: ReleaseQueue<(usize, P)>,
    stats: DirectionStats,
}

impl<P> Lane<P> {
    pub fn new(imp: Impairment, seed: u64) -> Self {
        Lane {
            shaper: Shaper::new(imp, seed),
            queue: ReleaseQueue::default(),
            stats: DirectionStats::default(),
        }
    }

    /// Offer a packet of `len` bytes arriving at `now`.
    pub fn push(&mut self, now: Instant, len: usize, packet: P) -> Verdict {
        self.stats.packets_in += 1;
        self.stats.bytes_in += len as u64;
        let verdict = self.shaper.on_packet(now, len);
        match verdict {
            Verdict::Drop(DropReason::RandomLoss) => self.stats.dropped_loss += 1,
            Verdict::Drop(DropReason::BurstLoss) => self.stats.dropped_burst += 1,
            Verdict::Drop(DropReason::QueueFull) => self.stats.dropped_queue += 1,
            Verdict::DeliverAt(at) => self.queue.push(at, (len, packet)),
        }
        verdict
    }

    /// The next packet due at `now`, counted as sent.
    pub fn pop_due(&mut self, now: Instant) -> Option<P> {
        let r = self.queue.pop_due(now)?;
        let (len, packet) = r.packet;
        self.stats.packets_out += 1;
        self.stats.bytes_out += len as u64;
        if r.reordered {
            self.stats.reordered += 1;
        }
        Some(packet)
    }

    /// When the next packet is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.queue.next_release()
    }

    /// Packets waiting for release.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn stats(&self) -> DirectionStats {
        self.stats
    }

    pub fn impairment(&self) -> &Impairment {
        self.shaper.impairment()
    }

    pub fn set_impairment(&mut self, imp: Impairment) {
        self.shaper.set_impairment(imp);
    }

    pub(crate) fn count_write_error(&mut self) {
        self.stats.write_errors += 1;
    }
}

#[cfg(test)]
#[path = "shaper_tests.rs"]
mod tests;
