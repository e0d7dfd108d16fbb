//! Connecting the CLI to the resolved gateway: load its credentials, pick the path from
//! what worked last time, connect (QUIC first, TCP fallback), and remember the path.
//!
//! Credentials: mTLS reads `gateways/<name>/mtls/{ca.crt,tls.crt,tls.key}` (the key must be
//! owner-only); edge mode sends the stored `edge_token` over the TCP path (the proxy's CA
//! in `mtls/ca.crt`); plaintext needs nothing.

use std::time::Duration;

use openshell_transport::tls::ClientMaterial;
use openshell_transport::{ClientConfig, Connection, Connector, Endpoint, PathHint};

use crate::CliError;
use crate::args::{GlobalArgs, TransportChoice};
use crate::config::{AuthMode, ResolvedGateway};

/// A connection plus what the CLI knows about the gateway it reached.
pub struct GatewayConnection {
    pub conn: Connection,
    pub gateway: ResolvedGateway,
}

fn missing_mtls(gw: &ResolvedGateway, what: &str) -> CliError {
    CliError::hint(
        format!(
            "mTLS credentials for gateway '{}' are incomplete: {what} is missing in {}",
            gw.name,
            gw.mtls_dir.display()
        ),
        format!(
            "Issue a certificate with: openshell pki issue <user> --gateway {}\nOr import a bundle: openshell gateway add {} --name {} --bundle <file>",
            gw.name, gw.endpoint, gw.name
        ),
    )
}

fn read_pem(gw: &ResolvedGateway, file: &str, secret: bool) -> Result<Vec<u8>, CliError> {
    let path = gw.mtls_dir.join(file);
    if !path.exists() {
        return Err(missing_mtls(gw, file));
    }
    Ok(if secret {
        openshell_pki::fs::read_secret(&path)?
    } else {
        openshell_pki::fs::read_public(&path)?
    })
}

/// The transport settings for a resolved gateway.
pub fn client_config(
    gw: &ResolvedGateway,
    choice: TransportChoice,
) -> Result<ClientConfig, CliError> {
    let endpoint = Endpoint::parse(&gw.endpoint)?;
    let mut cfg = match gw.auth {
        AuthMode::Plaintext => ClientConfig::new(endpoint, None),
        AuthMode::Mtls => {
            let ca = read_pem(gw, "ca.crt", false)?;
            let cert = read_pem(gw, "tls.crt", false)?;
            let key = read_pem(gw, "tls.key", true)?;
            let material = ClientMaterial::from_pem(&ca, Some((&cert, &key)))?;
            ClientConfig::new(endpoint, Some(material))
        }
        AuthMode::Edge => {
            let token = openshell_pki::fs::read_secret(&gw.edge_token_path).map_err(|_| {
                CliError::hint(
                    format!("no sign-in token is stored for gateway '{}'", gw.name),
                    format!("Sign in with: openshell gateway login {}", gw.name),
                )
            })?;
            let ca = read_pem(gw, "ca.crt", false).map_err(|_| {
                CliError::hint(
                    format!(
                        "gateway '{}' is behind a proxy whose CA is not in {}/ca.crt",
                        gw.name,
                        gw.mtls_dir.display()
                    ),
                    "Place the proxy's CA certificate there (public CAs are not bundled)",
                )
            })?;
            let mut cfg = ClientConfig::new(endpoint, Some(ClientMaterial::from_pem(&ca, None)?));
            cfg.bearer = Some(String::from_utf8_lossy(&token).trim().to_string());
            // An authenticating reverse proxy speaks HTTP/2 over TCP only.
            cfg.hint = PathHint::TcpOnly;
            return Ok(cfg);
        }
    };
    tune(&mut cfg, crate::config::Env::process())?;
    cfg.hint = match choice {
        TransportChoice::Quic => PathHint::QuicOnly,
        TransportChoice::Tcp => PathHint::TcpOnly,
        TransportChoice::Auto => {
            // Remembered: when TCP was what worked last, QUIC gets only a short head start
            // (it may work again on this network) before TCP is tried.
            if last_transport(gw).as_deref() == Some("tcp") {
                cfg.fallback_after = Duration::from_millis(250);
            }
            PathHint::Auto
        }
    };
    Ok(cfg)
}

