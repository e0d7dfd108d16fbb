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
//! not claimed within [`RelayLimits::timeout`] is dropped; that bound covers handing the
//! request to the supervisor too (one that stops reading its control stream must not hang
//! users' tunnels). How many relays may wait at once is bounded in all, per sandbox and per
//! user, so no one user can take every slot.
//!
//! This module is the bookkeeping only: which relay ids are waiting, for which sandbox, and
//! the limits. It does no I/O; `tunnels.rs` and the supervisor service drive it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openshell_transport::BoxIo;
use tokio::sync::oneshot;

/// Bounds on relays waiting for their supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// How long a user's tunnel waits, in all, for its request to reach the supervisor and
    /// the supervisor to connect back. Default 10 s: a live supervisor answers in a round
    /// trip; longer only keeps users staring at a hung `ssh`.
    pub timeout: Duration,
    /// Relays waiting at once, in all. Default 256: protects the gateway from a flood of
    /// tunnel requests (each holds a user's request open for up to `timeout`).
    pub max_pending: usize,
    /// Relays waiting at once for one sandbox. Default 32 (a supervisor's control queue
    /// holds 64 messages; more waiting relays would only wait on a busy supervisor).
    pub per_sandbox: usize,
    /// Relays waiting at once for one user. Default 64, a quarter of `max_pending`: a user
    /// opening tunnels in a loop takes at most that share, so at least four users always
    /// find room; raising it lets fewer users lock the others out.
    pub per_user: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            timeout: Duration::from_secs(10),
            max_pending: 256,
            per_sandbox: 32,
            per_user: 64,
        }
    }
}

/// What the waiting user tunnel receives: the supervisor's side, or why there is none.
pub type RelayOutcome = Result<BoxIo, String>;

struct Pending {
    sandbox_id: String,
    user: String,
    since: Instant,
    deliver: oneshot::Sender<RelayOutcome>,
}

/// Why a relay could not be requested or claimed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("too many tunnels are being opened to sandbox '{0}' at once: retry in a moment")]
    Busy(String),
    #[error(
        "'{0}' is opening too many tunnels at once: wait for those to connect or time out, then retry"
    )]
    UserBusy(String),
    #[error("relay '{0}' is unknown or has expired")]
    Unknown(String),
    #[error("relay '{relay}' belongs to another sandbox than '{caller}'")]
    WrongSandbox { relay: String, caller: String },
}

/// Relays requested from supervisors and not yet claimed.
#[derive(Default)]
pub struct Relays {
    pending: Mutex<HashMap<String, Pending>>,
    limits: RelayLimits,
}

impl Relays {
    pub fn new(limits: RelayLimits) -> Self {
        Relays {
            pending: Mutex::default(),
            limits,
        }
    }

    pub fn limits(&self) -> &RelayLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new relay to `sandbox_id` for `user`; the receiver resolves when the
    /// supervisor connects back (or reports failure). Expired entries are dropped first.
    pub fn request(
        &self,
        sandbox_id: &str,
        user: &str,
        now: Instant,
    ) -> Result<(String, oneshot::Receiver<RelayOutcome>), RelayError> {
        let limits = self.limits;
        let mut map = self.lock();
        map.retain(|_, p| now.duration_since(p.since) < limits.timeout && !p.deliver.is_closed());
        // The user's share first: a user at its share is told so, whoever else waits.
        if map.values().filter(|p| p.user == user).count() >= limits.per_user {
            return Err(RelayError::UserBusy(user.to_string()));
        }
        let for_sandbox = map.values().filter(|p| p.sandbox_id == sandbox_id).count();
        if map.len() >= limits.max_pending || for_sandbox >= limits.per_sandbox {
            return Err(RelayError::Busy(sandbox_id.to_string()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        map.insert(
            id.clone(),
            Pending {
                sandbox_id: sandbox_id.to_string(),
                user: user.to_string(),
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
        let (id, _rx) = relays.request("a", "alice", now).unwrap();
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
        let limits = RelayLimits::default();
        let mut keep = Vec::new();
        for _ in 0..limits.per_sandbox {
            keep.push(relays.request("a", "alice", now).unwrap());
        }
        assert_eq!(
            relays.request("a", "alice", now).err(),
            Some(RelayError::Busy("a".into()))
        );
        // Another sandbox has its own allowance.
        assert!(relays.request("b", "alice", now).is_ok());
        // Once they expire, room again.
        let later = now + limits.timeout;
        assert!(relays.request("a", "alice", later).is_ok());
        // A waiter that went away frees its slot at once.
        let (_, rx) = relays.request("c", "alice", later).unwrap();
        drop(rx);
        for _ in 0..limits.per_sandbox {
            relays.request("c", "alice", later).unwrap();
        }
        drop(keep);
    }

    #[test]
    fn failure_reaches_the_waiter() {
        let relays = Relays::default();
        let (id, mut rx) = relays.request("a", "alice", Instant::now()).unwrap();
        relays.fail(&id, "b", "nope".into()); // not its sandbox: ignored
        assert!(rx.try_recv().is_err());
        relays.fail(&id, "a", "connection refused".into());
        match rx.try_recv() {
            Ok(Err(why)) => assert_eq!(why, "connection refused"),
            _ => panic!("the waiter did not get the failure"),
        }
    }

    #[test]
    fn one_user_cannot_take_every_slot() {
        let relays = Relays::default();
        let limits = *relays.limits();
        let now = Instant::now();
        let mut keep = Vec::new();
        // Mallory fills her share across many sandboxes (none reaches its own limit)...
        for i in 0..limits.per_user {
            let sandbox = format!("m{}", i / 8);
            keep.push(relays.request(&sandbox, "mallory", now).unwrap());
        }
        assert_eq!(
            relays.request("m-new", "mallory", now).err(),
            Some(RelayError::UserBusy("mallory".into()))
        );
        // ...and everyone else still gets in, up to the global limit.
        for i in 0..limits.max_pending - limits.per_user {
            let user = format!("user{}", i % 4);
            keep.push(relays.request(&format!("s{i}"), &user, now).unwrap());
        }
        assert_eq!(
            relays.request("s-last", "bob", now).err(),
            Some(RelayError::Busy("s-last".into()))
        );
        assert_eq!(relays.pending(), limits.max_pending);
    }
}
