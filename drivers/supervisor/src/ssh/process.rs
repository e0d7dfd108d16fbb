//! The programs a session channel runs: spawning (with a pseudo-terminal or with pipes),
//! moving bytes between them and the channel, and reporting how they ended.
//!
//! ```text
//! client data ─> flow::Sink (budgeted queue) ─> feed task ─> child stdin (or pty)
//! child stdout ─> data, child stderr ─> extended data 1 (pty: one stream, as data)
//! child exits ─> output drained ─> EOF, exit-status | exit-signal, close
//! ```

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use russh::server::Handle;
use russh::{ChannelId, Sig};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc;

use super::flow::{self, Input, Sink, Tracked};
// The supervisor's own settings (its credential, this host key) that programs must not
// inherit; one list for the main process and SSH sessions.
use crate::config::hidden_from_children as hidden_vars;
use crate::workload::Workload;

/// After a terminal program exits, its output is read until the terminal has been quiet
/// this long: background jobs may keep the terminal open forever, and a session must end
/// when its shell does (as with sshd).
const PTY_DRAIN_IDLE: Duration = Duration::from_millis(200);

/// Where OpenSSH's sftp server is installed on Debian-like and other systems.
const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/lib/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/libexec/openssh/sftp-server",
];

/// What a session channel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Launch {
    /// The login shell.
    Shell,
    /// `/bin/sh -c COMMAND`.
    Exec(String),
    /// The sftp server at this path.
    Sftp(PathBuf),
}

impl Launch {
    pub(super) fn describe(&self) -> String {
        match self {
            Launch::Shell => format!("the login shell {}", login_shell().display()),
            Launch::Exec(_) => "/bin/sh".to_string(),
            Launch::Sftp(path) => path.display().to_string(),
        }
    }

    /// Program, `argv[0]`, and arguments.
    fn argv(&self) -> (PathBuf, String, Vec<String>) {
        match self {
            Launch::Shell => {
                let shell = login_shell();
                let name = shell
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "sh".into());
                // A leading '-' in argv[0] makes it a login shell (reads the profile).
                (shell, format!("-{name}"), Vec::new())
            }
            Launch::Exec(command) => (
                PathBuf::from("/bin/sh"),
                "sh".into(),
                vec!["-c".into(), command.clone()],
            ),
            Launch::Sftp(path) => (path.clone(), path.display().to_string(), Vec::new()),
        }
    }
}

/// Terminal size as a client sends it; zero means "unknown" and becomes 80x24.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PtySize {
    pub cols: u16,
    pub rows: u16,
    pub px_width: u16,
    pub px_height: u16,
}

impl PtySize {
    pub(super) fn new(cols: u32, rows: u32, px_width: u32, px_height: u32) -> Self {
        let clamp = |v: u32, default: u16| match v {
            0 => default,
            v => u16::try_from(v).unwrap_or(u16::MAX),
        };
        PtySize {
            cols: clamp(cols, 80),
            rows: clamp(rows, 24),
            px_width: clamp(px_width, 0),
            px_height: clamp(px_height, 0),
        }
    }

