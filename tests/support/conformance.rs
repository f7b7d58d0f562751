//! The backend conformance suite: every line of the contracts in `atlas_codex::backend`, written
//! once against the traits, run against every implementation.
//!
//! Why it exists: the worker only sees the four traits, so each implementation (embedded SQLite,
//! AWS on moto) must behave the same way. Each check takes a factory that makes FRESH state (a new
//! queue, table, ledger or bucket), so checks never see each other's data and may run in parallel.
//!
//! Written to run on an emulator too: queue depths stay small (≤ 12 messages), waits use whole
//! seconds (visibility timeouts of 1-2 s, long polls of 1 s), and no check relies on sub-second
//! timing. Ids are random so a shared table cannot confuse two checks.
//!
//! Use from a test file (after `mod support;`):
//! ```ignore
//! support::conformance::queue_tests!(my_queue_factory());      // a `MakeQueue`
//! support::conformance::job_store_tests!(my_jobs_factory());   // a `MakeJobs`
//! support::conformance::ledger_tests!(my_ledger_factory());    // a `MakeLedger`
//! support::conformance::artifact_tests!(my_artifacts_factory()); // a `MakeArtifacts`
//! ```
//! Each macro expands to one `#[tokio::test]` per check (put it in its own `mod` to run several
//! implementations in one file). The `*_contract` functions run a whole suite in one call.

// Each test binary uses the macros of the stores it tests; the rest are unused there.
#![allow(unused_macros)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_codex::backend::{
    ArtifactStore, BackendError, BudgetLedger, Charge, Claim, JobStore, Message, Queue, RateStore, RateUnits, RedrivePlan, RedriveSelect,
    Reservation, ReserveOutcome,
};
use atlas_codex::job::{Attempt, JobRecord, JobStatus, Usage};
use chrono::{DateTime, Duration as ChronoDuration, Utc};

/// A boxed future, so factories can be stored as trait objects.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The queue attributes a check needs (the SQS attributes' counterparts).
#[derive(Debug, Clone, Copy)]
pub struct QueueSpec {
    /// How long a received message stays hidden (whole seconds on SQS).
    pub visibility_timeout: Duration,
    /// Receives after which the queue itself moves a message to the DLQ.
    pub max_receive_count: u32,
}

impl Default for QueueSpec {
    fn default() -> Self {
        QueueSpec { visibility_timeout: Duration::from_secs(2), max_receive_count: 3 }
    }
}

/// Makes a fresh, empty queue (with an empty DLQ) with the given attributes.
pub type MakeQueue = Arc<dyn Fn(QueueSpec) -> BoxFut<Arc<dyn Queue>> + Send + Sync>;
/// Makes a fresh, empty job store.
pub type MakeJobs = Arc<dyn Fn() -> BoxFut<Arc<dyn JobStore>> + Send + Sync>;
/// Makes a fresh, empty budget ledger.
pub type MakeLedger = Arc<dyn Fn() -> BoxFut<Arc<dyn BudgetLedger>> + Send + Sync>;
/// Makes a fresh, empty rate store.
pub type MakeRates = Arc<dyn Fn() -> BoxFut<Arc<dyn RateStore>> + Send + Sync>;
/// Makes a fresh, empty artifacts store.
pub type MakeArtifacts = Arc<dyn Fn() -> BoxFut<Arc<dyn ArtifactStore>> + Send + Sync>;

/// Boxes a closure into a [`MakeQueue`].
pub fn make_queue<F, Fut>(f: F) -> MakeQueue
where
    F: Fn(QueueSpec) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn Queue>> + Send + 'static,
{
    Arc::new(move |s| Box::pin(f(s)))
}
/// Boxes a closure into a [`MakeJobs`].
pub fn make_jobs<F, Fut>(f: F) -> MakeJobs
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn JobStore>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}
/// Boxes a closure into a [`MakeRates`].
pub fn make_rates<F, Fut>(f: F) -> MakeRates
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn RateStore>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// Boxes a closure into a [`MakeLedger`].
pub fn make_ledger<F, Fut>(f: F) -> MakeLedger
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn BudgetLedger>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}
/// Boxes a closure into a [`MakeArtifacts`].
pub fn make_artifacts<F, Fut>(f: F) -> MakeArtifacts
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn ArtifactStore>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A random suffix for ids, so checks sharing a table never collide.
pub fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

const SEC: Duration = Duration::from_secs(1);

/// Receives until `want` messages arrived or `within` passed (long polls of 1 s).
pub async fn receive_n(q: &dyn Queue, want: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut out: Vec<Message> = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        let got = q.receive((want - out.len()).min(10), SEC).await.expect("receive");
        out.extend(got);
    }
    out
}

/// Receives one message, waiting up to `within`.
pub async fn receive_one(q: &dyn Queue, within: Duration) -> Message {
    let mut got = receive_n(q, 1, within).await;
    assert_eq!(got.len(), 1, "expected one message within {within:?}");
    got.remove(0)
}

/// Asserts nothing is receivable during one 1 s long poll.
pub async fn assert_nothing_visible(q: &dyn Queue, why: &str) {
    let got = q.receive(10, SEC).await.expect("receive");
    assert!(got.is_empty(), "{why}: got {:?}", got.iter().map(|m| &m.body).collect::<Vec<_>>());
}

// =============================================================================================
// Queue

/// Send, receive, delete: the body round-trips, the first delivery counts 1, `sent_at` is about
/// now, and a deleted message never comes back.
pub async fn queue_send_receive_delete(make: &MakeQueue) {
    let q = make(QueueSpec::default()).await;
    let before = Utc::now();
    let body = r#"{"job_id":"a","text":"héllo ✓"}"#;
    let id = q.send(body, Duration::ZERO).await.expect("send");
    assert!(!id.is_empty(), "send returns the message id");
    let m = receive_one(&*q, Duration::from_secs(5)).await;
    assert_eq!(m.body, body);
    assert_eq!(m.message_id, id);
    assert_eq!(m.receive_count, 1, "a new message starts at 0, so its first delivery counts 1");
    let sent = m.sent_at.expect("sent_at is known");
    assert!((sent - before).num_seconds().abs() <= 60, "sent_at {sent} is not about now ({before})");
    let d = q.depth().await.expect("depth");
    assert_eq!((d.visible, d.in_flight, d.delayed), (0, 1, 0), "{d:?}");
    assert!(!d.is_drained());
    let failed = q.delete_batch(std::slice::from_ref(&m.receipt)).await.expect("delete");
    assert!(failed.is_empty(), "{failed:?}");
    let d = q.depth().await.expect("depth");
    assert!(d.is_drained(), "{d:?}");
    assert_eq!(d.dead_letters, 0);
    // Wait past the visibility timeout: a deleted message stays gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_nothing_visible(&*q, "deleted message came back").await;
}

/// A received message is invisible to other receivers for the visibility timeout, then comes
/// back with its receive count increased and a new receipt.
pub async fn queue_visibility_and_redelivery(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(2), max_receive_count: 5 }).await;
    q.send("redeliver-me", Duration::ZERO).await.expect("send");
    let first = receive_one(&*q, Duration::from_secs(5)).await;
    let t0 = Instant::now();
    assert_eq!(first.receive_count, 1);
    let hidden = q.receive(10, Duration::ZERO).await.expect("receive");
    assert!(hidden.is_empty(), "a received message must be invisible to other receivers");
    let second = receive_one(&*q, Duration::from_secs(8)).await;
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(1500), "came back after {waited:?}, before its 2 s timeout");
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.body, "redeliver-me");
    assert_eq!(second.receive_count, 2, "the redelivery counts");
    assert_ne!(second.receipt, first.receipt, "each delivery has its own receipt");
    assert!(q.delete_batch(&[second.receipt]).await.expect("delete").is_empty());
}

/// `set_visibility(receipt, 0)` gives a message back at once; a longer timeout keeps it hidden
/// past the queue's own timeout (the heartbeat); a stale receipt is an error.
pub async fn queue_set_visibility(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(1), max_receive_count: 5 }).await;
    q.send("vis", Duration::ZERO).await.expect("send");
    let m = receive_one(&*q, Duration::from_secs(5)).await;
    q.set_visibility(&m.receipt, Duration::ZERO).await.expect("set_visibility 0");
    let t0 = Instant::now();
    let again = receive_one(&*q, Duration::from_secs(3)).await;
    assert!(t0.elapsed() < Duration::from_secs(3), "visibility 0 should make it visible at once");
    assert_eq!(again.receive_count, 2);

    // Heartbeat: extend to 4 s; the queue's own 1 s timeout must not bring it back.
    q.set_visibility(&again.receipt, Duration::from_secs(4)).await.expect("extend");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_nothing_visible(&*q, "an extended message reappeared early").await;
    let back = receive_one(&*q, Duration::from_secs(6)).await;
    assert_eq!(back.receive_count, 3);

    // Stale: after delete, the receipt no longer acts on anything.
    assert!(q.delete_batch(std::slice::from_ref(&back.receipt)).await.expect("delete").is_empty());
    let err = q.set_visibility(&back.receipt, Duration::ZERO).await;
    assert!(err.is_err(), "set_visibility with the receipt of a deleted message must fail");
    assert_nothing_visible(&*q, "stale set_visibility resurrected a message").await;
}

