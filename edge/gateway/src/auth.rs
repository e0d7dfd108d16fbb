//! Who may call what, checked on every request (not only at handshakes: a resumed or 0-RTT
//! session restores the client certificate without re-verifying it).
//!
//! This module says who is calling (authentication); [`crate::authz`] says what they may do.
//!
//! - `Health` is public.
//! - With TLS, every other RPC needs a client certificate that is neither expired nor on
//!   the current revocation list, with a non-empty subject. Its OU values are its roles
//!   (`admin`, `user`, `viewer`; none means `user`); a certificate naming any other role is
//!   refused outright, so a typo never silently grants something else.
//! - Sandbox credentials (`CN=sandbox:<id>`) may call only the Supervisor service; user
//!   certificates may not call it.
//! - Without TLS (plaintext loopback), callers are the anonymous local admin (`local`).
//! - Edge mode: an authenticating reverse proxy connects with its own client certificate
//!   carrying the role `edge-proxy`, and names the user it authenticated in the
//!   `x-openshell-user` header (roles in `x-openshell-roles`, comma-separated; none means
//!   `user`). Only such a certificate may assert a user; anyone else's headers are ignored.
//!   A proxy may grant `user` and `viewer`, and `admin` only when its own certificate also
//!   carries `admin`. Naming a reserved subject (`sandbox:...`, `system:...`, `local`) or an
//!   unknown role is refused. Revoking the proxy's certificate cuts off every user behind it.
//!
//! Every refusal, and every call of a mutating RPC with its outcome, is an audit line.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::future::BoxFuture;
use http::{Request, Response};
use openshell_transport::{AuthKind, Principal, RequestContext};
use tonic::Status;

use crate::audit::{self, AuditLog, Event, Outcome};
use crate::authz::{self, Action, Denial, Object, Role, Roles};

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
/// Role sandbox credentials carry (`OU=sandbox`, `CN=sandbox:<id>`).
const SANDBOX_ROLE: &str = "sandbox";
/// Subject of the anonymous local admin of a plaintext loopback gateway.
pub const LOCAL_SUBJECT: &str = "local";

/// The authenticated caller of a request, inserted as a request extension for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who, as authenticated (for edge users: the proxy's certificate serial and expiry,
    /// so revoking the proxy cuts its users off).
    pub principal: Principal,
    /// The roles that grant rights (empty for sandbox credentials and bare edge proxies).
    pub roles: Roles,
    /// The connection's peer address.
    pub peer: Option<std::net::SocketAddr>,
}

impl Caller {
    pub fn subject(&self) -> &str {
        &self.principal.subject
    }

    /// The sandbox this is the credential of, if it is one.
    pub fn sandbox_id(&self) -> Option<&str> {
        self.principal.sandbox_id()
    }

    /// Whether this caller may do `action` (on `object`, once loaded): see [`authz`].
    pub fn may(&self, action: Action, object: Option<Object<'_>>) -> Result<(), Denial> {
        if self.sandbox_id().is_some() {
            return Err(Denial::Forbidden(
                "sandbox credentials may call only the Supervisor service".into(),
            ));
        }
        authz::decide(self.subject(), &self.roles, action, object)
    }

    /// The audit line of this caller doing `action` on `target`.
    pub fn audit_event(&self, action: &str, target: &str, result: Outcome, reason: &str) -> Event {
        Event {
            time: audit::timestamp(SystemTime::now()),
            subject: self.principal.subject.clone(),
            roles: self.principal.roles.clone(),
            auth: self.principal.auth.as_str().to_string(),
            peer: self.peer.map(|p| p.to_string()).unwrap_or_default(),
            action: action.to_string(),
            target: target.to_string(),
            result,
            reason: reason.to_string(),
        }
    }
}

/// An authentication failure: the status to answer and what the audit line says of who
/// tried (as much as is known).
#[derive(Debug)]
pub struct Refusal {
    pub status: Status,
    pub subject: String,
    pub roles: Vec<String>,
    pub auth: &'static str,
}

impl Refusal {
    fn new(status: Status, who: Option<&Principal>) -> Box<Refusal> {
        Box::new(Refusal {
            status,
            subject: who.map(|p| p.subject.clone()).unwrap_or_default(),
            roles: who.map(|p| p.roles.clone()).unwrap_or_default(),
            auth: who.map_or("unauthenticated", |p| p.auth.as_str()),
        })
    }