    fn to_pty(self) -> pty_process::Size {
        pty_process::Size::new_with_pixel(self.rows, self.cols, self.px_width, self.px_height)
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Where a program's output goes.
pub(super) struct Outputs {
    /// Channel data (window-aware writer).
    pub stdout: Writer,
    /// Channel extended data 1.
    pub stderr: Writer,
    /// For the exit report, EOF and close.
    pub handle: Handle,
    pub channel: ChannelId,
}

/// A program started on a channel. Dropping it (channel closed, connection gone) kills the
/// program's process group if the program is still running.
pub(super) struct Running {
    /// The program's input (stdin or terminal).
    pub input: Sink,
    group: Option<Pid>,
    exited: Arc<AtomicBool>,
}

impl Running {
    /// Delivers a client's `signal` request to the program's process group.
    pub(super) fn signal(&self, sig: &Sig) {
        let (Some(group), Some(signal)) =
            (self.group, sig_number(sig).and_then(Signal::from_named_raw))
        else {
            tracing::debug!(?sig, "signal not delivered (unknown signal or no process)");
            return;
        };
        if !self.exited.load(Ordering::Acquire) {
            let _ = rustix::process::kill_process_group(group, signal);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Once the program itself has exited, what it left running in the background (a
        // daemon it started, as VS Code's server installer does) is not killed: sshd
        // leaves it alone too.
        if let Some(group) = self.group
            && !self.exited.load(Ordering::Acquire)
        {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
    }
}

/// The sftp server installed in this sandbox, if any.
pub(super) fn sftp_server() -> Option<PathBuf> {
    SFTP_SERVERS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// `$SHELL` when it names an existing absolute path, else `/bin/bash`, else `/bin/sh`.
fn login_shell() -> PathBuf {
    choose_shell(std::env::var_os("SHELL").map(PathBuf::from), |p| {
        p.is_file()
    })
}

fn choose_shell(shell: Option<PathBuf>, exists: impl Fn(&Path) -> bool) -> PathBuf {
    if let Some(shell) = shell.filter(|s| s.is_absolute() && exists(s)) {
        return shell;
    }
    let bash = PathBuf::from("/bin/bash");
    if exists(&bash) {
        bash
    } else {
        PathBuf::from("/bin/sh")
    }
}

/// The environment added for a program: the client's `env` requests, then what the
/// session itself defines (these win, as in sshd): the user's `HOME`, `USER`, `LOGNAME`,
/// the shell and the terminal.
fn session_env(
    client_env: &[(String, String)],
    term: Option<&str>,
    shell: &Path,
    workload: &Workload,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = client_env.to_vec();
    env.extend(workload.env());
    env.push(("SHELL".into(), shell.display().to_string()));
    if let Some(term) = term {
        env.push(("TERM".into(), term.to_string()));
    }
    env
}

/// Starts `launch` (on a new pseudo-terminal when `pty` is given) and the tasks that move
/// its input and output; the exit is reported on the channel by those tasks.
pub(super) fn spawn(
    launch: &Launch,
    pty: Option<(&str, PtySize)>,
    client_env: &[(String, String)],
    workload: &Workload,
    outputs: Outputs,
) -> io::Result<Running> {
    let (program, arg0, args) = launch.argv();
    let env = session_env(
        client_env,
        pty.map(|(term, _)| term),
        &login_shell(),
        workload,
    );
    let dir = workload.start_dir().to_path_buf();
    let exited = Arc::new(AtomicBool::new(false));
    let (sink, rx, stuck) = flow::channel();
    let outputs = Outputs {
        stdout: Box::new(Tracked::new(outputs.stdout, stuck.clone())),
        stderr: Box::new(Tracked::new(outputs.stderr, stuck)),
        ..outputs
    };
    let group = match pty {
        Some((_, size)) => {
            let (pty, pts) = pty_process::open().map_err(io::Error::other)?;
            pty.resize(size.to_pty()).map_err(io::Error::other)?;
            let mut cmd = pty_process::Command::new(&program)
                .arg0(&arg0)
                .args(&args)
                .current_dir(&dir)
                .envs(env)
                .kill_on_drop(true);
            for name in hidden_vars() {
                cmd = cmd.env_remove(name);
            }
            if workload.switch {
                cmd = cmd.uid(workload.uid).gid(workload.gid);
            }
            let child = cmd.spawn(pts).map_err(io::Error::other)?;
            let group = child.id().and_then(pid);
            let (read, write) = pty.into_split();
            tokio::spawn(feed_pty(rx, write));
            tokio::spawn(pump_pty(child, read, outputs, exited.clone()));
            group
        }
        None => {
            let mut cmd = tokio::process::Command::new(&program);
            cmd.arg0(&arg0)
                .args(&args)
                .current_dir(&dir)
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                // Its own group, so a signal or the final kill reaches what it started too.
                .process_group(0)
                .kill_on_drop(true);
            for name in hidden_vars() {
                cmd.env_remove(name);
            }
            if workload.switch {
                cmd.uid(workload.uid).gid(workload.gid);
            }
            let mut child = cmd.spawn()?;
            let group = child.id().and_then(pid);
            tokio::spawn(feed_pipe(rx, child.stdin.take()));
            tokio::spawn(pump_pipes(child, outputs, exited.clone()));
            group
        }
    };
    Ok(Running {
        input: sink,
        group,
        exited,
    })
}

fn pid(id: u32) -> Option<Pid> {
    i32::try_from(id).ok().and_then(Pid::from_raw)
}

async fn feed_pipe(
    mut rx: mpsc::UnboundedReceiver<Input>,
    stdin: Option<tokio::process::ChildStdin>,
) {
    let Some(mut stdin) = stdin else { return };
    while let Some(input) = rx.recv().await {
        match input {
            Input::Data(bytes, _budget) => {
                // The program closed its input: stop (later data is dropped).
                if stdin.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // Dropping `stdin` closes the program's input.
            Input::Eof => return,
            Input::Resize(_) => {}
        }
    }
}

async fn feed_pty(mut rx: mpsc::UnboundedReceiver<Input>, mut pty: pty_process::OwnedWritePty) {
    while let Some(input) = rx.recv().await {
        match input {
            Input::Data(bytes, _budget) => {
                if pty.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // A terminal has no half-close (sshd ignores it too); the user ends input with
            // the terminal's own EOF character.
            Input::Eof => {}
            Input::Resize(size) => {
                let _ = pty.resize(size.to_pty());
            }
        }
    }
}

async fn pump_pipes(mut child: Child, outputs: Outputs, exited: Arc<AtomicBool>) {
    let Outputs {
        mut stdout,
        mut stderr,
        handle,
        channel,
    } = outputs;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let (_, _, status) = tokio::join!(
        copy_all(out, &mut stdout),
        copy_all(err, &mut stderr),
        async {
            let status = child.wait().await;
            exited.store(true, Ordering::Release);
            status
        }
    );
    report(status, &handle, channel).await;
}

/// Copies until the program's end of the pipe closes (or the channel does).
async fn copy_all<R: AsyncRead + Unpin>(from: Option<R>, to: &mut Writer) {
    if let Some(mut from) = from {
        let _ = tokio::io::copy(&mut from, to).await;
    }
}

async fn pump_pty(
    mut child: Child,
    mut pty: pty_process::OwnedReadPty,
    outputs: Outputs,
    exited: Arc<AtomicBool>,
) {
    let Outputs {
        mut stdout,
        handle,
        channel,
        ..
    } = outputs;
    let mut buf = vec![0u8; 32 * 1024];
    let mut status = None;
    loop {
        let read = match status {
            None => tokio::select! {
                r = pty.read(&mut buf) => r,
                s = child.wait() => {
                    exited.store(true, Ordering::Release);
                    status = Some(s);
                    continue;
                }
            },
            Some(_) => match tokio::time::timeout(PTY_DRAIN_IDLE, pty.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        // EIO: every process holding the terminal has gone.
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stdout.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        None => {
            let s = child.wait().await;
            exited.store(true, Ordering::Release);
            s
        }
    };
    report(status, &handle, channel).await;
}

/// EOF, then how the program ended, then close. Errors mean the client is gone already.
async fn report(status: io::Result<ExitStatus>, handle: &Handle, channel: ChannelId) {
    let _ = handle.eof(channel).await;
    match status {
        Ok(status) => {
            if let Some(code) = status.code() {
                let _ = handle
                    .exit_status_request(channel, u32::try_from(code).unwrap_or(255))
                    .await;
            } else if let Some(signal) = status.signal() {
                let _ = handle
                    .exit_signal_request(
                        channel,
                        sig_from_number(signal),
                        status.core_dumped(),
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
            tracing::debug!(%channel, %status, "program ended");
        }
        Err(e) => {
            tracing::warn!(%channel, error = %e, "cannot wait for the program");
            let _ = handle.exit_status_request(channel, 255).await;
        }
    }
    let _ = handle.close(channel).await;
}

/// The number of a signal named in an SSH `signal` request (names without "SIG").
fn sig_number(sig: &Sig) -> Option<i32> {
    let name = match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    };
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The SSH name of a signal that ended a program.
fn sig_from_number(number: i32) -> Sig {
    match SIGNALS.iter().find(|(_, v)| *v == number).map(|(n, _)| *n) {
        Some("ABRT") => Sig::ABRT,
        Some("ALRM") => Sig::ALRM,
        Some("FPE") => Sig::FPE,
        Some("HUP") => Sig::HUP,
        Some("ILL") => Sig::ILL,
        Some("INT") => Sig::INT,
        Some("KILL") => Sig::KILL,
        Some("PIPE") => Sig::PIPE,
        Some("QUIT") => Sig::QUIT,
        Some("SEGV") => Sig::SEGV,
        Some("TERM") => Sig::TERM,
        Some("USR1") => Sig::USR1,
        Some(other) => Sig::Custom(other.to_string()),
        // RFC 4254 wants a name; a number is the most useful thing left to say.
        None => Sig::Custom(number.to_string()),
    }
}

const SIGNALS: &[(&str, i32)] = &[
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STOP", libc::SIGSTOP),
    ("TERM", libc::SIGTERM),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hides;

    #[test]
    fn signal_names_round_trip() {
        for (name, number) in SIGNALS {
            let sig = sig_from_number(*number);
            assert_eq!(sig_number(&sig), Some(*number), "{name}");
        }
        assert_eq!(sig_number(&Sig::TERM), Some(libc::SIGTERM));
        assert_eq!(sig_number(&Sig::Custom("USR2".into())), Some(libc::SIGUSR2));
        assert_eq!(sig_number(&Sig::Custom("NOPE".into())), None);
        assert!(matches!(sig_from_number(libc::SIGKILL), Sig::KILL));
        assert!(matches!(sig_from_number(200), Sig::Custom(n) if n == "200"));
    }

    #[test]
    fn pty_size_defaults_and_clamps() {
        assert_eq!(
            PtySize::new(0, 0, 0, 0),
            PtySize {
                cols: 80,
                rows: 24,
                px_width: 0,
                px_height: 0
            }
        );
        let big = PtySize::new(100_000, 50, 1, 2);
        assert_eq!(
            (big.cols, big.rows, big.px_width, big.px_height),
            (u16::MAX, 50, 1, 2)
        );
    }

    #[test]
    fn shell_choice() {
        let all = |_: &Path| true;
        let none = |_: &Path| false;
        let only_sh = |p: &Path| p == Path::new("/bin/sh");
        assert_eq!(
            choose_shell(Some("/usr/bin/zsh".into()), all),
            PathBuf::from("/usr/bin/zsh")
        );
        // Relative or missing $SHELL falls back.
        assert_eq!(
            choose_shell(Some("zsh".into()), all),
            PathBuf::from("/bin/bash")
        );
        assert_eq!(choose_shell(None, only_sh), PathBuf::from("/bin/sh"));
        assert_eq!(
            choose_shell(Some("/usr/bin/zsh".into()), none),
            PathBuf::from("/bin/sh")
        );
    }

    #[test]
    fn secrets_are_hidden_from_programs() {
        assert!(hides("OPENSHELL_TLS_KEY_PEM"));
        assert!(hides("OPENSHELL_SSH_HOST_KEY_PEM"));
        assert!(!hides("OPENSHELL_SANDBOX_ID"));
        assert!(!hides("PATH"));
    }

    #[test]
    fn argv_of_each_launch() {
        let (program, arg0, args) = Launch::Exec("echo hi".into()).argv();
        assert_eq!(program, PathBuf::from("/bin/sh"));
        assert_eq!(arg0, "sh");
        assert_eq!(args, vec!["-c".to_string(), "echo hi".to_string()]);
        let (_, arg0, args) = Launch::Shell.argv();
        assert!(arg0.starts_with('-'), "{arg0}");
        assert!(args.is_empty());
    }
}
