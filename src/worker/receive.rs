//! Receiving: permits first, then a long poll for at most that many messages, each started as a
//! task that owns its permit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::backend::{Backends, Message};
use crate::settings::Settings;
use crate::telemetry;

use super::task::{handle_message, TaskCtx};
use super::{Counters, RunOptions, Worker};

impl Worker {
    /// Receives and starts messages until stopped (or idle with `exit_when_idle`); returns the
    /// tasks still running, for the drain.
    pub(super) async fn receive_loop(
        &self,
        opts: &RunOptions,
        mut stop_rx: watch::Receiver<bool>,
        counters: &Counters,
        ctx: impl Fn() -> TaskCtx,
    ) -> JoinSet<()> {
        let s = &self.settings;
        let concurrency = s.worker.concurrency;
        let sem = Arc::new(Semaphore::new(concurrency));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let wait = Duration::from_secs(s.queue.wait_time_secs);
        let batch = receive_batch(s);
        let mut receive_errors = 0u32;
        loop {
            while tasks.try_join_next().is_some() {}
            if *stop_rx.borrow() {
                break;
            }
            let Some(permits) = take_permits(&sem, batch, &mut stop_rx).await else { break };
            // The receive is not cancelled by shutdown: what it returns is started or given back.
            self.health.receive_started();
            let received = self.backends.queue.receive(permits.len(), wait).await;
            self.health.receive_finished(received.is_ok());
            let messages = match received {
                Ok(m) => {
                    receive_errors = 0;
                    m
                }
                Err(e) => {
                    receive_errors += 1;
                    let pause = Duration::from_millis(200 * 2u64.pow(receive_errors.min(6)));
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "receive failed");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {},
                        _ = stop_rx.changed() => {},
                    }
                    continue;
                }
            };
            if !messages.is_empty() {
                telemetry::messages_received(messages.len() as u64);
                counters.received.fetch_add(messages.len() as u64, Ordering::Relaxed);
            }
            if *stop_rx.borrow() {
                give_back(&self.backends, &messages).await;
                break;
            }
            if messages.is_empty() {
                drop(permits);
                if opts.exit_when_idle && sem.available_permits() == concurrency && self.queue_drained().await {
                    info!("queue drained and nothing in flight; exiting");
                    break;
                }
                continue;
            }
            self.start(messages, permits, &mut tasks, &ctx).await;
        }
        tasks
    }

    /// Starts one task per message, each owning one permit.
    async fn start(&self, messages: Vec<Message>, permits: Vec<OwnedSemaphorePermit>, tasks: &mut JoinSet<()>, ctx: &impl Fn() -> TaskCtx) {
        let mut permits = permits.into_iter();
        for message in messages {
            let Some(permit) = permits.next() else {
                // Cannot happen (receive honours `max`), but never hold what cannot start.
                give_back(&self.backends, std::slice::from_ref(&message)).await;
                continue;
            };
            tasks.spawn(handle_message(ctx(), message, permit));
        }
    }
}

/// Permits first: never receive more than can start now. Waits for one, then takes what else is
/// free up to `batch`; `None` when stopped while waiting.
async fn take_permits(sem: &Arc<Semaphore>, batch: usize, stop_rx: &mut watch::Receiver<bool>) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        p = sem.clone().acquire_owned() => p.ok()?,
        _ = stop_rx.changed() => return None,
    };
    let mut permits = vec![first];
    while permits.len() < batch {
        match sem.clone().try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    Some(permits)
}

/// Most messages one receive asks the embedded queue for. SQS caps a receive at 10
/// (`queue.receive_batch`); the embedded queue has no such cap, and at 1,024 jobs in flight ten
/// per receive means 100+ receive round trips a second through the one SQLite thread, each
/// waiting behind the jobs' own writes, which starves the loop while it refills free slots.
pub const EMBEDDED_RECEIVE_BATCH: usize = 256;

/// Messages to ask for per receive: `queue.receive_batch` on SQS; on the embedded queue up to
/// [`EMBEDDED_RECEIVE_BATCH`] (never more than `worker.concurrency`). Either way permits are
/// taken first, so the worker still never holds a message it cannot start.
pub(super) fn receive_batch(s: &Settings) -> usize {
    let configured = s.queue.receive_batch.max(1);
    let batch = match s.storage.backend {
        crate::settings::BackendKind::Sqlite => configured.max(EMBEDDED_RECEIVE_BATCH),
        crate::settings::BackendKind::Aws => configured,
    };
    batch.min(s.worker.concurrency).max(1)
}

/// Makes messages visible again at once (not started: shutdown, or no permit).
pub(super) async fn give_back(b: &Backends, messages: &[Message]) {
    for m in messages {
        if let Err(e) = b.queue.set_visibility(&m.receipt, Duration::ZERO).await {
            warn!(message_id = %m.message_id, error = %e, "could not give a message back; it reappears after its visibility timeout");
        }
    }
}