    pub fn audit_event(
        &self,
        peer: Option<std::net::SocketAddr>,
        action: &str,
        target: &str,
    ) -> Event {
        Event {
            time: audit::timestamp(SystemTime::now()),
            subject: self.subject.clone(),
            roles: self.roles.clone(),
            auth: self.auth.to_string(),
            peer: peer.map(|p| p.to_string()).unwrap_or_default(),
            action: action.to_string(),
            target: target.to_string(),
            result: Outcome::Denied,
            reason: self.status.message().to_string(),
        }
    }
}

/// The roles a certificate or proxy names, checked: every one must be known. A typo such as
/// `admn` is refused rather than silently granting less (or, worse, something else).
fn parse_roles(subject: &str, named: &[String], via: &str) -> Result<Roles, String> {
    let mut roles = Vec::new();
    for r in named {
        match Role::parse(r) {
            Some(role) => roles.push(role),
            None => {
                return Err(format!(
                    "{via} for '{subject}' names unknown role '{r}': roles are admin, user and viewer"
                ));
            }
        }
    }
    if roles.is_empty() {
        roles.push(Role::User);
    }
    Ok(Roles::new(roles))
}

/// The user an edge proxy vouches for, if the connection is an edge proxy's and it named
/// one. A proxy may grant `user` and `viewer`; it may grant `admin` only if its own
/// certificate also carries `admin` (a proxy cannot hand out more than it holds).
fn edge_user(proxy: &Principal, headers: &http::HeaderMap) -> Option<Result<Caller, Status>> {
    if !proxy.roles.iter().any(|r| r == EDGE_PROXY_ROLE) {
        return None;
    }
    let user = headers.get(EDGE_USER_HEADER)?;
    let refuse = |m: String| Some(Err(Status::permission_denied(m)));
    let Some(user) = user.to_str().ok().map(str::trim) else {
        return refuse(format!(
            "edge proxy CN={} named a user that is not text",
            proxy.subject
        ));
    };
    if user.is_empty() {
        return refuse(format!(
            "edge proxy CN={} named an empty user",
            proxy.subject
        ));
    }
    if user.starts_with("sandbox:") || user.starts_with("system:") || user == LOCAL_SUBJECT {
        return refuse(format!(
            "edge proxy CN={} may not name the reserved subject '{user}'",
            proxy.subject
        ));
    }
    let named: Vec<String> = headers
        .get(EDGE_ROLES_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let roles = match parse_roles(user, &named, &format!("edge proxy CN={}", proxy.subject)) {
        Ok(r) => r,
        Err(m) => return refuse(m),
    };
    if roles.has(Role::Admin) && !proxy.roles.iter().any(|r| r == Role::Admin.as_str()) {
        return refuse(format!(
            "edge proxy CN={} may not grant role admin to '{user}': only a proxy whose own certificate carries the admin role may (openshell pki issue {} --role edge-proxy --role admin)",
            proxy.subject, proxy.subject
        ));
    }
    Some(Ok(Caller {
        principal: Principal {
            subject: user.to_string(),
            roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
            auth: AuthKind::Edge,
            ..proxy.clone()
        },
        roles,
        peer: None,
    }))
}

/// Authenticates a request: who is calling, with which roles. `Ok(None)` only for public
/// methods called without a certificate. Rights are decided afterwards by [`authz`].
pub fn authenticate(
    path: &str,
    headers: &http::HeaderMap,
    ctx: Option<&RequestContext>,
    tls: bool,
    revocations: &Revocations,
    now: SystemTime,
) -> Result<Option<Caller>, Box<Refusal>> {
    let peer = ctx.map(|c| c.conn.peer);
    if openshell_proto::PUBLIC_METHODS.contains(&path) {
        return Ok(ctx
            .and_then(|c| c.conn.principal().cloned())
            .map(|p| Caller {
                roles: Roles::default(),
                principal: p,
                peer,
            }));
    }
    let Some(ctx) = ctx else {
        return Err(Refusal::new(
            Status::internal("request without connection context"),
            None,
        ));
    };
    let mut caller = if tls {
        let Some(p) = ctx.conn.principal() else {
            return Err(Refusal::new(
                Status::unauthenticated(
                    "a client certificate is required: issue one with `openshell pki issue`",
                ),
                None,
            ));
        };
        if revocations.is_revoked(&p.serial) {
            return Err(Refusal::new(
                Status::unauthenticated(format!(
                    "client certificate {} (CN={}) has been revoked",
                    p.serial, p.subject
                )),
                Some(p),
            ));
        }
        if p.expired_at(now) {
            return Err(Refusal::new(
                Status::unauthenticated(format!(
                    "client certificate (CN={}) has expired: issue a new one with `openshell pki issue`",
                    p.subject
                )),
                Some(p),
            ));
        }
        // A resumed session skipped the handshake's verification, and the trusted CAs may
        // have changed since (`pki init --force`, the end of a rotation's overlap).
        if let Err(e) = ctx.conn.verify_trust() {
            return Err(Refusal::new(
                Status::unauthenticated(format!("{e} (CN={})", p.subject)),
                Some(p),
            ));
        }
        if p.subject.trim().is_empty() {
            return Err(Refusal::new(
                Status::unauthenticated(
                    "client certificate has an empty subject (CN): issue one for a named user with `openshell pki issue NAME`",
                ),
                Some(p),
            ));
        }
        if let Some(edge) = edge_user(p, headers) {
            edge.map_err(|s| Refusal::new(s, Some(p)))?
        } else if p.sandbox_id().is_some() {
            if !p.roles.iter().all(|r| r == SANDBOX_ROLE) {
                return Err(Refusal::new(
                    Status::permission_denied("a sandbox credential may carry no user role"),
                    Some(p),
                ));
            }
            Caller {
                principal: p.clone(),
                roles: Roles::default(),
                peer: None,
            }
        } else if p.roles.iter().any(|r| r == EDGE_PROXY_ROLE) {
            // A proxy's own requests (no user named): its other roles, if any, apply.
            let own: Vec<String> = p
                .roles
                .iter()
                .filter(|r| *r != EDGE_PROXY_ROLE)
                .cloned()
                .collect();
            let roles = if own.is_empty() {
                Roles::default()
            } else {
                parse_roles(&p.subject, &own, "the certificate")
                    .map_err(|m| Refusal::new(Status::permission_denied(m), Some(p)))?
            };
            Caller {
                principal: p.clone(),
                roles,
                peer: None,
            }
        } else {
            let roles = parse_roles(&p.subject, &p.roles, "the certificate").map_err(|m| {
                Refusal::new(
                    Status::permission_denied(format!(
                        "{m} (reissue it with `openshell pki issue {} --role user`)",
                        p.subject
                    )),
                    Some(p),
                )
            })?;
            Caller {
                principal: p.clone(),
                roles,
                peer: None,
            }
        }
    } else {
        Caller {
            principal: Principal {
                subject: LOCAL_SUBJECT.into(),
                roles: vec![Role::Admin.as_str().into()],
                serial: String::new(),
                not_after: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u32::MAX as u64),
                auth: AuthKind::None,
            },
            roles: Roles::new(vec![Role::Admin]),
            peer: None,
        }
    };
    caller.peer = peer;
    let supervisor_rpc = path.starts_with(openshell_proto::SUPERVISOR_SERVICE_PREFIX);
    match (caller.sandbox_id().is_some(), supervisor_rpc) {
        (true, false) => Err(Refusal::new(
            Status::permission_denied("sandbox credentials may call only the Supervisor service"),
            Some(&caller.principal),
        )),
        (false, true) => Err(Refusal::new(
            Status::permission_denied("the Supervisor service is for sandbox supervisors only"),
            Some(&caller.principal),
        )),
        _ => Ok(Some(caller)),
    }
}

