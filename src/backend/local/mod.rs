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
//!
//! One file per concern: `db.rs` (the schema and the database thread), `queue.rs`, `jobs.rs`,
//! `ledger.rs`, `rate.rs`, `artifacts.rs`; this file opens a stage's stores together.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BResult, BackendError, Backends};

mod artifacts;
mod db;
mod jobs;
mod ledger;
mod queue;
mod rate;

pub use artifacts::{validate_key, DirArtifactStore, ARTIFACT_WRITE_PARALLELISM};
use db::{new_id, DbResult};
pub use db::{Db, BUSY_TIMEOUT};
pub use jobs::SqliteJobStore;
pub use ledger::SqliteLedger;
pub use queue::{QueueOptions, SqliteQueue, MAX_SEND_DELAY, MAX_VISIBILITY, POLL_INTERVAL};
pub use rate::SqliteRateStore;

// ---------------------------------------------------------------------------------------------
// Opening a stage's backends

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
        let events = Arc::new(crate::events::FileSink::new(data_dir.join(crate::events::file_name_beside(db_file))));
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
pub(super) struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
