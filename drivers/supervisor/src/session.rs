//! The control session with the gateway, kept alive across gateway restarts and network
//! cuts. A client (user) disconnecting never touches it: it is the sandbox's own connection.

use std::time::Duration;

use futures::StreamExt;
use openshell_proto::supervisor_client::SupervisorClient;
use openshell_proto::{
    GatewayMessage, Heartbeat, MainProcessExit, RenewCredentialRequest, SupervisorHello,
    SupervisorMessage, gateway_message, supervisor_message,
};
use openshell_transport::{Connection, Connector};
use tokio::sync::{mpsc, watch};

use crate::Config;
use crate::renew::Credential;

/// After a failed renewal, the next attempt waits this long (the credential still works:
/// renewal starts with a third of its life left).
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Why one session ended.
enum Ended {
    /// The main process exited and its exit was reported.
    MainExited,
    /// Connection or stream failure: reconnect.
    Lost(String),
    /// The credential was renewed: go on with it, on `connection` (already up, so the
    /// sandbox never looks disconnected) or, without one, after a reconnect.
    Renewed(Box<Renewed>),
}

/// The renewed credential, with a connector and (when it came up) a connection made with it.
struct Renewed {
    credential: Credential,
    connector: Connector,
    connection: Option<Connection>,
}

fn hello(cfg: &Config, instance: &str) -> SupervisorMessage {
    SupervisorMessage {
        msg: Some(supervisor_message::Msg::Hello(SupervisorHello {
            sandbox_id: cfg.sandbox_id.clone(),
            instance_id: instance.to_string(),
            supervisor_version: env!("CARGO_PKG_VERSION").to_string(),
            ssh_host_key: cfg.ssh.public_key_openssh(),
        })),
    }
}

/// Keeps a session until the main process has exited (`main_exit` carries its code) and the
/// exit was reported, or forever when there is no main process.
pub async fn run(cfg: Config, mut main_exit: watch::Receiver<Option<i32>>) {
    let instance = uuid::Uuid::new_v4().to_string();
    let mut connector = match Connector::new(cfg.client.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid gateway settings");
            return;
        }
    };
    let mut credential = cfg.credential.clone();
    let mut ready = None;
    let mut attempt = 0u32;
    loop {
        let session = Session {
            cfg: &cfg,
            connector: &connector,
            credential: &credential,
            instance: &instance,
        };
        match session
            .run(ready.take(), &mut main_exit, &mut attempt)
            .await
        {
            Ended::MainExited => return,
            Ended::Renewed(renewed) => {
                credential = renewed.credential;
                connector = renewed.connector;
                ready = renewed.connection;
            }
            Ended::Lost(why) => {
                let wait = crate::backoff::delay(attempt, rand::random::<f64>());
                tracing::warn!(reason = %why, retry_in = ?wait, "session lost; reconnecting");
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// What one session runs with.
struct Session<'a> {
    cfg: &'a Config,
    connector: &'a Connector,
    credential: &'a Credential,
    instance: &'a str,
}

impl Session<'_> {
    async fn run(
        &self,
        ready: Option<Connection>,
        main_exit: &mut watch::Receiver<Option<i32>>,
        attempt: &mut u32,
    ) -> Ended {
        let conn = match ready {
            Some(c) => std::sync::Arc::new(c),
            None => match self.connector.connect().await {
                Ok(c) => std::sync::Arc::new(c),
                Err(e) => return Ended::Lost(e.to_string()),
            },
        };
        one_session(self, conn, main_exit, attempt).await
    }

    /// Renews the credential over `conn`, stores it, and connects with it.
    async fn renew(&self, conn: &Connection) -> Result<Ended, String> {
        let (key, csr_pem) = Credential::new_key().map_err(|e| e.to_string())?;
        let answer = SupervisorClient::new(conn.channel())
            .renew_credential(RenewCredentialRequest { csr_pem })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let renewed =
            Credential::renewed(&key, answer.cert_pem, answer.ca_pem).map_err(|e| e.to_string())?;
        if let Err(e) = renewed.store(&self.cfg.credential_dir) {
            // A read-only directory (a Kubernetes Secret volume): the new credential lives
            // in memory; after a restart the gateway's delivered one is used (and renewed).
            tracing::info!(dir = %self.cfg.credential_dir.display(), error = %e, "renewed credential kept in memory only");
        }
        let mut client = self.cfg.client.clone();
        client.tls = Some(renewed.material().map_err(|e| e.to_string())?);
        let connector = Connector::new(client).map_err(|e| e.to_string())?;
        let connection = match connector.connect().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect with the renewed credential yet; reconnecting");
                None
            }
        };
        tracing::info!(renew_at = ?renewed.renew_at(), "sandbox credential renewed");
        Ok(Ended::Renewed(Box::new(Renewed {
            credential: renewed,
            connector,
            connection,
        })))
    }
}

