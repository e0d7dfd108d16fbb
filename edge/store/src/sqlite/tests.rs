use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;

use tempfile::TempDir;

use super::*;
use crate::conformance::Fixture;

/// A fresh database in a directory the store has to create itself.
struct Fresh {
    store: Arc<dyn Store>,
    _dir: TempDir,
}

impl Fresh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("state/openshell.db")).unwrap();
        Fresh {
            store: Arc::new(store),
            _dir: dir,
        }
    }
}

impl Fixture for Fresh {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}

crate::store_conformance_tests!(Fresh::new());

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A second, raw connection for inspecting or damaging a database the store is not using.
fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

async fn create(store: &SqliteStore, name: &str) -> StoredObject {
    store
        .create(
            NewObject::new(ObjectKind::SANDBOX, name, name.as_bytes().to_vec()).label("app", name),
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn data_and_version_counter_survive_close_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    let store = SqliteStore::open(&path).unwrap();
    let kept = create(&store, "kept").await;
    let kept = store
        .update(
            &ObjectKind::SANDBOX,
            "kept",
            Precondition::ResourceVersion(kept.resource_version),
            b"v2".to_vec(),
            kept.labels.clone(),
        )
        .await
        .unwrap();
    let provider = store
        .create(NewObject::new(ObjectKind::PROVIDER, "p", vec![1, 2, 3]))
        .await
        .unwrap();
    create(&store, "gone").await;
    let mut rx = store.subscribe();
    assert!(
        store
            .delete(&ObjectKind::SANDBOX, "gone", Precondition::Unconditional)
            .await
            .unwrap()
    );
    let last_version = rx.recv().await.unwrap().object.resource_version;
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get(&ObjectKind::SANDBOX, "kept").await.unwrap(),
        Some(kept.clone())
    );
    assert_eq!(store.get_by_id(&provider.id).await.unwrap(), Some(provider));
    assert_eq!(store.get(&ObjectKind::SANDBOX, "gone").await.unwrap(), None);
    let listed = store
        .list(
            &ObjectKind::SANDBOX,
            &LabelSelector::everything().with("app", "kept"),
            None,
            0,
        )
        .await
        .unwrap();
    assert_eq!(listed, [kept]);
    // The deleted object held the highest version; it must not be handed out again.
    let next = create(&store, "next").await;
    assert_eq!(next.resource_version, last_version + 1);
}

#[tokio::test]
async fn reopening_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    for round in 0..3 {
        let store = SqliteStore::open(&path).unwrap();
        create(&store, &format!("n{round}")).await;
    }
    let conn = raw(&path);
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT version, name FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let expected: Vec<(i64, String)> = migrations::MIGRATIONS
        .iter()
        .map(|m| (m.version, m.name.to_owned()))
        .collect();
    assert_eq!(rows, expected);
    let count: i64 = conn
        .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn files_are_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state/gateway");
    let path = dir.join("openshell.db");
    let store = SqliteStore::open(&path).unwrap();
    create(&store, "x").await;
    assert_eq!(mode(&tmp.path().join("state")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&crate::lock::lock_path(&path)), 0o600);
    let wal = dir.join("openshell.db-wal");
    assert!(wal.exists(), "WAL mode keeps a -wal file while open");
    assert_eq!(mode(&wal), 0o600);
}

#[tokio::test]
async fn an_existing_readable_database_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    drop(SqliteStore::open(&path).unwrap());
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn connection_is_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(1234),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(tmp.path().join("openshell.db"), options).unwrap();
    let conn = store.inner.conn.lock().unwrap();
    let get = |pragma: &str| -> String {
        conn.query_row(&format!("SELECT * FROM pragma_{pragma}"), [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .map(|v| match v {
            Value::Integer(i) => i.to_string(),
            Value::Text(t) => t,
            other => format!("{other:?}"),
        })
        .unwrap()
    };
    assert_eq!(get("journal_mode"), "wal");
    assert_eq!(get("synchronous"), "1", "NORMAL");
    assert_eq!(get("foreign_keys"), "1");
    assert_eq!(get("busy_timeout"), "1234");
}

#[tokio::test]
async fn a_second_open_in_this_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    let first = SqliteStore::open(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::InUse { path: p, pid } => {
            assert_eq!(p, &path);
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("in use by another gateway"), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    // A clone is the same store, not a second opener.
    let clone = first.clone();
    drop(first);
    assert!(
        SqliteStore::open(&path).is_err(),
        "the clone still holds it"
    );
    drop(clone);
    SqliteStore::open(&path).unwrap();
}

const HOLD_ENV: &str = "OPENSHELL_STORE_TEST_HOLD_DB";

/// Not a test by itself: the child process of `a_second_gateway_process_is_refused`.
#[test]
#[ignore = "helper process, run by a_second_gateway_process_is_refused"]
fn hold_database_until_stdin_closes() {
    let Some(path) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let _store = SqliteStore::open(path).unwrap();
    println!("HOLDING {}", std::process::id());
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[tokio::test]
async fn a_second_gateway_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sqlite::tests::hold_database_until_stdin_closes",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLD_ENV, &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints the test name on the same line, before our output.
            if let Some((_, pid)) = line.split_once("HOLDING ") {
                let _ = tx.send(pid.trim().parse::<u32>().unwrap());
            }
        }
    });
    let Ok(child_pid) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the helper process never opened the database");
    };
    assert_eq!(child_pid, child.id());

    let started = Instant::now();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "must fail fast, not wait"
    );
    match err {
        StoreError::InUse { pid, .. } => assert_eq!(pid, Some(child_pid)),
        other => panic!("expected InUse, got {other:?}"),
    }

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    // The holder is gone: its lock went with it.
    SqliteStore::open(&path).unwrap();
}

