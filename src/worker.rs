//! The receive loop: long-poll → semaphore → one task per message (heartbeat, process, settle the
//! message) → batched deletes; and the drain on shutdown.
//!
//! Invariants:
//! - The worker never holds more messages than it can start: permits are taken *before* receiving
//!   and each message moves its permit into its task.
//! - A message is deleted only after [`Processor::process`] reports the outcome durably written.
//! - Every outcome is reported once, through [`telemetry::job_outcome`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn, Instrument};

use crate::admin::Health;
use crate::backend::{Backends, Message};
use crate::error::JobError;
use crate::process::{Processor, Verdict};
use crate::settings::Settings;
use crate::telemetry::{self, Outcome};

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
        let concurrency = s.worker.concurrency;
        let sem = Arc::new(Semaphore::new(concurrency));
        let counters = Arc::new(Counters::default());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        // Resolved when the drain timeout passes: tasks still running give their message back.
        let (abort_tx, abort_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let deleter = Deleter::spawn(self.backends.clone(), Duration::from_millis(s.worker.delete_flush_ms));
        self.health.set_long_poll(Duration::from_secs(s.queue.wait_time_secs));
        let monitor = spawn_monitor(self.backends.clone(), s.clone(), self.health.clone());
        let sweep = crate::sweep::spawn(
            self.backends.clone(),
            s.clone(),
            self.processor.worker_id().to_string(),
            self.processor.announcer().clone(),
        );
        let mut tasks: JoinSet<()> = JoinSet::new();
        let wait = Duration::from_secs(s.queue.wait_time_secs);
        let batch = receive_batch(s);
        info!(stage = %s.stage, concurrency, queue = %s.queue_name(), "worker started");

        let mut receive_errors = 0u32;
        loop {
            while tasks.try_join_next().is_some() {}
            if *stop_rx.borrow() {
                break;
            }
            // Permits first: never receive more than can start now.
            let first = tokio::select! {
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop_rx.changed() => break,
            };
            let mut permits = vec![first];
            while permits.len() < batch {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            // The receive is not cancelled by shutdown: what it returns is started or given back.
            self.health.receive_started();
            let received = self.backends.queue.receive(permits.len(), wait).await;
            self.health.receive_finished(received.is_ok());
            let messages = match received {
                Ok(m) => {
                    receive_errors = 0;
                    m
                }
                Err(e) => {
                    receive_errors += 1;
                    let pause = Duration::from_millis(200 * 2u64.pow(receive_errors.min(6)));
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "receive failed");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {},
                        _ = stop_rx.changed() => {},
                    }
                    continue;
                }
            };
            if !messages.is_empty() {
                telemetry::messages_received(messages.len() as u64);
                counters.received.fetch_add(messages.len() as u64, Ordering::Relaxed);
            }
            if *stop_rx.borrow() {
                give_back(&self.backends, &messages).await;
                break;
            }
            if messages.is_empty() {
                drop(permits);
                if opts.exit_when_idle && sem.available_permits() == concurrency && self.queue_drained().await {
                    info!("queue drained and nothing in flight; exiting");
                    break;
                }
                continue;
            }
            let mut permits = permits.into_iter();
            for message in messages {
                let Some(permit) = permits.next() else {
                    // Cannot happen (receive honours `max`), but never hold what cannot start.
                    give_back(&self.backends, std::slice::from_ref(&message)).await;
                    continue;
                };
                let ctx = TaskCtx {
                    settings: self.settings.clone(),
                    backends: self.backends.clone(),
                    processor: self.processor.clone(),
                    deleter: deleter.clone(),
                    counters: counters.clone(),
                    abort: abort_rx.clone(),
                };
                tasks.spawn(handle_message(ctx, message, permit));
            }
        }

        // Drain: stop taking work, let in-flight jobs finish within the drain timeout.
        self.health.set_draining();
        let in_flight = tasks.len();
        if in_flight > 0 {
            info!(in_flight, drain_timeout_secs = s.worker.drain_timeout_secs, "draining");
        }
        let drain = Duration::from_secs(s.worker.drain_timeout_secs);
        let drained = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(remaining = tasks.len(), "drain timeout passed; giving in-flight jobs back");
            let _ = abort_tx.send(true);
            while tasks.join_next().await.is_some() {}
        }
        deleter.close().await;
        // Webhooks in flight get a short grace; what does not end stays `pending` on its record.
        self.processor.drain_webhooks(Duration::from_secs(s.webhooks.drain_secs)).await;
        // Give unused budget back to the fleet (a lease not returned lapses and counts in full).
        self.processor.return_budget().await;
        if let Err(e) = self.backends.queue.flush().await {
            warn!(error = %e, "could not flush the queue's deleted messages at rest");
        }
        monitor.abort();
        sweep.abort();
        let c = &counters;
        let stats = RunStats {
            received: c.received.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        };
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

