//! Who may call what, checked on every request (not only at handshakes: a resumed or 0-RTT
//! session restores the client certificate without re-verifying it).
//!
//! - `Health` is public.
//! - With TLS, every other RPC needs a client certificate that is neither expired nor on
//!   the current revocation list.
//! - Sandbox credentials (`CN=sandbox:<id>`) may call only the Supervisor service; user
//!   certificates may not call it.
//! - Without TLS (plaintext loopback), callers are the anonymous local user.
//! - Edge mode: an authenticating reverse proxy connects with its own client certificate
//!   carrying the role `edge-proxy`, and names the user it authenticated in the
//!   `x-openshell-user` header (roles in `x-openshell-roles`, comma-separated). Only such a
//!   certificate may assert a user; anyone else's headers are ignored. Revoking the proxy's
//!   certificate cuts off every user behind it.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::BoxFuture;
use http::{Request, Response};
use openshell_transport::{AuthKind, Principal, RequestContext};
use tonic::Status;

/// Serials (normalized hex) revoked by the current CRL; swapped on reload.
#[derive(Debug, Default)]
pub struct Revocations {
    serials: RwLock<Arc<HashSet<String>>>,
}

impl Revocations {
    pub fn replace(&self, serials: HashSet<String>) {
        *self.serials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(serials);
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }
}

/// Role a reverse proxy's certificate carries to be trusted to name users.
pub const EDGE_PROXY_ROLE: &str = "edge-proxy";
/// Header in which an edge proxy names the user it authenticated.
pub const EDGE_USER_HEADER: &str = "x-openshell-user";
/// Header in which an edge proxy lists the user's roles.
pub const EDGE_ROLES_HEADER: &str = "x-openshell-roles";

/// The user an edge proxy vouches for, if the connection is an edge proxy's and it named one.
fn edge_user(proxy: &Principal, headers: &http::HeaderMap) -> Option<Principal> {
    if !proxy.roles.iter().any(|r| r == EDGE_PROXY_ROLE) {
        return None;
    }
    let user = headers.get(EDGE_USER_HEADER)?.to_str().ok()?.trim();
    if user.is_empty() || user.starts_with("sandbox:") {
        return None;
    }
    let roles = headers
        .get(EDGE_ROLES_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty() && *r != EDGE_PROXY_ROLE)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Some(Principal {
        subject: user.to_string(),
        roles,
        auth: AuthKind::Edge,
        ..proxy.clone()
    })
}

/// The caller of an RPC, inserted as a request extension for handlers.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

/// Decides whether the request may proceed; returns the caller or the refusal.
pub fn authorize(
    path: &str,
    headers: &http::HeaderMap,
    ctx: Option<&RequestContext>,
    tls: bool,
    revocations: &Revocations,
    now: SystemTime,
) -> Result<Option<Caller>, Status> {
    if openshell_proto::PUBLIC_METHODS.contains(&path) {
        return Ok(ctx.and_then(|c| c.conn.principal().cloned()).map(Caller));
    }
    let Some(ctx) = ctx else {
        return Err(Status::internal("request without connection context"));
    };
    let principal = if tls {
        let Some(p) = ctx.conn.principal() else {
            return Err(Status::unauthenticated(
                "a client certificate is required: issue one with `openshell pki issue`",
            ));
        };
        if revocations.is_revoked(&p.serial) {
            return Err(Status::unauthenticated(format!(
                "client certificate {} (CN={}) has been revoked",
                p.serial, p.subject
            )));
        }
        if p.expired_at(now) {
            return Err(Status::unauthenticated(format!(
                "client certificate (CN={}) has expired: issue a new one with `openshell pki issue`",
                p.subject
            )));
        }
        edge_user(p, headers).unwrap_or_else(|| p.clone())
    } else {
        Principal {
            subject: "local".into(),
            roles: vec![],
            serial: String::new(),
            not_after: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u32::MAX as u64),
            auth: AuthKind::None,
        }
    };
    let supervisor_rpc = path.starts_with(openshell_proto::SUPERVISOR_SERVICE_PREFIX);
    match (principal.sandbox_id().is_some(), supervisor_rpc) {
        (true, false) => Err(Status::permission_denied(
            "sandbox credentials may call only the Supervisor service",
        )),
        (false, true) => Err(Status::permission_denied(
            "the Supervisor service is for sandbox supervisors only",
        )),
        _ => Ok(Some(Caller(principal))),
    }
}

/// Tower layer applying `authorize` and recording RPC metrics.
#[derive(Clone)]
pub struct AuthLayer {
    pub tls: bool,
    pub revocations: Arc<Revocations>,
    pub metrics: Arc<crate::metrics::RpcMetrics>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> tower::Service<Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let metrics = self.layer.metrics.clone();
        let decision = authorize(
            &path,
            req.headers(),
            req.extensions().get::<RequestContext>(),
            self.layer.tls,
            &self.layer.revocations,
            SystemTime::now(),
        );
        match decision {
            Err(status) => {
                tracing::info!(%path, code = ?status.code(), message = status.message(), "request refused");
                metrics.record(&path, &format!("{:?}", status.code()), started.elapsed());
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let resp = fut.await?;
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|s| s.parse::<i32>().ok())
                        .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                        .unwrap_or_else(|| "Ok".into());
                    metrics.record(&path, &code, started.elapsed());
                    Ok(resp)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[&str]) -> Principal {
        Principal {
            subject: "proxy".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            serial: "abc".into(),
            not_after: SystemTime::now() + std::time::Duration::from_secs(60),
            auth: AuthKind::Mtls,
        }
    }

    fn headers(user: &str, roles: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(EDGE_USER_HEADER, user.parse().unwrap());
        h.insert(EDGE_ROLES_HEADER, roles.parse().unwrap());
        h
    }

    #[test]
    fn only_an_edge_proxy_may_name_a_user() {
        let h = headers("alice", "dev, edge-proxy");
        let alice = edge_user(&principal(&[EDGE_PROXY_ROLE]), &h).unwrap();
        assert_eq!(alice.subject, "alice");
        assert_eq!(alice.roles, vec!["dev".to_string()]);
        assert_eq!(alice.auth, AuthKind::Edge);
        assert_eq!(
            alice.serial, "abc",
            "revoking the proxy must cut its users off"
        );
        assert!(edge_user(&principal(&["admin"]), &h).is_none());
        assert!(edge_user(&principal(&[EDGE_PROXY_ROLE]), &headers("sandbox:x", "")).is_none());
        assert!(edge_user(&principal(&[EDGE_PROXY_ROLE]), &http::HeaderMap::new()).is_none());
    }
}
