//! The heartbeat of a running job, owned by a guard: it extends the message's visibility and the
//! job's lease until the guard is dropped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::warn;

use crate::backend::Message;
use crate::telemetry;

use super::task::TaskCtx;

/// Extends the message's visibility every third of its timeout (and the job's lease once the job
/// is claimed) for as long as it lives; dropping it stops the heartbeat.
pub(super) struct LeaseGuard {
    heartbeat: tokio::task::JoinHandle<()>,
}

impl LeaseGuard {
    /// Starts the heartbeat for `message`; `job` is filled in once the job is claimed.
    pub(super) fn start(ctx: &TaskCtx, message: &Message, job: Arc<OnceLock<String>>) -> LeaseGuard {
        let vt = Duration::from_secs(ctx.settings.queue.visibility_timeout_secs);
        let every = vt / 3;
        let queue = ctx.backends.queue.clone();
        let processor = ctx.processor.clone();
        let receipt = message.receipt.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // A stalled backend must not cause a burst of catch-up renewals.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match queue.set_visibility(&receipt, vt).await {
                    Ok(()) => telemetry::visibility_extended(),
                    Err(e) => warn!(error = %e, "visibility extension failed"),
                }
                if let Some(id) = job.get() {
                    processor.renew_lease(id).await;
                }
            }
        });
        LeaseGuard { heartbeat }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
