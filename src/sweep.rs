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
//! between receive and claim) is missed here, never wrongly marked. Marking is also safe if it were
//! wrong: a `failed` record is claimed again by a later delivery (`dlq redrive`), so no job is
//! lost.
//!
//! A second pass closes that gap from the other side ([`sweep_dead_letters`]): it peeks at the
//! DLQ (without taking the messages) and makes terminal every record whose message is there and
//! that is still `pending`, or `processing` with an expired lease, whatever its claim count.
//!
//! Before both, the DLQ is scrubbed ([`crate::backend::Queue::dlq_scrub`]): a body the queue's
//! redrive policy moved there as sent (with the producer's `apiKey` or header values) is replaced
//! by a redacted copy.
//!
//! Both passes leave the ends they record to be announced ([`crate::events`]); the DLQ pass also
//! announces a terminal record whose end was never announced (its worker stopped between the
//! end and the event).
//!
//! Every worker sweeps every `SWEEP_EVERY` (jittered), reading the `SWEEP_BATCH` oldest
//! `processing` records (a stuck record only gets older, so it reaches the front) and up to
//! `SWEEP_BATCH` dead letters. The mark is a claim (one conditional write, so two sweeping
//! workers cannot both mark it) and a finish.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::backend::{BResult, Backends, Claim, JobStore, Queue, RECEIVE_LIMIT_KIND};
use crate::events::Announcer;
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
    let grace = chrono::Duration::seconds(s.queue.visibility_timeout_secs.min(crate::backend::limits::SQS_MAX_VISIBILITY_SECS) as i64);
    rec.status == JobStatus::Processing
        && rec.attempts >= s.queue.max_receive_count.max(1)
        && rec.lease_expires_at.is_some_and(|until| until + grace < now)
}

/// One sweep: marks every abandoned record among the oldest `processing` ones; returns how many.
pub async fn sweep_once(jobs: &dyn JobStore, s: &Settings, owner: &str, now: DateTime<Utc>) -> BResult<usize> {
    Ok(sweep_abandoned(jobs, s, owner, now).await?.len())
}

/// [`sweep_once`], returning the records it marked (their ends to announce).
async fn sweep_abandoned(jobs: &dyn JobStore, s: &Settings, owner: &str, now: DateTime<Utc>) -> BResult<Vec<JobRecord>> {
    let mut marked = Vec::new();
    for rec in jobs.oldest(JobStatus::Processing, SWEEP_BATCH).await? {
        if !abandoned_at_receive_limit(&rec, s, now) {
            continue;
        }
        let message = format!(
            "the queue moved the message to the dead-letter queue after {} receives; the worker that held it last stopped without an outcome",
            s.queue.max_receive_count
        );
        if let Some(r) = mark(jobs, &rec.id, s, owner, now, RECEIVE_LIMIT_KIND, &message).await? {
            marked.push(r);
        }
    }
    Ok(marked)
}

/// Marks every record whose message is on the DLQ (among the first `SWEEP_BATCH` dead
/// letters) and that is `pending`, or `processing` with an expired lease, as failed for the
/// kind the DLQ shows; returns how many. Catches what [`sweep_once`] misses: a message the queue
/// received more often than a worker claimed it (a worker died between receive and claim).
pub async fn sweep_dead_letters(queue: &dyn Queue, jobs: &dyn JobStore, s: &Settings, owner: &str, now: DateTime<Utc>) -> BResult<usize> {
    Ok(sweep_dlq(queue, jobs, s, owner, now).await?.iter().filter(|(_, marked)| *marked).count())
}

