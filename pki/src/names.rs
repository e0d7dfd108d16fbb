//! Validated names that end up inside certificates: subject alternative names, user names,
//! roles and sandbox ids. Validation happens before any key is generated so a typo never
//! produces a certificate.

use std::fmt;
use std::net::IpAddr;

use crate::error::PkiError;

/// Prefix of the common name of a sandbox supervisor's certificate.
pub const SANDBOX_CN_PREFIX: &str = "sandbox:";
/// The organisational unit marking a sandbox supervisor's certificate.
pub const SANDBOX_OU: &str = "sandbox";
/// X.520 upper bound for commonName and organizationalUnitName.
const MAX_DN_VALUE: usize = 64;

/// SANs every server certificate carries, so local clients, containers and VMs can reach the
/// gateway by its usual names.
pub const DEFAULT_SERVER_SANS: [&str; 5] = [
    "localhost",
    "127.0.0.1",
    "::1",
    "host.docker.internal",
    "host.containers.internal",
];

/// A subject alternative name: a DNS name (optionally `*.` wildcard) or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    pub fn parse(text: &str) -> Result<San, PkiError> {
        let bad = |why: &str| PkiError::InvalidSan {
            input: text.to_string(),
            why: why.to_string(),
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad("it is empty"));
        }
        let unbracketed = t
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(t);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        if t.contains("://") || t.contains('/') {
            return Err(bad("give a bare host name, not a URL"));
        }
        if t.contains(':') {
            return Err(bad(
                "it is neither an IP address nor a host name (drop any :port)",
            ));
        }
        let name = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
        if name.len() > 253 {
            return Err(bad("a DNS name is at most 253 characters"));
        }
        let rest = if name == "*" {
            ""
        } else {
            name.strip_prefix("*.").unwrap_or(&name)
        };
        if rest.is_empty() {
            return Err(bad("the wildcard needs a domain after '*.'"));
        }
        for label in rest.split('.') {
            if label.is_empty() {
                return Err(bad("it has an empty label ('..')"));
            }
            if label.len() > 63 {
                return Err(bad("a DNS label is at most 63 characters"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad("a DNS label cannot start or end with '-'"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
            {
                return Err(bad(&format!("{c:?} is not allowed in a DNS name")));
            }
        }
        if rest
            .split('.')
            .all(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(bad("it looks like an IP address but is not a valid one"));
        }
        Ok(San::Dns(name))
    }

    pub(crate) fn to_rcgen(&self) -> Result<rcgen::SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => rcgen::SanType::IpAddress(*ip),
            San::Dns(name) => rcgen::SanType::DnsName(name.clone().try_into().map_err(|_| {
                PkiError::InvalidSan {
                    input: name.clone(),
                    why: "it is not ASCII".into(),
                }
            })?),
        })
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(n) => f.write_str(n),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl serde::Serialize for San {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for San {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        San::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// This machine's host name, if it is usable as a DNS SAN.
pub fn host_name() -> Option<San> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = raw.trim();
    if name.is_empty() || name == "(none)" {
        return None;
    }
    San::parse(name).ok()
}

/// The server SANs: the defaults, the host name, then `extra`, without duplicates.
pub fn server_sans(extra: &[San]) -> Vec<San> {
    let mut out: Vec<San> = DEFAULT_SERVER_SANS
        .iter()
        .filter_map(|s| San::parse(s).ok())
        .collect();
    out.extend(host_name());
    for s in extra {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out.dedup();
    out
}

fn check_dn_value(what: &'static str, value: &str) -> Result<(), PkiError> {
    let bad = |why: &str| PkiError::InvalidName {
        what,
        input: value.to_string(),
        why: why.to_string(),
    };
    if value.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    if value.trim() != value {
        return Err(bad("it starts or ends with whitespace"));
    }
    if value.chars().count() > MAX_DN_VALUE {
        return Err(bad("it is longer than 64 characters"));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("it contains control characters"));
    }
    Ok(())
}

/// A user's certificate common name. `sandbox:` names are reserved for supervisors.
pub fn check_user(user: &str) -> Result<(), PkiError> {
    check_dn_value("user name", user)?;
    if user.starts_with(SANDBOX_CN_PREFIX) {
        return Err(PkiError::InvalidName {
            what: "user name",
            input: user.to_string(),
            why: "names starting with 'sandbox:' are reserved for sandbox credentials".into(),
        });
    }
    Ok(())
}

/// The roles a gateway grants rights to (`admin`, `user`, `viewer`), plus `edge-proxy`
/// for an authenticating reverse proxy allowed to name users. A gateway refuses a
/// certificate naming any other role, so a typo is caught here, before issuing.
pub const KNOWN_ROLES: &[&str] = &["admin", "user", "viewer", "edge-proxy"];

/// A role (one OU): one of [`KNOWN_ROLES`]. `sandbox` is reserved for supervisor
/// credentials.
pub fn check_role(role: &str) -> Result<(), PkiError> {
    check_dn_value("role", role)?;
    if role == SANDBOX_OU {
        return Err(PkiError::InvalidName {
            what: "role",
            input: role.to_string(),
            why: "'sandbox' is reserved for sandbox credentials".into(),
        });
    }
    if !KNOWN_ROLES.contains(&role) {
        return Err(PkiError::InvalidName {
            what: "role",
            input: role.to_string(),
            why: format!("gateways know the roles {}", KNOWN_ROLES.join(", ")),
        });
    }
    Ok(())
}

/// A sandbox id: `[A-Za-z0-9._-]`, 1..=56 characters (so `sandbox:<id>` fits a CN).
pub fn check_sandbox_id(id: &str) -> Result<(), PkiError> {
    let bad = |why: &str| PkiError::InvalidName {
        what: "sandbox id",
        input: id.to_string(),
        why: why.to_string(),
    };
    if id.is_empty() {
        return Err(bad("it is empty"));
    }
    if id.len() > MAX_DN_VALUE - SANDBOX_CN_PREFIX.len() {
        return Err(bad("it is longer than 56 characters"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(&format!("character {c:?} is not allowed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans() {
        assert_eq!(
            San::parse("10.0.0.5").unwrap(),
            San::Ip("10.0.0.5".parse().unwrap())
        );
        assert_eq!(
            San::parse("[::1]").unwrap(),
            San::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            San::parse("GW.Example.com.").unwrap(),
            San::Dns("gw.example.com".into())
        );
        assert_eq!(
            San::parse("*.apps.local").unwrap(),
            San::Dns("*.apps.local".into())
        );
        for (bad, why) in [
            ("", "empty"),
            ("https://gw", "URL"),
            ("gw:443", "port"),
            ("a..b", "empty label"),
            ("-a.b", "start or end"),
            ("a b", "not allowed"),
            ("300.1.1.1", "not a valid one"),
            ("*.", "wildcard"),
            ("ünï.com", "not allowed"),
        ] {
            let err = San::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(err.contains("DNS name"), "{err}");
        }
        assert!(San::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn server_sans_have_defaults_and_no_duplicates() {
        let extra = [
            San::parse("localhost").unwrap(),
            San::parse("gw.example").unwrap(),
        ];
        let all = server_sans(&extra);
        for d in DEFAULT_SERVER_SANS {
            assert!(all.contains(&San::parse(d).unwrap()), "{d}");
        }
        assert_eq!(
            all.iter().filter(|s| s.to_string() == "localhost").count(),
            1
        );
        assert!(all.contains(&San::Dns("gw.example".into())));
    }

    #[test]
    fn names() {
        check_user("alice@example.com").unwrap();
        assert!(check_user("sandbox:x").is_err());
        assert!(check_user("").is_err());
        assert!(check_user(" a").is_err());
        assert!(check_user(&"a".repeat(65)).is_err());
        assert!(check_role("sandbox").is_err());
        check_role("admin").unwrap();
        check_role("edge-proxy").unwrap();
        assert!(
            check_role("admn").is_err(),
            "a typo is refused before issuing"
        );
        check_sandbox_id("sb-1.a_b").unwrap();
        assert!(check_sandbox_id("a/b").is_err());
        assert!(check_sandbox_id("").is_err());
    }
}