/// A caller for unit tests of handlers (mTLS, no peer).
#[cfg(test)]
pub(crate) fn test_caller(subject: &str, roles: &[Role]) -> Caller {
    Caller {
        principal: Principal {
            subject: subject.into(),
            roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
            serial: "1".into(),
            not_after: SystemTime::now() + std::time::Duration::from_secs(3600),
            auth: AuthKind::Mtls,
        },
        roles: Roles::new(roles.to_vec()),
        peer: None,
    }
}

/// Where a handler notes the object a request is about, for its audit line.
#[derive(Debug, Clone, Default)]
pub struct AuditTarget(Arc<std::sync::Mutex<String>>);

impl AuditTarget {
    pub fn set(&self, target: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = target.into();
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The action each RPC of the user-facing services is checked against before its handler
/// runs. Handlers check ownership (and the stronger `--all` / `global` variants) once they
/// have the object. A method missing here is refused: nothing is served unchecked.
pub fn rpc_action(path: &str) -> Option<Action> {
    let method = path
        .strip_prefix("/openshell.v1.OpenShell/")
        .or_else(|| path.strip_prefix("/openshell.v1.Diagnostics/"))?;
    let diagnostics = path.starts_with("/openshell.v1.Diagnostics/");
    use Action as A;
    Some(match method {
        "Ping" | "Download" | "Upload" | "Echo" if diagnostics => A::ReadGateway,
        "GetGatewayInfo" | "GetCurrentUser" => A::ReadGateway,
        "CreateSandbox" => A::CreateSandbox,
        "GetSandbox" | "ListSandboxes" | "WatchSandboxes" | "GetSandboxLogs" => A::ReadSandbox,
        "DeleteSandbox" => A::DeleteSandbox,
        "StopSandbox" => A::StopSandbox,
        "StartSandbox" => A::StartSandbox,
        "ExecSandbox" | "CreateSshSession" | "RevokeSshSession" => A::ReachSandbox,
        "CreateProvider" => A::CreateProvider,
        "GetProvider" | "ListProviders" => A::ReadProvider,
        "UpdateProvider" | "DeleteProvider" => A::ChangeProvider,
        "SetSandboxPolicy" | "DeleteSandboxPolicy" => A::ChangePolicy,
        "GetSandboxPolicy" | "ListSandboxPolicies" => A::ReadPolicy,
        "SetInference" | "DeleteInference" => A::ChangeInference,
        "GetInference" => A::ReadInference,
        _ => return None,
    })
}

/// The outcome of a finished RPC from its gRPC status code.
fn outcome_of(code: tonic::Code) -> Outcome {
    match code {
        tonic::Code::Ok => Outcome::Ok,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Outcome::Denied,
        _ => Outcome::Error,
    }
}

/// Tower layer applying `authenticate` and the role check of [`rpc_action`], auditing, and
/// recording RPC metrics.
#[derive(Clone)]
pub struct AuthLayer {
    pub tls: bool,
    pub revocations: Arc<Revocations>,
    pub metrics: Arc<crate::metrics::RpcMetrics>,
    pub audit: Arc<AuditLog>,
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

/// The last path segment (`/openshell.v1.OpenShell/DeleteSandbox` -> `DeleteSandbox`).
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A request let through: who (none for a public method called anonymously) and the action
/// it was checked against (none for public and Supervisor methods).
pub type Admitted = (Option<Caller>, Option<Action>);
/// A request refused: the answer, and its audit line.
pub type Refused = Box<(Status, Event)>;

/// The decision [`AuthLayer`] takes for one request: the caller, or the refusal with its
/// audit line. Pure (no audit write, no metrics), so the `request_head` fuzz target
/// (edge/gateway/fuzz) checks the very decision the layer applies.
#[doc(hidden)]
pub fn admit(
    path: &str,
    headers: &http::HeaderMap,
    ctx: Option<&RequestContext>,
    tls: bool,
    revocations: &Revocations,
    now: SystemTime,
) -> Result<Admitted, Refused> {
    let peer = ctx.map(|c| c.conn.peer);
    let method = method_name(path);
    let caller = authenticate(path, headers, ctx, tls, revocations, now).map_err(|r| {
        let event = r.audit_event(peer, method, "");
        Box::new((r.status, event))
    })?;
    let Some(caller) = caller else {
        return Ok((None, None));
    };
    if openshell_proto::PUBLIC_METHODS.contains(&path)
        || path.starts_with(openshell_proto::SUPERVISOR_SERVICE_PREFIX)
    {
        // The Supervisor service checks that a credential acts only for its own sandbox.
        return Ok((Some(caller), None));
    }
    let Some(action) = rpc_action(path) else {
        let status = Status::permission_denied(format!("method {path} is not served"));
        let event = caller.audit_event(method, "", Outcome::Denied, status.message());
        return Err(Box::new((status, event)));
    };
    match caller.may(action, None) {
        Ok(()) => Ok((Some(caller), Some(action))),
        Err(Denial::Forbidden(m)) => {
            let status = Status::permission_denied(m);
            let event = caller.audit_event(method, "", Outcome::Denied, status.message());
            Err(Box::new((status, event)))
        }
        // Only an object can be hidden; the role check names none.
        Err(Denial::Hidden) => Ok((Some(caller), Some(action))),
    }
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
        let audit = self.layer.audit.clone();
        let decision = admit(
            &path,
            req.headers(),
            req.extensions().get::<RequestContext>(),
            self.layer.tls,
            &self.layer.revocations,
            SystemTime::now(),
        );
        match decision {
            Err(refused) => {
                let (status, event) = *refused;
                tracing::info!(%path, code = ?status.code(), message = status.message(), "request refused");
                audit.record(&event);
                metrics.record(&path, &format!("{:?}", status.code()), started.elapsed());
                Box::pin(async move { Ok(status.into_http()) })
            }
            Ok((caller, action)) => {
                let target = AuditTarget::default();
                let audited = match (&caller, action) {
                    (Some(c), Some(a)) if a.mutates() => Some(c.clone()),
                    _ => None,
                };
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                req.extensions_mut().insert(target.clone());
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let resp = fut.await?;
                    let status = Status::from_header_map(resp.headers());
                    let code = status.as_ref().map_or(tonic::Code::Ok, |s| s.code());
                    if let Some(c) = audited {
                        let reason = status.as_ref().map(|s| s.message()).unwrap_or("");
                        audit.record(&c.audit_event(
                            method_name(&path),
                            &target.get(),
                            outcome_of(code),
                            reason,
                        ));
                    }
                    metrics.record(&path, &format!("{code:?}"), started.elapsed());
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

    fn refused(r: Option<Result<Caller, Status>>) -> String {
        match r {
            Some(Err(s)) => s.message().to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn only_an_edge_proxy_may_name_a_user() {
        let h = headers("alice", "viewer, user");
        let alice = edge_user(&principal(&[EDGE_PROXY_ROLE]), &h)
            .unwrap()
            .unwrap();
        assert_eq!(alice.principal.subject, "alice");
        assert_eq!(alice.principal.roles, vec!["user", "viewer"]);
        assert!(alice.roles.has(Role::Viewer) && !alice.roles.has(Role::Admin));
        assert_eq!(alice.principal.auth, AuthKind::Edge);
        assert_eq!(
            alice.principal.serial, "abc",
            "revoking the proxy must cut its users off"
        );
        assert!(edge_user(&principal(&["admin"]), &h).is_none());
        assert!(edge_user(&principal(&[EDGE_PROXY_ROLE]), &http::HeaderMap::new()).is_none());
        let plain = edge_user(&principal(&[EDGE_PROXY_ROLE]), &headers("bob", ""))
            .unwrap()
            .unwrap();
        assert_eq!(
            plain.roles,
            Roles::new(vec![Role::User]),
            "no role is a user"
        );
    }

    #[test]
    fn an_edge_proxy_cannot_name_reserved_subjects_unknown_roles_or_admin_it_lacks() {
        let proxy = principal(&[EDGE_PROXY_ROLE]);
        assert!(refused(edge_user(&proxy, &headers("sandbox:x", ""))).contains("reserved"));
        assert!(refused(edge_user(&proxy, &headers("system:admins", ""))).contains("reserved"));
        assert!(
            refused(edge_user(&proxy, &headers("alice", "dev"))).contains("unknown role 'dev'")
        );
        assert!(
            refused(edge_user(&proxy, &headers("alice", "edge-proxy"))).contains("unknown role")
        );
        assert!(
            refused(edge_user(&proxy, &headers("alice", "admin")))
                .contains("may not grant role admin")
        );
        let admin_proxy = principal(&[EDGE_PROXY_ROLE, "admin"]);
        let root = edge_user(&admin_proxy, &headers("root", "admin"))
            .unwrap()
            .unwrap();
        assert!(root.roles.has(Role::Admin));
    }

    #[test]
    fn certificate_roles_must_be_known_and_default_to_user() {
        assert_eq!(
            parse_roles("a", &[], "the certificate").unwrap(),
            Roles::new(vec![Role::User])
        );
        let err =
            parse_roles("a", &["admin".into(), "admn".into()], "the certificate").unwrap_err();
        assert!(err.contains("unknown role 'admn'"), "{err}");
    }

    #[test]
    fn every_rpc_of_the_contract_has_an_action() {
        // A method added to the .proto without a line in `rpc_action` would be refused;
        // this makes the omission a test failure instead of a surprise.
        let proto = include_str!("../../../proto/openshell/v1/openshell.proto");
        let mut service = "";
        let mut checked = 0;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().unwrap();
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let method = rest.split('(').next().unwrap().trim();
                let path = format!("/openshell.v1.{service}/{method}");
                let public = openshell_proto::PUBLIC_METHODS.contains(&path.as_str());
                let supervisor = service == "Supervisor";
                assert!(
                    public || supervisor || rpc_action(&path).is_some(),
                    "{path} has no action in rpc_action"
                );
                checked += 1;
            }
        }
        assert!(checked > 30, "parsed only {checked} rpcs");
        assert_eq!(rpc_action("/openshell.v1.OpenShell/Nope"), None);
        assert_eq!(
            rpc_action("/openshell.v1.OpenShell/DeleteSandbox"),
            Some(Action::DeleteSandbox)
        );
    }
}
