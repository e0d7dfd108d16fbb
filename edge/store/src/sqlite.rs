//! The default backend: one SQLite file in the gateway's state directory.
//!
//! # Concurrency model
//!
//! One connection behind a `std::sync::Mutex`, used only from
//! `tokio::task::spawn_blocking`, so SQLite's blocking calls never stall the async
//! runtime. One connection is enough because SQLite allows one writer at a time anyway and
//! the gateway's load is small objects at human/control-plane rates; in exchange, version
//! allocation, commit and event emission happen under one lock, which is what makes events
//! leave in version order without further machinery. Reads queue behind writes; if that
//! ever shows up in `ping` latency, a pool of read-only connections (WAL lets them run
//! beside the writer) can be added here without changing the [`Store`] contract.
//!
//! A second gateway on the same file is refused at open (see `lock.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::broadcast;

use crate::error::{Result, StoreError};
use crate::lock::ProcessLock;
use crate::object::{
    EventKind, LabelSelector, Labels, NewObject, ObjectEvent, ObjectKind, Precondition,
    StoredObject, now_ms, validate_labels, validate_name, validate_page,
};
use crate::{DEFAULT_EVENT_BUFFER, Store, fsutil};

mod migrations;

/// Tunables for [`SqliteStore::open_with`]. Build with struct update syntax,
/// `SqliteOptions { busy_timeout, ..SqliteOptions::default() }`, so added fields keep
/// their defaults.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// How long a statement waits for a lock held by another connection (e.g. an operator
    /// running `sqlite3` on the file) before failing with [`StoreError::Unavailable`].
    /// Default 5 s: long enough to ride out a checkpoint or a backup step, short enough that
    /// a stuck request fails while its client is still waiting.
    pub busy_timeout: Duration,
    /// How many events a subscriber may fall behind; default [`DEFAULT_EVENT_BUFFER`].
    pub event_buffer: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            event_buffer: DEFAULT_EVENT_BUFFER,
        }
    }
}

/// The SQLite-backed [`Store`].
///
/// Cheap to clone (all clones share one connection). The database closes, and the lock
/// against other gateways is released, when the last clone and every in-flight operation
/// are gone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    // Declared before `_lock`: fields drop in order, so the connection is closed (and the
    // WAL checkpointed) before another gateway may take over the file.
    conn: Mutex<Connection>,
    events: broadcast::Sender<ObjectEvent>,
    _lock: ProcessLock,
}

const COLUMNS: &str =
    "id, kind, name, labels, payload, resource_version, created_at_ms, updated_at_ms";

impl SqliteStore {
    /// The database's file name inside the gateway's state directory, as the existing
    /// OpenShell gateway names it.
    pub const DEFAULT_FILE_NAME: &'static str = "openshell.db";

    /// Opens (creating if needed) the database at `path` with default options.
    ///
    /// See [`open_with`](Self::open_with).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the database at `path`.
    ///
    /// Missing directories are created 0700 and a new database file 0600 (an existing one
    /// readable by others is tightened to 0600). Takes the single-gateway lock, sets WAL
    /// journaling, `synchronous=NORMAL`, the busy timeout and foreign keys, runs a quick
    /// integrity check and applies pending schema migrations in one transaction.
    ///
    /// Blocks on file I/O: call it at startup, or inside `spawn_blocking`.
    ///
    /// Fails with [`StoreError::InUse`] if another gateway has the database open,
    /// [`StoreError::Corrupt`] if the file is not an intact SQLite database,
    /// [`StoreError::Schema`] if it was written by a newer gateway or is not an OpenShell
    /// database, and [`StoreError::Io`] if the directory or file cannot be created.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        fsutil::ensure_private_dir(dir)?;
        let lock = ProcessLock::acquire(&path)?;
        // Created here rather than by SQLite so it is 0600 from the first byte; SQLite
        // gives the -wal and -shm files the database file's permissions.
        drop(fsutil::open_private_file(&path, "create database file")?);

        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| db_error(&path, "open", e))?;
        configure(&conn, &path, &options)?;
        let version = migrations::apply(&mut conn, &path)?;
        tracing::info!(path = %path.display(), schema_version = version, "store opened");

        let (events, _) = broadcast::channel(options.event_buffer.max(1));
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
                events,
                _lock: lock,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `op` on the connection in the blocking pool.
    async fn run<T, F>(&self, what: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock unwinds through rusqlite's Transaction, which
            // rolls back on drop: the connection is consistent and safe to keep using.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            op(&mut conn, &inner)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the sqlite worker for {what} failed: {e}")))?
    }
}

fn configure(conn: &Connection, path: &Path, options: &SqliteOptions) -> Result<()> {
    let err = |e| db_error(path, "configure", e);
    conn.busy_timeout(options.busy_timeout).map_err(err)?;
    // The first statement to read the file: a non-database fails here with NotADatabase.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Happens on filesystems without shared memory support (some network mounts).
        tracing::warn!(
            path = %path.display(),
            journal_mode = %mode,
            "WAL unavailable; using the reported journal mode"
        );
    }
    // NORMAL is durable across application crashes in WAL mode; a power cut may lose the
    // last transactions but never corrupts the file.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    let check: String = conn
        .pragma_query_value(None, "quick_check", |row| row.get(0))
        .map_err(err)?;
    if check != "ok" {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("integrity check failed: {check}"),
        });
    }
    Ok(())
}

