//! Logs and metrics: the worker's only observability surface.
//!
//! - [`init_tracing`] sets up structured logs on stderr (JSON in preview/production, human-readable
//!   locally).
//! - [`install_metrics`] installs the Prometheus recorder once per process, with the `stage` label
//!   on every series, help text on every metric and explicit histogram buckets; the admin server
//!   ([`crate::admin`]) serves [`render_metrics`] on `/metrics`.
//! - The remaining functions are the *only* way the rest of the crate records an observation, so
//!   metric names ([`names`]), label sets and units live in this one module (catalogue:
//!   `docs/metrics.md`), one file per area: jobs, queue, model calls, rate limits, budget, delivery.
//!
//! Label values are low-cardinality by construction: outcomes, reasons, statuses, tiers and model
//! ids (which come from config). Job ids, URLs and tenants are never labels; they appear in logs only.
//!
//! Two counters carry fractional values (USD spent, seconds waited), which the `metrics` crate's
//! integer counters cannot hold. They are kept here as exact integer sums (micro-USD, microseconds)
//! and rendered as Prometheus counters next to the recorder's own output by [`render_metrics`].

mod budget;
mod delivery;
mod describe;
mod jobs;
mod labels;
mod llm;
mod logs;
pub mod process;
mod queue;
mod ratelimit;
mod recorder;

pub use budget::{budget_lease_recovered, budget_snapshot};
pub use delivery::{event_published, webhook_delivery, webhook_retry};
pub use jobs::{input_memory_held, input_memory_wait, job_finished, job_outcome, job_started, set_ready, Outcome};
pub use llm::{escalation, fallback, input_chunked, llm_request, llm_usage_implausible, route_decision, ROUTE_REASONS};
pub use logs::{init_tracing, MAX_ERROR_LOG_CHARS};
pub use queue::{aws_request, messages_deleted, messages_received, queue_depth, visibility_extended};
pub use ratelimit::{
    ratelimit_fallback_off, ratelimit_fallback_on, ratelimit_leased, ratelimit_provider_limit, ratelimit_registered, ratelimit_used,
    ratelimit_wait, ratelimit_waiting,
};
pub use recorder::{install_metrics, render_metrics};

