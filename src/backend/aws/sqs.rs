//! [`SqsQueue`]: the [`Queue`] contract on an SQS standard queue and its dead-letter queue.
//!
//! Poison messages reach the DLQ through the queue's redrive policy (`maxReceiveCount`, set by
//! `provision`); [`Queue::dead_letter`] moves one at once by sending a copy with reason attributes
//! to the DLQ and deleting the original.
//!
//! Limitations of SQS that show through the contract:
//! - There is no true peek: [`Queue::dlq_peek`] receives with `VisibilityTimeout=0`, so each peek
//!   counts as a receive of the DLQ message (its `ApproximateReceiveCount` grows) and a concurrent
//!   consumer of the DLQ could see it at the same moment. Nothing is deleted.
//! - Counts are approximate (`ApproximateNumberOf*`), as the contract says.
//! - [`Queue::dlq_redrive`] of everything first asks SQS for a server-side move
//!   (`StartMessageMoveTask`), which runs asynchronously: it returns the DLQ's depth at the start
//!   and the messages reappear on the queue over the next seconds. When that is refused (moto
//!   does not implement it; the role may lack the permission) and for a selection by kind or
//!   count, messages are moved by hand: receive from the DLQ, send a fresh copy to the queue
//!   (receive count starts again, dead-letter attributes dropped), delete from the DLQ; those
//!   left stay hidden until the pass ends, so each is looked at once. That is at-least-once: a crash
//!   between send and delete duplicates a message, which job idempotency absorbs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use chrono::{DateTime, TimeZone, Utc};

use super::classify;
use crate::backend::{BResult, BackendError, DeadLetter, Message, Queue, QueueDepth, RedrivePlan, RedriveReport, RedriveSelect};

/// SQS's longest long poll, seconds.
const MAX_WAIT_SECS: u64 = 20;
/// SQS's batch size limit (receive, send and delete batches).
const BATCH: usize = 10;
/// SQS's longest delivery delay, seconds.
const MAX_DELAY_SECS: u64 = 900;
/// SQS's longest visibility timeout, seconds (12 hours).
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// Rounds of re-sending the entries of a batch that SQS refused.
const SEND_BATCH_ROUNDS: usize = 3;
/// Longest dead-letter reason kept, bytes.
const MAX_REASON_BYTES: usize = 1024;
/// How long a DLQ message received for a manual redrive stays hidden while it is copied.
const REDRIVE_VISIBILITY_SECS: i32 = 60;
/// How long a DLQ message a peek has seen stays hidden so the next receive brings the next ones;
/// made visible again as soon as the peek ends.
const PEEK_VISIBILITY_SECS: i32 = 30;

/// Message attribute: why the worker dead-lettered the message.
pub const ATTR_REASON: &str = "atlas-reason";
/// Message attribute: the message id on the source queue.
pub const ATTR_ORIGINAL_ID: &str = "atlas-original-message-id";
/// Message attribute: receives on the source queue before it was dead-lettered.
pub const ATTR_RECEIVE_COUNT: &str = "atlas-receive-count";
/// Message attribute: when it was dead-lettered (RFC 3339, UTC).
pub const ATTR_DEAD_LETTERED_AT: &str = "atlas-dead-lettered-at";

/// The stage's SQS queue and its DLQ, addressed by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dlq_url: String,
    /// Set once `StartMessageMoveTask` was refused (emulators, missing permission), so later
    /// redrives go straight to the receive/send/delete path.
    no_move_task: Arc<AtomicBool>,
}

impl SqsQueue {
    /// A queue from known URLs.
    pub fn new(client: Client, queue_url: impl Into<String>, dlq_url: impl Into<String>) -> SqsQueue {
        SqsQueue { client, queue_url: queue_url.into(), dlq_url: dlq_url.into(), no_move_task: Arc::new(AtomicBool::new(false)) }
    }

    /// Resolves both queues by name (`NotFound` when either is missing: provision first).
    pub async fn open(sdk: &SdkConfig, queue_name: &str, dlq_name: &str) -> BResult<SqsQueue> {
        let client = super::calls::sqs(sdk);
        let queue_url = queue_url_of(&client, queue_name).await?;
        let dlq_url = queue_url_of(&client, dlq_name).await?;
        Ok(SqsQueue::new(client, queue_url, dlq_url))
    }

