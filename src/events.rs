//! Job end events: what producers are told when a job ends, once per end.
//!
//! Every end of a job (`completed`, `failed`, or `pending` for budget: deferred) is announced
//! as one [`JobEvent`]: published to the stage's event sink (SNS topic
//! `atlas-codex-events-{stage}` on AWS, a JSON-lines file under the data dir locally) and, when
//! the message named a `callback_url`, POSTed there as a signed webhook ([`crate::webhook`]).
//!
//! ## Once per end
//! The terminal write itself carries the end's [`Announcement`] (`published: false`), so the
//! record never says a job ended without also saying whether that end was announced:
//! 1. the record is written terminal with its announcement pending (one conditional write, as
//!    before);
//! 2. the event is published;
//! 3. the announcement is marked published ([`crate::backend::JobStore::set_announcement`], one
//!    write conditional on the event id);
//! 4. only then is the message settled (deleted, dead-lettered, re-queued).
//!
//! A crash between 1 and 3 is repaired: the message comes back, the claim finds the record
//! terminal with its announcement pending, publishes and marks it (the job is not run again:
//! `completed` is never re-run, and a failed job reached by the message that failed it is
//! settled again as it was). Messages that reached the DLQ are repaired by the sweep's DLQ pass.
//! A redelivery of an announced job publishes nothing. A crash between 2 and 3 publishes the
//! same event twice, with the same `event_id`; SNS standard topics deliver at least once
//! anyway, so subscribers deduplicate by `event_id` (docs/messages.md).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{BResult, BackendError, JobStore};
use crate::job::{JobRecord, JobStatus, PendingReason, Usage};

/// What kind of end an event announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// The job's result is stored.
    #[serde(rename = "job.completed")]
    Completed,
    /// The job failed for good (or for budget, with `on_budget_exhausted = fail`).
    #[serde(rename = "job.failed")]
    Failed,
    /// The budget is exhausted: the job waits (`pending`, `budget_exhausted`) and runs later.
    #[serde(rename = "job.deferred")]
    Deferred,
}

impl EventType {
    /// Every type, for tests and docs.
    pub const ALL: [EventType; 3] = [EventType::Completed, EventType::Failed, EventType::Deferred];

    /// The wire name (`job.completed`, ...), also the `type` message attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Completed => "job.completed",
            EventType::Failed => "job.failed",
            EventType::Deferred => "job.deferred",
        }
    }

    /// The end a record's state is, if it is one.
    pub fn of(rec: &JobRecord) -> Option<EventType> {
        match (rec.status, rec.pending_reason) {
            (JobStatus::Completed, _) => Some(EventType::Completed),
            (JobStatus::Failed, _) => Some(EventType::Failed),
            (JobStatus::Pending, Some(PendingReason::BudgetExhausted)) => Some(EventType::Deferred),
            _ => None,
        }
    }
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not yet answered with a 2xx (being tried, or its worker stopped before it could finish).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: a 4xx answer, or 5xx / timeouts until the retry time ran out.
    Failed,
    /// Never sent: the target is not allowed (SSRF policy) or no signing secret is configured.
    Refused,
}

impl DeliveryState {
    /// The stored name, also the metric's `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Refused => "refused",
        }
    }
}

/// A webhook delivery as the job record keeps it (no header values, the URL without its query).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The receiver, redacted ([`crate::redact::url`]).
    pub url: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// POSTs sent so far.
    pub attempts: u32,
    /// The receiver's last HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt did not deliver (a timeout, a refusal), if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the receiver took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// The announcement of a job's latest end, kept on its record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// The event's id: `{job_id}:{type}:{attempts}`, the same on every copy of it.
    pub event_id: String,
    /// The end announced.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The queue message whose processing ended the job (absent for ends the sweep recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// When the end was recorded (the event's `finished_at`).
    pub ended_at: DateTime<Utc>,
    /// Whether the event reached the stage's event sink.
    pub published: bool,
    /// The webhook, when the job asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDelivery>,
}

impl Announcement {
    /// A pending announcement of the end `rec` now records, or `None` when it is no end.
    pub fn pending(rec: &JobRecord, message_id: Option<&str>, callback: Option<&crate::job::Callback>) -> Option<Announcement> {
        let event_type = EventType::of(rec)?;
        Some(Announcement {
            event_id: format!("{}:{}:{}", rec.id, event_type.as_str(), rec.attempts),
            event_type,
            message_id: message_id.map(str::to_string),
            ended_at: rec.updated_at,
            published: false,
            webhook: callback.map(|cb| WebhookDelivery {
                url: crate::redact::url(&cb.url),
                state: DeliveryState::Pending,
                attempts: 0,
                last_status: None,
                last_error: None,
                delivered_at: None,
            }),
        })
    }
}

