//! The control session with the gateway, kept alive across gateway restarts and network
//! cuts. A client (user) disconnecting never touches it: it is the sandbox's own connection.

use std::time::Duration;

use futures::StreamExt;
use openshell_proto::supervisor_client::SupervisorClient;
use openshell_proto::{
    GatewayMessage, Heartbeat, MainProcessExit, SupervisorHello, SupervisorMessage,
    gateway_message, supervisor_message,
};
use openshell_transport::Connector;
use tokio::sync::{mpsc, watch};

use crate::Config;

/// Why one session ended.
#[derive(Debug)]
enum Ended {
    /// The main process exited and its exit was reported.
    MainExited,
    /// Connection or stream failure: reconnect.
    Lost(String),
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
    let connector = match Connector::new(cfg.client.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "invalid gateway settings");
            return;
        }
    };
    let mut attempt = 0u32;
    loop {
        match one_session(&cfg, &connector, &instance, &mut main_exit, &mut attempt).await {
            Ended::MainExited => return,
            Ended::Lost(why) => {
                let wait = crate::backoff::delay(attempt, rand::random::<f64>());
                tracing::warn!(reason = %why, retry_in = ?wait, "session lost; reconnecting");
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn one_session(
    cfg: &Config,
    connector: &Connector,
    instance: &str,
    main_exit: &mut watch::Receiver<Option<i32>>,
    attempt: &mut u32,
) -> Ended {
    let conn = match connector.connect().await {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => return Ended::Lost(e.to_string()),
    };
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
    let heartbeat = match down.next().await {
        Some(Ok(GatewayMessage {
            msg: Some(gateway_message::Msg::Accepted(a)),
        })) => {
            tracing::info!(session = %a.session_id, transport = %conn.transport(), "connected to the gateway");
            *attempt = 0;
            Duration::from_secs(u64::from(a.heartbeat_interval_secs.max(1)))
        }
        other => return Ended::Lost(format!("no session accepted: {other:?}")),
    };
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    loop {
        tokio::select! {
            msg = down.next() => match msg {
                Some(Ok(m)) => match m.msg {
                    Some(gateway_message::Msg::RelayOpen(r)) => {
                        tokio::spawn(crate::relay::serve(conn.clone(), r, tx.clone(), cfg.ssh.clone()));
                    }
                    Some(gateway_message::Msg::Heartbeat(_)) | Some(gateway_message::Msg::Accepted(_)) | None => {}
                },
                Some(Err(status)) => {
                    let why = conn.explain(&status).map(|e| e.to_string()).unwrap_or_else(|| status.to_string());
                    return Ended::Lost(why);
                }
                None => return Ended::Lost(conn.close_reason().map(|e| e.to_string()).unwrap_or_else(|| "the gateway ended the session".into())),
            },
            _ = tick.tick() => {
                let beat = SupervisorMessage { msg: Some(supervisor_message::Msg::Heartbeat(Heartbeat { sent_at_ms: 0 })) };
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
