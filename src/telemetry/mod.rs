//! Logs and metrics: the worker's only observability surface.
//!
//! - [`init_tracing`] sets up structured logs on stderr (JSON in preview/production, human-readable
//!   locally).
//! - [`install_metrics`] installs the Prometheus recorder once per process, with the `stage` label
//!   on every series, help text on every metric and explicit histogram buckets; the admin server
//!   ([`crate::admin`]) serves [`render_metrics`] on `/metrics`.
//! - The remaining functions are the *only* way the rest of the crate records an observation, so
//!   metric names, label sets and units live in this one file (catalogue: `docs/metrics.md`).
//!
//! Label values are low-cardinality by construction: outcomes, reasons, statuses, tiers and model
//! ids (which come from config). Job ids, URLs and tenants are never labels; they appear in logs only.
//!
//! Two counters carry fractional values (USD spent, seconds waited), which the `metrics` crate's
//! integer counters cannot hold. They are kept here as exact integer sums (micro-USD, microseconds)
//! and rendered as Prometheus counters next to the recorder's own output by [`render_metrics`].

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::backend::QueueDepth;
use crate::job::Usage;
use crate::settings::{LogFormat, TelemetrySettings};

pub mod process;

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
use names::*;

/// Histogram buckets (upper bounds, seconds) for one job attempt: 50 ms to 10 min.
pub const JOB_DURATION_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// Histogram buckets (upper bounds, seconds) for queue wait: 100 ms to 12 h (SQS's longest backoff).
pub const QUEUE_WAIT_BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 43200.0];
/// Histogram buckets (upper bounds, seconds) for one model call: 100 ms to 2 min.
pub const LLM_LATENCY_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0];

/// Histogram buckets (upper bounds, seconds) for a webhook delivery: 10 ms to an hour.
pub const WEBHOOK_DELIVERY_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// How often the recorder's upkeep (draining histogram buffers) runs when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Longest label value kept; longer ones are cut (bounds memory and series size).
const MAX_LABEL_LEN: usize = 64;

/// Log directives added to `telemetry.log_level` unless it names an `aws` target itself.
const QUIET_SDK_TARGETS: &[&str] = &[
    "aws_config=error",
    "aws_smithy_runtime=error",
    "aws_smithy_runtime_api=error",
    "aws_sdk_sqs=error",
    "aws_sdk_dynamodb=error",
    "aws_sdk_s3=error",
    "aws_sdk_sns=error",
];

/// Sets up structured logging on stderr: JSON or human-readable per `t.log_format`.
///
/// The filter is `RUST_LOG` when it is set and valid, else `t.log_level` (with the AWS SDK's
/// targets at `error`), else `info`. Safe to call more than once (later calls do nothing): tests
/// and the binary may both call it.
pub fn init_tracing(t: &TelemetrySettings) {
    use tracing_subscriber::EnvFilter;
    let mut problem = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => Some(f),
            Err(e) => {
                problem = Some(format!("RUST_LOG is not a valid filter ({e}); using telemetry.log_level"));
                None
            }
        },
        _ => None,
    };
    let filter = match filter {
        Some(f) => f,
        None => match EnvFilter::try_new(&t.log_level) {
            // The AWS SDK logs every failed credentials provider and retry at WARN, kilobytes of
            // debug output around one error the worker reports in a line of its own.
            Ok(f) if !t.log_level.contains("aws") => {
                QUIET_SDK_TARGETS.iter().filter_map(|d| d.parse().ok()).fold(f, |f, d| f.add_directive(d))
            }
            Ok(f) => f,
            Err(e) => {
                problem = Some(format!("telemetry.log_level is not a valid filter ({e}); using info"));
                EnvFilter::new("info")
            }
        },
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match t.log_format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).flatten_event(true).try_init().is_ok(),
        LogFormat::Pretty => builder.with_target(true).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init().is_ok(),
    };
    if installed {
        if let Some(p) = problem {
            tracing::warn!(problem = %p, "log filter fallback");
        }
    }
}

/// Fractional counters rendered by [`render_metrics`]: exact integer sums in millionths of the
/// unit, keyed by (metric name, label pairs).
type FloatKey = (&'static str, Vec<(&'static str, String)>);

