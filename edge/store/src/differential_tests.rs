//! Random operation sequences run against [`SqliteStore`] and [`MemoryStore`] side by side:
//! every result and every event must be the same (ids and timestamps aside, which are
//! random and clock-dependent). This is what lets the gateway trust the fake.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{
    LabelSelector, Labels, MemoryStore, NewObject, ObjectEvent, ObjectKind, Precondition,
    SqliteStore, Store, StoredObject,
};

/// xorshift64*: deterministic, dependency-free, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KINDS: [ObjectKind; 2] = [ObjectKind::SANDBOX, ObjectKind::PROVIDER];
const NAMES: [&str; 5] = ["a", "b", "c", "d", ""];
const LABEL_KEYS: [&str; 3] = ["team", "env", "openshell.io/owner"];
const LABEL_VALUES: [&str; 3] = ["x", "y", ""];

fn random_labels(rng: &mut Rng) -> Labels {
    (0..rng.below(3))
        .map(|_| {
            (
                rng.pick(&LABEL_KEYS).to_string(),
                rng.pick(&LABEL_VALUES).to_string(),
            )
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Create(ObjectKind, String, Labels, Vec<u8>),
    Update(ObjectKind, String, Precondition, Vec<u8>, Labels),
    Delete(ObjectKind, String, Precondition),
    Get(ObjectKind, String),
    GetById(usize),
    List(ObjectKind, LabelSelector, Option<usize>, usize),
}

/// Per store: its random ids in order of first appearance, so both stores' ids can be
/// compared by position.
#[derive(Default)]
struct Ids(HashMap<String, usize>, Vec<String>);

impl Ids {
    fn canonical(&mut self, id: &str) -> usize {
        if let Some(&n) = self.0.get(id) {
            return n;
        }
        self.1.push(id.to_owned());
        self.0.insert(id.to_owned(), self.1.len() - 1);
        self.1.len() - 1
    }
}

fn show(object: &StoredObject, ids: &mut Ids) -> String {
    assert!(object.created_at_ms <= object.updated_at_ms, "{object:?}");
    format!(
        "#{} {}/{} {:?} {:?} rv={}",
        ids.canonical(&object.id),
        object.kind,
        object.name,
        object.labels,
        object.payload,
        object.resource_version
    )
}

async fn apply(store: &Arc<dyn Store>, op: &Op, ids: &mut Ids) -> String {
    let err = |e: crate::StoreError| format!("error: {e}");
    match op.clone() {
        Op::Create(kind, name, labels, payload) => store
            .create(NewObject::new(kind, name, payload).labels(labels))
            .await
            .map_or_else(err, |o| show(&o, ids)),
        Op::Update(kind, name, pre, payload, labels) => store
            .update(&kind, &name, pre, payload, labels)
            .await
            .map_or_else(err, |o| show(&o, ids)),
        Op::Delete(kind, name, pre) => store
            .delete(&kind, &name, pre)
            .await
            .map_or_else(err, |b| b.to_string()),
        Op::Get(kind, name) => store
            .get(&kind, &name)
            .await
            .map_or_else(err, |o| o.map_or("none".to_owned(), |o| show(&o, ids))),
        Op::GetById(n) => {
            let id = ids
                .1
                .get(n)
                .cloned()
                .unwrap_or_else(|| "unknown".to_owned());
            store
                .get_by_id(&id)
                .await
                .map_or_else(err, |o| o.map_or("none".to_owned(), |o| show(&o, ids)))
        }
        Op::List(kind, selector, limit, offset) => store
            .list(&kind, &selector, limit, offset)
            .await
            .map_or_else(err, |objects| {
                let shown: Vec<_> = objects.iter().map(|o| show(o, ids)).collect();
                shown.join(" | ")
            }),
    }
}

fn random_op(rng: &mut Rng, writes: i64, ids_seen: usize) -> Op {
    let kind = rng.pick(&KINDS).clone();
    let name = rng.pick(&NAMES).to_string();
    let payload = vec![rng.below(256) as u8; rng.below(3)];
    // Versions near the store's counter, so preconditions both hit and miss.
    let pre = match rng.below(3) {
        0 => Precondition::Unconditional,
        _ => Precondition::ResourceVersion(writes - rng.below(4) as i64),
    };
    match rng.below(7) {
        0 | 1 => Op::Create(kind, name, random_labels(rng), payload),
        2 => Op::Update(kind, name, pre, payload, random_labels(rng)),
        3 => Op::Delete(kind, name, pre),
        4 => Op::Get(kind, name),
        5 => Op::GetById(rng.below(ids_seen + 1)),
        _ => {
            let selector: LabelSelector = random_labels(rng).into_iter().collect();
            let limit = [None, Some(0), Some(1), Some(2)][rng.below(4)];
            Op::List(kind, selector, limit, rng.below(3))
        }
    }
}

fn drain(rx: &mut broadcast::Receiver<ObjectEvent>, ids: &mut Ids) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(format!("{:?} {}", event.kind, show(&event.object, ids)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_memory_agree_on_random_operations() {
    const SEEDS: u64 = 30;
    const OPS: usize = 150;
    for seed in 1..=SEEDS {
        let tmp = tempfile::tempdir().unwrap();
        let sqlite: Arc<dyn Store> =
            Arc::new(SqliteStore::open(tmp.path().join("openshell.db")).unwrap());
        let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let (mut sqlite_rx, mut memory_rx) = (sqlite.subscribe(), memory.subscribe());
        let (mut sqlite_ids, mut memory_ids) = (Ids::default(), Ids::default());
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut history = String::new();
        let mut writes = 0i64;
        for step in 0..OPS {
            let op = random_op(&mut rng, writes, memory_ids.1.len());
            let from_sqlite = apply(&sqlite, &op, &mut sqlite_ids).await;
            let from_memory = apply(&memory, &op, &mut memory_ids).await;
            let _ = writeln!(history, "{step}: {op:?} -> {from_memory}");
            assert_eq!(
                from_sqlite, from_memory,
                "seed {seed}, step {step}: backends disagree; history:\n{history}"
            );
            let sqlite_events = drain(&mut sqlite_rx, &mut sqlite_ids);
            let memory_events = drain(&mut memory_rx, &mut memory_ids);
            assert_eq!(
                sqlite_events, memory_events,
                "seed {seed}, step {step}: events differ; history:\n{history}"
            );
            writes += memory_events.len() as i64;
        }
        assert!(
            writes > 10,
            "seed {seed} made only {writes} writes: generator too timid"
        );
    }
}
