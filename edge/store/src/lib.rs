//! The gateway's persistence.
//!
//! # What this crate owns
//!
//! - The [`Store`] trait: one generic, typed object table shared by every resource the
//!   gateway keeps (sandboxes, providers, policies, inference routes, SSH sessions, ...).
//!   Objects are opaque prost-encoded payloads plus the metadata the store needs: kind,
//!   name, labels, a resource version for optimistic concurrency, timestamps. The gateway
//!   holds it as `Arc<dyn Store>`.
//! - [`SqliteStore`]: the default backend, one SQLite file in the gateway's state directory
//!   (WAL, schema migrations, an exclusive lock so two gateways cannot share it).
//! - [`MemoryStore`]: an in-memory fake with the same semantics, for the gateway's unit tests.
//! - `conformance` (feature `testing`): the one suite every backend must pass; this crate
//!   runs it against both backends above.
//! - [`SecretBox`]: AES-256-GCM sealing of secrets (provider credentials) before they are
//!   stored, with a key-encryption key file in the state directory.
//!
//! # What it does not own
//!
//! - What the payloads mean, name validation rules per resource, and mapping
//!   [`StoreError`] to gRPC codes: that is the gateway's job (the intended mapping is
//!   documented on [`StoreError`]).
//! - The PKI directory and CLI-side files.
//!
//! # Seams for later
//!
//! Several gateway replicas sharing state need a Postgres backend. It is meant to be one
//! more implementation of [`Store`], added without touching callers, and run through the
//! same conformance suite. Two points to carry over: the resource version must stay in
//! commit order, so allocate it from a counter row updated inside the write transaction
//! (as the SQLite backend does; a plain `SEQUENCE` hands out numbers in start order, not
//! commit order), and [`Store::subscribe`] would be fed by `LISTEN/NOTIFY`. Ownership of
//! sandbox supervisor sessions by edges is meant to be stored as ordinary objects
//! ([`ObjectKind::SUPERVISOR_SESSION`]) so scale-out adds data, not a second mechanism.
//!
//! ```text
//!   gateway handlers ──► Arc<dyn Store> ──┬─► SqliteStore ──spawn_blocking──► Mutex<Connection>
//!                                         │                                        │
//!                                         │                              <state>/openshell.db (WAL)
//!                                         ├─► MemoryStore (tests)
//!                                         └─► (later) Postgres
//!   provider handler ──► SecretBox::seal(credentials, aad = provider id) ──► object payload
//! ```

mod error;
mod fsutil;
mod lock;
mod memory;
mod object;
mod secret;
mod sqlite;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(test)]
mod differential_tests;

use std::time::Duration;

use tokio::sync::broadcast;

pub use crate::error::{Result, StoreError};
pub use crate::memory::MemoryStore;
pub use crate::object::{
    EventKind, LabelSelector, Labels, NewObject, ObjectEvent, ObjectKind, Precondition,
    StoredObject,
};
pub use crate::secret::SecretBox;
pub use crate::sqlite::{SqliteOptions, SqliteStore};

/// How many change events a subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`]. Events are small (one object each); 1024 covers
/// a burst of writes while a watch stream is briefly slow. A larger value costs memory per
/// buffered event, a smaller one makes watchers relist more often.
pub const DEFAULT_EVENT_BUFFER: usize = 1024;

/// Persistent, typed object storage with optimistic concurrency and change events.
///
/// # Resource versions
///
/// Every successful write (create, update, delete) takes the next value of one store-wide
/// counter, and the written object carries it as `resource_version`. Hence:
///
/// - versions are unique across all kinds and strictly increase in commit order, and they
///   survive restarts (the counter is persisted, so deleting the newest object does not let
///   a version be handed out twice);
/// - events from [`subscribe`](Store::subscribe) arrive in increasing version order, so a
///   watcher can remember the last version it saw, and after a lag relist and drop events
///   whose version is not newer than what the listing returned for that object.
///
/// Failed writes consume no version and emit no event.
///
/// # Cancellation
///
/// Dropping the future of a write does not undo it: once started, the write runs to
/// completion (and emits its event) even if nobody awaits the result. Callers that need to
/// know must read back.
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Stores a new object. Fails with [`StoreError::AlreadyExists`] if an object of the
    /// same kind has the same name.
    async fn create(&self, object: NewObject) -> Result<StoredObject>;

    /// The object of this kind with this name, if any.
    async fn get(&self, kind: &ObjectKind, name: &str) -> Result<Option<StoredObject>>;

    /// The object with this id, whatever its kind, if any.
    async fn get_by_id(&self, id: &str) -> Result<Option<StoredObject>>;

    /// Objects of `kind` matching `selector`, sorted by name (bytewise), skipping the first
    /// `offset` matches and returning at most `limit` (`None` = no limit).
    async fn list(
        &self,
        kind: &ObjectKind,
        selector: &LabelSelector,
        limit: Option<usize>,
        offset: usize,
    ) -> Result<Vec<StoredObject>>;

    /// Replaces the payload and labels of an object, keeping its id and creation time.
    /// Fails with [`StoreError::NotFound`] if it does not exist and with
    /// [`StoreError::Conflict`] if `precondition` names another version than the stored
    /// one.
    async fn update(
        &self,
        kind: &ObjectKind,
        name: &str,
        precondition: Precondition,
        payload: Vec<u8>,
        labels: Labels,
    ) -> Result<StoredObject>;

    /// Deletes an object. Returns `false` if there was none, `true` if this call deleted
    /// it. Fails with [`StoreError::Conflict`] if `precondition` names another version than
    /// the stored one (and then deletes nothing).
    async fn delete(
        &self,
        kind: &ObjectKind,
        name: &str,
        precondition: Precondition,
    ) -> Result<bool>;

    /// A round trip through the backend, for readiness probes. Returns how long it took,
    /// including any wait behind other requests.
    async fn ping(&self) -> Result<Duration>;

    /// Change events for every write committed after this call, in commit order. A
    /// receiver that falls behind by more than the event buffer gets
    /// [`broadcast::error::RecvError::Lagged`] and must relist.
    fn subscribe(&self) -> broadcast::Receiver<ObjectEvent>;
}