/// Most messages one receive asks the embedded queue for. SQS caps a receive at 10
/// (`queue.receive_batch`); the embedded queue has no such cap, and at 1,024 jobs in flight ten
/// per receive means 100+ receive round trips a second through the one SQLite thread, each
/// waiting behind the jobs' own writes, which starves the loop while it refills free slots.
pub const EMBEDDED_RECEIVE_BATCH: usize = 256;

/// Messages to ask for per receive: `queue.receive_batch` on SQS; on the embedded queue up to
/// [`EMBEDDED_RECEIVE_BATCH`] (never more than `worker.concurrency`). Either way permits are
/// taken first, so the worker still never holds a message it cannot start.
fn receive_batch(s: &Settings) -> usize {
    let configured = s.queue.receive_batch.max(1);
    let batch = match s.storage.backend {
        crate::settings::BackendKind::Sqlite => configured.max(EMBEDDED_RECEIVE_BATCH),
        crate::settings::BackendKind::Aws => configured,
    };
    batch.min(s.worker.concurrency).max(1)
}

/// Makes messages visible again at once (not started: shutdown, or no permit).
async fn give_back(b: &Backends, messages: &[Message]) {
    for m in messages {
        if let Err(e) = b.queue.set_visibility(&m.receipt, Duration::ZERO).await {
            warn!(message_id = %m.message_id, error = %e, "could not give a message back; it reappears after its visibility timeout");
        }
    }
}

/// What a message task needs.
struct TaskCtx {
    settings: Arc<Settings>,
    backends: Backends,
    processor: Arc<Processor>,
    deleter: Deleter,
    counters: Arc<Counters>,
    abort: watch::Receiver<bool>,
}

/// One message, start to finish. Holds its permit until the message is settled.
async fn handle_message(mut ctx: TaskCtx, message: Message, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let started = Instant::now();
    let queue_wait = message.sent_at.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default());
    telemetry::job_started(queue_wait);
    let span = tracing::info_span!(
        "job",
        job_id = tracing::field::Empty,
        stage = %ctx.settings.stage,
        attempt = message.receive_count,
        model = tracing::field::Empty,
        message_id = %message.message_id,
    );
    let job_slot: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let heartbeat = spawn_heartbeat(&ctx, &message, job_slot.clone());

    let work = std::panic::AssertUnwindSafe(ctx.processor.process(&message, job_slot.clone())).catch_unwind().instrument(span.clone());
    let verdict = tokio::select! {
        r = work => match r {
            Ok(v) => Some(v),
            Err(_) => Some(Verdict::Retry {
                job_id: job_slot.get().cloned(),
                error: JobError::transient("panic", "processing panicked"),
            }),
        },
        _ = wait_true(&mut ctx.abort) => None,
    };
    heartbeat.abort();
    let elapsed = started.elapsed();
    // Instrumented, not entered: an entered span held across `.await` would tag whatever other
    // task runs on this thread meanwhile with this job's id.
    settle(&ctx, &message, verdict, &job_slot, elapsed).instrument(span).await;
}