/// Puts the pending announcement of the end `rec` is about to record on it, to be written by
/// the same conditional write as the end; whether `rec` is an end (a record that is not keeps
/// the announcement of its last end). With events off the end counts as published (there is
/// nothing to publish), and with webhooks off `callback` is ignored.
pub fn stamp_end(
    rec: &mut JobRecord,
    s: &crate::settings::Settings,
    message_id: Option<&str>,
    callback: Option<&crate::job::Callback>,
) -> bool {
    let callback = callback.filter(|_| s.webhooks.enabled);
    let Some(mut a) = Announcement::pending(rec, message_id, callback) else { return false };
    a.published = !s.events.enabled;
    rec.announcement = Some(a);
    true
}

/// Where a result lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRef {
    /// The stage's artifacts bucket.
    pub bucket: String,
    /// The object's key (`jobs/{job_id}/result.json`).
    pub key: String,
}

/// The event as published and POSTed (docs/messages.md shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Stable across copies: subscribers deduplicate by it.
    pub event_id: String,
    /// `job.completed`, `job.failed` or `job.deferred`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The job.
    pub job_id: String,
    /// The stage that ran it.
    pub stage: String,
    /// The record's status (`completed`, `failed`, `pending`).
    pub status: JobStatus,
    /// Why it failed or waits: the error kind (`ssrf_blocked`, `budget_exhausted`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The failure's message (redacted), when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The model whose answer was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Tokens used by every call of the job.
    pub usage: Usage,
    /// What the job cost, USD.
    pub cost_usd: f64,
    /// Where the result is, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultRef>,
    /// The tenant, when the job named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When the end was recorded.
    pub finished_at: DateTime<Utc>,
}

impl JobEvent {
    /// The event of the end `rec` records under `announcement`.
    pub fn of(rec: &JobRecord, announcement: &Announcement, bucket: &str) -> JobEvent {
        let (reason, error) = match announcement.event_type {
            EventType::Completed => (None, None),
            _ => (rec.error.as_ref().map(|e| e.kind.clone()), rec.error.as_ref().map(|e| crate::redact::text(&e.message))),
        };
        JobEvent {
            event_id: announcement.event_id.clone(),
            event_type: announcement.event_type,
            job_id: rec.id.clone(),
            stage: rec.stage.clone(),
            status: rec.status,
            reason,
            error,
            model: rec.model.clone(),
            usage: rec.usage,
            cost_usd: rec.cost_usd(),
            result: rec.result_key.clone().map(|key| ResultRef { bucket: bucket.to_string(), key }),
            tenant: rec.tenant.clone(),
            finished_at: announcement.ended_at,
        }
    }
}

