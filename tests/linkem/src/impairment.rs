//! What a link does to the packets of one direction, validated once at construction.
//!
//! An [`Impairment`] can only be obtained from [`ImpairmentBuilder::build`], which refuses
//! settings that cannot be emulated, so everything downstream (the shaper, the forwarder)
//! can rely on the ranges documented here.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// Largest accepted delay, jitter or reorder hold-back. Keeps every `Instant + Duration`
/// computation far from overflow and catches unit mistakes (`50s` meant as `50ms`).
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// Smallest accepted rate limit, in bits per second.
pub const MIN_RATE_BPS: u64 = 1_000;
/// Largest accepted rate limit, in bits per second (1 Tbit/s).
pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;
/// Largest accepted queue limit, in packets.
pub const MAX_QUEUE: usize = 1_000_000;
/// netem's default `limit`, kept so results compare with netem-based measurements.
pub const DEFAULT_QUEUE: usize = 1000;

/// Whether jitter may reorder packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterOrder {
    /// A packet is never delivered before a packet that entered the link earlier (explicit
    /// [`Reorder`] aside): its jittered time is raised to the previous packet's. Real paths
    /// rarely reorder, so this is the default. Cost: under dense traffic the delivered delay
    /// is skewed upwards (each packet waits for the largest jitter drawn before it).
    #[default]
    Keep,
    /// Each packet gets its own jittered time, so packets sent closer together than the
    /// jitter range overtake each other (netem's behaviour).
    Reorder,
}

/// Gilbert-Elliott burst loss: a two-state Markov chain evaluated once per packet.
///
/// In state Good a packet is lost with probability `loss_good` (default 0), in state Bad
/// with `loss_bad` (default 1). After each packet the chain moves Good->Bad with
/// probability `p` and Bad->Good with probability `r`. Long-run loss is
/// `(r * loss_good + p * loss_bad) / (p + r)`; with the defaults it is `p / (p + r)` and
/// losses come in bursts of mean length `1 / r` packets (netem's `loss gemodel p r`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving Good -> Bad after a packet, `0..=1`.
    pub p: f64,
    /// Probability of moving Bad -> Good after a packet, `(0, 1]`: 0 would be a link that
    /// fails forever after its first burst.
    pub r: f64,
    /// Loss probability in state Good, `0..=1`. Default 0.
    pub loss_good: f64,
    /// Loss probability in state Bad, `0..=1`. Default 1.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: no loss in Good, every packet lost in Bad.
    pub fn new(p: f64, r: f64) -> Self {
        GilbertElliott {
            p,
            r,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Long-run fraction of packets this model drops.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_good;
        }
        (self.r * self.loss_good + self.p * self.loss_bad) / (self.p + self.r)
    }
}

/// Explicit reordering: with `probability`, a packet is held back by `extra_delay` on top
/// of its normal schedule, so packets sent after it (within `extra_delay`) overtake it.
/// Unlike netem (which sends the chosen packets *early*), this never makes a packet faster
/// than the configured delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reorder {
    /// Probability a packet is held back, `0..=1`.
    pub probability: f64,
    /// How long it is held back, `(0, 60 s]`.
    pub extra_delay: Duration,
}

/// The validated impairment of one direction. Build with [`Impairment::builder`].
///
/// A packet entering the link goes through, in order:
/// ```text
/// loss (Bernoulli, then Gilbert-Elliott) -> queue limit (tail drop)
///   -> rate limit (serialization on a virtual wire, FIFO)
///   -> delay +- jitter (order kept or not) -> reorder hold-back -> delivered
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Impairment {
    delay: Duration,
    jitter: Duration,
    jitter_order: JitterOrder,
    loss: f64,
    burst: Option<GilbertElliott>,
    reorder: Option<Reorder>,
    rate_bps: Option<u64>,
    queue_limit: usize,
}

impl Default for Impairment {
    /// A perfect link with netem's default queue of 1000 packets.
    fn default() -> Self {
        Impairment {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_order: JitterOrder::Keep,
            loss: 0.0,
            burst: None,
            reorder: None,
            rate_bps: None,
            queue_limit: DEFAULT_QUEUE,
        }
    }
}

impl Impairment {
    /// Start from a perfect link (see [`ImpairmentBuilder`] for each setting's default).
    pub fn builder() -> ImpairmentBuilder {
        ImpairmentBuilder {
            inner: Impairment::default(),
        }
    }

    /// Continue from this impairment, e.g. to change one setting of a running link.
    pub fn to_builder(&self) -> ImpairmentBuilder {
        ImpairmentBuilder {
            inner: self.clone(),
        }
    }

