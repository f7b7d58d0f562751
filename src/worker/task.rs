//! One message's task, start to finish: its lease guard, the processor, and the verdict carried
//! out on the message (delete, dead-letter, back off, defer) with its one outcome report.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::{error, warn, Instrument};

use crate::backend::{Backends, Message};
use crate::error::{ErrorKind, JobError};
use crate::process::{Processor, Verdict};
use crate::settings::Settings;
use crate::telemetry::{self, Outcome};

use super::deletes::Deleter;
use super::lease::LeaseGuard;
use super::receive::give_back;
use super::Counters;

/// What a message task needs.
pub(super) struct TaskCtx {
    pub(super) settings: Arc<Settings>,
    pub(super) backends: Backends,
    pub(super) processor: Arc<Processor>,
    pub(super) deleter: Deleter,
    pub(super) counters: Arc<Counters>,
    pub(super) abort: watch::Receiver<bool>,
}

/// One message, start to finish. Holds its permit until the message is settled.
pub(super) async fn handle_message(mut ctx: TaskCtx, message: Message, permit: OwnedSemaphorePermit) {
    let _permit = permit;
    let started = Instant::now();
    let queue_wait = message.sent_at.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default());
    telemetry::job_started(queue_wait);
    let span = tracing::info_span!(
        "job",
        job_id = tracing::field::Empty,
        stage = %ctx.settings.stage,
        attempt = message.receive_count,
        model = tracing::field::Empty,
        message_id = %message.message_id,
    );
    let job_slot: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let lease = LeaseGuard::start(&ctx, &message, job_slot.clone());

    let work = std::panic::AssertUnwindSafe(ctx.processor.process(&message, job_slot.clone())).catch_unwind().instrument(span.clone());
    let verdict = tokio::select! {
        r = work => match r {
            Ok(v) => Some(v),
            Err(_) => Some(Verdict::Retry {
                job_id: job_slot.get().cloned(),
                error: JobError::transient(ErrorKind::Panic, "processing panicked"),
            }),
        },
        _ = wait_true(&mut ctx.abort) => None,
    };
    drop(lease);
    let elapsed = started.elapsed();
    // Instrumented, not entered: an entered span held across `.await` would tag whatever other
    // task runs on this thread meanwhile with this job's id.
    settle(&ctx, &message, verdict, &job_slot, elapsed).instrument(span).await;
}

/// Carries out a verdict on the message (delete, dead-letter, back off, defer) and reports the
/// outcome; `None` is the drain timeout.
async fn settle(ctx: &TaskCtx, message: &Message, verdict: Option<Verdict>, job_slot: &OnceLock<String>, elapsed: Duration) {
    let c = &ctx.counters;
    let Some(verdict) = verdict else {
        // Drain timeout: give the job and the message back for another worker.
        if let Some(id) = job_slot.get() {
            ctx.processor.abandon(id, "worker shutting down").await;
        }
        give_back(&ctx.backends, std::slice::from_ref(message)).await;
        c.abandoned.fetch_add(1, Ordering::Relaxed);
        telemetry::job_outcome(job_slot.get().map(String::as_str).unwrap_or("-"), Outcome::Retried, "shutdown", elapsed, None);
        telemetry::job_finished();
        return;
    };
    let q = &ctx.backends.queue;
    match verdict {
        Verdict::Completed { job_id, duplicate } => {
            ctx.deleter.delete(message.receipt.clone()).await;
            c.completed.fetch_add(1, Ordering::Relaxed);
            let (o, r) = if duplicate { (Outcome::Duplicate, "already_completed") } else { (Outcome::Completed, "ok") };
            telemetry::job_outcome(&job_id, o, r, elapsed, None);
        }
        Verdict::Failed { job_id, error } => {
            // Recorded as failed, not dead-lettered (budget failures in `fail` mode).
            ctx.deleter.delete(message.receipt.clone()).await;
            c.failed.fetch_add(1, Ordering::Relaxed);
            telemetry::job_outcome(&job_id, Outcome::Failed, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::DeadLetter { job_id, error } => {
            // What the DLQ keeps: no key, no caller header values, nothing that looks like one.
            let reason = crate::redact::text(&format!("{}: {}", error.kind(), error.message()));
            let kept = Message { body: crate::redact::message_body(&message.body), ..message.clone() };
            if let Err(e) = q.dead_letter(&kept, &reason).await {
                // Not lost: it stays on the queue and the redrive policy catches it.
                error!(error = %e, "dead-lettering failed; the message will be redelivered");
            }
            c.failed.fetch_add(1, Ordering::Relaxed);
            let id = job_id.as_deref().unwrap_or("-");
            telemetry::job_outcome(id, Outcome::DeadLettered, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::Retry { job_id, error } => {
            let delay = retry_delay(&ctx.settings, message.receive_count, &error);
            if let Err(e) = q.set_visibility(&message.receipt, delay).await {
                warn!(error = %e, "could not set the retry delay; the visibility timeout applies");
            }
            c.retried.fetch_add(1, Ordering::Relaxed);
            let id = job_id.as_deref().unwrap_or("-");
            telemetry::job_outcome(id, Outcome::Retried, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::Defer { job_id, error } => {
            // A fresh copy with a delay resets the receive count: budget never dead-letters.
            let delay = defer_delay(&ctx.settings, &error);
            match q.send(&message.body, delay).await {
                Ok(_) => ctx.deleter.delete(message.receipt.clone()).await,
                Err(e) => {
                    warn!(error = %e, "could not re-queue a deferred job; retrying via visibility");
                    let _ = q.set_visibility(&message.receipt, delay).await;
                }
            }
            c.deferred.fetch_add(1, Ordering::Relaxed);
            telemetry::job_outcome(&job_id, Outcome::Deferred, error.kind(), elapsed, Some(error.message()));
        }
        Verdict::Busy { job_id, until } => {
            // Another worker holds a live lease: look again after it would have expired.
            let wait = (until - chrono::Utc::now()).to_std().unwrap_or_default() + Duration::from_secs(1);
            let _ =
                q.set_visibility(&message.receipt, wait.min(Duration::from_secs(crate::backend::limits::SQS_MAX_VISIBILITY_SECS))).await;
            telemetry::job_outcome(&job_id, Outcome::Busy, "leased_elsewhere", elapsed, None);
        }
    }
    telemetry::job_finished();
}

/// How long a job deferred for budget waits: soon (with jitter, so deferred jobs do not all come
/// back in the same instant) when budget is only held, else `worker.budget_defer_secs`.
fn defer_delay(s: &Settings, error: &JobError) -> Duration {
    match error {
        JobError::Budget { retry_after: Some(soon), .. } => {
            let jitter = rand::random::<f64>() * soon.as_secs_f64();
            (*soon + Duration::from_secs_f64(jitter)).min(Duration::from_secs(s.worker.budget_defer_secs.max(1)))
        }
        _ => Duration::from_secs(s.worker.budget_defer_secs),
    }
}

/// Resolves once the flag is true (never, if its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Exponential backoff by receive count, with jitter, at least the upstream's retry hint.
pub fn retry_delay(s: &Settings, receive_count: u32, error: &JobError) -> Duration {
    let base = s.worker.retry_base_secs.max(1) as f64;
    let exp = base * 2f64.powi(receive_count.saturating_sub(1).min(20) as i32);
    let capped = exp.min(s.worker.retry_max_secs.max(1) as f64);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    let mut d = Duration::from_secs_f64(capped * jitter);
    if let JobError::Transient { retry_after: Some(r), .. } = error {
        d = d.max(*r);
    }
    d
}
