//! The supervisor inside a sandbox (binary `openshell-sandbox`, the sandbox's entrypoint).
//!
//! Owns: dialing the gateway with this sandbox's own credential (QUIC, TCP fallback), one
//! long-lived control session (hello, heartbeats), reconnecting with backoff when the
//! gateway restarts or the network drops, and running the sandbox's main process and
//! reporting its exit, and the SSH server that relays of the SSH kind are handed to (`ssh`,
//! served on the relay's byte stream, never on a port). It runs as root and reads its
//! credential from files only root can read; everything it starts for the sandbox runs as
//! an unprivileged user (`workload`).
//!
//! ```text
//! start ─> spawn main process (if any)
//!   loop: connect ─> ConnectSupervisor: Hello ─> Accepted ─> heartbeats ...
//!           │ error / gateway gone
//!           └─> wait backoff(attempt) ─> loop
//! main process exits ─> MainExit on the session ─> exit with its code
//! ```

pub mod backoff;
pub mod config;
pub mod relay;
pub mod renew;
pub mod session;
pub mod ssh;
pub mod workload;

pub use config::{Config, ConfigError};
pub use ssh::{SshError, SshServer};
