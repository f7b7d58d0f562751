//! Typed errors and the one decision that matters for a message: what happens to it.
//!
//! Every failure while processing a job ends as a [`JobError`]. Its [`Disposition`] decides the
//! message's fate (see `docs/design.md`):
//! - [`Disposition::Retry`]: transient; the message stays on the queue and comes back after an
//!   exponential backoff applied through its visibility timeout.
//! - [`Disposition::DeadLetter`]: permanent; the failure is recorded on the job and the message is
//!   moved to the dead-letter queue at once.
//! - [`Disposition::Defer`]: the budget is exhausted; the message is re-queued with a delay (its
//!   receive count reset, so it never reaches the DLQ for budget) and the job stays `pending`.
//! - [`Disposition::Fail`]: the job can never fit its budget; recorded `failed`, message deleted.

use std::time::Duration;

/// Why a job could not be completed. The variant decides the message's fate.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum JobError {
    /// Worth trying again later: network errors, 5xx, timeouts, invalid model output.
    #[error("transient {kind}: {message}")]
    Transient {
        /// Stable machine-readable reason, e.g. `llm_timeout`, `fetch_timeout`, `store_unavailable`.
        kind: String,
        /// Human-readable detail (never contains secrets or page content).
        message: String,
        /// A hint from upstream (e.g. `Retry-After`) for the earliest sensible retry.
        retry_after: Option<Duration>,
    },
    /// Will never succeed as submitted: bad message, SSRF target, forbidden model, bad schema.
    #[error("permanent {kind}: {message}")]
    Permanent {
        /// Stable machine-readable reason, e.g. `invalid_message`, `ssrf_blocked`, `model_forbidden`.
        kind: String,
        /// Human-readable detail.
        message: String,
    },
    /// The fleet's monthly budget (or the job's own `max_cost_usd`) cannot cover the next call.
    #[error("budget exhausted: {message}")]
    Budget {
        /// Human-readable detail: what was needed and what was left.
        message: String,
        /// True when the job's own cap (`max_cost_usd`) was hit rather than the stage budget;
        /// such a job can never succeed and is failed rather than deferred.
        job_cap: bool,
        /// When budget is only leased or held by running calls (it may come back within
        /// seconds), how soon to try again; `None`: the month is spent, wait the configured
        /// `worker.budget_defer_secs`.
        retry_after: Option<Duration>,
    },
}

/// What the worker does with a message after a [`JobError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Leave it on the queue; it comes back after a backoff.
    Retry,
    /// Record the failure and move the message to the DLQ.
    DeadLetter,
    /// Re-queue later without counting a receive; the job stays `pending`.
    Defer,
    /// Record the failure and delete the message without dead-lettering it (budget: a job over
    /// its own `max_cost_usd`, or a call larger than the whole monthly budget). Budget problems
    /// never go to the DLQ.
    Fail,
}

impl JobError {
    /// A transient error with no retry hint.
    pub fn transient(kind: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::Transient { kind: kind.into(), message: message.into(), retry_after: None }
    }

    /// A permanent error.
    pub fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        JobError::Permanent { kind: kind.into(), message: message.into() }
    }

    /// The message's fate for this error.
    pub fn disposition(&self) -> Disposition {
        match self {
            JobError::Transient { .. } => Disposition::Retry,
            JobError::Permanent { .. } => Disposition::DeadLetter,
            JobError::Budget { job_cap: true, .. } => Disposition::Fail,
            JobError::Budget { job_cap: false, .. } => Disposition::Defer,
        }
    }

    /// The stable reason recorded on the job and used as a metric label.
    pub fn kind(&self) -> &str {
        match self {
            JobError::Transient { kind, .. } | JobError::Permanent { kind, .. } => kind,
            JobError::Budget { job_cap: true, .. } => "job_cost_cap",
            JobError::Budget { job_cap: false, .. } => "budget_exhausted",
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            JobError::Transient { message, .. } | JobError::Permanent { message, .. } | JobError::Budget { message, .. } => message,
        }
    }
}

/// An error from a backend (queue, job store, ledger, artifact store).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Worth retrying: throttling, timeouts, 5xx, a busy database.
    #[error("transient backend error: {0}")]
    Transient(String),
    /// A conditional write lost (the state was not what the caller expected).
    #[error("condition failed: {0}")]
    Conflict(String),
    /// The named resource does not exist (queue, table, bucket, object).
    #[error("not found: {0}")]
    NotFound(String),
    /// Anything else: misconfiguration, permissions, malformed data.
    #[error("backend error: {0}")]
    Other(String),
}

impl BackendError {
    /// Whether the caller may retry the same call.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Transient(_))
    }
}

impl From<BackendError> for JobError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Transient(m) => JobError::transient("store_unavailable", m),
            BackendError::Conflict(m) => JobError::transient("store_conflict", m),
            BackendError::NotFound(m) => JobError::permanent("not_found", m),
            BackendError::Other(m) => JobError::transient("store_error", m),
        }
    }
}