/// Applies `OPENSHELL_HEDGE` and `OPENSHELL_CONGESTION`.
fn tune(cfg: &mut ClientConfig, env: &crate::config::Env) -> Result<(), CliError> {
    let invalid = |var: &str, e: openshell_transport::TransportError| {
        CliError::hint(
            format!("{var} is not valid: {e}"),
            format!("Set {var} to one of the listed values, or unset it for the default"),
        )
    };
    if let Some(v) = &env.hedge {
        cfg.hedge = v.parse().map_err(|e| invalid("OPENSHELL_HEDGE", e))?;
    }
    if let Some(v) = &env.congestion {
        cfg.tuning.congestion = v.parse().map_err(|e| invalid("OPENSHELL_CONGESTION", e))?;
    }
    Ok(())
}

fn last_transport(gw: &ResolvedGateway) -> Option<String> {
    let path = gw.user_dir.join(crate::config::registry::METADATA_FILE);
    crate::config::metadata::GatewayMetadata::load(&path)
        .ok()
        .and_then(|(m, _)| m.transport_last_used)
}

/// Connects to the gateway: through its connection agent when one runs for it (see
/// [`crate::agent`]; `--no-agent` bypasses it), else directly, remembering the path that
/// worked.
pub async fn connect(
    gw: &ResolvedGateway,
    global: &GlobalArgs,
) -> Result<GatewayConnection, CliError> {
    if let Some(conn) = crate::agent::connect_if_running(gw, global).await {
        return Ok(GatewayConnection {
            conn,
            gateway: gw.clone(),
        });
    }
    let cfg = client_config(gw, global.transport)?;
    let spinner = crate::output::Spinner::start(format!("connecting to {}", gw.endpoint));
    let result = Connector::new(cfg)?.connect().await;
    spinner.finish().await;
    let conn = result?;
    if let Err(e) = crate::config::record_transport_used(gw, conn.transport().as_str()) {
        tracing::warn!(error = %e, "cannot remember the transport used");
    }
    Ok(GatewayConnection {
        conn,
        gateway: gw.clone(),
    })
}

/// Turns a failed RPC into the error users should see: the connection's close reason
/// (e.g. a rejected certificate) when that is what happened.
pub async fn rpc_error(conn: &Connection, status: tonic::Status) -> CliError {
    if let Some(reason) = conn.explain(&status) {
        return reason.into();
    }
    // The close frame may trail the failed stream by a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match conn.explain(&status) {
        Some(reason) => reason.into(),
        None => status.into(),
    }
}

impl GatewayConnection {
    /// [`rpc_error`] for this connection.
    pub async fn rpc_error(&self, status: tonic::Status) -> CliError {
        rpc_error(&self.conn, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openshell_transport::{Congestion, Hedge};

    fn env(hedge: Option<&str>, congestion: Option<&str>) -> crate::config::Env {
        crate::config::Env {
            hedge: hedge.map(str::to_string),
            congestion: congestion.map(str::to_string),
            ..Default::default()
        }
    }

    fn config() -> ClientConfig {
        ClientConfig::new(Endpoint::parse("https://127.0.0.1:1").unwrap(), None)
    }

    #[test]
    fn hedging_and_congestion_come_from_the_environment() {
        let mut cfg = config();
        tune(&mut cfg, &env(None, None)).unwrap();
        assert_eq!(
            (cfg.hedge, cfg.tuning.congestion),
            (Hedge::Auto, Congestion::Tolerant)
        );
        tune(&mut cfg, &env(Some("off"), Some("cubic"))).unwrap();
        assert_eq!(
            (cfg.hedge, cfg.tuning.congestion),
            (Hedge::Off, Congestion::Cubic)
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_the_choices() {
        let err = tune(&mut config(), &env(Some("twice"), None)).unwrap_err();
        assert!(err.to_string().contains("OPENSHELL_HEDGE"), "{err}");
        assert!(err.to_string().contains("off, auto or always"), "{err}");
        assert!(err.hint_text().is_some());
        let err = tune(&mut config(), &env(None, Some("vegas"))).unwrap_err();
        assert!(err.to_string().contains("OPENSHELL_CONGESTION"), "{err}");
        assert!(err.to_string().contains("tolerant"), "{err}");
    }
}
