//! Delivery of job ends: events published to the stage's sink, and webhooks.

use metrics::{counter, histogram};

use super::names::*;

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
