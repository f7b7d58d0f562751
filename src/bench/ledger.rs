//! A budget ledger that counts the worker's writes to the real one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::Utc;

use crate::backend::{BResult, BudgetLedger, Charge, LedgerSnapshot, Reservation, ReserveOutcome};

/// Counts the writes the worker makes to the budget ledger (reserve, settle, release, declare,
/// close).
pub(super) struct CountingLedger {
    /// The ledger written to.
    pub(super) inner: Arc<dyn BudgetLedger>,
    /// Writes so far.
    pub(super) writes: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl BudgetLedger for CountingLedger {
    async fn reserve(
        &self,
        period: &str,
        reservation: &Reservation,
        limit_micros: i64,
        now: chrono::DateTime<Utc>,
    ) -> BResult<ReserveOutcome> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.reserve(period, reservation, limit_micros, now).await
    }
    async fn settle(&self, period: &str, charge: &Charge) -> BResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.settle(period, charge).await
    }
    async fn release(&self, period: &str, reservation_id: &str) -> BResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release(period, reservation_id).await
    }
    async fn snapshot(&self, period: &str, now: chrono::DateTime<Utc>) -> BResult<LedgerSnapshot> {
        self.inner.snapshot(period, now).await
    }
    async fn declare(&self, period: &str, id: &str, bound: i64, expires_at: chrono::DateTime<Utc>) -> BResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.declare(period, id, bound, expires_at).await
    }
    async fn close(&self, period: &str, id: &str) -> BResult<Option<i64>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.close(period, id).await
    }
    async fn lapsed(&self, period: &str, before: chrono::DateTime<Utc>) -> BResult<Vec<Reservation>> {
        self.inner.lapsed(period, before).await
    }
}
