//! Parsing of human-written settings: `50ms`, `2%`, `100mbit`, `1%,30%`, `25%,10ms`.
//! Range checks that depend on the field (loss <= 100 %, jitter <= delay) belong to
//! [`crate::ImpairmentBuilder::build`]; these functions only refuse text that has no
//! meaning at all.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::impairment::GilbertElliott;

/// Split `12.5ms` into `(12.5, "ms")`.
fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

fn number(what: &'static str, input: &str, text: &str) -> Result<f64> {
    let v: f64 = text
        .parse()
        .map_err(|_| Error::parse(what, input, "expected a number followed by a unit"))?;
    if !v.is_finite() {
        return Err(Error::parse(what, input, "not a finite number"));
    }
    if v < 0.0 {
        return Err(Error::parse(what, input, "negative values are not allowed"));
    }
    Ok(v)
}

/// A duration: a non-negative number and a unit `ns`, `us`, `ms`, `s`, `m` (`0` alone is
/// fine), e.g. `50ms`, `1.5s`.
pub fn duration(input: &str) -> Result<Duration> {
    let s = input.trim();
    let (num, unit) = split_number(s);
    let v = number("duration", input, num)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" | "sec" => 1e9,
        "m" | "min" => 60e9,
        "" if v == 0.0 => 1.0,
        "" => {
            return Err(Error::parse(
                "duration",
                input,
                "missing unit; write e.g. 50ms, 1.5s, 200us",
            ));
        }
        other => {
            return Err(Error::parse(
                "duration",
                input,
                format!("unknown unit {other:?}; use ns, us, ms, s or m"),
            ));
        }
    };
    // Scale to nanoseconds before rounding so `50ms` is exactly 50 ms.
    let nanos = (v * scale).round();
    // 1e6 s is far beyond any valid setting; the builder reports the real range.
    if nanos > 1e15 {
        return Err(Error::parse("duration", input, "too large"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// A probability as a percentage (`2%`, `0.5%`) or a fraction (`0.02`). Returns the
/// fraction. A bare number above 1 is refused, since `2` most likely meant `2%`.
pub fn probability(input: &str) -> Result<f64> {
    let s = input.trim();
    let (num, unit) = split_number(s);
    let v = number("probability", input, num)?;
    match unit {
        "%" => Ok(v / 100.0),
        "" if v <= 1.0 => Ok(v),
        "" => Err(Error::parse(
            "probability",
            input,
            "a bare number is a fraction 0..=1; write a percentage with %, e.g. 2%",
        )),
        other => Err(Error::parse(
            "probability",
            input,
            format!("unknown unit {other:?}; use % or a bare fraction"),
        )),
    }
}

/// A rate in bits per second: a number and `bit`, `kbit`, `mbit`, `gbit` or `tbit`
/// (decimal prefixes, as tc uses). Byte units are refused: tc's `bps` means *bytes*.
pub fn rate(input: &str) -> Result<u64> {
    let s = input.trim();
    let (num, unit) = split_number(s);
    let v = number("rate", input, num)?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "bit" | "bit/s" => 1e0,
        "kbit" | "kbit/s" => 1e3,
        "mbit" | "mbit/s" => 1e6,
        "gbit" | "gbit/s" => 1e9,
        "tbit" | "tbit/s" => 1e12,
        "" => {
            return Err(Error::parse(
                "rate",
                input,
                "missing unit; write e.g. 100mbit, 512kbit",
            ));
        }
        other => {
            return Err(Error::parse(
                "rate",
                input,
                format!(
                    "unknown unit {other:?}; use bit, kbit, mbit, gbit or tbit (bits per second)"
                ),
            ));
        }
    };
    let bps = (v * scale).round();
    if bps > u64::MAX as f64 / 2.0 {
        return Err(Error::parse("rate", input, "too large"));
    }
    Ok(bps as u64)
}

/// Gilbert-Elliott parameters `p,r` (each a probability), e.g. `1%,30%`.
pub fn burst_loss(input: &str) -> Result<GilbertElliott> {
    let Some((p, r)) = input.split_once(',') else {
        return Err(Error::parse(
            "burst loss",
            input,
            "expected p,r: the Good->Bad and Bad->Good probabilities, e.g. 1%,30%",
        ));
    };
    Ok(GilbertElliott::new(probability(p)?, probability(r)?))
}

/// Explicit reordering `probability,extra_delay`, e.g. `25%,10ms`.
pub fn reorder(input: &str) -> Result<(f64, Duration)> {
    let Some((p, d)) = input.split_once(',') else {
        return Err(Error::parse(
            "reorder",
            input,
            "expected probability,delay: the share of packets held back and by how long, e.g. 5%,10ms",
        ));
    };
    Ok((probability(p)?, duration(d)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(duration("50ms").unwrap(), Duration::from_millis(50));
        assert_eq!(duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("200us").unwrap(), Duration::from_micros(200));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert_eq!(duration(" 2 ms ").unwrap(), Duration::from_millis(2));
        for (bad, why) in [
            ("-5ms", "negative"),
            ("50", "missing unit"),
            ("50 parsecs", "unknown unit"),
            ("ms", "expected a number"),
            ("", "expected a number"),
        ] {
            let e = duration(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn probabilities() {
        assert_eq!(probability("2%").unwrap(), 0.02);
        assert_eq!(probability("0.02").unwrap(), 0.02);
        assert_eq!(probability("100%").unwrap(), 1.0);
        // Parsed; the builder refuses it naming the field.
        assert_eq!(probability("150%").unwrap(), 1.5);
        assert!(
            probability("2")
                .unwrap_err()
                .to_string()
                .contains("write a percentage")
        );
        assert!(
            probability("-1%")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(
            probability("2x")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
    }

    #[test]
    fn rates() {
        assert_eq!(rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(rate("1.5Gbit").unwrap(), 1_500_000_000);
        assert_eq!(rate("512kbit").unwrap(), 512_000);
        assert_eq!(rate("0bit").unwrap(), 0); // refused by the builder with the range
        assert!(
            rate("100")
                .unwrap_err()
                .to_string()
                .contains("missing unit")
        );
        assert!(
            rate("10mbps")
                .unwrap_err()
                .to_string()
                .contains("bits per second")
        );
    }

    #[test]
    fn pairs() {
        let ge = burst_loss("1%,30%").unwrap();
        assert_eq!((ge.p, ge.r), (0.01, 0.3));
        assert!(
            burst_loss("1%")
                .unwrap_err()
                .to_string()
                .contains("expected p,r")
        );
        assert_eq!(
            reorder("25%,10ms").unwrap(),
            (0.25, Duration::from_millis(10))
        );
        assert!(reorder("25%").is_err());
    }

    proptest! {
        #[test]
        fn millisecond_durations_round_trip(n in 0u64..60_000) {
            prop_assert_eq!(duration(&format!("{n}ms")).unwrap(), Duration::from_millis(n));
        }

        #[test]
        fn parsers_never_panic(s in ".{0,20}") {
            let _ = duration(&s);
            let _ = probability(&s);
            let _ = rate(&s);
            let _ = burst_loss(&s);
            let _ = reorder(&s);
        }
    }
}
