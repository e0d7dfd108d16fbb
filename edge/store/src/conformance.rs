//! The behaviour every [`Store`] backend must have, as a test suite.
//!
//! Each case is a `pub async fn` taking a fresh, empty store and panicking on failure.
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to one
//! `#[tokio::test]` per case, so a backend runs the whole suite with:
//!
//! ```ignore
//! struct Fresh { store: Arc<dyn Store>, _dir: tempfile::TempDir }
//! impl openshell_store::conformance::Fixture for Fresh {
//!     fn store(&self) -> Arc<dyn Store> { self.store.clone() }
//! }
//! openshell_store::store_conformance_tests!(Fresh::new());
//! ```
//!
//! The crate using the macro needs `tokio` (with `macros` and `rt-multi-thread`) as a
//! (dev-)dependency. Available with the `testing` feature.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Barrier, broadcast};

use crate::{
    EventKind, LabelSelector, Labels, NewObject, ObjectEvent, ObjectKind, Precondition, Store,
    StoreError, StoredObject,
};

/// Provides a fresh, empty store for one test case and keeps whatever it needs (a temporary
/// directory) alive as long as the fixture lives.
pub trait Fixture {
    /// The store under test.
    fn store(&self) -> Arc<dyn Store>;
}

/// Expands to one `#[tokio::test]` per conformance case. `$fixture` is evaluated once per
/// test and must implement [`Fixture`](crate::conformance::Fixture).
#[macro_export]
macro_rules! store_conformance_tests {
    ($fixture:expr) => {
        $crate::__store_conformance_cases!($fixture;
            create_then_get,
            missing_objects_are_none,
            duplicate_create_is_refused,
            names_are_scoped_to_their_kind,
            empty_names_and_label_keys_are_refused,
            list_is_sorted_by_name_and_scoped_to_kind,
            list_requires_every_selector_pair,
            odd_label_keys_round_trip_and_select,
            list_pages_after_filtering,
            update_with_current_version_is_applied,
            update_with_stale_version_is_refused,
            update_unconditional_and_missing,
            concurrent_updates_with_the_same_version_have_one_winner,
            delete_honours_its_precondition,
            resource_versions_increase_across_kinds_and_deletes,
            events_arrive_in_commit_order,
            concurrent_writers_emit_events_in_version_order,
            failed_writes_emit_no_event_and_consume_no_version,
            recreated_object_gets_a_new_id,
            payload_bytes_round_trip,
            ping_answers,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __store_conformance_cases {
    ($fixture:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture = $fixture;
                let store = $crate::conformance::Fixture::store(&fixture);
                $crate::conformance::$case(store).await;
            }
        )*
    };
}

const SB: ObjectKind = ObjectKind::SANDBOX;
const PROV: ObjectKind = ObjectKind::PROVIDER;

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn names(objects: &[StoredObject]) -> Vec<&str> {
    objects.iter().map(|o| o.name.as_str()).collect()
}

async fn create(store: &Arc<dyn Store>, kind: ObjectKind, name: &str) -> StoredObject {
    store
        .create(NewObject::new(kind, name, name.as_bytes().to_vec()))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"))
}

async fn list_all(store: &Arc<dyn Store>, kind: &ObjectKind) -> Vec<StoredObject> {
    store
        .list(kind, &LabelSelector::everything(), None, 0)
        .await
        .unwrap()
}

async fn next_event(rx: &mut broadcast::Receiver<ObjectEvent>) -> ObjectEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no event within 5 s")
        .expect("event channel failed")
}

/// A created object carries what was given plus a UUID, a positive version and timestamps,
/// and reads back identically by name and by id.
pub async fn create_then_get(store: Arc<dyn Store>) {
    let before = crate::object::now_ms();
    let created = store
        .create(
            NewObject::new(SB, "alpha", b"\x00payload\xff".to_vec())
                .label("team", "infra")
                .label("tier", "dev"),
        )
        .await
        .unwrap();
    let after = crate::object::now_ms();
    assert_eq!(created.kind, SB);
    assert_eq!(created.name, "alpha");
    assert_eq!(created.payload, b"\x00payload\xff");
    assert_eq!(created.labels, labels([("team", "infra"), ("tier", "dev")]));
    let id = uuid::Uuid::parse_str(&created.id).expect("id is a UUID");
    assert_eq!(id.get_version_num(), 4, "id is a UUIDv4");
    assert!(created.resource_version > 0);
    assert!((before..=after).contains(&created.created_at_ms));
    assert_eq!(created.created_at_ms, created.updated_at_ms);

    assert_eq!(
        store.get(&SB, "alpha").await.unwrap(),
        Some(created.clone())
    );
    assert_eq!(store.get_by_id(&created.id).await.unwrap(), Some(created));
}