/// Maps an SQLite failure to what the caller can act on.
fn db_error(path: &Path, doing: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &e {
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..) => {
            return StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("unexpected column content while trying to {doing}: {e}"),
            };
        }
        _ => {}
    }
    let shown = path.display();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: "the file is not an SQLite database".to_owned(),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!(
                "database {shown} stayed locked by another process while trying to {doing}: \
                 {e}; retry, and look for processes holding the file"
            ))
        }
        Some(ErrorCode::DiskFull) => StoreError::Unavailable(format!(
            "cannot {doing} in database {shown}: the disk is full; free space on its filesystem"
        )),
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            StoreError::Unavailable(format!(
                "cannot {doing} database {shown}: {e}; {}",
                fsutil::HINT_WRITABLE
            ))
        }
        _ => StoreError::Unavailable(format!("cannot {doing} in database {shown}: {e}")),
    }
}

fn read_object(path: &Path, row: &rusqlite::Row<'_>) -> Result<StoredObject> {
    let err = |e| db_error(path, "read an object", e);
    let kind: String = row.get(1).map_err(err)?;
    let name: String = row.get(2).map_err(err)?;
    let labels: String = row.get(3).map_err(err)?;
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let labels: Labels = serde_json::from_str(&labels).map_err(|e| {
        corrupt(format!(
            "labels of {kind} {name:?} are not a JSON string map: {e}"
        ))
    })?;
    let kind = ObjectKind::new(kind.as_str())
        .map_err(|_| corrupt(format!("object {name:?} has an invalid kind {kind:?}")))?;
    Ok(StoredObject {
        id: row.get(0).map_err(err)?,
        kind,
        name,
        labels,
        payload: row.get(4).map_err(err)?,
        resource_version: row.get(5).map_err(err)?,
        created_at_ms: row.get(6).map_err(err)?,
        updated_at_ms: row.get(7).map_err(err)?,
    })
}

fn query_objects(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<StoredObject>> {
    let err = |e| db_error(path, "query objects", e);
    let mut stmt = conn.prepare_cached(sql).map_err(err)?;
    let mut rows = stmt.query(params).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        out.push(read_object(path, row)?);
    }
    Ok(out)
}

fn select_by_name(
    conn: &Connection,
    path: &Path,
    kind: &ObjectKind,
    name: &str,
) -> Result<Option<StoredObject>> {
    let sql = format!("SELECT {COLUMNS} FROM objects WHERE kind = ?1 AND name = ?2");
    Ok(query_objects(conn, path, &sql, (kind.as_str(), name))?.pop())
}

/// Takes the next store-wide resource version. Must run inside the write transaction so
/// a rolled-back write gives its version back.
fn next_version(conn: &Connection, path: &Path) -> Result<i64> {
    conn.prepare_cached(
        "UPDATE counters SET value = value + 1 WHERE name = 'resource_version' RETURNING value",
    )
    .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
    .optional()
    .map_err(|e| db_error(path, "allocate a resource version", e))?
    .ok_or_else(|| StoreError::Corrupt {
        path: path.to_owned(),
        detail: "the resource_version counter row is missing".to_owned(),
    })
}