    /// The job queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Makes received DLQ messages visible again at once (best effort: they reappear after
    /// their visibility timeout anyway).
    async fn show_again(&self, receipts: &[String]) {
        for chunk in receipts.chunks(BATCH) {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            let _ = self.client.change_message_visibility_batch().queue_url(&self.dlq_url).set_entries(Some(entries)).send().await;
        }
    }

    /// The DLQ's URL.
    pub fn dlq_url(&self) -> &str {
        &self.dlq_url
    }

    async fn queue_arn(&self, url: &str) -> BResult<String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| BackendError::Other(format!("queue {url} reported no ARN")))
    }

    async fn counts(&self, url: &str) -> BResult<(u64, u64, u64)> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let get =
            |name: QueueAttributeName| -> u64 { out.attributes().and_then(|a| a.get(&name)).and_then(|v| v.parse().ok()).unwrap_or(0) };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }

    /// One receive call on `url`.
    async fn receive_from(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        visibility: Option<i32>,
    ) -> BResult<Vec<aws_sdk_sqs::types::Message>> {
        let mut req = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(MAX_WAIT_SECS) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All");
        if let Some(v) = visibility {
            req = req.visibility_timeout(v);
        }
        let out = req.send().await.map_err(|e| classify(&e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Sends bodies to `url` in batches of 10, re-sending refused entries a few times.
    async fn send_all(&self, url: &str, bodies: &[String]) -> BResult<()> {
        for chunk in bodies.chunks(BATCH) {
            let mut pending: Vec<(usize, &String)> = chunk.iter().enumerate().collect();
            let mut last_error = String::new();
            for round in 0..SEND_BATCH_ROUNDS {
                if round > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << round)).await;
                }
                let mut entries = Vec::with_capacity(pending.len());
                for (i, body) in &pending {
                    entries.push(
                        SendMessageBatchRequestEntry::builder()
                            .id(format!("m{i}"))
                            .message_body(body.as_str())
                            .build()
                            .map_err(|e| BackendError::Other(format!("send batch entry: {e}")))?,
                    );
                }
                let out =
                    self.client.send_message_batch().queue_url(url).set_entries(Some(entries)).send().await.map_err(|e| classify(&e))?;
                let failed: HashSet<&str> = out.failed().iter().map(|f| f.id()).collect();
                if let Some(f) = out.failed().first() {
                    last_error = format!("{}: {}", f.code(), f.message().unwrap_or(""));
                    // Sender faults (bad body) will not get better by retrying.
                    if out.failed().iter().any(|f| f.sender_fault()) {
                        return Err(BackendError::Other(format!("{} message(s) refused by SQS: {last_error}", out.failed().len())));
                    }
                }
                pending.retain(|(i, _)| failed.contains(format!("m{i}").as_str()));
                if pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                return Err(BackendError::Transient(format!(
                    "{} message(s) not sent after {SEND_BATCH_ROUNDS} tries: {last_error}",
                    pending.len()
                )));
            }
        }
        Ok(())
    }

    /// Deletes receipts from `url` in batches of 10; returns the receipts not deleted.
    async fn delete_from(&self, url: &str, receipts: &[String]) -> BResult<Vec<String>> {
        let mut not_deleted = Vec::new();
        for chunk in receipts.chunks(BATCH) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, r) in chunk.iter().enumerate() {
                entries.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("d{i}"))
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| BackendError::Other(format!("delete batch entry: {e}")))?,
                );
            }
            let out = self.client.delete_message_batch().queue_url(url).set_entries(Some(entries)).send().await;
            match out {
                Ok(out) => {
                    for f in out.failed() {
                        let idx = f.id().strip_prefix('d').and_then(|n| n.parse::<usize>().ok());
                        if let Some(r) = idx.and_then(|i| chunk.get(i)) {
                            not_deleted.push(r.clone());
                        }
                    }
                }
                Err(e) => {
                    // A whole batch refused (e.g. every receipt malformed): report its receipts
                    // rather than failing the call, unless the queue itself is unreachable.
                    let err = classify(&e);
                    match err {
                        BackendError::Transient(_) | BackendError::NotFound(_) => return Err(err),
                        _ => not_deleted.extend(chunk.iter().cloned()),
                    }
                }
            }
        }
        Ok(not_deleted)
    }
}

