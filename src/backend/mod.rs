//! The four storage seams and their contracts: [`Queue`], [`JobStore`], [`BudgetLedger`],
//! [`ArtifactStore`] (the fifth, `LlmClient`, lives in [`crate::llm`]).
//!
//! Each trait is small and its contract is written here; `tests/conformance.rs` checks every
//! implementation against it: [`local`] (SQLite + a directory, stage `local`) and [`aws`]
//! (SQS, DynamoDB, S3). The processing core only ever sees these traits, so it is tested
//! without AWS.

pub mod aws;
pub mod limits;
pub mod local;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::error::BackendError;
use crate::job::{JobRecord, JobStatus};

/// Result type of every backend call.
pub type BResult<T> = Result<T, BackendError>;

/// One received message. The receipt is what the queue needs to act on this delivery.
#[derive(Debug, Clone)]
pub struct Message {
    /// The queue's id for the message (stable across deliveries).
    pub message_id: String,
    /// Handle for this delivery (visibility changes, delete, dead-letter).
    pub receipt: String,
    /// The body as sent.
    pub body: String,
    /// How many times the message has been received, this delivery included (≥ 1).
    pub receive_count: u32,
    /// When the message was first sent, if the queue knows.
    pub sent_at: Option<DateTime<Utc>>,
}

/// A message sitting in the dead-letter queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// The queue's id for the message.
    pub message_id: String,
    /// The body as sent.
    pub body: String,
    /// Why it was dead-lettered, when the worker said (absent for redrive-policy moves).
    pub reason: Option<String>,
    /// Receives before it was dead-lettered.
    pub receive_count: u32,
}

impl DeadLetter {
    /// The failure kind it was dead-lettered for: the reason's leading `kind:` word, or
    /// [`RECEIVE_LIMIT_KIND`] when the queue's redrive policy moved it (no reason recorded).
    pub fn kind(&self) -> &str {
        match &self.reason {
            None => RECEIVE_LIMIT_KIND,
            Some(r) => r.split(':').next().map(str::trim).filter(|k| !k.is_empty()).unwrap_or("unspecified"),
        }
    }
}

/// The kind of a dead letter the queue moved by its redrive policy: it was received
/// `max_receive_count` times without being deleted (crashes, timeouts, retries run out).
pub const RECEIVE_LIMIT_KIND: &str = crate::error::ErrorKind::ReceiveLimit.as_str();
/// The kind the worker records when a transient failure ran out of attempts.
pub const RETRIES_EXHAUSTED_KIND: &str = crate::error::ErrorKind::RetriesExhausted.as_str();

/// Which dead letters a redrive moves, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveSelect {
    /// Those that failed for a reason that may pass now ([`RECEIVE_LIMIT_KIND`],
    /// [`RETRIES_EXHAUSTED_KIND`]); permanent failures (`invalid_message`, `ssrf_blocked`, ...)
    /// stay, since they would only come straight back.
    Retryable,
    /// Exactly these kinds, permanent or not.
    Kinds(std::collections::BTreeSet<String>),
    /// Every dead letter.
    All,
}

impl RedriveSelect {
    /// Whether a dead letter of this kind is moved.
    pub fn accepts(&self, kind: &str) -> bool {
        match self {
            RedriveSelect::Retryable => kind == RECEIVE_LIMIT_KIND || kind == RETRIES_EXHAUSTED_KIND,
            RedriveSelect::Kinds(k) => k.contains(kind),
            RedriveSelect::All => true,
        }
    }
}

/// A bounded redrive: it looks at no more than `examine` dead letters (the DLQ's depth when it
/// began, so messages a running worker dead-letters again cannot keep it going) and moves at
/// most `max_moved` of those `select` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePlan {
    /// Most dead letters looked at.
    pub examine: u64,
    /// Most moved.
    pub max_moved: u64,
    /// Which kinds move.
    pub select: RedriveSelect,
}