struct Telemetry {
    handle: PrometheusHandle,
    stage: String,
    float_counters: Mutex<BTreeMap<FloatKey, u128>>,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle and
/// ignore their argument). Every series carries `stage=<stage_label>`.
///
/// Describes every metric, sets explicit buckets for every histogram (so they export as
/// histograms, not summaries), registers the series that alerts rely on at zero, sets
/// `atlas_build_info{version}` to 1 and `atlas_worker_ready` to 0 (not ready until
/// [`set_ready`]), and starts a background thread for the recorder's upkeep.
///
/// If another recorder was already installed globally, the returned handle renders only what this
/// module records itself, and a warning is logged.
pub fn install_metrics(stage_label: &str) -> PrometheusHandle {
    let t = TELEMETRY.get_or_init(|| build(stage_label));
    t.handle.clone()
}

fn build(stage_label: &str) -> Telemetry {
    let stage = label(stage_label);
    let mut builder = PrometheusBuilder::new().add_global_label("stage", stage.clone());
    for (name, buckets) in [
        (JOB_DURATION_SECONDS, JOB_DURATION_BUCKETS),
        (JOB_QUEUE_WAIT_SECONDS, QUEUE_WAIT_BUCKETS),
        (LLM_REQUEST_DURATION_SECONDS, LLM_LATENCY_BUCKETS),
        (WEBHOOK_DELIVERY_SECONDS, WEBHOOK_DELIVERY_BUCKETS),
    ] {
        // Only fails for empty bucket lists, which the constants are not.
        builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("atlas telemetry: cannot set buckets for {name}: {e}");
                PrometheusBuilder::new().add_global_label("stage", stage.clone())
            }
        };
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "a metrics recorder was already installed; atlas metrics will be incomplete");
    }
    describe_all();
    register_defaults();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(UPKEEP_INTERVAL);
        upkeep.run_upkeep();
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain on scrape only");
    }
    Telemetry { handle, stage, float_counters: Mutex::new(BTreeMap::new()) }
}

