//! Help text and units of every metric the recorder exports, registered by area.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use super::names::*;

/// Describes every metric (the fractional counters are described by [`super::render_metrics`]).
pub(super) fn describe_all() {
    describe_jobs();
    describe_queue();
    describe_llm();
    describe_budget();
    describe_ratelimit();
    describe_delivery();
    describe_worker();
}

/// Job attempts: outcomes, durations, queue wait, jobs in flight, input memory.
fn describe_jobs() {
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
}

/// The job queue and the AWS requests behind it.
fn describe_queue() {
    describe_counter!(MESSAGES_RECEIVED_TOTAL, Unit::Count, "Messages received from the stage's job queue.");
    describe_counter!(MESSAGES_DELETED_TOTAL, Unit::Count, "Messages deleted from the stage's job queue (job finished for good).");
    describe_counter!(VISIBILITY_EXTENSIONS_TOTAL, Unit::Count, "Visibility-timeout extensions (heartbeats) of in-flight messages.");
    describe_counter!(
        AWS_REQUESTS_TOTAL,
        Unit::Count,
        "AWS requests sent (HTTP attempts, retries included), by service (sqs, dynamodb, s3) and operation."
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        Unit::Count,
        "Approximate messages in the stage's queues by state (visible, in_flight, delayed, dead_letter)."
    );
}

/// Model calls: requests, latency, tokens, routing, escalations, fallbacks, chunked inputs.
fn describe_llm() {
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
}

/// The stage's monthly budget and the recovery of lapsed leases.
fn describe_budget() {
    describe_gauge!(BUDGET_LIMIT_USD, "The stage's monthly budget limit, in USD.");
    describe_gauge!(BUDGET_SPENT_USD, "Settled spend this calendar month (UTC) for the whole stage, in USD.");
    describe_gauge!(BUDGET_RESERVED_USD, "Live budget reservations this month for the whole stage, in USD.");
    describe_gauge!(BUDGET_REMAINING_USD, "Budget limit minus spent minus reserved, in USD (negative when overspent).");
    describe_counter!(
        BUDGET_LEASES_RECOVERED_TOTAL,
        Unit::Count,
        "Lapsed budget leases of dead workers settled at the ceiling their holder declared."
    );
}

/// The per-model rate limiter and its shared store.
fn describe_ratelimit() {
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
    describe_gauge!(
        RATELIMIT_FALLBACK,
        "1 while a model runs on this worker's fallback share of its limits because the shared store is unreachable, else 0."
    );
}

/// Job end events and webhook deliveries.
fn describe_delivery() {
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
}

/// The worker itself: readiness and build.
fn describe_worker() {
    describe_gauge!(WORKER_READY, "1 when this worker is ready (backends reachable, not draining), else 0.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build.");
}
