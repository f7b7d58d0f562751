//! The batched SQS calls shared by the queue and its DLQ: send, delete and visibility resets,
//! ten entries at a time.

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};

use super::{SqsQueue, BATCH, SEND_BATCH_ROUNDS};
use crate::backend::aws::classify;
use crate::backend::{BResult, BackendError};

impl SqsQueue {
    /// Makes received DLQ messages visible again at once (best effort: they reappear after
    /// their visibility timeout anyway).
    pub(super) async fn show_again(&self, receipts: &[String]) {
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

    /// Sends bodies to `url` in batches of 10, re-sending refused entries a few times.
    pub(super) async fn send_all(&self, url: &str, bodies: &[String]) -> BResult<()> {
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
    pub(super) async fn delete_from(&self, url: &str, receipts: &[String]) -> BResult<Vec<String>> {
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
