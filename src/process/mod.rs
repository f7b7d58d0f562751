//! One job end to end: parse → claim → input (fetch, crawl, inline, claim check) → page → route →
//! reserve → rate limit → model → validate (escalate / fall back) → settle → store → finish.
//!
//! [`Processor::process`] never panics on bad input and always returns a [`Verdict`] that tells the
//! worker what to do with the message; the job record has been written before it returns.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use tracing::warn;

use crate::backend::{Backends, Claim, Message};
use crate::budget::Budget;
use crate::crawl;
use crate::error::{Disposition, ErrorKind, JobError};
use crate::fetch::Fetcher;
use crate::job::{self, ErrorInfo, Job, JobRecord, JobStatus, PendingReason};
use crate::llm::LlmClient;
use crate::page::{self, Page};
use crate::ratelimit::RateLimits;
use crate::route::Router;
use crate::settings::{OnBudgetExhausted, Settings};

mod announce;
mod call;
mod choice;
mod chunk;
mod extract;
mod input;
mod prompt;
mod result;

/// What the end of a job needs to know about the message that ended it.
#[derive(Clone, Copy)]
struct EndCtx<'a> {
    message: &'a Message,
    callback: Option<&'a job::Callback>,
}

/// What the worker must do with the message after processing.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The job is `completed` (now, or already: `duplicate`): delete the message.
    Completed {
        /// The job.
        job_id: String,
        /// True when a redelivery found the job already completed (no work, no spend).
        duplicate: bool,
    },
    /// The job is recorded `failed` but must not be dead-lettered (budget problems): delete.
    Failed {
        /// The job.
        job_id: String,
        /// Why.
        error: JobError,
    },
    /// Permanent failure recorded (when the job has an id): move the message to the DLQ.
    DeadLetter {
        /// The job, when the message had a usable id.
        job_id: Option<String>,
        /// Why.
        error: JobError,
    },
    /// Transient failure: leave the message for a retry after a backoff.
    Retry {
        /// The job, when known.
        job_id: Option<String>,
        /// Why.
        error: JobError,
    },
    /// Budget exhausted: re-queue later with the receive count reset; the job stays `pending`.
    Defer {
        /// The job.
        job_id: String,
        /// Why.
        error: JobError,
    },
    /// Another worker holds a live lease on the job: do not run it twice.
    Busy {
        /// The job.
        job_id: String,
        /// When that lease runs out.
        until: chrono::DateTime<Utc>,
    },
}

/// The successful result of a job's work, before it is stored.
struct Done {
    data: Value,
    model: Option<String>,
    page: Option<Page>,
    pages: Option<Vec<crawl::CrawledPage>>,
    truncated: bool,
    fetch_ms: u64,
    model_ms: u64,
    /// The job's share of the process's input memory, held until the result is stored.
    _input: input::InputShare,
}

/// Runs jobs. One per worker process, shared by all tasks.
pub struct Processor {
    /// Stage settings.
    settings: Arc<Settings>,
    /// Queue and stores.
    backends: Backends,
    /// The model provider.
    llm: Arc<dyn LlmClient>,
    /// SSRF-safe HTTP fetcher.
    fetcher: Fetcher,
    /// Model choice, escalation, fallbacks.
    router: Router,
    /// Fleet-wide budget over the ledger.
    budget: Budget,
    /// Per-model RPM/TPM limits (fleet-wide by default) and adaptive slow-down.
    limits: RateLimits,
    /// This process's lease-owner id.
    worker_id: String,
    /// Publishes job end events and starts webhooks.
    announcer: crate::events::Announcer,
    /// The bytes all jobs' inputs may hold at once (`worker.input_bytes_in_flight`).
    inputs: input::InputMemory,
}

