//! Naming a tunnel's target. A CONNECT request carries `openshell-tunnel: <target>`; the
//! gateway parses it and decides where the bytes go. The grammar is deliberately small:
//!
//! ```text
//! target  = "echo"                       ; built-in diagnostics echo, no dial
//!         | "source"                     ; built-in: endless bytes to the client
//!         | "sink"                       ; built-in: discards, answers with byte counts
//!         | "service/" NAME              ; a target registered in the gateway's config
//!         | "sandbox/" NAME "/ssh"       ; the sandbox's SSH server (via its supervisor)
//!         | "sandbox/" NAME "/port/" PORT; a loopback port inside the sandbox
//!         | "relay/" ID                  ; a supervisor answering a relay request
//! ```

use std::fmt;

/// Request header naming the target.
pub const TARGET_HEADER: &str = "openshell-tunnel";
/// Response header carrying why a tunnel was refused.
pub const REASON_HEADER: &str = "openshell-reason";

/// A parsed tunnel target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelTarget {
    Echo,
    /// The gateway sends bytes as fast as the tunnel takes them (a download benchmark).
    Source,
    /// The gateway discards what it reads and reports how much as 8-byte big-endian totals
    /// (an upload benchmark that measures what arrived, not what was buffered).
    Sink,
    Service(String),
    SandboxSsh(String),
    SandboxPort(String, u16),
    Relay(String),
}

impl TunnelTarget {
    /// Parses the header value; `None` for anything outside the grammar.
    pub fn parse(s: &str) -> Option<TunnelTarget> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |n: &str| {
            !n.is_empty()
                && n.len() <= 128
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match parts.as_slice() {
            ["echo"] => Some(TunnelTarget::Echo),
            ["source"] => Some(TunnelTarget::Source),
            ["sink"] => Some(TunnelTarget::Sink),
            ["service", n] if valid(n) => Some(TunnelTarget::Service(n.to_string())),
            ["sandbox", n, "ssh"] if valid(n) => Some(TunnelTarget::SandboxSsh(n.to_string())),
            // Digits only, no leading zero: `u16::from_str` also takes `+22` and `022`,
            // and a port must have one spelling.
            ["sandbox", n, "port", p]
                if valid(n) && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0') =>
            {
                p.parse::<u16>()
                    .ok()
                    .map(|p| TunnelTarget::SandboxPort(n.to_string(), p))
            }
            ["relay", id] if valid(id) => Some(TunnelTarget::Relay(id.to_string())),
            _ => None,
        }
    }

    /// Reads the target from request headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TunnelTarget> {
        headers
            .get(TARGET_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TunnelTarget::parse)
    }
}

impl fmt::Display for TunnelTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelTarget::Echo => write!(f, "echo"),
            TunnelTarget::Source => write!(f, "source"),
            TunnelTarget::Sink => write!(f, "sink"),
            TunnelTarget::Service(n) => write!(f, "service/{n}"),
            TunnelTarget::SandboxSsh(n) => write!(f, "sandbox/{n}/ssh"),
            TunnelTarget::SandboxPort(n, p) => write!(f, "sandbox/{n}/port/{p}"),
            TunnelTarget::Relay(id) => write!(f, "relay/{id}"),
        }
    }
}

/// Joins an accepted HTTP/2 CONNECT (its upgrade) to `io` until both directions close.
pub(crate) async fn splice_upgrade<IO>(upgrade: hyper::upgrade::OnUpgrade, mut io: IO, what: &str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match upgrade.await {
        Ok(upgraded) => {
            let mut upgraded = hyper_util::rt::TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut io).await;
        }
        Err(e) => tracing::debug!(error = %e, "{what} upgrade failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for t in [
            TunnelTarget::Echo,
            TunnelTarget::Source,
            TunnelTarget::Sink,
            TunnelTarget::Service("db".into()),
            TunnelTarget::SandboxSsh("my-box".into()),
            TunnelTarget::SandboxPort("my-box".into(), 8080),
            TunnelTarget::Relay("r1".into()),
        ] {
            assert_eq!(TunnelTarget::parse(&t.to_string()), Some(t));
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, parsing never panics, and anything accepted prints back
        /// to the same text (no two spellings of one target).
        #[test]
        fn parse_is_total_and_canonical(s in "\\PC{0,80}") {
            if let Some(t) = TunnelTarget::parse(&s) {
                proptest::prop_assert_eq!(t.to_string(), s);
            }
        }

        #[test]
        fn generated_targets_round_trip(name in "[a-zA-Z0-9._-]{1,40}", port in 1u16..) {
            for t in [
                TunnelTarget::Service(name.clone()),
                TunnelTarget::SandboxSsh(name.clone()),
                TunnelTarget::SandboxPort(name.clone(), port),
            ] {
                proptest::prop_assert_eq!(TunnelTarget::parse(&t.to_string()), Some(t));
            }
        }
    }

    /// Found by the `tunnel_target` fuzz target: `str::parse::<u16>` takes a leading `+`
    /// and leading zeros, so one port had many spellings and `sandbox/a/port/+22` printed
    /// back as `sandbox/a/port/22`.
    #[test]
    fn a_port_has_one_spelling() {
        for bad in [
            "sandbox/a/port/+22",
            "sandbox/a/port/022",
            "sandbox/a/port/00",
            "sandbox/a/port/+0",
            "sandbox/a/port/ 22",
        ] {
            assert_eq!(TunnelTarget::parse(bad), None, "{bad}");
        }
        assert_eq!(
            TunnelTarget::parse("sandbox/a/port/65535"),
            Some(TunnelTarget::SandboxPort("a".into(), 65535))
        );
    }

    #[test]
    fn rejects_host_port_and_junk() {
        for bad in [
            "",
            "10.0.0.1:22",
            "service/",
            "service/../etc",
            "sandbox/a/port/0",
            "sandbox/a/port/70000",
            "sandbox/a b/ssh",
            "echo/extra",
        ] {
            assert_eq!(TunnelTarget::parse(bad), None, "{bad}");
        }
    }
}
