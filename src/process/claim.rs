//! A claimed job's lease: renewed while the job runs, by a guard that stops renewing when it is
//! dropped (the job ended, was given back, or its task was cancelled).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use crate::backend::JobStore;

/// Renews this worker's lease on one job every third of the lease's length while it lives.
pub(super) struct JobLease {
    renewal: tokio::task::JoinHandle<()>,
}

impl JobLease {
    /// Starts renewing `owner`'s lease on `job_id` (each renewal runs `lease` from now).
    pub(super) fn start(jobs: Arc<dyn JobStore>, job_id: &str, owner: &str, lease: Duration) -> JobLease {
        let (job_id, owner) = (job_id.to_string(), owner.to_string());
        let every = (lease / 3).max(Duration::from_millis(10));
        let renewal = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            // A stalled store must not cause a burst of catch-up renewals.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
                match jobs.renew(&job_id, &owner, until).await {
                    Ok(true) => {}
                    Ok(false) => warn!(job_id = %job_id, "job lease lost"),
                    Err(e) => warn!(job_id = %job_id, error = %e, "lease renewal failed"),
                }
            }
        });
        JobLease { renewal }
    }
}

impl Drop for JobLease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}
