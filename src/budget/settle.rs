//! Settling a call: its actual (or estimated) cost charged to its lease, or the hold released.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::backend::BResult;

use super::{Budget, Hold, Inner};

impl Inner {
    /// Ends a call on its lease: `charge` = Some((amount, model, tenant)) charges it, None
    /// releases it. Idempotent per call id.
    pub(super) fn finish_call(&self, lease_id: &str, call_id: &str, charge: Option<(i64, &str, Option<&str>)>) {
        let mut st = self.lock();
        let Some(lease) = st.leases.iter_mut().find(|l| l.id == lease_id) else { return };
        if lease.calls.remove(call_id).is_none() {
            return;
        }
        lease.last_active = Instant::now();
        if let Some((amount, model, tenant)) = charge {
            let amount = amount.max(0);
            lease.used = lease.used.saturating_add(amount);
            *lease.lines.entry((model.to_string(), tenant.map(str::to_string))).or_insert(0) += amount;
        }
    }
}

impl Budget {
    /// Charges the actual cost of the call `hold` was taken for (once per hold). When that ends
    /// a lease that is due, the lease goes back to the ledger now, and a ledger error is
    /// returned (after [`LEDGER_WRITE_TRIES`](super::LEDGER_WRITE_TRIES); the lease then lapses
    /// and counts in full).
    pub async fn settle(&self, mut hold: Hold, actual_micros: i64, model: &str, tenant: Option<&str>) -> BResult<()> {
        if hold.budget.take().is_some() {
            self.inner.finish_call(&hold.lease_id, &hold.reservation.id, Some((actual_micros, model, tenant)));
            if actual_micros > hold.reservation.amount_micros {
                // Charged above its worst case (the provider counted more input than the worker):
                // the spend may now pass the declared ceiling, so declare it at once.
                if let Err(e) = self.declare_ceiling(&hold.period, &hold.lease_id).await {
                    tracing::warn!(lease = %hold.lease_id, error = %e, "could not declare a budget lease's ceiling after a charge above its worst case");
                }
            }
        }
        self.return_due().await
    }

    /// Charges a call whose answer was never read (timeout, broken connection) at its worst
    /// case: the provider may have generated and billed it.
    pub async fn settle_estimated(&self, hold: Hold, model: &str, tenant: Option<&str>) -> BResult<()> {
        let worst = hold.amount_micros();
        self.inner.estimated_calls.fetch_add(1, Ordering::Relaxed);
        self.settle(hold, worst, model, tenant).await
    }

    /// Gives a hold back without a charge (the call was not made or not billed).
    pub async fn release(&self, mut hold: Hold) -> BResult<()> {
        if hold.budget.take().is_some() {
            self.inner.finish_call(&hold.lease_id, &hold.reservation.id, None);
        }
        self.return_due().await
    }
}