/// A message received more than `max_receive_count` times is moved to the DLQ by `receive`
/// itself, is not returned, and keeps its body; a redrive-policy move has no reason.
pub async fn queue_auto_dead_letter(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(2), max_receive_count: 2 }).await;
    q.send("poison", Duration::ZERO).await.expect("send");
    for n in 1..=2u32 {
        let m = receive_one(&*q, Duration::from_secs(5)).await;
        assert_eq!(m.receive_count, n);
        q.set_visibility(&m.receipt, Duration::ZERO).await.expect("give back");
    }
    // The third receive would exceed the limit: the queue dead-letters it instead.
    let got = receive_n(&*q, 1, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "a message past max_receive_count was delivered: {got:?}");
    let dlq = q.dlq_peek(10).await.expect("peek");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].body, "poison");
    assert_eq!(dlq[0].reason, None, "redrive-policy moves carry no reason");
    assert_eq!(dlq[0].receive_count, 2, "receives before it was dead-lettered");
    let d = q.depth().await.expect("depth");
    assert!(d.is_drained(), "{d:?}");
    assert_eq!(d.dead_letters, 1);
}

/// A message the queue's redrive policy moved keeps no caller secret in the DLQ once scrubbed:
/// no `apiKey`, header values `[redacted]`, its kind and receive count as before.
pub async fn queue_dead_letters_keep_no_caller_secrets(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(2), max_receive_count: 1 }).await;
    let body = serde_json::json!({
        "job_id": "secret-poison", "url": "https://example.com/", "apiKey": "sk-live-abcdefghijklmnopqrstuvwx",
        "headers": {"Authorization": "Bearer header-secret-123"}, "callback_url": "https://hooks.example/h",
        "callback_headers": {"X-Receiver-Key": "receiver-secret-456"}
    })
    .to_string();
    q.send(&body, Duration::ZERO).await.expect("send");
    q.send("plain body, nothing secret", Duration::ZERO).await.expect("send");
    for m in receive_n(&*q, 2, Duration::from_secs(5)).await {
        q.set_visibility(&m.receipt, Duration::ZERO).await.expect("give back");
    }
    assert!(receive_n(&*q, 1, Duration::from_secs(3)).await.is_empty(), "both went to the DLQ");
    q.dlq_scrub(10).await.expect("scrub");
    let _ = q.dlq_peek(10).await.expect("a look at the DLQ");
    let dlq = q.dlq_peek(10).await.expect("peek");
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    for d in &dlq {
        for secret in ["sk-live-abcdefghijklmnopqrstuvwx", "header-secret-123", "receiver-secret-456"] {
            assert!(!d.body.contains(secret), "a dead letter keeps {secret}: {}", d.body);
        }
        assert_eq!((d.kind(), d.receive_count), ("receive_limit", 1), "{d:?}");
    }
    assert!(dlq.iter().any(|d| d.body == "plain body, nothing secret"), "a body without secrets is left as it was");
    let scrubbed = dlq.iter().find(|d| d.body.contains("secret-poison")).expect("the job's dead letter");
    assert!(scrubbed.body.contains("\"X-Receiver-Key\":\"[redacted]\""), "header names kept: {}", scrubbed.body);
    assert_eq!(q.dlq_scrub(10).await.expect("scrub again"), 0, "nothing left to scrub");
    assert_eq!(q.depth().await.expect("depth").dead_letters, 2);
}

/// `dead_letter` moves a message to the DLQ at once, with its reason, on its first receive.
pub async fn queue_dead_letter_with_reason(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(1), max_receive_count: 5 }).await;
    q.send("bad-message", Duration::ZERO).await.expect("send");
    let m = receive_one(&*q, Duration::from_secs(5)).await;
    q.dead_letter(&m, "invalid_message").await.expect("dead_letter");
    let dlq = q.dlq_peek(10).await.expect("peek");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].body, "bad-message");
    assert_eq!(dlq[0].reason.as_deref(), Some("invalid_message"));
    assert_eq!(dlq[0].receive_count, 1);
    // Gone from the queue, even after its visibility timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_nothing_visible(&*q, "a dead-lettered message is still on the queue").await;
    let d = q.depth().await.expect("depth");
    assert!(d.is_drained(), "{d:?}");
    assert_eq!(d.dead_letters, 1);
}

/// `dlq_peek` lists without consuming and honours `max`.
pub async fn queue_dlq_peek_does_not_consume(make: &MakeQueue) {
    let q = make(QueueSpec::default()).await;
    q.send_batch(&["d1".to_string(), "d2".to_string()]).await.expect("send");
    let ms = receive_n(&*q, 2, Duration::from_secs(5)).await;
    assert_eq!(ms.len(), 2);
    for m in &ms {
        q.dead_letter(m, "test").await.expect("dead_letter");
    }
    for _ in 0..2 {
        let dlq = q.dlq_peek(10).await.expect("peek");
        let bodies: BTreeSet<_> = dlq.iter().map(|d| d.body.as_str()).collect();
        assert_eq!(bodies, BTreeSet::from(["d1", "d2"]), "peek must not consume");
    }
    assert_eq!(q.dlq_peek(1).await.expect("peek").len(), 1, "peek honours max");
    assert_eq!(q.depth().await.expect("depth").dead_letters, 2);
}

/// `dlq_peek` sees past the first receive batch: every dead letter up to `max`, twice in a row
/// (what one peek saw is visible again to the next).
pub async fn queue_dlq_peek_sees_more_than_one_batch(make: &MakeQueue) {
    let q = make(QueueSpec::default()).await;
    let bodies: Vec<String> = (0..25).map(|i| format!("many-{i}")).collect();
    q.send_batch(&bodies).await.expect("send");
    let ms = receive_n(&*q, 25, Duration::from_secs(10)).await;
    assert_eq!(ms.len(), 25);
    for m in &ms {
        q.dead_letter(m, "test").await.expect("dead_letter");
    }
    let want: BTreeSet<&str> = bodies.iter().map(String::as_str).collect();
    for round in 0..2 {
        let dlq = q.dlq_peek(100).await.expect("peek");
        let got: BTreeSet<&str> = dlq.iter().map(|d| d.body.as_str()).collect();
        assert_eq!(got, want, "peek {round} lists all 25");
    }
    assert_eq!(q.dlq_peek(12).await.expect("peek").len(), 12, "peek honours max across batches");
}

/// `dlq_redrive(plan)` moves what the plan selects, by kind, within its bounds, back with receive
/// counts reset; what it leaves stays in the DLQ.
pub async fn queue_dlq_redrive(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(2), max_receive_count: 2 }).await;
    q.send_batch(&["r1".to_string(), "r2".to_string()]).await.expect("send");
    // Both reach receive count 2, then the queue dead-letters them (kind `receive_limit`).
    let mut last = Vec::new();
    for _ in 0..2 {
        let ms = receive_n(&*q, 2, Duration::from_secs(5)).await;
        assert_eq!(ms.len(), 2);
        last = ms;
        for m in &last {
            q.set_visibility(&m.receipt, Duration::ZERO).await.expect("give back");
        }
    }
    let hand = receive_n(&*q, 2, Duration::from_secs(3)).await;
    assert!(hand.is_empty(), "both passed max_receive_count: {hand:?}");
    assert!(last.iter().all(|m| m.receive_count == 2));
    // Two more dead-lettered by the worker: one permanent, one out of retries.
    q.send_batch(&["p1".to_string(), "t1".to_string()]).await.expect("send");
    for m in receive_n(&*q, 2, Duration::from_secs(5)).await {
        let reason = if m.body == "p1" { "invalid_message: not a job" } else { "retries_exhausted: gave up after 2 attempts" };
        q.dead_letter(&m, reason).await.expect("dead_letter");
    }
    assert_eq!(q.depth().await.expect("depth").dead_letters, 4);
    let kinds: BTreeMap<String, usize> = q.dlq_peek(10).await.expect("peek").iter().fold(BTreeMap::new(), |mut m, d| {
        *m.entry(d.kind().to_string()).or_default() += 1;
        m
    });
    assert_eq!(kinds, BTreeMap::from([("invalid_message".into(), 1), ("receive_limit".into(), 2), ("retries_exhausted".into(), 1)]));

    let plan = |examine: u64, max_moved: u64, select: RedriveSelect| RedrivePlan { examine, max_moved, select };
    // At most `max_moved`, of the retryable kinds only.
    let r = q.dlq_redrive(&plan(4, 1, RedriveSelect::Retryable)).await.expect("redrive 1");
    assert_eq!(r.moved_total(), 1, "{r:?}");
    assert!(!r.moved.contains_key("invalid_message"), "{r:?}");
    assert_eq!(q.dlq_peek(10).await.expect("peek").len(), 3);
    // No more than `examine` looked at.
    let r =
        q.dlq_redrive(&plan(1, u64::MAX, RedriveSelect::Kinds(BTreeSet::from(["nothing_like_it".to_string()])))).await.expect("examine 1");
    assert_eq!((r.examined(), r.moved_total()), (1, 0), "{r:?}");
    // The rest of the retryable ones; the permanent one is left, and said so.
    let r = q.dlq_redrive(&plan(10, u64::MAX, RedriveSelect::Retryable)).await.expect("redrive retryable");
    assert_eq!(r.moved_total(), 2, "{r:?}");
    assert_eq!(r.left, BTreeMap::from([("invalid_message".to_string(), 1)]));
    let dlq = q.dlq_peek(10).await.expect("peek");
    assert_eq!(dlq.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(), ["p1"], "what is left stays in the DLQ");
    // Named, a permanent kind moves.
    let r = q
        .dlq_redrive(&plan(10, u64::MAX, RedriveSelect::Kinds(BTreeSet::from(["invalid_message".to_string()]))))
        .await
        .expect("redrive by kind");
    assert_eq!(r.moved, BTreeMap::from([("invalid_message".to_string(), 1)]));
    assert!(q.dlq_peek(10).await.expect("peek").is_empty());
    assert_eq!(q.dlq_redrive(&plan(10, u64::MAX, RedriveSelect::All)).await.expect("redrive empty").moved_total(), 0);

    let back = receive_n(&*q, 4, Duration::from_secs(5)).await;
    let bodies: BTreeSet<_> = back.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, BTreeSet::from(["p1", "r1", "r2", "t1"]));
    for m in &back {
        assert_eq!(m.receive_count, 1, "redrive resets the receive count");
    }
    let receipts: Vec<String> = back.iter().map(|m| m.receipt.clone()).collect();
    assert!(q.delete_batch(&receipts).await.expect("delete").is_empty());
}

