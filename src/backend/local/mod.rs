//! The embedded backend for stage `local`: one SQLite file and one directory.
//!
//! Why it exists: a developer (and the test suites) can run the whole worker on one machine with no
//! AWS, with the same contracts as SQS/DynamoDB/S3 (checked by `tests/conformance.rs`).
//!
//! Layout:
//! - `{data_dir}/atlas-{stage}.sqlite` holds the queue and its DLQ (rows tagged with the queue's
//!   name, so two queues never mix), the job table, and the budget ledger.
//! - `{data_dir}/artifacts/{key}` holds artifacts, written atomically (temp file + rename).
//!
//! Concurrency: each opened file gets one connection owned by one dedicated thread; every call is
//! a closure sent to that thread, so the async runtime never blocks on SQLite and calls from one
//! process never fight over SQLite's lock. Several processes may open the same file: the database
//! runs in WAL mode with a busy timeout, and every read-modify-write is a `BEGIN IMMEDIATE`
//! transaction (or a single conditional statement), so claims, receives and reservations stay
//! atomic across processes.
//!
//! Times: the job store and the ledger use the `now` given by the caller (so tests control time);
//! the queue, whose trait has no `now`, uses the wall clock.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tokio::sync::{oneshot, Notify};

use super::{
    ArtifactStore, BResult, BackendError, Backends, BudgetLedger, Charge, Claim, DeadLetter, JobStore, LedgerSnapshot, Message, Queue,
    QueueDepth, RedrivePlan, RedriveReport, Reservation, ReserveOutcome,
};
use crate::job::{JobRecord, JobStatus, MAX_MESSAGE_BYTES};

mod rate;
pub use rate::SqliteRateStore;

/// Longest delay `send` accepts (SQS's own limit).
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(15 * 60);
/// Longest visibility timeout accepted (SQS's own limit: 12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// How often a long-polling `receive` looks at the table again (other processes may send to the
/// same file; sends from this process wake the poller at once).
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a call waits for another process's write lock before giving up as transient.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Expired reservations are purged once they are this old (they stop counting as soon as they
/// expire; the grace only keeps the table small without surprising callers that pass old `now`s).
const RESERVATION_GC_GRACE_MICROS: i64 = 24 * 60 * 60 * 1_000_000;

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

trait DbResult<T> {
    fn db(self) -> BResult<T>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> BResult<T> {
        self.map_err(db_error)
    }
}

fn db_error(e: rusqlite::Error) -> BackendError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            BackendError::Transient(format!("sqlite busy: {e}"))
        }
        _ => BackendError::Other(format!("sqlite: {e}")),
    }
}

fn wall_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn new_id() -> String {
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
    async fn call<R, F>(&self, f: F) -> BResult<R>
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

// ---------------------------------------------------------------------------------------------
// Opening a stage's backends

/// How the embedded queue behaves (the SQS queue attributes' counterparts).
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// The queue's name (rows are tagged with it).
    pub queue_name: String,
    /// The DLQ's name.
    pub dlq_name: String,
    /// How long a received message stays hidden.
    pub visibility_timeout: Duration,
    /// Receives after which the queue itself moves a message to the DLQ (redrive policy, ≥ 1).
    pub max_receive_count: u32,
}

impl QueueOptions {
    /// The options the stage's settings describe.
    pub fn from_settings(settings: &crate::settings::Settings) -> QueueOptions {
        QueueOptions {
            queue_name: settings.queue_name(),
            dlq_name: settings.dlq_name(),
            visibility_timeout: Duration::from_secs(settings.queue.visibility_timeout_secs),
            max_receive_count: settings.queue.max_receive_count,
        }
    }
}

/// The four embedded stores of one stage, with their concrete types (for callers that want more
/// than the traits, e.g. tests opening a second handle on the same file).
#[derive(Clone)]
pub struct LocalBackend {
    /// The queue and its DLQ.
    pub queue: Arc<SqliteQueue>,
    /// The job table.
    pub jobs: Arc<SqliteJobStore>,
    /// The budget ledger.
    pub ledger: Arc<SqliteLedger>,
    /// The artifacts directory.
    pub artifacts: Arc<DirArtifactStore>,
    /// The shared rate-limit capacity.
    pub rates: Arc<SqliteRateStore>,
    /// The events file (`atlas-{stage}.events.jsonl` beside the database).
    pub events: Arc<crate::events::FileSink>,
}

impl LocalBackend {
    /// Opens `{data_dir}/{db_file}` and `{data_dir}/artifacts`, creating them when absent.
    pub fn open(data_dir: &Path, db_file: &str, queue: QueueOptions) -> BResult<LocalBackend> {
        LocalBackend::open_with_guard(data_dir, db_file, queue, None)
    }

    /// Opens a throw-away backend in a fresh directory under the system temp dir; the directory is
    /// removed when the last store of this backend is dropped. For tests and demos.
    pub fn open_scratch(queue: QueueOptions) -> BResult<LocalBackend> {
        let dir = std::env::temp_dir().join(format!("atlas-scratch-{}", new_id()));
        std::fs::create_dir_all(&dir).map_err(|e| BackendError::Other(format!("cannot create {}: {e}", dir.display())))?;
        let guard = Arc::new(ScratchDir(dir.clone()));
        LocalBackend::open_with_guard(&dir, "atlas-scratch.sqlite", queue, Some(guard))
    }