fn describe_all() {
    describe_counter!(JOBS_TOTAL, Unit::Count, "Job attempts finished, by outcome (completed, failed, retried, dead_lettered, duplicate, deferred, busy) and low-cardinality reason.");
    describe_histogram!(JOB_DURATION_SECONDS, Unit::Seconds, "Wall time of one job attempt from claim to outcome, in seconds, by outcome.");
    describe_histogram!(
        JOB_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time from a message's first send to the start of this attempt, in seconds."
    );
    describe_gauge!(JOBS_IN_FLIGHT, Unit::Count, "Job attempts running now in this worker process.");
    describe_gauge!(
        INPUT_BYTES_HELD,
        Unit::Bytes,
        "Bytes held by the inputs of the jobs in flight in this process (at most worker.input_bytes_in_flight)."
    );
    describe_counter!(
        INPUT_MEMORY_WAITS_TOTAL,
        Unit::Count,
        "Times a job waited for input memory (worker.input_bytes_in_flight) before reading or growing its input."
    );
    describe_counter!(MESSAGES_RECEIVED_TOTAL, Unit::Count, "Messages received from the stage's job queue.");
    describe_counter!(MESSAGES_DELETED_TOTAL, Unit::Count, "Messages deleted from the stage's job queue (job finished for good).");
    describe_counter!(VISIBILITY_EXTENSIONS_TOTAL, Unit::Count, "Visibility-timeout extensions (heartbeats) of in-flight messages.");
    describe_counter!(
        LLM_REQUESTS_TOTAL,
        Unit::Count,
        "Model calls by model and status (ok, invalid_output, rate_limited, server_error, timeout, bad_request, transport)."
    );
    describe_histogram!(LLM_REQUEST_DURATION_SECONDS, Unit::Seconds, "Latency of one model call, in seconds, by model.");
    describe_counter!(
        LLM_TOKENS_TOTAL,
        Unit::Count,
        "Tokens by model and kind; input includes cached_input and output includes reasoning."
    );
    describe_gauge!(BUDGET_LIMIT_USD, "The stage's monthly budget limit, in USD.");
    describe_gauge!(BUDGET_SPENT_USD, "Settled spend this calendar month (UTC) for the whole stage, in USD.");
    describe_gauge!(BUDGET_RESERVED_USD, "Live budget reservations this month for the whole stage, in USD.");
    describe_gauge!(BUDGET_REMAINING_USD, "Budget limit minus spent minus reserved, in USD (negative when overspent).");
    describe_counter!(
        BUDGET_LEASES_RECOVERED_TOTAL,
        Unit::Count,
        "Lapsed budget leases of dead workers settled at the ceiling their holder declared."
    );
    describe_counter!(RATELIMIT_WAITS_TOTAL, Unit::Count, "Model calls that had to wait for the per-model rate limiter, by model.");
    describe_gauge!(
        RATELIMIT_WAITING,
        Unit::Count,
        "Model calls of this worker waiting for rate-limit capacity now, by model (a KEDA trigger: the key is the bottleneck)."
    );
    describe_counter!(
        RATELIMIT_LEASED_TOTAL,
        Unit::Count,
        "Capacity this worker leased from the stage's shared rate-limit windows, by model and unit (requests, tokens)."
    );
    describe_counter!(
        RATELIMIT_USED_TOTAL,
        Unit::Count,
        "Leased rate-limit capacity used by model calls, by model and unit (requests, tokens)."
    );
    describe_counter!(
        RATELIMIT_STORE_WRITES_TOTAL,
        Unit::Count,
        "Takes from the shared rate-limit store, by model and result (granted, full)."
    );
    describe_counter!(
        AWS_REQUESTS_TOTAL,
        Unit::Count,
        "AWS requests sent (HTTP attempts, retries included), by service (sqs, dynamodb, s3) and operation."
    );
    describe_gauge!(
        RATELIMIT_FALLBACK,
        "1 while a model runs on this worker's fallback share of its limits because the shared store is unreachable, else 0."
    );
    describe_counter!(ROUTE_DECISIONS_TOTAL, Unit::Count, "Routing decisions by tier and reason (score, override, cheaper, forced).");
    describe_counter!(
        LLM_ESCALATIONS_TOTAL,
        Unit::Count,
        "Escalations to a stronger model after invalid output, by from_model and to_model."
    );
    describe_counter!(LLM_FALLBACKS_TOTAL, Unit::Count, "Fallbacks to another model after a model error, by from_model and to_model.");
    describe_counter!(
        LLM_USAGE_IMPLAUSIBLE_TOTAL,
        Unit::Count,
        "Model answers whose reported usage exceeded what the request could use; charged at the bound, by model."
    );
    describe_counter!(
        LLM_CHUNKED_INPUTS_TOTAL,
        Unit::Count,
        "Job inputs longer than llm.max_input_tokens, split into chunks and read one call per chunk."
    );
    describe_counter!(LLM_INPUT_CHUNKS_TOTAL, Unit::Count, "Chunks the chunked job inputs were split into.");
    describe_gauge!(
        QUEUE_MESSAGES,
        Unit::Count,
        "Approximate messages in the stage's queues by state (visible, in_flight, delayed, dead_letter)."
    );
    describe_counter!(
        EVENTS_PUBLISHED_TOTAL,
        Unit::Count,
        "Job end events sent to the stage's event topic (or local events file), by type (job.completed, job.failed, job.deferred) and result (published, failed)."
    );
    describe_counter!(WEBHOOK_DELIVERIES_TOTAL, Unit::Count, "Webhook deliveries ended, by outcome (delivered, failed, refused).");
    describe_counter!(WEBHOOK_RETRIES_TOTAL, Unit::Count, "Webhook POSTs retried after a 5xx, 408, 429, timeout or connection error.");
    describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from a job's end to the end of its webhook delivery (retries included), in seconds, by outcome."
    );
    describe_gauge!(WORKER_READY, "1 when this worker is ready (backends reachable, not draining), else 0.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build.");
}

