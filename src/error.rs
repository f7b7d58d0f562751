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

/// The stable reason a job failed: recorded on the job (`error.kind`), the DLQ reason, the job end
/// event's `reason` and the `reason` label of `atlas_jobs_total`. The catalogue is in
/// `docs/messages.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The message is not a valid job (missing or bad field, too big, wrong shape).
    InvalidMessage,
    /// The job's JSON Schema does not compile (formats and regexes included).
    InvalidSchema,
    /// The URL does not parse or is not http(s).
    InvalidUrl,
    /// The URL (or a redirect) resolves to an address that is not public.
    SsrfBlocked,
    /// The host name did not resolve (transient).
    Dns,
    /// More redirects than `fetch.max_redirects`.
    TooManyRedirects,
    /// The page is larger than `fetch.max_body_bytes`.
    BodyTooLarge,
    /// Connecting or reading the page took too long (transient).
    FetchTimeout,
    /// The page's server refused or dropped the connection (transient).
    FetchConnect,
    /// The HTTP client could not be built for the request (transient).
    FetchConfig,
    /// The page's media type is not in `fetch.allowed_content_types`.
    UnsupportedContentType,
    /// The page's body could not be decoded as text.
    InvalidBody,
    /// The page answered 4xx (other than 429).
    Http4xx,
    /// The page's server rate-limited the fetch (transient; its `Retry-After` is honoured).
    Http429,
    /// The page answered 5xx (transient).
    Http5xx,
    /// The page answered a status that is neither 2xx, 4xx nor 5xx.
    HttpStatus,
    /// robots.txt disallows the crawl's start page.
    RobotsDisallowed,
    /// robots.txt could not be fetched (transient).
    RobotsUnavailable,
    /// A crawled page redirected off the crawl's origin (recorded on that page only).
    OutOfScope,
    /// The claim-checked `input_key` names no object.
    InputMissing,
    /// The claim-checked input is larger than `fetch.max_body_bytes`.
    InputTooLarge,
    /// The claim-checked input is not UTF-8 text.
    InputNotUtf8,
    /// The input needs more than `llm.max_chunks` chunks (send `truncate: true`).
    InputTooLong,
    /// The job asks for a model this stage may not call.
    ModelForbidden,
    /// A routed model has no price in config.
    ModelUnknown,
    /// A tier routes to a model this stage cannot call (transient: a config rollout fixes it).
    ModelUnconfigured,
    /// The provider rejected the request (4xx other than 429).
    LlmBadRequest,
    /// The model refused to answer.
    LlmRefused,
    /// The answer hit its output cap, also after the larger cap or escalation (transient).
    LlmLength,
    /// The provider's content filter stopped the answer.
    LlmContentFilter,
    /// The provider answered 5xx on every model tried (transient).
    LlmServerError,
    /// The provider did not answer within `llm.request_timeout_secs` (transient).
    LlmTimeout,
    /// The connection to the provider failed (transient).
    LlmTransport,
    /// No model call succeeded (transient).
    LlmUnavailable,
    /// Every answer failed the job's schema (transient until the receive limit).
    InvalidOutput,
    /// The chunks' answers merged do not match the job's schema.
    MergeInvalid,
    /// A store was throttled, timed out or answered 5xx (transient).
    StoreUnavailable,
    /// A conditional write lost (transient).
    StoreConflict,
    /// A store failed otherwise: permissions, malformed data (transient).
    StoreError,
    /// A named store resource does not exist.
    NotFound,
    /// Another worker owns the job now (transient).
    LeaseLost,
    /// The budget ledger could not be read or written (transient).
    BudgetUnavailable,
    /// The result document could not be serialised.
    ResultEncoding,
    /// The job's end event could not be published yet (transient).
    EventUnpublished,
    /// The job ran longer than `worker.job_timeout_secs` (transient).
    JobTimeout,
    /// Processing panicked; the message is retried (transient).
    Panic,
    /// A transient failure reached `queue.max_receive_count` receives.
    RetriesExhausted,
    /// The sweep found the record left `processing` at the receive limit.
    ReceiveLimit,
    /// A record ended `failed` without a recorded reason.
    Failed,
    /// The job's own `max_cost_usd` cannot cover the next call (failed, not deferred).
    JobCostCap,
    /// The stage's monthly budget cannot cover the next call (deferred).
    BudgetExhausted,
}

