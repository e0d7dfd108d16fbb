//! The sandbox side of relays. The gateway asks (RelayOpen on the control stream); this end
//! first reaches the target inside the sandbox, then opens a CONNECT stream `relay/<id>` on
//! the supervisor's own connection and joins the two:
//!
//! ```text
//! RelayOpen{R, tcp, P} ─> connect 127.0.0.1:P ─ fails ─> RelayOpenResult{R, ok: false, why}
//!                                  │ ok
//!                                  └─> CONNECT relay/R ─> copy both ways until both sides end
//! RelayOpen{R, ssh}    ─> CONNECT relay/R ─> the embedded SSH server serves the stream
//! ```
//!
//! Reaching the target first means a user asking for a port nobody listens on gets the reason
//! at once instead of a stream that closes.

use std::sync::Arc;

use openshell_proto::{
    RelayOpen, RelayOpenResult, SupervisorMessage, relay_open, supervisor_message,
};
use openshell_transport::{Connection, TunnelTarget};
use tokio::sync::mpsc;

use crate::SshServer;

/// Serves one relay request to completion.
pub async fn serve(
    conn: Arc<Connection>,
    open: RelayOpen,
    results: mpsc::Sender<SupervisorMessage>,
    ssh: SshServer,
) {
    let relay = open.relay_id.clone();
    let refuse = |why: String| {
        let results = results.clone();
        let relay = relay.clone();
        async move {
            tracing::info!(%relay, reason = %why, "relay refused");
            let msg = SupervisorMessage {
                msg: Some(supervisor_message::Msg::RelayResult(RelayOpenResult {
                    relay_id: relay,
                    ok: false,
                    error: why,
                })),
            };
            let _ = results.send(msg).await;
        }
    };
    let target = TunnelTarget::Relay(relay.clone());
    match relay_open::Target::try_from(open.target) {
        Ok(relay_open::Target::Tcp) => {
            let Ok(port) = u16::try_from(open.port) else {
                return refuse(format!("port {} is not a TCP port", open.port)).await;
            };
            let mut local = match connect_local(port).await {
                Ok(s) => s,
                Err(e) => {
                    return refuse(format!(
                        "nothing accepts connections on port {port} inside the sandbox ({e})"
                    ))
                    .await;
                }
            };
            let mut remote = match conn.open_tunnel(&target).await {
                Ok(io) => io,
                Err(e) => return tracing::warn!(%relay, error = %e, "cannot open the relay stream"),
            };
            match tokio::io::copy_bidirectional(&mut local, &mut remote).await {
                Ok((up, down)) => tracing::debug!(%relay, port, up, down, "relay ended"),
                Err(e) => tracing::debug!(%relay, port, error = %e, "relay ended with an error"),
            }
        }
        Ok(relay_open::Target::Ssh) => {
            let remote = match conn.open_tunnel(&target).await {
                Ok(io) => io,
                Err(e) => return tracing::warn!(%relay, error = %e, "cannot open the relay stream"),
            };
            if let Err(e) = ssh.serve(remote).await {
                tracing::debug!(%relay, error = %e, "ssh connection ended with an error");
            }
        }
        _ => {
            refuse(format!(
                "relay target {} is not served by this supervisor",
                open.target
            ))
            .await
        }
    }
}

/// Connects to a port of the sandbox's loopback, IPv4 first, then IPv6.
async fn connect_local(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(v4) => tokio::net::TcpStream::connect(("::1", port))
            .await
            .map_err(|_| v4)?,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