    fn open_with_guard(data_dir: &Path, db_file: &str, queue: QueueOptions, guard: Option<Arc<ScratchDir>>) -> BResult<LocalBackend> {
        let db = Db::open(&data_dir.join(db_file))?;
        let stem = db_file.strip_suffix(".sqlite").unwrap_or(db_file);
        let events = Arc::new(crate::events::FileSink::new(data_dir.join(format!("{stem}.events.jsonl"))));
        let mut artifacts = DirArtifactStore::open(&data_dir.join("artifacts"))?;
        let mut q = SqliteQueue::new(db.clone(), queue)?;
        let mut jobs = SqliteJobStore::new(db.clone());
        let mut ledger = SqliteLedger::new(db.clone());
        let mut rates = SqliteRateStore::new(db);
        // Every store keeps a scratch directory alive.
        q._guard = guard.clone();
        jobs._guard = guard.clone();
        ledger._guard = guard.clone();
        rates._guard = guard.clone();
        artifacts._guard = guard;
        Ok(LocalBackend {
            queue: Arc::new(q),
            jobs: Arc::new(jobs),
            ledger: Arc::new(ledger),
            artifacts: Arc::new(artifacts),
            rates: Arc::new(rates),
            events,
        })
    }

    /// The stores as the trait objects the worker uses.
    pub fn backends(&self) -> Backends {
        Backends {
            queue: self.queue.clone(),
            jobs: self.jobs.clone(),
            ledger: self.ledger.clone(),
            artifacts: self.artifacts.clone(),
            rates: self.rates.clone(),
            events: self.events.clone(),
        }
    }
}

/// The SQLite file name of a stage: `atlas-{stage}.sqlite`.
pub fn db_file_name(stage: &str) -> String {
    format!("atlas-{stage}.sqlite")
}

/// Opens the embedded backends of `settings.stage`: `{data_dir}/atlas-{stage}.sqlite` (with the
/// stage's queue and DLQ names) and `{data_dir}/artifacts`.
pub fn open_backends(settings: &crate::settings::Settings) -> Result<Backends, BackendError> {
    let b = LocalBackend::open(&settings.storage.data_dir, &db_file_name(&settings.stage), QueueOptions::from_settings(settings))?;
    Ok(b.backends())
}

/// Removes a scratch directory when dropped.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Queue

/// The embedded queue and DLQ: rows of `queue_messages` and `dead_letters` tagged with the names.
pub struct SqliteQueue {
    db: Db,
    opts: Arc<QueueOptions>,
    /// Wakes this process's long polls when it sends.
    notify: Arc<Notify>,
    _guard: Option<Arc<ScratchDir>>,
}

impl SqliteQueue {
    /// A queue on an opened database (several queues may share one file).
    pub fn new(db: Db, opts: QueueOptions) -> BResult<SqliteQueue> {
        if opts.max_receive_count == 0 {
            return Err(BackendError::Other("max_receive_count must be at least 1".into()));
        }
        if opts.queue_name.is_empty() || opts.dlq_name.is_empty() || opts.queue_name == opts.dlq_name {
            return Err(BackendError::Other("the queue and the DLQ need two distinct names".into()));
        }
        if opts.visibility_timeout > MAX_VISIBILITY {
            return Err(BackendError::Other("visibility timeout longer than 12 hours".into()));
        }
        Ok(SqliteQueue { db, opts: Arc::new(opts), notify: Arc::new(Notify::new()), _guard: None })
    }

    /// The queue's options.
    pub fn options(&self) -> &QueueOptions {
        &self.opts
    }

    /// One non-waiting receive: at most `max` visible messages, moving over-received ones to the DLQ.
    async fn try_receive(&self, max: usize) -> BResult<Vec<Message>> {
        let opts = self.opts.clone();
        self.db
            .call(move |conn| {
                let now = wall_ms();
                // Cheap read first: most idle polls end here without taking the write lock.
                let any: Option<i64> = conn
                    .prepare_cached("SELECT 1 FROM queue_messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1")
                    .db()?
                    .query_row(params![opts.queue_name, now], |r| r.get(0))
                    .optional()
                    .db()?;
                if any.is_none() {
                    return Ok(Vec::new());
                }
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now = wall_ms();
                // At least 1 ms ahead, so a zero visibility timeout cannot hand out a message
                // twice in one batch (the selection below compares with this same `now`).
                let hidden_until = now.saturating_add(duration_ms(opts.visibility_timeout).max(1));
                let mut out = Vec::new();
                loop {
                    let want = max - out.len();
                    let rows: Vec<(i64, String, String, u32, i64)> = {
                        let mut st = tx
                            .prepare_cached(
                                "SELECT seq, id, body, receive_count, sent_at FROM queue_messages
                                 WHERE queue = ?1 AND visible_at <= ?2
                                 ORDER BY visible_at, seq LIMIT ?3",
                            )
                            .db()?;
                        let it = st
                            .query_map(params![opts.queue_name, now, want as i64], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                            })
                            .db()?;
                        it.collect::<rusqlite::Result<_>>().db()?
                    };
                    let exhausted = rows.len() < want;
                    if rows.is_empty() {
                        break;
                    }
                    for (seq, id, body, count, sent_at) in rows {
                        if count >= opts.max_receive_count {
                            // Redrive policy: this would be receive number max+1.
                            tx.prepare_cached(
                                "INSERT INTO dead_letters (queue, id, body, sent_at, reason, receive_count, dead_at)
                                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
                            )
                            .db()?
                            .execute(params![opts.dlq_name, id, crate::redact::message_body(&body), sent_at, count, now])
                            .db()?;
                            tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1").db()?.execute(params![seq]).db()?;
                            continue;
                        }
                        let receipt = format!("{id}.{}", new_id());
                        tx.prepare_cached(
                            "UPDATE queue_messages SET receive_count = receive_count + 1,
                                    visible_at = ?1, receipt = ?2 WHERE seq = ?3",
                        )
                        .db()?
                        .execute(params![hidden_until, receipt, seq])
                        .db()?;
                        out.push(Message { message_id: id, receipt, body, receive_count: count + 1, sent_at: from_ms(sent_at) });
                    }
                    if exhausted || out.len() >= max {
                        break;
                    }
                }
                tx.commit().db()?;
                Ok(out)
            })
            .await
    }
}

