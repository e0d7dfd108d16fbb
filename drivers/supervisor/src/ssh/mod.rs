//! The SSH server embedded in the supervisor: it serves one SSH connection on a byte stream
//! that is already open (a relay tunnel to the gateway), never on a listening socket, so no
//! TCP port is ever opened inside the sandbox.
//!
//! ```text
//!  user: ssh (ProxyCommand openshell ssh-proxy) ──QUIC──> gateway ──RelayOpen{TARGET_SSH}──┐
//!                                                                                          v
//!  supervisor: CONNECT relay/<id> back to the gateway ─> SshServer::serve(stream)
//!      session channel: pty-req, env, shell | exec | subsystem sftp ─> a child process
//!      direct-tcpip:    connect from inside the sandbox and splice (ssh -L / -W)
//! ```
//!
//! # Authentication: everything is accepted, on purpose
//!
//! Any user name is accepted with the `none` method (and any public key or password a
//! client offers instead). Access control is the gateway's job and happens before a byte
//! reaches this server: the relay exists only after the gateway verified the user's mTLS
//! client certificate and authorized it for this sandbox, and the sandbox is reachable only
//! through such a relay (the server is handed a stream; it listens nowhere). A second
//! check here would need per-user keys the sandbox does not have, and would add nothing the
//! gateway has not already decided. What the *client* checks is this server's host key:
//! the gateway generates it per sandbox, passes it in `OPENSHELL_SSH_HOST_KEY_PEM`, and
//! learns the public half from `SupervisorHello.ssh_host_key`, so `ssh` can pin it.
//!
//! # What a session channel supports
//!
//! `pty-req` (a real pseudo-terminal; `window-change` resizes it), `env`, `shell` (login
//! shell: `$SHELL`, else `/bin/bash`, else `/bin/sh`), `exec` (`/bin/sh -c CMD`, with a
//! terminal only when one was requested), `subsystem sftp` (OpenSSH's `sftp-server` when the
//! sandbox has it), `signal`, stdin with EOF, stdout as data and stderr as extended data
//! (separate when there is no terminal), `exit-status` or `exit-signal`, then EOF and close.
//! Children run in the home directory, in their own process group (session, with a
//! terminal), without the supervisor's `OPENSHELL_*` settings (its credential and this host
//! key) in their environment. If the program still runs when its channel closes or the
//! connection ends, its whole group is killed; what a program that has exited left running
//! in the background is left alone, as sshd does (VS Code's server is started that way).
//!
//! Flow control: russh re-opens the client's window when data arrives, not when it is
//! consumed, and one loop per connection carries all of it, so client data is queued per
//! channel against a byte budget and waits for a slow consumer only while that cannot
//! deadlock the loop (see `flow`).
//!
//! Not supported: X11 and agent forwarding, remote forwarding (`ssh -R`), Unix-socket
//! forwarding; they are refused.

mod flow;
mod forward;
mod handler;
mod process;

use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{Algorithm, PrivateKey};
use russh::{MethodKind, MethodSet, SshId};

use crate::workload::Workload;

/// Why the SSH server could not start or a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    #[error(
        "the SSH host key (ssh_host_key in the credential directory) is not a usable OpenSSH private key: {0}; pass an unencrypted key as written by ssh-keygen -t ed25519"
    )]
    HostKey(String),
    #[error("ssh connection failed: {0}")]
    Protocol(#[from] russh::Error),
}

/// The supervisor's SSH server. Cheap to clone: every clone shares the host key and config.
#[derive(Clone)]
pub struct SshServer {
    inner: Arc<Inner>,
    /// Who sessions run as.
    workload: Arc<Workload>,
}

struct Inner {
    config: Arc<russh::server::Config>,
    public_openssh: String,
}

impl std::fmt::Debug for SshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config holds the private key: show only the public half.
        f.debug_struct("SshServer")
            .field("host_key", &self.inner.public_openssh)
            .finish()
    }
}

