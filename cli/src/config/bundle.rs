//! Importing a client mTLS bundle into `gateways/<name>/mtls/{ca.crt,tls.crt,tls.key}`.
//!
//! A bundle is one PEM file holding the CA certificate, the client certificate it issued and
//! the client's private key, in any order. Which certificate is the CA is decided by the
//! issuer/subject names, not by position. The parser here only reads what it needs from the
//! DER (names and validity); the transport verifies the chain and the key when it connects.
//!
//! Installing writes the three files into a fresh sibling directory and renames it over
//! `mtls/`, so a reader sees the old bundle or the new one, never a mix.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::CliError;

pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// A parsed, complete bundle ready to install.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// When the client certificate expires.
    pub not_after: OffsetDateTime,
}

/// What an installed `mtls/` directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// No file of the bundle is there.
    Absent,
    /// Some files are missing (names listed).
    Partial(Vec<&'static str>),
    /// All three files; the client certificate expires then (None if it cannot be read).
    Complete { not_after: Option<OffsetDateTime> },
}

impl Installed {
    /// All three files present and the client certificate not expired.
    pub fn is_valid(&self, now: OffsetDateTime) -> bool {
        matches!(self, Installed::Complete { not_after: Some(t) } if *t > now)
    }
}

/// Inspects `mtls_dir`.
pub fn inspect(mtls_dir: &Path) -> Installed {
    let files = [CA_FILE, CERT_FILE, KEY_FILE];
    let missing: Vec<&'static str> = files
        .iter()
        .copied()
        .filter(|f| !mtls_dir.join(f).is_file())
        .collect();
    if missing.len() == files.len() {
        return Installed::Absent;
    }
    if !missing.is_empty() {
        return Installed::Partial(missing);
    }
    let not_after = std::fs::read_to_string(mtls_dir.join(CERT_FILE))
        .ok()
        .and_then(|text| {
            pem_blocks(&text)
                .ok()?
                .into_iter()
                .find(|b| b.label == "CERTIFICATE")
                .and_then(|b| CertInfo::parse(&b.der))
        })
        .map(|c| c.not_after);
    Installed::Complete { not_after }
}

/// Reads and checks a bundle file: exactly one CA certificate, one client certificate issued
/// by it, and one unencrypted private key.
pub fn read_bundle(path: &Path) -> Result<Bundle, CliError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::hint(
            format!("cannot read the mTLS bundle {shown}: {e}"),
            "Pass a PEM file holding the CA certificate, the client certificate and its private key",
        )
    })?;
    let bad = |why: String| {
        CliError::hint(
            format!("invalid mTLS bundle {shown}: {why}"),
            "A bundle is one PEM file with the CA certificate, the client certificate and the client's private key",
        )
    };
    let blocks = pem_blocks(&text).map_err(bad)?;
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for block in blocks {
        match block.label.as_str() {
            "CERTIFICATE" => {
                let info = CertInfo::parse(&block.der).ok_or_else(|| {
                    bad("a CERTIFICATE block is not a valid X.509 certificate".into())
                })?;
                certs.push((block, info));
            }
            "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" => keys.push(block),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(bad(
                    "the private key is encrypted; decrypt it first (openssl pkey -in KEY -out KEY.plain)"
                        .into(),
                ));
            }
            _ => {}
        }
    }
    let mut missing = Vec::new();
    match certs.len() {
        0 => missing.push("the CA certificate and the client certificate"),
        1 => missing.push("a second certificate (need both the CA and the client certificate)"),
        2 => {}
        n => {
            return Err(bad(format!(
                "{n} certificates found; expected exactly 2 (CA and client)"
            )));
        }
    }
    if keys.is_empty() {
        missing.push("the client private key");
    }
    if !missing.is_empty() {
        return Err(bad(format!("missing {}", missing.join(" and "))));
    }
    if keys.len() > 1 {
        return Err(bad(format!(
            "{} private keys found; expected 1",
            keys.len()
        )));
    }
    let (a, b) = (&certs[0], &certs[1]);
    let b_issued_by_a = b.1.issuer == a.1.subject;
    let a_issued_by_b = a.1.issuer == b.1.subject;
    let (ca, client) = match (b_issued_by_a, a_issued_by_b) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        (true, true) if a.1.self_signed() && !b.1.self_signed() => (a, b),
        (true, true) if b.1.self_signed() && !a.1.self_signed() => (b, a),
        (true, true) => {
            return Err(bad(
                "cannot tell which certificate is the CA (both carry the same name)".into(),
            ));
        }
        (false, false) => {
            return Err(bad(
                "the client certificate is not issued by the CA certificate in the same file"
                    .into(),
            ));
        }
    };
    Ok(Bundle {
        ca_pem: ca.0.text.clone(),
        cert_pem: client.0.text.clone(),
        key_pem: keys[0].text.clone(),
        not_after: client.1.not_after,
    })
}

