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

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;

use super::classify;
use crate::backend::{BResult, BackendError, DeadLetter, Message, Queue, QueueDepth, RedrivePlan, RedriveReport};
use message::to_message;

mod batch;
mod dlq;
mod message;

use crate::backend::limits::{
    SQS_BATCH as BATCH, SQS_MAX_DELAY_SECS as MAX_DELAY_SECS, SQS_MAX_VISIBILITY_SECS as MAX_VISIBILITY_SECS,
    SQS_MAX_WAIT_SECS as MAX_WAIT_SECS,
};
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

    /// The DLQ's URL.
    pub fn dlq_url(&self) -> &str {
        &self.dlq_url
    }

    /// The ARN of the queue at `url`.
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

    /// The approximate (visible, in flight, delayed) message counts of the queue at `url`.
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
}

/// The URL of a queue by name.
pub(crate) async fn queue_url_of(client: &Client, name: &str) -> BResult<String> {
    let out = client.get_queue_url().queue_name(name).send().await.map_err(|e| match classify(&e) {
        BackendError::NotFound(m) => BackendError::NotFound(format!("queue {name}: {m}")),
        other => other,
    })?;
    out.queue_url().map(str::to_string).ok_or_else(|| BackendError::Other(format!("queue {name}: no URL returned")))
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
        self.move_to_dlq(message, reason).await
    }

    async fn dlq_peek(&self, max: usize) -> BResult<Vec<DeadLetter>> {
        self.peek_dlq(max).await
    }

    async fn dlq_scrub(&self, max: usize) -> BResult<usize> {
        self.scrub_dlq(max).await
    }

    async fn dlq_redrive(&self, plan: &RedrivePlan) -> BResult<RedriveReport> {
        self.redrive_dlq(plan).await
    }

    async fn depth(&self) -> BResult<QueueDepth> {
        let (visible, in_flight, delayed) = self.counts(&self.queue_url).await?;
        let (dv, dn, dd) = self.counts(&self.dlq_url).await?;
        Ok(QueueDepth { visible, in_flight, delayed, dead_letters: dv + dn + dd })
    }
}