impl RedrivePlan {
    /// Whether a dead letter of `kind` moves when `moved` have moved already: its kind is
    /// selected and the plan's `max_moved` is not reached.
    pub fn admits(&self, moved: u64, kind: &str) -> bool {
        moved < self.max_moved && self.select.accepts(kind)
    }
}

/// What a redrive did, by dead-letter kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RedriveReport {
    /// Moved back to the queue.
    pub moved: std::collections::BTreeMap<String, u64>,
    /// Looked at and left in the DLQ.
    pub left: std::collections::BTreeMap<String, u64>,
}

impl RedriveReport {
    /// Messages moved.
    pub fn moved_total(&self) -> u64 {
        self.moved.values().sum()
    }
    /// Messages looked at.
    pub fn examined(&self) -> u64 {
        self.moved_total() + self.left.values().sum::<u64>()
    }
    /// Counts one dead letter.
    pub fn count(&mut self, kind: &str, moved: bool) {
        let side = if moved { &mut self.moved } else { &mut self.left };
        *side.entry(kind.to_string()).or_default() += 1;
    }
}

/// Approximate message counts, as SQS reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    /// Ready to be received now.
    pub visible: u64,
    /// Received and not yet deleted (in flight, or waiting out a backoff).
    pub in_flight: u64,
    /// Sent with a delay that has not passed yet.
    pub delayed: u64,
    /// In the dead-letter queue.
    pub dead_letters: u64,
}

impl QueueDepth {
    /// True when nothing is waiting, in flight or delayed (the DLQ is not counted).
    pub fn is_drained(&self) -> bool {
        self.visible == 0 && self.in_flight == 0 && self.delayed == 0
    }
}

/// The stage's job queue and its dead-letter queue.
///
/// Contract:
/// - `receive` returns at most `max` messages and waits up to `wait` for the first one (long
///   poll); a received message is invisible to other receivers for the queue's visibility timeout,
///   and its `receive_count` counts this delivery.
/// - A message received more than the queue's max receive count is moved to the DLQ by the queue
///   itself (SQS redrive policy; the SQLite queue does the same) and is not returned.
/// - `set_visibility(receipt, d)` makes the message reappear `d` from now (0 = at once); used for
///   heartbeats, backoff and giving back unstarted work. A stale receipt is an error.
/// - `delete_batch` deletes by receipt and returns the receipts it could not delete (never fails
///   the whole batch for one bad entry).
/// - `dead_letter` moves one message to the DLQ with a reason, at once, whatever its receive count;
///   the DLQ keeps `message.body` as given (the worker passes a copy with secrets redacted).
/// - `flush` leaves nothing deleted recoverable at rest (SQLite: the write-ahead log is
///   checkpointed and truncated); a no-op where the service handles it (SQS).
/// - `send` with a delay keeps the message invisible for that long (≤ 15 minutes); a new message
///   starts with receive count 0.
/// - `dlq_scrub(max)` leaves no caller secret (`apiKey`, `headers` and `callback_headers` values,
///   key-like tokens: [`crate::redact::message_body`]) in the first `max` DLQ messages, whoever
///   moved them there (the queue's own redrive policy moves bodies as sent): a message that
///   carries one is replaced by a redacted copy keeping its reason and receive count (on SQS,
///   every message the redrive policy moved is replaced once, so that its receive count stops
///   growing with each look at the DLQ); returns how many were replaced.
/// - `dlq_redrive(plan)` looks at no more than `plan.examine` DLQ messages, moves at most
///   `plan.max_moved` of those whose [`DeadLetter::kind`] `plan.select` accepts back to the queue
///   with their receive count reset, leaves the rest in the DLQ, and reports both by kind.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Sends one message, invisible for `delay`. Returns the message id.
    async fn send(&self, body: &str, delay: Duration) -> BResult<String>;
    /// Sends many messages (any count; implementations batch). Fails if any could not be sent.
    async fn send_batch(&self, bodies: &[String]) -> BResult<()>;
    /// Long-polls for up to `max` messages.
    async fn receive(&self, max: usize, wait: Duration) -> BResult<Vec<Message>>;
    /// Changes a received message's visibility timeout, counted from now.
    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> BResult<()>;
    /// Deletes received messages; returns the receipts that could not be deleted.
    async fn delete_batch(&self, receipts: &[String]) -> BResult<Vec<String>>;
    /// Moves a received message to the DLQ at once, recording `reason`.
    async fn dead_letter(&self, message: &Message, reason: &str) -> BResult<()>;
    /// Lists up to `max` DLQ messages without consuming them.
    async fn dlq_peek(&self, max: usize) -> BResult<Vec<DeadLetter>>;
    /// Replaces DLQ messages that carry caller secrets by redacted copies; how many.
    async fn dlq_scrub(&self, max: usize) -> BResult<usize>;
    /// Moves the DLQ messages a plan selects back to the queue.
    async fn dlq_redrive(&self, plan: &RedrivePlan) -> BResult<RedriveReport>;
    /// Approximate counts.
    async fn depth(&self) -> BResult<QueueDepth>;
    /// Makes deleted messages unrecoverable at rest (called when the worker stops).
    async fn flush(&self) -> BResult<()> {
        Ok(())
    }
}