/// Reading what does not exist is `None`, not an error.
pub async fn missing_objects_are_none(store: Arc<dyn Store>) {
    assert_eq!(store.get(&SB, "nope").await.unwrap(), None);
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(store.get_by_id(&id).await.unwrap(), None);
    assert_eq!(store.get_by_id("not-a-uuid").await.unwrap(), None);
    assert!(list_all(&store, &SB).await.is_empty());
}

/// A second create with the same kind and name fails and leaves the first untouched.
pub async fn duplicate_create_is_refused(store: Arc<dyn Store>) {
    let first = create(&store, SB, "dup").await;
    let err = store
        .create(NewObject::new(SB, "dup", b"other".to_vec()))
        .await
        .unwrap_err();
    match &err {
        StoreError::AlreadyExists { kind, name } => {
            assert_eq!((kind.as_str(), name.as_str()), ("sandbox", "dup"));
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(err.to_string().contains("\"dup\""), "{err}");
    assert_eq!(store.get(&SB, "dup").await.unwrap(), Some(first));
    assert_eq!(list_all(&store, &SB).await.len(), 1);
}

/// The same name in two kinds is two objects.
pub async fn names_are_scoped_to_their_kind(store: Arc<dyn Store>) {
    let sandbox = create(&store, SB, "shared").await;
    let provider = create(&store, PROV, "shared").await;
    assert_ne!(sandbox.id, provider.id);
    assert_eq!(store.get(&SB, "shared").await.unwrap(), Some(sandbox));
    assert_eq!(
        store.get(&PROV, "shared").await.unwrap(),
        Some(provider.clone())
    );
    assert!(
        store
            .delete(&SB, "shared", Precondition::Unconditional)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&PROV, "shared").await.unwrap(), Some(provider));
}

/// Input the store cannot represent unambiguously is refused up front.
pub async fn empty_names_and_label_keys_are_refused(store: Arc<dyn Store>) {
    let err = store
        .create(NewObject::new(SB, "", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    let err = store
        .create(NewObject::new(SB, "x", vec![]).label("", "v"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    create(&store, SB, "x").await;
    let err = store
        .update(
            &SB,
            "x",
            Precondition::Unconditional,
            vec![],
            labels([("", "v")]),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
    assert!(list_all(&store, &SB).await[0].labels.is_empty());
}

/// `list` returns one kind only, sorted bytewise by name whatever the creation order.
pub async fn list_is_sorted_by_name_and_scoped_to_kind(store: Arc<dyn Store>) {
    for name in ["m", "B", "a", "z", "aa", "é", "0"] {
        create(&store, SB, name).await;
    }
    create(&store, PROV, "b").await;
    let listed = list_all(&store, &SB).await;
    assert_eq!(names(&listed), ["0", "B", "a", "aa", "m", "z", "é"]);
    assert!(listed.iter().all(|o| o.kind == SB));
    assert_eq!(names(&list_all(&store, &PROV).await), ["b"]);
    let policy = ObjectKind::SANDBOX_POLICY;
    assert!(list_all(&store, &policy).await.is_empty());
}

/// A selector matches only objects carrying every one of its pairs.
pub async fn list_requires_every_selector_pair(store: Arc<dyn Store>) {
    let objects = [
        ("a", labels([("team", "infra"), ("env", "prod")])),
        ("b", labels([("team", "infra"), ("env", "dev")])),
        ("c", labels([("team", "ml"), ("env", "prod")])),
        ("d", labels([("team", "infra")])),
        ("e", Labels::new()),
    ];
    for (name, l) in objects {
        store
            .create(NewObject::new(SB, name, vec![]).labels(l))
            .await
            .unwrap();
    }
    let select = |pairs: &[(&str, &str)]| {
        let store = store.clone();
        let selector: LabelSelector = pairs.iter().copied().collect();
        async move {
            let found = store.list(&SB, &selector, None, 0).await.unwrap();
            found.into_iter().map(|o| o.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(select(&[]).await, ["a", "b", "c", "d", "e"]);
    assert_eq!(select(&[("team", "infra")]).await, ["a", "b", "d"]);
    assert_eq!(select(&[("env", "prod")]).await, ["a", "c"]);
    assert_eq!(select(&[("team", "infra"), ("env", "prod")]).await, ["a"]);
    assert!(
        select(&[("team", "infra"), ("env", "staging")])
            .await
            .is_empty()
    );
    assert!(select(&[("owner", "x")]).await.is_empty());
    // A value is matched exactly, not as a prefix or case-insensitively.
    assert!(select(&[("team", "INFRA")]).await.is_empty());
    assert!(select(&[("team", "inf")]).await.is_empty());
    assert!(select(&[("team", "")]).await.is_empty());
}

/// Keys and values with characters special to JSON paths, SQL or shells are stored and
/// selected literally.
pub async fn odd_label_keys_round_trip_and_select(store: Arc<dyn Store>) {
    let odd = labels([
        ("openshell.io/sandbox", "a.b"),
        ("key with \"quotes\"", "'; DROP TABLE objects; --"),
        ("$.x[0]", "%_*"),
        ("ünïcödé", "値"),
        ("empty", ""),
    ]);
    let created = store
        .create(NewObject::new(SB, "odd", vec![]).labels(odd.clone()))
        .await
        .unwrap();
    create(&store, SB, "plain").await;
    assert_eq!(created.labels, odd);
    assert_eq!(store.get(&SB, "odd").await.unwrap().unwrap().labels, odd);
    for (k, v) in &odd {
        let selector = LabelSelector::everything().with(k.clone(), v.clone());
        let found = store.list(&SB, &selector, None, 0).await.unwrap();
        assert_eq!(names(&found), ["odd"], "selector {k:?}={v:?}");
    }
    let all: LabelSelector = odd.clone().into();
    assert_eq!(
        names(&store.list(&SB, &all, None, 0).await.unwrap()),
        ["odd"]
    );
    // "$.x" must not match the key "$.x[0]" through path interpretation.
    let near = LabelSelector::everything().with("$.x", "%_*");
    assert!(store.list(&SB, &near, None, 0).await.unwrap().is_empty());
}

/// `limit` and `offset` apply to the filtered, sorted result.
pub async fn list_pages_after_filtering(store: Arc<dyn Store>) {
    for i in 0..10 {
        let parity = if i % 2 == 0 { "even" } else { "odd" };
        store
            .create(NewObject::new(SB, format!("n{i}"), vec![]).label("parity", parity))
            .await
            .unwrap();
    }
    let even = LabelSelector::everything().with("parity", "even");
    let page = |limit, offset| {
        let store = store.clone();
        let even = even.clone();
        async move {
            let found = store.list(&SB, &even, limit, offset).await.unwrap();
            found.into_iter().map(|o| o.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(page(None, 0).await, ["n0", "n2", "n4", "n6", "n8"]);
    assert_eq!(page(Some(2), 0).await, ["n0", "n2"]);
    assert_eq!(page(Some(2), 2).await, ["n4", "n6"]);
    assert_eq!(page(Some(2), 4).await, ["n8"]);
    assert!(page(Some(2), 5).await.is_empty());
    assert!(page(Some(2), 500).await.is_empty());
    assert!(page(Some(0), 0).await.is_empty());
    assert_eq!(page(None, 3).await, ["n6", "n8"]);
    let all = store
        .list(&SB, &LabelSelector::everything(), Some(3), 8)
        .await
        .unwrap();
    assert_eq!(names(&all), ["n8", "n9"]);
}

/// An update naming the stored version replaces payload and labels, keeps id and creation
/// time, and moves the version forward.
pub async fn update_with_current_version_is_applied(store: Arc<dyn Store>) {
    let created = store
        .create(NewObject::new(SB, "u", b"v1".to_vec()).label("a", "1"))
        .await
        .unwrap();
    let updated = store
        .update(
            &SB,
            "u",
            Precondition::ResourceVersion(created.resource_version),
            b"v2".to_vec(),
            labels([("b", "2")]),
        )
        .await
        .unwrap();
    assert_eq!(updated.id, created.id);
    assert_eq!(updated.created_at_ms, created.created_at_ms);
    assert!(updated.updated_at_ms >= created.updated_at_ms);
    assert!(updated.resource_version > created.resource_version);
    assert_eq!(updated.payload, b"v2");
    assert_eq!(
        updated.labels,
        labels([("b", "2")]),
        "labels are replaced, not merged"
    );
    assert_eq!(store.get(&SB, "u").await.unwrap(), Some(updated.clone()));
    assert_eq!(
        store.get_by_id(&created.id).await.unwrap(),
        Some(updated.clone())
    );
    let by_new_label = LabelSelector::everything().with("b", "2");
    assert_eq!(
        store.list(&SB, &by_new_label, None, 0).await.unwrap(),
        [updated]
    );
    let by_old_label = LabelSelector::everything().with("a", "1");
    assert!(
        store
            .list(&SB, &by_old_label, None, 0)
            .await
            .unwrap()
            .is_empty()
    );
}

/// An update naming an old version fails with both versions and changes nothing.
pub async fn update_with_stale_version_is_refused(store: Arc<dyn Store>) {
    let v1 = create(&store, SB, "s").await;
    let v2 = store
        .update(
            &SB,
            "s",
            Precondition::Unconditional,
            b"v2".to_vec(),
            Labels::new(),
        )
        .await
        .unwrap();
    let err = store
        .update(
            &SB,
            "s",
            Precondition::ResourceVersion(v1.resource_version),
            b"v3".to_vec(),
            Labels::new(),
        )
        .await
        .unwrap_err();
    match &err {
        StoreError::Conflict {
            kind,
            name,
            expected,
            actual,
        } => {
            assert_eq!((kind.as_str(), name.as_str()), ("sandbox", "s"));
            assert_eq!(
                (*expected, *actual),
                (v1.resource_version, v2.resource_version)
            );
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&v1.resource_version.to_string()),
        "{message}"
    );
    assert!(
        message.contains(&v2.resource_version.to_string()),
        "{message}"
    );
    assert_eq!(store.get(&SB, "s").await.unwrap(), Some(v2.clone()));
    // A version from the future is as wrong as one from the past.
    let err = store
        .update(
            &SB,
            "s",
            Precondition::ResourceVersion(v2.resource_version + 100),
            vec![],
            Labels::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.get(&SB, "s").await.unwrap(), Some(v2));
}

/// Unconditional updates always apply; updating what does not exist is `NotFound`.
pub async fn update_unconditional_and_missing(store: Arc<dyn Store>) {
    let created = create(&store, SB, "x").await;
    let updated = store
        .update(
            &SB,
            "x",
            Precondition::Unconditional,
            b"new".to_vec(),
            Labels::new(),
        )
        .await
        .unwrap();
    assert!(updated.resource_version > created.resource_version);
    for precondition in [
        Precondition::Unconditional,
        Precondition::ResourceVersion(1),
    ] {
        let err = store
            .update(&SB, "missing", precondition, vec![], Labels::new())
            .await
            .unwrap_err();
        match &err {
            StoreError::NotFound { kind, name } => {
                assert_eq!((kind.as_str(), name.as_str()), ("sandbox", "missing"));
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    // The same name in another kind is not found either.
    let err = store
        .update(
            &PROV,
            "x",
            Precondition::Unconditional,
            vec![],
            Labels::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

/// Many tasks updating with the version they all read: exactly one wins, the rest conflict,
/// and the stored object is the winner's.
pub async fn concurrent_updates_with_the_same_version_have_one_winner(store: Arc<dyn Store>) {
    const RACERS: usize = 8;
    let base = create(&store, SB, "race").await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = store.clone();
            let barrier = barrier.clone();
            let version = base.resource_version;
            tokio::spawn(async move {
                barrier.wait().await;
                let payload = format!("racer {i}").into_bytes();
                store
                    .update(
                        &SB,
                        "race",
                        Precondition::ResourceVersion(version),
                        payload,
                        Labels::new(),
                    )
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("racer panicked") {
            Ok(object) => winners.push(object),
            Err(StoreError::Conflict {
                expected, actual, ..
            }) => {
                assert_eq!(expected, base.resource_version);
                assert!(actual > base.resource_version);
            }
            Err(other) => panic!("racer failed with {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one racer must win: {winners:?}");
    assert_eq!(store.get(&SB, "race").await.unwrap(), winners.pop());
}

/// A delete naming a stale version fails and keeps the object; naming the current one
/// deletes it; deleting again reports `false`.
pub async fn delete_honours_its_precondition(store: Arc<dyn Store>) {
    let v1 = create(&store, SB, "d").await;
    let v2 = store
        .update(&SB, "d", Precondition::Unconditional, vec![], Labels::new())
        .await
        .unwrap();
    let err = store
        .delete(&SB, "d", Precondition::ResourceVersion(v1.resource_version))
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            expected, actual, ..
        } => assert_eq!(
            (expected, actual),
            (v1.resource_version, v2.resource_version)
        ),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(&SB, "d").await.unwrap(), Some(v2.clone()));
    let deleted = store
        .delete(&SB, "d", Precondition::ResourceVersion(v2.resource_version))
        .await
        .unwrap();
    assert!(deleted);
    assert_eq!(store.get(&SB, "d").await.unwrap(), None);
    assert_eq!(store.get_by_id(&v1.id).await.unwrap(), None);
    assert!(
        !store
            .delete(&SB, "d", Precondition::Unconditional)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete(&SB, "d", Precondition::ResourceVersion(v2.resource_version))
            .await
            .unwrap()
    );
    create(&store, SB, "e").await;
    assert!(
        store
            .delete(&SB, "e", Precondition::Unconditional)
            .await
            .unwrap()
    );
    assert!(list_all(&store, &SB).await.is_empty());
}

/// One counter for the whole store: every write, of any kind, takes a higher version,
/// and deleting the newest object does not let its version be reused.
pub async fn resource_versions_increase_across_kinds_and_deletes(store: Arc<dyn Store>) {
    let mut seen = Vec::new();
    seen.push(create(&store, SB, "a").await.resource_version);
    seen.push(create(&store, PROV, "a").await.resource_version);
    let updated = store
        .update(&SB, "a", Precondition::Unconditional, vec![], Labels::new())
        .await
        .unwrap();
    seen.push(updated.resource_version);
    let mut rx = store.subscribe();
    assert!(
        store
            .delete(&SB, "a", Precondition::Unconditional)
            .await
            .unwrap()
    );
    let deletion = next_event(&mut rx).await;
    assert_eq!(deletion.kind, EventKind::Deleted);
    seen.push(deletion.object.resource_version);
    seen.push(create(&store, SB, "a").await.resource_version);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "versions must strictly increase: {seen:?}"
    );
}

/// Subscribers see Added, Modified, Deleted with the written objects, in order.
pub async fn events_arrive_in_commit_order(store: Arc<dyn Store>) {
    let mut rx = store.subscribe();
    let created = store
        .create(NewObject::new(SB, "w", b"1".to_vec()).label("k", "v"))
        .await
        .unwrap();
    let updated = store
        .update(
            &SB,
            "w",
            Precondition::ResourceVersion(created.resource_version),
            b"2".to_vec(),
            Labels::new(),
        )
        .await
        .unwrap();
    let other = create(&store, PROV, "p").await;
    assert!(
        store
            .delete(&SB, "w", Precondition::Unconditional)
            .await
            .unwrap()
    );

    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, &e.object), (EventKind::Added, &created));
    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, &e.object), (EventKind::Modified, &updated));
    let e = next_event(&mut rx).await;
    assert_eq!((e.kind, &e.object), (EventKind::Added, &other));
    let e = next_event(&mut rx).await;
    assert_eq!(e.kind, EventKind::Deleted);
    assert_eq!(e.object.id, updated.id);
    assert_eq!(e.object.name, "w");
    assert_eq!(
        e.object.payload, b"2",
        "a deletion carries the last stored state"
    );
    assert!(e.object.resource_version > other.resource_version);
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));

    // A late subscriber sees only later writes.
    let mut late = store.subscribe();
    let after = create(&store, SB, "late").await;
    let e = next_event(&mut late).await;
    assert_eq!((e.kind, &e.object), (EventKind::Added, &after));
}

/// Writers racing on different objects: events still arrive in version order, one per
/// write.
pub async fn concurrent_writers_emit_events_in_version_order(store: Arc<dyn Store>) {
    const WRITERS: usize = 4;
    const WRITES: usize = 25;
    let mut rx = store.subscribe();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = format!("writer-{w}");
                let mut versions = vec![create(&store, SB, &name).await.resource_version];
                for _ in 1..WRITES {
                    let o = store
                        .update(
                            &SB,
                            &name,
                            Precondition::Unconditional,
                            vec![],
                            Labels::new(),
                        )
                        .await
                        .unwrap();
                    versions.push(o.resource_version);
                }
                versions
            })
        })
        .collect();
    let mut written = BTreeSet::new();
    for task in tasks {
        written.extend(task.await.expect("writer panicked"));
    }
    let mut received = Vec::new();
    for _ in 0..WRITERS * WRITES {
        received.push(next_event(&mut rx).await.object.resource_version);
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "events out of order: {received:?}"
    );
    assert_eq!(received.into_iter().collect::<BTreeSet<_>>(), written);
}

/// Refused writes neither notify subscribers nor use up a version.
pub async fn failed_writes_emit_no_event_and_consume_no_version(store: Arc<dyn Store>) {
    let first = create(&store, SB, "f").await;
    let mut rx = store.subscribe();
    assert!(store.create(NewObject::new(SB, "f", vec![])).await.is_err());
    assert!(
        store
            .update(
                &SB,
                "f",
                Precondition::ResourceVersion(-1),
                vec![],
                Labels::new()
            )
            .await
            .is_err()
    );
    assert!(
        store
            .update(
                &SB,
                "nope",
                Precondition::Unconditional,
                vec![],
                Labels::new()
            )
            .await
            .is_err()
    );
    assert!(
        store
            .delete(&SB, "f", Precondition::ResourceVersion(-1))
            .await
            .is_err()
    );
    assert!(
        !store
            .delete(&SB, "nope", Precondition::Unconditional)
            .await
            .unwrap()
    );
    assert!(store.create(NewObject::new(SB, "", vec![])).await.is_err());
    assert!(matches!(
        rx.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    let next = create(&store, SB, "g").await;
    assert_eq!(
        next.resource_version,
        first.resource_version + 1,
        "refused writes must not consume versions"
    );
    assert_eq!(next_event(&mut rx).await.object, next);
}

/// Deleting and creating again under the same name makes a new object.
pub async fn recreated_object_gets_a_new_id(store: Arc<dyn Store>) {
    let first = create(&store, SB, "again").await;
    assert!(
        store
            .delete(&SB, "again", Precondition::Unconditional)
            .await
            .unwrap()
    );
    let second = create(&store, SB, "again").await;
    assert_ne!(first.id, second.id);
    assert!(second.resource_version > first.resource_version);
    assert_eq!(store.get_by_id(&first.id).await.unwrap(), None);
    assert_eq!(store.get_by_id(&second.id).await.unwrap(), Some(second));
}

/// Payloads are opaque bytes: empty, binary, and large ones come back unchanged.
pub async fn payload_bytes_round_trip(store: Arc<dyn Store>) {
    let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let large: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    for (name, payload) in [("empty", vec![]), ("binary", binary), ("large", large)] {
        store
            .create(NewObject::new(SB, name, payload.clone()))
            .await
            .unwrap();
        let got = store.get(&SB, name).await.unwrap().unwrap();
        assert!(got.payload == payload, "{name} payload changed");
    }
}

/// The readiness probe answers on a healthy store.
pub async fn ping_answers(store: Arc<dyn Store>) {
    let took = store.ping().await.unwrap();
    assert!(took < Duration::from_secs(5), "ping took {took:?}");
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` case above must be listed in `store_conformance_tests!`,
    /// otherwise it would silently never run.
    #[test]
    fn every_case_is_in_the_macro() {
        let source = include_str!("conformance.rs");
        let (macro_body, rest) = source
            .split_once("macro_rules! __store_conformance_cases")
            .unwrap();
        let listed: Vec<&str> = macro_body
            .split_once("$fixture;")
            .unwrap()
            .1
            .split(')')
            .next()
            .unwrap()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let defined: Vec<&str> = rest
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .map(|l| l.split('(').next().unwrap())
            .collect();
        assert!(defined.len() >= 20, "parsed {defined:?}");
        for case in &defined {
            assert!(listed.contains(case), "case {case} is not in the macro");
        }
        assert_eq!(listed.len(), defined.len(), "listed {listed:?}");
    }
}