    /// Fixed one-way delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }
    /// Half-width of the uniform jitter: each packet's delay is drawn from
    /// `delay - jitter ..= delay + jitter`.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }
    /// Whether jitter may reorder.
    pub fn jitter_order(&self) -> JitterOrder {
        self.jitter_order
    }
    /// Independent (Bernoulli) loss probability, `0..=1`.
    pub fn loss(&self) -> f64 {
        self.loss
    }
    /// Burst loss model, if any.
    pub fn burst(&self) -> Option<GilbertElliott> {
        self.burst
    }
    /// Explicit reordering, if any.
    pub fn reorder(&self) -> Option<Reorder> {
        self.reorder
    }
    /// Rate limit in bits per second (IP packet bytes, no link-layer overhead), if any.
    pub fn rate_bps(&self) -> Option<u64> {
        self.rate_bps
    }
    /// Most packets held by this direction at once (waiting for the wire or in flight);
    /// further packets are dropped (tail drop), like netem's `limit`.
    pub fn queue_limit(&self) -> usize {
        self.queue_limit
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delay {:?}", self.delay)?;
        if !self.jitter.is_zero() {
            write!(f, " jitter {:?} ({:?})", self.jitter, self.jitter_order)?;
        }
        if self.loss > 0.0 {
            write!(f, " loss {}%", self.loss * 100.0)?;
        }
        if let Some(ge) = self.burst {
            write!(f, " burst-loss p={}% r={}%", ge.p * 100.0, ge.r * 100.0)?;
        }
        if let Some(r) = self.reorder {
            write!(
                f,
                " reorder {}% +{:?}",
                r.probability * 100.0,
                r.extra_delay
            )?;
        }
        if let Some(rate) = self.rate_bps {
            write!(f, " rate {rate} bit/s")?;
        }
        write!(f, " queue {}", self.queue_limit)
    }
}

/// Collects settings; [`build`](Self::build) validates them all together.
#[derive(Debug, Clone)]
pub struct ImpairmentBuilder {
    inner: Impairment,
}

impl ImpairmentBuilder {
    /// Fixed one-way delay. Default 0, valid `0..=60 s`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.inner.delay = delay;
        self
    }
    /// Uniform jitter half-width. Default 0, valid `0..=delay` (so the delay distribution
    /// stays symmetric around `delay` and never goes below zero).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.inner.jitter = jitter;
        self
    }
    /// Whether jitter may reorder. Default [`JitterOrder::Keep`].
    pub fn jitter_order(mut self, order: JitterOrder) -> Self {
        self.inner.jitter_order = order;
        self
    }
    /// Independent loss probability as a fraction (`0.02` = 2 %). Default 0, valid `0..=1`.
    pub fn loss(mut self, probability: f64) -> Self {
        self.inner.loss = probability;
        self
    }
    /// Gilbert-Elliott burst loss. Default none.
    pub fn burst_loss(mut self, model: GilbertElliott) -> Self {
        self.inner.burst = Some(model);
        self
    }
    /// Explicit reordering. Default none.
    pub fn reorder(mut self, probability: f64, extra_delay: Duration) -> Self {
        self.inner.reorder = Some(Reorder {
            probability,
            extra_delay,
        });
        self
    }
    /// Rate limit in bits per second. Default unlimited, valid 1 kbit/s ..= 1 Tbit/s.
    pub fn rate_bps(mut self, bits_per_second: u64) -> Self {
        self.inner.rate_bps = Some(bits_per_second);
        self
    }
    /// Remove the rate limit.
    pub fn unlimited_rate(mut self) -> Self {
        self.inner.rate_bps = None;
        self
    }
    /// Queue limit in packets. Default 1000 (netem's); valid `1..=1_000_000`. Lowering it
    /// makes a rate-limited link drop earlier; it also caps throughput at
    /// `limit / delay` packets per second, exactly as netem's limit does.
    pub fn queue_limit(mut self, packets: usize) -> Self {
        self.inner.queue_limit = packets;
        self
    }

    /// Check every setting; the error names the first field out of range.
    pub fn build(self) -> Result<Impairment> {
        let i = self.inner;
        check_duration("delay", i.delay)?;
        check_duration("jitter", i.jitter)?;
        if i.jitter > i.delay {
            return Err(Error::invalid(
                "jitter",
                format!("{:?}", i.jitter),
                format!("0..={:?} (at most the delay)", i.delay),
            ));
        }
        check_probability("loss", i.loss)?;
        if let Some(ge) = i.burst {
            check_probability("burst-loss p", ge.p)?;
            check_probability("burst-loss r", ge.r)?;
            if ge.r == 0.0 {
                return Err(Error::invalid(
                    "burst-loss r",
                    "0%",
                    "(0%, 100%] (r = 0 never leaves the loss state)",
                ));
            }
            check_probability("burst-loss loss in good state", ge.loss_good)?;
            check_probability("burst-loss loss in bad state", ge.loss_bad)?;
        }
        if let Some(r) = i.reorder {
            check_probability("reorder probability", r.probability)?;
            check_duration("reorder delay", r.extra_delay)?;
            if r.probability > 0.0 && r.extra_delay.is_zero() {
                return Err(Error::invalid(
                    "reorder delay",
                    "0s",
                    "(0s, 60s] when the reorder probability is above 0",
                ));
            }
        }
        if let Some(rate) = i.rate_bps
            && !(MIN_RATE_BPS..=MAX_RATE_BPS).contains(&rate)
        {
            return Err(Error::invalid(
                "rate",
                format!("{rate} bit/s"),
                "1kbit..=1000gbit (1000..=1000000000000 bit/s)",
            ));
        }
        if !(1..=MAX_QUEUE).contains(&i.queue_limit) {
            return Err(Error::invalid(
                "queue",
                format!("{} packets", i.queue_limit),
                format!("1..={MAX_QUEUE} packets"),
            ));
        }
        Ok(i)
    }
}

