//! The core against synthetic time: what is configured is what the link delivers.

use super::*;
use crate::impairment::{GilbertElliott, Impairment, JitterOrder};
use proptest::prelude::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn deliver_at(v: Verdict) -> Instant {
    match v {
        Verdict::DeliverAt(t) => t,
        Verdict::Drop(r) => panic!("unexpected drop: {r:?}"),
    }
}

/// Drain everything due at `now`.
fn drain<P>(lane: &mut Lane<P>, now: Instant) -> Vec<P> {
    std::iter::from_fn(|| lane.pop_due(now)).collect()
}

#[test]
fn fixed_delay_is_exact_and_nothing_leaves_early() {
    let imp = Impairment::builder().delay(ms(50)).build().unwrap();
    let mut lane = Lane::new(imp, 1);
    let t0 = Instant::now();
    for i in 0..100u64 {
        let now = t0 + Duration::from_micros(i * 100);
        assert_eq!(deliver_at(lane.push(now, 1200, i)), now + ms(50));
    }
    assert!(drain(&mut lane, t0 + ms(50) - Duration::from_nanos(1)).is_empty());
    assert_eq!(drain(&mut lane, t0 + ms(50)), vec![0]);
    let rest = drain(&mut lane, t0 + ms(60));
    assert_eq!(rest, (1..100).collect::<Vec<_>>());
    let s = lane.stats();
    assert_eq!(
        (s.packets_in, s.packets_out, s.bytes_out),
        (100, 100, 120_000)
    );
}

#[test]
fn jitter_stays_in_bounds_is_roughly_uniform_and_may_reorder() {
    let imp = Impairment::builder()
        .delay(ms(50))
        .jitter(ms(10))
        .jitter_order(JitterOrder::Reorder)
        .build()
        .unwrap();
    let mut lane = Lane::new(imp, 7);
    let t0 = Instant::now();
    let n = 20_000u64;
    let mut delays = Vec::new();
    for i in 0..n {
        let now = t0 + Duration::from_micros(i * 200);
        let d = deliver_at(lane.push(now, 100, i)) - now;
        delays.push(d.as_secs_f64() * 1e3);
    }
    let min = delays.iter().cloned().fold(f64::MAX, f64::min);
    let max = delays.iter().cloned().fold(f64::MIN, f64::max);
    let mean = delays.iter().sum::<f64>() / n as f64;
    assert!(min >= 40.0 && max <= 60.0, "min {min} max {max}");
    // Uniform on [40, 60]: the extremes are reached and the mean is 50 +- 0.1 (sd 5.8/sqrt(n)).
    assert!(min < 40.1 && max > 59.9, "min {min} max {max}");
    assert!((mean - 50.0).abs() < 0.2, "mean {mean}");
    let below_45 = delays.iter().filter(|d| **d < 45.0).count() as f64 / n as f64;
    assert!((below_45 - 0.25).abs() < 0.02, "{below_45}");
    // Packets 0.2 ms apart with +-10 ms jitter overtake each other.
    drain(&mut lane, t0 + Duration::from_secs(10));
    let s = lane.stats();
    assert_eq!(s.packets_out, n);
    assert!(s.reordered > n / 4, "reordered {}", s.reordered);
}

#[test]
fn jitter_keep_order_never_reorders_and_respects_lower_bound() {
    let imp = Impairment::builder()
        .delay(ms(50))
        .jitter(ms(10))
        .build()
        .unwrap();
    assert_eq!(imp.jitter_order(), JitterOrder::Keep);
    let mut lane = Lane::new(imp, 3);
    let t0 = Instant::now();
    let mut last = t0;
    for i in 0..5_000u64 {
        let now = t0 + Duration::from_micros(i * 200);
        let at = deliver_at(lane.push(now, 100, i));
        assert!(at >= last, "packet {i} scheduled before its predecessor");
        assert!(at >= now + ms(40));
        last = at;
    }
    let out = drain(&mut lane, t0 + Duration::from_secs(10));
    assert_eq!(out, (0..5_000).collect::<Vec<_>>());
    assert_eq!(lane.stats().reordered, 0);

    // Spaced wider than the jitter range, keep-order does not change the distribution.
    let imp = Impairment::builder()
        .delay(ms(50))
        .jitter(ms(10))
        .build()
        .unwrap();
    let mut s = Shaper::new(imp, 4);
    let mut max = Duration::ZERO;
    let mut min = Duration::MAX;
    for i in 0..2_000u64 {
        let now = t0 + ms(i * 25);
        let d = deliver_at(s.on_packet(now, 100)) - now;
        max = max.max(d);
        min = min.min(d);
    }
    assert!(min >= ms(40) && min < ms(41) && max <= ms(60) && max > ms(59));
}

