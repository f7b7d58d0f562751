//! The job queue: messages received and deleted, heartbeats, queue depth, and AWS requests.

use metrics::{counter, gauge};

use crate::backend::QueueDepth;

use super::names::*;

/// `n` messages came back from a receive call.
pub fn messages_received(n: u64) {
    counter!(MESSAGES_RECEIVED_TOTAL).increment(n);
}

/// `n` messages were deleted from the queue.
pub fn messages_deleted(n: u64) {
    counter!(MESSAGES_DELETED_TOTAL).increment(n);
}

/// A heartbeat extended a message's visibility timeout.
pub fn visibility_extended() {
    counter!(VISIBILITY_EXTENSIONS_TOTAL).increment(1);
}

/// The queue's approximate counts: `atlas_queue_messages{state}`.
pub fn queue_depth(d: &QueueDepth) {
    gauge!(QUEUE_MESSAGES, "state" => "visible").set(d.visible as f64);
    gauge!(QUEUE_MESSAGES, "state" => "in_flight").set(d.in_flight as f64);
    gauge!(QUEUE_MESSAGES, "state" => "delayed").set(d.delayed as f64);
    gauge!(QUEUE_MESSAGES, "state" => "dead_letter").set(d.dead_letters as f64);
}

/// One AWS request (an HTTP attempt) was sent. `operation` is the API name for SQS and DynamoDB
/// (`ReceiveMessage`, `UpdateItem`, ...) and the HTTP method for S3: a bounded set.
pub fn aws_request(service: &'static str, operation: &str) {
    counter!(AWS_REQUESTS_TOTAL, "service" => service, "operation" => operation.to_string()).increment(1);
}