async fn one_session(
    session: &Session<'_>,
    conn: std::sync::Arc<Connection>,
    main_exit: &mut watch::Receiver<Option<i32>>,
    attempt: &mut u32,
) -> Ended {
    let (cfg, instance) = (session.cfg, session.instance);
    let (tx, rx) = mpsc::channel::<SupervisorMessage>(16);
    let _ = tx.send(hello(cfg, instance)).await;
    let mut client = SupervisorClient::new(conn.channel());
    let mut down = match client
        .connect_supervisor(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let why = conn
                .explain(&status)
                .map(|e| e.to_string())
                .unwrap_or_else(|| status.to_string());
            return Ended::Lost(why);
        }
    };
    let (heartbeat, mut issuing_ca) = match down.next().await {
        Some(Ok(GatewayMessage {
            msg: Some(gateway_message::Msg::Accepted(a)),
        })) => {
            tracing::info!(session = %a.session_id, transport = %conn.transport(), "connected to the gateway");
            *attempt = 0;
            (
                Duration::from_secs(u64::from(a.heartbeat_interval_secs.max(1))),
                a.issuing_ca_sha256,
            )
        }
        other => return Ended::Lost(format!("no session accepted: {other:?}")),
    };
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let mut renew_after = std::time::SystemTime::now();
    loop {
        let now = std::time::SystemTime::now();
        if now >= renew_after && session.credential.due(now, &issuing_ca) {
            match session.renew(&conn).await {
                Ok(renewed) => {
                    // Relay requests already on their way down this session are still
                    // served (on this connection, which stays up while they last); new ones
                    // come down the next session, which the gateway prefers from its hello.
                    tokio::spawn(drain(down, conn.clone(), tx.clone(), cfg.ssh.clone()));
                    return renewed;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?RENEW_RETRY, "cannot renew the sandbox credential");
                    renew_after = now + RENEW_RETRY;
                }
            }
        }
        // Wake for the renewal even between heartbeats.
        let renew_in = session
            .credential
            .renew_at()
            .max(renew_after)
            .duration_since(now)
            .unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(renew_in) => {}
            msg = down.next() => match msg {
                Some(Ok(m)) => match m.msg {
                    Some(gateway_message::Msg::RelayOpen(r)) => {
                        tokio::spawn(crate::relay::serve(conn.clone(), r, tx.clone(), cfg.ssh.clone()));
                    }
                    Some(gateway_message::Msg::Heartbeat(beat)) => issuing_ca = beat.issuing_ca_sha256,
                    Some(gateway_message::Msg::Accepted(_)) | None => {}
                },
                Some(Err(status)) => {
                    let why = conn.explain(&status).map(|e| e.to_string()).unwrap_or_else(|| status.to_string());
                    return Ended::Lost(why);
                }
                None => return Ended::Lost(conn.close_reason().map(|e| e.to_string()).unwrap_or_else(|| "the gateway ended the session".into())),
            },
            _ = tick.tick() => {
                let beat = SupervisorMessage { msg: Some(supervisor_message::Msg::Heartbeat(Heartbeat { sent_at_ms: 0, issuing_ca_sha256: String::new() })) };
                if tx.send(beat).await.is_err() {
                    return Ended::Lost("session stream closed".into());
                }
            }
            changed = main_exit.changed() => {
                let code = *main_exit.borrow();
                if let (Ok(()), Some(code)) = (changed, code) {
                    let exit = SupervisorMessage { msg: Some(supervisor_message::Msg::MainExit(MainProcessExit { exit_code: code, reason: String::new() })) };
                    let _ = tx.send(exit).await;
                    // Give the report a moment to leave before the process ends.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    conn.close().await;
                    return Ended::MainExited;
                }
            }
        }
    }
}

/// How long a superseded session keeps serving the relay requests sent down it.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves the relay requests that still arrive on a superseded session, for [`DRAIN`].
async fn drain(
    mut down: tonic::Streaming<GatewayMessage>,
    conn: std::sync::Arc<Connection>,
    tx: mpsc::Sender<SupervisorMessage>,
    ssh: crate::SshServer,
) {
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some(Ok(m)) = down.next().await {
            if let Some(gateway_message::Msg::RelayOpen(r)) = m.msg {
                tokio::spawn(crate::relay::serve(
                    conn.clone(),
                    r,
                    tx.clone(),
                    ssh.clone(),
                ));
            }
        }
    })
    .await;
}