impl Processor {
    /// Builds a processor from settings, backends and a provider.
    pub fn new(settings: Arc<Settings>, backends: Backends, llm: Arc<dyn LlmClient>) -> Result<Processor, String> {
        let fetcher = Fetcher::new(&settings.fetch).map_err(|e| format!("fetcher: {e}"))?;
        // The tokenizer (about 30 MiB) is built on the first job that needs a model, not at start:
        // an idle worker stays small, and the first such job pays its build time once.
        let worker_id = format!("{}-{}", hostname(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let webhooks = match settings.webhooks.enabled {
            true => Some(crate::webhook::Webhooks::new(&settings, backends.jobs.clone())?),
            false => None,
        };
        let bucket = match settings.storage.backend {
            crate::settings::BackendKind::Aws => settings.bucket(),
            crate::settings::BackendKind::Sqlite => settings.storage.data_dir.join("artifacts").display().to_string(),
        };
        let sink = settings.events.enabled.then(|| backends.events.clone());
        Ok(Processor {
            announcer: crate::events::Announcer::new(sink, backends.jobs.clone(), bucket, webhooks),
            router: Router::new(&settings),
            budget: Budget::from_settings(backends.ledger.clone(), &settings, &worker_id),
            limits: RateLimits::from_settings(&settings, backends.rates.clone()),
            inputs: input::InputMemory::new(settings.worker.input_bytes_in_flight),
            fetcher,
            llm,
            backends,
            worker_id,
            settings,
        })
    }

    /// Waits up to `limit` for webhook deliveries in flight (at shutdown).
    pub async fn drain_webhooks(&self, limit: Duration) {
        self.announcer.drain(limit).await;
    }

    /// The announcer (events and webhooks) of this worker.
    pub fn announcer(&self) -> &crate::events::Announcer {
        &self.announcer
    }

    /// Replaces the fetcher (tests inject resolver overrides).
    pub fn with_fetcher(mut self, fetcher: Fetcher) -> Processor {
        self.fetcher = fetcher;
        self
    }

    /// Returns this worker's unused budget leases to the ledger (at shutdown).
    pub async fn return_budget(&self) {
        if let Err(e) = self.budget.drain().await {
            warn!(error = %e, "could not return a budget lease; it lapses and counts in full");
        }
    }

    /// The fleet budget as this worker holds it (leases, ledger writes).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The model rate limits as this worker applies them (shared windows, fallback share).
    pub fn rate_limits(&self) -> &RateLimits {
        &self.limits
    }

    /// This process's lease-owner id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    fn lease_until(&self) -> chrono::DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.settings.queue.visibility_timeout_secs as i64)
    }

    /// Extends this worker's lease on a job (called by the heartbeat).
    pub async fn renew_lease(&self, job_id: &str) {
        match self.backends.jobs.renew(job_id, &self.worker_id, self.lease_until()).await {
            Ok(true) => {}
            Ok(false) => warn!(job_id, "job lease lost"),
            Err(e) => warn!(job_id, error = %e, "lease renewal failed"),
        }
    }

    /// Gives a job back (`pending`) when its attempt is abandoned (drain timeout).
    pub async fn abandon(&self, job_id: &str, why: &str) {
        if let Ok(Some(mut rec)) = self.backends.jobs.get(job_id).await {
            if rec.status == JobStatus::Processing && rec.lease_owner.as_deref() == Some(&self.worker_id) {
                rec.status = JobStatus::Pending;
                rec.pending_reason = Some(PendingReason::Retry);
                rec.error = Some(ErrorInfo { kind: "abandoned".into(), message: why.into(), permanent: false });
                clear_lease(&mut rec);
                let _ = self.backends.jobs.finish(&rec, &self.worker_id).await;
            }
        }
    }

    /// Processes one message and records the outcome on the job. See [`Verdict`].
    pub async fn process(&self, message: &Message, job_slot: Arc<OnceLock<String>>) -> Verdict {
        let job = match job::parse_message(&message.body) {
            Ok(j) => j,
            Err(e) => return self.reject_unparsable(message, e).await,
        };
        let id = job.job_id.as_str().to_string();
        tracing::Span::current().record("job_id", id.as_str());
        let now = Utc::now();
        let claim = match self.backends.jobs.claim(&id, &self.settings.stage, &self.worker_id, self.lease_until(), now).await {
            Ok(c) => c,
            Err(e) => return Verdict::Retry { job_id: Some(id), error: e.into() },
        };
        let end = EndCtx { message, callback: job.callback.as_ref() };
        let mut rec = match claim {
            Claim::Claimed(r) => r,
            Claim::AlreadyCompleted(r) => return self.redelivered_completed(&r, end.callback).await,
            Claim::Busy { until, .. } => return Verdict::Busy { job_id: id, until },
        };
        if let Some(v) = self.resettle_failed(&rec, message, end.callback).await {
            return v;
        }
        let _ = job_slot.set(id.clone());
        call::mark_abandoned(&mut rec);
        if let Err(error) = self.settle_recorded_charges(&mut rec).await {
            return self.fail(rec, error, message.receive_count, end).await;
        }
        rec.job_type = Some(job.job_type.as_str().into());
        rec.url = job.url().map(str::to_string);
        rec.tenant = job.tenant.clone();
        if rec.expires_at.is_none() && self.settings.storage.retention_days > 0 {
            rec.expires_at = Some(now.timestamp() + self.settings.storage.retention_days as i64 * 86_400);
        }
        let started = Instant::now();
        let timeout = Duration::from_secs(self.settings.worker.job_timeout_secs);
        let result = match tokio::time::timeout(timeout, self.run(&job, &mut rec, message.receive_count)).await {
            Ok(r) => r,
            Err(_) => Err(JobError::transient(ErrorKind::JobTimeout, format!("job exceeded {}s", timeout.as_secs()))),
        };
        match result {
            Ok(done) => self.complete(&job, rec, done, started.elapsed(), end).await,
            Err(error) => self.fail(rec, error, message.receive_count, end).await,
        }
    }

    /// A message that is not a valid job: permanent; recorded when it carries an id.
    async fn reject_unparsable(&self, message: &Message, e: job::MessageError) -> Verdict {
        let error = JobError::permanent(e.error_kind(), e.to_string());
        let Some(id) = job::salvage_job_id(&message.body) else {
            return Verdict::DeadLetter { job_id: None, error };
        };
        let id = id.as_str().to_string();
        let now = Utc::now();
        match self.backends.jobs.claim(&id, &self.settings.stage, &self.worker_id, self.lease_until(), now).await {
            Ok(Claim::Claimed(mut rec)) => {
                if let Some(v) = self.resettle_failed(&rec, message, None).await {
                    return v;
                }
                rec.status = JobStatus::Failed;
                rec.error = Some(ErrorInfo { kind: error.kind().into(), message: crate::redact::text(error.message()), permanent: true });
                rec.updated_at = now;
                clear_lease(&mut rec);
                self.stamp_end(&mut rec, message, None);
                if let Err(e) = self.backends.jobs.finish(&rec, &self.worker_id).await {
                    return Verdict::Retry { job_id: Some(id), error: e.into() };
                }
                self.announce_end(&rec, None).await;
                Verdict::DeadLetter { job_id: Some(id), error }
            }
            // A valid job with this id already completed: this broken copy changes nothing.
            Ok(Claim::AlreadyCompleted(_)) => Verdict::DeadLetter { job_id: Some(id), error },
            Ok(Claim::Busy { .. }) => Verdict::DeadLetter { job_id: Some(id), error },
            Err(e) => Verdict::Retry { job_id: Some(id), error: e.into() },
        }
    }

    /// Stores the result, then marks the job `completed` (only then may the message go).
    async fn complete(&self, job: &Job, mut rec: JobRecord, done: Done, elapsed: Duration, end: EndCtx<'_>) -> Verdict {
        let id = rec.id.clone();
        let key = format!("jobs/{id}/result.json");
        let simulated = self.llm.name() == "simulated" && done.model.is_some();
        let doc = result::document(&self.settings.stage, job, &rec, &done, elapsed, simulated);
        let body = match serde_json::to_vec_pretty(&doc) {
            Ok(b) => b,
            Err(e) => return self.fail(rec, JobError::permanent(ErrorKind::ResultEncoding, e.to_string()), 0, end).await,
        };
        if let Err(e) = self.backends.artifacts.put(&key, body, "application/json").await {
            return self.fail(rec, e.into(), 0, end).await;
        }
        let data_len = serde_json::to_vec(&done.data).map(|v| v.len()).unwrap_or(usize::MAX);
        rec.data = (data_len <= self.settings.storage.inline_result_max_bytes).then_some(done.data);
        rec.result_key = Some(key);
        rec.model = done.model;
        rec.simulated = simulated;
        rec.status = JobStatus::Completed;
        rec.error = None;
        rec.pending_reason = None;
        rec.duration_ms = Some(elapsed.as_millis() as u64);
        rec.updated_at = Utc::now();
        clear_lease(&mut rec);
        self.stamp_end(&mut rec, end.message, end.callback);
        if let Err(e) = self.backends.jobs.finish(&rec, &self.worker_id).await {
            return Verdict::Retry { job_id: Some(id), error: e.into() };
        }
        if self.announce_end(&rec, end.callback).await {
            Verdict::Completed { job_id: id, duplicate: false }
        } else {
            // Completed, not yet announced: the message comes back and its redelivery publishes.
            Verdict::Retry {
                job_id: Some(id),
                error: JobError::transient(ErrorKind::EventUnpublished, "the job's end event could not be published yet"),
            }
        }
    }

    /// Records a failure according to its disposition and says what to do with the message.
    async fn fail(&self, mut rec: JobRecord, error: JobError, receive_count: u32, end: EndCtx<'_>) -> Verdict {
        let id = rec.id.clone();
        let mut disposition = error.disposition();
        let mut error = error;
        if disposition == Disposition::Retry && receive_count >= self.settings.queue.max_receive_count {
            error = JobError::permanent(
                ErrorKind::RetriesExhausted,
                format!("gave up after {receive_count} attempts; last error: {} ({})", error.message(), error.kind()),
            );
            disposition = Disposition::DeadLetter;
        }
        if disposition == Disposition::Defer && self.settings.worker.on_budget_exhausted == OnBudgetExhausted::Fail {
            disposition = Disposition::Fail;
        }
        rec.status = match disposition {
            Disposition::Retry | Disposition::Defer => JobStatus::Pending,
            Disposition::DeadLetter | Disposition::Fail => JobStatus::Failed,
        };
        rec.pending_reason = match disposition {
            Disposition::Defer => Some(PendingReason::BudgetExhausted),
            Disposition::Retry => Some(PendingReason::Retry),
            _ => None,
        };
        rec.error = Some(ErrorInfo {
            kind: error.kind().into(),
            message: crate::redact::text(error.message()),
            permanent: rec.status == JobStatus::Failed,
        });
        rec.updated_at = Utc::now();
        clear_lease(&mut rec);
        let is_end = self.stamp_end(&mut rec, end.message, end.callback);
        if let Err(e) = self.backends.jobs.finish(&rec, &self.worker_id).await {
            warn!(job_id = %id, error = %e, "could not record the failure; retrying the message");
            return Verdict::Retry { job_id: Some(id), error: e.into() };
        }
        if is_end {
            // A failure not announced now is announced by the sweep (from the DLQ side) or by the
            // message's redelivery; the message is settled as the failure says either way.
            self.announce_end(&rec, end.callback).await;
        }
        match disposition {
            Disposition::Fail => Verdict::Failed { job_id: id, error },
            Disposition::Defer => Verdict::Defer { job_id: id, error },
            Disposition::DeadLetter => Verdict::DeadLetter { job_id: Some(id), error },
            Disposition::Retry => Verdict::Retry { job_id: Some(id), error },
        }
    }

    /// The job's work: input, page, and (when asked) the model.
    async fn run(&self, job: &Job, rec: &mut JobRecord, _receive_count: u32) -> Result<Done, JobError> {
        let t0 = Instant::now();
        let mut share = self.inputs.take(input::worst_case_bytes(job, self.settings.fetch.max_body_bytes)).await;
        let (page, pages) = self.input(job).await?;
        self.inputs.shrink(&mut share, input::held_bytes(job, page.as_ref(), pages.as_deref()));
        let fetch_ms = t0.elapsed().as_millis() as u64;
        if !job.needs_model() {
            return Ok(Done { data: Value::Null, model: None, page, pages, truncated: false, fetch_ms, model_ms: 0, _input: share });
        }
        let units: Vec<chunk::Unit<'_>> = match (&page, &pages) {
            (Some(p), _) => vec![chunk::Unit { heading: None, markdown: &p.markdown }],
            (None, Some(ps)) => {
                ps.iter().map(|cp| chunk::Unit { heading: Some(format!("## Page: {}", cp.url)), markdown: &cp.page.markdown }).collect()
            }
            _ => Vec::new(),
        };
        let whole = chunk::joined(&units);
        let t1 = Instant::now();
        let (content, truncated) = page::truncate_to_tokens(&whole, self.settings.llm.max_input_tokens);
        if job.truncate || !truncated {
            let (data, model) = self.extract(job, rec, &content).await?;
            let model_ms = t1.elapsed().as_millis() as u64;
            return Ok(Done { data, model: Some(model), page, pages, truncated, fetch_ms, model_ms, _input: share });
        }
        let (data, model) = self.extract_chunked(job, rec, &units, &whole).await?;
        let model_ms = t1.elapsed().as_millis() as u64;
        Ok(Done { data, model: Some(model), page, pages, truncated: false, fetch_ms, model_ms, _input: share })
    }
}

fn clear_lease(rec: &mut JobRecord) {
    rec.lease_owner = None;
    rec.lease_expires_at = None;
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}
