//! The supervisor inside a sandbox (binary `openshell-sandbox`, the sandbox's entrypoint).
//!
//! Owns: dialing the gateway with this sandbox's own credential (QUIC, TCP fallback), one
//! long-lived control session (hello, heartbeats), reconnecting with backoff when the
//! gateway restarts or the network drops, and running the sandbox's main process and
//! reporting its exit. Does not own (yet): the sandbox side of relays (SSH server, exec, port
//! forwards), which arrive with the relay path.
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
pub mod session;

pub use config::{Config, ConfigError};