fn loss_fraction(imp: Impairment, seed: u64, n: u64) -> (f64, Vec<u64>) {
    let mut s = Shaper::new(imp, seed);
    let t0 = Instant::now();
    let mut lost = 0u64;
    let mut bursts = Vec::new();
    let mut run = 0u64;
    for i in 0..n {
        match s.on_packet(t0 + Duration::from_micros(i * 10), 100) {
            Verdict::Drop(DropReason::QueueFull) => panic!("queue drop"),
            Verdict::Drop(_) => {
                lost += 1;
                run += 1;
            }
            Verdict::DeliverAt(_) => {
                if run > 0 {
                    bursts.push(run);
                }
                run = 0;
            }
        }
    }
    (lost as f64 / n as f64, bursts)
}

#[test]
fn bernoulli_loss_rate_within_statistical_bounds() {
    let n = 200_000;
    for (p, seed) in [(0.02, 1), (0.02, 2), (0.10, 3), (0.5, 4)] {
        let imp = Impairment::builder().loss(p).build().unwrap();
        let (observed, bursts) = loss_fraction(imp, seed, n);
        // 5 standard deviations of a binomial proportion.
        let bound = 5.0 * (p * (1.0 - p) / n as f64).sqrt();
        assert!((observed - p).abs() < bound, "p {p}: observed {observed}");
        // Independent losses: mean run length is 1 / (1 - p).
        let mean_run = bursts.iter().sum::<u64>() as f64 / bursts.len() as f64;
        assert!(
            (mean_run - 1.0 / (1.0 - p)).abs() < 0.05,
            "p {p}: run {mean_run}"
        );
    }
    let none = Impairment::builder().build().unwrap();
    assert_eq!(loss_fraction(none, 1, 10_000).0, 0.0);
    let all = Impairment::builder().loss(1.0).build().unwrap();
    assert_eq!(loss_fraction(all, 1, 10_000).0, 1.0);
}

#[test]
fn gilbert_elliott_loses_in_bursts_at_the_model_rate() {
    let ge = GilbertElliott::new(0.01, 0.25);
    let imp = Impairment::builder().burst_loss(ge).build().unwrap();
    let (observed, bursts) = loss_fraction(imp, 11, 400_000);
    let expected = ge.mean_loss(); // 3.85 %
    assert!(
        (observed - expected).abs() < 0.15 * expected,
        "observed {observed}, expected {expected}"
    );
    // Bad-state sojourns are geometric with mean 1/r = 4 packets.
    let mean_burst = bursts.iter().sum::<u64>() as f64 / bursts.len() as f64;
    assert!((mean_burst - 4.0).abs() < 0.3, "mean burst {mean_burst}");
    assert!(bursts.iter().any(|b| *b >= 10));

    // The same average loss from the Bernoulli model comes in runs of ~1.
    let imp = Impairment::builder().loss(expected).build().unwrap();
    let (_, runs) = loss_fraction(imp, 11, 400_000);
    let mean_run = runs.iter().sum::<u64>() as f64 / runs.len() as f64;
    assert!(mean_run < 1.1, "{mean_run}");

    // A lossy Good state and a leaky Bad state follow the general formula.
    let ge = GilbertElliott {
        p: 0.05,
        r: 0.2,
        loss_good: 0.01,
        loss_bad: 0.5,
    };
    let imp = Impairment::builder().burst_loss(ge).build().unwrap();
    let (observed, _) = loss_fraction(imp, 12, 400_000);
    assert!((observed - ge.mean_loss()).abs() < 0.1 * ge.mean_loss());
}