impl SshServer {
    /// Host key from an OpenSSH private key PEM (the gateway generates an ed25519 key per
    /// sandbox and delivers it with the credential); `None` = generate an ephemeral one and
    /// log a warning that host-key pinning will fail after restarts. Sessions run as the
    /// server's own user until [`run_as`](Self::run_as).
    pub fn new(host_key_pem: Option<&str>) -> Result<Self, SshError> {
        let key = match host_key_pem {
            Some(pem) => {
                let key = PrivateKey::from_openssh(pem.trim())
                    .map_err(|e| SshError::HostKey(e.to_string()))?;
                if key.is_encrypted() {
                    return Err(SshError::HostKey("the key is encrypted".into()));
                }
                if matches!(key.algorithm(), Algorithm::Dsa) {
                    return Err(SshError::HostKey("DSA keys are not supported".into()));
                }
                key
            }
            None => {
                tracing::warn!(
                    "no SSH host key given (ssh_host_key in the credential directory): using an ephemeral one; \
                     clients that pinned this sandbox's key will refuse it after a restart"
                );
                PrivateKey::from(Ed25519Keypair::from_seed(&rand::random::<[u8; 32]>()))
            }
        };
        let public_openssh = openssh_without_comment(key.public_key())?;
        let config = russh::server::Config {
            server_id: SshId::Standard(
                format!("SSH-2.0-OpenShell_{}", env!("CARGO_PKG_VERSION")).into(),
            ),
            methods: MethodSet::from(
                &[
                    MethodKind::None,
                    MethodKind::PublicKey,
                    MethodKind::Password,
                    MethodKind::KeyboardInteractive,
                ][..],
            ),
            // Nothing is ever rejected, so there is no timing to hide.
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![key],
            // An idle interactive shell is normal: no inactivity cut-off. Dead peers are
            // found by keepalives instead (10 unanswered at 30 s = 5 minutes).
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 10,
            // A bigger window than russh's 2 MiB keeps bulk copies (scp, 100 MiB stdin)
            // from waiting on window updates across a relay with a real round-trip time.
            window_size: 8 * 1024 * 1024,
            ..Default::default()
        };
        Ok(SshServer {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                public_openssh,
            }),
            workload: Arc::new(Workload::current()),
        })
    }

    /// Sessions start as `workload`.
    pub fn run_as(mut self, workload: Workload) -> Self {
        self.workload = Arc::new(workload);
        self
    }

    /// `"ssh-ed25519 AAAA..."` (no comment), sent to the gateway in
    /// `SupervisorHello.ssh_host_key`.
    pub fn public_key_openssh(&self) -> String {
        self.inner.public_openssh.clone()
    }

    /// Serves one SSH connection on an already-open byte stream until it ends. A client
    /// that disconnects, cleanly or not, ends it with `Ok`; errors are protocol failures.
    pub async fn serve<S>(&self, stream: S) -> Result<(), SshError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handler = handler::Connection::new(self.workload.clone());
        let session = russh::server::run_stream(self.inner.config.clone(), stream, handler).await?;
        match session.await {
            Ok(()) => Ok(()),
            Err(e) if peer_went_away(&e) => {
                // A client killed or cut off without a goodbye: the connection is over, not
                // broken.
                tracing::debug!(reason = %e, "ssh client went away");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn peer_went_away(e: &russh::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        russh::Error::HUP | russh::Error::Disconnect => true,
        russh::Error::IO(io) => matches!(
            io.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// `ALGORITHM BASE64`, the form known_hosts lines and the hello carry.
fn openssh_without_comment(key: &russh::keys::PublicKey) -> Result<String, SshError> {
    let text = key
        .to_openssh()
        .map_err(|e| SshError::HostKey(e.to_string()))?;
    Ok(text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_key_is_ed25519_without_comment() {
        let server = SshServer::new(None).unwrap();
        let public = server.public_key_openssh();
        let parts: Vec<&str> = public.split(' ').collect();
        assert_eq!(parts.len(), 2, "{public}");
        assert_eq!(parts[0], "ssh-ed25519");
        assert!(parts[1].starts_with("AAAA"), "{public}");
        // Two ephemeral keys differ.
        assert_ne!(public, SshServer::new(None).unwrap().public_key_openssh());
    }

    #[test]
    fn given_key_is_used() {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(&[7u8; 32]));
        let pem = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        let server = SshServer::new(Some(&pem)).unwrap();
        assert_eq!(
            server.public_key_openssh(),
            openssh_without_comment(key.public_key()).unwrap()
        );
    }

    #[test]
    fn garbage_key_is_a_clear_error() {
        let err = SshServer::new(Some("not a key")).unwrap_err().to_string();
        assert!(err.contains("ssh_host_key"), "{err}");
        assert!(err.contains("ssh-keygen"), "{err}");
    }
}
