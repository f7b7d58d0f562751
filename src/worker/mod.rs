//! The receive loop: long-poll → semaphore → one task per message (heartbeat, process, settle the
//! message) → batched deletes; and the drain on shutdown.
//!
//! Invariants:
//! - The worker never holds more messages than it can start: permits are taken *before* receiving
//!   and each message moves its permit into its task.
//! - A message is deleted only after [`Processor::process`] reports the outcome durably written.
//! - Every outcome is reported once, through [`crate::telemetry::job_outcome`].

mod deletes;
mod drain;
mod lease;
mod monitor;
mod receive;
mod task;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::admin::Health;
use crate::backend::Backends;
use crate::process::Processor;
use crate::settings::Settings;

use deletes::Deleter;
use monitor::spawn_monitor;
pub use receive::EMBEDDED_RECEIVE_BATCH;
pub use task::retry_delay;
use task::TaskCtx;

/// How a run ends and what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Messages received.
    pub received: u64,
    /// Jobs that ended `completed` (duplicates included).
    pub completed: u64,
    /// Jobs that failed permanently (dead-lettered or, for budget, failed).
    pub failed: u64,
    /// Attempts given back for a retry.
    pub retried: u64,
    /// Jobs deferred for budget.
    pub deferred: u64,
    /// In-flight jobs given back because the drain timeout passed.
    pub abandoned: u64,
}

/// Options for one run of the worker.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Exit once the queue is drained and nothing is in flight (`worker --exit-when-idle`).
    pub exit_when_idle: bool,
}

/// Shared counters, updated by tasks.
#[derive(Default)]
struct Counters {
    received: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    deferred: AtomicU64,
    abandoned: AtomicU64,
}

impl Counters {
    /// What the counters say now.
    fn stats(&self) -> RunStats {
        RunStats {
            received: self.received.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// A worker process's engine.
pub struct Worker {
    /// Validated stage settings.
    settings: Arc<Settings>,
    /// Queue and stores.
    backends: Backends,
    /// Runs one job end to end.
    processor: Arc<Processor>,
    /// Readiness, shared with the admin server.
    health: Arc<Health>,
}

impl Worker {
    /// Builds a worker over ready backends and a processor.
    pub fn new(settings: Arc<Settings>, backends: Backends, processor: Arc<Processor>, health: Arc<Health>) -> Worker {
        Worker { settings, backends, processor, health }
    }

    /// Runs until `shutdown` resolves (then drains) or, with `exit_when_idle`, until idle.
    pub async fn run(&self, opts: RunOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> RunStats {
        let s = &self.settings;
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        // Resolved when the drain timeout passes: tasks still running give their message back.
        let (abort_tx, abort_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let deleter = Deleter::spawn(self.backends.clone(), Duration::from_millis(s.worker.delete_flush_ms));
        self.health.set_long_poll(Duration::from_secs(s.queue.wait_time_secs));
        let monitor = spawn_monitor(self.backends.clone(), s.clone(), self.health.clone());
        let sweep = crate::sweep::spawn(
            self.backends.clone(),
            s.clone(),
            self.processor.worker_id().to_string(),
            self.processor.announcer().clone(),
        );
        info!(stage = %s.stage, concurrency = s.worker.concurrency, queue = %s.queue_name(), "worker started");
        let spawn_ctx = || TaskCtx {
            settings: self.settings.clone(),
            backends: self.backends.clone(),
            processor: self.processor.clone(),
            deleter: deleter.clone(),
            counters: counters.clone(),
            abort: abort_rx.clone(),
        };
        let tasks = self.receive_loop(&opts, stop_rx, &counters, spawn_ctx).await;
        self.drain(tasks, abort_tx, &deleter).await;
        monitor.abort();
        sweep.abort();
        let stats = counters.stats();
        info!(?stats, "worker stopped");
        stats
    }

    async fn queue_drained(&self) -> bool {
        match self.backends.queue.depth().await {
            Ok(d) => d.is_drained(),
            Err(e) => {
                warn!(error = %e, "queue depth unavailable");
                false
            }
        }
    }
}