/// Metric names, public so that tests and dashboards checks refer to one spelling.
pub mod names {
    /// Counter: job attempts by `outcome` and `reason`.
    pub const JOBS_TOTAL: &str = "atlas_jobs_total";
    /// Histogram: wall time of one job attempt, seconds, by `outcome`.
    pub const JOB_DURATION_SECONDS: &str = "atlas_job_duration_seconds";
    /// Histogram: time from a message's first send to the start of this attempt, seconds.
    pub const JOB_QUEUE_WAIT_SECONDS: &str = "atlas_job_queue_wait_seconds";
    /// Gauge: job attempts running now in this process.
    pub const JOBS_IN_FLIGHT: &str = "atlas_jobs_in_flight";
    /// Gauge: bytes held by the inputs of the jobs in flight (`worker.input_bytes_in_flight`).
    pub const INPUT_BYTES_HELD: &str = "atlas_input_bytes_held";
    /// Counter: jobs that waited for input memory before reading their input.
    pub const INPUT_MEMORY_WAITS_TOTAL: &str = "atlas_input_memory_waits_total";
    /// Counter: messages received from the queue.
    pub const MESSAGES_RECEIVED_TOTAL: &str = "atlas_messages_received_total";
    /// Counter: messages deleted from the queue.
    pub const MESSAGES_DELETED_TOTAL: &str = "atlas_messages_deleted_total";
    /// Counter: visibility-timeout extensions (heartbeats).
    pub const VISIBILITY_EXTENSIONS_TOTAL: &str = "atlas_visibility_extensions_total";
    /// Counter: model calls by `model` and `status`.
    pub const LLM_REQUESTS_TOTAL: &str = "atlas_llm_requests_total";
    /// Histogram: model call latency, seconds, by `model`.
    pub const LLM_REQUEST_DURATION_SECONDS: &str = "atlas_llm_request_duration_seconds";
    /// Counter: tokens by `model` and `kind`.
    pub const LLM_TOKENS_TOTAL: &str = "atlas_llm_tokens_total";
    /// Counter (fractional): USD charged for model calls, by `model`.
    pub const LLM_COST_USD_TOTAL: &str = "atlas_llm_cost_usd_total";
    /// Gauge: the stage's monthly budget, USD.
    pub const BUDGET_LIMIT_USD: &str = "atlas_budget_limit_usd";
    /// Gauge: settled spend this month, USD.
    pub const BUDGET_SPENT_USD: &str = "atlas_budget_spent_usd";
    /// Gauge: live reservations this month, USD.
    pub const BUDGET_RESERVED_USD: &str = "atlas_budget_reserved_usd";
    /// Gauge: limit − spent − reserved, USD.
    pub const BUDGET_REMAINING_USD: &str = "atlas_budget_remaining_usd";
    /// Counter: lapsed budget leases of dead workers settled at their declared bound.
    pub const BUDGET_LEASES_RECOVERED_TOTAL: &str = "atlas_budget_leases_recovered_total";
    /// Counter (fractional): USD given back to the stage by recovered leases (leased, unspent).
    pub const BUDGET_RECOVERED_USD_TOTAL: &str = "atlas_budget_recovered_usd_total";
    /// Counter: waits imposed by the per-model rate limiter, by `model`.
    pub const RATELIMIT_WAITS_TOTAL: &str = "atlas_ratelimit_waits_total";
    /// Counter (fractional): seconds spent waiting on the rate limiter, by `model`.
    pub const RATELIMIT_WAIT_SECONDS_TOTAL: &str = "atlas_ratelimit_wait_seconds_total";
    /// Gauge: model calls waiting for rate-limit capacity now, by `model`.
    pub const RATELIMIT_WAITING: &str = "atlas_ratelimit_waiting";
    /// Counter: capacity leased from the stage's shared rate-limit windows, by `model` and `unit`.
    pub const RATELIMIT_LEASED_TOTAL: &str = "atlas_ratelimit_leased_total";
    /// Counter: capacity used by model calls, by `model` and `unit` (fleet scope).
    pub const RATELIMIT_USED_TOTAL: &str = "atlas_ratelimit_used_total";
    /// Counter: writes to the shared rate-limit store (takes), by `model` and `result`.
    pub const RATELIMIT_STORE_WRITES_TOTAL: &str = "atlas_ratelimit_store_writes_total";
    /// Counter: AWS requests sent, by service and operation.
    pub const AWS_REQUESTS_TOTAL: &str = "atlas_aws_requests_total";
    /// Gauge: 1 while a model runs on its fallback share (shared store unreachable), by `model`.
    pub const RATELIMIT_FALLBACK: &str = "atlas_ratelimit_fallback";
    /// Counter: routing decisions by `tier` and `reason`.
    pub const ROUTE_DECISIONS_TOTAL: &str = "atlas_route_decisions_total";
    /// Counter: escalations to a stronger model after invalid output.
    pub const LLM_ESCALATIONS_TOTAL: &str = "atlas_llm_escalations_total";
    /// Counter: fallbacks to another model after a model error.
    pub const LLM_FALLBACKS_TOTAL: &str = "atlas_llm_fallbacks_total";
    /// Counter: answers whose reported usage exceeded what the request could use (charged bounded).
    pub const LLM_USAGE_IMPLAUSIBLE_TOTAL: &str = "atlas_llm_usage_implausible_total";
    /// Counter: job inputs too long for one call, read in chunks.
    pub const LLM_CHUNKED_INPUTS_TOTAL: &str = "atlas_llm_chunked_inputs_total";
    /// Counter: chunks those inputs were split into.
    pub const LLM_INPUT_CHUNKS_TOTAL: &str = "atlas_llm_input_chunks_total";
    /// Counter: job end events published to the stage's sink, by `type` and `result`.
    pub const EVENTS_PUBLISHED_TOTAL: &str = "atlas_events_published_total";
    /// Counter: webhook deliveries ended, by `outcome` (delivered, failed, refused).
    pub const WEBHOOK_DELIVERIES_TOTAL: &str = "atlas_webhook_deliveries_total";
    /// Counter: webhook POSTs retried after a 5xx, 408, 429, timeout or connection error.
    pub const WEBHOOK_RETRIES_TOTAL: &str = "atlas_webhook_retries_total";
    /// Histogram: from a job's end to the end of its webhook delivery, seconds, by `outcome`.
    pub const WEBHOOK_DELIVERY_SECONDS: &str = "atlas_webhook_delivery_seconds";
    /// Gauge: approximate queue counts by `state`.
    pub const QUEUE_MESSAGES: &str = "atlas_queue_messages";
    /// Gauge: 1 when the worker is ready (backends reachable, not draining), else 0.
    pub const WORKER_READY: &str = "atlas_worker_ready";
    /// Gauge: always 1, labelled with the build's `version`.
    pub const BUILD_INFO: &str = "atlas_build_info";
}

/// Histogram buckets (upper bounds, seconds) for one job attempt: 50 ms to 10 min.
pub const JOB_DURATION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Histogram buckets (upper bounds, seconds) for queue wait: 100 ms to 12 h (SQS's longest backoff).
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0];
/// Histogram buckets (upper bounds, seconds) for one model call: 100 ms to 2 min.
pub const LLM_LATENCY_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0];

/// Histogram buckets (upper bounds, seconds) for a webhook delivery: 10 ms to an hour.
pub const WEBHOOK_DELIVERY_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

#[cfg(test)]
mod tests;