/// Registers the series the alerts and dashboard rely on, so they exist (at zero) before the first
/// event: a rate over a missing series is empty, and the "no progress" alert needs a zero rate.
fn register_defaults() {
    counter!(JOBS_TOTAL, "outcome" => Outcome::Completed.as_str(), "reason" => "ok").increment(0);
    counter!(JOBS_TOTAL, "outcome" => Outcome::Failed.as_str(), "reason" => "none").increment(0);
    counter!(MESSAGES_RECEIVED_TOTAL).increment(0);
    counter!(MESSAGES_DELETED_TOTAL).increment(0);
    counter!(VISIBILITY_EXTENSIONS_TOTAL).increment(0);
    counter!(BUDGET_LEASES_RECOVERED_TOTAL).increment(0);
    counter!(EVENTS_PUBLISHED_TOTAL, "type" => "job.completed", "result" => "published").increment(0);
    counter!(EVENTS_PUBLISHED_TOTAL, "type" => "job.completed", "result" => "failed").increment(0);
    counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "delivered").increment(0);
    counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "failed").increment(0);
    gauge!(JOBS_IN_FLIGHT).set(0.0);
    gauge!(WORKER_READY).set(0.0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Renders the installed recorder as Prometheus text (format 0.0.4), fractional counters
/// included. Empty when [`install_metrics`] was never called.
pub fn render_metrics() -> String {
    let Some(t) = TELEMETRY.get() else { return String::new() };
    let mut out = t.handle.render();
    let map = t.float_counters.lock().unwrap_or_else(|p| p.into_inner());
    for (name, help) in [
        (LLM_COST_USD_TOTAL, "USD charged for model calls (list price of the tokens used), by model."),
        (RATELIMIT_WAIT_SECONDS_TOTAL, "Seconds model calls spent waiting for the per-model rate limiter, by model."),
        (BUDGET_RECOVERED_USD_TOTAL, "USD of dead workers' lapsed budget leases given back to the stage (leased, never spent)."),
    ] {
        let series: Vec<_> = map.iter().filter(|((n, _), _)| *n == name).collect();
        if series.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for ((_, labels), millionths) in series {
            let mut l = format!("stage=\"{}\"", escape(&t.stage));
            for (k, v) in labels {
                l.push_str(&format!(",{k}=\"{}\"", escape(v)));
            }
            out.push_str(&format!("{name}{{{l}}} {}\n", fmt_millionths(*millionths)));
        }
        out.push('\n');
    }
    drop(map);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&process::render(&escape(&t.stage)));
    out
}

