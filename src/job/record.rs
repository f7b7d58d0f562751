//! The job record the worker keeps in the job store, with its model calls, usage, route and error.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{CallOutcome, JobStatus, PendingReason};

/// Token counts reported by the provider for one call (or summed over a job's calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Completion tokens, reasoning included.
    pub output_tokens: u64,
    /// The part of `output_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Adds another call's usage.
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.output_tokens += o.output_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
    }
}

/// How a job was routed: the model, its tier, the complexity score and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The model first chosen.
    pub model: String,
    /// `nano`, `mini`, `full`, `production` or `override`.
    pub tier: crate::route::Tier,
    /// The complexity score (0-100).
    pub score: u32,
    /// A short explanation of the decision.
    pub reason: String,
}

/// The chunks of a long input already answered (see [`JobRecord::chunk_progress`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkProgress {
    /// SHA-256 (hex) of the chunks as sent: a later attempt resumes only over the same chunks
    /// (a page that changed between attempts is read again from its first chunk).
    pub input: String,
    /// The answers of the first `answers.len()` chunks, in order.
    pub answers: Vec<Value>,
    /// The model that gave the last of them.
    pub model: String,
}

/// One model call made for a job, kept on the record (every try is recorded and charged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The model called.
    pub model: String,
    /// How the call ended (`ok`, `invalid_output`, `length`, ...; `sent` while it is out).
    pub outcome: CallOutcome,
    /// Tokens used by this call.
    pub usage: Usage,
    /// What this call cost, in micro-USD.
    pub cost_micros: i64,
    /// Wall time of the call in milliseconds.
    pub latency_ms: u64,
    /// Which chunk of a long input this call read (1-based), when the input was chunked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
    /// The budget reservation this call's charge settles (paid calls only): the ledger's
    /// idempotency key, so a charge written here first can be settled again after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    /// The budget period (`YYYY-MM`) the charge belongs to (paid calls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Whether the charge has reached the ledger. A paid call is recorded here *before* it is
    /// settled; the next claim settles any call still `false` (settle is idempotent).
    #[serde(default = "settled_default", skip_serializing_if = "is_true")]
    pub settled: bool,
    /// True when `cost_micros` is the call's worst case rather than the provider's usage: the
    /// call was sent and its answer never read (timeout, crash, drain), so it may have been
    /// billed in full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// What the provider reported when it was more than the request could use (more input than
    /// twice the counted prompt, more output than the cap): `usage` and `cost_micros` are then
    /// the bound, and this is the claim, kept for the dispute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_usage: Option<Usage>,
}

fn settled_default() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The failure kept on a job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable reason (see [`crate::error::JobError::kind`]).
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether the failure was permanent.
    pub permanent: bool,
}

/// The job record kept in the job store (DynamoDB `atlas-codex-jobs-{stage}` or SQLite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id (partition key).
    pub id: String,
    /// Current state.
    pub status: JobStatus,
    /// The stage that ran it.
    pub stage: String,
    /// `extract` or `crawl` (absent when the message could not be parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// The URL, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Tenant for cost attribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// The worker holding the lease while `processing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// When that lease runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Why a pending job is waiting (`retry`, `budget_exhausted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<PendingReason>,
    /// The last error (current one when `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The routing decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// The model whose answer was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Every model call made, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Attempt>,
    /// Summed token usage.
    #[serde(default)]
    pub usage: Usage,
    /// Total charged, in micro-USD (the exact unit the budget ledger uses).
    #[serde(default)]
    pub cost_micros: i64,
    /// Where the full result lives in the artifacts store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    /// How many chunks a long input was extracted over (absent: one call read it whole). Each
    /// chunk's calls are in `calls`, marked with their `chunk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    /// The answers of the chunks already read, kept when an attempt fails part-way through a
    /// chunked input so that the next attempt resumes after them instead of paying for them
    /// again. Cleared when the job's answers are merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_progress: Option<ChunkProgress>,
    /// The result's `data`, inline when it serialises to at most 32 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Wall time of the successful attempt in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// True when produced by the simulated provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
    /// Unix time after which the store may delete the record (DynamoDB TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The announcement of the job's latest end (event published? webhook delivered?),
    /// written with the end itself (see [`crate::events`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<crate::events::Announcement>,
}

impl JobRecord {
    /// A fresh `pending` record.
    pub fn new(id: &str, stage: &str, now: DateTime<Utc>) -> JobRecord {
        JobRecord {
            id: id.to_string(),
            status: JobStatus::Pending,
            stage: stage.to_string(),
            job_type: None,
            url: None,
            tenant: None,
            created_at: now,
            updated_at: now,
            attempts: 0,
            lease_owner: None,
            lease_expires_at: None,
            pending_reason: None,
            error: None,
            route: None,
            model: None,
            calls: Vec::new(),
            usage: Usage::default(),
            cost_micros: 0,
            result_key: None,
            chunks: None,
            chunk_progress: None,
            data: None,
            duration_ms: None,
            simulated: false,
            expires_at: None,
            announcement: None,
        }
    }

    /// Total charged, in USD.
    pub fn cost_usd(&self) -> f64 {
        crate::pricing::micros_to_usd(self.cost_micros)
    }
}
