//! `Serial`: a certificate serial number with one spelling.
//!
//! Rules (shared with the transport's request-time checks): the value is the positive integer
//! in the DER INTEGER; it is written as lowercase hex with no leading zeros, no separators and
//! no prefix (`0` for zero). Parsing accepts what people paste: any case, an optional `0x`,
//! `:` separators (OpenSSL's `4F:A1:..`) and leading zeros. At most 20 octets (RFC 5280).

use std::fmt;
use std::str::FromStr;

use crate::error::PkiError;

/// RFC 5280 §4.1.2.2: conforming serials are at most 20 octets.
pub const MAX_SERIAL_OCTETS: usize = 20;

/// A certificate serial number (minimal big-endian magnitude).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serial(Vec<u8>);

impl Serial {
    /// From big-endian magnitude bytes (leading zero bytes are dropped). `None` if longer
    /// than 20 octets once minimal.
    pub fn from_be_bytes(bytes: &[u8]) -> Option<Serial> {
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        let minimal = &bytes[start..];
        (minimal.len() <= MAX_SERIAL_OCTETS).then(|| Serial(minimal.to_vec()))
    }

    /// From the content octets of a DER INTEGER as found in a certificate or CRL (a leading
    /// 0x00 sign octet is dropped). Negative serials (non-conforming CAs) are refused.
    pub fn from_der_integer(content: &[u8]) -> Option<Serial> {
        if content.first().is_some_and(|b| b & 0x80 != 0) {
            return None;
        }
        Serial::from_be_bytes(content)
    }

    /// Minimal big-endian magnitude (empty for zero).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A fresh random positive serial: 16 random octets with the top bit cleared, so the
    /// DER INTEGER needs no sign octet and never reads as negative.
    pub fn random() -> Result<Serial, PkiError> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        loop {
            let mut bytes = [0u8; 16];
            rng.fill(&mut bytes).map_err(|_| {
                PkiError::bad_input("the system random source", "it failed to produce bytes")
            })?;
            bytes[0] &= 0x7f;
            // Keep the full 16-octet width (a zero first octet would shorten it) and avoid 0.
            if bytes[0] != 0 {
                return Ok(Serial(bytes.to_vec()));
            }
        }
    }

    /// Parses a serial as people write it (see the module docs).
    pub fn parse(text: &str) -> Result<Serial, PkiError> {
        let bad = |why: &str| PkiError::InvalidSerial {
            input: text.to_string(),
            why: why.to_string(),
        };
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("0x")
            .or_else(|| trimmed.strip_prefix("0X"))
            .unwrap_or(trimmed);
        let digits: String = body.chars().filter(|c| *c != ':').collect();
        if digits.is_empty() {
            return Err(bad("it is empty"));
        }
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(bad(&format!("{c:?} is not a hex digit")));
        }
        let digits = digits.trim_start_matches('0');
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits.to_string()
        };
        let bytes = hex::decode(&padded).map_err(|_| bad("it is not hex"))?;
        Serial::from_be_bytes(&bytes).ok_or_else(|| bad("longer than 20 octets"))
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.split_first() {
            None => f.write_str("0"),
            Some((first, rest)) => {
                write!(f, "{first:x}")?;
                for b in rest {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Serial {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Serial::parse(s)
    }
}

impl serde::Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Serial::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spelling_rules() {
        assert_eq!(Serial::parse("00:0A:ff").unwrap().to_string(), "aff");
        assert_eq!(Serial::parse("0x0ABC").unwrap().to_string(), "abc");
        assert_eq!(Serial::parse("0").unwrap().to_string(), "0");
        assert_eq!(Serial::parse("000").unwrap().as_bytes(), &[] as &[u8]);
        assert!(Serial::parse("").is_err());
        assert!(
            Serial::parse("xyz")
                .unwrap_err()
                .to_string()
                .contains("'x' is not a hex digit")
        );
        assert!(
            Serial::parse(&"f".repeat(41))
                .unwrap_err()
                .to_string()
                .contains("20 octets")
        );
        assert!(Serial::parse(&format!("000{}", "f".repeat(40))).is_ok());
    }

    #[test]
    fn der_integers() {
        assert_eq!(
            Serial::from_der_integer(&[0x00, 0x80]).unwrap().to_string(),
            "80"
        );
        assert!(Serial::from_der_integer(&[0x80]).is_none());
    }

    #[test]
    fn random_serials_are_positive_128_bit() {
        for _ in 0..64 {
            let s = Serial::random().unwrap();
            assert_eq!(s.as_bytes().len(), 16);
            assert!(s.as_bytes()[0] & 0x80 == 0 && s.as_bytes()[0] != 0);
        }
    }

    proptest! {
        #[test]
        fn bytes_display_parse_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..=20)) {
            let s = Serial::from_be_bytes(&bytes).unwrap();
            let text = s.to_string();
            prop_assert_eq!(Serial::parse(&text).unwrap(), s.clone());
            // Canonical: lowercase, no leading zero unless the value is zero.
            prop_assert!(text == "0" || !text.starts_with('0'));
            prop_assert_eq!(text.to_lowercase(), text.clone());
        }

        #[test]
        fn accepted_spellings_agree(bytes in proptest::collection::vec(any::<u8>(), 1..=20), zeros in 0usize..4) {
            let s = Serial::from_be_bytes(&bytes).unwrap();
            let colon = bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
            let prefixed = format!("0x{}{}", "0".repeat(zeros), hex::encode(&bytes));
            prop_assert_eq!(Serial::parse(&colon).unwrap(), s.clone());
            prop_assert_eq!(Serial::parse(&prefixed).unwrap(), s);
        }

        #[test]
        fn der_content_round_trip(bytes in proptest::collection::vec(any::<u8>(), 1..=19)) {
            let s = Serial::from_be_bytes(&bytes).unwrap();
            // DER content: minimal magnitude plus a 0x00 sign octet when the top bit is set.
            let mut der = s.as_bytes().to_vec();
            if der.first().is_none_or(|b| b & 0x80 != 0) {
                der.insert(0, 0);
            }
            prop_assert_eq!(Serial::from_der_integer(&der).unwrap(), s);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,64}") {
            let _ = Serial::parse(&text);
        }
    }
}