#[test]
fn rate_limit_serializes_packets_on_a_virtual_wire() {
    // 1 Mbit/s: a 1250-byte packet takes exactly 10 ms.
    let imp = Impairment::builder()
        .rate_bps(1_000_000)
        .delay(ms(5))
        .build()
        .unwrap();
    assert_eq!(serialization_time(1250, 1_000_000), ms(10));
    let mut s = Shaper::new(imp.clone(), 1);
    let t0 = Instant::now();
    for k in 1..=10 {
        assert_eq!(deliver_at(s.on_packet(t0, 1250)), t0 + ms(10 * k + 5));
    }
    // An idle wire starts fresh.
    let later = t0 + Duration::from_secs(1);
    assert_eq!(deliver_at(s.on_packet(later, 1250)), later + ms(15));

    // Offered at twice the rate for 10 s: goodput is the rate, excess is tail-dropped.
    let mut lane = Lane::new(imp.to_builder().queue_limit(50).build().unwrap(), 1);
    let mut delivered_bytes = 0u64;
    let mut last_at = t0;
    for i in 0..2000u64 {
        // 1250 bytes every 5 ms = 2 Mbit/s
        let now = t0 + ms(i * 5);
        if let Verdict::DeliverAt(at) = lane.push(now, 1250, ()) {
            delivered_bytes += 1250;
            last_at = at;
        }
    }
    let secs = (last_at - t0 - ms(5)).as_secs_f64();
    let goodput = delivered_bytes as f64 * 8.0 / secs;
    assert!((goodput - 1e6).abs() < 0.01e6, "goodput {goodput}");
    let st = lane.stats();
    assert!(st.dropped_queue > 900 && st.dropped_queue < 1100, "{st:?}");
}

#[test]
fn queue_limit_tail_drops_and_frees_as_packets_leave() {
    let imp = Impairment::builder()
        .delay(ms(100))
        .queue_limit(10)
        .build()
        .unwrap();
    let mut lane = Lane::new(imp, 1);
    let t0 = Instant::now();
    let verdicts: Vec<_> = (0..15).map(|i| lane.push(t0, 100, i)).collect();
    assert!(
        verdicts[..10]
            .iter()
            .all(|v| matches!(v, Verdict::DeliverAt(_)))
    );
    assert!(
        verdicts[10..]
            .iter()
            .all(|v| *v == Verdict::Drop(DropReason::QueueFull))
    );
    assert_eq!(lane.stats().dropped_queue, 5);
    // Still full just before the first packet leaves, free after.
    assert_eq!(
        lane.push(t0 + ms(99), 100, 99),
        Verdict::Drop(DropReason::QueueFull)
    );
    assert!(matches!(
        lane.push(t0 + ms(100), 100, 100),
        Verdict::DeliverAt(_)
    ));
    assert_eq!(drain(&mut lane, t0 + ms(100)).len(), 10);
    assert_eq!(lane.queued(), 1);

    // Default limit is netem's 1000.
    let mut s = Shaper::new(Impairment::builder().delay(ms(1)).build().unwrap(), 1);
    let accepted = (0..1500)
        .filter(|_| matches!(s.on_packet(t0, 1), Verdict::DeliverAt(_)))
        .count();
    assert_eq!(accepted, 1000);
}

#[test]
fn explicit_reorder_holds_back_the_configured_share() {
    let imp = Impairment::builder()
        .delay(ms(20))
        .reorder(0.1, ms(5))
        .build()
        .unwrap();
    let mut lane = Lane::new(imp, 5);
    let t0 = Instant::now();
    let n = 20_000u64;
    let mut held_back = 0;
    for i in 0..n {
        let now = t0 + ms(i); // 1 ms apart, so a 5 ms hold-back is always overtaken
        let d = deliver_at(lane.push(now, 100, i)) - now;
        match d {
            d if d == ms(20) => {}
            d if d == ms(25) => held_back += 1,
            d => panic!("unexpected delay {d:?}"),
        }
    }
    drain(&mut lane, t0 + Duration::from_secs(100));
    let s = lane.stats();
    assert_eq!(s.reordered, held_back);
    let share = held_back as f64 / n as f64;
    assert!(
        (share - 0.1).abs() < 5.0 * (0.09f64 / n as f64).sqrt(),
        "{share}"
    );
}

#[test]
fn runtime_change_applies_to_new_packets_without_reordering_old_ones() {
    let slow = Impairment::builder().delay(ms(50)).build().unwrap();
    let mut lane = Lane::new(slow, 1);
    let t0 = Instant::now();
    let first = deliver_at(lane.push(t0, 100, 0));
    lane.set_impairment(Impairment::builder().delay(ms(10)).build().unwrap());
    // Keep-order: the faster setting cannot overtake what is in flight...
    assert_eq!(deliver_at(lane.push(t0 + ms(1), 100, 1)), first);
    // ...but applies once the old packets are gone.
    assert_eq!(deliver_at(lane.push(t0 + ms(100), 100, 2)), t0 + ms(110));
    assert_eq!(drain(&mut lane, t0 + ms(200)), vec![0, 1, 2]);
    lane.set_impairment(Impairment::builder().loss(1.0).build().unwrap());
    assert_eq!(
        lane.push(t0 + ms(300), 100, 3),
        Verdict::Drop(DropReason::RandomLoss)
    );
}