/// [`sweep_dead_letters`], returning the records whose end is to be announced: those it marked
/// (`true`), and terminal ones whose end was never announced (`false`: their worker stopped
/// after recording the end and before publishing its event).
async fn sweep_dlq(
    queue: &dyn Queue,
    jobs: &dyn JobStore,
    s: &Settings,
    owner: &str,
    now: DateTime<Utc>,
) -> BResult<Vec<(JobRecord, bool)>> {
    let mut out = Vec::new();
    for d in queue.dlq_peek(SWEEP_BATCH).await? {
        let Ok(job) = crate::job::parse_message(&d.body) else { continue };
        let id = job.job_id.to_string();
        let Some(rec) = jobs.get(&id).await? else { continue };
        let unannounced =
            matches!(rec.status, JobStatus::Completed | JobStatus::Failed) && rec.announcement.as_ref().is_some_and(|a| !a.published);
        if unannounced {
            out.push((rec, false));
            continue;
        }
        let stuck = match rec.status {
            JobStatus::Pending => true,
            JobStatus::Processing => rec.lease_expires_at.is_some_and(|until| until < now),
            _ => false,
        };
        if !stuck {
            continue;
        }
        let message = match &d.reason {
            None => format!(
                "the queue moved the message to the dead-letter queue after {} receives; no worker recorded an outcome",
                d.receive_count
            ),
            Some(reason) => format!("the message is on the dead-letter queue ({reason}); no worker recorded an outcome"),
        };
        if let Some(r) = mark(jobs, &id, s, owner, now, d.kind(), &message).await? {
            out.push((r, true));
        }
    }
    Ok(out)
}

/// Claims `id` (re-checking its lease atomically: a worker that took the job meanwhile wins)
/// and finishes it as failed, permanently, for `kind` (its end's announcement pending); the
/// record as marked, `None` when it was not.
async fn mark(
    jobs: &dyn JobStore,
    id: &str,
    s: &Settings,
    owner: &str,
    now: DateTime<Utc>,
    kind: &str,
    message: &str,
) -> BResult<Option<JobRecord>> {
    let Claim::Claimed(mut rec) = jobs.claim(id, &s.stage, owner, now + MARK_LEASE, now).await? else {
        return Ok(None);
    };
    rec.attempts = rec.attempts.saturating_sub(1); // the sweep's claim is not an attempt
    rec.status = JobStatus::Failed;
    rec.pending_reason = None;
    rec.error = Some(ErrorInfo { kind: kind.into(), message: message.to_string(), permanent: true });
    rec.lease_owner = None;
    rec.lease_expires_at = None;
    rec.updated_at = now;
    crate::events::stamp_end(&mut rec, s, None, None);
    jobs.finish(&rec, owner).await?;
    telemetry::job_outcome(&rec.id, Outcome::DeadLettered, kind, Duration::ZERO, Some(message));
    Ok(Some(rec))
}

/// One full pass: the DLQ scrubbed of caller secrets, both sweeps, then the ends they found announced (no webhook: a dead
/// letter's body has its callback headers redacted).
pub async fn sweep_and_announce(b: &Backends, s: &Settings, owner: &str, announcer: &Announcer) {
    // Bodies the queue's redrive policy moved keep the caller's secrets: replace them first.
    match b.queue.dlq_scrub(SWEEP_BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(scrubbed = n, "dead letters carrying caller secrets replaced by redacted copies"),
        Err(e) => tracing::warn!(error = %e, "could not scrub the dead-letter queue; next sweep retries"),
    }
    match sweep_abandoned(b.jobs.as_ref(), s, owner, Utc::now()).await {
        Ok(marked) => {
            for rec in marked {
                announcer.announce(&rec, None, true).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweep of abandoned records failed; next sweep retries"),
    }
    match sweep_dlq(b.queue.as_ref(), b.jobs.as_ref(), s, owner, Utc::now()).await {
        Ok(found) => {
            for (rec, _) in found {
                announcer.announce(&rec, None, false).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweep of dead-lettered records failed; next sweep retries"),
    }
}

/// Sweeps every [`SWEEP_EVERY`] until the task is aborted; errors are logged and retried next time.
pub(crate) fn spawn(b: Backends, s: std::sync::Arc<Settings>, owner: String, announcer: Announcer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let jitter = rand::rng().random_range(0.8..1.2);
            tokio::time::sleep(SWEEP_EVERY.mul_f64(jitter)).await;
            sweep_and_announce(&b, &s, &owner, &announcer).await;
        }
    })
}
