//! `openshell.v1.Supervisor`: callbacks from in-sandbox supervisors, each authenticated with
//! its own sandbox's credential (`CN=sandbox:<id>`, minted by the gateway from its CA). A
//! credential acts only for its own sandbox: the id it names in a call must be its own.
//!
//! `ConnectSupervisor` is the supervisor's long-lived control stream:
//!
//! ```text
//! supervisor                         gateway
//!   Hello{sandbox_id}  ───────────>  check id == credential's, register session
//!                      <───────────  SessionAccepted{session_id, heartbeat_interval}
//!   Heartbeat          <──────────>  Heartbeat
//!                      <───────────  RelayOpen{relay_id, target}   (when a user connects)
//!   RelayOpenResult{ok:false} ──────>  (only when the target cannot be reached)
//!
//!   RenewCredential{csr} ──────────>  (a unary call, when a third of the credential's life
//!                      <───────────    is left or the issuing CA changed)
//!   {cert, ca}
//! ```
//!
//! `SessionAccepted` and each gateway heartbeat carry the fingerprint of the CA that issues
//! credentials now, so a supervisor learns of a `pki rotate-ca` within one heartbeat and
//! renews during the overlap, before the old CA stops being trusted.
//!
//! The hello carries the sandbox's SSH host key; it must be the one the gateway generated and
//! pinned at create, or the session is refused (users' known_hosts entries come from the pin).
//!
//! Methods that need more of the sandbox records (config, provider environment, logs,
//! inference) answer UNIMPLEMENTED until they are built.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openshell_proto::supervisor_server::Supervisor;
use openshell_proto::{
    Empty, GatewayMessage, Heartbeat, RenewCredentialRequest, RenewCredentialResponse,
    ReportMainProcessExitRequest, SessionAccepted, SupervisorMessage, gateway_message,
    supervisor_message,
};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Caller;
use crate::relays::Relays;
use crate::services::sandboxes::Sandboxes;
use crate::sessions::{Session, SessionRegistry};

/// How often each side sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(15);

type GatewayStream = Pin<Box<dyn Stream<Item = Result<GatewayMessage, Status>> + Send>>;

pub struct SupervisorService {
    pub sessions: Arc<dyn SessionRegistry>,
    pub relays: Arc<Relays>,
    pub sandboxes: Arc<Sandboxes>,
}

impl SupervisorService {
    fn issuing_ca_sha256(&self) -> String {
        self.sandboxes
            .minter
            .as_ref()
            .map(|m| m.issuing_ca_sha256())
            .unwrap_or_default()
    }
}

/// The sandbox a request's credential belongs to, checked against the id it names.
fn own_sandbox<T>(req: &Request<T>, named: &str) -> Result<String, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))?;
    let own = caller
        .sandbox_id()
        .ok_or_else(|| Status::permission_denied("not a sandbox credential"))?;
    if own != named {
        return Err(Status::permission_denied(format!(
            "the credential of sandbox '{own}' cannot act for sandbox '{named}'"
        )));
    }
    Ok(own.to_string())
}

/// Two OpenSSH public key lines name the same key (the comment, if any, does not count).
fn same_key(a: &str, b: &str) -> bool {
    a.split_whitespace()
        .take(2)
        .eq(b.split_whitespace().take(2))
}

