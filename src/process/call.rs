//! One paid model call: job cap → budget hold → rate limit → the call recorded as `sent` →
//! send → charge what the provider billed (and tell the rate limiter what the provider said).
//!
//! The call is on the job record (`sent`, at its worst case, marked estimated) before it is
//! sent, so a worker killed mid-call leaves a record that shows the money; the next claim marks
//! such a call `abandoned` ([`mark_abandoned`]). Its ledger side is covered by the dead
//! worker's budget lease, which lapses and counts in full.
//!
//! After the call, by outcome:
//! - an answer, a refusal, a `length` or content-filtered answer: charged the provider's usage
//!   (all are billed), bounded by what the request could use (an absurd claim is charged at the
//!   bound, kept as `claimed_usage` and counted in `atlas_llm_usage_implausible_total`);
//! - a timeout or broken connection: charged the worst case, marked estimated (the provider may
//!   have generated and billed it after the worker stopped waiting);
//! - 429, 5xx, 4xx: not billed; the hold goes back.

use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::warn;

use super::prompt::Prompt;
use super::Processor;
use crate::error::JobError;
use crate::job::{Attempt, CallOutcome, Job, JobRecord, Usage};
use crate::llm::{CallParams, LlmError, LlmRequest, ResponseFormat};
use crate::pricing;
use crate::settings::ModelSettings;
use crate::telemetry;

/// A usable answer.
pub(crate) struct Answer {
    pub(crate) content: String,
    pub(crate) usage: Usage,
    pub(crate) latency: Duration,
}

/// A call that did not give a usable answer, and what it was charged.
pub(crate) struct Failure {
    pub(crate) error: LlmError,
    pub(crate) latency: Duration,
    pub(crate) cost_micros: i64,
}

/// Marks calls an earlier attempt left `sent` as `abandoned` (their worst case stays charged).
pub(crate) fn mark_abandoned(rec: &mut JobRecord) {
    for c in rec.calls.iter_mut().filter(|c| c.outcome == CallOutcome::Sent) {
        c.outcome = CallOutcome::Abandoned;
        c.estimated = true;
    }
}

impl Processor {
    /// Makes one paid call of `model` (priced by `price`, its output cap included) and records
    /// it as the job's last [`Attempt`]. `Err` when the call could not be made (job cap,
    /// budget, the record could not be written); `Ok(Err(_))` when it was made and failed.
    pub(super) async fn paid_call(
        &self,
        job: &Job,
        rec: &mut JobRecord,
        model: &str,
        price: &ModelSettings,
        prompt: &Prompt,
        format: &ResponseFormat,
    ) -> Result<Result<Answer, Failure>, JobError> {
        let worst = pricing::worst_case_micros(prompt.input_tokens, price);
        crate::budget::check_job_cap(job.max_cost_usd, rec.cost_micros, worst)?;
        let call_id = format!("{}:{}:{}", rec.id, rec.attempts, rec.calls.len());
        let hold = self.budget.reserve(&rec.id, &call_id, worst, Utc::now()).await?;
        let tokens = (prompt.input_tokens + price.max_output_tokens as u64).min(u32::MAX as u64) as u32;
        let grant = self.limits.acquire(model, tokens).await;
        if grant.waited >= Duration::from_millis(1) {
            telemetry::ratelimit_wait(model, grant.waited);
        }
        rec.calls.push(Attempt {
            model: model.to_string(),
            outcome: CallOutcome::Sent,
            usage: Usage::default(),
            cost_micros: worst,
            latency_ms: 0,
            chunk: None,
            reservation_id: Some(hold.lease_id().to_string()),
            period: Some(hold.period.clone()),
            settled: true,
            estimated: true,
            claimed_usage: None,
        });
        rec.cost_micros += worst;
        if let Err(e) = self.checkpoint(rec).await {
            // Not sent: nothing billed, nothing counted by the provider.
            rec.calls.pop();
            rec.cost_micros -= worst;
            let _ = self.budget.release(hold).await;
            self.limits.give_back(model, &grant).await;
            return Err(e);
        }
        let request = LlmRequest {
            model: model.to_string(),
            system: prompt.system.clone(),
            user: prompt.user.clone(),
            response_format: format.clone(),
            params: CallParams {
                reasoning_model: price.family == crate::settings::ModelFamily::Gpt5,
                max_output_tokens: price.max_output_tokens,
                temperature: price.temperature,
                reasoning_effort: price.reasoning_effort.clone(),
                verbosity: price.verbosity.clone(),
            },
            output_schema: job.schema.clone(),
        };
        let t = Instant::now();
        let outcome = self.llm.complete(&request).await;
        let latency = t.elapsed();
        if let Some(seen) = outcome.as_ref().ok().and_then(|r| r.limits.as_ref()) {
            self.limits.observe(model, seen).await;
        }
        let tenant = job.tenant.as_deref();
        // What the call is charged: the provider's usage (bounded by what the request could
        // use), the worst case, or nothing.
        let reported = match &outcome {
            Ok(resp) => Some(resp.usage),
            Err(LlmError::Unfinished { usage, .. }) => Some(*usage),
            Err(_) => None,
        };
        let mut claimed = None;
        let (charged, usage, estimated) = match (&outcome, reported) {
            (_, Some(u)) => {
                let (bounded, cut) = pricing::bounded_usage(&u, prompt.input_tokens, price.max_output_tokens);
                if cut {
                    telemetry::llm_usage_implausible(&rec.id, model, &u, &bounded);
                    claimed = Some(u);
                }
                (Some(pricing::cost_micros(&bounded, price)), bounded, false)
            }
            (Err(LlmError::Timeout | LlmError::Transport(_)), None) => (Some(worst), Usage::default(), true),
            _ => (None, Usage::default(), false),
        };
        let cost = charged.unwrap_or(0);
        let settled = match charged {
            Some(_) if estimated => self.budget.settle_estimated(hold, model, tenant).await,
            Some(c) => self.budget.settle(hold, c, model, tenant).await,
            None => self.budget.release(hold).await,
        };
        if let Err(e) = settled {
            // The charge is in this worker's lease; the lease lapses and counts in full.
            warn!(job_id = %rec.id, error = %e, "could not return a budget lease after a call");
        }
        rec.cost_micros += cost - worst;
        rec.usage.add(&usage);
        if let Some(last) = rec.calls.last_mut() {
            last.outcome = match &outcome {
                Ok(_) => CallOutcome::Ok,
                Err(e) => super::llm_status(e),
            };
            last.usage = usage;
            last.cost_micros = cost;
            last.latency_ms = latency.as_millis() as u64;
            last.estimated = estimated;
            last.claimed_usage = claimed;
        }
        Ok(match outcome {
            Ok(resp) => Ok(Answer { content: resp.content, usage, latency }),
            Err(error) => Err(Failure { error, latency, cost_micros: cost }),
        })
    }
}
