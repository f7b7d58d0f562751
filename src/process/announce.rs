//! The end of a job as producers hear of it ([`crate::events`]): the announcement written with
//! the end, the event published after it, and the repairs a redelivered message makes.

use chrono::Utc;

use super::{clear_lease, Processor, Verdict};
use crate::backend::Message;
use crate::error::{ErrorKind, JobError};
use crate::job::{Callback, JobRecord, JobStatus};

impl Processor {
    /// [`crate::events::stamp_end`] for an end this message brought; whether `rec` is an end.
    pub(super) fn stamp_end(&self, rec: &mut JobRecord, message: &Message, callback: Option<&Callback>) -> bool {
        crate::events::stamp_end(rec, &self.settings, Some(&message.message_id), callback)
    }

    /// Announces an end just recorded; whether its event is published.
    pub(super) async fn announce_end(&self, rec: &JobRecord, callback: Option<&Callback>) -> bool {
        self.announcer.announce(rec, callback, true).await
    }

    /// A redelivery of a completed job: announces its end if that never happened (the worker
    /// that completed it stopped first). The message may go only once the event is published.
    pub(super) async fn redelivered_completed(&self, rec: &JobRecord, callback: Option<&Callback>) -> Verdict {
        if self.announcer.announce(rec, callback, false).await {
            Verdict::Completed { job_id: rec.id.clone(), duplicate: true }
        } else {
            Verdict::Retry {
                job_id: Some(rec.id.clone()),
                error: JobError::transient(ErrorKind::EventUnpublished, "the job's end event could not be published yet"),
            }
        }
    }

    /// When `rec` (just claimed) had failed for good by this very message (a worker recorded
    /// the failure, then stopped before the message reached the DLQ): puts the record back as
    /// it was, announces the failure if it was not, and settles the message as the failure
    /// said, without running the job again. `None` for any other claim (a redriven message is a
    /// new delivery: its receive count starts again, and it runs).
    pub(super) async fn resettle_failed(&self, rec: &JobRecord, message: &Message, callback: Option<&Callback>) -> Option<Verdict> {
        let a = rec.announcement.as_ref()?;
        let ended_by_this_message = a.event_type == crate::events::EventType::Failed
            && a.message_id.as_deref() == Some(message.message_id.as_str())
            && message.receive_count > 1
            && rec.error.as_ref().is_some_and(|e| e.permanent);
        if !ended_by_this_message {
            return None;
        }
        let mut back = rec.clone();
        back.status = JobStatus::Failed;
        back.attempts = back.attempts.saturating_sub(1); // this claim was not an attempt
        back.updated_at = Utc::now();
        clear_lease(&mut back);
        let id = back.id.clone();
        if let Err(e) = self.backends.jobs.finish(&back, &self.worker_id).await {
            return Some(Verdict::Retry { job_id: Some(id), error: e.into() });
        }
        self.announcer.announce(&back, callback, false).await;
        let info = back.error.clone().unwrap_or_else(|| crate::job::ErrorInfo {
            kind: ErrorKind::Failed.as_str().into(),
            message: String::new(),
            permanent: true,
        });
        let kind = ErrorKind::parse(&info.kind).unwrap_or(ErrorKind::Failed);
        let error = JobError::permanent(kind, info.message);
        Some(match kind {
            // Budget failures are recorded `failed` and deleted, never dead-lettered.
            ErrorKind::JobCostCap | ErrorKind::BudgetExhausted => Verdict::Failed { job_id: id, error },
            _ => Verdict::DeadLetter { job_id: Some(id), error },
        })
    }
}