/// `delete_batch` deletes the good receipts and returns the bad one without failing the batch.
pub async fn queue_delete_batch_partial(make: &MakeQueue) {
    let q = make(QueueSpec::default()).await;
    q.send_batch(&["x1".to_string(), "x2".to_string(), "x3".to_string()]).await.expect("send");
    let ms = receive_n(&*q, 3, Duration::from_secs(5)).await;
    assert_eq!(ms.len(), 3);
    let bogus = "not-a-receipt-this-queue-ever-issued".to_string();
    let mut receipts: Vec<String> = ms.iter().map(|m| m.receipt.clone()).collect();
    receipts.insert(1, bogus.clone());
    let failed = q.delete_batch(&receipts).await.expect("delete_batch must not fail for one bad entry");
    assert_eq!(failed, vec![bogus]);
    assert!(q.delete_batch(&[]).await.expect("empty batch").is_empty());
    let d = q.depth().await.expect("depth");
    assert!(d.is_drained(), "the good receipts were deleted: {d:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_nothing_visible(&*q, "a deleted message came back").await;
}

/// `send` with a delay keeps the message invisible (counted as delayed) for that long; delays
/// over 15 minutes are refused.
pub async fn queue_delayed_send(make: &MakeQueue) {
    let q = make(QueueSpec::default()).await;
    let t0 = Instant::now();
    q.send("later", Duration::from_secs(2)).await.expect("send");
    let d = q.depth().await.expect("depth");
    assert_eq!((d.visible, d.delayed), (0, 1), "{d:?}");
    let early = q.receive(10, Duration::ZERO).await.expect("receive");
    assert!(early.is_empty(), "a delayed message was delivered early");
    let m = receive_one(&*q, Duration::from_secs(8)).await;
    assert!(t0.elapsed() >= Duration::from_millis(1500), "delivered after {:?}", t0.elapsed());
    assert_eq!(m.body, "later");
    assert_eq!(m.receive_count, 1);
    assert!(q.send("too-late", Duration::from_secs(16 * 60)).await.is_err(), "delay > 15 min");
}

/// `receive` waits up to `wait` for the first message (long poll) and returns as soon as one
/// arrives; on an empty queue it returns empty after about `wait`.
pub async fn queue_long_poll(make: &MakeQueue) {
    let q = make(QueueSpec::default()).await;
    let t0 = Instant::now();
    let got = q.receive(10, SEC).await.expect("receive");
    assert!(got.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(900), "returned after {:?}, not a long poll", t0.elapsed());

    let sender = q.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(SEC).await;
        sender.send("arrives-later", Duration::ZERO).await.expect("send");
    });
    let t0 = Instant::now();
    let mut got = Vec::new();
    // One long poll of up to 10 s (retried once in case an emulator returns early and empty).
    for _ in 0..2 {
        got = q.receive(1, Duration::from_secs(10)).await.expect("receive");
        if !got.is_empty() {
            break;
        }
    }
    let waited = t0.elapsed();
    task.await.expect("sender task");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, "arrives-later");
    assert!(waited < Duration::from_secs(6), "long poll did not return on arrival ({waited:?})");
}

/// `receive` returns at most `max`; `send_batch` takes more than one SQS batch (12 bodies) and
/// every message is delivered exactly once while unexpired; depth counts them.
pub async fn queue_batches_and_max(make: &MakeQueue) {
    let q = make(QueueSpec { visibility_timeout: Duration::from_secs(30), max_receive_count: 3 }).await;
    let bodies: Vec<String> = (0..12).map(|i| format!("b{i:02}")).collect();
    q.send_batch(&bodies).await.expect("send_batch");
    q.send_batch(&[]).await.expect("empty send_batch");
    let d = q.depth().await.expect("depth");
    assert_eq!(d.visible, 12, "{d:?}");
    let two = q.receive(2, SEC).await.expect("receive");
    assert!(!two.is_empty() && two.len() <= 2, "receive(2) gave {}", two.len());
    let rest = receive_n(&*q, 12 - two.len(), Duration::from_secs(10)).await;
    let all: Vec<&Message> = two.iter().chain(rest.iter()).collect();
    let got: BTreeSet<&str> = all.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(all.len(), 12, "each message delivered once");
    assert_eq!(got, bodies.iter().map(String::as_str).collect());
    let ids: BTreeSet<&str> = all.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), 12, "message ids are distinct");
    let d = q.depth().await.expect("depth");
    assert_eq!((d.visible, d.in_flight), (0, 12), "{d:?}");
    let receipts: Vec<String> = all.iter().map(|m| m.receipt.clone()).collect();
    assert!(q.delete_batch(&receipts).await.expect("delete 12").is_empty());
    assert!(q.depth().await.expect("depth").is_drained());
}

/// Runs every queue check in turn.
pub async fn queue_contract(make: &MakeQueue) {
    queue_send_receive_delete(make).await;
    queue_visibility_and_redelivery(make).await;
    queue_set_visibility(make).await;
    queue_auto_dead_letter(make).await;
    queue_dead_letters_keep_no_caller_secrets(make).await;
    queue_dead_letter_with_reason(make).await;
    queue_dlq_peek_does_not_consume(make).await;
    queue_dlq_peek_sees_more_than_one_batch(make).await;
    queue_dlq_redrive(make).await;
    queue_delete_batch_partial(make).await;
    queue_delayed_send(make).await;
    queue_long_poll(make).await;
    queue_batches_and_max(make).await;
}

/// One `#[tokio::test]` per queue check, against the [`MakeQueue`] expression given.
macro_rules! queue_tests {
    ($make:expr) => {
        $crate::support::conformance::__tests!(make_queue_: $make; MakeQueue;
            queue_send_receive_delete, queue_visibility_and_redelivery, queue_set_visibility,
            queue_auto_dead_letter, queue_dead_letters_keep_no_caller_secrets, queue_dead_letter_with_reason, queue_dlq_peek_does_not_consume,
            queue_dlq_peek_sees_more_than_one_batch, queue_dlq_redrive, queue_delete_batch_partial, queue_delayed_send, queue_long_poll,
            queue_batches_and_max);
    };
}
pub(crate) use queue_tests;

// =============================================================================================
// Job store

fn t(base: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    base + ChronoDuration::seconds(secs)
}

fn claimed(c: Claim) -> JobRecord {
    match c {
        Claim::Claimed(r) => r,
        other => panic!("expected Claimed, got {other:?}"),
    }
}

fn is_conflict(r: Result<(), BackendError>) -> bool {
    matches!(r, Err(BackendError::Conflict(_)))
}

/// Claiming an unknown job creates it as `processing` with the caller's lease, attempt 1, stage.
pub async fn jobs_claim_creates(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("new");
    let now = Utc::now();
    let rec = claimed(s.claim(&id, "teststage", "w1", t(now, 60), now).await.expect("claim"));
    assert_eq!(rec.id, id);
    assert_eq!(rec.status, JobStatus::Processing);
    assert_eq!(rec.stage, "teststage");
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.lease_owner.as_deref(), Some("w1"));
    assert_eq!(rec.lease_expires_at, Some(t(now, 60)));
    let stored = s.get(&id).await.expect("get").expect("stored");
    assert_eq!(stored, rec, "get returns the record as stored after the claim");
    assert!(s.get(&uniq("absent")).await.expect("get").is_none());
}

