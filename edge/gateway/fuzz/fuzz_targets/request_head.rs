//! A request head as the gateway's authorization sees it, on HTTP/3 and HTTP/2 alike: the
//! `:path` (the gRPC method, checked against the public, early-data and Supervisor lists),
//! the edge proxy's `x-openshell-user`/`x-openshell-roles`, and a CONNECT's
//! `openshell-tunnel`. Field names, values and the path pass the same `http` validation h2
//! and h3 apply before the gateway sees them. The caller's certificate is chosen by the
//! first byte (none, a user, an edge proxy, a sandbox supervisor, a revoked or an expired
//! user; TLS or plaintext loopback).
//!
//! Beyond "never panics", the decision must hold the rules of `auth.rs`:
//! - a refused caller (no certificate, revoked, expired) reaches nothing but public methods;
//! - a sandbox credential reaches only the Supervisor service, a user never does;
//! - only an edge proxy's headers change who the caller is, and the user it names is never a
//!   sandbox, never empty, never carries the proxy role, and keeps the proxy's serial (so
//!   revoking the proxy cuts its users off).
//!
//! Input: byte 0 = caller, then the path, then `name:value` lines.
#![no_main]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use openshell_gateway::auth::{self, Caller, EDGE_PROXY_ROLE, Revocations};
use openshell_transport::{AuthKind, ConnMeta, Principal, RequestContext, TransportKind, TunnelTarget};

const REVOKED_SERIAL: &str = "dead";

fn principal(subject: &str, roles: &[&str], serial: &str, valid_for: i64) -> Principal {
    let now = SystemTime::now();
    Principal {
        subject: subject.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        serial: serial.to_string(),
        not_after: if valid_for >= 0 {
            now + Duration::from_secs(valid_for as u64)
        } else {
            now - Duration::from_secs(valid_for.unsigned_abs())
        },
        auth: AuthKind::Mtls,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|b| *b == b'\n');
    let Ok(uri) = http::Uri::from_maybe_shared(bytes::Bytes::copy_from_slice(
        lines.next().unwrap_or_default(),
    )) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            headers.append(name, value);
        }
    }

    let caller = match selector % 6 {
        0 => None,
        1 => Some(principal("alice", &["dev"], "a1", 3600)),
        2 => Some(principal("proxy", &[EDGE_PROXY_ROLE], "b2", 3600)),
        3 => Some(principal("sandbox:0123", &[], "c3", 3600)),
        4 => Some(principal("mallory", &[], REVOKED_SERIAL, 3600)),
        _ => Some(principal("bob", &[], "e5", -10)),
    };
    let tls = selector & 0x80 == 0;
    let ctx = RequestContext {
        conn: Arc::new(ConnMeta::for_fuzzing(
            "127.0.0.1:1".parse().unwrap(),
            TransportKind::Quic,
            caller.clone(),
        )),
        early_data: selector & 0x40 != 0,
    };
    let revocations = Revocations::default();
    revocations.replace(HashSet::from([REVOKED_SERIAL.to_string()]));

    let path = uri.path();
    let _ = openshell_proto::is_idempotent_read(path);
    let _ = TunnelTarget::from_headers(&headers);
    let public = openshell_proto::PUBLIC_METHODS.contains(&path);
    let supervisor = path.starts_with(openshell_proto::SUPERVISOR_SERVICE_PREFIX);
    let decision = auth::authorize(
        path,
        &headers,
        Some(&ctx),
        tls,
        &revocations,
        SystemTime::now(),
    );
    let Ok(Some(Caller(who))) = decision else {
        return;
    };
    if public {
        return;
    }
    if tls {
        let cert = caller.expect("a TLS caller without a certificate was let through");
        assert!(cert.serial != REVOKED_SERIAL, "a revoked certificate was let through");
        assert!(!cert.expired_at(SystemTime::now()), "an expired certificate was let through");
        assert_eq!(who.serial, cert.serial, "the caller lost its certificate's serial");
        if who.auth == AuthKind::Edge {
            assert!(cert.roles.iter().any(|r| r == EDGE_PROXY_ROLE), "a non-proxy named a user");
            assert!(!who.subject.is_empty());
            assert!(who.sandbox_id().is_none(), "an edge proxy named a sandbox");
            assert!(!who.roles.iter().any(|r| r == EDGE_PROXY_ROLE));
        } else {
            assert_eq!(who, cert, "headers changed a non-proxy caller");
        }
    }
    assert_eq!(
        who.sandbox_id().is_some(),
        supervisor,
        "sandbox credentials reach only the Supervisor service, users never"
    );
});