/// The outcome of [`JobStore::claim`].
#[derive(Debug, Clone)]
pub enum Claim {
    /// The caller now holds the lease; the record is as stored after the claim
    /// (`processing`, `attempts` incremented, earlier calls and costs kept).
    Claimed(JobRecord),
    /// The job is already `completed`: do no work, spend nothing, delete the message.
    AlreadyCompleted(JobRecord),
    /// Another worker holds a live lease: do not start it twice.
    Busy {
        /// The lease holder.
        owner: String,
        /// When its lease runs out.
        until: DateTime<Utc>,
    },
}

/// The job table (`atlas-codex-jobs-{stage}`).
///
/// Contract (every transition is one conditional write):
/// - `claim(id, owner, lease_until, now)`: creates the record as `processing` when absent, or moves
///   `pending` | `failed` | `processing` with `lease_expires_at < now` to `processing` with the new
///   owner and lease, incrementing `attempts`. A `completed` job gives [`Claim::AlreadyCompleted`];
///   a live lease held by someone else gives [`Claim::Busy`]. `stage` fills a new record.
/// - `renew(id, owner, lease_until)`: extends the lease only while `owner` holds it; `Ok(false)`
///   when the lease was lost.
/// - `finish(record, owner)`: writes the whole record (status `completed`, `failed` or `pending`,
///   or `processing` with the lease fields kept, as a checkpoint) only while `owner` holds the
///   lease and the stored status is `processing`; otherwise [`BackendError::Conflict`]. The
///   lease fields are written as the record has them (the caller clears them when it lets go).
/// - `put_if_absent(record)`: creates a record unless one exists; `Ok(false)` when it existed.
/// - `list(status, limit)`: newest first.
/// - `oldest(status, limit)`: up to `limit` records of `status`, oldest (`created_at`) first; on
///   DynamoDB from the eventually consistent status index.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Takes the job's lease (see the contract).
    async fn claim(&self, id: &str, stage: &str, owner: &str, lease_until: DateTime<Utc>, now: DateTime<Utc>) -> BResult<Claim>;
    /// Extends a held lease.
    async fn renew(&self, id: &str, owner: &str, lease_until: DateTime<Utc>) -> BResult<bool>;
    /// Writes the outcome while holding the lease.
    async fn finish(&self, record: &JobRecord, owner: &str) -> BResult<()>;
    /// Creates a record unless one exists.
    async fn put_if_absent(&self, record: &JobRecord) -> BResult<bool>;
    /// Reads one record.
    async fn get(&self, id: &str) -> BResult<Option<JobRecord>>;
    /// Lists records, newest first, optionally by status.
    async fn list(&self, status: Option<JobStatus>, limit: usize) -> BResult<Vec<JobRecord>>;
    /// Lists records of one status, oldest first.
    async fn oldest(&self, status: JobStatus, limit: usize) -> BResult<Vec<JobRecord>>;
    /// Updates the announcement of the record's latest end (see the contract).
    async fn set_announcement(&self, id: &str, announcement: &crate::events::Announcement) -> BResult<bool>;
}