/// Exact decimal text of `v / 1_000_000` (no float drift in the rendered sum).
fn fmt_millionths(v: u128) -> String {
    let whole = v / 1_000_000;
    let frac = v % 1_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        let f = format!("{frac:06}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

/// Escapes a label value for the text exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn add_float(name: &'static str, labels: Vec<(&'static str, String)>, millionths: u128) {
    if let Some(t) = TELEMETRY.get() {
        let mut map = t.float_counters.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry((name, labels)).or_insert(0);
        *e = e.saturating_add(millionths);
    }
}

/// Bounds a label value: at most 64 characters from `[A-Za-z0-9_.:/-]` (others become `_`),
/// `none` when empty. Keeps a bad caller from blowing up series size or exposition syntax.
fn label(v: &str) -> String {
    let s: String = v.chars().take(MAX_LABEL_LEN).map(|c| if c.is_ascii_alphanumeric() || "_.:/-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// The `reason` values of `atlas_route_decisions_total` (anything else is counted as `other`).
pub const ROUTE_REASONS: &[&str] = &["score", "override", "cheaper", "forced"];

/// `v` as its static spelling from `allowed`, or `other`: a closed label set.
fn known(v: &str, allowed: &'static [&'static str]) -> &'static str {
    allowed.iter().find(|a| **a == v).copied().unwrap_or("other")
}

/// Longest error text logged with a job outcome, in characters; longer text is cut with `…`.
pub const MAX_ERROR_LOG_CHARS: usize = 1024;

/// Defence in depth for the `error` field of outcome logs: errors are built never to hold secrets,
/// but an upstream body echoed into one might. Redacts ([`crate::redact::text`]: the registered
/// key, `sk-…` tokens, whatever follows `Bearer `) and bounds the length.
fn sanitize_error(e: &str) -> String {
    let mut out = crate::redact::text(e);
    if out.chars().count() > MAX_ERROR_LOG_CHARS {
        out = out.chars().take(MAX_ERROR_LOG_CHARS).collect::<String>() + "…";
    }
    out
}

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

/// `n` messages came back from a receive call.
pub fn messages_received(n: u64) {
    counter!(MESSAGES_RECEIVED_TOTAL).increment(n);
}

/// `n` messages were deleted from the queue.
pub fn messages_deleted(n: u64) {
    counter!(MESSAGES_DELETED_TOTAL).increment(n);
}

/// One AWS request (an HTTP attempt) was sent. `operation` is the API name for SQS and DynamoDB
/// (`ReceiveMessage`, `UpdateItem`, ...) and the HTTP method for S3: a bounded set.
pub fn aws_request(service: &'static str, operation: &str) {
    counter!(AWS_REQUESTS_TOTAL, "service" => service, "operation" => operation.to_string()).increment(1);
}

/// A heartbeat extended a message's visibility timeout.
pub fn visibility_extended() {
    counter!(VISIBILITY_EXTENSIONS_TOTAL).increment(1);
}

/// One model call finished.
///
/// `status` is how the call ended (a [`crate::job::CallOutcome`], a closed set). Tokens are counted by kind
/// (`input` includes `cached_input`, `output` includes `reasoning`, exactly as in
/// [`Usage`]); `cost_micros` (micro-USD, negative treated as 0) goes to `atlas_llm_cost_usd_total`.
pub fn llm_request(model: &str, status: crate::job::CallOutcome, latency: Duration, usage: Option<&Usage>, cost_micros: i64) {
    let model = label(model);
    let status = status.as_str();
    counter!(LLM_REQUESTS_TOTAL, "model" => model.clone(), "status" => status).increment(1);
    histogram!(LLM_REQUEST_DURATION_SECONDS, "model" => model.clone()).record(latency.as_secs_f64());
    if let Some(u) = usage {
        for (kind, n) in [
            ("input", u.input_tokens),
            ("cached_input", u.cached_input_tokens),
            ("output", u.output_tokens),
            ("reasoning", u.reasoning_tokens),
        ] {
            counter!(LLM_TOKENS_TOTAL, "model" => model.clone(), "kind" => kind).increment(n);
        }
    }
    let micros = u128::try_from(cost_micros.max(0)).unwrap_or(0);
    add_float(LLM_COST_USD_TOTAL, vec![("model", model)], micros);
}

/// The router chose `tier` for a job. `reason` is one of `score`, `override`, `cheaper`,
/// `forced` (anything else is counted as `other`).
pub fn route_decision(tier: &str, reason: &str) {
    let reason = known(reason, ROUTE_REASONS);
    counter!(ROUTE_DECISIONS_TOTAL, "tier" => label(tier), "reason" => reason).increment(1);
}

/// Invalid output moved a job from one model to a stronger one.
pub fn escalation(from_model: &str, to_model: &str) {
    counter!(LLM_ESCALATIONS_TOTAL, "from_model" => label(from_model), "to_model" => label(to_model)).increment(1);
}

/// A job's input was split into `chunks` parts, each read by its own call.
pub fn input_chunked(chunks: u32) {
    counter!(LLM_CHUNKED_INPUTS_TOTAL).increment(1);
    counter!(LLM_INPUT_CHUNKS_TOTAL).increment(u64::from(chunks));
}

/// A model error moved a job from one model to its configured fallback.
pub fn fallback(from_model: &str, to_model: &str) {
    counter!(LLM_FALLBACKS_TOTAL, "from_model" => label(from_model), "to_model" => label(to_model)).increment(1);
}

/// A provider reported more usage than the request could use: logged with both counts and
/// counted; the call was charged `charged`, not the claim.
pub fn llm_usage_implausible(job_id: &str, model: &str, claimed: &Usage, charged: &Usage) {
    tracing::warn!(
        job_id,
        model,
        claimed_input = claimed.input_tokens,
        claimed_output = claimed.output_tokens,
        charged_input = charged.input_tokens,
        charged_output = charged.output_tokens,
        "provider usage exceeds what the request could use; charged at the bound"
    );
    counter!(LLM_USAGE_IMPLAUSIBLE_TOTAL, "model" => label(model)).increment(1);
}

/// A call waited `waited` for `model`'s rate limiter; counted only when `waited > 0`.
pub fn ratelimit_wait(model: &str, waited: Duration) {
    if waited.is_zero() {
        return;
    }
    let model = label(model);
    counter!(RATELIMIT_WAITS_TOTAL, "model" => model.clone()).increment(1);
    add_float(RATELIMIT_WAIT_SECONDS_TOTAL, vec![("model", model)], waited.as_micros());
}

/// A call of `model` started (`+1`) or stopped (`-1`) waiting for rate-limit capacity.
pub fn ratelimit_waiting(model: &str, delta: i32) {
    gauge!(RATELIMIT_WAITING, "model" => label(model)).increment(f64::from(delta));
}

/// A take from the shared rate-limit store for `model` granted `got` (nothing: window full).
pub fn ratelimit_leased(model: &str, got: crate::backend::RateUnits) {
    let model = label(model);
    let result = if got == crate::backend::RateUnits::default() { "full" } else { "granted" };
    counter!(RATELIMIT_STORE_WRITES_TOTAL, "model" => model.clone(), "result" => result).increment(1);
    counter!(RATELIMIT_LEASED_TOTAL, "model" => model.clone(), "unit" => "requests").increment(u64::from(got.requests));
    counter!(RATELIMIT_LEASED_TOTAL, "model" => model, "unit" => "tokens").increment(got.tokens);
}

/// A call of `model` used `units` of leased rate-limit capacity.
pub fn ratelimit_used(model: &str, units: crate::backend::RateUnits) {
    let model = label(model);
    counter!(RATELIMIT_USED_TOTAL, "model" => model.clone(), "unit" => "requests").increment(u64::from(units.requests));
    counter!(RATELIMIT_USED_TOTAL, "model" => model, "unit" => "tokens").increment(units.tokens);
}

/// `model` has a fleet-wide limit: its fallback gauge exists (at 0) before any failure.
pub fn ratelimit_registered(model: &str) {
    gauge!(RATELIMIT_FALLBACK, "model" => label(model)).set(0.0);
}

/// The shared rate-limit store failed for `model`: this worker uses its fallback share.
pub fn ratelimit_fallback_on(model: &str, error: &str) {
    gauge!(RATELIMIT_FALLBACK, "model" => label(model)).set(1.0);
    tracing::warn!(
        model,
        error = sanitize_error(error),
        "shared rate-limit store unreachable; using this worker's fallback share of the limits"
    );
}

/// The shared rate-limit store answers again for `model`: fleet-wide limits are back.
pub fn ratelimit_fallback_off(model: &str) {
    gauge!(RATELIMIT_FALLBACK, "model" => label(model)).set(0.0);
    tracing::info!(model, "shared rate-limit store reachable again; fleet-wide limits restored");
}

/// The provider says `model`'s key allows `rpm` requests a minute, less than configured.
pub fn ratelimit_provider_limit(model: &str, rpm: u64) {
    tracing::warn!(model, provider_rpm = rpm, "the provider's request limit is below the configured rpm; using the provider's");
}

/// The stage's budget as last read from the ledger, all in micro-USD; exported in USD.
pub fn budget_snapshot(limit_micros: i64, spent_micros: i64, reserved_micros: i64) {
    let usd = |m: i64| m as f64 / 1_000_000.0;
    gauge!(BUDGET_LIMIT_USD).set(usd(limit_micros));
    gauge!(BUDGET_SPENT_USD).set(usd(spent_micros));
    gauge!(BUDGET_RESERVED_USD).set(usd(reserved_micros));
    let remaining = limit_micros.saturating_sub(spent_micros).saturating_sub(reserved_micros);
    gauge!(BUDGET_REMAINING_USD).set(usd(remaining));
}

/// A lapsed lease of a dead worker settled at its declared bound: `freed_micros` of its
/// `amount_micros` went back to the stage's budget.
pub fn budget_lease_recovered(lease_id: &str, amount_micros: i64, charged_micros: i64) {
    let freed = amount_micros.saturating_sub(charged_micros).max(0);
    counter!(BUDGET_LEASES_RECOVERED_TOTAL).increment(1);
    add_float(BUDGET_RECOVERED_USD_TOTAL, vec![], u128::try_from(freed).unwrap_or(0));
    tracing::info!(
        lease = lease_id,
        leased_usd = amount_micros as f64 / 1e6,
        charged_usd = charged_micros as f64 / 1e6,
        freed_usd = freed as f64 / 1e6,
        "recovered a lapsed budget lease at its declared bound"
    );
}

/// A job end event sent to the stage's sink (`result` published), or given up after its
/// tries (left pending for the repair paths).
pub fn event_published(job_id: &str, event_type: &'static str, ok: bool, error: Option<&str>) {
    let result = if ok { "published" } else { "failed" };
    counter!(EVENTS_PUBLISHED_TOTAL, "type" => event_type, "result" => result).increment(1);
    if ok {
        tracing::debug!(job_id, event_type, "job event published");
    } else {
        tracing::warn!(
            job_id,
            event_type,
            error = error.unwrap_or(""),
            "job event not published; it stays pending and is published again when the job's message or dead letter is seen"
        );
    }
}

/// A webhook delivery ended (`outcome`: delivered, failed, refused, pending) after `attempts`
/// POSTs; the job ended at `ended_at`.
pub fn webhook_delivery(job_id: &str, outcome: &'static str, attempts: u32, ended_at: chrono::DateTime<chrono::Utc>, error: Option<&str>) {
    let secs = (chrono::Utc::now() - ended_at).to_std().unwrap_or_default().as_secs_f64();
    counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => outcome).increment(1);
    histogram!(WEBHOOK_DELIVERY_SECONDS, "outcome" => outcome).record(secs);
    match outcome {
        "delivered" => tracing::info!(job_id, attempts, seconds = secs, "webhook delivered"),
        _ => tracing::warn!(job_id, attempts, outcome, error = error.unwrap_or(""), "webhook not delivered"),
    }
}