fn check_duration(field: &'static str, d: Duration) -> Result<()> {
    if d > MAX_DELAY {
        return Err(Error::invalid(field, format!("{d:?}"), "0s..=60s"));
    }
    Ok(())
}

fn check_probability(field: &'static str, p: f64) -> Result<()> {
    // `contains` is false for NaN, so NaN is refused too.
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            field,
            format!("{}%", p * 100.0),
            "0%..=100% (a fraction 0..=1)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: ImpairmentBuilder) -> String {
        b.build().unwrap_err().to_string()
    }

    #[test]
    fn default_is_perfect_link_with_netem_queue() {
        let i = Impairment::builder().build().unwrap();
        assert_eq!(i.delay(), Duration::ZERO);
        assert_eq!(i.loss(), 0.0);
        assert_eq!(i.queue_limit(), 1000);
        assert_eq!(i.rate_bps(), None);
    }

    #[test]
    fn refuses_out_of_range_settings_naming_field_and_range() {
        let ms = Duration::from_millis;
        let e = err(Impairment::builder().loss(1.5));
        assert!(
            e.contains("invalid loss: 150%") && e.contains("0%..=100%"),
            "{e}"
        );
        let e = err(Impairment::builder().loss(-0.01));
        assert!(e.contains("invalid loss: -1%"), "{e}");
        let e = err(Impairment::builder().loss(f64::NAN));
        assert!(e.contains("invalid loss"), "{e}");
        let e = err(Impairment::builder().delay(ms(10)).jitter(ms(11)));
        assert!(
            e.contains("invalid jitter: 11ms") && e.contains("0..=10ms"),
            "{e}"
        );
        let e = err(Impairment::builder().delay(Duration::from_secs(61)));
        assert!(e.contains("invalid delay") && e.contains("0s..=60s"), "{e}");
        let e = err(Impairment::builder().rate_bps(0));
        assert!(
            e.contains("invalid rate: 0 bit/s") && e.contains("1kbit"),
            "{e}"
        );
        let e = err(Impairment::builder().queue_limit(0));
        assert!(
            e.contains("invalid queue: 0 packets") && e.contains("1..=1000000"),
            "{e}"
        );
        let e = err(Impairment::builder().burst_loss(GilbertElliott::new(0.1, 0.0)));
        assert!(e.contains("invalid burst-loss r"), "{e}");
        let e = err(Impairment::builder().burst_loss(GilbertElliott::new(2.0, 0.5)));
        assert!(e.contains("invalid burst-loss p: 200%"), "{e}");
        let e = err(Impairment::builder().reorder(0.2, Duration::ZERO));
        assert!(e.contains("invalid reorder delay"), "{e}");
        let e = err(Impairment::builder().reorder(1.2, ms(5)));
        assert!(e.contains("invalid reorder probability"), "{e}");
    }

    #[test]
    fn accepts_boundaries() {
        let ms = Duration::from_millis;
        Impairment::builder()
            .delay(ms(10))
            .jitter(ms(10))
            .loss(1.0)
            .rate_bps(MIN_RATE_BPS)
            .queue_limit(1)
            .burst_loss(GilbertElliott::new(0.0, 1.0))
            .reorder(0.0, Duration::ZERO)
            .build()
            .unwrap();
    }

    #[test]
    fn gilbert_elliott_mean_loss() {
        assert!((GilbertElliott::new(0.01, 0.3).mean_loss() - 0.01 / 0.31).abs() < 1e-12);
    }
}
