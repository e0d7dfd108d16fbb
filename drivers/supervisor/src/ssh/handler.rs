//! One SSH connection: authentication (accept, see the module doc) and the per-channel
//! requests. Requests are answered here, synchronously, because russh keeps one
//! "wants reply" flag per channel: a reply sent later from another task could be matched to
//! the wrong request. The children and their I/O live in `process`.

use std::collections::HashMap;

use bytes::Bytes;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelWriteHalf, Pty, Sig};

use super::forward;
use super::process::{self, Input, Launch, PtySize, Running};

/// The state of one SSH connection.
pub(super) struct Connection {
    channels: HashMap<ChannelId, SessionChannel>,
}

/// A session channel: what the client asked for before starting a program, then the
/// running program.
struct SessionChannel {
    writer: ChannelWriteHalf<Msg>,
    env: Vec<(String, String)>,
    pty: Option<PtyRequest>,
    running: Option<Running>,
}

struct PtyRequest {
    term: String,
    size: PtySize,
}

impl Connection {
    pub(super) fn new() -> Self {
        Connection {
            channels: HashMap::new(),
        }
    }

    /// Starts `launch` on `channel` and answers the request.
    fn start(
        &mut self,
        channel: ChannelId,
        launch: Launch,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(ch) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        if ch.running.is_some() {
            // One program per channel (RFC 4254 6.5).
            return session.channel_failure(channel);
        }
        let what = launch.describe();
        let pty = ch.pty.as_ref().map(|p| (p.term.as_str(), p.size));
        let outputs = process::Outputs {
            stdout: Box::new(ch.writer.make_writer()),
            stderr: Box::new(ch.writer.make_writer_ext(Some(1))),
            handle: session.handle(),
            channel,
        };
        match process::spawn(&launch, pty, &ch.env, outputs) {
            Ok(running) => {
                tracing::debug!(%channel, program = %what, pty = ch.pty.is_some(), "started");
                ch.running = Some(running);
                session.channel_success(channel)
            }
            Err(e) => {
                // The request itself was fine; the program could not start. Tell the user on
                // stderr and end like a shell does for a command it cannot run.
                tracing::warn!(%channel, program = %what, error = %e, "cannot start");
                session.channel_success(channel)?;
                let line = format!("openshell-sandbox: cannot start {what}: {e}\r\n");
                session.extended_data(channel, 1, Bytes::from(line))?;
                session.exit_status_request(channel, 127)?;
                session.eof(channel)?;
                session.close(channel)
            }
        }
    }

    /// Passes client data to the channel's program, waiting a little when the program is
    /// more than its input budget behind.
    async fn feed_data(&mut self, channel: ChannelId, data: &[u8]) {
        let Some((sender, budget)) = self
            .channels
            .get(&channel)
            .and_then(|c| c.running.as_ref())
            .map(|r| (r.input.clone(), r.budget.clone()))
        else {
            return;
        };
        // A closed queue: the program no longer reads its input, the bytes are dropped.
        if sender.is_closed() {
            return;
        }
        let want = u32::try_from(data.len().clamp(1, process::INPUT_BUDGET)).unwrap_or(u32::MAX);
        let permit =
            tokio::time::timeout(process::INPUT_BUDGET_WAIT, budget.acquire_many_owned(want))
                .await
                .ok()
                .and_then(|p| p.ok());
        let _ = sender.send(Input::Data(Bytes::copy_from_slice(data), permit));
    }

    /// Passes EOF or a resize to the channel's program.
    fn feed(&mut self, channel: ChannelId, input: Input) {
        if let Some(running) = self.channels.get(&channel).and_then(|c| c.running.as_ref()) {
            let _ = running.input.send(input);
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        tracing::debug!(
            user,
            "ssh auth (none) accepted: the gateway authorized this relay"
        );
        Ok(Auth::Accept)
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let id = channel.id();
        // Requests and data arrive through the handler callbacks; the read half would only
        // duplicate them (and stall the connection once its buffer filled), so it is dropped.
        let (_read, writer) = channel.split();
        self.channels.insert(
            id,
            SessionChannel {
                writer,
                env: Vec::new(),
                pty: None,
                running: None,
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let host = host_to_connect.to_string();
        tokio::spawn(forward::direct_tcpip(channel, host, port_to_connect, reply));
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping the channel kills what still runs in it (see `Running`'s Drop).
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.feed(channel, Input::Eof);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.feed_data(channel, data).await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(ch) if ch.running.is_none() => {
                ch.pty = Some(PtyRequest {
                    term: term.to_string(),
                    size: PtySize::new(col_width, row_height, pix_width, pix_height),
                });
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        pix_width: u32,
        pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let size = PtySize::new(col_width, row_height, pix_width, pix_height);
        let known = match self.channels.get_mut(&channel) {
            Some(ch) => {
                if let Some(pty) = ch.pty.as_mut() {
                    pty.size = size;
                }
                true
            }
            None => false,
        };
        if !known {
            return session.channel_failure(channel);
        }
        self.feed(channel, Input::Resize(size));
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The user already has a shell in this sandbox: any variable is fine, but it must be
        // something `Command::env` accepts.
        let valid = !variable_name.is_empty()
            && !variable_name.contains(['=', '\0'])
            && !variable_value.contains('\0');
        match self.channels.get_mut(&channel) {
            Some(ch) if valid && ch.running.is_none() => {
                ch.env
                    .push((variable_name.to_string(), variable_value.to_string()));
                session.channel_success(channel)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, Launch::Shell, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match String::from_utf8(data.to_vec()) {
            Ok(command) if !command.contains('\0') => {
                self.start(channel, Launch::Exec(command), session)
            }
            _ => session.channel_failure(channel),
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match (name, process::sftp_server()) {
            ("sftp", Some(path)) => self.start(channel, Launch::Sftp(path), session),
            _ => {
                tracing::info!(%channel, subsystem = name, "subsystem refused: not available in this sandbox");
                session.channel_failure(channel)
            }
        }
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(running) = self.channels.get(&channel).and_then(|c| c.running.as_ref()) {
            running.signal(&signal);
        }
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }
}