/// A hold on budget for one model call: its worst-case cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique id; settle and release are idempotent per id.
    pub id: String,
    /// The job it is for.
    pub job_id: String,
    /// Worst-case cost in micro-USD (counted input + max output at list price).
    pub amount_micros: i64,
    /// After this the hold lapses on its own (a crashed worker cannot strand budget).
    pub expires_at: DateTime<Utc>,
}

/// What [`BudgetLedger::reserve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// The hold is in place.
    Granted,
    /// spent + held + amount would pass the limit; nothing changed.
    Refused {
        /// Settled spend this period, micro-USD.
        spent_micros: i64,
        /// Held this period (live and lapsed reservations), micro-USD.
        reserved_micros: i64,
    },
}

/// One settled charge: the actual spend under one reservation (a budget lease, or a single
/// call), with its breakdown by model and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The reservation it settles (idempotency key).
    pub reservation_id: String,
    /// Who held the reservation: the job, or the worker for a budget lease.
    pub job_id: String,
    /// Actual cost in micro-USD: the sum of `lines`.
    pub amount_micros: i64,
    /// The spend by model and tenant (may be empty when nothing was spent).
    pub lines: Vec<ChargeLine>,
}

/// One line of a [`Charge`]: what one model cost for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeLine {
    /// The model called.
    pub model: String,
    /// The tenant, if the job named one.
    pub tenant: Option<String>,
    /// Cost in micro-USD.
    pub amount_micros: i64,
}

impl Charge {
    /// A charge of one line (one model, one tenant).
    pub fn single(
        reservation_id: impl Into<String>,
        job_id: impl Into<String>,
        model: impl Into<String>,
        tenant: Option<&str>,
        amount_micros: i64,
    ) -> Charge {
        Charge {
            reservation_id: reservation_id.into(),
            job_id: job_id.into(),
            amount_micros,
            lines: vec![ChargeLine { model: model.into(), tenant: tenant.map(str::to_string), amount_micros }],
        }
    }
}

/// The model name under which a lapsed hold is charged once it is folded into spend.
pub const LAPSED_MODEL: &str = "(lapsed lease)";
/// How long a ledger keeps a declared bound after its reservation expires (or after it was
/// closed, when it was never declared): longer than lapsed holds are kept before they are
/// folded into spend (a day), so a bound is never forgotten while its lease can be recovered.
pub const BOUND_KEPT: chrono::Duration = chrono::Duration::days(2);
/// The model name under which a lapsed lease is charged when it is recovered at its declared
/// bound (the real spend by model is known only to its dead holder).
pub const RECOVERED_MODEL: &str = "(recovered lease)";

/// A period's totals.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LedgerSnapshot {
    /// The period (`YYYY-MM`, UTC).
    pub period: String,
    /// Settled spend, micro-USD.
    pub spent_micros: i64,
    /// Live (unexpired) reservations, micro-USD.
    pub reserved_micros: i64,
    /// Lapsed reservations: expired and never settled nor released (their owner died), counted
    /// as spent in full until settled, micro-USD.
    #[serde(default)]
    pub lapsed_micros: i64,
    /// Settled spend by model, micro-USD.
    pub by_model: std::collections::BTreeMap<String, i64>,
    /// Settled spend by tenant (`-` for none), micro-USD.
    pub by_tenant: std::collections::BTreeMap<String, i64>,
}

