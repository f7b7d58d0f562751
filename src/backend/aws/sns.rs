//! The stage's job events topic on SNS (`atlas-codex-events-{stage}`): the AWS
//! [`crate::events::EventSink`].

use async_trait::async_trait;
use aws_sdk_sns::types::MessageAttributeValue;
use aws_sdk_sns::Client;

use super::classify;
use crate::backend::{BResult, BackendError};
use crate::events::EventSink;

/// Publishes job events to one SNS topic.
pub struct SnsEvents {
    client: Client,
    topic_arn: String,
}

impl SnsEvents {
    /// The topic `arn` if given (checked to exist), else the topic named `name`: its ARN built
    /// from `derived` (region and account, e.g. from the queue's URL) when that is given and
    /// the topic answers there, else found by listing the account's topics (emulators).
    /// [`BackendError::NotFound`] when there is none. The worker role needs `sns:Publish` and
    /// `sns:GetTopicAttributes` on the topic only.
    pub async fn open(client: Client, name: &str, arn: &str, derived: Option<(&str, &str)>) -> BResult<SnsEvents> {
        if !arn.trim().is_empty() {
            check(&client, arn.trim()).await?;
            return Ok(SnsEvents { client, topic_arn: arn.trim().to_string() });
        }
        if let Some((region, account)) = derived {
            let arn = topic_arn(region, account, name);
            match check(&client, &arn).await {
                Ok(()) => return Ok(SnsEvents { client, topic_arn: arn }),
                Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let suffix = format!(":{name}");
        let mut next: Option<String> = None;
        loop {
            let page = client.list_topics().set_next_token(next.take()).send().await.map_err(|e| classify(&e))?;
            if let Some(t) = page.topics().iter().filter_map(|t| t.topic_arn()).find(|a| a.ends_with(&suffix)) {
                return Ok(SnsEvents { client, topic_arn: t.to_string() });
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

#[async_trait]
impl EventSink for SnsEvents {
    async fn publish(&self, body: &str, attributes: &[(&'static str, String)]) -> BResult<()> {
        let mut req = self.client.publish().topic_arn(&self.topic_arn).message(body);
        for (name, value) in attributes {
            let v = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| BackendError::Other(format!("event attribute {name}: {e}")))?;
            req = req.message_attributes(*name, v);
        }
        req.send().await.map_err(|e| classify(&e))?;
        Ok(())
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