/// The stage's event sink (SNS topic `atlas-codex-events-{stage}`, or a JSON-lines file).
///
/// Contract: `publish` delivers `body` (the event's JSON) with `attributes` (name → string
/// value, for subscription filter policies) at least once when it returns `Ok`; an `Err` may
/// or may not have delivered it (the caller publishes again, with the same `event_id`).
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Publishes one event.
    async fn publish(&self, body: &str, attributes: &[(&'static str, String)]) -> BResult<()>;
    /// Where events go, for people (`arn:aws:sns:...`, a file path).
    fn location(&self) -> String;
}

/// Local events: one JSON object per line, appended to a file under the data dir. Each event is
/// one `write` on a file opened for appending, so concurrent writers (several local workers)
/// never interleave within a line.
pub struct FileSink {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl FileSink {
    /// Appends to `path` (created when absent).
    pub fn new(path: PathBuf) -> FileSink {
        FileSink { path, lock: tokio::sync::Mutex::new(()) }
    }
}

#[async_trait]
impl EventSink for FileSink {
    async fn publish(&self, body: &str, _attributes: &[(&'static str, String)]) -> BResult<()> {
        use std::io::Write;
        let _one_at_a_time = self.lock.lock().await;
        let path = self.path.clone();
        let mut line = body.replace('\n', " ");
        line.push('\n');
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            // Not fsynced: like the SQLite records beside it (WAL, synchronous = NORMAL), a line
            // survives a crash of the process, not necessarily of the machine.
            f.write_all(line.as_bytes())
        })
        .await
        .map_err(|e| BackendError::Other(format!("event file writer stopped: {e}")))?
        .map_err(|e| BackendError::Transient(format!("cannot append to {}: {e}", self.path.display())))
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// The sink of a stage with events off (`events.enabled = false`): publishes nothing.
pub struct NoEvents;

#[async_trait]
impl EventSink for NoEvents {
    async fn publish(&self, _body: &str, _attributes: &[(&'static str, String)]) -> BResult<()> {
        Ok(())
    }

    fn location(&self) -> String {
        "(events off)".into()
    }
}

/// The name of a stage's local event file: `atlas-{stage}.events.jsonl` beside its database.
pub fn local_file_name(stage: &str) -> String {
    file_name_beside(&crate::backend::local::db_file_name(stage))
}

/// The event file beside the SQLite file `db_file` (`atlas-x.sqlite` → `atlas-x.events.jsonl`).
pub fn file_name_beside(db_file: &str) -> String {
    format!("{}.events.jsonl", db_file.strip_suffix(".sqlite").unwrap_or(db_file))
}

/// Tries of one publish before the event is left pending for the repair paths.
const PUBLISH_TRIES: u32 = 3;
/// Longest one publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Announces job ends: publishes their events, marks them published, and hands webhooks to
/// [`crate::webhook::Webhooks`].
#[derive(Clone)]
pub struct Announcer {
    sink: Option<Arc<dyn EventSink>>,
    jobs: Arc<dyn JobStore>,
    bucket: String,
    webhooks: Option<crate::webhook::Webhooks>,
}

impl Announcer {
    /// An announcer publishing to `sink` (none: events off) and delivering webhooks through
    /// `webhooks` (none: webhooks off).
    pub fn new(
        sink: Option<Arc<dyn EventSink>>,
        jobs: Arc<dyn JobStore>,
        bucket: String,
        webhooks: Option<crate::webhook::Webhooks>,
    ) -> Announcer {
        Announcer { sink, jobs, bucket, webhooks }
    }

    /// Announces the end `rec` records (its announcement, written with it): publishes the
    /// event unless it was published, marks it, and starts the webhook when `callback` is given
    /// and its delivery is pending, on a `fresh` end (just recorded) or when the event had to be
    /// published here (a repair: the worker that recorded the end stopped before it could
    /// announce it). Returns whether the event is published now (always `true` with events
    /// off). Never fails: what could not be done is left pending for the repair paths.
    pub async fn announce(&self, rec: &JobRecord, callback: Option<&crate::job::Callback>, fresh: bool) -> bool {
        let Some(a) = rec.announcement.clone() else { return true };
        let was_published = a.published;
        let published = self.publish(rec, &a).await;
        if let (Some(cb), Some(hooks)) = (callback, &self.webhooks) {
            if (fresh || !was_published) && a.webhook.as_ref().is_some_and(|w| w.state == DeliveryState::Pending) {
                let mut a = a.clone();
                a.published = published;
                hooks.deliver(JobEvent::of(rec, &a, &self.bucket), a, cb.clone());
            }
        }
        published
    }

    /// Publishes the event of `a` unless it was, then marks it published; whether it is now.
    async fn publish(&self, rec: &JobRecord, a: &Announcement) -> bool {
        if a.published {
            return true;
        }
        let Some(sink) = &self.sink else { return true };
        let event = JobEvent::of(rec, a, &self.bucket);
        let body = match serde_json::to_string(&event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(job_id = %rec.id, error = %e, "cannot encode a job event");
                return false;
            }
        };
        let mut attributes =
            vec![("type", a.event_type.as_str().to_string()), ("stage", rec.stage.clone()), ("status", rec.status.as_str().to_string())];
        if let Some(t) = &rec.tenant {
            attributes.push(("tenant", t.clone()));
        }
        let mut last = String::new();
        for attempt in 0..PUBLISH_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            match tokio::time::timeout(PUBLISH_TIMEOUT, sink.publish(&body, &attributes)).await {
                Ok(Ok(())) => {
                    let mut marked = a.clone();
                    marked.published = true;
                    if let Err(e) = self.mark(&rec.id, &marked).await {
                        // Published but not marked: a repair publishes it again (same event_id).
                        tracing::warn!(job_id = %rec.id, error = %e, "event published but not marked; it may be published again");
                    }
                    crate::telemetry::event_published(&rec.id, a.event_type.as_str(), true, None);
                    return true;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("no answer within {}s", PUBLISH_TIMEOUT.as_secs()),
            }
        }
        crate::telemetry::event_published(&rec.id, a.event_type.as_str(), false, Some(&last));
        false
    }

    /// Writes an announcement onto the record (only while the record still announces that end).
    pub(crate) async fn mark(&self, job_id: &str, a: &Announcement) -> BResult<bool> {
        self.jobs.set_announcement(job_id, a).await
    }

    /// Waits up to `limit` for webhook deliveries in flight (a draining worker).
    pub async fn drain(&self, limit: Duration) {
        if let Some(h) = &self.webhooks {
            h.drain(limit).await;
        }
    }
}
