//! The drain on shutdown: stop taking work, let in-flight jobs finish within the drain timeout,
//! give back what does not, then flush deletes, webhooks, the budget lease and the queue.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::deletes::Deleter;
use super::Worker;

impl Worker {
    /// Waits for `tasks` up to `worker.drain_timeout_secs`, then tells the rest (through `abort`)
    /// to give their message back, and closes what the run opened.
    pub(super) async fn drain(&self, mut tasks: JoinSet<()>, abort: watch::Sender<bool>, deleter: &Deleter) {
        let s = &self.settings;
        self.health.set_draining();
        let in_flight = tasks.len();
        if in_flight > 0 {
            info!(in_flight, drain_timeout_secs = s.worker.drain_timeout_secs, "draining");
        }
        let drain = Duration::from_secs(s.worker.drain_timeout_secs);
        let drained = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(remaining = tasks.len(), "drain timeout passed; giving in-flight jobs back");
            let _ = abort.send(true);
            while tasks.join_next().await.is_some() {}
        }
        deleter.close().await;
        // Webhooks in flight get a short grace; what does not end stays `pending` on its record.
        self.processor.drain_webhooks(Duration::from_secs(s.webhooks.drain_secs)).await;
        // Give unused budget back to the fleet (a lease not returned lapses and counts in full).
        self.processor.return_budget().await;
        if let Err(e) = self.backends.queue.flush().await {
            warn!(error = %e, "could not flush the queue's deleted messages at rest");
        }
    }
}