#[tokio::test]
async fn a_non_database_file_is_refused_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, content) in [
        (
            "text.db",
            b"this is a text file, not a database\n".repeat(200),
        ),
        ("short.db", b"hello".to_vec()),
        ("junk.db", (0..8192u32).map(|i| (i * 7 + 3) as u8).collect()),
    ] {
        let path = tmp.path().join(name);
        fs::write(&path, &content).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{name}: {err:?}");
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("not an SQLite database"), "{message}");
        assert_eq!(
            fs::read(&path).unwrap(),
            content,
            "{name} must be left as it was"
        );
    }
}

#[tokio::test]
async fn a_damaged_database_is_refused_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..200 {
            create(&store, &format!("object-{i:03}")).await;
        }
    }
    let mut bytes = fs::read(&path).unwrap();
    assert!(
        bytes.len() > 16384,
        "expected several pages, got {}",
        bytes.len()
    );
    // Wipe page 2 onwards partly (page 1 holds the header and schema).
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    for b in &mut bytes[page..page * 3] {
        *b = 0xa5;
    }
    fs::write(&path, &bytes).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn an_unwritable_directory_is_refused_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("readonly");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    // Root ignores permission bits; then use a directory no one may create files in.
    let privileged = fs::write(dir.join("probe"), b"").is_ok();
    let dir = if privileged {
        Path::new("/sys/openshell-store-test").to_owned()
    } else {
        dir
    };
    let path = dir.join("openshell.db");
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&dir.display().to_string()), "{message}");
    assert!(message.contains("writable"), "{message}");

    // A file where the directory should be.
    let file = tmp.path().join("file");
    fs::write(&file, b"").unwrap();
    let err = SqliteStore::open(file.join("openshell.db")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_both_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    drop(SqliteStore::open(&path).unwrap());
    let supported = migrations::MIGRATIONS.len() as i64;
    raw(&path)
        .execute(
            "INSERT INTO schema_migrations VALUES (?1, 'from the future', 0, 'openshell 9.9.9')",
            [supported + 1],
        )
        .unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Schema(_)), "{err:?}");
    let message = err.to_string();
    for needle in [
        path.display().to_string(),
        format!("schema version {}", supported + 1),
        "openshell 9.9.9".to_owned(),
        format!("up to {supported}"),
        format!("openshell {}", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(
            message.contains(&needle),
            "{needle:?} missing from: {message}"
        );
    }
    // Nothing was changed by the refused open.
    let max: i64 = raw(&path)
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(max, supported + 1);
}

#[tokio::test]
async fn a_foreign_or_diverged_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let foreign = tmp.path().join("foreign.db");
    raw(&foreign)
        .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY)")
        .unwrap();
    let err = SqliteStore::open(&foreign).unwrap_err();
    assert!(matches!(err, StoreError::Schema(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("not created by an OpenShell gateway"),
        "{err}"
    );

    let diverged = tmp.path().join("diverged.db");
    drop(SqliteStore::open(&diverged).unwrap());
    raw(&diverged)
        .execute(
            "UPDATE schema_migrations SET name = 'something else' WHERE version = 1",
            [],
        )
        .unwrap();
    let err = SqliteStore::open(&diverged).unwrap_err();
    assert!(matches!(err, StoreError::Schema(_)), "{err:?}");
    assert!(err.to_string().contains("\"something else\""), "{err}");
}

#[tokio::test]
async fn a_write_lock_held_elsewhere_is_unavailable_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("openshell.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(200),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&path, options).unwrap();
    create(&store, "before").await;
    // An operator's sqlite3 shell in the middle of a write transaction.
    let other = raw(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let err = store
        .create(NewObject::new(ObjectKind::SANDBOX, "blocked", vec![]))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // Readers are not blocked by a writer in WAL mode.
    store.ping().await.unwrap();
    assert!(
        store
            .get(&ObjectKind::SANDBOX, "before")
            .await
            .unwrap()
            .is_some()
    );

    other.execute_batch("COMMIT").unwrap();
    let after = create(&store, "after").await;
    assert!(
        store
            .get(&ObjectKind::SANDBOX, "blocked")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.get_by_id(&after.id).await.unwrap(), Some(after));
}