impl ErrorKind {
    /// Every kind, in catalogue order.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::InvalidMessage,
        ErrorKind::InvalidSchema,
        ErrorKind::InvalidUrl,
        ErrorKind::SsrfBlocked,
        ErrorKind::Dns,
        ErrorKind::TooManyRedirects,
        ErrorKind::BodyTooLarge,
        ErrorKind::FetchTimeout,
        ErrorKind::FetchConnect,
        ErrorKind::FetchConfig,
        ErrorKind::UnsupportedContentType,
        ErrorKind::InvalidBody,
        ErrorKind::Http4xx,
        ErrorKind::Http429,
        ErrorKind::Http5xx,
        ErrorKind::HttpStatus,
        ErrorKind::RobotsDisallowed,
        ErrorKind::RobotsUnavailable,
        ErrorKind::OutOfScope,
        ErrorKind::InputMissing,
        ErrorKind::InputTooLarge,
        ErrorKind::InputNotUtf8,
        ErrorKind::InputTooLong,
        ErrorKind::ModelForbidden,
        ErrorKind::ModelUnknown,
        ErrorKind::ModelUnconfigured,
        ErrorKind::LlmBadRequest,
        ErrorKind::LlmRefused,
        ErrorKind::LlmLength,
        ErrorKind::LlmContentFilter,
        ErrorKind::LlmServerError,
        ErrorKind::LlmTimeout,
        ErrorKind::LlmTransport,
        ErrorKind::LlmUnavailable,
        ErrorKind::InvalidOutput,
        ErrorKind::MergeInvalid,
        ErrorKind::StoreUnavailable,
        ErrorKind::StoreConflict,
        ErrorKind::StoreError,
        ErrorKind::NotFound,
        ErrorKind::LeaseLost,
        ErrorKind::BudgetUnavailable,
        ErrorKind::ResultEncoding,
        ErrorKind::EventUnpublished,
        ErrorKind::JobTimeout,
        ErrorKind::Panic,
        ErrorKind::RetriesExhausted,
        ErrorKind::ReceiveLimit,
        ErrorKind::Failed,
        ErrorKind::JobCostCap,
        ErrorKind::BudgetExhausted,
    ];

    /// The kind as recorded and labelled.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::InvalidSchema => "invalid_schema",
            ErrorKind::InvalidUrl => "invalid_url",
            ErrorKind::SsrfBlocked => "ssrf_blocked",
            ErrorKind::Dns => "dns",
            ErrorKind::TooManyRedirects => "too_many_redirects",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::FetchTimeout => "fetch_timeout",
            ErrorKind::FetchConnect => "fetch_connect",
            ErrorKind::FetchConfig => "fetch_config",
            ErrorKind::UnsupportedContentType => "unsupported_content_type",
            ErrorKind::InvalidBody => "invalid_body",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http429 => "http_429",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::RobotsDisallowed => "robots_disallowed",
            ErrorKind::RobotsUnavailable => "robots_unavailable",
            ErrorKind::OutOfScope => "out_of_scope",
            ErrorKind::InputMissing => "input_missing",
            ErrorKind::InputTooLarge => "input_too_large",
            ErrorKind::InputNotUtf8 => "input_not_utf8",
            ErrorKind::InputTooLong => "input_too_long",
            ErrorKind::ModelForbidden => "model_forbidden",
            ErrorKind::ModelUnknown => "model_unknown",
            ErrorKind::ModelUnconfigured => "model_unconfigured",
            ErrorKind::LlmBadRequest => "llm_bad_request",
            ErrorKind::LlmRefused => "llm_refused",
            ErrorKind::LlmLength => "llm_length",
            ErrorKind::LlmContentFilter => "llm_content_filter",
            ErrorKind::LlmServerError => "llm_server_error",
            ErrorKind::LlmTimeout => "llm_timeout",
            ErrorKind::LlmTransport => "llm_transport",
            ErrorKind::LlmUnavailable => "llm_unavailable",
            ErrorKind::InvalidOutput => "invalid_output",
            ErrorKind::MergeInvalid => "merge_invalid",
            ErrorKind::StoreUnavailable => "store_unavailable",
            ErrorKind::StoreConflict => "store_conflict",
            ErrorKind::StoreError => "store_error",
            ErrorKind::NotFound => "not_found",
            ErrorKind::LeaseLost => "lease_lost",
            ErrorKind::BudgetUnavailable => "budget_unavailable",
            ErrorKind::ResultEncoding => "result_encoding",
            ErrorKind::EventUnpublished => "event_unpublished",
            ErrorKind::JobTimeout => "job_timeout",
            ErrorKind::Panic => "panic",
            ErrorKind::RetriesExhausted => "retries_exhausted",
            ErrorKind::ReceiveLimit => "receive_limit",
            ErrorKind::Failed => "failed",
            ErrorKind::JobCostCap => "job_cost_cap",
            ErrorKind::BudgetExhausted => "budget_exhausted",
        }
    }

    /// The kind a recorded `error.kind` names, if it is one.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// The kind of a model call that failed with `outcome` on every model tried.
    pub fn of_model_failure(outcome: crate::job::CallOutcome) -> ErrorKind {
        use crate::job::CallOutcome;
        match outcome {
            CallOutcome::ServerError => ErrorKind::LlmServerError,
            CallOutcome::Timeout => ErrorKind::LlmTimeout,
            CallOutcome::Transport => ErrorKind::LlmTransport,
            CallOutcome::BadRequest => ErrorKind::LlmBadRequest,
            CallOutcome::Refused => ErrorKind::LlmRefused,
            CallOutcome::Length => ErrorKind::LlmLength,
            CallOutcome::ContentFilter => ErrorKind::LlmContentFilter,
            CallOutcome::InvalidOutput => ErrorKind::InvalidOutput,
            CallOutcome::Sent | CallOutcome::Abandoned | CallOutcome::Ok | CallOutcome::RateLimited => ErrorKind::LlmUnavailable,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job could not be completed. The variant decides the message's fate.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum JobError {
    /// Worth trying again later: network errors, 5xx, timeouts, invalid model output.
    #[error("transient {kind}: {message}")]
    Transient {
        /// Stable machine-readable reason, e.g. `llm_timeout`, `fetch_timeout`, `store_unavailable`.
        kind: ErrorKind,
        /// Human-readable detail (never contains secrets or page content).
        message: String,
        /// A hint from upstream (e.g. `Retry-After`) for the earliest sensible retry.
        retry_after: Option<Duration>,
    },
    /// Will never succeed as submitted: bad message, SSRF target, forbidden model, bad schema.
    #[error("permanent {kind}: {message}")]
    Permanent {
        /// Stable machine-readable reason, e.g. `invalid_message`, `ssrf_blocked`, `model_forbidden`.
        kind: ErrorKind,
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
    pub fn transient(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError::Transient { kind, message: message.into(), retry_after: None }
    }

    /// A permanent error.
    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        JobError::Permanent { kind, message: message.into() }
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
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            JobError::Transient { kind, .. } | JobError::Permanent { kind, .. } => *kind,
            JobError::Budget { job_cap: true, .. } => ErrorKind::JobCostCap,
            JobError::Budget { job_cap: false, .. } => ErrorKind::BudgetExhausted,
        }
    }

    /// [`JobError::error_kind`] as recorded and labelled.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
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
            BackendError::Transient(m) => JobError::transient(ErrorKind::StoreUnavailable, m),
            BackendError::Conflict(m) => JobError::transient(ErrorKind::StoreConflict, m),
            BackendError::NotFound(m) => JobError::permanent(ErrorKind::NotFound, m),
            BackendError::Other(m) => JobError::transient(ErrorKind::StoreError, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorKind;

    #[test]
    fn every_error_kind_is_in_the_messages_catalogue_and_the_catalogue_names_no_other() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/messages.md")).unwrap();
        let section = doc.split("## Error kinds: the catalogue").nth(1).unwrap().split("\n## ").next().unwrap();
        let listed: Vec<&str> = section.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split('`').next()).collect();
        let kinds: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(listed, kinds);
    }

    #[test]
    fn a_recorded_kind_parses_back_to_its_error_kind() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(ErrorKind::parse("no_such_kind"), None);
    }
}
