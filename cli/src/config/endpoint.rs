//! Gateway endpoint URLs: `https://host:port` or `http://host:port`, nothing else.
//!
//! The CLI has no URL crate, and needs none: an endpoint is a scheme, a host and a port. A
//! path, query, fragment or user name is refused rather than silently dropped, so what is
//! stored is exactly what the transport dials.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::CliError;

/// The gateway's port when an endpoint typed by the user names none (UDP for QUIC, TCP for
/// the fallback; see DESIGN.md).
pub const DEFAULT_PORT: u16 = 17670;

/// `http` (plaintext, loopback/port-forward only) or `https` (mTLS or edge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn standard_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed, normalised endpoint. `Display` gives `scheme://host:port` (IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Lower-cased host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
}

/// What to assume when the text names no port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortDefault {
    /// [`DEFAULT_PORT`]: for endpoints the user types (`gateway add`, `--gateway-endpoint`).
    Gateway,
    /// 443/80: for endpoints read from metadata written by other tools, which meant the
    /// URL's standard port.
    Standard,
}

impl Endpoint {
    /// Parses user input: no scheme means `https://`; a missing port means [`DEFAULT_PORT`].
    pub fn parse_input(text: &str) -> Result<Endpoint, CliError> {
        Endpoint::parse(text, PortDefault::Gateway)
    }

    /// Parses `text`; `default` decides the port when none is given.
    pub fn parse(text: &str, default: PortDefault) -> Result<Endpoint, CliError> {
        let original = text;
        let text = text.trim();
        let bad = |why: String| {
            CliError::hint(
                format!("invalid gateway endpoint '{original}': {why}"),
                "Expected https://HOST[:PORT] or http://HOST[:PORT] (for example https://gateway.example.com:17670)",
            )
        };
        if text.is_empty() {
            return Err(bad("it is empty".into()));
        }
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) => {
                let scheme = match s.to_ascii_lowercase().as_str() {
                    "https" => Scheme::Https,
                    "http" => Scheme::Http,
                    other => {
                        return Err(bad(format!(
                            "scheme '{other}' is not supported (use https:// or http://)"
                        )));
                    }
                };
                (scheme, rest)
            }
            None => (Scheme::Https, text),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !(tail.is_empty() || tail == "/") {
            return Err(bad(format!(
                "a path, query or fragment ('{tail}') is not supported"
            )));
        }
        if authority.contains('@') {
            return Err(bad("a user name in the URL is not supported".into()));
        }
        let (host, port_text) = if let Some(inner) = authority.strip_prefix('[') {
            let Some((addr, after)) = inner.split_once(']') else {
                return Err(bad("unterminated '[' in IPv6 address".into()));
            };
            let ip: Ipv6Addr = addr
                .parse()
                .map_err(|_| bad(format!("'{addr}' is not an IPv6 address")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(format!("unexpected '{p}' after the address")))?,
                ),
            };
            (ip.to_string(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("it has no host".into()));
        }
        if !host.contains(':') {
            let valid = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !valid || host.starts_with('.') || host.contains("..") {
                return Err(bad(format!("'{host}' is not a valid host name")));
            }
        }
        let port = match port_text {
            None => match default {
                PortDefault::Gateway => DEFAULT_PORT,
                PortDefault::Standard => scheme.standard_port(),
            },
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => n,
                _ => return Err(bad(format!("'{p}' is not a port number (1-65535)"))),
            },
        };
        Ok(Endpoint {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        if self.host == "localhost" || self.host.ends_with(".localhost") {
            return true;
        }
        self.host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
    }

    /// Host as it appears in a URL (IPv6 in brackets).
    pub fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            self.scheme.as_str(),
            self.url_host(),
            self.port
        )
    }
}

/// Whether two endpoint texts name the same gateway: equal once a trailing `/` is dropped,
/// or equal once both are normalised.
pub fn same_endpoint(given: &str, registered: &str) -> bool {
    let strip = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    if strip(given) == strip(registered) {
        return true;
    }
    match (
        Endpoint::parse_input(given),
        Endpoint::parse(registered, PortDefault::Standard),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Endpoint::parse_input(s).unwrap().to_string()
    }

    #[test]
    fn normalises() {
        assert_eq!(norm("gw.example.com"), "https://gw.example.com:17670");
        assert_eq!(norm("HTTP://127.0.0.1:8080/"), "http://127.0.0.1:8080");
        assert_eq!(norm("https://[::1]"), "https://[::1]:17670");
        assert_eq!(norm(" https://Host:443 "), "https://host:443");
        assert_eq!(
            Endpoint::parse("https://gw", PortDefault::Standard)
                .unwrap()
                .to_string(),
            "https://gw:443"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "ftp://x",
            "https://",
            "https://:80",
            "https://h:0",
            "https://h:99999",
            "https://h:12a",
            "https://h/path",
            "https://u@h",
            "https://[::1",
            "https://[zz]",
            "https://a b",
            "https://a..b",
            "ssh://user@host:22",
        ] {
            assert!(Endpoint::parse_input(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn loopback() {
        assert!(
            Endpoint::parse_input("http://127.0.0.2")
                .unwrap()
                .is_loopback()
        );
        assert!(Endpoint::parse_input("localhost").unwrap().is_loopback());
        assert!(Endpoint::parse_input("[::1]").unwrap().is_loopback());
        assert!(!Endpoint::parse_input("10.0.0.1").unwrap().is_loopback());
    }

    #[test]
    fn matching() {
        assert!(same_endpoint("https://a:1/", "https://a:1"));
        assert!(same_endpoint("a:17670", "https://a:17670"));
        assert!(same_endpoint("https://a", "https://a/"));
        assert!(!same_endpoint("https://a:1", "https://a:2"));
    }
}
