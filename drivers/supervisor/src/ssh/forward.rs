//! `direct-tcpip` channels (`ssh -L`, `ssh -W`, VS Code's port forwards): the connection is
//! made from inside the sandbox, so "localhost" is the sandbox's own loopback.
//!
//! Client data arrives through the handler into the channel's input queue (see `flow`),
//! like a program's stdin; the target's bytes go out through a window-aware writer.

use std::sync::Arc;
use std::time::Duration;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::flow::{Input, Tracked};

/// A target that does not answer within this time is reported as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the client asked to connect.
pub(super) struct Target {
    pub host: String,
    pub port: u32,
}

/// Connects to the target, then accepts the channel and moves bytes both ways until both
/// directions have ended; refuses the channel when the connection cannot be made.
pub(super) async fn direct_tcpip(
    channel: Channel<Msg>,
    target: Target,
    reply: ChannelOpenHandle,
    mut input: mpsc::UnboundedReceiver<Input>,
    stuck: Arc<watch::Sender<bool>>,
) {
    let Target { host, port } = target;
    let tcp = match connect(&host, port).await {
        Ok(tcp) => tcp,
        Err(why) => {
            tracing::info!(%host, port, %why, "direct-tcpip refused");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            // Dropping `input` tells the handler this channel is gone.
            return;
        }
    };
    reply.accept().await;
    // Client data comes through the handler (see the module doc): the read half is unused.
    let (read, channel) = channel.split();
    drop(read);
    let (mut from_target, mut to_target) = tcp.into_split();
    let mut to_client = Tracked::new(channel.make_writer(), stuck);
    // Set when the channel is gone (closed by the client, or the connection ended): the
    // target's bytes then have nowhere to go.
    let (gone_tx, gone) = tokio::sync::oneshot::channel::<()>();
    let upstream = async {
        loop {
            match input.recv().await {
                Some(Input::Data(bytes, _budget)) => {
                    if to_target.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Input::Resize(_)) => {}
                Some(Input::Eof) => break,
                None => {
                    let _ = gone_tx.send(());
                    break;
                }
            }
        }
        // Client EOF (or channel gone): half-close toward the target.
        let _ = to_target.shutdown().await;
    };
    let downstream = async {
        tokio::select! {
            _ = tokio::io::copy(&mut from_target, &mut to_client) => {
                // The target closed its side: EOF to the client.
                let _ = channel.eof().await;
            }
            // (Only a real signal counts: the sender is also dropped on a client EOF.)
            Ok(()) = gone => {}
        }
    };
    tokio::join!(upstream, downstream);
    let _ = channel.close().await;
}

async fn connect(host: &str, port: u32) -> Result<TcpStream, String> {
    let port = u16::try_from(port).map_err(|_| format!("port {port} is out of range"))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            Ok(tcp)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}