/// A live lease held by another worker gives `Busy` (with owner and expiry) and changes nothing;
/// once it has expired another worker takes over, and the old owner can neither renew nor finish.
pub async fn jobs_busy_then_expired_takeover(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("lease");
    let now = Utc::now();
    claimed(s.claim(&id, "st", "w1", t(now, 30), now).await.expect("claim"));
    match s.claim(&id, "st", "w2", t(now, 60), t(now, 10)).await.expect("claim") {
        Claim::Busy { owner, until } => {
            assert_eq!(owner, "w1");
            assert_eq!(until, t(now, 30));
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    let r = s.get(&id).await.expect("get").expect("stored");
    assert_eq!((r.attempts, r.lease_owner.as_deref()), (1, Some("w1")), "Busy changes nothing");

    // w1's lease ran out at +30; at +31 w2 takes over.
    let r2 = claimed(s.claim(&id, "st", "w2", t(now, 91), t(now, 31)).await.expect("claim"));
    assert_eq!(r2.attempts, 2);
    assert_eq!(r2.lease_owner.as_deref(), Some("w2"));
    assert_eq!(r2.lease_expires_at, Some(t(now, 91)));
    assert!(!s.renew(&id, "w1", t(now, 120)).await.expect("renew"), "w1 lost the lease");
    let mut done = r2.clone();
    done.status = JobStatus::Completed;
    done.lease_owner = None;
    done.lease_expires_at = None;
    assert!(is_conflict(s.finish(&done, "w1").await), "w1 must not finish w2's job");
    s.finish(&done, "w2").await.expect("w2 finishes");
}

/// `renew` extends only the owner's lease; others get `false`; the new expiry is what `Busy` reports.
pub async fn jobs_renew(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("renew");
    let now = Utc::now();
    claimed(s.claim(&id, "st", "w1", t(now, 30), now).await.expect("claim"));
    assert!(s.renew(&id, "w1", t(now, 300)).await.expect("renew"));
    assert!(!s.renew(&id, "w2", t(now, 900)).await.expect("renew by other"));
    assert!(!s.renew(&uniq("absent"), "w1", t(now, 900)).await.expect("renew absent"));
    // At +100 the original lease would have expired; the renewed one has not.
    match s.claim(&id, "st", "w2", t(now, 400), t(now, 100)).await.expect("claim") {
        Claim::Busy { owner, until } => {
            assert_eq!(owner, "w1");
            assert_eq!(until, t(now, 300));
        }
        other => panic!("renew did not extend the lease: {other:?}"),
    }
    let r = s.get(&id).await.expect("get").expect("stored");
    assert_eq!(r.lease_expires_at, Some(t(now, 300)));
}

/// `finish` writes the whole record while the owner holds the lease; a completed job gives
/// `AlreadyCompleted`; finishing twice, or by a non-owner, is a `Conflict`.
pub async fn jobs_finish_and_already_completed(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("done");
    let now = Utc::now();
    let mut r = claimed(s.claim(&id, "st", "w1", t(now, 60), now).await.expect("claim"));

    let mut stranger = r.clone();
    stranger.status = JobStatus::Completed;
    assert!(is_conflict(s.finish(&stranger, "w2").await), "a non-owner's finish is a Conflict");
    assert_eq!(s.get(&id).await.expect("get").expect("stored").status, JobStatus::Processing);

    r.status = JobStatus::Completed;
    r.lease_owner = None;
    r.lease_expires_at = None;
    r.updated_at = t(now, 5);
    r.model = Some("model-x".into());
    r.data = Some(serde_json::json!({"title": "ok", "n": 3}));
    r.cost_micros = 1234;
    s.finish(&r, "w1").await.expect("finish");
    assert_eq!(s.get(&id).await.expect("get").expect("stored"), r, "finish writes the whole record");
    assert!(is_conflict(s.finish(&r, "w1").await), "finish needs stored status processing");

    match s.claim(&id, "st", "w3", t(now, 120), t(now, 10)).await.expect("claim") {
        Claim::AlreadyCompleted(rec) => assert_eq!(rec, r),
        other => panic!("expected AlreadyCompleted, got {other:?}"),
    }
    assert_eq!(s.get(&id).await.expect("get").expect("stored"), r, "claim of a completed job changes nothing");
    let missing = JobRecord::new(&uniq("never"), "st", now);
    assert!(is_conflict(s.finish(&missing, "w1").await), "finish of an unknown job is a Conflict");
}

/// An end's announcement is written with the end, survives a claim, and is updated by
/// `set_announcement` only while the record still announces that end; nothing else changes.
pub async fn jobs_set_announcement_only_for_the_same_end(make: &MakeJobs) {
    use atlas_codex::events::{Announcement, DeliveryState};
    let s = make().await;
    let id = uniq("ann");
    let now = Utc::now();
    let pending = Announcement::pending(&JobRecord::new(&id, "st", now), None, None);
    assert!(pending.is_none(), "a pending record is no end");
    assert!(!s.set_announcement(&uniq("nobody"), &ann_of(&id, 1)).await.expect("set"), "no record: false");

    let mut r = claimed(s.claim(&id, "st", "w1", t(now, 60), now).await.expect("claim"));
    r.status = JobStatus::Failed;
    r.error = Some(atlas_codex::job::ErrorInfo { kind: "ssrf_blocked".into(), message: "refused".into(), permanent: true });
    r.lease_owner = None;
    r.lease_expires_at = None;
    let callback = atlas_codex::job::Callback { url: "https://hooks.example/x?token=t".into(), headers: Default::default() };
    r.announcement = Announcement::pending(&r, Some("m-1"), Some(&callback));
    let first = r.announcement.clone().expect("an end is announced");
    assert_eq!(first.event_id, format!("{id}:job.failed:1"));
    assert_eq!(first.webhook.as_ref().map(|w| w.url.as_str()), Some("https://hooks.example/x"));
    s.finish(&r, "w1").await.expect("finish");
    assert_eq!(s.get(&id).await.expect("get").expect("stored").announcement.as_ref(), Some(&first), "written with the end");

    let mut published = first.clone();
    published.published = true;
    assert!(s.set_announcement(&id, &published).await.expect("set"));
    let stored = s.get(&id).await.expect("get").expect("stored");
    assert_eq!(stored.announcement.as_ref(), Some(&published));
    assert_eq!(JobRecord { announcement: r.announcement.clone(), ..stored.clone() }, r, "nothing else changed");

    // A later end (a redrive that ran again) supersedes it; the old end's late update is refused.
    let mut again = claimed(s.claim(&id, "st", "w2", t(now, 60), t(now, 1)).await.expect("claim failed job"));
    assert_eq!(again.announcement.as_ref(), Some(&published), "a claim keeps the announcement");
    again.status = JobStatus::Completed;
    again.error = None;
    again.lease_owner = None;
    again.lease_expires_at = None;
    again.announcement = Announcement::pending(&again, Some("m-2"), None);
    s.finish(&again, "w2").await.expect("finish");
    let mut late = published.clone();
    late.webhook.as_mut().expect("webhook").state = DeliveryState::Delivered;
    assert!(!s.set_announcement(&id, &late).await.expect("set"), "an older end's update is refused");
    let stored = s.get(&id).await.expect("get").expect("stored");
    assert_eq!(stored.announcement.map(|a| a.event_id), Some(format!("{id}:job.completed:2")));
}

fn ann_of(id: &str, attempts: u32) -> atlas_codex::events::Announcement {
    let mut r = JobRecord::new(id, "st", Utc::now());
    r.status = JobStatus::Completed;
    r.attempts = attempts;
    atlas_codex::events::Announcement::pending(&r, None, None).expect("completed is an end")
}

/// `pending` and `failed` jobs can be claimed again; `attempts` counts and earlier calls and
/// costs are kept.
pub async fn jobs_reclaim_pending_and_failed(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("again");
    let now = Utc::now();
    let mut r = claimed(s.claim(&id, "st", "w1", t(now, 60), now).await.expect("claim"));
    r.status = JobStatus::Pending;
    r.pending_reason = Some(atlas_codex::job::PendingReason::Retry);
    r.lease_owner = None;
    r.lease_expires_at = None;
    r.calls.push(Attempt {
        model: "model-x".into(),
        outcome: atlas_codex::job::CallOutcome::InvalidOutput,
        usage: Usage { input_tokens: 100, cached_input_tokens: 0, output_tokens: 20, reasoning_tokens: 0 },
        cost_micros: 77,
        latency_ms: 12,
        chunk: None,
        reservation_id: Some("res-1".into()),
        period: Some("2026-11".into()),
        settled: true,
        estimated: false,
        claimed_usage: None,
    });
    r.cost_micros = 77;
    s.finish(&r, "w1").await.expect("finish pending");

    let r2 = claimed(s.claim(&id, "st", "w2", t(now, 160), t(now, 100)).await.expect("claim pending"));
    assert_eq!(r2.attempts, 2);
    assert_eq!(r2.status, JobStatus::Processing);
    assert_eq!(r2.calls, r.calls, "earlier calls kept");
    assert_eq!(r2.cost_micros, 77, "earlier cost kept");
    assert!(r2.updated_at >= r.updated_at);

    let mut f = r2.clone();
    f.status = JobStatus::Failed;
    f.lease_owner = None;
    f.lease_expires_at = None;
    s.finish(&f, "w2").await.expect("finish failed");
    assert_eq!(s.get(&id).await.expect("get").expect("stored").status, JobStatus::Failed);

    // failed → processing (DLQ redrive).
    let r3 = claimed(s.claim(&id, "st", "w3", t(now, 260), t(now, 200)).await.expect("claim failed"));
    assert_eq!(r3.attempts, 3);
    assert_eq!(r3.lease_owner.as_deref(), Some("w3"));
    assert_eq!(r3.cost_micros, 77);
}

/// `put_if_absent` creates once and never overwrites; a put `pending` job is claimable.
pub async fn jobs_put_if_absent(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("put");
    let now = Utc::now();
    let mut rec = JobRecord::new(&id, "st", now);
    rec.url = Some("https://example.com/".into());
    rec.tenant = Some("acme".into());
    assert!(s.put_if_absent(&rec).await.expect("put"));
    let mut other = rec.clone();
    other.url = Some("https://other.example/".into());
    assert!(!s.put_if_absent(&other).await.expect("put again"), "an existing record is kept");
    assert_eq!(s.get(&id).await.expect("get").expect("stored"), rec);
    let c = claimed(s.claim(&id, "st", "w1", t(now, 60), now).await.expect("claim"));
    assert_eq!(c.attempts, 1);
    assert_eq!(c.url, rec.url);
    assert_eq!(c.tenant.as_deref(), Some("acme"));
}

/// `list` is newest first, filters by status and honours the limit.
pub async fn jobs_list(make: &MakeJobs) {
    let s = make().await;
    let base = Utc::now() - ChronoDuration::hours(1);
    let mut ids = Vec::new();
    for (i, status) in [JobStatus::Pending, JobStatus::Completed, JobStatus::Pending, JobStatus::Failed].iter().enumerate() {
        let id = uniq(&format!("list{i}"));
        let mut r = JobRecord::new(&id, "st", t(base, i as i64 * 10));
        r.status = *status;
        assert!(s.put_if_absent(&r).await.expect("put"));
        ids.push(id);
    }
    let all: Vec<String> = s.list(None, 100).await.expect("list").into_iter().map(|r| r.id).collect();
    let expected: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(all, expected, "newest first");
    let pending: Vec<String> = s.list(Some(JobStatus::Pending), 100).await.expect("list").into_iter().map(|r| r.id).collect();
    assert_eq!(pending, vec![ids[2].clone(), ids[0].clone()]);
    let failed = s.list(Some(JobStatus::Failed), 100).await.expect("list");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, JobStatus::Failed);
    assert!(s.list(Some(JobStatus::Processing), 100).await.expect("list").is_empty());
    let two: Vec<String> = s.list(None, 2).await.expect("list").into_iter().map(|r| r.id).collect();
    assert_eq!(two, vec![ids[3].clone(), ids[2].clone()], "limit keeps the newest");
}

/// `oldest` lists one status oldest first, and its limit keeps the oldest.
pub async fn jobs_oldest(make: &MakeJobs) {
    let s = make().await;
    let base = Utc::now() - ChronoDuration::hours(1);
    let mut ids = Vec::new();
    for (i, status) in [JobStatus::Pending, JobStatus::Completed, JobStatus::Pending, JobStatus::Pending].iter().enumerate() {
        let id = uniq(&format!("old{i}"));
        let mut r = JobRecord::new(&id, "st", t(base, i as i64 * 10));
        r.status = *status;
        assert!(s.put_if_absent(&r).await.expect("put"));
        ids.push(id);
    }
    let pending: Vec<String> = s.oldest(JobStatus::Pending, 100).await.expect("oldest").into_iter().map(|r| r.id).collect();
    assert_eq!(pending, vec![ids[0].clone(), ids[2].clone(), ids[3].clone()], "oldest first, one status");
    let two: Vec<String> = s.oldest(JobStatus::Pending, 2).await.expect("oldest").into_iter().map(|r| r.id).collect();
    assert_eq!(two, vec![ids[0].clone(), ids[2].clone()], "limit keeps the oldest");
    assert!(s.oldest(JobStatus::Processing, 100).await.expect("oldest").is_empty());
}

/// The sweep (`atlas_codex::sweep`) marks a record a dead worker left `processing` at the
/// queue's receive limit as `failed` / `receive_limit`, and nothing else: not a record claimed
/// fewer times, not one whose lease is live or expired within the visibility timeout.
pub async fn jobs_sweep_marks_only_records_left_at_the_receive_limit(make: &MakeJobs) {
    let s = make().await;
    let mut settings = atlas_codex::settings::Settings::default();
    settings.queue.max_receive_count = 2;
    settings.queue.visibility_timeout_secs = 30;
    let now = Utc::now();
    let t0 = now - ChronoDuration::hours(1);
    let claim = |id: String, owner: &'static str, lease: DateTime<Utc>, at: DateTime<Utc>| {
        let s = s.clone();
        async move {
            let c = s.claim(&id, "st", owner, lease, at).await.expect("claim");
            assert!(matches!(c, Claim::Claimed(_)), "{c:?}");
        }
    };
    // Claimed twice (the limit), both workers died; the last lease ran out long ago.
    let dead = uniq("dead");
    claim(dead.clone(), "w1", t(t0, 60), t0).await;
    claim(dead.clone(), "w2", t(t0, 200), t(t0, 100)).await;
    // Claimed once: the queue still delivers it.
    let once = uniq("once");
    claim(once.clone(), "w1", t(t0, 60), t0).await;
    // At the limit, but the lease ran out 10 s ago (within the visibility timeout).
    let recent = uniq("recent");
    claim(recent.clone(), "w1", t(now, -100), t(now, -200)).await;
    claim(recent.clone(), "w2", t(now, -10), t(now, -90)).await;
    // At the limit with a live lease.
    let live = uniq("live");
    claim(live.clone(), "w1", t(now, -100), t(now, -200)).await;
    claim(live.clone(), "w2", t(now, 60), t(now, -50)).await;

    let marked = atlas_codex::sweep::sweep_once(s.as_ref(), &settings, "sweeper", now).await.expect("sweep");
    assert_eq!(marked, 1);
    let r = s.get(&dead).await.expect("get").expect("record");
    assert_eq!(r.status, JobStatus::Failed);
    let e = r.error.expect("error kept");
    assert_eq!((e.kind.as_str(), e.permanent), ("receive_limit", true), "{e:?}");
    assert_eq!(r.attempts, 2, "the sweep is not an attempt");
    assert!(r.lease_owner.is_none() && r.lease_expires_at.is_none());
    for id in [&once, &recent, &live] {
        assert_eq!(s.get(id).await.expect("get").expect("record").status, JobStatus::Processing, "{id}");
    }
    assert_eq!(atlas_codex::sweep::sweep_once(s.as_ref(), &settings, "sweeper", now).await.expect("sweep"), 0, "nothing left");
    // A later delivery (a redrive) claims the failed record again.
    assert!(matches!(s.claim(&dead, "st", "w3", t(now, 60), now).await.expect("claim"), Claim::Claimed(_)));
}

