//! A request head as the gateway's authorization sees it, on HTTP/3 and HTTP/2 alike: the
//! `:path` (the gRPC method), the edge proxy's `x-openshell-user`/`x-openshell-roles`, and
//! any other header (a CONNECT's `openshell-tunnel` among them). Field names, values and the
//! path pass the same `http` validation h2 and h3 apply before the gateway sees them. The
//! caller's certificate is one of a fixed cast (none, users with each role, a role typo, an
//! edge proxy with and without `admin`, sandbox supervisors, a revoked, an expired and an
//! empty-subject certificate), over TLS or plaintext loopback.
//!
//! It runs the two decisions every RPC goes through, `auth::authenticate` (who) and
//! `auth::admit` (what `AuthLayer` lets through: authentication plus the role check of
//! `authz`), and beyond "never panics" checks that they hold the rules of `auth.rs` and
//! `authz.rs`:
//! - `Health` is reachable by anyone and grants no role;
//! - with TLS, a caller without a certificate, or with a revoked, expired or empty-subject
//!   one, or one naming an unknown role, reaches nothing but public methods;
//! - only an edge proxy's headers change anything: for every other caller the decision is
//!   the one taken without the headers, and the caller is its certificate;
//! - the user an edge proxy names is the (trimmed) `x-openshell-user`, never empty, never a
//!   reserved subject (`sandbox:`, `system:`, `local`), holds only known roles (never
//!   `edge-proxy`), `admin` only when the proxy's own certificate has it, and keeps the
//!   proxy's serial and expiry (so revoking the proxy cuts its users off);
//! - a sandbox credential reaches only the Supervisor service and holds no role; nobody else
//!   reaches the Supervisor service;
//! - without TLS every non-public caller is the local admin, whatever the headers say;
//! - `admit` lets through no more than `authenticate`, a method without an action in
//!   `rpc_action` never, and an action only for roles that grant it: a caller with neither
//!   `admin` nor `user` never passes a mutating RPC, one without roles passes none.
//!
//! Input: byte 0 = caller (low 6 bits) and plaintext (0x80); then the path line (`@` and a
//! byte picks a method of the contract, read from the .proto, so every real RPC is near);
//! then `name:value` lines.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use openshell_gateway::auth::{
    self, Caller, EDGE_PROXY_ROLE, EDGE_USER_HEADER, LOCAL_SUBJECT, Revocations,
};
use openshell_gateway::authz::{self, Denial, Role};
use openshell_transport::{
    AuthKind, ConnMeta, Principal, RequestContext, TransportKind, TunnelTarget,
};

const REVOKED_SERIAL: &str = "dead";
const HEALTH: &str = "/openshell.v1.OpenShell/Health";

/// Every RPC path of the contract, plus the paths tunnels are authenticated under.
fn methods() -> &'static [String] {
    static METHODS: OnceLock<Vec<String>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let proto = include_str!("../../../../proto/openshell/v1/openshell.proto");
        let mut service = "";
        let mut paths = vec![
            "/openshell.v1.Tunnel/Open".to_string(),
            "/openshell.v1.Supervisor/Relay".to_string(),
        ];
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap_or("");
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap_or("").trim();
                paths.push(format!("/openshell.v1.{service}/{method}"));
            }
        }
        paths
    })
}