/// Installs `bundle` as `mtls_dir` atomically: `ca.crt` and `tls.crt` 0644, `tls.key` 0600,
/// directory 0700. A previous bundle is replaced whole.
pub fn install(bundle: &Bundle, mtls_dir: &Path) -> Result<(), CliError> {
    let parent = mtls_dir
        .parent()
        .ok_or_else(|| CliError::msg(format!("invalid mTLS directory {}", mtls_dir.display())))?;
    openshell_pki::fs::ensure_private_dir(parent)?;
    let staging = sibling(mtls_dir, ".mtls.new");
    let backup = sibling(mtls_dir, ".mtls.old");
    let _ = std::fs::remove_dir_all(&staging);
    openshell_pki::fs::ensure_private_dir(&staging)?;
    let written = (|| {
        openshell_pki::fs::write_public(&staging.join(CA_FILE), bundle.ca_pem.as_bytes())?;
        openshell_pki::fs::write_public(&staging.join(CERT_FILE), bundle.cert_pem.as_bytes())?;
        openshell_pki::fs::write_secret(&staging.join(KEY_FILE), bundle.key_pem.as_bytes())?;
        Ok::<_, CliError>(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    let rename_err = |e: std::io::Error| {
        CliError::msg(format!(
            "cannot install the mTLS bundle into {}: {e}",
            mtls_dir.display()
        ))
    };
    let had_old = mtls_dir.exists();
    if had_old {
        let _ = std::fs::remove_dir_all(&backup);
        std::fs::rename(mtls_dir, &backup).map_err(rename_err)?;
    }
    if let Err(e) = std::fs::rename(&staging, mtls_dir) {
        if had_old {
            let _ = std::fs::rename(&backup, mtls_dir);
        }
        let _ = std::fs::remove_dir_all(&staging);
        return Err(rename_err(e));
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&backup);
    }
    Ok(())
}

fn sibling(dir: &Path, name: &str) -> PathBuf {
    dir.with_file_name(name)
}

/// One `-----BEGIN <label>-----` ... `-----END <label>-----` block.
#[derive(Debug, Clone)]
struct PemBlock {
    label: String,
    der: Vec<u8>,
    /// The block's text, BEGIN to END line, with a trailing newline.
    text: String,
}

fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let label_end = after
            .find("-----")
            .ok_or("a BEGIN line is not terminated")?;
        let label = after[..label_end].to_string();
        let end_marker = format!("-----END {label}-----");
        let body_start = start + "-----BEGIN ".len() + label_end + "-----".len();
        let end = rest[body_start..]
            .find(&end_marker)
            .ok_or_else(|| format!("the {label} block has no END line"))?
            + body_start;
        let der = base64_decode(&rest[body_start..end])
            .ok_or_else(|| format!("the {label} block is not valid base64"))?;
        let block_end = end + end_marker.len();
        let mut block_text = rest[start..block_end].to_string();
        block_text.push('\n');
        blocks.push(PemBlock {
            label,
            der,
            text: block_text,
        });
        rest = &rest[block_end..];
    }
    if blocks.is_empty() {
        return Err("no PEM blocks found".into());
    }
    Ok(blocks)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0usize;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        if padding > 0 {
            return None; // data after padding
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if padding > 2 || out.is_empty() {
        return None;
    }
    Some(out)
}

/// The few fields of an X.509 certificate the CLI looks at.
#[derive(Debug, Clone)]
struct CertInfo {
    issuer: Vec<u8>,
    subject: Vec<u8>,
    not_after: OffsetDateTime,
}

impl CertInfo {
    fn self_signed(&self) -> bool {
        self.issuer == self.subject
    }

    /// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
    /// signature, issuer, validity SEQUENCE { notBefore, notAfter }, subject, ... }, ... }
    fn parse(der: &[u8]) -> Option<CertInfo> {
        let (tag, cert, _) = tlv(der)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, tbs, _) = tlv(cert)?;
        if tag != 0x30 {
            return None;
        }
        let mut rest = tbs;
        let (tag, _, after) = tlv(rest)?;
        if tag == 0xa0 {
            rest = after; // explicit version
        }
        let (_, _, after) = tlv(rest)?; // serial
        let (_, _, after) = tlv(after)?; // signature algorithm
        let issuer_len = after.len() - tlv(after)?.2.len();
        let issuer = after[..issuer_len].to_vec();
        let after = &after[issuer_len..];
        let (tag, validity, after) = tlv(after)?;
        if tag != 0x30 {
            return None;
        }
        let (_, _, v_rest) = tlv(validity)?; // notBefore
        let (t_tag, t_val, _) = tlv(v_rest)?;
        let not_after = parse_time(t_tag, t_val)?;
        let subject_len = after.len() - tlv(after)?.2.len();
        let subject = after[..subject_len].to_vec();
        Some(CertInfo {
            issuer,
            subject,
            not_after,
        })
    }
}

/// One DER tag-length-value: (tag, contents, remaining input).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*data.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if end > data.len() {
        return None;
    }
    Some((tag, &data[header..end], &data[end..]))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn parse_time(tag: u8, value: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(value).ok()?;
    let s = s.strip_suffix('Z')?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i32 = s[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        (0x18, 14) => (s[..4].parse().ok()?, &s[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    let clock = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
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

    #[test]
    fn base64_round_trip_examples() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
        assert!(base64_decode("a$==").is_none());
        assert!(base64_decode("aG=Vs").is_none());
    }

    #[test]
    fn times() {
        let t = parse_time(0x17, b"491231235959Z").unwrap();
        assert_eq!(format_time(t), "2049-12-31 23:59:59 UTC");
        let t = parse_time(0x17, b"500101000000Z").unwrap();
        assert_eq!(t.year(), 1950);
        let t = parse_time(0x18, b"20991231235959Z").unwrap();
        assert_eq!(t.year(), 2099);
        assert!(parse_time(0x18, b"2099123123595Z").is_none());
        assert!(parse_time(0x17, b"491331235959Z").is_none());
    }

    #[test]
    fn tlv_rejects_truncation() {
        assert!(tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(tlv(&[0x30, 0x82, 0x01]).is_none());
        let (tag, body, rest) = tlv(&[0x02, 0x01, 0x07, 0xff]).unwrap();
        assert_eq!((tag, body, rest), (0x02, &[0x07][..], &[0xff][..]));
    }

    #[test]
    fn pem_errors_name_the_problem() {
        assert!(pem_blocks("nothing").unwrap_err().contains("no PEM"));
        let e = pem_blocks("-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err();
        assert!(e.contains("no END"), "{e}");
    }
}
