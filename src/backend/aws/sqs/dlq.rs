//! The DLQ side of [`Queue`](crate::backend::Queue): dead-lettering a message, peeking at and
//! scrubbing the DLQ, and redriving it (SQS's move task, else by hand).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use super::message::{number_attr, string_attr, to_dead_letter, truncate, user_attr};
use super::{
    SqsQueue, ATTR_DEAD_LETTERED_AT, ATTR_ORIGINAL_ID, ATTR_REASON, ATTR_RECEIVE_COUNT, BATCH, MAX_REASON_BYTES, PEEK_VISIBILITY_SECS,
    REDRIVE_VISIBILITY_SECS,
};
use crate::backend::aws::classify;
use crate::backend::{BResult, DeadLetter, Message, RedrivePlan, RedriveReport, RedriveSelect};

impl SqsQueue {
    /// [`Queue::dead_letter`](crate::backend::Queue::dead_letter): a copy with the reason
    /// attributes to the DLQ, then the original deleted.
    pub(super) async fn move_to_dlq(&self, message: &Message, reason: &str) -> BResult<()> {
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

    /// [`Queue::dlq_peek`](crate::backend::Queue::dlq_peek): up to `max` DLQ messages, made
    /// visible again before it returns.
    pub(super) async fn peek_dlq(&self, max: usize) -> BResult<Vec<DeadLetter>> {
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

    /// [`Queue::dlq_scrub`](crate::backend::Queue::dlq_scrub): replaces DLQ messages by redacted
    /// copies (and those moved by the redrive policy by copies with their receive count);
    /// returns how many were replaced.
    pub(super) async fn scrub_dlq(&self, max: usize) -> BResult<usize> {
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

    /// [`Queue::dlq_redrive`](crate::backend::Queue::dlq_redrive): SQS's own move task when
    /// everything is asked for and it is allowed, else by hand.
    pub(super) async fn redrive_dlq(&self, plan: &RedrivePlan) -> BResult<RedriveReport> {
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
        self.redrive_by_hand(plan).await
    }

    /// The manual redrive: receives from the DLQ, sends fresh copies of the selected messages to
    /// the queue and deletes them from the DLQ; the others are made visible again at the end.
    async fn redrive_by_hand(&self, plan: &RedrivePlan) -> BResult<RedriveReport> {
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
                self.requeue(&bodies, &receipts).await?;
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

    /// Sends fresh copies of DLQ messages to the queue, then deletes them from the DLQ.
    async fn requeue(&self, bodies: &[String], receipts: &[String]) -> BResult<()> {
        // A fresh message on the queue: receive count starts again, attributes dropped.
        self.send_all(&self.queue_url, bodies).await?;
        let failed = self.delete_from(&self.dlq_url, receipts).await?;
        if !failed.is_empty() {
            tracing::warn!(count = failed.len(), "redriven messages could not be deleted from the DLQ; they will be redriven again");
        }
        Ok(())
    }

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