#[tonic::async_trait]
impl Supervisor for SupervisorService {
    async fn connect_supervisor(
        &self,
        req: Request<Streaming<SupervisorMessage>>,
    ) -> Result<Response<GatewayStream>, Status> {
        let caller = req.extensions().get::<Caller>().cloned();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))?
            .ok_or_else(|| Status::invalid_argument("stream ended before hello"))??;
        let Some(supervisor_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument("the first message must be hello"));
        };
        let mut check = Request::new(());
        if let Some(c) = caller {
            check.extensions_mut().insert(c);
        }
        let sandbox_id = own_sandbox(&check, &hello.sandbox_id)?;
        match self.sandboxes.pinned_host_key(&sandbox_id).await {
            Ok(pinned)
                if !pinned.is_empty()
                    && !hello.ssh_host_key.is_empty()
                    && !same_key(&pinned, &hello.ssh_host_key) =>
            {
                tracing::warn!(sandbox = %sandbox_id, "supervisor presented an SSH host key other than the pinned one");
                return Err(Status::permission_denied(format!(
                    "sandbox '{sandbox_id}' presented an SSH host key other than the one the gateway pinned at create: the sandbox must use the key in its credential directory"
                )));
            }
            Err(crate::GatewayError::NotFound(_)) => {
                return Err(Status::not_found(format!(
                    "sandbox '{sandbox_id}' has no record on this gateway: it was deleted"
                )));
            }
            _ => {}
        }

        let (tx, rx) = tokio::sync::mpsc::channel::<GatewayMessage>(64);
        let session = Session {
            id: uuid::Uuid::new_v4().to_string(),
            sandbox_id: sandbox_id.clone(),
            instance_id: hello.instance_id,
            ssh_host_key: hello.ssh_host_key,
            tx: tx.clone(),
            connected_at_ms: crate::now_ms(),
        };
        let session_id = session.id.clone();
        if self.sessions.register(session).is_some() {
            tracing::info!(sandbox = %sandbox_id, "supervisor reconnected; older session superseded");
        } else {
            tracing::info!(sandbox = %sandbox_id, "supervisor connected");
        }
        let accepted = GatewayMessage {
            msg: Some(gateway_message::Msg::Accepted(SessionAccepted {
                session_id: session_id.clone(),
                heartbeat_interval_secs: HEARTBEAT.as_secs() as u32,
                issuing_ca_sha256: self.issuing_ca_sha256(),
            })),
        };
        tx.send(accepted)
            .await
            .map_err(|_| Status::internal("session closed during setup"))?;

        // Read the supervisor's side until it ends; answer heartbeats.
        let sessions = self.sessions.clone();
        let relays = self.relays.clone();
        let sandboxes = self.sandboxes.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                match msg.msg {
                    Some(supervisor_message::Msg::Heartbeat(_)) => {
                        let beat = GatewayMessage {
                            msg: Some(gateway_message::Msg::Heartbeat(Heartbeat {
                                sent_at_ms: crate::now_ms(),
                                issuing_ca_sha256: sandboxes
                                    .minter
                                    .as_ref()
                                    .map(|m| m.issuing_ca_sha256())
                                    .unwrap_or_default(),
                            })),
                        };
                        // Never wait for room: a supervisor that stops reading would stall
                        // this loop, and with it the relay results it still sends.
                        match tx.try_send(beat) {
                            Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                        }
                    }
                    Some(supervisor_message::Msg::MainExit(exit)) => {
                        tracing::info!(sandbox = %sandbox_id, code = exit.exit_code, "main process exited");
                    }
                    Some(supervisor_message::Msg::RelayResult(r)) => {
                        tracing::debug!(sandbox = %sandbox_id, relay = %r.relay_id, ok = r.ok, "relay result");
                        if !r.ok {
                            relays.fail(&r.relay_id, &sandbox_id, r.error);
                        }
                    }
                    Some(supervisor_message::Msg::Hello(_)) | None => {}
                }
            }
            sessions.unregister(&sandbox_id, &session_id);
            tracing::info!(sandbox = %sandbox_id, "supervisor session ended");
        });
        let out = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(out)))
    }

    async fn renew_credential(
        &self,
        req: Request<RenewCredentialRequest>,
    ) -> Result<Response<RenewCredentialResponse>, Status> {
        let sandbox_id = req
            .extensions()
            .get::<Caller>()
            .and_then(|c| c.sandbox_id().map(str::to_string))
            .ok_or_else(|| Status::permission_denied("not a sandbox credential"))?;
        // A deleted sandbox's credential renews nothing.
        match self.sandboxes.pinned_host_key(&sandbox_id).await {
            Err(crate::GatewayError::NotFound(_)) => {
                return Err(Status::not_found(format!(
                    "sandbox '{sandbox_id}' has no record on this gateway: it was deleted"
                )));
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let minter = self.sandboxes.minter.as_ref().ok_or_else(|| {
            Status::failed_precondition("this gateway has no CA key to renew credentials with")
        })?;
        if req.get_ref().csr_pem.len() > 16 * 1024 {
            return Err(Status::invalid_argument(
                "the certificate request is larger than 16 KiB",
            ));
        }
        let renewed = minter.renew(&sandbox_id, &req.get_ref().csr_pem).await?;
        tracing::info!(sandbox = %sandbox_id, serial = %renewed.serial, "sandbox credential renewed");
        Ok(Response::new(RenewCredentialResponse {
            cert_pem: renewed.cert_pem,
            ca_pem: renewed.ca_pem,
            not_after_ms: renewed.not_after_ms,
        }))
    }

    async fn report_main_process_exit(
        &self,
        req: Request<ReportMainProcessExitRequest>,
    ) -> Result<Response<Empty>, Status> {
        let named = req.get_ref().sandbox_id.clone();
        own_sandbox(&req, &named)?;
        Err(Status::not_found(format!(
            "sandbox '{named}' has no record on this gateway (no compute driver in this build)"
        )))
    }
}