fn labels_json(labels: &Labels) -> String {
    // A map of strings always serializes.
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

fn check_precondition(current: &StoredObject, precondition: Precondition) -> Result<()> {
    match precondition {
        Precondition::ResourceVersion(expected) if expected != current.resource_version => {
            Err(StoreError::Conflict {
                kind: current.kind.to_string(),
                name: current.name.clone(),
                expected,
                actual: current.resource_version,
            })
        }
        _ => Ok(()),
    }
}

impl Inner {
    /// Called after commit, with the connection lock still held: events leave in commit
    /// (= version) order.
    fn emit(&self, kind: EventKind, object: StoredObject) {
        // No receivers is not an error: nobody is watching.
        let _ = self.events.send(ObjectEvent { kind, object });
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create(&self, new: NewObject) -> Result<StoredObject> {
        validate_name(&new.name)?;
        validate_labels(&new.labels)?;
        self.run("create", move |conn, inner| {
            let path = inner.path.as_path();
            let err = |e| db_error(path, "create an object", e);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            if select_by_name(&tx, path, &new.kind, &new.name)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: new.kind.to_string(),
                    name: new.name,
                });
            }
            let now = now_ms();
            let object = StoredObject {
                id: uuid::Uuid::new_v4().to_string(),
                resource_version: next_version(&tx, path)?,
                kind: new.kind,
                name: new.name,
                labels: new.labels,
                payload: new.payload,
                created_at_ms: now,
                updated_at_ms: now,
            };
            tx.prepare_cached(&format!(
                "INSERT INTO objects ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))
            .and_then(|mut stmt| {
                stmt.execute((
                    &object.id,
                    object.kind.as_str(),
                    &object.name,
                    labels_json(&object.labels),
                    &object.payload,
                    object.resource_version,
                    object.created_at_ms,
                    object.updated_at_ms,
                ))
            })
            .map_err(err)?;
            tx.commit().map_err(err)?;
            inner.emit(EventKind::Added, object.clone());
            Ok(object)
        })
        .await
    }

    async fn get(&self, kind: &ObjectKind, name: &str) -> Result<Option<StoredObject>> {
        let (kind, name) = (kind.clone(), name.to_owned());
        self.run("get", move |conn, inner| {
            select_by_name(conn, &inner.path, &kind, &name)
        })
        .await
    }

    async fn get_by_id(&self, id: &str) -> Result<Option<StoredObject>> {
        let id = id.to_owned();
        self.run("get_by_id", move |conn, inner| {
            let sql = format!("SELECT {COLUMNS} FROM objects WHERE id = ?1");
            Ok(query_objects(conn, &inner.path, &sql, [&id])?.pop())
        })
        .await
    }

    async fn list(
        &self,
        kind: &ObjectKind,
        selector: &LabelSelector,
        limit: Option<usize>,
        offset: usize,
    ) -> Result<Vec<StoredObject>> {
        validate_page(limit, offset)?;
        // Checked above: both fit in i64. SQLite reads a negative LIMIT as "no limit".
        let limit = limit.map_or(-1, |l| l as i64);
        let offset = offset as i64;
        let mut sql = format!("SELECT {COLUMNS} FROM objects WHERE kind = ?1");
        let mut params = vec![Value::Text(kind.to_string())];
        for (key, value) in selector.requirements() {
            // json_each compares keys literally (no JSON-path parsing of the key), so keys
            // with dots, quotes or brackets select exactly themselves.
            let n = params.len();
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM json_each(objects.labels) AS l \
                 WHERE l.key = ?{} AND l.type = 'text' AND l.value = ?{})",
                n + 1,
                n + 2
            ));
            params.push(Value::Text(key.clone()));
            params.push(Value::Text(value.clone()));
        }
        let n = params.len();
        sql.push_str(&format!(
            " ORDER BY name LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        ));
        params.push(Value::Integer(limit));
        params.push(Value::Integer(offset));
        self.run("list", move |conn, inner| {
            query_objects(conn, &inner.path, &sql, rusqlite::params_from_iter(params))
        })
        .await
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
        let (kind, name) = (kind.clone(), name.to_owned());
        self.run("update", move |conn, inner| {
            let path = inner.path.as_path();
            let err = |e| db_error(path, "update an object", e);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let current =
                select_by_name(&tx, path, &kind, &name)?.ok_or_else(|| StoreError::NotFound {
                    kind: kind.to_string(),
                    name: name.clone(),
                })?;
            check_precondition(&current, precondition)?;
            let object = StoredObject {
                resource_version: next_version(&tx, path)?,
                // Never before the previous write, even if the wall clock stepped back.
                updated_at_ms: now_ms().max(current.updated_at_ms),
                payload,
                labels,
                ..current
            };
            tx.prepare_cached(
                "UPDATE objects SET labels = ?1, payload = ?2, resource_version = ?3, \
                 updated_at_ms = ?4 WHERE id = ?5",
            )
            .and_then(|mut stmt| {
                stmt.execute((
                    labels_json(&object.labels),
                    &object.payload,
                    object.resource_version,
                    object.updated_at_ms,
                    &object.id,
                ))
            })
            .map_err(err)?;
            tx.commit().map_err(err)?;
            inner.emit(EventKind::Modified, object.clone());
            Ok(object)
        })
        .await
    }

    async fn delete(
        &self,
        kind: &ObjectKind,
        name: &str,
        precondition: Precondition,
    ) -> Result<bool> {
        let (kind, name) = (kind.clone(), name.to_owned());
        self.run("delete", move |conn, inner| {
            let path = inner.path.as_path();
            let err = |e| db_error(path, "delete an object", e);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let Some(mut object) = select_by_name(&tx, path, &kind, &name)? else {
                return Ok(false);
            };
            check_precondition(&object, precondition)?;
            // Deletions take a version too, so a watcher can order them and resume after.
            object.resource_version = next_version(&tx, path)?;
            tx.prepare_cached("DELETE FROM objects WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute([&object.id]))
                .map_err(err)?;
            tx.commit().map_err(err)?;
            inner.emit(EventKind::Deleted, object);
            Ok(true)
        })
        .await
    }

    async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        self.run("ping", |conn, inner| {
            // Reads a real page, so a vanished or broken file shows up, not just the lock.
            conn.prepare_cached("SELECT value FROM counters WHERE name = 'resource_version'")
                .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)))
                .map_err(|e| db_error(&inner.path, "ping", e))
        })
        .await?;
        Ok(start.elapsed())
    }

    fn subscribe(&self) -> broadcast::Receiver<ObjectEvent> {
        self.inner.events.subscribe()
    }
}

#[cfg(test)]
mod tests;
