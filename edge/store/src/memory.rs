//! An in-memory fake of [`Store`] for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::error::{Result, StoreError};
use crate::object::{
    EventKind, LabelSelector, Labels, NewObject, ObjectEvent, ObjectKind, Precondition,
    StoredObject, now_ms, validate_labels, validate_name, validate_page,
};
use crate::{DEFAULT_EVENT_BUFFER, Store};

/// A fake [`Store`] that keeps everything in memory and loses it on drop.
///
/// Made for the gateway's unit tests: it passes the same conformance suite as
/// [`SqliteStore`](crate::SqliteStore) (same errors, ordering, resource versions and
/// events), and [`set_unavailable`](Self::set_unavailable) simulates an outage. It is not
/// meant for production: nothing is persisted.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<ObjectEvent>,
}

#[derive(Debug, Default)]
struct State {
    /// Keyed by (kind, name); BTreeMap so a kind's objects iterate sorted by name.
    objects: BTreeMap<(ObjectKind, String), StoredObject>,
    ids: HashMap<String, (ObjectKind, String)>,
    resource_version: i64,
    unavailable: Option<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store with [`DEFAULT_EVENT_BUFFER`].
    pub fn new() -> Self {
        MemoryStore::with_event_buffer(DEFAULT_EVENT_BUFFER)
    }

    /// An empty store whose subscribers may lag by `events` events (at least 1).
    pub fn with_event_buffer(events: usize) -> Self {
        let (events, _) = broadcast::channel(events.max(1));
        MemoryStore {
            state: Mutex::new(State::default()),
            events,
        }
    }

    /// While `Some(reason)`, every operation fails with [`StoreError::Unavailable`]
    /// carrying `reason`; `None` restores service. For testing readiness and error paths.
    pub fn set_unavailable(&self, reason: Option<String>) {
        self.lock_raw().unavailable = reason;
    }

    fn lock_raw(&self) -> MutexGuard<'_, State> {
        // Every mutation below is applied only after all checks passed, so a panic while
        // holding the lock cannot leave half a write behind: the state is safe to reuse.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.lock_raw();
        match &state.unavailable {
            Some(reason) => Err(StoreError::Unavailable(reason.clone())),
            None => Ok(state),
        }
    }

    /// Sends while the caller still holds the state lock, so events leave in version order.
    fn emit(&self, _held: &MutexGuard<'_, State>, kind: EventKind, object: StoredObject) {
        // No receivers is not an error: nobody is watching.
        let _ = self.events.send(ObjectEvent { kind, object });
    }
}

fn check_precondition(object: &StoredObject, precondition: Precondition) -> Result<()> {
    match precondition {
        Precondition::ResourceVersion(expected) if expected != object.resource_version => {
            Err(StoreError::Conflict {
                kind: object.kind.to_string(),
                name: object.name.clone(),
                expected,
                actual: object.resource_version,
            })
        }
        _ => Ok(()),
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn create(&self, new: NewObject) -> Result<StoredObject> {
        validate_name(&new.name)?;
        validate_labels(&new.labels)?;
        let mut state = self.lock()?;
        let key = (new.kind.clone(), new.name.clone());
        if state.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                kind: new.kind.to_string(),
                name: new.name,
            });
        }
        state.resource_version += 1;
        let now = now_ms();
        let object = StoredObject {
            id: uuid::Uuid::new_v4().to_string(),
            kind: new.kind,
            name: new.name,
            labels: new.labels,
            payload: new.payload,
            resource_version: state.resource_version,
            created_at_ms: now,
            updated_at_ms: now,
        };
        state.ids.insert(object.id.clone(), key.clone());
        state.objects.insert(key, object.clone());
        self.emit(&state, EventKind::Added, object.clone());
        Ok(object)
    }

    async fn get(&self, kind: &ObjectKind, name: &str) -> Result<Option<StoredObject>> {
        let state = self.lock()?;
        Ok(state.objects.get(&(kind.clone(), name.to_owned())).cloned())
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<StoredObject>> {
        let state = self.lock()?;
        Ok(state
            .ids
            .get(id)
            .and_then(|key| state.objects.get(key))
            .cloned())
    }

    async fn list(
        &self,
        kind: &ObjectKind,
        selector: &LabelSelector,
        limit: Option<usize>,
        offset: usize,
    ) -> Result<Vec<StoredObject>> {
        validate_page(limit, offset)?;
        let state = self.lock()?;
        Ok(state
            .objects
            .range((kind.clone(), String::new())..)
            .take_while(|((k, _), _)| k == kind)
            .map(|(_, object)| object)
            .filter(|object| selector.matches(&object.labels))
            .skip(offset)
            .take(limit.unwrap_or(usize::MAX))
            .cloned()
            .collect())
    }

    async fn update(
        &self,
        kind: &ObjectKind,
        name: &str,
        precondition: Precondition,
        payload: Vec<u8>,
        labels: Labels,
    ) -> Result<StoredObject> {
        validate_labels(&labels)?;
        let mut state = self.lock()?;
        let key = (kind.clone(), name.to_owned());
        let Some(current) = state.objects.get(&key) else {
            return Err(StoreError::NotFound {
                kind: kind.to_string(),
                name: name.to_owned(),
            });
        };
        check_precondition(current, precondition)?;
        let updated_at_ms = now_ms().max(current.updated_at_ms);
        let version = state.resource_version + 1;
        let object = StoredObject {
            payload,
            labels,
            resource_version: version,
            updated_at_ms,
            ..current.clone()
        };
        state.resource_version = version;
        state.objects.insert(key, object.clone());
        self.emit(&state, EventKind::Modified, object.clone());
        Ok(object)
    }

    async fn delete(
        &self,
        kind: &ObjectKind,
        name: &str,
        precondition: Precondition,
    ) -> Result<bool> {
        let mut state = self.lock()?;
        let key = (kind.clone(), name.to_owned());
        let Some(current) = state.objects.get(&key) else {
            return Ok(false);
        };
        check_precondition(current, precondition)?;
        let Some(mut object) = state.objects.remove(&key) else {
            return Ok(false);
        };
        state.ids.remove(&object.id);
        state.resource_version += 1;
        object.resource_version = state.resource_version;
        self.emit(&state, EventKind::Deleted, object);
        Ok(true)
    }

    async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        drop(self.lock()?);
        Ok(start.elapsed())
    }

    fn subscribe(&self) -> broadcast::Receiver<ObjectEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    struct Fresh(Arc<dyn Store>);

    impl crate::conformance::Fixture for Fresh {
        fn store(&self) -> Arc<dyn Store> {
            self.0.clone()
        }
    }

    crate::store_conformance_tests!(Fresh(Arc::new(MemoryStore::new())));

    #[tokio::test]
    async fn unavailable_fails_every_operation_until_restored() {
        let store = MemoryStore::new();
        store
            .create(NewObject::new(ObjectKind::SANDBOX, "a", vec![]))
            .await
            .unwrap();
        store.set_unavailable(Some("disk on fire".into()));
        let err = store.ping().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(store.get(&ObjectKind::SANDBOX, "a").await.is_err());
        assert!(
            store
                .create(NewObject::new(ObjectKind::SANDBOX, "b", vec![]))
                .await
                .is_err()
        );
        store.set_unavailable(None);
        store.ping().await.unwrap();
        let listed = store
            .list(&ObjectKind::SANDBOX, &LabelSelector::everything(), None, 0)
            .await
            .unwrap();
        assert_eq!(
            listed.len(),
            1,
            "the failed create must not have been applied"
        );
    }
}
