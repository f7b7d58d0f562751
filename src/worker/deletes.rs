//! Batched deletes: settled messages leave the queue ten receipts (or one flush interval) at a time.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::backend::Backends;
use crate::telemetry;

/// Batches deletes: flushes at 10 receipts or every `flush` interval.
#[derive(Clone)]
pub(super) struct Deleter {
    tx: mpsc::Sender<DeleteCmd>,
}

enum DeleteCmd {
    Delete(String),
    Close(tokio::sync::oneshot::Sender<()>),
}

impl Deleter {
    pub(super) fn spawn(backends: Backends, flush: Duration) -> Deleter {
        let (tx, mut rx) = mpsc::channel::<DeleteCmd>(1024);
        tokio::spawn(async move {
            let mut pending: Vec<String> = Vec::new();
            let flush = flush.max(Duration::from_millis(1));
            loop {
                let cmd = if pending.is_empty() {
                    rx.recv().await
                } else {
                    match tokio::time::timeout(flush, rx.recv()).await {
                        Ok(c) => c,
                        Err(_) => {
                            flush_deletes(&backends, &mut pending).await;
                            continue;
                        }
                    }
                };
                match cmd {
                    Some(DeleteCmd::Delete(r)) => {
                        pending.push(r);
                        if pending.len() >= 10 {
                            flush_deletes(&backends, &mut pending).await;
                        }
                    }
                    Some(DeleteCmd::Close(done)) => {
                        flush_deletes(&backends, &mut pending).await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        flush_deletes(&backends, &mut pending).await;
                        return;
                    }
                }
            }
        });
        Deleter { tx }
    }

    pub(super) async fn delete(&self, receipt: String) {
        let _ = self.tx.send(DeleteCmd::Delete(receipt)).await;
    }

    pub(super) async fn close(&self) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self.tx.send(DeleteCmd::Close(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }
}

async fn flush_deletes(b: &Backends, pending: &mut Vec<String>) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::take(pending);
    let n = batch.len() as u64;
    // A few tries: a failed delete means a redelivery, which the job record turns into a no-op.
    let todo = batch;
    for attempt in 0..3 {
        match b.queue.delete_batch(&todo).await {
            Ok(failed) => {
                telemetry::messages_deleted(n - failed.len() as u64);
                if failed.is_empty() {
                    return;
                }
                warn!(failed = failed.len(), "some deletes failed; redelivery will be a no-op");
                return;
            }
            Err(e) => {
                warn!(error = %e, attempt, "delete batch failed");
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}
