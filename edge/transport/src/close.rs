//! Why a connection ended, in words a user can act on.
//!
//! In TLS 1.3 the client finishes its handshake before the server has verified the client
//! certificate, so a rejection arrives *after* `connect()` succeeded, as a CONNECTION_CLOSE
//! (QUIC) or a TLS alert on the first read (TCP). Both are mapped here to one message.

use rustls::AlertDescription;

/// Reason sent when the gateway shuts down.
pub const SHUTTING_DOWN: &str = "gateway shutting down";
/// Reason sent when a connection's certificate was revoked.
pub const CERTIFICATE_REVOKED: &str = "client certificate revoked";
/// Reason sent when a connection's certificate expired while it was open.
pub const CERTIFICATE_EXPIRED: &str = "client certificate expired";

/// Reason sent when a connection's certificate no longer chains to a trusted CA (trust
/// changed while it was open, or its session was resumed after the change).
pub const CERTIFICATE_UNTRUSTED: &str = "client certificate no longer trusted";

/// Words for why a peer's certificate failed a re-verification against current trust.
pub fn describe_peer_error(err: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "it was not issued by a CA this gateway trusts now (the CA was replaced or its rotation overlap ended): issue a new one with `openshell pki issue`".into()
        }
        rustls::Error::InvalidCertificate(C::Revoked) => "it has been revoked".into(),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "it has expired: issue a new one with `openshell pki issue`".into()
        }
        other => format!("{other}: issue a new one with `openshell pki issue`"),
    }
}

/// HTTP/3's "no error" application code, used for orderly closes.
pub fn h3_no_error() -> quinn::VarInt {
    quinn::VarInt::from_u32(0x100)
}

/// A TLS alert, as the user should read it.
pub fn describe_alert(alert: u8) -> String {
    let text = match AlertDescription::from(alert) {
        AlertDescription::CertificateRequired => {
            "the gateway requires a client certificate and none was presented (issue one with `openshell pki issue`)"
        }
        AlertDescription::UnknownCA => {
            "the gateway does not trust the issuer of the client certificate (it was issued by another CA)"
        }
        AlertDescription::CertificateExpired => {
            "the client certificate has expired (issue a new one with `openshell pki issue`)"
        }
        AlertDescription::CertificateRevoked => "the client certificate has been revoked",
        AlertDescription::BadCertificate => {
            "the gateway rejected the client certificate as invalid"
        }
        AlertDescription::UnsupportedCertificate => {
            "the client certificate is not valid for client authentication (wrong key usage; a server certificate cannot be used as a client certificate)"
        }
        AlertDescription::CertificateUnknown => "the gateway rejected the client certificate",
        AlertDescription::DecryptError => {
            "the client key does not match its certificate, or the handshake was tampered with"
        }
        AlertDescription::NoApplicationProtocol => {
            "the endpoint does not speak the OpenShell protocol (no common ALPN)"
        }
        AlertDescription::HandshakeFailure => "the TLS handshake failed (no common parameters)",
        AlertDescription::AccessDenied => "access denied by the gateway",
        _ => return format!("TLS alert {alert:?}", alert = AlertDescription::from(alert)),
    };
    text.to_string()
}

/// Words for a QUIC connection error, or `None` when it carries nothing useful.
pub fn describe_quic(err: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match err {
        E::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            if (0x100..0x200).contains(&code) {
                // CRYPTO_ERROR: 0x100 + TLS alert
                describe_alert((code - 0x100) as u8)
            } else if close.reason.is_empty() {
                format!("the gateway closed the connection ({})", close.error_code)
            } else {
                format!(
                    "the gateway closed the connection: {}",
                    String::from_utf8_lossy(&close.reason)
                )
            }
        }
        E::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            if reason.is_empty() {
                "the gateway closed the connection".to_string()
            } else {
                format!("the gateway closed the connection: {reason}")
            }
        }
        E::TransportError(t) => {
            let code = u64::from(t.code);
            if (0x100..0x200).contains(&code) && t.reason.contains("invalid peer certificate") {
                format!(
                    "the gateway's certificate is not trusted: {} (check ca.crt for this gateway)",
                    t.reason.trim_start_matches("invalid peer certificate: ")
                )
            } else {
                format!("QUIC protocol error: {t}")
            }
        }
        E::TimedOut => "the gateway stopped answering (timed out)".to_string(),
        E::Reset => "the gateway reset the connection".to_string(),
        E::LocallyClosed => "the connection was closed locally".to_string(),
        E::VersionMismatch => "the gateway speaks an unsupported QUIC version".to_string(),
        E::CidsExhausted => "QUIC connection IDs exhausted".to_string(),
    }
}

/// Finds a rustls error anywhere in an error chain (TCP path) and describes it.
pub fn describe_tls_in_chain(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe_rustls(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(describe_rustls(tls));
            }
            // tokio-rustls hands the error over as text.
            if let Some(text) = describe_tls_text(&inner.to_string()) {
                return Some(text);
            }
        }
        cur = e.source();
    }
    None
}

/// Recognises rustls' wording for alerts and certificate failures in an error message.
fn describe_tls_text(text: &str) -> Option<String> {
    if let Some(name) = text.split("received fatal alert: ").nth(1) {
        let name = name.split_whitespace().next().unwrap_or("");
        return (0..=255u8)
            .find(|c| format!("{:?}", AlertDescription::from(*c)) == name)
            .map(describe_alert);
    }
    text.split("invalid peer certificate: ").nth(1).map(|rest| {
        format!("the gateway's certificate is not trusted: {rest} (check ca.crt for this gateway)")
    })
}

fn describe_rustls(err: &rustls::Error) -> String {
    match err {
        rustls::Error::AlertReceived(alert) => describe_alert(u8::from(*alert)),
        rustls::Error::InvalidCertificate(e) => format!(
            "the gateway's certificate is not trusted: {e:?} (check ca.crt for this gateway)"
        ),
        other => format!("TLS error: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_read_as_actions() {
        assert!(describe_alert(45).contains("expired"));
        assert!(describe_alert(48).contains("another CA"));
        assert!(describe_alert(116).contains("requires a client certificate"));
        assert!(describe_alert(44).contains("revoked"));
    }

    #[test]
    fn alert_text_from_tokio_rustls_is_recognised() {
        let d = describe_tls_text("received fatal alert: UnknownCA").unwrap();
        assert!(d.contains("another CA"), "{d}");
        assert!(describe_tls_text("connection reset").is_none());
    }
}