/// The fleet-wide budget ledger (`atlas-codex-budget-{stage}`): one account per calendar month.
///
/// Workers take budget leases from it (a reservation per lease, see [`crate::budget`]), so it
/// sees a few writes per worker per minute, not one per model call.
///
/// Contract:
/// - `reserve` is atomic across every worker sharing the ledger: it grants only when
///   `spent + held + amount ≤ limit`, where *held* is every reservation neither settled nor
///   released, **expired ones included**: a reservation that lapsed stands for money its dead
///   owner may have spent, so it keeps counting (in full) until it is settled with the actual
///   amount or released. The ledger therefore over-counts, never under-counts. (Lapsed
///   reservations older than a day are folded into spent under [`LAPSED_MODEL`].) Reserving an
///   id that is already held is granted without a second hold.
/// - `settle` turns a reservation into a charge of `charge.amount_micros` (which may be more or less
///   than reserved) exactly once per reservation id: a repeated settle changes nothing. Settling a
///   reservation that lapsed replaces its full amount with the charge (the real spend is known).
/// - `release` drops a reservation without a charge; idempotent.
/// - `snapshot` reports the period's totals: live reservations and lapsed ones apart.
/// - `declare` records, ahead of spending, a ceiling on what the holder of a reservation spends
///   of it (write-ahead: the holder declares before it sends a call that would pass the last
///   ceiling). It answers `false` once the reservation's bound was closed: the holder must not
///   spend more of it. `close` closes the bound (every later `declare` answers `false`) and
///   returns the last ceiling declared, `None` when there was none. Both are atomic per
///   reservation across every worker, and neither touches the period's totals.
/// - `lapsed` lists the reservations that expired before `before` and are neither settled nor
///   released. Together: anyone may settle a lapsed reservation at its closed bound (or in full
///   when it had none), which never under-counts and gives its dead holder's unspent part
///   back to the fleet (see [`crate::budget::recover_lapsed`]).
#[async_trait]
pub trait BudgetLedger: Send + Sync + 'static {
    /// Atomically holds `reservation.amount_micros` unless the limit would be passed.
    async fn reserve(&self, period: &str, reservation: &Reservation, limit_micros: i64, now: DateTime<Utc>) -> BResult<ReserveOutcome>;
    /// Converts a hold into the actual charge (idempotent per reservation id).
    async fn settle(&self, period: &str, charge: &Charge) -> BResult<()>;
    /// Drops a hold without charging (idempotent).
    async fn release(&self, period: &str, reservation_id: &str) -> BResult<()>;
    /// The period's totals.
    async fn snapshot(&self, period: &str, now: DateTime<Utc>) -> BResult<LedgerSnapshot>;
    /// Declares that the holder spends at most `bound_micros` of `reservation_id` (until it
    /// declares again); `false` when the bound was closed. `expires_at` is when the
    /// declaration may be forgotten (well after the reservation lapsed).
    async fn declare(&self, period: &str, reservation_id: &str, bound_micros: i64, expires_at: DateTime<Utc>) -> BResult<bool>;
    /// Closes the bound of `reservation_id`; the last ceiling declared, if any.
    async fn close(&self, period: &str, reservation_id: &str) -> BResult<Option<i64>>;
    /// Reservations that expired before `before`, neither settled nor released.
    async fn lapsed(&self, period: &str, before: DateTime<Utc>) -> BResult<Vec<Reservation>>;
}

/// What a [`RateStore::take`] asks for and gets: request slots and tokens of one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateUnits {
    /// Requests.
    pub requests: u32,
    /// Tokens (counted input + requested output cap).
    pub tokens: u64,
}