/// The URL of a queue by name.
pub(crate) async fn queue_url_of(client: &Client, name: &str) -> BResult<String> {
    let out = client.get_queue_url().queue_name(name).send().await.map_err(|e| match classify(&e) {
        BackendError::NotFound(m) => BackendError::NotFound(format!("queue {name}: {m}")),
        other => other,
    })?;
    out.queue_url().map(str::to_string).ok_or_else(|| BackendError::Other(format!("queue {name}: no URL returned")))
}

fn string_attr(value: &str) -> BResult<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| BackendError::Other(format!("message attribute: {e}")))
}

fn number_attr(value: u64) -> BResult<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .map_err(|e| BackendError::Other(format!("message attribute: {e}")))
}

fn receive_count_of(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

fn sent_at_of(m: &aws_sdk_sqs::types::Message) -> Option<DateTime<Utc>> {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

fn user_attr<'a>(m: &'a aws_sdk_sqs::types::Message, name: &str) -> Option<&'a str> {
    m.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn to_message(m: aws_sdk_sqs::types::Message) -> Option<Message> {
    let receive_count = receive_count_of(&m);
    let sent_at = sent_at_of(&m);
    Some(Message { message_id: m.message_id?, receipt: m.receipt_handle?, body: m.body.unwrap_or_default(), receive_count, sent_at })
}

fn to_dead_letter(m: &aws_sdk_sqs::types::Message) -> Option<DeadLetter> {
    let message_id = m.message_id()?.to_string();
    let reason = user_attr(m, ATTR_REASON).map(str::to_string);
    let receive_count = match user_attr(m, ATTR_RECEIVE_COUNT).and_then(|v| v.parse::<u32>().ok()) {
        Some(n) => n,
        // Moved by the redrive policy: SQS keeps the source receive count, and this peek
        // counted one more receive.
        None => receive_count_of(m).saturating_sub(1).max(1),
    };
    Some(DeadLetter { message_id, body: m.body().unwrap_or_default().to_string(), reason, receive_count })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> BResult<String> {
        if delay.as_secs() > MAX_DELAY_SECS {
            return Err(BackendError::Other(format!("delay of {}s is over SQS's {MAX_DELAY_SECS}s limit", delay.as_secs())));
        }
        let delay = delay.as_secs() as i32;
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(delay)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        out.message_id().map(str::to_string).ok_or_else(|| BackendError::Other("SQS returned no message id".into()))
    }

    async fn send_batch(&self, bodies: &[String]) -> BResult<()> {
        self.send_all(&self.queue_url, bodies).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> BResult<Vec<Message>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let raw = self.receive_from(&self.queue_url, max, wait, None).await?;
        Ok(raw.into_iter().filter_map(to_message).collect())
    }

    async fn set_visibility(&self, receipt: &str, timeout: Duration) -> BResult<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt)
            .visibility_timeout(timeout.as_secs().min(MAX_VISIBILITY_SECS) as i32)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(())
    }

    async fn delete_batch(&self, receipts: &[String]) -> BResult<Vec<String>> {
        self.delete_from(&self.queue_url, receipts).await
    }

    async fn dead_letter(&self, message: &Message, reason: &str) -> BResult<()> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let reason = truncate(reason, MAX_REASON_BYTES);
        let reason = if reason.is_empty() { "unspecified" } else { reason };
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(&message.body)
            .message_attributes(ATTR_REASON, string_attr(reason)?)
            .message_attributes(ATTR_ORIGINAL_ID, string_attr(&message.message_id)?)
            .message_attributes(ATTR_RECEIVE_COUNT, number_attr(message.receive_count as u64)?)
            .message_attributes(ATTR_DEAD_LETTERED_AT, string_attr(&now)?)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        // The copy is safe in the DLQ; now remove the original. If this fails the message
        // comes back once and is dead-lettered again (at-least-once, like every SQS move).
        self.client.delete_message().queue_url(&self.queue_url).receipt_handle(&message.receipt).send().await.map_err(|e| classify(&e))?;
        Ok(())
    }

    async fn dlq_peek(&self, max: usize) -> BResult<Vec<DeadLetter>> {
        let mut seen: HashMap<String, DeadLetter> = HashMap::new();
        let mut order = Vec::new();
        let mut receipts = Vec::new();
        // Each batch is hidden for a moment so the next receive brings the messages after it
        // (with a zero timeout the queue may return the same first ten every time); all are
        // made visible again at the end.
        let mut first = true;
        while order.len() < max {
            let wait = if first { Duration::from_secs(1) } else { Duration::ZERO };
            first = false;
            let asked = (max - order.len()).min(BATCH);
            let raw = match self.receive_from(&self.dlq_url, asked, wait, Some(PEEK_VISIBILITY_SECS)).await {
                Ok(raw) => raw,
                Err(e) => {
                    self.show_again(&receipts).await;
                    return Err(e);
                }
            };
            let mut new = 0;
            for m in &raw {
                receipts.extend(m.receipt_handle().map(str::to_string));
                if let Some(d) = to_dead_letter(m) {
                    if !seen.contains_key(&d.message_id) {
                        order.push(d.message_id.clone());
                        seen.insert(d.message_id.clone(), d);
                        new += 1;
                    }
                }
            }
            if new == 0 {
                break;
            }
        }
        self.show_again(&receipts).await;
        Ok(order.into_iter().take(max).filter_map(|id| seen.remove(&id)).collect())
    }

    async fn dlq_scrub(&self, max: usize) -> BResult<usize> {
        let mut scrubbed = 0;
        let mut seen: HashSet<String> = HashSet::new();
        let mut clean_receipts = Vec::new();
        while seen.len() < max {
            let want = (max - seen.len()).min(BATCH);
            let raw = self.receive_from(&self.dlq_url, want, Duration::ZERO, Some(REDRIVE_VISIBILITY_SECS)).await?;
            let mut new = 0;
            for m in raw {
                let (Some(id), Some(receipt)) = (m.message_id().map(str::to_string), m.receipt_handle().map(str::to_string)) else {
                    continue;
                };
                if !seen.insert(id.clone()) {
                    continue;
                }
                new += 1;
                let body = m.body().unwrap_or_default();
                let clean = crate::redact::message_body(body);
                // A redrive-policy move carries none of our attributes: its approximate receive
                // count keeps growing with every look at the DLQ, so it is replaced too, once,
                // with the count as of the move.
                if clean == body && user_attr(&m, ATTR_RECEIVE_COUNT).is_some() {
                    clean_receipts.push(receipt);
                    continue;
                }
                // The copy keeps what the DLQ shows: the reason (none for a redrive-policy move),
                // the original id and the receives before this scrub's own.
                let dead = to_dead_letter(&m);
                let mut send = self.client.send_message().queue_url(&self.dlq_url).message_body(clean);
                if let Some(reason) = dead.as_ref().and_then(|d| d.reason.as_deref()) {
                    send = send.message_attributes(ATTR_REASON, string_attr(reason)?);
                }
                let original = user_attr(&m, ATTR_ORIGINAL_ID).unwrap_or(&id).to_string();
                let count = dead.map(|d| d.receive_count).unwrap_or(1);
                send.message_attributes(ATTR_ORIGINAL_ID, string_attr(&original)?)
                    .message_attributes(ATTR_RECEIVE_COUNT, number_attr(u64::from(count))?)
                    .send()
                    .await
                    .map_err(|e| classify(&e))?;
                self.client.delete_message().queue_url(&self.dlq_url).receipt_handle(&receipt).send().await.map_err(|e| classify(&e))?;
                scrubbed += 1;
            }
            if new == 0 {
                break;
            }
        }
        self.show_again(&clean_receipts).await;
        Ok(scrubbed)
    }

    async fn dlq_redrive(&self, plan: &RedrivePlan) -> BResult<RedriveReport> {
        if plan.select == RedriveSelect::All && plan.max_moved >= plan.examine && !self.no_move_task.load(Ordering::Relaxed) {
            // SQS's own redrive moves everything server-side; emulators may not have it and it
            // needs sqs:StartMessageMoveTask, so fall back on any refusal (and remember it).
            match self.start_move_task().await {
                Ok(moved) => {
                    let mut report = RedriveReport::default();
                    if moved > 0 {
                        report.moved.insert("all".into(), moved);
                    }
                    return Ok(report);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "StartMessageMoveTask refused; redriving by hand");
                    self.no_move_task.store(true, Ordering::Relaxed);
                }
            }
        }
        let mut report = RedriveReport::default();
        let mut seen: HashSet<String> = HashSet::new();
        // Messages looked at and left stay hidden until the end, so one pass sees each once.
        let mut left_receipts = Vec::new();
        while report.examined() < plan.examine && report.moved_total() < plan.max_moved {
            let want = (plan.examine - report.examined()).min(BATCH as u64) as usize;
            let raw = self.receive_from(&self.dlq_url, want, Duration::from_secs(1), Some(REDRIVE_VISIBILITY_SECS)).await?;
            if raw.is_empty() {
                break;
            }
            let mut bodies = Vec::new();
            let mut receipts = Vec::new();
            let mut kinds = Vec::new();
            let mut new = 0;
            for m in raw {
                let Some(d) = to_dead_letter(&m) else { continue };
                if !seen.insert(d.message_id.clone()) {
                    continue;
                }
                new += 1;
                let Some(r) = m.receipt_handle else { continue };
                let take = plan.admits(report.moved_total() + bodies.len() as u64, d.kind());
                if take {
                    kinds.push(d.kind().to_string());
                    bodies.push(d.body);
                    receipts.push(r);
                } else {
                    report.count(d.kind(), false);
                    left_receipts.push(r);
                }
            }
            if new == 0 {
                break;
            }
            if !bodies.is_empty() {
                // A fresh message on the queue: receive count starts again, attributes dropped.
                self.send_all(&self.queue_url, &bodies).await?;
                let failed = self.delete_from(&self.dlq_url, &receipts).await?;
                if !failed.is_empty() {
                    tracing::warn!(
                        count = failed.len(),
                        "redriven messages could not be deleted from the DLQ; they will be redriven again"
                    );
                }
                for k in &kinds {
                    report.count(k, true);
                }
            }
        }
        for r in &left_receipts {
            // Back to visible at once; if this fails they reappear after the redrive's
            // visibility timeout anyway.
            let _ = self.client.change_message_visibility().queue_url(&self.dlq_url).receipt_handle(r).visibility_timeout(0).send().await;
        }
        Ok(report)
    }

    async fn depth(&self) -> BResult<QueueDepth> {
        let (visible, in_flight, delayed) = self.counts(&self.queue_url).await?;
        let (dv, dn, dd) = self.counts(&self.dlq_url).await?;
        Ok(QueueDepth { visible, in_flight, delayed, dead_letters: dv + dn + dd })
    }
}

