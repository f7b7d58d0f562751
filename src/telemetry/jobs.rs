//! Job attempts: their outcomes, the jobs in flight, the input memory they hold, and readiness.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use super::labels::label;
use super::logs::sanitize_error;
use super::names::*;

/// How one job attempt ended; the `outcome` label of `atlas_jobs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Result written, record `completed`, message deleted.
    Completed,
    /// Recorded as `failed` without dead-lettering (e.g. budget exhausted with `on_budget_exhausted = fail`).
    Failed,
    /// Transient failure; the message comes back after a backoff.
    Retried,
    /// Permanent failure; the message went to the DLQ.
    DeadLettered,
    /// The job was already completed (redelivery); nothing done, message deleted.
    Duplicate,
    /// Budget exhausted; re-queued with a delay, record stays `pending`.
    Deferred,
    /// Another worker holds a live lease; the message was given back.
    Busy,
}

impl Outcome {
    /// Every outcome, for tests and docs.
    pub const ALL: [Outcome; 7] = [
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Retried,
        Outcome::DeadLettered,
        Outcome::Duplicate,
        Outcome::Deferred,
        Outcome::Busy,
    ];

    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Duplicate => "duplicate",
            Outcome::Deferred => "deferred",
            Outcome::Busy => "busy",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// THE one place a job outcome is logged and counted.
///
/// Emits one tracing event (`info` for completed/duplicate, `warn` for retried/deferred/busy,
/// `error` for failed/dead_lettered) with `job_id`, `outcome`, `reason`, `duration_ms` and
/// `error`, and counts `atlas_jobs_total{outcome,reason}` and
/// `atlas_job_duration_seconds{outcome}`.
///
/// `reason` must be low-cardinality: `ok` for completed, [`crate::error::JobError::kind`] for
/// failures, `already_completed` / `lease_held` style words otherwise (empty becomes `none`).
/// `error` is the human-readable detail for the log only; it must never hold secrets.
pub fn job_outcome(job_id: &str, outcome: Outcome, reason: &str, duration: Duration, error: Option<&str>) {
    let reason = label(reason);
    let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let error = error.map(sanitize_error);
    let error = error.as_deref();
    let o = outcome.as_str();
    match outcome {
        Outcome::Completed | Outcome::Duplicate => {
            tracing::info!(job_id, outcome = o, reason = %reason, duration_ms, error, "job outcome")
        }
        Outcome::Retried | Outcome::Deferred | Outcome::Busy => {
            tracing::warn!(job_id, outcome = o, reason = %reason, duration_ms, error, "job outcome")
        }
        Outcome::Failed | Outcome::DeadLettered => {
            tracing::error!(job_id, outcome = o, reason = %reason, duration_ms, error, "job outcome")
        }
    }
    counter!(JOBS_TOTAL, "outcome" => o, "reason" => reason).increment(1);
    histogram!(JOB_DURATION_SECONDS, "outcome" => o).record(duration.as_secs_f64());
}

/// A job attempt started: `atlas_jobs_in_flight` +1 and, when the message's send time is known,
/// its wait in the queue into `atlas_job_queue_wait_seconds`.
pub fn job_started(queue_wait: Option<Duration>) {
    gauge!(JOBS_IN_FLIGHT).increment(1.0);
    if let Some(w) = queue_wait {
        histogram!(JOB_QUEUE_WAIT_SECONDS).record(w.as_secs_f64());
    }
}

/// A job attempt ended (whatever the outcome): `atlas_jobs_in_flight` −1. Call exactly once per
/// [`job_started`].
pub fn job_finished() {
    gauge!(JOBS_IN_FLIGHT).decrement(1.0);
}

/// The inputs of the jobs in flight hold `bytes` now.
pub fn input_memory_held(bytes: usize) {
    gauge!(INPUT_BYTES_HELD).set(bytes as f64);
}

/// A job has to wait for input memory: the inputs in flight hold `worker.input_bytes_in_flight`.
pub fn input_memory_wait() {
    counter!(INPUT_MEMORY_WAITS_TOTAL).increment(1);
}

/// Whether this worker is ready: `atlas_worker_ready` 1 or 0.
pub fn set_ready(ready: bool) {
    gauge!(WORKER_READY).set(if ready { 1.0 } else { 0.0 });
}
