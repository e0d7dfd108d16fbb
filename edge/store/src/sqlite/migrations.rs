//! Schema migrations, recorded in `schema_migrations`.
//!
//! Rules for adding one: append to [`MIGRATIONS`] with the next version; never edit or
//! reorder a released entry (databases in the field record their names, and a mismatch is
//! refused). Pending migrations are applied together in one transaction, so a failure
//! leaves the database at its old version.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::db_error;
use crate::error::{Result, StoreError};
use crate::object::now_ms;

pub(super) struct Migration {
    pub(super) version: i64,
    pub(super) name: &'static str,
    pub(super) sql: &'static str,
}

pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "objects",
        sql: "
        CREATE TABLE objects (
            id               TEXT    NOT NULL PRIMARY KEY,
            kind             TEXT    NOT NULL,
            name             TEXT    NOT NULL,
            labels           TEXT    NOT NULL CHECK (json_type(labels) = 'object'),
            payload          BLOB    NOT NULL,
            -- Store-wide and unique: see the Store trait docs. Indexed for watch resumption.
            resource_version INTEGER NOT NULL UNIQUE,
            created_at_ms    INTEGER NOT NULL,
            updated_at_ms    INTEGER NOT NULL,
            UNIQUE (kind, name)
        ) STRICT;
        -- Persisted counters; 'resource_version' is the last version handed out.
        CREATE TABLE counters (
            name  TEXT    NOT NULL PRIMARY KEY,
            value INTEGER NOT NULL
        ) STRICT;
        INSERT INTO counters (name, value) VALUES ('resource_version', 0);
    ",
    },
    Migration {
        version: 2,
        name: "owners",
        // Ownership came with authorization: every sandbox and provider records its owner in
        // the label `openshell.io/owner` (the gateway reserves the `openshell.io/` prefix).
        // Objects from before have none; they become the admins' (`system:admins`), so no user
        // gains access to something created before roles were enforced. A backfill of the
        // labels only: payloads, versions and timestamps stay as they were.
        sql: r#"
        UPDATE objects
           SET labels = json_set(labels, '$."openshell.io/owner"', 'system:admins')
         WHERE kind IN ('sandbox', 'provider')
           AND json_extract(labels, '$."openshell.io/owner"') IS NULL;
    "#,
    },
];

/// Who applies migrations, recorded so a refusal can say which binary wrote the schema.
fn this_binary() -> String {
    format!("openshell {}", env!("CARGO_PKG_VERSION"))
}

/// Brings the schema up to date; returns the resulting version.
pub(super) fn apply(conn: &mut Connection, path: &Path) -> Result<i64> {
    let err = |e| db_error(path, "migrate the schema", e);
    let shown = path.display();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;

    let count = |sql: &str| tx.query_row(sql, [], |row| row.get::<_, i64>(0));
    let has_ledger = count(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'",
    )
    .map_err(err)?
        > 0;
    if !has_ledger {
        let foreign = count("SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'")
            .map_err(err)?;
        if foreign > 0 {
            return Err(StoreError::Schema(format!(
                "database {shown} has tables but no schema_migrations table, so it was not \
                 created by an OpenShell gateway; point the gateway at a new file"
            )));
        }
        tx.execute_batch(
            "CREATE TABLE schema_migrations (
                version       INTEGER NOT NULL PRIMARY KEY,
                name          TEXT    NOT NULL,
                applied_at_ms INTEGER NOT NULL,
                applied_by    TEXT    NOT NULL
            ) STRICT;",
        )
        .map_err(err)?;
    }

    let applied: Vec<(i64, String, String)> = tx
        .prepare("SELECT version, name, applied_by FROM schema_migrations ORDER BY version")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect()
        })
        .map_err(err)?;

    let supported = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some((found, _, by)) = applied.last().filter(|(v, _, _)| *v > supported) {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "this binary".to_owned());
        return Err(StoreError::Schema(format!(
            "database {shown} has schema version {found} (written by {by}), but {exe} ({}) \
             supports versions up to {supported}; run a gateway at least as new as {by}, or \
             restore a backup taken before the upgrade",
            this_binary()
        )));
    }
    for (i, (version, name, _)) in applied.iter().enumerate() {
        let known = MIGRATIONS.get(i);
        if known.is_none_or(|m| m.version != *version || m.name != name) {
            return Err(StoreError::Schema(format!(
                "database {shown} records migration {version} {name:?}, which {} does not \
                 have at that position; it was written by an incompatible build",
                this_binary()
            )));
        }
    }

    let current = applied.last().map_or(0, |(v, _, _)| *v);
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(migration.sql).map_err(err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at_ms, applied_by) \
             VALUES (?1, ?2, ?3, ?4)",
            (migration.version, migration.name, now_ms(), this_binary()),
        )
        .map_err(err)?;
        tracing::info!(
            path = %shown,
            version = migration.version,
            name = migration.name,
            "applied schema migration"
        );
    }
    tx.commit().map_err(err)?;
    Ok(supported)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written before migration 2 (its objects have no owner) is opened by the
    /// current code: sandboxes and providers become the admins', other kinds and objects
    /// that already name an owner are untouched.
    #[test]
    fn objects_from_before_ownership_become_the_admins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            tx.execute_batch(MIGRATIONS[0].sql).unwrap();
            tx.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER NOT NULL PRIMARY KEY,
                    name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL,
                    applied_by TEXT NOT NULL) STRICT;
                 INSERT INTO schema_migrations VALUES (1, 'objects', 0, 'openshell 0.1.0');
                 INSERT INTO objects VALUES
                    ('1', 'sandbox', 'old-box', '{\"team\":\"a\"}', x'00', 1, 0, 0),
                    ('2', 'provider', 'old-key', '{}', x'00', 2, 0, 0),
                    ('3', 'sandbox_policy', 'p', '{}', x'00', 3, 0, 0),
                    ('4', 'sandbox', 'mine', '{\"openshell.io/owner\":\"alice\"}', x'00', 4, 0, 0);
                 UPDATE counters SET value = 4;",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(apply(&mut conn, &path).unwrap(), 2);
        let labels = |name: &str| -> String {
            conn.query_row("SELECT labels FROM objects WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .unwrap()
        };
        let owner = |name: &str| -> Option<String> {
            let v: serde_json::Value = serde_json::from_str(&labels(name)).unwrap();
            v.get("openshell.io/owner")
                .map(|o| o.as_str().unwrap().to_string())
        };
        assert_eq!(owner("old-box").as_deref(), Some("system:admins"));
        assert!(
            labels("old-box").contains("\"team\":\"a\""),
            "other labels kept"
        );
        assert_eq!(owner("old-key").as_deref(), Some("system:admins"));
        assert_eq!(owner("p"), None, "only sandboxes and providers have owners");
        assert_eq!(owner("mine").as_deref(), Some("alice"));
        // Applying again changes nothing.
        assert_eq!(apply(&mut conn, &path).unwrap(), 2);
    }

    #[test]
    fn versions_are_contiguous_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "migration {}", m.name);
        }
    }
}
