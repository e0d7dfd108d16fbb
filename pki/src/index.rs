//! `index.json`: what this CA has issued and which CAs are trusted.
//!
//! The index is the source of truth; `crl.pem` and `ca-bundle.pem` are derived from it and
//! rewritten with it. It is written last in every change, so a reader that reloads when
//! `index.json` changes sees a complete set of files.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::PkiError;
use crate::fs;
use crate::keys::KeyType;
use crate::names::San;
use crate::serial::Serial;

/// Version of the index format this crate writes.
pub const INDEX_VERSION: u32 = 1;

/// A certificate that has this much lifetime left or less is "expiring soon".
pub const EXPIRING_SOON_DAYS: i64 = 14;
/// ... or less than this percentage of its lifetime left.
pub const EXPIRING_SOON_PERCENT: i64 = 20;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// A person or automation using the CLI (`pki issue`).
    User,
    /// The gateway's own TLS certificate.
    Server,
    /// A sandbox supervisor's credential, minted by the gateway.
    Sandbox,
}

impl CertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::User => "user",
            CertKind::Server => "server",
            CertKind::Sandbox => "sandbox",
        }
    }
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub serial: Serial,
    pub subject_cn: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub kind: CertKind,
    /// Serial of the CA certificate that signed it.
    pub issuer: Serial,
    /// Subject alternative names (server certificates).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sans: Vec<San>,
    #[serde(with = "rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(default, with = "rfc3339_opt")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Status of a certificate at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertStatus {
    Valid,
    ExpiringSoon,
    Expired,
    Revoked,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Valid => "valid",
            CertStatus::ExpiringSoon => "expiring soon",
            CertStatus::Expired => "expired",
            CertStatus::Revoked => "revoked",
        }
    }

    /// Status of a certificate valid from `not_before` to `not_after`, at `now`.
    pub fn at(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        revoked: bool,
        now: OffsetDateTime,
    ) -> CertStatus {
        if revoked {
            return CertStatus::Revoked;
        }
        if now >= not_after {
            return CertStatus::Expired;
        }
        let left = not_after - now;
        let lifetime = not_after - not_before;
        if left <= time::Duration::days(EXPIRING_SOON_DAYS)
            || left * 100 < lifetime * EXPIRING_SOON_PERCENT as i32
        {
            CertStatus::ExpiringSoon
        } else {
            CertStatus::Valid
        }
    }
}

impl IndexEntry {
    pub fn status_at(&self, now: OffsetDateTime) -> CertStatus {
        CertStatus::at(
            self.not_before,
            self.not_after,
            self.revoked_at.is_some(),
            now,
        )
    }

    /// Not revoked and not expired at `now`.
    pub fn is_usable_at(&self, now: OffsetDateTime) -> bool {
        matches!(
            self.status_at(now),
            CertStatus::Valid | CertStatus::ExpiringSoon
        )
    }
}

/// One CA certificate this PKI has used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub serial: Serial,
    pub subject: String,
    #[serde(with = "rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
    /// Certificate file, relative to the PKI directory.
    pub cert_file: String,
    /// Private key file, relative to the PKI directory (kept after retirement so the CRL of
    /// certificates it issued can still be signed during the overlap).
    pub key_file: String,
    /// `None` for the current CA. A retired CA is trusted (for client certificates it issued)
    /// until this instant, then dropped from the trust bundle.
    #[serde(default, with = "rfc3339_opt")]
    pub trusted_until: Option<OffsetDateTime>,
}

impl CaRecord {
    pub fn is_current(&self) -> bool {
        self.trusted_until.is_none()
    }

    /// In the client trust bundle at `now`.
    pub fn is_trusted_at(&self, now: OffsetDateTime) -> bool {
        now < self.not_after && self.trusted_until.is_none_or(|t| now < t)
    }
}

/// The whole index file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    pub version: u32,
    pub key_type: KeyType,
    /// Validity of a CA certificate made by `rotate-ca`, in seconds (the `init` value).
    pub ca_validity_secs: u64,
    /// Number of the last CRL written (RFC 5280 CRL numbers only grow).
    pub crl_number: u64,
    /// SANs the operator added to the server certificate (beyond the defaults).
    #[serde(default)]
    pub server_sans: Vec<San>,
    pub cas: Vec<CaRecord>,
    pub certificates: Vec<IndexEntry>,
}

impl Index {
    pub fn load(path: &Path) -> Result<Index, PkiError> {
        let bytes = fs::read_public(path)?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| PkiError::Corrupt {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        if index.version != INDEX_VERSION {
            return Err(PkiError::Corrupt {
                path: path.to_path_buf(),
                why: format!(
                    "format version {} is not {INDEX_VERSION} (written by another openshell version)",
                    index.version
                ),
            });
        }
        if index.cas.iter().filter(|c| c.is_current()).count() != 1 {
            return Err(PkiError::Corrupt {
                path: path.to_path_buf(),
                why: "it must name exactly one current CA".into(),
            });
        }
        Ok(index)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn current_ca(&self) -> &CaRecord {
        // `load` and every writer keep exactly one current CA.
        self.cas
            .iter()
            .find(|c| c.is_current())
            .unwrap_or(&self.cas[0])
    }

    pub fn find(&self, serial: &Serial) -> Option<&IndexEntry> {
        self.certificates.iter().find(|e| &e.serial == serial)
    }
}

mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, the form shown to users and written in JSON output.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn status_thresholds() {
        let nb = datetime!(2026-01-01 0:00 UTC);
        let na = nb + time::Duration::days(90);
        let at = |d: i64| CertStatus::at(nb, na, false, nb + time::Duration::days(d));
        assert_eq!(at(1), CertStatus::Valid);
        // 20% of 90 days is 18 days: inside it, expiring soon even though > 14 days.
        assert_eq!(at(73), CertStatus::ExpiringSoon);
        assert_eq!(at(70), CertStatus::Valid);
        assert_eq!(at(90), CertStatus::Expired);
        assert_eq!(CertStatus::at(nb, na, true, nb), CertStatus::Revoked);
        // A 10-year certificate with 30 days left: the 14-day rule does not fire, 20% does.
        let long = nb + time::Duration::days(3650);
        let s = CertStatus::at(nb, long, false, long - time::Duration::days(30));
        assert_eq!(s, CertStatus::ExpiringSoon);
        // A 1-day certificate is expiring soon from the start (< 14 days left).
        let short = nb + time::Duration::days(1);
        assert_eq!(
            CertStatus::at(nb, short, false, nb),
            CertStatus::ExpiringSoon
        );
    }

    #[test]
    fn times_round_trip_in_json() {
        let e = IndexEntry {
            serial: Serial::parse("abc").unwrap(),
            subject_cn: "alice".into(),
            roles: vec!["admin".into()],
            kind: CertKind::User,
            issuer: Serial::parse("01").unwrap(),
            sans: vec![],
            not_before: datetime!(2026-01-01 0:00 UTC),
            not_after: datetime!(2026-04-01 0:00 UTC),
            revoked_at: None,
            reason: None,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"2026-04-01T00:00:00Z\""), "{json}");
        assert_eq!(serde_json::from_str::<IndexEntry>(&json).unwrap(), e);
        assert_eq!(format_time(e.not_after), "2026-04-01T00:00:00Z");
    }
}