impl SqsQueue {
    /// Starts an SQS message move task from the DLQ to the queue; returns the DLQ's depth when
    /// it started. The task runs asynchronously on SQS's side, so the count is what it is moving
    /// (approximately), and the messages arrive over the following seconds. Tried once, without
    /// SDK retries: any refusal falls back to the manual path.
    async fn start_move_task(&self) -> BResult<u64> {
        let (dv, _, _) = self.counts(&self.dlq_url).await?;
        if dv == 0 {
            return Ok(0);
        }
        let source = self.queue_arn(&self.dlq_url).await?;
        let dest = self.queue_arn(&self.queue_url).await?;
        self.client
            .start_message_move_task()
            .source_arn(source)
            .destination_arn(dest)
            .customize()
            .config_override(aws_sdk_sqs::config::Builder::default().retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled()))
            .send()
            .await
            .map_err(|e| classify(&e))?;
        Ok(dv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
    }

    #[test]
    fn dead_letter_prefers_recorded_receive_count() {
        let m = aws_sdk_sqs::types::Message::builder()
            .message_id("m1")
            .body("b")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "9")
            .message_attributes(ATTR_RECEIVE_COUNT, number_attr(3).expect("attr"))
            .message_attributes(ATTR_REASON, string_attr("bad").expect("attr"))
            .build();
        let d = to_dead_letter(&m).expect("dead letter");
        assert_eq!(d.receive_count, 3);
        assert_eq!(d.reason.as_deref(), Some("bad"));
        let m = aws_sdk_sqs::types::Message::builder()
            .message_id("m2")
            .body("b")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "6")
            .build();
        let d = to_dead_letter(&m).expect("dead letter");
        assert_eq!(d.receive_count, 5);
        assert_eq!(d.reason, None);
    }
}
