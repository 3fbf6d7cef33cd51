//! SQLite storage: opening, pragmas, migrations and the settings table.

pub mod schema;

use crate::error::{Result, TownError};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// Open (or create) a town database file in WAL mode, held by this
/// connection alone, and bring it up to date.
pub fn open_file(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    // One process owns a town. The exclusive lock keeps out a second one (a
    // second `gastown up` on the same data directory would run a second
    // reconciler), and it keeps the WAL index in this process's memory: no
    // shared-memory file and no file lock on every statement.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| in_use(e, path))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    prepare(conn)
}

fn in_use(e: rusqlite::Error, path: &Path) -> TownError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => TownError::invalid(
            "town database",
            format!(
                "{} is in use by another process (is a town already running on this data directory?)",
                path.display()
            ),
        ),
        _ => e.into(),
    }
}

/// An in-memory town database (tests and benchmarks).
pub fn open_in_memory() -> Result<Connection> {
    prepare(Connection::open_in_memory()?)
}

fn prepare(conn: Connection) -> Result<Connection> {
    // A busy database would make SQLite sleep on the real clock; there is one
    // writer per town, so fail fast instead.
    conn.busy_timeout(std::time::Duration::ZERO)?;
    conn.set_prepared_statement_cache_capacity(256);
    migrate(&conn)?;
    Ok(conn)
}

/// Run every migration not yet applied, each in its own transaction.
pub fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATION_COUNT;
    if version > known {
        return Err(TownError::Corrupt {
            what: "schema",
            detail: format!("database is at version {version}, this build knows {known}"),
        });
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

const MIGRATION_COUNT: i64 = schema::MIGRATIONS.len() as i64;

pub fn get_setting(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn.prepare_cached("SELECT value FROM settings WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()?)
}

pub fn put_setting(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

pub fn delete_setting(conn: &Connection, key: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM settings WHERE key = ?1")?.execute([key])?;
    Ok(())
}

/// Run `f` inside a savepoint: its writes are kept on `Ok`, undone on `Err`.
/// Lets one failing action or event roll back alone inside a tick's transaction.
/// Statements are cached: a tick takes one savepoint per event and per action.
pub fn savepoint<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    conn.prepare_cached("SAVEPOINT step")?.execute([])?;
    match f() {
        Ok(v) => {
            conn.prepare_cached("RELEASE step")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO step")?.execute([])?;
            conn.prepare_cached("RELEASE step")?.execute([])?;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_versioned() {
        let conn = open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATION_COUNT);
    }

    #[test]
    fn newer_schema_is_refused_not_clobbered() {
        let conn = open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let e = migrate(&conn).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
    }

    #[test]
    fn savepoint_rolls_back_only_its_own_writes() {
        let conn = open_in_memory().unwrap();
        put_setting(&conn, "a", "1").unwrap();
        let r: Result<()> = savepoint(&conn, || {
            put_setting(&conn, "a", "2")?;
            Err(TownError::invalid("x", "y"))
        });
        assert!(r.is_err());
        assert_eq!(get_setting(&conn, "a").unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn wal_file_database_opens() {
        let dir = std::env::temp_dir().join(format!("gastown-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("town.db");
        let conn = open_file(&path).unwrap();
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_town_database_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("town.db");
        let first = open_file(&path).unwrap();
        put_setting(&first, "a", "1").unwrap();
        let err = open_file(&path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("in use by another process") && err.contains(&path.display().to_string()), "{err}");
        assert!(!path.with_extension("db-shm").exists(), "the WAL index lives in memory");
        drop(first);
        let second = open_file(&path).unwrap();
        assert_eq!(get_setting(&second, "a").unwrap().as_deref(), Some("1"), "nothing stored was lost");
    }
}
