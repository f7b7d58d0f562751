//! The choice of the next model within one job attempt, after a call that gave no valid answer:
//! escalate a tier on output that fails the schema; retry a `length` answer once with a larger
//! output cap when that still fits the job's `max_cost_usd`, else escalate; fall back to the
//! configured next model on model errors (5xx, timeouts), each fallback once. Never more than
//! `llm.max_calls_per_job` calls; escalations at most `routing.max_escalations`.

use crate::error::{ErrorKind, JobError};
use crate::route::Router;
use crate::settings::Settings;
use crate::telemetry;

/// Where one attempt's model calls stand, and which model the next call goes to.
pub(super) struct Plan<'a> {
    router: &'a Router,
    max_escalations: u32,
    max_calls: u32,
    /// The model of the next call.
    model: String,
    escalations: u32,
    fallbacks_used: Vec<String>,
    calls: u32,
    /// The output cap of the next call, after a `length` answer (one larger retry).
    bigger_cap: Option<u32>,
    length_retried: bool,
    /// What the attempt fails with when it runs out of calls.
    last_error: JobError,
}

impl<'a> Plan<'a> {
    /// A plan starting at `model` (the router's decision).
    pub(super) fn new(router: &'a Router, settings: &Settings, model: String) -> Plan<'a> {
        Plan {
            router,
            max_escalations: settings.routing.max_escalations,
            max_calls: settings.llm.max_calls_per_job,
            model,
            escalations: 0,
            fallbacks_used: Vec::new(),
            calls: 0,
            bigger_cap: None,
            length_retried: false,
            last_error: JobError::transient(ErrorKind::LlmUnavailable, "no model call succeeded"),
        }
    }

    /// The model of the next call.
    pub(super) fn model(&self) -> &str {
        &self.model
    }

    /// The error to fail with once no call is left, `None` while one is.
    pub(super) fn out_of_calls(&self) -> Option<JobError> {
        (self.calls >= self.max_calls).then(|| self.last_error.clone())
    }

    /// The larger output cap the next call takes, once, after a `length` answer.
    pub(super) fn take_bigger_cap(&mut self) -> Option<u32> {
        self.bigger_cap.take()
    }

    /// A call answered (valid or not).
    pub(super) fn answered(&mut self) {
        self.calls += 1;
    }

    /// The answer failed the schema: escalate a tier while escalations are left.
    pub(super) fn invalid_output(&mut self, why: &str) {
        self.last_error =
            JobError::transient(ErrorKind::InvalidOutput, format!("{} answered output that fails the schema: {why}", self.model));
        self.escalate();
    }

    /// The answer stopped at its output cap: retry once with `cap` when the larger call `fits`
    /// the job's cap, else escalate.
    pub(super) fn length(&mut self, message: &str, cap: u32, fits: bool) {
        self.calls += 1;
        self.last_error = JobError::transient(ErrorKind::LlmLength, format!("{}: {message}", self.model));
        if !self.length_retried && fits {
            self.length_retried = true;
            self.bigger_cap = Some(cap);
        } else {
            self.escalate();
        }
    }

    /// A model error (`status` its `atlas_llm_requests_total` label): fall back to the next configured model not
    /// tried yet; `Err` when none is left (the message is retried later with backoff).
    pub(super) fn model_error(&mut self, status: crate::job::CallOutcome, error: &str) -> Result<(), JobError> {
        self.calls += 1;
        // The kind names the model's failure as the model's (`llm_timeout`, `llm_server_error`,
        // `llm_transport`), as the job record, the DLQ reason and `atlas_jobs_total` show it.
        self.last_error = JobError::transient(ErrorKind::of_model_failure(status), format!("{}: {error}", self.model));
        let next = self.router.fallbacks(&self.model).into_iter().find(|m| !self.fallbacks_used.contains(m) && *m != self.model);
        match next {
            Some(next) => {
                telemetry::fallback(&self.model, &next);
                self.fallbacks_used.push(std::mem::replace(&mut self.model, next));
                Ok(())
            }
            None => Err(self.last_error.clone()),
        }
    }

    fn escalate(&mut self) {
        if self.escalations >= self.max_escalations {
            return;
        }
        if let Some(next) = self.router.escalate(&self.model) {
            telemetry::escalation(&self.model, &next);
            self.escalations += 1;
            self.model = next;
        }
    }
}
