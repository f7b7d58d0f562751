//! Returning leases to the ledger: settled or released when due, by the maintenance task, after a
//! call, or all at once on drain (with retries on a failing ledger).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{BResult, BackendError};

use super::lease::Lease;
use super::{Budget, Inner, DRAIN_RETURN_FOR, LEASE_TICK, LEDGER_RETRY_BASE, LEDGER_WRITE_TRIES};

impl Inner {
    /// Takes the leases due for return out of the state.
    fn take_due(&self, all: bool) -> Vec<Lease> {
        let now = Instant::now();
        let mut st = self.lock();
        let max_age = self.max_age;
        let (due, keep): (Vec<Lease>, Vec<Lease>) =
            st.leases.drain(..).partition(|l| if all { l.calls.is_empty() } else { l.due(now, max_age) });
        st.leases = keep;
        due
    }

    /// Returns leases to the ledger: settled with their spend, or released when nothing was spent.
    async fn give_back(&self, leases: Vec<Lease>) -> BResult<()> {
        let mut result = Ok(());
        self.returning.fetch_add(leases.len() as u64, Ordering::AcqRel);
        for lease in leases {
            let _returned = Returned(&self.returning);
            self.ledger_writes.fetch_add(1, Ordering::Relaxed);
            let r = if lease.used > 0 {
                let charge = lease.charge();
                retry(|| self.ledger.settle(&lease.period, &charge)).await
            } else {
                retry(|| self.ledger.release(&lease.period, &lease.id)).await
            };
            if let Err(e) = r {
                // Kept, retired, and returned again on the next tick (a ledger that fails for a
                // few seconds must not strand the slice until it lapses). Meanwhile it counts
                // in full on the ledger (over-count, never under-count).
                tracing::warn!(lease = %lease.id, error = %e, "could not return a budget lease; retrying");
                let mut lease = lease;
                lease.retired = true;
                self.lock().leases.push(lease);
                result = Err(e);
            }
        }
        result
    }
}

/// Counts one lease as no longer being returned when dropped.
struct Returned<'a>(&'a AtomicU64);

impl Drop for Returned<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Budget {
    /// Starts the task that returns idle and retired leases (once per budget).
    pub(super) fn ensure_ticker(&self) {
        if self.inner.ticker.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = (self.inner.ttl / 4).max(Duration::from_secs(1));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut next_recovery = Instant::now() + every;
                loop {
                    tokio::time::sleep(LEASE_TICK).await;
                    let Some(inner) = weak.upgrade() else { return };
                    let due = inner.take_due(false);
                    if !due.is_empty() {
                        let _ = inner.give_back(due).await;
                    }
                    if Instant::now() >= next_recovery {
                        next_recovery = Instant::now() + every;
                        inner.recover(every).await;
                    }
                }
            });
        }
    }

    /// Returns the leases that are due (retired, single-call, idle or old, with no call in flight).
    pub(super) async fn return_due(&self) -> BResult<()> {
        let due = self.inner.take_due(false);
        self.inner.give_back(due).await
    }

    /// Returns every lease with no call in flight (shutdown), retrying a failing ledger for up to
    /// [`DRAIN_RETURN_FOR`]. Leases still in use are retired.
    pub async fn drain(&self) -> BResult<()> {
        for l in self.inner.lock().leases.iter_mut() {
            l.retired = true;
        }
        let started = Instant::now();
        loop {
            let all = self.inner.take_due(true);
            let r = self.inner.give_back(all).await;
            // Done when nothing is left to return here or in the ticker's hands.
            let left = self.inner.returning.load(Ordering::Acquire) > 0 || self.inner.lock().leases.iter().any(|l| l.calls.is_empty());
            if !left && r.is_ok() {
                return Ok(());
            }
            if started.elapsed() >= DRAIN_RETURN_FOR {
                return r.and(Err(BackendError::Transient("budget leases not returned before the drain ended".into())));
            }
            tokio::time::sleep(LEASE_TICK).await;
        }
    }
}

/// Runs one ledger write, trying a retryable error again up to [`LEDGER_WRITE_TRIES`] times in
/// all, the pause from [`LEDGER_RETRY_BASE`] doubling each time.
async fn retry<F, Fut>(mut f: F) -> BResult<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BResult<()>>,
{
    let mut pause = LEDGER_RETRY_BASE;
    let mut tries = 0;
    loop {
        tries += 1;
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && tries < LEDGER_WRITE_TRIES => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}
