//! The queue protocol's limits, in one place, each with its reason. SQS sets them; the embedded
//! queue keeps the same ones so that a job that works locally works on a real stage, and the
//! settings refuse values past them.

/// SQS's longest long poll, seconds (`WaitTimeSeconds` is 0..=20).
pub const SQS_MAX_WAIT_SECS: u64 = 20;
/// SQS's batch size limit: a receive, a send batch and a delete batch take at most 10 entries.
pub const SQS_BATCH: usize = 10;
/// SQS's longest delivery delay, seconds (`DelaySeconds` is 0..=900): a deferred job comes back
/// no later than this.
pub const SQS_MAX_DELAY_SECS: u64 = 900;
/// SQS's longest visibility timeout, seconds (12 hours): no retry backoff, busy wait or heartbeat
/// can hide a message for longer.
pub const SQS_MAX_VISIBILITY_SECS: u64 = 43_200;
