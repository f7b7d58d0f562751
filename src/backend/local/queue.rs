//! The embedded [`Queue`]: rows of `queue_messages` and `dead_letters` tagged with the queue's
//! name, with SQS's visibility, receive-count and redrive-policy semantics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tokio::sync::Notify;

use super::db::{duration_ms, from_ms, new_id, wall_ms, Db, DbResult};
use super::ScratchDir;
use crate::backend::{BResult, BackendError, DeadLetter, Message, Queue, QueueDepth, RedrivePlan, RedriveReport};
use crate::job::MAX_MESSAGE_BYTES;

/// Longest delay `send` accepts (SQS's own limit).
pub const MAX_SEND_DELAY: Duration = Duration::from_secs(15 * 60);
/// Longest visibility timeout accepted (SQS's own limit: 12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// How often a long-polling `receive` looks at the table again (other processes may send to the
/// same file; sends from this process wake the poller at once).
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How the embedded queue behaves (the SQS queue attributes' counterparts).
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// The queue's name (rows are tagged with it).
    pub queue_name: String,
    /// The DLQ's name.
    pub dlq_name: String,
    /// How long a received message stays hidden.
    pub visibility_timeout: Duration,
    /// Receives after which the queue itself moves a message to the DLQ (redrive policy, ≥ 1).
    pub max_receive_count: u32,
}

