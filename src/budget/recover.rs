//! Recovering the lapsed leases of dead workers: closed and settled at their declared ceiling.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::{BResult, BudgetLedger, Charge};

use super::{period, Inner};

impl Inner {
    /// Recovers the leases of this period (and of the last one, at a month's turn) that lapsed
    /// more than `grace` ago (see [`recover_lapsed`]).
    pub(super) async fn recover(&self, grace: Duration) {
        let now = Utc::now();
        let before = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::zero());
        let mut periods = vec![period(now)];
        let earlier = period(before - chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::zero()));
        if earlier != periods[0] {
            periods.push(earlier);
        }
        for p in periods {
            match recover_lapsed(self.ledger.as_ref(), &p, before).await {
                Ok(n) => {
                    self.ledger_writes.fetch_add(2 * n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(period = %p, error = %e, "could not recover lapsed budget leases; trying again later"),
            }
        }
    }
}

/// Settles every reservation of `period` that lapsed before `before` (its holder died) at the
/// ceiling its holder declared, or in full when it declared none; the number recovered.
///
/// The ceiling is closed first, so a holder that is alive after all can declare no more and
/// spends at most what is charged here: the ledger never under-counts. Any worker may run it,
/// several at once: close and settle are idempotent per reservation.
pub async fn recover_lapsed(ledger: &dyn BudgetLedger, period: &str, before: DateTime<Utc>) -> BResult<usize> {
    let lapsed = ledger.lapsed(period, before).await?;
    for r in &lapsed {
        let ceiling = ledger.close(period, &r.id).await?;
        // A ceiling may pass the lease when charges passed their calls' worst cases.
        let charged = ceiling.map_or(r.amount_micros, |c| c.max(0));
        ledger.settle(period, &Charge::single(r.id.clone(), r.job_id.clone(), crate::backend::RECOVERED_MODEL, None, charged)).await?;
        crate::telemetry::budget_lease_recovered(&r.id, r.amount_micros, charged);
    }
    Ok(lapsed.len())
}
