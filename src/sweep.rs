//! Records the queue gave up on. A message received `queue.max_receive_count` times is moved to
//! the DLQ by the queue's redrive policy the next time its visibility runs out, and no worker
//! sees it again. When the worker that held it last died (SIGKILL, OOM, a lost node), nobody
//! wrote its outcome: its record would stay `processing` with an expired lease for ever.
//!
//! The sweep finds such records and makes them terminal as the DLQ shows them: `failed`,
//! `receive_limit`, permanent. A record qualifies when it is `processing`, its lease expired more
//! than one visibility timeout ago (so its message has been visible again since), and it was
//! claimed at least `max_receive_count` times. Claims never outnumber receives, so such a
//! message cannot be delivered again; a message received more often than claimed (a worker died
//! between receive and claim) is missed, never wrongly marked. Marking is also safe if it were
//! wrong: a `failed` record is claimed again by a later delivery (`dlq redrive`), so no job is
//! lost.
//!
//! Every worker sweeps every `SWEEP_EVERY` (jittered), reading the `SWEEP_BATCH` oldest
//! `processing` records: a stuck record only gets older, so it reaches the front. The mark is
//! a claim (one conditional write, so two sweeping workers cannot both mark it) and a finish.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::backend::{BResult, Backends, Claim, JobStore};
use crate::job::{ErrorInfo, JobRecord, JobStatus};
use crate::settings::Settings;
use crate::telemetry::{self, Outcome};

/// How often each worker sweeps (±20% jitter, so a fleet's sweeps spread out).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// The oldest `processing` records read per sweep.
pub(crate) const SWEEP_BATCH: usize = 100;
/// The lease a sweep takes while it marks a record.
const MARK_LEASE: chrono::Duration = chrono::Duration::seconds(30);

/// Whether `rec` was left by a dead worker at its last receive (see the module doc).
pub(crate) fn abandoned_at_receive_limit(rec: &JobRecord, s: &Settings, now: DateTime<Utc>) -> bool {
    let grace = chrono::Duration::seconds(s.queue.visibility_timeout_secs.min(43_200) as i64);
    rec.status == JobStatus::Processing
        && rec.attempts >= s.queue.max_receive_count.max(1)
        && rec.lease_expires_at.is_some_and(|until| until + grace < now)
}

/// One sweep: marks every abandoned record among the oldest `processing` ones; returns how many.
pub async fn sweep_once(jobs: &dyn JobStore, s: &Settings, owner: &str, now: DateTime<Utc>) -> BResult<usize> {
    let mut marked = 0;
    for rec in jobs.oldest(JobStatus::Processing, SWEEP_BATCH).await? {
        if !abandoned_at_receive_limit(&rec, s, now) {
            continue;
        }
        // The claim re-checks the lease atomically: a worker that took the job meanwhile wins.
        let Claim::Claimed(mut rec) = jobs.claim(&rec.id, &s.stage, owner, now + MARK_LEASE, now).await? else {
            continue;
        };
        rec.attempts = rec.attempts.saturating_sub(1); // the sweep's claim is not an attempt
        let message = format!(
            "the queue moved the message to the dead-letter queue after {} receives; the worker that held it last stopped without an outcome",
            s.queue.max_receive_count
        );
        rec.status = JobStatus::Failed;
        rec.pending_reason = None;
        rec.error = Some(ErrorInfo { kind: "receive_limit".into(), message: message.clone(), permanent: true });
        rec.lease_owner = None;
        rec.lease_expires_at = None;
        rec.updated_at = now;
        jobs.finish(&rec, owner).await?;
        telemetry::job_outcome(&rec.id, Outcome::DeadLettered, "receive_limit", Duration::ZERO, Some(&message));
        marked += 1;
    }
    Ok(marked)
}

/// Sweeps every [`SWEEP_EVERY`] until the task is aborted; errors are logged and retried next time.
pub(crate) fn spawn(b: Backends, s: std::sync::Arc<Settings>, owner: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::time::sleep(SWEEP_EVERY.mul_f64(jitter)).await;
            if let Err(e) = sweep_once(b.jobs.as_ref(), &s, &owner, Utc::now()).await {
                tracing::warn!(error = %e, "sweep of abandoned records failed; next sweep retries");
            }
        }
    })
}
