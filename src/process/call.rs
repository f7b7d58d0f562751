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
use crate::error::{ErrorKind, JobError};
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
    /// Writes the record as it is now, still `processing` under this worker's lease (renewed).
    /// A lost lease is a transient `lease_lost`: another worker owns the job now.
    pub(super) async fn checkpoint(&self, rec: &mut JobRecord) -> Result<(), JobError> {
        rec.lease_owner = Some(self.worker_id.clone());
        rec.lease_expires_at = Some(self.lease_until());
        rec.updated_at = Utc::now();
        self.backends.jobs.finish(rec, &self.worker_id).await.map_err(|e| match e {
            crate::error::BackendError::Conflict(m) => JobError::transient(ErrorKind::LeaseLost, m),
            other => other.into(),
        })
    }

    /// Settles the charges an earlier attempt recorded but did not get to the ledger (it was
    /// killed in between). Settle is idempotent per reservation id, so this never charges twice.
    pub(super) async fn settle_recorded_charges(&self, rec: &mut JobRecord) -> Result<(), JobError> {
        let tenant = rec.tenant.clone();
        let job_id = rec.id.clone();
        for call in rec.calls.iter_mut().filter(|c| !c.settled) {
            let (Some(reservation_id), Some(period)) = (call.reservation_id.clone(), call.period.clone()) else {
                call.settled = true;
                continue;
            };
            let charge =
                crate::backend::Charge::single(reservation_id, job_id.clone(), call.model.clone(), tenant.as_deref(), call.cost_micros);
            self.backends
                .ledger
                .settle(&period, &charge)
                .await
                .map_err(|e| JobError::transient(ErrorKind::BudgetUnavailable, format!("settling an earlier charge: {e}")))?;
            call.settled = true;
        }
        Ok(())
    }

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
        let t = Instant::now();
        let outcome = self.llm.complete(&request(job, model, price, prompt, format)).await;
        let latency = t.elapsed();
        if let Some(seen) = outcome.as_ref().ok().and_then(|r| r.limits.as_ref()) {
            self.limits.observe(model, seen).await;
        }
        let charge = charge_for(&outcome, &rec.id, model, price, prompt.input_tokens, worst);
        let settled = match charge.cost {
            Some(_) if charge.estimated => self.budget.settle_estimated(hold, model, job.tenant.as_deref()).await,
            Some(c) => self.budget.settle(hold, c, model, job.tenant.as_deref()).await,
            None => self.budget.release(hold).await,
        };
        if let Err(e) = settled {
            // The charge is in this worker's lease; the lease lapses and counts in full.
            warn!(job_id = %rec.id, error = %e, "could not return a budget lease after a call");
        }
        Ok(record_outcome(rec, outcome, charge, worst, latency))
    }
}

/// The request for one call of `model`, its parameters from the model's settings.
fn request(job: &Job, model: &str, price: &ModelSettings, prompt: &Prompt, format: &ResponseFormat) -> LlmRequest {
    LlmRequest {
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
    }
}

/// What one call is charged.
struct CallCharge {
    /// Micro-USD; `None`: not billed (the hold goes back).
    cost: Option<i64>,
    /// The usage charged (bounded by what the request could use).
    usage: Usage,
    /// Charged at the worst case because the answer never arrived.
    estimated: bool,
    /// The provider's own claim, when it was past the bound.
    claimed: Option<Usage>,
}

/// The provider's usage (bounded by what the request could use), the worst case, or nothing.
fn charge_for(
    outcome: &Result<crate::llm::LlmResponse, LlmError>,
    job_id: &str,
    model: &str,
    price: &ModelSettings,
    input_tokens: u64,
    worst: i64,
) -> CallCharge {
    let reported = match outcome {
        Ok(resp) => Some(resp.usage),
        Err(LlmError::Unfinished { usage, .. }) => Some(*usage),
        Err(_) => None,
    };
    match (outcome, reported) {
        (_, Some(u)) => {
            let (bounded, cut) = pricing::bounded_usage(&u, input_tokens, price.max_output_tokens);
            let claimed = cut.then(|| {
                telemetry::llm_usage_implausible(job_id, model, &u, &bounded);
                u
            });
            CallCharge { cost: Some(pricing::cost_micros(&bounded, price)), usage: bounded, estimated: false, claimed }
        }
        (Err(LlmError::Timeout | LlmError::Transport(_)), None) => {
            CallCharge { cost: Some(worst), usage: Usage::default(), estimated: true, claimed: None }
        }
        _ => CallCharge { cost: None, usage: Usage::default(), estimated: false, claimed: None },
    }
}

/// Puts the call's outcome and charge on the record (its last attempt, its totals).
fn record_outcome(
    rec: &mut JobRecord,
    outcome: Result<crate::llm::LlmResponse, LlmError>,
    charge: CallCharge,
    worst: i64,
    latency: Duration,
) -> Result<Answer, Failure> {
    let cost = charge.cost.unwrap_or(0);
    rec.cost_micros += cost - worst;
    rec.usage.add(&charge.usage);
    if let Some(last) = rec.calls.last_mut() {
        last.outcome = match &outcome {
            Ok(_) => CallOutcome::Ok,
            Err(e) => super::extract::llm_status(e),
        };
        last.usage = charge.usage;
        last.cost_micros = cost;
        last.latency_ms = latency.as_millis() as u64;
        last.estimated = charge.estimated;
        last.claimed_usage = charge.claimed;
    }
    match outcome {
        Ok(resp) => Ok(Answer { content: resp.content, usage: charge.usage, latency }),
        Err(error) => Err(Failure { error, latency, cost_micros: cost }),
    }
}