/// The DLQ pass of the sweep (`atlas_codex::sweep::sweep_dead_letters`): a record whose message
/// the queue moved to the DLQ after more receives than claims (a worker died between receive and
/// claim) is made terminal as `receive_limit`; records with a live lease or already terminal are
/// left alone, and the DLQ keeps its messages. `queue` must have a visibility timeout of 1 s and
/// a receive limit of 2, and be empty, like its DLQ.
pub async fn sweep_marks_records_whose_message_was_dead_lettered(queue: Arc<dyn Queue>, jobs: Arc<dyn JobStore>) {
    let mut settings = atlas_codex::settings::Settings { stage: "st".into(), ..Default::default() };
    settings.queue.max_receive_count = 2;
    let now = Utc::now();
    let past = now - ChronoDuration::hours(1);
    let id = |p: &str| format!("{p}-{}", uuid::Uuid::new_v4().simple());
    let (stuck, live, done, never) = (id("stuck"), id("live"), id("done"), id("never"));
    let body = |id: &str| serde_json::json!({"job_id": id, "text": "Ridge tent, $120.", "schema": {"type": "object"}}).to_string();
    for j in [&stuck, &live, &done, &never] {
        queue.send(&body(j), Duration::ZERO).await.expect("send");
    }
    // Claimed once each (below the receive limit): the plain sweep cannot tell these are stuck.
    let claimed = |c: Claim| match c {
        Claim::Claimed(r) => r,
        other => panic!("{other:?}"),
    };
    claimed(jobs.claim(&stuck, "st", "w1", past + ChronoDuration::seconds(60), past).await.expect("claim"));
    claimed(jobs.claim(&live, "st", "w1", now + ChronoDuration::seconds(600), now).await.expect("claim"));
    let mut rec = claimed(jobs.claim(&done, "st", "w1", now + ChronoDuration::seconds(60), now).await.expect("claim"));
    rec.status = JobStatus::Completed;
    jobs.finish(&rec, "w1").await.expect("finish");
    // Received past the limit and never claimed again: the queue moves them to the DLQ.
    let deadline = Instant::now() + Duration::from_secs(15);
    while queue.dlq_peek(10).await.expect("peek").len() < 4 {
        assert!(Instant::now() < deadline, "the queue did not dead-letter the messages");
        let _ = queue.receive(10, Duration::ZERO).await.expect("receive");
        tokio::time::sleep(Duration::from_millis(1_100)).await;
    }
    assert_eq!(atlas_codex::sweep::sweep_once(jobs.as_ref(), &settings, "sweeper", Utc::now()).await.expect("sweep"), 0);

    let marked =
        atlas_codex::sweep::sweep_dead_letters(queue.as_ref(), jobs.as_ref(), &settings, "sweeper", Utc::now()).await.expect("dlq sweep");
    assert_eq!(marked, 1, "only the stuck record");
    let r = jobs.get(&stuck).await.expect("get").expect("record");
    assert_eq!(r.status, JobStatus::Failed);
    let e = r.error.expect("error");
    assert_eq!((e.kind.as_str(), e.permanent), ("receive_limit", true), "{e:?}");
    assert!(e.message.contains("dead-letter queue"), "{e:?}");
    assert_eq!(r.attempts, 1, "the sweep is not an attempt");
    assert_eq!(jobs.get(&live).await.expect("get").expect("record").status, JobStatus::Processing, "a live lease is left alone");
    assert_eq!(jobs.get(&done).await.expect("get").expect("record").status, JobStatus::Completed);
    assert!(jobs.get(&never).await.expect("get").is_none(), "no record, nothing to mark");
    assert_eq!(queue.dlq_peek(10).await.expect("peek").len(), 4, "the DLQ keeps its messages");
    let again = atlas_codex::sweep::sweep_dead_letters(queue.as_ref(), jobs.as_ref(), &settings, "sweeper", Utc::now()).await;
    assert_eq!(again.expect("dlq sweep"), 0, "nothing left");
}

