//! Where CONNECT tunnels go. The client names a target; this decides, never the client:
//! `echo` (built in, for diagnostics and benchmarks) and `service/NAME` (operator-registered
//! with `--tunnel-target NAME=HOST:PORT`). Sandbox targets need a compute driver and the
//! supervisor relay, which this build does not have yet, so they are refused as such.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use openshell_transport::{BoxIo, RequestContext, TunnelRefusal, TunnelService, TunnelTarget};

use crate::auth::Revocations;

/// Buffer of the in-process echo target.
const ECHO_BUFFER: usize = 256 * 1024;

pub struct Tunnels {
    pub services: BTreeMap<String, String>,
    pub tls: bool,
    pub revocations: Arc<Revocations>,
}

impl TunnelService for Tunnels {
    fn open(
        &self,
        ctx: RequestContext,
        headers: HeaderMap,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelRefusal>> {
        let decision = self.decide(&ctx, &headers);
        Box::pin(async move {
            match decision? {
                Route::Echo => Ok(echo()),
                Route::Dial(name, addr) => {
                    let stream = tokio::net::TcpStream::connect(&addr).await.map_err(|e| {
                        TunnelRefusal::new(
                            StatusCode::BAD_GATEWAY,
                            format!("tunnel target '{name}' is unreachable: {e}"),
                        )
                    })?;
                    let _ = stream.set_nodelay(true);
                    Ok(Box::new(stream) as BoxIo)
                }
            }
        })
    }
}

enum Route {
    Echo,
    Dial(String, String),
}

impl Tunnels {
    fn decide(&self, ctx: &RequestContext, headers: &HeaderMap) -> Result<Route, TunnelRefusal> {
        // Tunnels are authorized like RPCs: the same certificate checks apply.
        crate::auth::authorize(
            "/openshell.v1.Tunnel/Open",
            headers,
            Some(ctx),
            self.tls,
            &self.revocations,
            std::time::SystemTime::now(),
        )
        .map_err(|s| TunnelRefusal::new(StatusCode::FORBIDDEN, s.message()))?;
        let target = TunnelTarget::from_headers(headers).ok_or_else(|| {
            TunnelRefusal::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "missing or malformed '{}' header",
                    openshell_transport::tunnel::TARGET_HEADER
                ),
            )
        })?;
        tracing::info!(%target, "tunnel requested");
        match target {
            TunnelTarget::Echo => Ok(Route::Echo),
            TunnelTarget::Service(name) => match self.services.get(&name) {
                Some(addr) => Ok(Route::Dial(name, addr.clone())),
                None => Err(TunnelRefusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no tunnel target named '{name}' is registered on this gateway"),
                )),
            },
            TunnelTarget::SandboxSsh(_)
            | TunnelTarget::SandboxPort(..)
            | TunnelTarget::Relay(_) => Err(TunnelRefusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "sandbox tunnels are not available: this gateway build has no compute driver",
            )),
        }
    }
}

/// An in-process echo: whatever is written comes back, until the writer half-closes.
fn echo() -> BoxIo {
    let (client, server) = tokio::io::duplex(ECHO_BUFFER);
    tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(server);
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    });
    Box::new(client)
}
