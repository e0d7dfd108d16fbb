//! Relays: how a user's tunnel reaches a sandbox that is never exposed on the network.
//!
//! ```text
//!  CLI                        gateway                                supervisor (in sandbox)
//!   CONNECT sandbox/N/ssh ──>  look up N, its live session
//!                              pending[R] = waiter        RelayOpen{R, ssh} ──> control stream
//!                                                         <── CONNECT relay/R  (its own cert)
//!                              pending[R] taken, checked: same sandbox
//!   bytes <──────────────────  splice (duplex pipe)  ──────────────────> SSH server / port P
//! ```
//!
//! If the supervisor cannot reach the target (nothing listens on the port) it answers
//! `RelayOpenResult{ok: false}` instead of connecting, and the user gets that reason. A relay
//! not claimed within [`RELAY_TIMEOUT`] is dropped.
//!
//! This module is the bookkeeping only: which relay ids are waiting, for which sandbox, and
//! the limits. It does no I/O; `tunnels.rs` and the supervisor service drive it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openshell_transport::BoxIo;
use tokio::sync::oneshot;

/// How long a user's tunnel waits for the supervisor to connect back.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Relays waiting at once, in all (protects the gateway from a flood of tunnel requests).
pub const MAX_PENDING: usize = 256;
/// Relays waiting at once for one sandbox.
pub const MAX_PENDING_PER_SANDBOX: usize = 32;

/// What the waiting user tunnel receives: the supervisor's side, or why there is none.
pub type RelayOutcome = Result<BoxIo, String>;

struct Pending {
    sandbox_id: String,
    since: Instant,
    deliver: oneshot::Sender<RelayOutcome>,
}

/// Why a relay could not be requested or claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("too many tunnels are being opened to sandbox '{0}' at once: retry in a moment")]
    Busy(String),
    #[error("relay '{0}' is unknown or has expired")]
    Unknown(String),
    #[error("relay '{relay}' belongs to another sandbox than '{caller}'")]
    WrongSandbox { relay: String, caller: String },
}

/// Relays requested from supervisors and not yet claimed.
#[derive(Default)]
pub struct Relays {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new relay to `sandbox_id`; the receiver resolves when the supervisor
    /// connects back (or reports failure). Expired entries are dropped first.
    pub fn request(
        &self,
        sandbox_id: &str,
        now: Instant,
    ) -> Result<(String, oneshot::Receiver<RelayOutcome>), RelayError> {
        let mut map = self.lock();
        map.retain(|_, p| now.duration_since(p.since) < RELAY_TIMEOUT && !p.deliver.is_closed());
        let for_sandbox = map.values().filter(|p| p.sandbox_id == sandbox_id).count();
        if map.len() >= MAX_PENDING || for_sandbox >= MAX_PENDING_PER_SANDBOX {
            return Err(RelayError::Busy(sandbox_id.to_string()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        map.insert(
            id.clone(),
            Pending {
                sandbox_id: sandbox_id.to_string(),
                since: now,
                deliver: tx,
            },
        );
        Ok((id, rx))
    }

    /// The supervisor of `caller_sandbox` claims relay `id`: returns where to deliver its
    /// stream. A relay may be claimed once, and only by the sandbox it was requested from.
    pub fn claim(
        &self,
        id: &str,
        caller_sandbox: &str,
    ) -> Result<oneshot::Sender<RelayOutcome>, RelayError> {
        let mut map = self.lock();
        match map.get(id) {
            None => Err(RelayError::Unknown(id.to_string())),
            Some(p) if p.sandbox_id != caller_sandbox => Err(RelayError::WrongSandbox {
                relay: id.to_string(),
                caller: caller_sandbox.to_string(),
            }),
            Some(_) => Ok(map.remove(id).map(|p| p.deliver).expect("checked above")),
        }
    }

    /// The supervisor reports that it cannot open relay `id` (its target is unreachable).
    pub fn fail(&self, id: &str, caller_sandbox: &str, why: String) {
        if let Ok(deliver) = self.claim(id, caller_sandbox) {
            let _ = deliver.send(Err(why));
        }
    }

    /// Forgets relay `id` (its user gave up or timed out).
    pub fn cancel(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Relays waiting now.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_is_claimed_once_and_only_by_its_own_sandbox() {
        let relays = Relays::default();
        let now = Instant::now();
        let (id, _rx) = relays.request("a", now).unwrap();
        assert_eq!(
            relays.claim(&id, "b").err(),
            Some(RelayError::WrongSandbox {
                relay: id.clone(),
                caller: "b".into()
            })
        );
        assert!(relays.claim(&id, "a").is_ok());
        assert_eq!(
            relays.claim(&id, "a").err(),
            Some(RelayError::Unknown(id.clone()))
        );
        assert_eq!(relays.pending(), 0);
    }

    #[test]
    fn limits_count_only_live_relays() {
        let relays = Relays::default();
        let now = Instant::now();
        let mut keep = Vec::new();
        for _ in 0..MAX_PENDING_PER_SANDBOX {
            keep.push(relays.request("a", now).unwrap());
        }
        assert_eq!(
            relays.request("a", now).err(),
            Some(RelayError::Busy("a".into()))
        );
        // Another sandbox has its own allowance.
        assert!(relays.request("b", now).is_ok());
        // Once they expire, room again.
        let later = now + RELAY_TIMEOUT;
        assert!(relays.request("a", later).is_ok());
        // A waiter that went away frees its slot at once.
        let (_, rx) = relays.request("c", later).unwrap();
        drop(rx);
        for _ in 0..MAX_PENDING_PER_SANDBOX {
            relays.request("c", later).unwrap();
        }
        drop(keep);
    }

    #[test]
    fn failure_reaches_the_waiter() {
        let relays = Relays::default();
        let (id, mut rx) = relays.request("a", Instant::now()).unwrap();
        relays.fail(&id, "b", "nope".into()); // not its sandbox: ignored
        assert!(rx.try_recv().is_err());
        relays.fail(&id, "a", "connection refused".into());
        match rx.try_recv() {
            Ok(Err(why)) => assert_eq!(why, "connection refused"),
            _ => panic!("the waiter did not get the failure"),
        }
    }
}