impl QueueOptions {
    /// The options the stage's settings describe.
    pub fn from_settings(settings: &crate::settings::Settings) -> QueueOptions {
        QueueOptions {
            queue_name: settings.queue_name(),
            dlq_name: settings.dlq_name(),
            visibility_timeout: Duration::from_secs(settings.queue.visibility_timeout_secs),
            max_receive_count: settings.queue.max_receive_count,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Queue

/// The embedded queue and DLQ: rows of `queue_messages` and `dead_letters` tagged with the names.
pub struct SqliteQueue {
    db: Db,
    opts: Arc<QueueOptions>,
    /// Wakes this process's long polls when it sends.
    notify: Arc<Notify>,
    pub(super) _guard: Option<Arc<ScratchDir>>,
}

impl SqliteQueue {
    /// A queue on an opened database (several queues may share one file).
    pub fn new(db: Db, opts: QueueOptions) -> BResult<SqliteQueue> {
        if opts.max_receive_count == 0 {
            return Err(BackendError::Other("max_receive_count must be at least 1".into()));
        }
        if opts.queue_name.is_empty() || opts.dlq_name.is_empty() || opts.queue_name == opts.dlq_name {
            return Err(BackendError::Other("the queue and the DLQ need two distinct names".into()));
        }
        if opts.visibility_timeout > MAX_VISIBILITY {
            return Err(BackendError::Other("visibility timeout longer than 12 hours".into()));
        }
        Ok(SqliteQueue { db, opts: Arc::new(opts), notify: Arc::new(Notify::new()), _guard: None })
    }

    /// The queue's options.
    pub fn options(&self) -> &QueueOptions {
        &self.opts
    }

    /// One non-waiting receive: at most `max` visible messages, moving over-received ones to the DLQ.
    async fn try_receive(&self, max: usize) -> BResult<Vec<Message>> {
        let opts = self.opts.clone();
        self.db
            .call(move |conn| {
                let now = wall_ms();
                // Cheap read first: most idle polls end here without taking the write lock.
                let any: Option<i64> = conn
                    .prepare_cached("SELECT 1 FROM queue_messages WHERE queue = ?1 AND visible_at <= ?2 LIMIT 1")
                    .db()?
                    .query_row(params![opts.queue_name, now], |r| r.get(0))
                    .optional()
                    .db()?;
                if any.is_none() {
                    return Ok(Vec::new());
                }
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now = wall_ms();
                // At least 1 ms ahead, so a zero visibility timeout cannot hand out a message
                // twice in one batch (the selection below compares with this same `now`).
                let hidden_until = now.saturating_add(duration_ms(opts.visibility_timeout).max(1));
                let mut out = Vec::new();
                loop {
                    let want = max - out.len();
                    let rows: Vec<(i64, String, String, u32, i64)> = {
                        let mut st = tx
                            .prepare_cached(
                                "SELECT seq, id, body, receive_count, sent_at FROM queue_messages
                                 WHERE queue = ?1 AND visible_at <= ?2
                                 ORDER BY visible_at, seq LIMIT ?3",
                            )
                            .db()?;
                        let it = st
                            .query_map(params![opts.queue_name, now, want as i64], |r| {
                                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                            })
                            .db()?;
                        it.collect::<rusqlite::Result<_>>().db()?
                    };
                    let exhausted = rows.len() < want;
                    if rows.is_empty() {
                        break;
                    }
                    for (seq, id, body, count, sent_at) in rows {
                        if count >= opts.max_receive_count {
                            // Redrive policy: this would be receive number max+1.
                            tx.prepare_cached(
                                "INSERT INTO dead_letters (queue, id, body, sent_at, reason, receive_count, dead_at)
                                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6)",
                            )
                            .db()?
                            .execute(params![opts.dlq_name, id, crate::redact::message_body(&body), sent_at, count, now])
                            .db()?;
                            tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1").db()?.execute(params![seq]).db()?;
                            continue;
                        }
                        let receipt = format!("{id}.{}", new_id());
                        tx.prepare_cached(
                            "UPDATE queue_messages SET receive_count = receive_count + 1,
                                    visible_at = ?1, receipt = ?2 WHERE seq = ?3",
                        )
                        .db()?
                        .execute(params![hidden_until, receipt, seq])
                        .db()?;
                        out.push(Message { message_id: id, receipt, body, receive_count: count + 1, sent_at: from_ms(sent_at) });
                    }
                    if exhausted || out.len() >= max {
                        break;
                    }
                }
                tx.commit().db()?;
                Ok(out)
            })
            .await
    }
}

fn check_body(body: &str) -> BResult<()> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(BackendError::Other(format!("message body is {} bytes; the queue accepts at most {MAX_MESSAGE_BYTES}", body.len())));
    }
    Ok(())
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, body: &str, delay: Duration) -> BResult<String> {
        check_body(body)?;
        if delay > MAX_SEND_DELAY {
            return Err(BackendError::Other(format!("send delay {}s is longer than {}s", delay.as_secs(), MAX_SEND_DELAY.as_secs())));
        }
        let opts = self.opts.clone();
        let body = body.to_string();
        let id = new_id();
        let id2 = id.clone();
        self.db
            .call(move |conn| {
                let now = wall_ms();
                conn.prepare_cached(
                    "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at, receive_count)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                )
                .db()?
                .execute(params![opts.queue_name, id2, body, now, now.saturating_add(duration_ms(delay))])
                .db()?;
                Ok(())
            })
            .await?;
        if delay.is_zero() {
            self.notify.notify_waiters();
        }
        Ok(id)
    }

    async fn send_batch(&self, bodies: &[String]) -> BResult<()> {
        if bodies.is_empty() {
            return Ok(());
        }
        for b in bodies {
            check_body(b)?;
        }
        let opts = self.opts.clone();
        let bodies = bodies.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now = wall_ms();
                {
                    let mut st = tx
                        .prepare_cached(
                            "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at, receive_count)
                             VALUES (?1, ?2, ?3, ?4, ?4, 0)",
                        )
                        .db()?;
                    for b in &bodies {
                        st.execute(params![opts.queue_name, new_id(), b, now]).db()?;
                    }
                }
                tx.commit().db()
            })
            .await?;
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> BResult<Vec<Message>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        // SQS caps a long poll at 20 s; here any wait works, but an absurd one must not overflow.
        let deadline = Instant::now().checked_add(wait).unwrap_or_else(|| Instant::now() + Duration::from_secs(24 * 60 * 60));
        loop {
            // Register interest before looking, so a send in between is not missed.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.try_receive(max).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let nap = POLL_INTERVAL.min(deadline - now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> BResult<()> {
        if timeout > MAX_VISIBILITY {
            return Err(BackendError::Other("visibility timeout longer than 12 hours".into()));
        }
        let opts = self.opts.clone();
        let receipt = receipt.to_string();
        let changed = self
            .db
            .call(move |conn| {
                let at = wall_ms().saturating_add(duration_ms(timeout));
                conn.prepare_cached("UPDATE queue_messages SET visible_at = ?1 WHERE queue = ?2 AND receipt = ?3")
                    .db()?
                    .execute(params![at, opts.queue_name, receipt])
                    .db()
            })
            .await?;
        if changed == 0 {
            return Err(BackendError::Conflict("receipt is stale: the message was deleted, dead-lettered or received again".into()));
        }
        if timeout.is_zero() {
            self.notify.notify_waiters();
        }
        Ok(())
    }

    async fn delete_batch(&self, receipts: &[String]) -> BResult<Vec<String>> {
        if receipts.is_empty() {
            return Ok(Vec::new());
        }
        let opts = self.opts.clone();
        let receipts = receipts.to_vec();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let mut failed = Vec::new();
                {
                    let mut st = tx.prepare_cached("DELETE FROM queue_messages WHERE queue = ?1 AND receipt = ?2").db()?;
                    for r in receipts {
                        if st.execute(params![opts.queue_name, r]).db()? == 0 {
                            failed.push(r);
                        }
                    }
                }
                tx.commit().db()?;
                Ok(failed)
            })
            .await
    }

    async fn dead_letter(&self, message: &Message, reason: &str) -> BResult<()> {
        let opts = self.opts.clone();
        let receipt = message.receipt.clone();
        let reason = reason.to_string();
        let kept = message.body.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let row: Option<(i64, String, String, i64, u32)> = tx
                    .prepare_cached(
                        "SELECT seq, id, body, sent_at, receive_count FROM queue_messages
                         WHERE queue = ?1 AND receipt = ?2",
                    )
                    .db()?
                    .query_row(params![opts.queue_name, receipt], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
                    .optional()
                    .db()?;
                let Some((seq, id, _stored, sent_at, count)) = row else {
                    return Err(BackendError::Conflict(
                        "receipt is stale: the message was deleted, dead-lettered or received again".into(),
                    ));
                };
                tx.prepare_cached(
                    "INSERT INTO dead_letters (queue, id, body, sent_at, reason, receive_count, dead_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .db()?
                .execute(params![opts.dlq_name, id, kept, sent_at, reason, count, wall_ms()])
                .db()?;
                tx.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1").db()?.execute(params![seq]).db()?;
                tx.commit().db()
            })
            .await
    }

    async fn dlq_peek(&self, max: usize) -> BResult<Vec<DeadLetter>> {
        let opts = self.opts.clone();
        self.db
            .call(move |conn| {
                let mut st = conn
                    .prepare_cached(
                        "SELECT id, body, reason, receive_count FROM dead_letters
                         WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                    )
                    .db()?;
                let limit = i64::try_from(max).unwrap_or(i64::MAX);
                let it = st
                    .query_map(params![opts.dlq_name, limit], |r| {
                        Ok(DeadLetter { message_id: r.get(0)?, body: r.get(1)?, reason: r.get(2)?, receive_count: r.get(3)? })
                    })
                    .db()?;
                it.collect::<rusqlite::Result<Vec<_>>>().db()
            })
            .await
    }

    async fn dlq_scrub(&self, max: usize) -> BResult<usize> {
        // Every move into `dead_letters` (ours and the redrive policy's) already stores the
        // redacted body; this also cleans rows written before that was so.
        let dlq = self.opts.dlq_name.clone();
        self.db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let rows: Vec<(i64, String)> = tx
                    .prepare_cached("SELECT seq, body FROM dead_letters WHERE queue = ?1 ORDER BY seq LIMIT ?2")
                    .db()?
                    .query_map(params![dlq, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                let mut scrubbed = 0;
                for (seq, body) in rows {
                    let clean = crate::redact::message_body(&body);
                    if clean != body {
                        tx.prepare_cached("UPDATE dead_letters SET body = ?2 WHERE seq = ?1").db()?.execute(params![seq, clean]).db()?;
                        scrubbed += 1;
                    }
                }
                tx.commit().db()?;
                Ok(scrubbed)
            })
            .await
    }

    async fn dlq_redrive(&self, plan: &RedrivePlan) -> BResult<RedriveReport> {
        let opts = self.opts.clone();
        let plan = plan.clone();
        let report = self
            .db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).db()?;
                let now = wall_ms();
                let examine = i64::try_from(plan.examine).unwrap_or(i64::MAX);
                let rows: Vec<(i64, Option<String>)> = tx
                    .prepare_cached("SELECT seq, reason FROM dead_letters WHERE queue = ?1 ORDER BY seq LIMIT ?2")
                    .db()?
                    .query_map(params![opts.dlq_name, examine], |r| Ok((r.get(0)?, r.get(1)?)))
                    .db()?
                    .collect::<rusqlite::Result<_>>()
                    .db()?;
                let mut report = RedriveReport::default();
                for (seq, reason) in rows {
                    let d = DeadLetter { message_id: String::new(), body: String::new(), reason, receive_count: 0 };
                    let kind = d.kind();
                    let take = plan.admits(report.moved_total(), kind);
                    if take {
                        tx.prepare_cached(
                            "INSERT INTO queue_messages (queue, id, body, sent_at, visible_at, receive_count)
                             SELECT ?1, id, body, sent_at, ?2, 0 FROM dead_letters WHERE seq = ?3",
                        )
                        .db()?
                        .execute(params![opts.queue_name, now, seq])
                        .db()?;
                        tx.prepare_cached("DELETE FROM dead_letters WHERE seq = ?1").db()?.execute(params![seq]).db()?;
                    }
                    report.count(kind, take);
                }
                tx.commit().db()?;
                Ok(report)
            })
            .await?;
        if report.moved_total() > 0 {
            self.notify.notify_waiters();
        }
        Ok(report)
    }

    async fn flush(&self) -> BResult<()> {
        // Deleted rows are zeroed in the database (secure_delete); their old versions in the
        // write-ahead log go with it here.
        self.db.call(|conn| conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").db()).await
    }

    async fn depth(&self) -> BResult<QueueDepth> {
        let opts = self.opts.clone();
        self.db
            .call(move |conn| {
                let now = wall_ms();
                let tx = conn.transaction().db()?;
                let (visible, in_flight, delayed): (i64, i64, i64) = tx
                    .prepare_cached(
                        "SELECT
                           COALESCE(SUM(visible_at <= ?2), 0),
                           COALESCE(SUM(visible_at > ?2 AND receive_count > 0), 0),
                           COALESCE(SUM(visible_at > ?2 AND receive_count = 0), 0)
                         FROM queue_messages WHERE queue = ?1",
                    )
                    .db()?
                    .query_row(params![opts.queue_name, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .db()?;
                let dead: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM dead_letters WHERE queue = ?1")
                    .db()?
                    .query_row(params![opts.dlq_name], |r| r.get(0))
                    .db()?;
                tx.commit().db()?;
                Ok(QueueDepth {
                    visible: visible.max(0) as u64,
                    in_flight: in_flight.max(0) as u64,
                    delayed: delayed.max(0) as u64,
                    dead_letters: dead.max(0) as u64,
                })
            })
            .await
    }
}
