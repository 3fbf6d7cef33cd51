//! Session databases: one SQLite file per agent (WAL mode) on the container's
//! disk, at `<data dir>/agent-home-<agent id>/session.db`, holding the
//! agent's sessions and their turns. This is our stand-in for the coding
//! agent's own database (upstream's `kilo.db`): what a snapshot uploads and a
//! start hydrates.
//!
//! All calls are short and synchronous; callers never hold one across an
//! `.await`. Every connection has a zero busy timeout, so a lock held by
//! another connection is reported at once instead of blocking the runtime.

use crate::defects::{self, Defect};
use crate::time::Timestamp;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PRAGMA application_id` of a session database ("GTSD").
pub const APPLICATION_ID: i32 = 0x4754_5344;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session database {path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    #[error("{path} is not a session database ({why})")]
    NotASessionDb { path: String, why: String },
    #[error("session database {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TurnRole {
    User,
    Assistant,
}

impl TurnRole {
    fn as_str(self) -> &'static str {
        match self {
            TurnRole::User => "user",
            TurnRole::Assistant => "assistant",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub session_id: String,
    pub role: TurnRole,
    pub text: String,
    pub at: Timestamp,
}

/// An open session database.
#[derive(Debug)]
pub struct SessionDb {
    conn: Connection,
    path: PathBuf,
}

/// Where an agent's session database lives.
pub fn db_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    agent_home(data_dir, agent_id).join("session.db")
}

/// The agent's home directory on the container's disk (also its workdir).
pub fn agent_home(data_dir: &Path, agent_id: &str) -> PathBuf {
    // Agent ids are UUID-shaped; anything else is made path-safe.
    let safe: String =
        agent_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    data_dir.join(format!("agent-home-{safe}"))
}

fn sidecars(path: &Path) -> [PathBuf; 2] {
    let s = path.as_os_str().to_string_lossy();
    [PathBuf::from(format!("{s}-wal")), PathBuf::from(format!("{s}-shm"))]
}

/// Delete the database and its WAL/shared-memory files (missing ones are fine).
pub fn remove_files(path: &Path) -> Result<(), SessionError> {
    for p in std::iter::once(path.to_path_buf()).chain(sidecars(path)) {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(SessionError::Io { path: p.display().to_string(), source }),
        }
    }
    Ok(())
}

/// Put snapshot bytes in place of the local database. Stale WAL files go
/// first: replaying an old WAL over new main-file bytes would corrupt it.
pub fn install_snapshot(path: &Path, bytes: &[u8]) -> Result<(), SessionError> {
    let io = |source| SessionError::Io { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    remove_files(path)?;
    std::fs::write(path, bytes).map_err(io)
}

fn connect(path: &Path, flags: OpenFlags) -> Result<Connection, SessionError> {
    let sq = |source| SessionError::Sqlite { path: path.display().to_string(), source };
    let conn = Connection::open_with_flags(path, flags).map_err(sq)?;
    conn.busy_timeout(Duration::ZERO).map_err(sq)?;
    Ok(conn)
}

impl SessionDb {
    /// Open the database at `path`, creating it when missing. An existing
    /// file must be an intact session database; anything else is refused
    /// (the caller falls back to a fresh one).
    pub fn open(path: &Path) -> Result<SessionDb, SessionError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| SessionError::Io { path: dir.display().to_string(), source })?;
        }
        let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        let db = SessionDb { conn, path: path.to_path_buf() };
        db.validate_and_init()?;
        Ok(db)
    }

    /// Open an existing session database to read it, changing nothing: an
    /// inspection (an oracle, a test) must not write into the database the
    /// agent is writing. Refuses a file that is not a session database.
    pub fn open_read_only(path: &Path) -> Result<SessionDb, SessionError> {
        let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let db = SessionDb { conn, path: path.to_path_buf() };
        let app_id = db.application_id()?;
        if app_id != APPLICATION_ID {
            return Err(db.not_session(format!("application_id {app_id:#x}")));
        }
        Ok(db)
    }

    fn sq(&self) -> impl Fn(rusqlite::Error) -> SessionError + '_ {
        move |source| SessionError::Sqlite { path: self.path.display().to_string(), source }
    }

    fn not_session(&self, why: impl Into<String>) -> SessionError {
        SessionError::NotASessionDb { path: self.path.display().to_string(), why: why.into() }
    }

    /// The file's `application_id`; a file that is not SQLite fails here,
    /// on its first read.
    fn application_id(&self) -> Result<i32, SessionError> {
        self.conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(|e| self.not_session(e.to_string()))
    }

    fn validate_and_init(&self) -> Result<(), SessionError> {
        let app_id = self.application_id()?;
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.not_session(e.to_string()))?;
        if app_id != APPLICATION_ID && !(app_id == 0 && tables == 0) {
            return Err(self.not_session(format!("application_id {app_id:#x}, {tables} schema objects")));
        }
        let check: String =
            self.conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| self.not_session(e.to_string()))?;
        if check != "ok" {
            return Err(self.not_session(format!("quick_check: {check}")));
        }
        let mode: String = self.conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(self.sq())?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(self.not_session(format!("journal mode {mode}")));
        }
        self.conn
            .execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID};
                 CREATE TABLE IF NOT EXISTS sessions (
                     id TEXT PRIMARY KEY,
                     created_at INTEGER NOT NULL,
                     updated_at INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS turns (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     session_id TEXT NOT NULL REFERENCES sessions(id),
                     role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
                     text TEXT NOT NULL,
                     at INTEGER NOT NULL
                 );"
            ))
            .map_err(self.sq())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The most recently updated session, if any (what the mayor resumes).
    pub fn latest_session(&self) -> Result<Option<String>, SessionError> {
        self.conn
            .query_row("SELECT id FROM sessions ORDER BY updated_at DESC, rowid DESC LIMIT 1", [], |r| r.get(0))
            .optional()
            .map_err(self.sq())
    }

    /// Start a new session and return its id.
    pub fn new_session(&self, now: Timestamp) -> Result<String, SessionError> {
        let n: i64 = self.conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0)).map_err(self.sq())?;
        let id = format!("ses-{:04}", n + 1);
        self.conn
            .execute("INSERT INTO sessions (id, created_at, updated_at) VALUES (?1, ?2, ?2)", params![id, now.ms()])
            .map_err(self.sq())?;
        Ok(id)
    }

    /// Append a turn to a session.
    pub fn append(&self, session_id: &str, role: TurnRole, text: &str, now: Timestamp) -> Result<(), SessionError> {
        let tx = self.conn.unchecked_transaction().map_err(self.sq())?;
        tx.execute(
            "INSERT INTO turns (session_id, role, text, at) VALUES (?1, ?2, ?3, ?4)",
            params![session_id, role.as_str(), text, now.ms()],
        )
        .map_err(self.sq())?;
        tx.execute("UPDATE sessions SET updated_at = max(updated_at, ?2) WHERE id = ?1", params![session_id, now.ms()])
            .map_err(self.sq())?;
        tx.commit().map_err(self.sq())
    }

    /// Every turn of a session, oldest first.
    pub fn turns(&self, session_id: &str) -> Result<Vec<Turn>, SessionError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT session_id, role, text, at FROM turns WHERE session_id = ?1")
            .map_err(self.sq())?;
        let rows = st
            .query_map([session_id], |r| {
                let role: String = r.get(1)?;
                Ok(Turn {
                    session_id: r.get(0)?,
                    role: if role == "user" { TurnRole::User } else { TurnRole::Assistant },
                    text: r.get(2)?,
                    at: Timestamp(r.get(3)?),
                })
            })
            .map_err(self.sq())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.sq())
    }

    /// The number of sessions recorded.
    pub fn session_count(&self) -> Result<i64, SessionError> {
        self.conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0)).map_err(self.sq())
    }
}

/// The answer of `PRAGMA wal_checkpoint(TRUNCATE)`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CheckpointResult {
    pub busy: i64,
    pub log: i64,
    pub checkpointed: i64,
}

impl CheckpointResult {
    /// Every WAL frame reached the main file: the main file alone is the database.
    pub fn complete(self) -> bool {
        self.busy == 0 && self.log == self.checkpointed
    }
}

/// Run `PRAGMA wal_checkpoint(TRUNCATE)` from a connection of its own.
pub fn checkpoint(path: &Path) -> Result<CheckpointResult, SessionError> {
    let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok(CheckpointResult { busy: r.get(0)?, log: r.get(1)?, checkpointed: r.get(2)? })
    })
    .map_err(|source| SessionError::Sqlite { path: path.display().to_string(), source })
}

/// What a snapshot attempt read from disk.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotRead {
    /// No database on disk (an agent that never wrote): nothing to upload.
    NoDatabase,
    /// The checkpoint did not complete: uploading the main file would lose
    /// the newest turns (or overwrite a good remote copy), so skip.
    Incomplete(CheckpointResult),
    Bytes(Vec<u8>),
}

/// Checkpoint the database and read its main file for upload.
pub fn read_for_snapshot(path: &Path) -> Result<SnapshotRead, SessionError> {
    if !path.exists() {
        return Ok(SnapshotRead::NoDatabase);
    }
    if !defects::on(Defect::SnapshotWithoutCheckpoint) {
        let r = checkpoint(path)?;
        if !r.complete() {
            return Ok(SnapshotRead::Incomplete(r));
        }
    }
    std::fs::read(path)
        .map(SnapshotRead::Bytes)
        .map_err(|source| SessionError::Io { path: path.display().to_string(), source })
}

/// What a reader of a session database depends on: the main file's bytes,
/// the WAL's bytes and whether the shared-memory index exists (a read-only
/// open behaves differently without it). Two equal fingerprints of the same
/// path read the same, so an inspector that polls many idle sessions can
/// compare fingerprints instead of opening each database; comparing bytes
/// rather than sizes or mtimes keeps that exact (a restarted WAL can reach
/// its old size, and mtimes are coarse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    main: Option<Vec<u8>>,
    wal: Option<Vec<u8>>,
    shm: bool,
}

/// The fingerprint of the database at `path`; a file that cannot be read
/// counts as missing (the reader would fail on it the same way).
pub fn fingerprint(path: &Path) -> Fingerprint {
    let [wal, shm] = sidecars(path);
    Fingerprint { main: std::fs::read(path).ok(), wal: std::fs::read(wal).ok(), shm: shm.exists() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn a_fingerprint_changes_with_every_write_and_not_with_reads() {
        let dir = tmp();
        let path = db_path(dir.path(), "a1");
        assert_eq!(fingerprint(&path), Fingerprint::default(), "no database yet");
        let db = SessionDb::open(&path).unwrap();
        let s = db.new_session(Timestamp(1)).unwrap();
        db.append(&s, TurnRole::User, "hello", Timestamp(2)).unwrap();
        let before = fingerprint(&path);
        SessionDb::open_read_only(&path).unwrap().turns(&s).unwrap();
        assert_eq!(fingerprint(&path), before, "a read-only inspection changes nothing");
        db.append(&s, TurnRole::User, "hello", Timestamp(3)).unwrap();
        let appended = fingerprint(&path);
        assert_ne!(appended, before);
        // A checkpoint empties the WAL; the next write starts it again from
        // its first frame, and the fingerprint still tells the states apart.
        assert!(checkpoint(&path).unwrap().complete());
        let checkpointed = fingerprint(&path);
        assert_ne!(checkpointed, appended);
        db.append(&s, TurnRole::Assistant, "hi", Timestamp(4)).unwrap();
        assert_ne!(fingerprint(&path), checkpointed);
        // Snapshot bytes installed in place of the database.
        let SnapshotRead::Bytes(bytes) = read_for_snapshot(&path).unwrap() else { panic!("no snapshot") };
        let other = db_path(dir.path(), "a2");
        install_snapshot(&other, &bytes).unwrap();
        let installed = fingerprint(&other);
        assert_ne!(installed, Fingerprint::default());
        install_snapshot(&other, &bytes[..bytes.len() / 2]).unwrap();
        assert_ne!(fingerprint(&other), installed);
    }

    #[test]
    fn session_db_records_turns_and_finds_the_latest_session() {
        let dir = tmp();
        let path = db_path(dir.path(), "a1");
        let db = SessionDb::open(&path).unwrap();
        assert_eq!(db.latest_session().unwrap(), None);
        let s1 = db.new_session(Timestamp(10)).unwrap();
        db.append(&s1, TurnRole::User, "hello", Timestamp(11)).unwrap();
        let s2 = db.new_session(Timestamp(12)).unwrap();
        assert_ne!(s1, s2);
        assert_eq!(db.latest_session().unwrap(), Some(s2.clone()));
        db.append(&s1, TurnRole::Assistant, "hi", Timestamp(20)).unwrap();
        assert_eq!(db.latest_session().unwrap(), Some(s1.clone()), "a turn makes its session the latest");
        let turns = db.turns(&s1).unwrap();
        assert_eq!(turns.iter().map(|t| t.text.as_str()).collect::<Vec<_>>(), ["hello", "hi"]);
        assert_eq!(turns[1].role, TurnRole::Assistant);
    }

    #[test]
    fn snapshot_bytes_reopen_as_the_same_session_db() {
        let dir = tmp();
        let path = db_path(dir.path(), "a1");
        let db = SessionDb::open(&path).unwrap();
        let s = db.new_session(Timestamp(1)).unwrap();
        db.append(&s, TurnRole::User, "remember me", Timestamp(2)).unwrap();
        let SnapshotRead::Bytes(bytes) = read_for_snapshot(&path).unwrap() else { panic!("no bytes") };
        let other = db_path(dir.path(), "copy");
        install_snapshot(&other, &bytes).unwrap();
        let copy = SessionDb::open(&other).unwrap();
        assert_eq!(copy.turns(&s).unwrap()[0].text, "remember me");
    }

    #[test]
    fn snapshot_is_skipped_while_another_connection_holds_wal_frames() {
        let dir = tmp();
        let path = db_path(dir.path(), "a1");
        let db = SessionDb::open(&path).unwrap();
        let s = db.new_session(Timestamp(1)).unwrap();
        // A reader pins the current WAL snapshot, then more frames are written.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader.query_row("SELECT count(*) FROM turns", [], |r| r.get(0)).unwrap();
        db.append(&s, TurnRole::User, "newest", Timestamp(2)).unwrap();
        match read_for_snapshot(&path).unwrap() {
            SnapshotRead::Incomplete(r) => assert!(!r.complete()),
            other => panic!("expected a skipped snapshot, got {other:?}"),
        }
        reader.execute_batch("COMMIT").unwrap();
        assert!(matches!(read_for_snapshot(&path).unwrap(), SnapshotRead::Bytes(_)));
    }

    #[test]
    fn corrupt_or_foreign_files_are_refused() {
        let dir = tmp();
        let path = db_path(dir.path(), "a1");
        install_snapshot(&path, b"this is not sqlite at all, not even close.......").unwrap();
        assert!(matches!(SessionDb::open(&path), Err(SessionError::NotASessionDb { .. })));
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE x (y)").unwrap();
        assert!(matches!(SessionDb::open(&foreign), Err(SessionError::NotASessionDb { .. })));
        assert!(matches!(SessionDb::open_read_only(&path), Err(SessionError::NotASessionDb { .. })));
        assert!(matches!(SessionDb::open_read_only(&foreign), Err(SessionError::NotASessionDb { .. })));
        remove_files(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(read_for_snapshot(&path).unwrap(), SnapshotRead::NoDatabase);
        assert!(SessionDb::open_read_only(&path).is_err(), "a read-only open creates nothing");
        assert!(!path.exists());
    }

    #[test]
    fn a_read_only_open_sees_the_writers_turns_and_writes_nothing() {
        let dir = tmp();
        let path = db_path(dir.path(), "a1");
        let db = SessionDb::open(&path).unwrap();
        let s = db.new_session(Timestamp(1)).unwrap();
        db.append(&s, TurnRole::User, "in the wal", Timestamp(2)).unwrap();
        let wal = |p: &Path| std::fs::metadata(p.with_extension("db-wal")).map(|m| m.len()).unwrap_or(0);
        let before = (std::fs::read(&path).unwrap(), wal(&path));
        let reader = SessionDb::open_read_only(&path).unwrap();
        assert_eq!(reader.latest_session().unwrap(), Some(s.clone()));
        assert_eq!(reader.turns(&s).unwrap()[0].text, "in the wal");
        assert!(reader.new_session(Timestamp(3)).is_err(), "the reader cannot write");
        drop(reader);
        assert_eq!((std::fs::read(&path).unwrap(), wal(&path)), before, "neither the file nor its WAL changed");
    }
}