fn cert(subject: &str, roles: &[&str], serial: &str, valid_for: i64, now: SystemTime) -> Principal {
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

/// The cast of callers; `None` is a connection without a client certificate.
fn caller(selector: u8, now: SystemTime) -> Option<Principal> {
    Some(match selector % 12 {
        0 => return None,
        1 => cert("alice", &[], "a1", 3600, now),
        2 => cert("proxy", &[EDGE_PROXY_ROLE], "b2", 3600, now),
        3 => cert("sandbox:0123", &["sandbox"], "c3", 3600, now),
        4 => cert("mallory", &["admin"], REVOKED_SERIAL, 3600, now),
        5 => cert("bob", &["admin"], "e5", -10, now),
        6 => cert("root", &["admin"], "f6", 3600, now),
        7 => cert("vera", &["viewer"], "a7", 3600, now),
        8 => cert("typo", &["admn"], "b8", 3600, now),
        9 => cert("root-proxy", &[EDGE_PROXY_ROLE, "admin"], "c9", 3600, now),
        10 => cert(" ", &["admin"], "d10", 3600, now),
        _ => cert("sandbox:0456", &["sandbox", "admin"], "e11", 3600, now),
    })
}

fn known(role: &str) -> bool {
    Role::parse(role).is_some()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut lines = rest.split(|b| *b == b'\n');
    let line = lines.next().unwrap_or_default();
    let path_bytes = match line {
        [b'@', i, ..] => {
            let m = methods();
            m[usize::from(*i) % m.len()].as_bytes().to_vec()
        }
        _ => line.to_vec(),
    };
    let Ok(uri) = http::Uri::from_maybe_shared(bytes::Bytes::from(path_bytes)) else {
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

    let now = SystemTime::now();
    let cert = caller(selector & 0x3f, now);
    let tls = selector & 0x80 == 0;
    let ctx = RequestContext {
        conn: Arc::new(ConnMeta::for_fuzzing(
            "127.0.0.1:1".parse().unwrap(),
            TransportKind::Quic,
            cert.clone(),
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

    let who = auth::authenticate(path, &headers, Some(&ctx), tls, &revocations, now);
    let admitted = auth::admit(path, &headers, Some(&ctx), tls, &revocations, now);

    // admit is authenticate plus the role check: never more.
    if let Ok((c, action)) = &admitted {
        let Ok(a) = &who else {
            panic!("admit let through a caller authenticate refused");
        };
        assert_eq!(
            c.as_ref().map(|c| &c.principal),
            a.as_ref().map(|c| &c.principal)
        );
        if public || supervisor {
            assert!(action.is_none());
        } else {
            let action = action.expect("a non-public RPC admitted without an action");
            assert_eq!(auth::rpc_action(path), Some(action));
            let c = c
                .as_ref()
                .expect("a non-public RPC admitted without a caller");
            assert!(
                c.roles.iter().next().is_some(),
                "a caller without roles passed {path}"
            );
            if action.mutates() {
                assert!(
                    c.roles.has(Role::Admin) || c.roles.has(Role::User),
                    "{:?} passed the mutating {path}",
                    c.roles
                );
            }
            assert!(
                !matches!(
                    authz::decide(c.subject(), &c.roles, action, None),
                    Err(Denial::Forbidden(_))
                ),
                "admit let through an action the roles do not grant"
            );
        }
    } else if let Ok(Some(c)) = &who {
        // Refused after authentication: only for a method that is not served or a right
        // the roles lack.
        assert!(
            !public && !supervisor,
            "{path} refused an authenticated caller"
        );
        if let Some(action) = auth::rpc_action(path) {
            assert!(matches!(
                authz::decide(c.subject(), &c.roles, action, None),
                Err(Denial::Forbidden(_))
            ));
        }
    }

    if public {
        let Ok(c) = &who else {
            panic!("{HEALTH} refused a caller");
        };
        assert!(admitted.is_ok());
        if let Some(c) = c {
            assert!(
                c.roles.iter().next().is_none(),
                "a public method granted roles"
            );
        }
        return;
    }

    let Ok(Some(Caller {
        principal: who,
        roles,
        ..
    })) = who
    else {
        return;
    };
    assert!(
        roles.iter().all(|r| known(r.as_str())),
        "unknown role granted"
    );

    if !tls {
        assert_eq!(who.subject, LOCAL_SUBJECT);
        assert_eq!(who.auth, AuthKind::None);
        assert!(roles.has(Role::Admin));
        assert!(
            !supervisor,
            "the local admin reached the Supervisor service"
        );
        return;
    }

    let cert = cert.expect("a TLS caller without a certificate was let through");
    assert_ne!(
        cert.serial, REVOKED_SERIAL,
        "a revoked certificate was let through"
    );
    assert!(
        !cert.expired_at(now),
        "an expired certificate was let through"
    );
    assert!(
        !cert.subject.trim().is_empty(),
        "an empty subject was let through"
    );
    assert_eq!(
        who.serial, cert.serial,
        "the caller lost its certificate's serial"
    );
    assert_eq!(
        who.not_after, cert.not_after,
        "the caller lost its certificate's expiry"
    );

    let proxy = cert.roles.iter().any(|r| r == EDGE_PROXY_ROLE);
    if who.auth == AuthKind::Edge {
        assert!(proxy, "a non-proxy named a user");
        let named = headers
            .get(EDGE_USER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        assert_eq!(Some(who.subject.as_str()), named);
        assert!(!who.subject.is_empty());
        assert!(
            !who.subject.starts_with("sandbox:")
                && !who.subject.starts_with("system:")
                && who.subject != LOCAL_SUBJECT,
            "an edge proxy named the reserved subject {:?}",
            who.subject
        );
        assert!(who.sandbox_id().is_none());
        assert!(who.roles.iter().all(|r| known(r)), "{:?}", who.roles);
        assert!(
            !roles.has(Role::Admin) || cert.roles.iter().any(|r| r == "admin"),
            "an edge proxy granted admin it does not hold"
        );
    } else {
        assert_eq!(who, cert, "headers changed the caller");
        if cert.sandbox_id().is_none() {
            // Every role the certificate names is known (or the edge proxy's own), and
            // they are what the caller holds (none means user).
            let own: Vec<&String> = cert
                .roles
                .iter()
                .filter(|r| *r != EDGE_PROXY_ROLE)
                .collect();
            assert!(
                own.iter().all(|r| known(r)),
                "a certificate role typo was let through"
            );
            if own.is_empty() && !proxy {
                assert_eq!(roles, authz::Roles::new(vec![Role::User]));
            } else {
                let expected = own.iter().filter_map(|r| Role::parse(r)).collect();
                assert_eq!(roles, authz::Roles::new(expected));
            }
        } else {
            assert!(
                roles.iter().next().is_none(),
                "a sandbox credential holds roles"
            );
        }
    }
    if !proxy {
        // Only an edge proxy's headers change anything.
        let bare = auth::authenticate(
            path,
            &http::HeaderMap::new(),
            Some(&ctx),
            tls,
            &revocations,
            now,
        );
        let Ok(Some(bare)) = bare else {
            panic!("headers let a non-proxy through");
        };
        assert_eq!(bare.principal, who);
        assert_eq!(bare.roles, roles);
    }
    assert_eq!(
        who.sandbox_id().is_some(),
        supervisor,
        "sandbox credentials reach only the Supervisor service, users never"
    );
});
