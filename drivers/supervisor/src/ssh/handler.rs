//! One SSH connection: authentication (accept, see the module doc) and the per-channel
//! requests. Requests are answered here, synchronously, because russh keeps one
//! "wants reply" flag per channel: a reply sent later from another task could be matched to
//! the wrong request. The children and their I/O live in `process`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelWriteHalf, Pty, Sig};

use super::flow::{self, Sink};
use super::forward;
use super::process::{self, Launch, PtySize, Running};
use crate::workload::Workload;

/// The state of one SSH connection.
pub(super) struct Connection {
    channels: HashMap<ChannelId, Chan>,
    workload: Arc<Workload>,
}

enum Chan {
    Session(SessionChannel),
    /// A direct-tcpip channel: client data goes to its TCP connection.
    Forward(Sink),
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
    pub(super) fn new(workload: Arc<Workload>) -> Self {
        Connection {
            channels: HashMap::new(),
            workload,
        }
    }

    /// Starts `launch` on `channel` and answers the request.
    fn start(
        &mut self,
        channel: ChannelId,
        launch: Launch,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(Chan::Session(ch)) = self.channels.get_mut(&channel) else {
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
        match process::spawn(&launch, pty, &ch.env, &self.workload, outputs) {
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

    /// Where client data for `channel` goes, if anything reads it.
    fn sink(&self, channel: ChannelId) -> Option<&Sink> {
        match self.channels.get(&channel)? {
            Chan::Session(s) => s.running.as_ref().map(|r| &r.input),
            Chan::Forward(sink) => Some(sink),
        }
    }

    /// Forgets forwards whose connection failed (the channel never opened, so no close will
    /// come for them).
    fn forget_dead_forwards(&mut self) {
        self.channels
            .retain(|_, c| !matches!(c, Chan::Forward(sink) if sink.is_closed()));
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
        self.forget_dead_forwards();
        self.channels.insert(
            id,
            Chan::Session(SessionChannel {
                writer,
                env: Vec::new(),
                pty: None,
                running: None,
            }),
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
        let (sink, input, stuck) = flow::channel();
        self.forget_dead_forwards();
        self.channels.insert(channel.id(), Chan::Forward(sink));
        let target = forward::Target {
            host: host_to_connect.to_string(),
            port: port_to_connect,
        };
        tokio::spawn(forward::direct_tcpip(channel, target, reply, input, stuck));
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
        if let Some(sink) = self.sink(channel) {
            sink.eof();
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(sink) = self.sink(channel) {
            sink.data(data).await;
        }
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
            Some(Chan::Session(ch)) if ch.running.is_none() => {
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
        let Some(Chan::Session(ch)) = self.channels.get_mut(&channel) else {
            return session.channel_failure(channel);
        };
        if let Some(pty) = ch.pty.as_mut() {
            pty.size = size;
        }
        if let Some(running) = &ch.running {
            running.input.resize(size);
        }
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
            Some(Chan::Session(ch)) if valid && ch.running.is_none() => {
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
        if let Some(Chan::Session(SessionChannel {
            running: Some(running),
            ..
        })) = self.channels.get(&channel)
        {
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
