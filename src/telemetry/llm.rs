//! Model calls: requests, tokens and cost, routing, escalations, fallbacks and chunked inputs.

use std::time::Duration;

use metrics::{counter, histogram};

use crate::job::Usage;

use super::labels::{known, label};
use super::names::*;
use super::recorder::add_float;

/// The `reason` values of `atlas_route_decisions_total` (anything else is counted as `other`).
pub const ROUTE_REASONS: &[&str] = &["score", "override", "cheaper", "forced"];

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

/// A model error moved a job from one model to its configured fallback.
pub fn fallback(from_model: &str, to_model: &str) {
    counter!(LLM_FALLBACKS_TOTAL, "from_model" => label(from_model), "to_model" => label(to_model)).increment(1);
}

/// A job's input was split into `chunks` parts, each read by its own call.
pub fn input_chunked(chunks: u32) {
    counter!(LLM_CHUNKED_INPUTS_TOTAL).increment(1);
    counter!(LLM_INPUT_CHUNKS_TOTAL).increment(u64::from(chunks));
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