/// Carries out a verdict on the message (delete, dead-letter, back off, defer) and reports the
/// outcome; `None` is the drain timeout.
async fn settle(ctx: &TaskCtx, message: &Message, verdict: Option<Verdict>, job_slot: &OnceLock<String>, elapsed: Duration) {
    let c = &ctx.counters;
    let Some(verdict) = verdict else {
        // Drain timeout: give the job and the message back for another worker.
        if let Some(id) = job_slot.get() {
            ctx.processor.abandon(id, "worker shutting down").await;
        }
        give_back(&ctx.backends, std::slice::from_ref(message)).await;
        c.abandoned.fetch_add(1, Ordering::Relaxed);
        telemetry::job_outcome(job_slot.get().map(String::as_str).unwrap_or("-"), Outcome::Retried, "shutdown", elapsed, None);
        telemetry::job_finished();
        return;
    };
    let q = &ctx.backends.queue;
    match verdict {
        Verdict::Completed { job_id, duplicate } => {
            ctx.deleter.delete(message.receipt.clone()).await;
            c.completed.fetch_add(1, Ordering::Relaxed);
            let (o, r) = if duplicate { (Outcome::Duplicate, "already_completed") } else { (Outcome::Completed, "ok") };
            telemetry::job_outcome(&job_id, o, r, elapsed, None);
        }
        Verdict::Failed { job_id, error } => {
            // Recorded as failed, not dead-lettered (budget failures in `fail` mode).
            ctx.deleter.delete(message.receipt.clone()).await;
            c.failed.fetch_add(1, Ordering::Relaxed);
            telemetry::job_outcome(&job_id, Outcome::Failed, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::DeadLetter { job_id, error } => {
            // What the DLQ keeps: no key, no caller header values, nothing that looks like one.
            let reason = crate::redact::text(&format!("{}: {}", error.kind(), error.message()));
            let kept = Message { body: crate::redact::message_body(&message.body), ..message.clone() };
            if let Err(e) = q.dead_letter(&kept, &reason).await {
                // Not lost: it stays on the queue and the redrive policy catches it.
                error!(error = %e, "dead-lettering failed; the message will be redelivered");
            }
            c.failed.fetch_add(1, Ordering::Relaxed);
            let id = job_id.as_deref().unwrap_or("-");
            telemetry::job_outcome(id, Outcome::DeadLettered, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::Retry { job_id, error } => {
            let delay = retry_delay(&ctx.settings, message.receive_count, &error);
            if let Err(e) = q.set_visibility(&message.receipt, delay).await {
                warn!(error = %e, "could not set the retry delay; the visibility timeout applies");
            }
            c.retried.fetch_add(1, Ordering::Relaxed);
            let id = job_id.as_deref().unwrap_or("-");
            telemetry::job_outcome(id, Outcome::Retried, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::Defer { job_id, error } => {
            // A fresh copy with a delay resets the receive count: budget never dead-letters.
            let delay = match &error {
                crate::error::JobError::Budget { retry_after: Some(soon), .. } => {
                    // Jitter so deferred jobs do not all come back in the same instant.
                    let jitter = rand::random::<f64>() * soon.as_secs_f64();
                    (*soon + Duration::from_secs_f64(jitter)).min(Duration::from_secs(ctx.settings.worker.budget_defer_secs.max(1)))
                }
                _ => Duration::from_secs(ctx.settings.worker.budget_defer_secs),
            };
            match q.send(&message.body, delay).await {
                Ok(_) => ctx.deleter.delete(message.receipt.clone()).await,
                Err(e) => {
                    warn!(error = %e, "could not re-queue a deferred job; retrying via visibility");
                    let _ = q.set_visibility(&message.receipt, delay).await;
                }
            }
            c.deferred.fetch_add(1, Ordering::Relaxed);
            telemetry::job_outcome(&job_id, Outcome::Deferred, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::Busy { job_id, until } => {
            // Another worker holds a live lease: look again after it would have expired.
            let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
            let _ = q.set_visibility(&message.receipt, wait.min(Duration::from_secs(43_200))).await;
            telemetry::job_outcome(&job_id, Outcome::Busy, "leased_elsewhere", elapsed, None);
        }
    }
    telemetry::job_finished();
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Exponential backoff by receive count, with jitter, at least the upstream's retry hint.
pub fn retry_delay(s: &Settings, receive_count: u32, error: &JobError) -> Duration {
    let base = s.worker.retry_base_secs.max(1) as f64;
    let exp = base * 2f64.powi(receive_count.saturating_sub(1).min(20) as i32);
    let capped = exp.min(s.worker.retry_max_secs.max(1) as f64);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    let mut d = Duration::from_secs_f64(capped * jitter);
    if let JobError::Transient { retry_after: Some(r), .. } = error {
        d = d.max(*r);
    }
    d
}

/// Extends the message's visibility (and the job's lease) while the job runs.
fn spawn_heartbeat(ctx: &TaskCtx, message: &Message, job: Arc<OnceLock<String>>) -> tokio::task::JoinHandle<()> {
    let vt = Duration::from_secs(ctx.settings.queue.visibility_timeout_secs);
    let every = vt / 3;
    let queue = ctx.backends.queue.clone();
    let processor = ctx.processor.clone();
    let receipt = message.receipt.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A stalled backend must not cause a burst of catch-up renewals.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match queue.set_visibility(&receipt, vt).await {
                Ok(()) => telemetry::visibility_extended(),
                Err(e) => warn!(error = %e, "visibility extension failed"),
            }
            if let Some(id) = job.get() {
                processor.renew_lease(id).await;
            }
        }
    })
}

/// Batches deletes: flushes at 10 receipts or every `flush` interval.
#[derive(Clone)]
struct Deleter {
    tx: mpsc::Sender<DeleteCmd>,
}

enum DeleteCmd {
    Delete(String),
    Close(tokio::sync::oneshot::Sender<()>),
}

impl Deleter {
    fn spawn(backends: Backends, flush: Duration) -> Deleter {
        let (tx, mut rx) = mpsc::channel::<DeleteCmd>(1024);
        tokio::spawn(async move {
            let mut pending: Vec<String> = Vec::new();
            let flush = flush.max(Duration::from_millis(1));
            loop {
                let cmd = if pending.is_empty() {
                    rx.recv().await
                } else {
                    match tokio::time::timeout(flush, rx.recv()).await {
                        Ok(c) => c,
                        Err(_) => {
                            flush_deletes(&backends, &mut pending).await;
                            continue;
                        }
                    }
                };
                match cmd {
                    Some(DeleteCmd::Delete(r)) => {
                        pending.push(r);
                        if pending.len() >= 10 {
                            flush_deletes(&backends, &mut pending).await;
                        }
                    }
                    Some(DeleteCmd::Close(done)) => {
                        flush_deletes(&backends, &mut pending).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        flush_deletes(&backends, &mut pending).await;
                        return;
                    }
                }
            }
        });
        Deleter { tx }
    }

    async fn delete(&self, receipt: String) {
        let _ = self.tx.send(DeleteCmd::Delete(receipt)).await;
    }

    async fn close(&self) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self.tx.send(DeleteCmd::Close(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn flush_deletes(b: &Backends, pending: &mut Vec<String>) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::take(pending);
    let n = batch.len() as u64;
    // A few tries: a failed delete means a redelivery, which the job record turns into a no-op.
    let todo = batch;
    for attempt in 0..3 {
        match b.queue.delete_batch(&todo).await {
            Ok(failed) => {
                telemetry::messages_deleted(n - failed.len() as u64);
                if failed.is_empty() {
                    return;
                }
                warn!(failed = failed.len(), "some deletes failed; redelivery will be a no-op");
                return;
            }
            Err(e) => {
                warn!(error = %e, attempt, "delete batch failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}

/// How often the monitor checks the backends (and re-evaluates readiness).
const MONITOR_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a monitor check may take: a backend slower than this counts as unreachable, so a
/// frozen endpoint turns readiness off within seconds rather than after the SDK's timeouts.
const MONITOR_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes queue depth and budget gauges, and backend reachability for `/readyz`.
fn spawn_monitor(b: Backends, s: Arc<Settings>, health: Arc<Health>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        loop {
            tick.tick().await;
            health.refresh();
            let now = chrono::Utc::now();
            let check = async {
                let depth = b.queue.depth().await;
                if let Ok(d) = &depth {
                    telemetry::queue_depth(d);
                }
                let snap = b.ledger.snapshot(&crate::budget::period(now), now).await;
                if let Ok(sn) = &snap {
                    telemetry::budget_snapshot(s.budget_limit_micros(), sn.spent_micros, sn.reserved_micros);
                }
                depth.is_ok() && snap.is_ok()
            };
            let ok = tokio::time::timeout(MONITOR_CHECK_TIMEOUT, check).await.unwrap_or(false);
            health.set_backends_ok(ok);
        }
    })
}
