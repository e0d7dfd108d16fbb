//! TCP fallback client: TLS 1.3 + HTTP/2 (h2c for a plaintext loopback gateway). The HTTP/2
//! part is shared with the agent's Unix socket (`h2.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::h2::{self, Peer};
use super::{ClientConfig, Connection, bearer_value};
use crate::TransportError;

pub(super) async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    cfg: &ClientConfig,
) -> Result<Connection, TransportError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| TransportError::Unreachable {
            addr: addr.to_string(),
            detail: format!("TCP: {e}"),
        })?;
    let _ = tcp.set_nodelay(true);
    let bearer = bearer_value(&cfg.bearer)?;
    let peer = Peer::Gateway(addr);
    match tls {
        Some(tls) => {
            let name = ServerName::try_from(server_name.to_string()).map_err(|e| {
                TransportError::Config(format!(
                    "'{server_name}' is not a valid TLS server name: {e}"
                ))
            })?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| match crate::close::describe_tls_in_chain(&e) {
                    Some(text) if text.starts_with("the gateway's certificate") => {
                        TransportError::ServerCertificate(text)
                    }
                    Some(text) => TransportError::Rejected(text),
                    None => TransportError::Unreachable {
                        addr: addr.to_string(),
                        detail: format!("TLS: {e}"),
                    },
                })?;
            h2::handshake(stream, peer, cfg, http::uri::Scheme::HTTPS, bearer).await
        }
        None => h2::handshake(tcp, peer, cfg, http::uri::Scheme::HTTP, bearer).await,
    }
}
