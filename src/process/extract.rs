//! Extraction: route the job, then call models until an answer validates against the job's
//! schema, escalating on invalid output, retrying once with a larger cap on `length`, falling
//! back on errors. Each call is one paid call ([`super::call`]).

use chrono::Utc;
use serde_json::Value;
use tracing::debug;

use super::{call, choice, prompt, Processor};
use crate::error::{ErrorKind, JobError};
use crate::job::{CallOutcome, Job, JobRecord};
use crate::llm::{schema, LlmError, ResponseFormat, Unfinished};
use crate::pricing;
use crate::route::Features;
use crate::settings::ModelSettings;
use crate::telemetry;

impl Processor {
    /// Routes, then calls models until one answer validates: escalates on invalid output,
    /// retries once with a larger output cap on `finish_reason: length`, falls back on errors.
    /// Each call is one paid call ([`call`]).
    pub(super) async fn extract(&self, job: &Job, rec: &mut JobRecord, content: &str) -> Result<(Value, String), JobError> {
        let response_format = response_format(job);
        let prompt = prompt::Prompt::new(job, content, &response_format);
        let features = Features::from_job(job, prompt.input_tokens as usize);
        let used = self.budget.used_fraction(Utc::now()).await;
        let decision = self.router.decide(job, &features, used)?;
        telemetry::route_decision(decision.tier.as_str(), route_reason_label(&decision));
        tracing::Span::current().record("model", decision.model.as_str());
        if rec.route.is_none() {
            rec.route = Some(decision.clone().into());
        }
        let mut plan = choice::Plan::new(&self.router, &self.settings, decision.model.clone());
        loop {
            if let Some(error) = plan.out_of_calls() {
                return Err(error);
            }
            let model = plan.model().to_string();
            let mut price = self
                .settings
                .models
                .get(&model)
                .ok_or_else(|| JobError::permanent(ErrorKind::ModelUnknown, format!("model `{model}` has no price in config")))?
                .clone();
            if let Some(cap) = plan.take_bigger_cap() {
                price.max_output_tokens = cap;
            }
            let outcome = self.paid_call(job, rec, &model, &price, &prompt, &response_format).await?;
            match outcome {
                Ok(resp) => {
                    plan.answered();
                    self.limits.on_success(&model);
                    let checked = check_output(&resp.content, job.schema.as_ref());
                    let status = if checked.is_ok() { CallOutcome::Ok } else { CallOutcome::InvalidOutput };
                    let cost = rec.calls.last().map(|c| c.cost_micros).unwrap_or(0);
                    telemetry::llm_request(&model, status, resp.latency, Some(&resp.usage), cost);
                    if let Some(last) = rec.calls.last_mut() {
                        last.outcome = status;
                    }
                    match checked {
                        Ok(data) => return Ok((data, model)),
                        Err(why) => {
                            debug!(model = %model, why = %why, "model output rejected");
                            plan.invalid_output(&why);
                        }
                    }
                }
                Err(failure) => self.on_failure(job, rec, &mut plan, &model, &price, &prompt, failure).await?,
            }
        }
    }

    /// What a failed call leads to: wait for the rate limit, a larger cap or escalation, a
    /// fallback, or (a request the provider will never accept, a refusal) the job's end.
    #[allow(clippy::too_many_arguments)]
    async fn on_failure(
        &self,
        job: &Job,
        rec: &JobRecord,
        plan: &mut choice::Plan<'_>,
        model: &str,
        price: &ModelSettings,
        prompt: &prompt::Prompt,
        failure: call::Failure,
    ) -> Result<(), JobError> {
        let call::Failure { error, latency, cost_micros } = failure;
        let status = llm_status(&error);
        telemetry::llm_request(model, status, latency, None, cost_micros);
        match error {
            LlmError::RateLimited { retry_after } => {
                // Never fails a job by itself: slow down and try again (bounded by the job timeout).
                self.limits.rate_limited(model, retry_after).await;
            }
            LlmError::BadRequest { status, message } => {
                return Err(JobError::permanent(ErrorKind::LlmBadRequest, format!("{model} rejected the request ({status}): {message}")));
            }
            LlmError::Unfinished { reason: Unfinished::Length, message, .. } => {
                let cap = price.max_output_tokens.saturating_mul(LENGTH_RETRY_FACTOR);
                let mut bigger = price.clone();
                bigger.max_output_tokens = cap;
                let worst = pricing::worst_case_micros(prompt.input_tokens, &bigger);
                let fits = crate::budget::check_job_cap(job.max_cost_usd, rec.cost_micros, worst).is_ok();
                plan.length(&message, cap, fits);
            }
            LlmError::Unfinished { reason, message, .. } => {
                return Err(JobError::permanent(ErrorKind::of_model_failure(reason.outcome()), format!("{model}: {message}")));
            }
            other => plan.model_error(status, &other.to_string())?,
        }
        Ok(())
    }
}

/// A `length` answer is retried once with the output cap multiplied by this (within the job's
/// `max_cost_usd`), else escalated.
const LENGTH_RETRY_FACTOR: u32 = 2;

/// The answer's shape: the job's schema in strict mode when it can be adapted, else JSON mode.
fn response_format(job: &Job) -> ResponseFormat {
    match &job.schema {
        Some(s) => match schema::to_strict(s) {
            Some(strict) => ResponseFormat::JsonSchema { name: schema::schema_name(s, "extraction"), schema: strict, strict: true },
            None => ResponseFormat::JsonObject,
        },
        None => ResponseFormat::JsonObject,
    }
}

/// Parses the model's answer and validates it against the job's original schema.
///
/// Strict mode turns optional properties into nullable required ones, so the `null`s it added
/// are removed first ([`schema::strip_added_nulls`]).
fn check_output(content: &str, schema: Option<&Value>) -> Result<Value, String> {
    let mut v: Value = serde_json::from_str(content.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let Some(schema) = schema else {
        return if v.is_object() { Ok(v) } else { Err("not a JSON object".into()) };
    };
    schema::strip_added_nulls(schema, &mut v);
    schema::validate(schema, &v).map(|()| v).map_err(|errors| errors.join("; "))
}

/// The call outcome an error is recorded as.
pub(super) fn llm_status(e: &LlmError) -> CallOutcome {
    match e {
        LlmError::RateLimited { .. } => CallOutcome::RateLimited,
        LlmError::Server { .. } => CallOutcome::ServerError,
        LlmError::Timeout => CallOutcome::Timeout,
        LlmError::BadRequest { .. } => CallOutcome::BadRequest,
        LlmError::Transport(_) => CallOutcome::Transport,
        LlmError::Unfinished { reason, .. } => reason.outcome(),
    }
}

/// The `reason` label of a routing decision.
fn route_reason_label(d: &crate::route::Decision) -> &'static str {
    match d.tier {
        crate::route::Tier::Override => "override",
        crate::route::Tier::Production => "forced",
        _ if d.downgraded => "cheaper",
        _ => "score",
    }
}
