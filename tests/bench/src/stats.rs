//! Latency summaries: nearest-rank percentiles over a finished sample set. Pure.

use serde::{Deserialize, Serialize};

/// What one latency measurement came to, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    /// Summarises samples in milliseconds; an empty set gives `n == 0` and zeros.
    /// NaN samples are ignored (they can only come from a clock bug).
    pub fn of(samples_ms: &[f64]) -> Summary {
        let mut v: Vec<f64> = samples_ms.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Summary {
            n: v.len(),
            p50_ms: percentile_sorted(&v, 50.0),
            p95_ms: percentile_sorted(&v, 95.0),
            p99_ms: percentile_sorted(&v, 99.0),
            max_ms: v[v.len() - 1],
            mean_ms: mean,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of an ascending slice: the smallest sample
/// with at least p% of the samples at or below it. No interpolation, so every reported
/// value is a latency that was actually observed. Panics on an empty slice.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no samples");
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, or `None` when either side is missing or `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile_sorted(&v, 50.0), 50.0);
        assert_eq!(percentile_sorted(&v, 95.0), 95.0);
        assert_eq!(percentile_sorted(&v, 99.0), 99.0);
        assert_eq!(percentile_sorted(&v, 100.0), 100.0);
        assert_eq!(percentile_sorted(&v, 0.0), 1.0);
    }

    #[test]
    fn small_sets_report_observed_values() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!(s.n, 3);
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.p99_ms, 3.0);
        assert_eq!(s.max_ms, 3.0);
        assert!((s.mean_ms - 2.0).abs() < 1e-9);
        let one = Summary::of(&[7.5]);
        assert_eq!((one.p50_ms, one.p95_ms, one.p99_ms), (7.5, 7.5, 7.5));
    }

    #[test]
    fn tail_of_a_thousand() {
        // 990 fast samples and 10 slow ones: p99 is still fast (the 990th), max is slow.
        let mut v = vec![1.0; 990];
        v.extend(std::iter::repeat_n(100.0, 10));
        let s = Summary::of(&v);
        assert_eq!(s.p99_ms, 1.0);
        assert_eq!(s.max_ms, 100.0);
        v.push(100.0);
        assert_eq!(Summary::of(&v).p99_ms, 100.0);
    }

    #[test]
    fn empty_and_nan() {
        assert!(Summary::of(&[]).is_empty());
        assert!(Summary::of(&[f64::NAN]).is_empty());
        assert_eq!(Summary::of(&[f64::NAN, 4.0]).n, 1);
    }

    #[test]
    fn ratios_refuse_zero() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