/// The stage's shared rate-limit capacity: per key (a model of the stage) and per fixed time
/// window, how many requests and tokens the fleet has taken. The fleet limiter
/// ([`crate::ratelimit`]) leases small batches from it, so it sees a few writes per second per
/// model, not one per call. On AWS it lives in the budget table (`rate#{key}#{window}` items
/// that expire after [`RATE_WINDOW_RETENTION_SECS`]), locally in the stage's SQLite file (so
/// several processes on one machine share it).
///
/// Contract:
/// - `take(key, window, want, cap)` is atomic across every worker sharing the store: it adds
///   `want` to the window's totals only when neither total would pass `cap` afterwards, and
///   returns what it added: all of `want`, or (when that does not fit) as much as fits of the
///   requests with the tokens they asked for pro rata, possibly nothing. A window never
///   holds more than `cap` of either unit, whatever the interleaving.
/// - `give_back(key, window, units)` subtracts what a worker took and did not use (never below 0).
/// - `fill(key, window)` marks the window full (the provider said so): later takes of it get
///   nothing, whatever is given back.
/// - Windows are independent; a window's totals are kept at least
///   [`RATE_WINDOW_RETENTION_SECS`] after it ends.
#[async_trait]
pub trait RateStore: Send + Sync + 'static {
    /// Takes up to `want` from `window` of `key` without passing `cap`.
    async fn take(&self, key: &str, window: u64, want: RateUnits, cap: RateUnits) -> BResult<RateUnits>;
    /// Returns units taken and not used.
    async fn give_back(&self, key: &str, window: u64, units: RateUnits) -> BResult<()>;
    /// Marks a window full.
    async fn fill(&self, key: &str, window: u64) -> BResult<()>;
}

/// How long a rate window's totals are kept after it ends (then they may be deleted).
pub const RATE_WINDOW_RETENTION_SECS: u64 = 600;

/// What fits of `want` in a window already holding `used` under `cap`: all of it, else as many
/// requests as fit with their share of the asked tokens (each request's tokens taken as
/// `want.tokens / want.requests`), else nothing. Shared by every [`RateStore`] so they agree.
pub fn rate_fit(want: RateUnits, used: RateUnits, cap: RateUnits) -> RateUnits {
    let free_r = cap.requests.saturating_sub(used.requests);
    let free_t = cap.tokens.saturating_sub(used.tokens);
    if want.requests <= free_r && want.tokens <= free_t {
        return want;
    }
    if want.requests == 0 {
        return RateUnits { requests: 0, tokens: want.tokens.min(free_t) };
    }
    let per = want.tokens.div_ceil(u64::from(want.requests));
    let by_tokens = free_t.checked_div(per).unwrap_or(u64::from(want.requests));
    let n = free_r.min(want.requests).min(u32::try_from(by_tokens).unwrap_or(u32::MAX));
    if n == 0 {
        return RateUnits::default();
    }
    RateUnits { requests: n, tokens: (per * u64::from(n)).min(want.tokens) }
}

/// The artifacts store (S3 bucket per stage, or a directory locally).
///
/// Contract: keys are relative paths (`jobs/{job_id}/result.json`, `inputs/{job_id}`); `put`
/// overwrites atomically (a reader sees the old or the new object, never a torn one); `get` of a
/// missing key is `Ok(None)`; `location` is a human-readable address for the key.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// Stores an object.
    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> BResult<()>;
    /// Reads an object.
    async fn get(&self, key: &str) -> BResult<Option<Vec<u8>>>;
    /// Where a key lives, for people (`s3://bucket/key` or a file path).
    fn location(&self, key: &str) -> String;
}

/// The backends a stage runs on, built once from settings.
#[derive(Clone)]
pub struct Backends {
    /// The job queue and its DLQ.
    pub queue: Arc<dyn Queue>,
    /// The job records.
    pub jobs: Arc<dyn JobStore>,
    /// The budget ledger.
    pub ledger: Arc<dyn BudgetLedger>,
    /// Results and large inputs.
    pub artifacts: Arc<dyn ArtifactStore>,
    /// The fleet's shared rate-limit capacity.
    pub rates: Arc<dyn RateStore>,
    /// Where job end events go (the stage's SNS topic, or the local events file).
    pub events: Arc<dyn crate::events::EventSink>,
}