fn check_body(body: &str) -> BResult<()> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(BackendError::Other(format!("message body is {} bytes; the queue accepts at most {MAX_MESSAGE_BYTES}", body.len())));
    }
    Ok(())
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, body: &str, delay: Duration) -> BResult<String> {
        check_body(body)?;
        if delay > MAX_SEND_DELAY {
            return Err(BackendError::Other(format!("send delay {}s is longer than {}s", delay.as_secs(), MAX_SEND_DELAY.as_secs())));
        }
        let opts = self.opts.clone();
        let body = body.to_string();
        let id = new_id();
        let id2 = id.clone();
        self.db
            .call(move |conn| {
                let now = wall_ms();
                conn.prepare_cached(
                    "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at, receive_count)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                )
                .db()?
                .execute(params![opts.queue_name, id2, body, now, now.saturating_add(duration_ms(delay))])
                .db()?;
                Ok(())
            })
            .await?;
        if delay.is_zero() {
            self.notify.notify_waiters();
        }
        Ok(id)
    }

    async fn send_batch(&self, bodies: &[String]) -> BResult<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        for b in bodies {
            check_body(b)?;
        }
        let opts = self.opts.clone();
        let bodies = bodies.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now = wall_ms();
                {
                    let mut st = tx
                        .prepare_cached(
                            "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at, receive_count)
                             VALUES (?1, ?2, ?3, ?4, ?4, 0)",
                        )
                        .db()?;
                    for b in &bodies {
                        st.execute(params![opts.queue_name, new_id(), b, now]).db()?;
                    }
                }
                tx.commit().db()
            })
            .await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> BResult<Vec<Message>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // SQS caps a long poll at 20 s; here any wait works, but an absurd one must not overflow.
        let deadline = Instant::now().checked_add(wait).unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 60 * 60));
        loop {
            // Register interest before looking, so a send in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.try_receive(max).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> BResult<()> {
        if timeout > MAX_VISIBILITY {
            return Err(BackendError::Other("visibility timeout longer than 12 hours".into()));
        }
        let opts = self.opts.clone();
        let receipt = receipt.to_string();
        let changed = self
            .db
            .call(move |conn| {
                let at = wall_ms().saturating_add(duration_ms(timeout));
                conn.prepare_cached("UPDATE queue_messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3")
                    .db()?
                    .execute(params![at, opts.queue_name, receipt])
                    .db()
            })
            .await?;
        if changed == 0 {
            return Err(BackendError::Conflict("receipt is stale: the message was deleted, dead-lettered or received again".into()));
        }
        if timeout.is_zero() {
            self.notify.notify_waiters();
        }
        Ok(())
    }

    async fn delete_batch(&self, receipts: &[String]) -> BResult<Vec<String>> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        let opts = self.opts.clone();
        let receipts = receipts.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let mut failed = Vec::new();
                {
                    let mut st = tx.prepare_cached("DELETE FROM queue_messages WHERE queue = ?1 AND receipt = ?2").db()?;
                    for r in receipts {
                        if st.execute(params![opts.queue_name, r]).db()? == 0 {
                            failed.push(r);
                        }
                    }
                }
                tx.commit().db()?;
                Ok(failed)
            })
            .await
    }

    async fn dead_letter(&self, message: &Message, reason: &str) -> BResult<()> {
        let opts = self.opts.clone();
        let receipt = message.receipt.clone();
        let reason = reason.to_string();
        let kept = message.body.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let row: Option<(i64, String, String, i64, u32)> = tx
                    .prepare_cached(
                        "SELECT seq, id, body, sent_at, receive_count FROM queue_messages
                         WHERE queue = ?1 AND receipt = ?2",
                    )
                    .db()?
                    .query_row(params![opts.queue_name, receipt], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .optional()
                    .db()?;
                let Some((seq, id, _stored, sent_at, count)) = row else {
                    return Err(BackendError::Conflict(
                        "receipt is stale: the message was deleted, dead-lettered or received again".into(),
                    ));
                };
                tx.prepare_cached(
                    "INSERT INTO dead_letters (queue, id, body, sent_at, reason, receive_count, dead_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .db()?
                .execute(params![opts.dlq_name, id, kept, sent_at, reason, count, wall_ms()])
                .db()?;
                tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1").db()?.execute(params![seq]).db()?;
                tx.commit().db()
            })
            .await
    }

    async fn dlq_peek(&self, max: usize) -> BResult<Vec<DeadLetter>> {
        let opts = self.opts.clone();
        self.db
            .call(move |conn| {
                let mut st = conn
                    .prepare_cached(
                        "SELECT id, body, reason, receive_count FROM dead_letters
                         WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                    )
                    .db()?;
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                let it = st
                    .query_map(params![opts.dlq_name, limit], |r| {
                        Ok(DeadLetter { message_id: r.get(0)?, body: r.get(1)?, reason: r.get(2)?, receive_count: r.get(3)? })
                    })
                    .db()?;
                it.collect::<rusqlite::Result<Vec<_>>>().db()
            })
            .await
    }

    async fn dlq_redrive(&self, plan: &RedrivePlan) -> BResult<RedriveReport> {
        let opts = self.opts.clone();
        let plan = plan.clone();
        let report = self
            .db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now = wall_ms();
                let examine = i64::try_from(plan.examine).unwrap_or(i64::MAX);
                let rows: Vec<(i64, Option<String>)> = tx
                    .prepare_cached("SELECT seq, reason FROM dead_letters WHERE queue = ?1 ORDER BY seq LIMIT ?2")
                    .db()?
                    .query_map(params![opts.dlq_name, examine], |r| Ok((r.get(0)?, r.get(1)?)))
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                let mut report = RedriveReport::default();
                for (seq, reason) in rows {
                    let d = DeadLetter { message_id: String::new(), body: String::new(), reason, receive_count: 0 };
                    let kind = d.kind();
                    let take = plan.admits(report.moved_total(), kind);
                    if take {
                        tx.prepare_cached(
                            "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at, receive_count)
                             SELECT ?1, id, body, sent_at, ?2, 0 FROM dead_letters WHERE seq = ?3",
                        )
                        .db()?
                        .execute(params![opts.queue_name, now, seq])
                        .db()?;
                        tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1").db()?.execute(params![seq]).db()?;
                    }
                    report.count(kind, take);
                }
                tx.commit().db()?;
                Ok(report)
            })
            .await?;
        if report.moved_total() > 0 {
            self.notify.notify_waiters();
        }
        Ok(report)
    }

    async fn flush(&self) -> BResult<()> {
        // Deleted rows are zeroed in the database (secure_delete); their old versions in the
        // write-ahead log go with it here.
        self.db.call(|conn| conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").db()).await
    }

    async fn depth(&self) -> BResult<QueueDepth> {
        let opts = self.opts.clone();
        self.db
            .call(move |conn| {
                let now = wall_ms();
                let tx = conn.transaction().db()?;
                let (visible, in_flight, delayed): (i64, i64, i64) = tx
                    .prepare_cached(
                        "SELECT
                           COALESCE(SUM(visible_at <= ?2), 0),
                           COALESCE(SUM(visible_at > ?2 AND receive_count > 0), 0),
                           COALESCE(SUM(visible_at > ?2 AND receive_count = 0), 0)
                         FROM queue_messages WHERE queue = ?1",
                    )
                    .db()?
                    .query_row(params![opts.queue_name, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .db()?;
                let dead: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM dead_letters WHERE queue = ?1")
                    .db()?
                    .query_row(params![opts.dlq_name], |r| r.get(0))
                    .db()?;
                tx.commit().db()?;
                Ok(QueueDepth {
                    visible: visible.max(0) as u64,
                    in_flight: in_flight.max(0) as u64,
                    delayed: delayed.max(0) as u64,
                    dead_letters: dead.max(0) as u64,
                })
            })
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Job store

/// The embedded job table: the record as JSON plus the columns the conditional transitions need
/// (`status`, `lease_owner`, `lease_expires_at` in µs, `created_at` in µs for `list`).
///
/// A live lease is `Busy` for every claimant, its own holder included (a duplicate delivery to
/// the same worker must not start the job twice); a lease is live while `lease_expires_at ≥ now`.
/// `finish` does not look at the lease's expiry: the owner may still write while nobody else
/// has taken the job over.
pub struct SqliteJobStore {
    db: Db,
    _guard: Option<Arc<ScratchDir>>,
}

impl SqliteJobStore {
    /// A job store on an opened database.
    pub fn new(db: Db) -> SqliteJobStore {
        SqliteJobStore { db, _guard: None }
    }
}

fn parse_record(id: &str, json: &str) -> BResult<JobRecord> {
    serde_json::from_str(json).map_err(|e| BackendError::Other(format!("stored record of job {id} is unreadable: {e}")))
}

fn record_json(r: &JobRecord) -> BResult<String> {
    serde_json::to_string(r).map_err(|e| BackendError::Other(format!("cannot serialise record of job {}: {e}", r.id)))
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn claim(&self, id: &str, stage: &str, owner: &str, lease_until: DateTime<Utc>, now: DateTime<Utc>) -> BResult<Claim> {
        let (id, stage, owner) = (id.to_string(), stage.to_string(), owner.to_string());
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let row: Option<(String, Option<String>, Option<i64>, String)> = tx
                    .prepare_cached("SELECT status, lease_owner, lease_expires_at, record FROM jobs WHERE id = ?1")
                    .db()?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()
                    .db()?;
                let mut rec = match row {
                    None => {
                        let mut rec = JobRecord::new(&id, &stage, now);
                        rec.status = JobStatus::Processing;
                        rec.attempts = 1;
                        rec.lease_owner = Some(owner.clone());
                        rec.lease_expires_at = Some(lease_until);
                        tx.prepare_cached(
                            "INSERT INTO jobs (id, status, lease_owner, lease_expires_at, created_at, record)
                             VALUES (?1, 'processing', ?2, ?3, ?4, ?5)",
                        )
                        .db()?
                        .execute(params![id, owner, micros(lease_until), micros(now), record_json(&rec)?])
                        .db()?;
                        tx.commit().db()?;
                        return Ok(Claim::Claimed(rec));
                    }
                    Some((status, lease_owner, lease_exp, json)) => {
                        let rec = parse_record(&id, &json)?;
                        let status = JobStatus::parse(&status)
                            .ok_or_else(|| BackendError::Other(format!("job {id} has an unknown stored status `{status}`")))?;
                        match status {
                            JobStatus::Completed => return Ok(Claim::AlreadyCompleted(rec)),
                            JobStatus::Processing => {
                                if let Some(exp) = lease_exp.filter(|e| *e >= micros(now)) {
                                    let until = rec.lease_expires_at.or_else(|| DateTime::from_timestamp_micros(exp)).unwrap_or(now);
                                    return Ok(Claim::Busy { owner: lease_owner.unwrap_or_default(), until });
                                }
                            }
                            JobStatus::Pending | JobStatus::Failed => {}
                        }
                        rec
                    }
                };
                rec.status = JobStatus::Processing;
                rec.attempts = rec.attempts.saturating_add(1);
                rec.lease_owner = Some(owner.clone());
                rec.lease_expires_at = Some(lease_until);
                rec.updated_at = now;
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'processing', lease_owner = ?2, lease_expires_at = ?3, record = ?4
                     WHERE id = ?1",
                )
                .db()?
                .execute(params![id, owner, micros(lease_until), record_json(&rec)?])
                .db()?;
                tx.commit().db()?;
                Ok(Claim::Claimed(rec))
            })
            .await
    }

    async fn renew(&self, id: &str, owner: &str, lease_until: DateTime<Utc>) -> BResult<bool> {
        let (id, owner) = (id.to_string(), owner.to_string());
        // The same text serde writes, so the record stays readable.
        let until_json = match serde_json::to_value(lease_until) {
            Ok(serde_json::Value::String(s)) => s,
            _ => return Err(BackendError::Other("cannot serialise the lease time".into())),
        };
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE jobs SET lease_expires_at = ?3,
                                record = json_set(record, '$.lease_expires_at', ?4)
                         WHERE id = ?1 AND lease_owner = ?2 AND status = 'processing'",
                    )
                    .db()?
                    .execute(params![id, owner, micros(lease_until), until_json])
                    .db()?;
                Ok(n == 1)
            })
            .await
    }

    async fn finish(&self, record: &JobRecord, owner: &str) -> BResult<()> {
        let json = record_json(record)?;
        let id = record.id.clone();
        let owner = owner.to_string();
        let status = record.status.as_str();
        let lease_owner = record.lease_owner.clone();
        let lease_exp = record.lease_expires_at.map(micros);
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "UPDATE jobs SET status = ?3, lease_owner = ?4, lease_expires_at = ?5, record = ?6
                         WHERE id = ?1 AND lease_owner = ?2 AND status = 'processing'",
                    )
                    .db()?
                    .execute(params![id, owner, status, lease_owner, lease_exp, json])
                    .db()?;
                if n == 1 {
                    return Ok(());
                }
                let current: Option<(String, Option<String>)> = conn
                    .prepare_cached("SELECT status, lease_owner FROM jobs WHERE id = ?1")
                    .db()?
                    .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .db()?;
                Err(BackendError::Conflict(match current {
                    None => format!("job {id} does not exist"),
                    Some((s, o)) => {
                        format!("job {id} is `{s}` with lease owner {}; `{owner}` does not hold it", o.as_deref().unwrap_or("(none)"))
                    }
                }))
            })
            .await
    }

    async fn put_if_absent(&self, record: &JobRecord) -> BResult<bool> {
        let json = record_json(record)?;
        let r = record.clone();
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "INSERT INTO jobs (id, status, lease_owner, lease_expires_at, created_at, record)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(id) DO NOTHING",
                    )
                    .db()?
                    .execute(params![r.id, r.status.as_str(), r.lease_owner, r.lease_expires_at.map(micros), micros(r.created_at), json])
                    .db()?;
                Ok(n == 1)
            })
            .await
    }

    async fn set_announcement(&self, id: &str, announcement: &crate::events::Announcement) -> BResult<bool> {
        let (id, a) = (id.to_string(), announcement.clone());
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let json: Option<String> = tx
                    .prepare_cached("SELECT record FROM jobs WHERE id = ?1")
                    .db()?
                    .query_row(params![id], |r| r.get(0))
                    .optional()
                    .db()?;
                let Some(json) = json else { return Ok(false) };
                let mut rec = parse_record(&id, &json)?;
                if rec.announcement.as_ref().map(|x| x.event_id.as_str()) != Some(a.event_id.as_str()) {
                    return Ok(false);
                }
                rec.announcement = Some(a);
                tx.prepare_cached("UPDATE jobs SET record = ?2 WHERE id = ?1").db()?.execute(params![id, record_json(&rec)?]).db()?;
                tx.commit().db()?;
                Ok(true)
            })
            .await
    }

    async fn get(&self, id: &str) -> BResult<Option<JobRecord>> {
        let id = id.to_string();
        let id2 = id.clone();
        let json: Option<String> = self
            .db
            .call(move |conn| {
                conn.prepare_cached("SELECT record FROM jobs WHERE id = ?1").db()?.query_row(params![id2], |r| r.get(0)).optional().db()
            })
            .await?;
        json.map(|j| parse_record(&id, &j)).transpose()
    }

    async fn list(&self, status: Option<JobStatus>, limit: usize) -> BResult<Vec<JobRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self
            .db
            .call(move |conn| {
                let rows = match status {
                    Some(s) => {
                        let mut st = conn
                            .prepare_cached(
                                "SELECT id, record FROM jobs WHERE status = ?1
                                 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
                            )
                            .db()?;
                        let it = st.query_map(params![s.as_str(), limit], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
                        it.collect::<rusqlite::Result<Vec<_>>>()
                    }
                    None => {
                        let mut st =
                            conn.prepare_cached("SELECT id, record FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?1").db()?;
                        let it = st.query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
                        it.collect::<rusqlite::Result<Vec<_>>>()
                    }
                };
                rows.db()
            })
            .await?;
        rows.iter().map(|(id, j)| parse_record(id, j)).collect()
    }

    async fn oldest(&self, status: JobStatus, limit: usize) -> BResult<Vec<JobRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String)> = self
            .db
            .call(move |conn| {
                let mut st = conn
                    .prepare_cached("SELECT id, record FROM jobs WHERE status = ?1 ORDER BY created_at ASC, rowid ASC LIMIT ?2")
                    .db()?;
                let it = st.query_map(params![status.as_str(), limit], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
                it.collect::<rusqlite::Result<Vec<_>>>().db()
            })
            .await?;
        rows.iter().map(|(id, j)| parse_record(id, j)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Budget ledger

/// The embedded budget ledger: per period, live reservations and settled charges (keyed by
/// reservation id, which makes settle idempotent), plus the period's running spend.
pub struct SqliteLedger {
    db: Db,
    _guard: Option<Arc<ScratchDir>>,
}

impl SqliteLedger {
    /// A ledger on an opened database.
    pub fn new(db: Db) -> SqliteLedger {
        SqliteLedger { db, _guard: None }
    }
}

fn spent_in(conn: &Connection, period: &str) -> BResult<i64> {
    Ok(conn
        .prepare_cached("SELECT spent FROM budget_periods WHERE period = ?1")
        .db()?
        .query_row(params![period], |r| r.get::<_, i64>(0))
        .optional()
        .db()?
        .unwrap_or(0))
}

/// Every hold of the period neither settled nor released (live and lapsed), except `except`.
fn held(conn: &Connection, period: &str, except: &str) -> BResult<i64> {
    conn.prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE period = ?1 AND id <> ?2")
        .db()?
        .query_row(params![period, except], |r| r.get(0))
        .db()
}

/// Holds of the period that are live at `now_us` (`live`) or lapsed (`!live`).
fn held_by_expiry(conn: &Connection, period: &str, now_us: i64, live: bool) -> BResult<i64> {
    let sql = if live {
        "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE period = ?1 AND expires_at > ?2"
    } else {
        "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations WHERE period = ?1 AND expires_at <= ?2"
    };
    conn.prepare_cached(sql).db()?.query_row(params![period, now_us], |r| r.get(0)).db()
}

/// Adds `amount` to the period's running spend.
fn add_spent(conn: &Connection, period: &str, amount: i64) -> BResult<()> {
    conn.prepare_cached(
        "INSERT INTO budget_periods (period, spent) VALUES (?1, ?2)
         ON CONFLICT(period) DO UPDATE SET spent = spent + excluded.spent",
    )
    .db()?
    .execute(params![period, amount])
    .db()?;
    Ok(())
}

/// Folds holds that lapsed more than a day before `now_us` into spend, charged in full under
/// [`crate::backend::LAPSED_MODEL`] (a later settle of one of them changes nothing).
fn fold_lapsed(conn: &Connection, period: &str, now_us: i64) -> BResult<()> {
    let horizon = now_us.saturating_sub(RESERVATION_GC_GRACE_MICROS);
    let old: Vec<(String, String, i64)> = {
        let mut st =
            conn.prepare_cached("SELECT id, job_id, amount FROM budget_reservations WHERE period = ?1 AND expires_at < ?2").db()?;
        let it = st.query_map(params![period, horizon], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).db()?;
        it.collect::<rusqlite::Result<_>>().db()?
    };
    for (id, job_id, amount) in old {
        let charge = Charge::single(id, job_id, crate::backend::LAPSED_MODEL, None, amount);
        insert_charge(conn, period, &charge)?;
    }
    Ok(())
}

/// Records `c` once per reservation id (with its lines), adds it to spend and drops the hold.
fn insert_charge(conn: &Connection, period: &str, c: &Charge) -> BResult<()> {
    let first = c.lines.first();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO budget_charges (period, reservation_id, job_id, model, tenant, amount)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(period, reservation_id) DO NOTHING",
        )
        .db()?
        .execute(params![
            period,
            c.reservation_id,
            c.job_id,
            first.map(|l| l.model.as_str()).unwrap_or("-"),
            first.and_then(|l| l.tenant.as_deref()),
            c.amount_micros
        ])
        .db()?;
    if inserted == 1 {
        add_spent(conn, period, c.amount_micros)?;
        for l in &c.lines {
            conn.prepare_cached(
                "INSERT INTO budget_charge_lines (period, reservation_id, model, tenant, amount)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(period, reservation_id, model, tenant) DO UPDATE SET amount = amount + excluded.amount",
            )
            .db()?
            .execute(params![period, c.reservation_id, l.model, l.tenant.as_deref().unwrap_or("-"), l.amount_micros])
            .db()?;
        }
    }
    conn.prepare_cached("DELETE FROM budget_reservations WHERE period = ?1 AND id = ?2")
        .db()?
        .execute(params![period, c.reservation_id])
        .db()?;
    Ok(())
}

/// The period's settled spend grouped by `column` (`model` or `tenant`): lines, plus charges
/// written before lines existed.
fn breakdown(conn: &Connection, period: &str, column: &str) -> BResult<std::collections::BTreeMap<String, i64>> {
    let legacy = if column == "model" { "c.model" } else { "COALESCE(c.tenant, '-')" };
    let sql = format!(
        "SELECT k, SUM(a) FROM (
           SELECT {column} AS k, amount AS a FROM budget_charge_lines WHERE period = ?1
           UNION ALL
           SELECT {legacy} AS k, c.amount AS a FROM budget_charges c WHERE c.period = ?1 AND NOT EXISTS (
             SELECT 1 FROM budget_charge_lines l WHERE l.period = c.period AND l.reservation_id = c.reservation_id)
         ) GROUP BY k"
    );
    let mut st = conn.prepare_cached(&sql).db()?;
    let it = st.query_map(params![period], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
    it.collect::<rusqlite::Result<_>>().db()
}

#[async_trait]
impl BudgetLedger for SqliteLedger {
    async fn reserve(&self, period: &str, reservation: &Reservation, limit_micros: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome> {
        if reservation.amount_micros < 0 {
            return Err(BackendError::Other("a reservation cannot be negative".into()));
        }
        let period = period.to_string();
        let r = reservation.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now_us = micros(now);
                let settled: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM budget_charges WHERE period = ?1 AND reservation_id = ?2")
                    .db()?
                    .query_row(params![period, r.id], |row| row.get(0))
                    .optional()
                    .db()?;
                if settled.is_some() {
                    // Already turned into a charge: the money is counted; nothing more to hold.
                    return Ok(ReserveOutcome::Granted);
                }
                let existing: Option<i64> = tx
                    .prepare_cached("SELECT expires_at FROM budget_reservations WHERE period = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![period, r.id], |row| row.get(0))
                    .optional()
                    .db()?;
                if existing.is_some() {
                    // Held already (live or lapsed): it counts once.
                    return Ok(ReserveOutcome::Granted);
                }
                fold_lapsed(&tx, &period, now_us)?;
                let spent = spent_in(&tx, &period)?;
                let reserved = held(&tx, &period, &r.id)?;
                let total = i128::from(spent) + i128::from(reserved) + i128::from(r.amount_micros);
                if total > i128::from(limit_micros) {
                    return Ok(ReserveOutcome::Refused { spent_micros: spent, reserved_micros: reserved });
                }
                tx.prepare_cached(
                    "INSERT INTO budget_reservations (period, id, job_id, amount, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(period, id) DO UPDATE SET
                       job_id = excluded.job_id, amount = excluded.amount, expires_at = excluded.expires_at",
                )
                .db()?
                .execute(params![period, r.id, r.job_id, r.amount_micros, micros(r.expires_at)])
                .db()?;
                tx.commit().db()?;
                Ok(ReserveOutcome::Granted)
            })
            .await
    }

    async fn settle(&self, period: &str, charge: &Charge) -> BResult<()> {
        if charge.amount_micros < 0 {
            return Err(BackendError::Other("a charge cannot be negative".into()));
        }
        let period = period.to_string();
        let c = charge.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                insert_charge(&tx, &period, &c)?;
                tx.commit().db()
            })
            .await
    }

    async fn release(&self, period: &str, reservation_id: &str) -> BResult<()> {
        let (period, id) = (period.to_string(), reservation_id.to_string());
        self.db
            .call(move |conn| {
                conn.prepare_cached("DELETE FROM budget_reservations WHERE period = ?1 AND id = ?2")
                    .db()?
                    .execute(params![period, id])
                    .db()?;
                Ok(())
            })
            .await
    }

    async fn snapshot(&self, period: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        let period = period.to_string();
        self.db
            .call(move |conn| {
                let tx = conn.transaction().db()?;
                let mut snap = LedgerSnapshot { period: period.clone(), ..Default::default() };
                snap.spent_micros = spent_in(&tx, &period)?;
                snap.reserved_micros = held_by_expiry(&tx, &period, micros(now), true)?;
                snap.lapsed_micros = held_by_expiry(&tx, &period, micros(now), false)?;
                snap.by_model = breakdown(&tx, &period, "model")?;
                snap.by_tenant = breakdown(&tx, &period, "tenant")?;
                tx.commit().db()?;
                Ok(snap)
            })
            .await
    }

    async fn declare(&self, period: &str, reservation_id: &str, bound_micros: i64, expires_at: DateTime<Utc>) -> BResult<bool> {
        let (period, id) = (period.to_string(), reservation_id.to_string());
        self.db
            .call(move |conn| {
                let n = conn
                    .prepare_cached(
                        "INSERT INTO budget_bounds (period, id, bound, closed, expires_at) VALUES (?1, ?2, ?3, 0, ?4)
                         ON CONFLICT(period, id) DO UPDATE SET bound = excluded.bound, expires_at = excluded.expires_at
                         WHERE budget_bounds.closed = 0",
                    )
                    .db()?
                    .execute(params![period, id, bound_micros, micros(expires_at)])
                    .db()?;
                Ok(n > 0)
            })
            .await
    }

    async fn close(&self, period: &str, reservation_id: &str) -> BResult<Option<i64>> {
        let (period, id) = (period.to_string(), reservation_id.to_string());
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                tx.prepare_cached(
                    "INSERT INTO budget_bounds (period, id, bound, closed, expires_at) VALUES (?1, ?2, NULL, 1, ?3)
                     ON CONFLICT(period, id) DO UPDATE SET closed = 1",
                )
                .db()?
                .execute(params![period, id, micros(Utc::now() + crate::backend::BOUND_KEPT)])
                .db()?;
                let bound: Option<i64> = tx
                    .prepare_cached("SELECT bound FROM budget_bounds WHERE period = ?1 AND id = ?2")
                    .db()?
                    .query_row(params![period, id], |row| row.get(0))
                    .db()?;
                tx.commit().db()?;
                Ok(bound)
            })
            .await
    }

    async fn lapsed(&self, period: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>> {
        let period = period.to_string();
        self.db
            .call(move |conn| {
                // The maintenance pass every worker makes: also forget bounds past their keep
                // time (DynamoDB's TTL does this for its bound items).
                conn.prepare_cached("DELETE FROM budget_bounds WHERE expires_at < ?1").db()?.execute(params![micros(Utc::now())]).db()?;
                let mut st = conn
                    .prepare_cached(
                        "SELECT id, job_id, amount, expires_at FROM budget_reservations WHERE period = ?1 AND expires_at < ?2 ORDER BY expires_at",
                    )
                    .db()?;
                let rows = st
                    .query_map(params![period, micros(before)], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                    })
                    .db()?;
                let mut out = Vec::new();
                for row in rows {
                    let (id, job_id, amount_micros, exp) = row.db()?;
                    let expires_at = DateTime::<Utc>::from_timestamp_micros(exp).unwrap_or(DateTime::<Utc>::MIN_UTC);
                    out.push(Reservation { id, job_id, amount_micros, expires_at });
                }
                Ok(out)
            })
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Artifacts

/// Most artifact writes run at once (each on a blocking thread). Creating files and folders
/// under one parent serialises on that folder's lock in the kernel, so hundreds of concurrent
/// writers (one per job in flight) only spin on it and pile up blocking threads; a few at a time
/// keep the disk as busy with far less CPU and memory.
pub const ARTIFACT_WRITE_PARALLELISM: usize = 4;

/// The embedded artifacts store: one file per key under a root directory.
pub struct DirArtifactStore {
    root: PathBuf,
    /// Bounds concurrent writes to [`ARTIFACT_WRITE_PARALLELISM`].
    writers: Arc<tokio::sync::Semaphore>,
    _guard: Option<Arc<ScratchDir>>,
}

impl DirArtifactStore {
    /// Uses (creating when absent) `root` as the store's directory.
    pub fn open(root: &Path) -> BResult<DirArtifactStore> {
        std::fs::create_dir_all(root).map_err(|e| BackendError::Other(format!("cannot create {}: {e}", root.display())))?;
        let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
        Ok(DirArtifactStore { root, writers: Arc::new(tokio::sync::Semaphore::new(ARTIFACT_WRITE_PARALLELISM)), _guard: None })
    }

    /// The directory the objects live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file a valid key maps to.
    fn path_for(&self, key: &str) -> BResult<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Checks an artifact key: a non-empty relative path of plain components (no `..`, `.`, empty
/// components, backslashes, NUL, or leading `/`), at most 1024 bytes.
pub fn validate_key(key: &str) -> BResult<()> {
    let bad = |why: &str| Err(BackendError::Other(format!("invalid artifact key {key:?}: {why}")));
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if key.starts_with('/') {
        return bad("must be relative");
    }
    if key.contains('\\') || key.contains('\0') {
        return bad("must not contain backslashes or NUL");
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("components must be non-empty and not `.` or `..`");
    }
    Ok(())
}

#[async_trait]
impl ArtifactStore for DirArtifactStore {
    async fn put(&self, key: &str, body: Vec<u8>, _content_type: &str) -> BResult<()> {
        let path = self.path_for(key)?;
        let permit = self.writers.clone().acquire_owned().await.map_err(|_| BackendError::Other("the artifact store is closed".into()))?;
        tokio::task::spawn_blocking(move || -> BResult<()> {
            let _permit = permit;
            let io = |what: &str, e: std::io::Error| BackendError::Other(format!("cannot {what} {}: {e}", path.display()));
            let parent = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
            let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("object");
            let tmp = parent.join(format!(".{name}.{}.tmp", new_id()));
            if let Err(e) = std::fs::write(&tmp, &body) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("write", e));
            }
            if let Err(e) = std::fs::rename(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("replace", e));
            }
            Ok(())
        })
        .await
        .map_err(|e| BackendError::Other(format!("artifact write task failed: {e}")))?
    }

    async fn get(&self, key: &str) -> BResult<Option<Vec<u8>>> {
        let path = self.path_for(key)?;
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::Other(format!("cannot read {}: {e}", path.display()))),
        })
        .await
        .map_err(|e| BackendError::Other(format!("artifact read task failed: {e}")))?
    }

    fn location(&self, key: &str) -> String {
        self.root.join(key).display().to_string()
    }
}
