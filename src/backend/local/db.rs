//! The database thread: one connection per opened file, owned by one thread; every call is a
//! closure sent to it. The schema, error mapping and time helpers shared by the embedded stores.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::oneshot;

use crate::backend::{BResult, BackendError};

/// How long a call waits for another process's write lock before giving up as transient.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS queue_messages (
    seq            INTEGER PRIMARY KEY,
    queue          TEXT    NOT NULL,
    id             TEXT    NOT NULL UNIQUE,
    body           TEXT    NOT NULL,
    sent_at        INTEGER NOT NULL,  -- unix ms
    visible_at     INTEGER NOT NULL,  -- unix ms
    receive_count  INTEGER NOT NULL DEFAULT 0,
    receipt        TEXT UNIQUE        -- handle of the current delivery, NULL before the first
);
CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages(queue, visible_at);

CREATE TABLE IF NOT EXISTS dead_letters (
    seq            INTEGER PRIMARY KEY,
    queue          TEXT    NOT NULL,  -- the DLQ's name
    id             TEXT    NOT NULL UNIQUE,
    body           TEXT    NOT NULL,
    sent_at        INTEGER NOT NULL,  -- unix ms
    reason         TEXT,
    receive_count  INTEGER NOT NULL,
    dead_at        INTEGER NOT NULL   -- unix ms
);
CREATE INDEX IF NOT EXISTS dead_letters_queue ON dead_letters(queue, seq);

CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,
    status            TEXT    NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,          -- unix µs
    created_at        INTEGER NOT NULL, -- unix µs
    record            TEXT    NOT NULL  -- the JobRecord as JSON
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs(status, created_at);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);

CREATE TABLE IF NOT EXISTS budget_periods (
    period  TEXT PRIMARY KEY,
    spent   INTEGER NOT NULL DEFAULT 0  -- micro-USD, sum of budget_charges.amount
);
CREATE TABLE IF NOT EXISTS budget_reservations (
    period      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    job_id      TEXT    NOT NULL,
    amount      INTEGER NOT NULL,  -- micro-USD
    expires_at  INTEGER NOT NULL,  -- unix µs
    PRIMARY KEY (period, id)
) WITHOUT ROWID;
-- Covering index: the live-hold sum every reserve computes reads only this index (a scan of the
-- live holds' entries) instead of looking each hold up in the table. Replaces the older
-- (period, expires_at) index, which it makes redundant.
DROP INDEX IF EXISTS budget_reservations_expiry;
CREATE INDEX IF NOT EXISTS budget_reservations_live ON budget_reservations(period, expires_at, amount);
CREATE TABLE IF NOT EXISTS budget_charges (
    period          TEXT    NOT NULL,
    reservation_id  TEXT    NOT NULL,
    job_id          TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    tenant          TEXT,
    amount          INTEGER NOT NULL,  -- micro-USD
    PRIMARY KEY (period, reservation_id)
) WITHOUT ROWID;
-- The breakdown of a charge by model and tenant (a budget lease spans many calls). Charges
-- written before lines existed have none; the breakdown falls back to their own model/tenant.
CREATE TABLE IF NOT EXISTS budget_charge_lines (
    period          TEXT    NOT NULL,
    reservation_id  TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,  -- '-' for none
    amount          INTEGER NOT NULL,  -- micro-USD
    PRIMARY KEY (period, reservation_id, model, tenant)
) WITHOUT ROWID;
-- Ceilings declared by a reservation's holder ahead of spending (write-ahead), and whether the
-- ceiling was closed by a recovery of the lapsed reservation.
CREATE TABLE IF NOT EXISTS budget_bounds (
    period      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    bound       INTEGER,           -- micro-USD; NULL when closed before any declaration
    closed      INTEGER NOT NULL DEFAULT 0,
    expires_at  INTEGER NOT NULL,  -- unix µs; forgotten after this
    PRIMARY KEY (period, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_windows (
    key      TEXT    NOT NULL,
    window   INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    tokens   INTEGER NOT NULL,
    full     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, window)
);
"#;

// ---------------------------------------------------------------------------------------------
// Errors and time helpers

pub(super) trait DbResult<T> {
    fn db(self) -> BResult<T>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> BResult<T> {
        self.map_err(db_error)
    }
}

pub(super) fn db_error(e: rusqlite::Error) -> BackendError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            BackendError::Transient(format!("sqlite busy: {e}"))
        }
        _ => BackendError::Other(format!("sqlite: {e}")),
    }
}

pub(super) fn wall_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

// ---------------------------------------------------------------------------------------------
// The database thread

type Task = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle on one SQLite file, served by one dedicated thread that owns the connection.
///
/// Why: SQLite work is blocking, and one connection per process with calls queued in order is both
/// the fastest and the fairest way to share it (no in-process lock contention or busy-waiting).
/// Clones share the thread; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct Db {
    tx: std::sync::mpsc::Sender<Task>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating when absent) the SQLite file at `path`, applies the schema and starts the
    /// thread that serves it.
    pub fn open(path: &Path) -> BResult<Db> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| BackendError::Other(format!("cannot create {}: {e}", parent.display())))?;
        }
        let mut conn = Connection::open(path).db()?;
        init_connection(&mut conn)?;
        let (tx, rx) = std::sync::mpsc::channel::<Task>();
        let name = format!("atlas-sqlite-{}", path.file_name().and_then(|s| s.to_str()).unwrap_or("db"));
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                while let Ok(task) = rx.recv() {
                    // A panicking task drops its reply channel (the caller sees an error) and any
                    // open transaction rolls back; the thread keeps serving.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| task(&mut conn)));
                }
            })
            .map_err(|e| BackendError::Other(format!("cannot start the sqlite thread: {e}")))?;
        Ok(Db { tx, path: Arc::new(path.to_path_buf()) })
    }

    /// The file this handle serves.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the database thread and returns its result.
    pub(super) async fn call<R, F>(&self, f: F) -> BResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> BResult<R> + Send + 'static,
    {
        let (otx, orx) = oneshot::channel();
        self.tx
            .send(Box::new(move |conn: &mut Connection| {
                let _ = otx.send(f(conn));
            }))
            .map_err(|_| BackendError::Other("the sqlite thread has stopped".into()))?;
        orx.await.map_err(|_| BackendError::Other("a sqlite call failed unexpectedly".into()))?
    }
}

fn init_connection(conn: &mut Connection) -> BResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT).db()?;
    // Deleted rows (messages that carried caller headers) are overwritten, not left readable in
    // free pages of the file.
    conn.execute_batch("PRAGMA secure_delete = ON").db()?;
    // journal_mode answers with a row, so it is read rather than executed.
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).db()?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(BackendError::Other(format!("sqlite refused WAL mode (got {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA foreign_keys=OFF;").db()?;
    conn.set_prepared_statement_cache_capacity(64);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
    tx.execute_batch(SCHEMA).db()?;
    tx.commit().db()?;
    Ok(())
}
