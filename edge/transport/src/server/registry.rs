//! Live connections: counted for metrics, closable by predicate (a revoked certificate,
//! shutdown). Entries remove themselves when their connection task ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::ConnMeta;
use crate::TransportKind;

enum Closer {
    Quic(quinn::Connection),
    /// The TCP connection task watches this and drops the socket when it changes.
    Tcp(watch::Sender<Option<String>>),
}

struct Entry {
    meta: Arc<ConnMeta>,
    closer: Closer,
}

/// The set of open connections.
#[derive(Default)]
pub struct ConnectionRegistry {
    inner: Mutex<HashMap<u64, Entry>>,
    emptied: Notify,
}

impl std::fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("open", &self.len())
            .finish()
    }
}

/// A point-in-time view of one connection, for metrics.
#[derive(Debug, Clone)]
pub struct ConnectionSummary {
    pub id: u64,
    pub transport: TransportKind,
    pub subject: Option<String>,
    pub rtt: Option<Duration>,
    pub lost_packets: u64,
    pub sent_packets: u64,
}

/// Removes the registry entry when dropped.
pub(crate) struct Registration {
    registry: Arc<ConnectionRegistry>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        map.remove(&self.id);
        if map.is_empty() {
            self.registry.emptied.notify_waiters();
        }
    }
}

impl ConnectionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register_quic(
        self: &Arc<Self>,
        meta: Arc<ConnMeta>,
        conn: quinn::Connection,
    ) -> Registration {
        self.insert(meta, Closer::Quic(conn))
    }

    pub(crate) fn register_tcp(
        self: &Arc<Self>,
        meta: Arc<ConnMeta>,
    ) -> (Registration, watch::Receiver<Option<String>>) {
        let (tx, rx) = watch::channel(None);
        (self.insert(meta, Closer::Tcp(tx)), rx)
    }

    fn insert(self: &Arc<Self>, meta: Arc<ConnMeta>, closer: Closer) -> Registration {
        let id = meta.id;
        self.lock().insert(id, Entry { meta, closer });
        Registration {
            registry: self.clone(),
            id,
        }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every connection whose metadata matches; returns how many.
    pub fn close_where(&self, reason: &str, pred: impl Fn(&ConnMeta) -> bool) -> usize {
        let map = self.lock();
        let mut n = 0;
        for entry in map.values() {
            if pred(&entry.meta) {
                n += 1;
                match &entry.closer {
                    Closer::Quic(c) => c.close(crate::close::h3_no_error(), reason.as_bytes()),
                    Closer::Tcp(tx) => {
                        let _ = tx.send(Some(reason.to_string()));
                    }
                }
            }
        }
        n
    }

    pub fn close_all(&self, reason: &str) -> usize {
        self.close_where(reason, |_| true)
    }

    /// Resolves once no connection is open.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// RTT and loss of each open connection (QUIC only knows these).
    pub fn summaries(&self) -> Vec<ConnectionSummary> {
        self.lock()
            .values()
            .map(|e| {
                let (rtt, lost, sent) = match &e.closer {
                    Closer::Quic(c) => {
                        let s = c.stats();
                        (Some(c.rtt()), s.path.lost_packets, s.path.sent_packets)
                    }
                    Closer::Tcp(_) => (None, 0, 0),
                };
                ConnectionSummary {
                    id: e.meta.id,
                    transport: e.meta.transport,
                    subject: e.meta.principal().map(|p| p.subject.clone()),
                    rtt,
                    lost_packets: lost,
                    sent_packets: sent,
                }
            })
            .collect()
    }
}
