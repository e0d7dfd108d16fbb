//! Supervisor sessions: which sandbox's supervisor is connected to this edge, and the
//! channel to reach it (relay requests go down its control stream).
//!
//! Behind a trait from the start: with several edges sharing Postgres, the registry will also
//! record which edge owns which session so another edge can relay to it (see DESIGN.md,
//! "Scale-out"); that backend adds code here rather than changing callers.

use std::collections::HashMap;
use std::sync::Mutex;

use openshell_proto::GatewayMessage;
use tokio::sync::mpsc;

/// One live supervisor session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub sandbox_id: String,
    pub instance_id: String,
    /// OpenSSH public key line of the sandbox's SSH host key, as reported at hello.
    pub ssh_host_key: String,
    /// Messages to the supervisor (relay requests, heartbeats).
    pub tx: mpsc::Sender<GatewayMessage>,
    pub connected_at_ms: i64,
}

/// Where sessions are found.
pub trait SessionRegistry: Send + Sync {
    /// Registers a session; a newer session of the same sandbox supersedes the old one
    /// (whose stream then ends). Returns the superseded session, if any.
    fn register(&self, session: Session) -> Option<Session>;
    /// Removes the session if it is still the current one for its sandbox.
    fn unregister(&self, sandbox_id: &str, session_id: &str);
    fn get(&self, sandbox_id: &str) -> Option<Session>;
    fn count(&self) -> usize;
}

/// Sessions of this edge, in memory (one edge; the single-replica default).
#[derive(Debug, Default)]
pub struct LocalSessions {
    map: Mutex<HashMap<String, Session>>,
}

impl LocalSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SessionRegistry for LocalSessions {
    fn register(&self, session: Session) -> Option<Session> {
        self.lock().insert(session.sandbox_id.clone(), session)
    }

    fn unregister(&self, sandbox_id: &str, session_id: &str) {
        let mut map = self.lock();
        if map.get(sandbox_id).is_some_and(|s| s.id == session_id) {
            map.remove(sandbox_id);
        }
    }

    fn get(&self, sandbox_id: &str) -> Option<Session> {
        self.lock().get(sandbox_id).cloned()
    }

    fn count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sandbox: &str, id: &str) -> (Session, mpsc::Receiver<GatewayMessage>) {
        let (tx, rx) = mpsc::channel(4);
        (
            Session {
                id: id.into(),
                sandbox_id: sandbox.into(),
                instance_id: "i".into(),
                ssh_host_key: String::new(),
                tx,
                connected_at_ms: 0,
            },
            rx,
        )
    }

    #[test]
    fn a_newer_session_supersedes_and_a_stale_unregister_is_ignored() {
        let reg = LocalSessions::default();
        let (s1, _r1) = session("sb", "1");
        let (s2, _r2) = session("sb", "2");
        assert!(reg.register(s1).is_none());
        assert_eq!(reg.register(s2).unwrap().id, "1");
        reg.unregister("sb", "1"); // the old session ending must not remove the new one
        assert_eq!(reg.get("sb").unwrap().id, "2");
        reg.unregister("sb", "2");
        assert_eq!(reg.count(), 0);
    }
}