#[test]
fn same_seed_same_verdicts() {
    let imp = Impairment::builder()
        .delay(ms(30))
        .jitter(ms(5))
        .loss(0.1)
        .burst_loss(GilbertElliott::new(0.02, 0.3))
        .reorder(0.05, ms(3))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let run = |seed| {
        let mut s = Shaper::new(imp.clone(), seed);
        (0..1000u64)
            .map(|i| s.on_packet(t0 + ms(i), 500))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

#[test]
fn release_queue_orders_by_time_then_arrival() {
    let t0 = Instant::now();
    let mut q = ReleaseQueue::default();
    q.push(t0 + ms(3), "c");
    q.push(t0 + ms(1), "a");
    q.push(t0 + ms(3), "d");
    q.push(t0 + ms(2), "b");
    assert_eq!(q.next_release(), Some(t0 + ms(1)));
    assert!(q.pop_due(t0).is_none());
    let out: Vec<_> = std::iter::from_fn(|| q.pop_due(t0 + ms(3))).collect();
    let names: Vec<_> = out.iter().map(|r| r.packet).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    // Pushed as c, a, d, b; released a, b, c, d: c and d left after b, which entered
    // after them, so a receiver would count them as reordered.
    let reordered: Vec<_> = out.iter().map(|r| r.reordered).collect();
    assert_eq!(reordered, [false, false, true, true]);
    assert!(q.is_empty());
}

fn impairment_strategy() -> impl Strategy<Value = Impairment> {
    (
        0u64..200,
        0u64..100,
        any::<bool>(),
        0.0f64..=1.0,
        proptest::option::of((0.0f64..=1.0, 0.01f64..=1.0)),
        proptest::option::of((0.0f64..=1.0, 1u64..50)),
        proptest::option::of(1_000u64..1_000_000_000),
        1usize..200,
    )
        .prop_map(
            |(delay, jitter_pct, keep, loss, ge, reorder, rate, queue)| {
                let delay = ms(delay);
                let mut b = Impairment::builder()
                    .delay(delay)
                    .jitter(delay * jitter_pct as u32 / 100)
                    .jitter_order(if keep {
                        JitterOrder::Keep
                    } else {
                        JitterOrder::Reorder
                    })
                    .loss(loss)
                    .queue_limit(queue);
                if let Some((p, r)) = ge {
                    b = b.burst_loss(GilbertElliott::new(p, r));
                }
                if let Some((p, extra)) = reorder {
                    b = b.reorder(p, ms(extra));
                }
                if let Some(rate) = rate {
                    b = b.rate_bps(rate);
                }
                b.build().expect("strategy only makes valid impairments")
            },
        )
}

proptest! {
    #[test]
    fn invariants_hold_for_any_valid_impairment(
        imp in impairment_strategy(),
        gaps in proptest::collection::vec((0u64..5_000, 20usize..1500), 1..300),
        seed in any::<u64>(),
    ) {
        let mut lane = Lane::new(imp.clone(), seed);
        let t0 = Instant::now();
        let mut now = t0;
        let mut out = 0u64;
        for (i, (gap_us, len)) in gaps.iter().enumerate() {
            now += Duration::from_micros(*gap_us);
            out += drain(&mut lane, now).len() as u64;
            if let Verdict::DeliverAt(at) = lane.push(now, *len, i) {
                // Never earlier than delay - jitter.
                prop_assert!(at >= now + imp.delay() - imp.jitter());
            }
            prop_assert!(lane.queued() <= imp.queue_limit());
        }
        let s = lane.stats();
        prop_assert_eq!(
            s.packets_in,
            out + lane.queued() as u64 + s.dropped_loss + s.dropped_burst + s.dropped_queue
        );
        out += drain(&mut lane, now + Duration::from_secs(3600)).len() as u64;
        prop_assert_eq!(lane.stats().packets_out, out);
        prop_assert!(lane.stats().reordered <= out);
    }
}
