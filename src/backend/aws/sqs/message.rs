//! Reading SQS messages as the contract's [`Message`] and [`DeadLetter`], and building the message
//! attributes the worker writes.

use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};
use chrono::{DateTime, TimeZone, Utc};

use super::{ATTR_REASON, ATTR_RECEIVE_COUNT};
use crate::backend::{BResult, BackendError, DeadLetter, Message};

/// A `String` message attribute.
pub(super) fn string_attr(value: &str) -> BResult<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|e| BackendError::Other(format!("message attribute: {e}")))
}

/// A `Number` message attribute.
pub(super) fn number_attr(value: u64) -> BResult<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .map_err(|e| BackendError::Other(format!("message attribute: {e}")))
}

/// SQS's approximate receive count of a message (at least 1).
fn receive_count_of(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1)
}

/// When SQS received the message first, if it says.
fn sent_at_of(m: &aws_sdk_sqs::types::Message) -> Option<DateTime<Utc>> {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// A string message attribute the worker set, by name.
pub(super) fn user_attr<'a>(m: &'a aws_sdk_sqs::types::Message, name: &str) -> Option<&'a str> {
    m.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(super) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A received message in the contract's terms (`None` without an id or receipt).
pub(super) fn to_message(m: aws_sdk_sqs::types::Message) -> Option<Message> {
    let receive_count = receive_count_of(&m);
    let sent_at = sent_at_of(&m);
    Some(Message { message_id: m.message_id?, receipt: m.receipt_handle?, body: m.body.unwrap_or_default(), receive_count, sent_at })
}

/// A DLQ message in the contract's terms, with the worker's reason and receive count when it
/// dead-lettered it itself (`None` without an id).
pub(super) fn to_dead_letter(m: &aws_sdk_sqs::types::Message) -> Option<DeadLetter> {
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
