//! The small state enums a job record keeps: [`JobStatus`], [`PendingReason`] and [`CallOutcome`].

use serde::{Deserialize, Serialize};

/// A job's state. Transitions: `pending` → `processing` → `completed` | `failed`;
/// `processing` → `pending` (retry or budget deferral); `failed` → `processing` (DLQ redrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Known, not running (new, waiting for a retry, or deferred for budget).
    Pending,
    /// A worker holds the lease.
    Processing,
    /// Done; the result is stored. Terminal.
    Completed,
    /// Failed for good: dead-lettered (permanent failures, retries exhausted), or deleted for a
    /// budget failure (`on_budget_exhausted = fail`, the job's own `max_cost_usd`). Terminal,
    /// though a DLQ redrive claims it again.
    Failed,
}

impl JobStatus {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }
    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "processing" => JobStatus::Processing,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            _ => return None,
        })
    }
}

/// Why a `pending` job is waiting (kept on the record as its snake_case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// A transient failure: the message comes back after its backoff.
    Retry,
    /// Deferred for budget: the message comes back when budget may have freed up.
    BudgetExhausted,
}

impl PendingReason {
    /// The name on records and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingReason::Retry => "retry",
            PendingReason::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl std::fmt::Display for PendingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one model call ended, as kept on the job record (`calls[].outcome`) and counted in
/// `atlas_llm_requests_total{status}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// Written before the request goes out: a crash mid-call leaves it so, and the next claim
    /// charges it at its worst case.
    Sent,
    /// A call an earlier attempt left `sent` (charged at its worst case, `estimated`).
    Abandoned,
    /// Answered, and the answer validated.
    Ok,
    /// Answered, but the answer did not validate against the job's schema.
    InvalidOutput,
    /// The provider answered 429.
    RateLimited,
    /// The provider answered 5xx.
    ServerError,
    /// No answer within `llm.request_timeout_secs`.
    Timeout,
    /// The provider refused the request (4xx other than 429).
    BadRequest,
    /// The connection failed.
    Transport,
    /// The model refused (`refusal` set).
    Refused,
    /// The output token cap was reached (`finish_reason: length`).
    Length,
    /// The provider's content filter stopped the answer.
    ContentFilter,
}

impl CallOutcome {
    /// The spelling on records and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Sent => "sent",
            CallOutcome::Abandoned => "abandoned",
            CallOutcome::Ok => "ok",
            CallOutcome::InvalidOutput => "invalid_output",
            CallOutcome::RateLimited => "rate_limited",
            CallOutcome::ServerError => "server_error",
            CallOutcome::Timeout => "timeout",
            CallOutcome::BadRequest => "bad_request",
            CallOutcome::Transport => "transport",
            CallOutcome::Refused => "refused",
            CallOutcome::Length => "length",
            CallOutcome::ContentFilter => "content_filter",
        }
    }
}

impl PartialEq<&str> for CallOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
