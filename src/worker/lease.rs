//! The message's heartbeat, owned by a guard: it keeps a running job's message hidden from other
//! workers until the guard is dropped. (The job's own lease is renewed by the processor's
//! `JobLease`, held by the claimed job.)

use std::time::Duration;

use tracing::warn;

use crate::backend::Message;
use crate::telemetry;

use super::task::TaskCtx;

/// Extends the message's visibility every third of its timeout for as long as it lives; dropping
/// it stops the heartbeat.
pub(super) struct VisibilityGuard {
    heartbeat: tokio::task::JoinHandle<()>,
}

impl VisibilityGuard {
    /// Starts the heartbeat for `message`.
    pub(super) fn start(ctx: &TaskCtx, message: &Message) -> VisibilityGuard {
        let vt = Duration::from_secs(ctx.settings.queue.visibility_timeout_secs);
        let every = vt / 3;
        let queue = ctx.backends.queue.clone();
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
            }
        });
        VisibilityGuard { heartbeat }
    }
}

impl Drop for VisibilityGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