/// A webhook POST that will be tried again.
pub fn webhook_retry(job_id: &str, attempts: u32, error: &str) {
    counter!(WEBHOOK_RETRIES_TOTAL).increment(1);
    tracing::info!(job_id, attempts, error, "webhook POST failed; retrying");
}

/// The queue's approximate counts: `atlas_queue_messages{state}`.
pub fn queue_depth(d: &QueueDepth) {
    gauge!(QUEUE_MESSAGES, "state" => "visible").set(d.visible as f64);
    gauge!(QUEUE_MESSAGES, "state" => "in_flight").set(d.in_flight as f64);
    gauge!(QUEUE_MESSAGES, "state" => "delayed").set(d.delayed as f64);
    gauge!(QUEUE_MESSAGES, "state" => "dead_letter").set(d.dead_letters as f64);
}

/// Whether this worker is ready: `atlas_worker_ready` 1 or 0.
pub fn set_ready(ready: bool) {
    gauge!(WORKER_READY).set(if ready { 1.0 } else { 0.0 });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millionths_render_exactly() {
        assert_eq!(fmt_millionths(0), "0");
        assert_eq!(fmt_millionths(1), "0.000001");
        assert_eq!(fmt_millionths(1_500_000), "1.5");
        assert_eq!(fmt_millionths(12_000_000), "12");
        assert_eq!(fmt_millionths(123_456_789), "123.456789");
    }

    #[test]
    fn labels_are_bounded_and_safe() {
        assert_eq!(label(""), "none");
        assert_eq!(label("gpt-5-mini"), "gpt-5-mini");
        assert_eq!(label("a\"b\nc d"), "a_b_c_d");
        assert_eq!(label(&"x".repeat(500)).len(), MAX_LABEL_LEN);
    }

    #[test]
    fn error_text_is_redacted_and_bounded() {
        assert_eq!(sanitize_error("model timed out after 120 s"), "model timed out after 120 s");
        assert_eq!(
            sanitize_error("401: Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz012345."),
            "401: Incorrect API key provided: [redacted]."
        );
        assert_eq!(sanitize_error("header Authorization: Bearer abc.def-ghi sent"), "header Authorization: Bearer [redacted] sent");
        assert_eq!(sanitize_error("sk-short"), "sk-short");
        let long = "x".repeat(5000);
        let cut = sanitize_error(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR_LOG_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn escape_handles_specials() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("a\nb"), "a\\nb");
    }

    #[test]
    fn outcome_names_are_distinct_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for o in Outcome::ALL {
            assert!(o.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(seen.insert(o.as_str()));
        }
    }
}
