//! The stage's job events topic on SNS (`atlas-codex-events-{stage}`): the AWS
//! [`crate::events::EventSink`].
//!
//! Events are published in batches: a publish waits up to [`BATCH_WINDOW`] for others (jobs of
//! one worker end close together), then one `PublishBatch` carries up to [`BATCH_MAX`] of them,
//! so a busy worker sends about one SNS request per ten job ends. Each caller still gets its own
//! event's outcome.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use aws_sdk_sns::Client;
use tokio::sync::{mpsc, oneshot};

use super::classify;
use crate::backend::{BResult, BackendError};
use crate::events::EventSink;

/// Most messages in one `PublishBatch` (the SNS limit).
pub const BATCH_MAX: usize = 10;
/// Most bytes of one `PublishBatch` (the SNS limit is 256 KiB for the whole request; kept below
/// it for the attributes and the encoding).
const BATCH_MAX_BYTES: usize = 200 * 1024;
/// How long a publish waits for others to share its request.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// One event waiting for its batch.
struct Pending {
    body: String,
    attributes: Vec<(&'static str, String)>,
    done: oneshot::Sender<BResult<()>>,
}

/// Publishes job events to one SNS topic.
pub struct SnsEvents {
    topic_arn: String,
    tx: mpsc::Sender<Pending>,
}

impl SnsEvents {
    /// The topic `arn` if given (checked to exist), else the topic named `name`: its ARN built
    /// from `derived` (region and account, e.g. from the queue's URL) when that is given and
    /// the topic answers there, else found by listing the account's topics (emulators).
    /// [`BackendError::NotFound`] when there is none. The worker role needs `sns:Publish` and
    /// `sns:GetTopicAttributes` on the topic only.
    pub async fn open(client: Client, name: &str, arn: &str, derived: Option<(&str, &str)>) -> BResult<SnsEvents> {
        let arn = SnsEvents::find(&client, name, arn, derived).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(batcher(client, arn.clone(), rx));
        Ok(SnsEvents { topic_arn: arn, tx })
    }

    /// The topic's ARN (see [`SnsEvents::open`]).
    pub async fn find(client: &Client, name: &str, arn: &str, derived: Option<(&str, &str)>) -> BResult<String> {
        if !arn.trim().is_empty() {
            check(client, arn.trim()).await?;
            return Ok(arn.trim().to_string());
        }
        if let Some((region, account)) = derived {
            let arn = topic_arn(region, account, name);
            match check(client, &arn).await {
                Ok(()) => return Ok(arn),
                Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let suffix = format!(":{name}");
        let mut next: Option<String> = None;
        loop {
            let page = client.list_topics().set_next_token(next.take()).send().await.map_err(|e| classify(&e))?;
            if let Some(t) = page.topics().iter().filter_map(|t| t.topic_arn()).find(|a| a.ends_with(&suffix)) {
                return Ok(t.to_string());
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Err(BackendError::NotFound(format!("event topic {name}"))),
            }
        }
    }

    /// The topic's ARN.
    pub fn topic_arn(&self) -> &str {
        &self.topic_arn
    }
}

/// `arn:{partition}:sns:{region}:{account}:{name}` (the partition from the region's prefix).
pub fn topic_arn(region: &str, account: &str, name: &str) -> String {
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    format!("arn:{partition}:sns:{region}:{account}:{name}")
}

/// The account id in an SQS queue URL (`https://sqs.{region}.amazonaws.com/{account}/{name}`,
/// or an emulator's `http://host:port/{account}/{name}`).
pub fn account_of_queue_url(url: &str) -> Option<&str> {
    let mut parts = url.trim_end_matches('/').rsplit('/');
    let _name = parts.next()?;
    parts.next().filter(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
}

async fn check(client: &Client, arn: &str) -> BResult<()> {
    client.get_topic_attributes().topic_arn(arn).send().await.map_err(|e| match classify(&e) {
        BackendError::Other(m) if m.contains("NotFound") => BackendError::NotFound(format!("event topic {arn}")),
        other => other,
    })?;
    Ok(())
}

/// Collects waiting events into batches and publishes them until every sender is gone.
async fn batcher(client: Client, topic_arn: String, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let mut bytes = batch[0].body.len();
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX && bytes < BATCH_MAX_BYTES {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => {
                    bytes += p.body.len();
                    batch.push(p);
                }
                Ok(None) | Err(_) => break,
            }
        }
        publish_batch(&client, &topic_arn, batch).await;
    }
}

/// One `PublishBatch`; every event's sender learns its own outcome.
async fn publish_batch(client: &Client, topic_arn: &str, batch: Vec<Pending>) {
    let mut entries = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for (i, p) in batch.into_iter().enumerate() {
        match entry(i, &p) {
            Ok(e) => {
                entries.push(e);
                waiting.push((i.to_string(), p.done));
            }
            Err(e) => {
                let _ = p.done.send(Err(e));
            }
        }
    }
    if entries.is_empty() {
        return;
    }
    match client.publish_batch().topic_arn(topic_arn).set_publish_batch_request_entries(Some(entries)).send().await {
        Ok(out) => {
            for (id, done) in waiting {
                let failed = out.failed().iter().find(|f| f.id() == id);
                let _ = done.send(match failed {
                    None => Ok(()),
                    Some(f) => {
                        Err(BackendError::Transient(format!("SNS refused the event: {} {}", f.code(), f.message().unwrap_or_default())))
                    }
                });
            }
        }
        Err(e) => {
            let e = classify(&e);
            for (_, done) in waiting {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}

fn entry(i: usize, p: &Pending) -> BResult<PublishBatchRequestEntry> {
    let mut b = PublishBatchRequestEntry::builder().id(i.to_string()).message(&p.body);
    for (name, value) in &p.attributes {
        let v = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .map_err(|e| BackendError::Other(format!("event attribute {name}: {e}")))?;
        b = b.message_attributes(*name, v);
    }
    b.build().map_err(|e| BackendError::Other(format!("event entry: {e}")))
}

#[async_trait]
impl EventSink for SnsEvents {
    async fn publish(&self, body: &str, attributes: &[(&'static str, String)]) -> BResult<()> {
        let (done, outcome) = oneshot::channel();
        let p = Pending { body: body.to_string(), attributes: attributes.to_vec(), done };
        self.tx.send(p).await.map_err(|_| BackendError::Other("the event publisher stopped".into()))?;
        outcome.await.map_err(|_| BackendError::Transient("the event publisher dropped the event".into()))?
    }

    fn location(&self) -> String {
        self.topic_arn.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_arn_is_built_from_the_queue_urls_account_and_the_region() {
        assert_eq!(
            account_of_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/atlas-codex-queue-preview"),
            Some("123456789012")
        );
        assert_eq!(account_of_queue_url("http://127.0.0.1:5000/000000000000/q"), Some("000000000000"));
        assert_eq!(account_of_queue_url("http://localhost/q"), None);
        assert_eq!(
            topic_arn("eu-west-1", "123456789012", "atlas-codex-events-preview"),
            "arn:aws:sns:eu-west-1:123456789012:atlas-codex-events-preview"
        );
        assert!(topic_arn("cn-north-1", "1", "t").starts_with("arn:aws-cn:"));
    }
}
