//! Reconnect delays: exponential from 200 ms, capped at 10 s, with up to 25% random jitter
//! so many sandboxes do not reconnect to a restarted gateway in lockstep.

use std::time::Duration;

/// First delay.
pub const INITIAL: Duration = Duration::from_millis(200);
/// Largest delay.
pub const MAX: Duration = Duration::from_secs(10);

/// The delay before reconnect attempt `attempt` (0-based), with `jitter` in [0, 1).
pub fn delay(attempt: u32, jitter: f64) -> Duration {
    let base = INITIAL.saturating_mul(1u32 << attempt.min(16)).min(MAX);
    let extra = base.mul_f64(0.25 * jitter.clamp(0.0, 1.0));
    (base + extra).min(MAX + MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        assert_eq!(delay(0, 0.0), INITIAL);
        assert_eq!(delay(1, 0.0), INITIAL * 2);
        assert_eq!(delay(3, 0.0), INITIAL * 8);
        assert_eq!(delay(10, 0.0), MAX);
        assert_eq!(delay(u32::MAX, 0.0), MAX);
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        for attempt in 0..20 {
            let lo = delay(attempt, 0.0);
            let hi = delay(attempt, 0.999);
            assert!(hi >= lo && hi <= lo + lo / 4 + Duration::from_millis(1));
        }
    }
}
