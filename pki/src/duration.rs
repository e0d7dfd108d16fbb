//! Human validity periods: `90d`, `12h`, `30m`, `2w`, `1y`, and combinations such as `1d12h`.
//!
//! Grammar: one or more `<digits><unit>` terms, units `y` (365 days), `w`, `d`, `h`, `m`, `s`,
//! each at most once and largest first. No sign, no spaces inside, no fractions. The total must
//! be positive and at most [`Duration::MAX_SECS`] (100 years): longer is not a validity
//! period anyone means, and it keeps every date inside what X.509 and `time` can represent.

use std::fmt;
use std::str::FromStr;

use crate::error::PkiError;

const UNITS: [(char, u64); 6] = [
    ('y', 365 * 86_400),
    ('w', 7 * 86_400),
    ('d', 86_400),
    ('h', 3_600),
    ('m', 60),
    ('s', 1),
];

/// A positive length of time, parsed from and displayed as `1d12h`-style text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(u64);

impl Duration {
    /// 100 years.
    pub const MAX_SECS: u64 = 100 * 365 * 86_400;

    /// A duration of `secs` seconds; `None` for zero or more than [`Duration::MAX_SECS`].
    pub fn from_secs(secs: u64) -> Option<Duration> {
        (secs > 0 && secs <= Self::MAX_SECS).then_some(Duration(secs))
    }

    pub const fn days(n: u64) -> Duration {
        Duration(n * 86_400)
    }

    pub fn as_secs(self) -> u64 {
        self.0
    }

    /// As a `time::Duration`, for date arithmetic.
    pub fn to_time(self) -> time::Duration {
        // MAX_SECS fits in i64 by a wide margin.
        time::Duration::seconds(self.0 as i64)
    }

    /// Parses `text` (see the module docs for the grammar).
    pub fn parse(text: &str) -> Result<Duration, PkiError> {
        let bad = |why: &str| PkiError::InvalidDuration {
            input: text.to_string(),
            why: why.to_string(),
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.starts_with('-') {
            return Err(bad("it is negative"));
        }
        let mut total: u64 = 0;
        let mut rest = text;
        // Index into UNITS of the last unit seen: the next must come strictly after it.
        let mut last_unit: Option<usize> = None;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                let c = rest.chars().next().unwrap_or('?');
                return Err(bad(&format!("expected a number before {c:?}")));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| bad("the number is too large"))?;
            rest = &rest[digits..];
            let Some(unit_char) = rest.chars().next() else {
                return Err(bad("the number has no unit (y, w, d, h, m or s)"));
            };
            if unit_char == '.' || unit_char == ',' {
                return Err(bad("fractions are not supported (write 1d12h, not 1.5d)"));
            }
            let Some(unit_idx) = UNITS.iter().position(|(c, _)| *c == unit_char) else {
                return Err(bad(&format!(
                    "unknown unit {unit_char:?} (use y, w, d, h, m or s)"
                )));
            };
            if let Some(prev) = last_unit
                && unit_idx <= prev
            {
                return Err(bad("each unit may appear once, largest first (e.g. 1d12h)"));
            }
            last_unit = Some(unit_idx);
            rest = &rest[unit_char.len_utf8()..];
            total = number
                .checked_mul(UNITS[unit_idx].1)
                .and_then(|t| total.checked_add(t))
                .ok_or_else(|| bad("it is too large"))?;
        }
        if total == 0 {
            return Err(bad("it must be longer than zero"));
        }
        if total > Self::MAX_SECS {
            return Err(bad("it is longer than 100 years"));
        }
        Ok(Duration(total))
    }
}

impl FromStr for Duration {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

/// Canonical form: largest units first, zero terms left out (`36h` prints as `1d12h`).
/// Weeks are never printed (`90d`, not `12w6d`; `2w` prints as `14d`).
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        for (unit, secs) in UNITS.into_iter().filter(|(u, _)| *u != 'w') {
            let n = rest / secs;
            if n > 0 {
                write!(f, "{n}{unit}")?;
                rest %= secs;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert_eq!(Duration::parse("90d").unwrap().as_secs(), 90 * 86_400);
        assert_eq!(Duration::parse("12h").unwrap().as_secs(), 12 * 3_600);
        assert_eq!(Duration::parse("30m").unwrap().as_secs(), 1_800);
        assert_eq!(Duration::parse("1y").unwrap().as_secs(), 365 * 86_400);
        assert_eq!(Duration::parse("2w").unwrap().as_secs(), 14 * 86_400);
        assert_eq!(Duration::parse("1d12h").unwrap().as_secs(), 36 * 3_600);
        assert_eq!(
            Duration::parse("1y2w3d4h5m6s").unwrap().to_string(),
            "1y17d4h5m6s"
        );
        assert_eq!(Duration::parse("36h").unwrap().to_string(), "1d12h");
        assert_eq!(Duration::days(90).to_string(), "90d");
        assert_eq!(Duration::parse("2w").unwrap().to_string(), "14d");
        assert_eq!(Duration::days(3650).to_string(), "10y");
        assert_eq!(Duration::parse("0d1h").unwrap().to_string(), "1h");
    }

    #[test]
    fn rejects_bad_input_with_the_reason() {
        for (input, why) in [
            ("-3d", "negative"),
            ("10x", "unknown unit"),
            ("0d", "longer than zero"),
            ("", "empty"),
            ("d", "expected a number"),
            ("10", "no unit"),
            ("1h1d", "largest first"),
            ("1d1d", "largest first"),
            ("1.5d", "fractions"),
            (" 1d", "expected a number"),
            ("+1d", "expected a number"),
            ("99999999999999999999d", "too large"),
            ("18446744073709551615y", "too large"),
            ("101y", "100 years"),
        ] {
            let err = Duration::parse(input).unwrap_err().to_string();
            assert!(err.contains(why), "{input:?}: {err}");
            assert!(err.contains(&format!("'{input}'")), "{err}");
        }
    }

    proptest! {
        #[test]
        fn display_parses_back(secs in 1..=Duration::MAX_SECS) {
            let d = Duration::from_secs(secs).unwrap();
            prop_assert_eq!(Duration::parse(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn terms_add_up(y in 0u64..5, w in 0u64..60, d in 0u64..400, h in 0u64..100, m in 0u64..100) {
            prop_assume!(y + w + d + h + m > 0);
            let text = format!("{y}y{w}w{d}d{h}h{m}m");
            let want = y * 365 * 86_400 + w * 7 * 86_400 + d * 86_400 + h * 3_600 + m * 60;
            prop_assert_eq!(Duration::parse(&text).unwrap().as_secs(), want);
        }

        #[test]
        fn never_panics(s in "\\PC{0,24}") {
            let _ = Duration::parse(&s);
        }

        #[test]
        fn negative_is_always_rejected(n in 0u64..1_000_000, unit in "[ywdhms]") {
            let text = format!("-{}{}", n, unit);
            prop_assert!(Duration::parse(&text).is_err());
        }
    }
}