/// Concurrent claims of one job: exactly one worker gets it.
pub async fn jobs_concurrent_claim(make: &MakeJobs) {
    let s = make().await;
    let id = uniq("race");
    let now = Utc::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (s, id) = (s.clone(), id.clone());
        tasks.push(tokio::spawn(async move { s.claim(&id, "st", &format!("w{w}"), t(now, 60), now).await.expect("claim") }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("task") {
            Claim::Claimed(_) => winners += 1,
            Claim::Busy { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one concurrent claim wins");
    assert_eq!(s.get(&id).await.expect("get").expect("stored").attempts, 1);
}

/// Runs every job store check in turn.
pub async fn job_store_contract(make: &MakeJobs) {
    jobs_claim_creates(make).await;
    jobs_busy_then_expired_takeover(make).await;
    jobs_renew(make).await;
    jobs_finish_and_already_completed(make).await;
    jobs_reclaim_pending_and_failed(make).await;
    jobs_put_if_absent(make).await;
    jobs_set_announcement_only_for_the_same_end(make).await;
    jobs_list(make).await;
    jobs_concurrent_claim(make).await;
}

/// One `#[tokio::test]` per job store check, against the [`MakeJobs`] expression given.
macro_rules! job_store_tests {
    ($make:expr) => {
        $crate::support::conformance::__tests!(make_jobs_: $make; MakeJobs;
            jobs_claim_creates, jobs_busy_then_expired_takeover, jobs_renew,
            jobs_finish_and_already_completed, jobs_reclaim_pending_and_failed, jobs_put_if_absent,
            jobs_set_announcement_only_for_the_same_end, jobs_list, jobs_oldest, jobs_sweep_marks_only_records_left_at_the_receive_limit, jobs_concurrent_claim);
    };
}
pub(crate) use job_store_tests;

// =============================================================================================
// Budget ledger

const PERIOD: &str = "2031-07";

fn res(id: &str, amount: i64, expires_at: DateTime<Utc>) -> Reservation {
    Reservation { id: id.into(), job_id: format!("job-{id}"), amount_micros: amount, expires_at }
}

fn charge(reservation: &str, model: &str, tenant: Option<&str>, amount: i64) -> Charge {
    Charge::single(reservation, format!("job-{reservation}"), model, tenant, amount)
}

/// Grants up to the limit exactly (≤), refuses past it with the current totals and changes
/// nothing; periods are separate accounts.
pub async fn ledger_refuses_at_limit(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    let exp = t(now, 600);
    assert_eq!(l.reserve(PERIOD, &res("a", 600, exp), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    assert_eq!(l.reserve(PERIOD, &res("b", 400, exp), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    assert_eq!(
        l.reserve(PERIOD, &res("c", 1, exp), 1000, now).await.expect("reserve"),
        ReserveOutcome::Refused { spent_micros: 0, reserved_micros: 1000 }
    );
    let snap = l.snapshot(PERIOD, now).await.expect("snapshot");
    assert_eq!(snap.period, PERIOD);
    assert_eq!((snap.spent_micros, snap.reserved_micros), (0, 1000), "a refusal holds nothing");
    // Another month is another account.
    assert_eq!(l.reserve("2031-08", &res("c", 1000, exp), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    assert_eq!(l.snapshot(PERIOD, now).await.expect("snapshot").reserved_micros, 1000);
}

/// Reserving an id that is already held is granted without a second hold.
pub async fn ledger_rereserve_is_single_hold(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    let r = res("same", 600, t(now, 600));
    for _ in 0..3 {
        assert_eq!(l.reserve(PERIOD, &r, 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    }
    assert_eq!(l.snapshot(PERIOD, now).await.expect("snapshot").reserved_micros, 600);
    assert_eq!(l.reserve(PERIOD, &res("other", 400, t(now, 600)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
}

/// A reservation that lapsed (expired, never settled nor released: its owner died) keeps
/// counting in full, reported as lapsed, until it is settled or released.
pub async fn ledger_expiry_frees_budget(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    assert_eq!(l.reserve(PERIOD, &res("old", 900, t(now, 60)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    assert!(
        matches!(
            l.reserve(PERIOD, &res("new", 200, t(now, 600)), 1000, t(now, 61)).await.expect("reserve"),
            ReserveOutcome::Refused { reserved_micros: 900, .. }
        ),
        "a lapsed hold still blocks: its money may have been spent"
    );
    let snap = l.snapshot(PERIOD, t(now, 61)).await.expect("snapshot");
    assert_eq!((snap.reserved_micros, snap.lapsed_micros), (0, 900), "{snap:?}");
    assert_eq!(l.snapshot(PERIOD, t(now, 30)).await.expect("snapshot").reserved_micros, 900);
    l.release(PERIOD, "old").await.expect("release");
    assert_eq!(
        l.reserve(PERIOD, &res("new", 200, t(now, 600)), 1000, t(now, 61)).await.expect("reserve"),
        ReserveOutcome::Granted,
        "a released hold no longer blocks"
    );
}

/// `settle` charges the actual amount once per reservation id and frees the hold; repeats change
/// nothing; the budget left follows the charge, not the reservation.
pub async fn ledger_settle_idempotent(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    assert_eq!(l.reserve(PERIOD, &res("s1", 500, t(now, 600)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    l.settle(PERIOD, &charge("s1", "m1", Some("acme"), 300)).await.expect("settle");
    l.settle(PERIOD, &charge("s1", "m1", Some("acme"), 300)).await.expect("settle again");
    l.settle(PERIOD, &charge("s1", "m1", Some("acme"), 999)).await.expect("settle with another amount");
    let snap = l.snapshot(PERIOD, now).await.expect("snapshot");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (300, 0), "{snap:?}");
    assert_eq!(snap.by_model.get("m1"), Some(&300));
    assert_eq!(
        l.reserve(PERIOD, &res("s2", 701, t(now, 600)), 1000, now).await.expect("reserve"),
        ReserveOutcome::Refused { spent_micros: 300, reserved_micros: 0 }
    );
    assert_eq!(l.reserve(PERIOD, &res("s2", 700, t(now, 600)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    // A charge may exceed its reservation.
    l.settle(PERIOD, &charge("s2", "m1", None, 900)).await.expect("settle over");
    let snap = l.snapshot(PERIOD, now).await.expect("snapshot");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (1200, 0));
    assert!(
        matches!(
            l.reserve(PERIOD, &res("s3", 0, t(now, 600)), 1000, now).await.expect("reserve"),
            ReserveOutcome::Refused { spent_micros: 1200, .. }
        ),
        "over the limit nothing more is granted"
    );
}

/// Settling a reservation that expired still records the charge.
pub async fn ledger_settle_after_expiry(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    assert_eq!(l.reserve(PERIOD, &res("late", 400, t(now, 10)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    let snap = l.snapshot(PERIOD, t(now, 20)).await.expect("snapshot");
    assert_eq!((snap.reserved_micros, snap.lapsed_micros), (0, 400));
    l.settle(PERIOD, &charge("late", "m1", None, 350)).await.expect("settle");
    let snap = l.snapshot(PERIOD, t(now, 20)).await.expect("snapshot");
    assert_eq!(snap.spent_micros, 350, "the money was spent");
    assert_eq!(snap.lapsed_micros, 0, "the settle replaced the lapsed hold");
    assert!(matches!(
        l.reserve(PERIOD, &res("next", 651, t(now, 600)), 1000, t(now, 20)).await.expect("reserve"),
        ReserveOutcome::Refused { spent_micros: 350, .. }
    ));
}

/// `release` drops a hold without a charge; repeating it (or releasing an unknown id) is fine.
pub async fn ledger_release_idempotent(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    assert_eq!(l.reserve(PERIOD, &res("r1", 800, t(now, 600)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    l.release(PERIOD, "r1").await.expect("release");
    l.release(PERIOD, "r1").await.expect("release again");
    l.release(PERIOD, "never-reserved").await.expect("release unknown");
    let snap = l.snapshot(PERIOD, now).await.expect("snapshot");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (0, 0));
    assert!(snap.by_model.is_empty());
    assert_eq!(l.reserve(PERIOD, &res("r2", 1000, t(now, 600)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
}

/// The snapshot breaks settled spend down by model and by tenant (`-` for none).
pub async fn ledger_snapshot_breakdown(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    for (id, model, tenant, amount) in
        [("c1", "m1", Some("a"), 100), ("c2", "m2", Some("a"), 200), ("c3", "m1", None, 50), ("c4", "m2", Some("b"), 7)]
    {
        assert_eq!(l.reserve(PERIOD, &res(id, amount, t(now, 600)), 10_000, now).await.expect("reserve"), ReserveOutcome::Granted);
        l.settle(PERIOD, &charge(id, model, tenant, amount)).await.expect("settle");
    }
    assert_eq!(l.reserve(PERIOD, &res("open", 1000, t(now, 600)), 10_000, now).await.expect("reserve"), ReserveOutcome::Granted);
    let snap = l.snapshot(PERIOD, now).await.expect("snapshot");
    assert_eq!(snap.spent_micros, 357);
    assert_eq!(snap.reserved_micros, 1000);
    assert_eq!(snap.by_model, BTreeMap::from([("m1".to_string(), 150), ("m2".to_string(), 207)]));
    assert_eq!(snap.by_tenant, BTreeMap::from([("-".to_string(), 50), ("a".to_string(), 300), ("b".to_string(), 7)]));
    let empty = l.snapshot("2031-01", now).await.expect("snapshot");
    assert_eq!((empty.spent_micros, empty.reserved_micros), (0, 0));
    assert!(empty.by_model.is_empty() && empty.by_tenant.is_empty());
}

/// 8 tasks reserving at once never hold more than the limit, and the limit is reached exactly.
pub async fn ledger_concurrent_reserve(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    let limit = 2_500;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0;
            for i in 0..10 {
                let r = res(&format!("w{w}-{i}"), 100, t(now, 600));
                if l.reserve(PERIOD, &r, limit, now).await.expect("reserve") == ReserveOutcome::Granted {
                    granted += 1;
                }
            }
            granted
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.expect("task");
    }
    assert_eq!(granted * 100, limit, "granted {granted} holds of 100 against a limit of {limit}");
    assert_eq!(l.snapshot(PERIOD, now).await.expect("snapshot").reserved_micros, limit);
}

/// `declare` records a ceiling ahead of spending until `close` closes it: close returns the last
/// ceiling declared (`None` when there was none), later declares answer `false`, and neither
/// touches the period's totals. Ceilings of different reservations are apart.
pub async fn ledger_declare_until_closed(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    let kept = t(now, 86_400);
    assert_eq!(l.reserve(PERIOD, &res("d1", 900, t(now, 600)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    assert!(l.declare(PERIOD, "d1", 100, kept).await.expect("declare"), "an open bound takes a ceiling");
    assert!(l.declare(PERIOD, "d1", 250, kept).await.expect("declare"), "and a higher one");
    assert!(l.declare(PERIOD, "d2", 40, kept).await.expect("declare"), "another reservation's bound is apart");
    let snap = l.snapshot(PERIOD, now).await.expect("snapshot");
    assert_eq!((snap.spent_micros, snap.reserved_micros), (0, 900), "a declaration is not a charge: {snap:?}");
    assert_eq!(l.close(PERIOD, "d1").await.expect("close"), Some(250), "close returns the last ceiling");
    assert!(!l.declare(PERIOD, "d1", 300, kept).await.expect("declare"), "a closed bound takes no more");
    assert_eq!(l.close(PERIOD, "d1").await.expect("close"), Some(250), "closing again changes nothing");
    assert_eq!(l.close(PERIOD, "never-declared").await.expect("close"), None, "no ceiling, none returned");
    assert!(!l.declare(PERIOD, "never-declared", 1, kept).await.expect("declare"), "closed before any declaration");
    assert!(l.declare(PERIOD, "d2", 60, kept).await.expect("declare"), "d2 is still open");
    assert!(l.declare("2031-08", "d1", 5, kept).await.expect("declare"), "another month is another bound");
}

/// A holder declaring ever higher ceilings while another worker closes the bound: every ceiling
/// answered `true` is at most what `close` returned (none slips in after the close), and the
/// highest one is exactly it.
pub async fn ledger_declare_races_close(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    let kept = t(now, 86_400);
    let holder = {
        let l = l.clone();
        tokio::spawn(async move {
            // Declares 1, 2, 3, ... until refused, then three more times.
            let mut accepted = Vec::new();
            for bound in 1..=20_000 {
                if !l.declare(PERIOD, "race", bound, kept).await.expect("declare") {
                    let later = [bound + 1, bound + 2, bound + 3];
                    for b in later {
                        assert!(
                            !l.declare(PERIOD, "race", b, kept).await.expect("declare"),
                            "once refused, every later declare is refused"
                        );
                    }
                    return accepted;
                }
                accepted.push(bound);
            }
            panic!("20,000 declarations and the bound was never closed");
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let closed = l.close(PERIOD, "race").await.expect("close");
    let accepted = holder.await.expect("holder");
    assert_eq!(closed, accepted.last().copied(), "close saw exactly the last accepted ceiling ({} accepted)", accepted.len());
}

/// `lapsed` lists exactly the reservations that expired before the instant given and were
/// neither settled nor released; recovering them settles each at its declared ceiling (in full
/// without one) and gives the rest of the budget back.
pub async fn ledger_lapsed_are_recovered_at_their_ceiling(make: &MakeLedger) {
    let l = make().await;
    let now = Utc::now();
    for (id, amount, secs) in [("dead", 400, 60), ("undeclared", 200, 60), ("alive", 100, 600), ("settled", 100, 60), ("released", 100, 60)]
    {
        assert_eq!(l.reserve(PERIOD, &res(id, amount, t(now, secs)), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    }
    l.settle(PERIOD, &charge("settled", "m1", None, 80)).await.expect("settle");
    l.release(PERIOD, "released").await.expect("release");
    assert!(l.declare(PERIOD, "dead", 150, t(now, 86_400)).await.expect("declare"));
    assert!(l.lapsed(PERIOD, t(now, 30)).await.expect("lapsed").is_empty(), "nothing had expired at +30 s");
    let mut lapsed: Vec<(String, i64)> =
        l.lapsed(PERIOD, t(now, 61)).await.expect("lapsed").into_iter().map(|r| (r.id, r.amount_micros)).collect();
    lapsed.sort();
    assert_eq!(lapsed, vec![("dead".to_string(), 400), ("undeclared".to_string(), 200)]);

    let recovered = atlas_codex::budget::recover_lapsed(l.as_ref(), PERIOD, t(now, 61)).await.expect("recover");
    assert_eq!(recovered, 2);
    let snap = l.snapshot(PERIOD, t(now, 61)).await.expect("snapshot");
    assert_eq!(snap.spent_micros, 80 + 150 + 200, "the dead lease at its ceiling, the undeclared one in full: {snap:?}");
    assert_eq!((snap.reserved_micros, snap.lapsed_micros), (100, 0), "{snap:?}");
    assert_eq!(snap.by_model.get(atlas_codex::backend::RECOVERED_MODEL), Some(&350));
    assert!(l.lapsed(PERIOD, t(now, 61)).await.expect("lapsed").is_empty(), "a recovered lease is settled");
    assert_eq!(atlas_codex::budget::recover_lapsed(l.as_ref(), PERIOD, t(now, 61)).await.expect("recover"), 0, "idempotent");
    assert!(!l.declare(PERIOD, "dead", 400, t(now, 86_400)).await.expect("declare"), "its holder, if alive, can declare no more");
    assert_eq!(
        l.reserve(PERIOD, &res("next", 1000 - 430 - 100, t(now, 600)), 1000, t(now, 61)).await.expect("reserve"),
        ReserveOutcome::Granted,
        "the unspent part of the dead lease is reservable again"
    );
}

/// Runs every ledger check in turn.
pub async fn ledger_contract(make: &MakeLedger) {
    ledger_refuses_at_limit(make).await;
    ledger_rereserve_is_single_hold(make).await;
    ledger_expiry_frees_budget(make).await;
    ledger_settle_idempotent(make).await;
    ledger_settle_after_expiry(make).await;
    ledger_release_idempotent(make).await;
    ledger_snapshot_breakdown(make).await;
    ledger_concurrent_reserve(make).await;
    ledger_declare_until_closed(make).await;
    ledger_declare_races_close(make).await;
    ledger_lapsed_are_recovered_at_their_ceiling(make).await;
}

/// One `#[tokio::test]` per ledger check, against the [`MakeLedger`] expression given.
macro_rules! ledger_tests {
    ($make:expr) => {
        $crate::support::conformance::__tests!(make_ledger_: $make; MakeLedger;
            ledger_refuses_at_limit, ledger_rereserve_is_single_hold, ledger_expiry_frees_budget,
            ledger_settle_idempotent, ledger_settle_after_expiry, ledger_release_idempotent,
            ledger_snapshot_breakdown, ledger_concurrent_reserve, ledger_declare_until_closed, ledger_declare_races_close,
            ledger_lapsed_are_recovered_at_their_ceiling);
    };
}
pub(crate) use ledger_tests;

// =============================================================================================
// Rate store

fn units(requests: u32, tokens: u64) -> RateUnits {
    RateUnits { requests, tokens }
}

/// A take is granted in full while it fits, in part (requests with their share of tokens) when
/// only part fits, and not at all once the window is at its cap; windows and keys are apart.
pub async fn rates_take_up_to_the_cap(make: &MakeRates) {
    let r = make().await;
    let key = uniq("model");
    let cap = units(9, 9_000);
    assert_eq!(r.take(&key, 7, units(4, 4_000), cap).await.expect("take"), units(4, 4_000));
    assert_eq!(r.take(&key, 7, units(4, 4_000), cap).await.expect("take"), units(4, 4_000));
    // One request and 1,000 tokens are left: 1 of the 4 asked, with its share of the tokens.
    assert_eq!(r.take(&key, 7, units(4, 4_000), cap).await.expect("take"), units(1, 1_000));
    assert_eq!(r.take(&key, 7, units(1, 10), cap).await.expect("take"), units(0, 0));
    // Tokens can run out before requests do.
    assert_eq!(r.take(&key, 8, units(2, 8_000), cap).await.expect("take"), units(2, 8_000));
    assert_eq!(r.take(&key, 8, units(2, 2_000), cap).await.expect("take"), units(1, 1_000));
    // Another window, another key: untouched.
    assert_eq!(r.take(&key, 9, units(9, 9_000), cap).await.expect("take"), units(9, 9_000));
    let other = uniq("model");
    assert_eq!(r.take(&other, 7, units(9, 0), units(9, u64::MAX)).await.expect("take"), units(9, 0));
}

/// What is given back can be taken again; giving back never goes below zero.
pub async fn rates_give_back(make: &MakeRates) {
    let r = make().await;
    let key = uniq("model");
    let cap = units(3, 300);
    assert_eq!(r.take(&key, 1, units(3, 300), cap).await.expect("take"), units(3, 300));
    assert_eq!(r.take(&key, 1, units(1, 100), cap).await.expect("take"), units(0, 0));
    r.give_back(&key, 1, units(1, 100)).await.expect("give back");
    assert_eq!(r.take(&key, 1, units(1, 100), cap).await.expect("take"), units(1, 100));
    r.give_back(&key, 2, units(5, 500)).await.expect("giving back to an unknown window is a no-op");
    assert_eq!(r.take(&key, 2, units(3, 300), cap).await.expect("take"), units(3, 300));
}

/// A filled window grants nothing, whatever is given back; the next window is untouched.
pub async fn rates_fill(make: &MakeRates) {
    let r = make().await;
    let key = uniq("model");
    let cap = units(10, 1_000);
    assert_eq!(r.take(&key, 5, units(2, 100), cap).await.expect("take"), units(2, 100));
    r.fill(&key, 5).await.expect("fill");
    r.fill(&key, 6).await.expect("fill an untouched window");
    r.give_back(&key, 5, units(2, 100)).await.expect("give back");
    assert_eq!(r.take(&key, 5, units(1, 1), cap).await.expect("take"), units(0, 0));
    assert_eq!(r.take(&key, 6, units(1, 1), cap).await.expect("take"), units(0, 0));
    assert_eq!(r.take(&key, 7, units(1, 1), cap).await.expect("take"), units(1, 1));
}

/// Many takers at once never get more than the cap together, and get all of it.
pub async fn rates_concurrent_takes(make: &MakeRates) {
    let r = make().await;
    let key = uniq("model");
    let cap = units(25, u64::MAX);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let r = r.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            for _ in 0..5 {
                got += r.take(&key, 42, units(1, 0), cap).await.expect("take").requests;
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    assert_eq!(total, 25, "10 takers × 5 takes of 1 against a cap of 25");
}

/// Runs every rate store check in turn.
pub async fn rates_contract(make: &MakeRates) {
    rates_take_up_to_the_cap(make).await;
    rates_give_back(make).await;
    rates_fill(make).await;
    rates_concurrent_takes(make).await;
}

/// One `#[tokio::test]` per rate store check, against the [`MakeRates`] expression given.
macro_rules! rate_store_tests {
    ($make:expr) => {
        $crate::support::conformance::__tests!(make_rates_: $make; MakeRates;
            rates_take_up_to_the_cap, rates_give_back, rates_fill, rates_concurrent_takes);
    };
}
pub(crate) use rate_store_tests;

// =============================================================================================
// Artifacts

/// Put/get round-trips bytes, put overwrites, a missing key is `None`, `location` names the key.
pub async fn artifacts_put_get(make: &MakeArtifacts) {
    let a = make().await;
    let key = format!("jobs/{}/result.json", uniq("job"));
    assert_eq!(a.get(&key).await.expect("get missing"), None);
    let v1 = br#"{"data":{"title":"one"}}"#.to_vec();
    a.put(&key, v1.clone(), "application/json").await.expect("put");
    assert_eq!(a.get(&key).await.expect("get"), Some(v1));
    let v2: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    a.put(&key, v2.clone(), "application/octet-stream").await.expect("overwrite");
    assert_eq!(a.get(&key).await.expect("get"), Some(v2), "put overwrites");
    a.put(&key, Vec::new(), "text/plain").await.expect("empty");
    assert_eq!(a.get(&key).await.expect("get"), Some(Vec::new()), "an empty object is not a missing one");
    let other = format!("inputs/{}", uniq("in"));
    assert_eq!(a.get(&other).await.expect("get other"), None);
    let loc = a.location(&key);
    assert!(loc.contains(&key), "location {loc:?} names the key");
}

/// A reader racing an overwriting writer sees the old or the new object, never a torn one.
pub async fn artifacts_atomic_overwrite(make: &MakeArtifacts) {
    let a = make().await;
    let key = format!("jobs/{}/big.bin", uniq("job"));
    let old = vec![b'o'; 512 * 1024];
    let new = vec![b'n'; 512 * 1024];
    a.put(&key, old.clone(), "application/octet-stream").await.expect("put");
    let writer = {
        let (a, key, old, new) = (a.clone(), key.clone(), old.clone(), new.clone());
        tokio::spawn(async move {
            for i in 0..20 {
                let body = if i % 2 == 0 { new.clone() } else { old.clone() };
                a.put(&key, body, "application/octet-stream").await.expect("put");
            }
        })
    };
    for _ in 0..40 {
        let got = a.get(&key).await.expect("get").expect("present throughout");
        assert!(got == old || got == new, "torn read of {} bytes", got.len());
    }
    writer.await.expect("writer");
}

/// Runs every artifacts check in turn.
pub async fn artifacts_contract(make: &MakeArtifacts) {
    artifacts_put_get(make).await;
    artifacts_atomic_overwrite(make).await;
}

/// One `#[tokio::test]` per artifacts check, against the [`MakeArtifacts`] expression given.
macro_rules! artifact_tests {
    ($make:expr) => {
        $crate::support::conformance::__tests!(make_artifacts_: $make; MakeArtifacts;
            artifacts_put_get, artifacts_atomic_overwrite);
    };
}
pub(crate) use artifact_tests;

/// Expands to one multi-threaded `#[tokio::test]` per named check.
macro_rules! __tests {
    ($_tag:ident: $make:expr; $ty:ident; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let make: $crate::support::conformance::$ty = $make;
                $crate::support::conformance::$name(&make).await;
            }
        )+
    };
}
pub(crate) use __tests;
