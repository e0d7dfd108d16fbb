//! `direct-tcpip` channels (`ssh -L`, `ssh -W`, VS Code's port forwards): the connection is
//! made from inside the sandbox, so "localhost" is the sandbox's own loopback.

use std::time::Duration;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

/// A target that does not answer within this time is reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `host:port`, then accepts the channel and splices the two until both
/// directions have ended; refuses the channel when the connection cannot be made.
pub(super) async fn direct_tcpip(
    channel: Channel<Msg>,
    host: String,
    port: u32,
    reply: ChannelOpenHandle,
) {
    let Ok(port) = u16::try_from(port) else {
        tracing::info!(%host, port, "direct-tcpip refused: port out of range");
        reply.reject(ChannelOpenFailure::ConnectFailed).await;
        return;
    };
    let connect = tokio::net::TcpStream::connect((host.as_str(), port));
    let mut tcp = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::info!(%host, port, error = %e, "direct-tcpip: cannot connect");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
        Err(_) => {
            tracing::info!(%host, port, "direct-tcpip: connect timed out");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    reply.accept().await;
    // The stream sends EOF when the target closes its side, and closes the channel when
    // dropped.
    let mut stream = channel.into_stream();
    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
        tracing::debug!(%host, port, error = %e, "direct-tcpip ended");
    }
}
