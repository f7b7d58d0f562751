//! Leasing a slice of the month's budget: the lease held in memory, its size, and taking a new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::backend::{Charge, ChargeLine, Reservation, ReserveOutcome};
use crate::error::{ErrorKind, JobError};
use crate::pricing::micros_to_usd;

use super::{Budget, BUDGET_RECHECK, DECLARE_STEPS, LEASE_COVER, LEASE_IDLE_RETURN, LEASE_MIN_CALLS, LEASE_SHARE_OF_REMAINING};

/// One lease held by this worker.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) id: String,
    pub(super) period: String,
    pub(super) amount: i64,
    /// Actual (or estimated) spend charged so far.
    pub(super) used: i64,
    /// Worst cases of calls in flight, by call id.
    pub(super) calls: HashMap<String, i64>,
    pub(super) lines: BTreeMap<(String, Option<String>), i64>,
    pub(super) taken_at: Instant,
    pub(super) last_active: Instant,
    /// The ceiling last declared on the ledger (spend never passes it), micro-USD.
    pub(super) declared: i64,
    /// When the lease lapses on the ledger.
    pub(super) expires_at: DateTime<Utc>,
    /// Takes no new calls; returned once its calls end.
    pub(super) retired: bool,
    /// Sized to a single call (the budget is nearly spent): returned as soon as it is idle.
    pub(super) single: bool,
}

impl Lease {
    fn in_flight(&self) -> i64 {
        self.calls.values().sum()
    }
    pub(super) fn free(&self) -> i64 {
        self.amount - self.used - self.in_flight()
    }
    pub(super) fn due(&self, now: Instant, max_age: Duration) -> bool {
        self.calls.is_empty()
            && (self.retired
                || self.single
                || now.saturating_duration_since(self.last_active) >= LEASE_IDLE_RETURN
                || now.saturating_duration_since(self.taken_at) >= max_age)
    }
    /// The ceiling to declare before the calls in flight may be sent, if the last one does
    /// not cover them: spent + in flight + one step, at most the lease.
    pub(super) fn ceiling_needed(&self) -> Option<i64> {
        let need = self.used.saturating_add(self.in_flight());
        (need > self.declared).then(|| need.saturating_add(self.amount / DECLARE_STEPS).min(self.amount).max(need))
    }
    pub(super) fn charge(&self) -> Charge {
        Charge {
            reservation_id: self.id.clone(),
            job_id: String::new(),
            amount_micros: self.used.max(0),
            lines: self
                .lines
                .iter()
                .filter(|(_, a)| **a > 0)
                .map(|((model, tenant), a)| ChargeLine { model: model.clone(), tenant: tenant.clone(), amount_micros: *a })
                .collect(),
        }
    }
}

impl Budget {
    /// The size of the next lease: about [`LEASE_COVER`] of the recent spend rate, at least
    /// [`LEASE_MIN_CALLS`] calls of this size, at most `remaining / LEASE_SHARE_OF_REMAINING`,
    /// and never less than the call itself.
    fn lease_size(&self, worst: i64, remaining: i64) -> i64 {
        let st = self.inner.lock();
        let recent: i64 = st.recent.iter().map(|(_, a)| *a).sum();
        let span =
            st.recent.front().map(|(t, _)| Instant::now().saturating_duration_since(*t)).unwrap_or_default().max(Duration::from_secs(1));
        let rate = recent as f64 / span.as_secs_f64();
        let cover = (rate * LEASE_COVER.as_secs_f64()).min(i64::MAX as f64 / 2.0) as i64;
        let wanted = cover.max(worst.saturating_mul(LEASE_MIN_CALLS));
        wanted.min(remaining / LEASE_SHARE_OF_REMAINING).max(worst)
    }

    /// Takes one new lease for a call of worst case `r.amount_micros`; retires the leases held.
    pub(super) async fn lease(&self, period: &str, r: &Reservation, now: DateTime<Utc>) -> Result<(), JobError> {
        let limit = self.inner.limit_micros;
        // First ask as if the whole remainder were free; the ledger's answer corrects it.
        let mut remaining = limit;
        for _ in 0..3 {
            let size = self.lease_size(r.amount_micros, remaining);
            let seq = self.inner.next_lease.fetch_add(1, Ordering::Relaxed);
            let lease = Reservation {
                id: format!("lease:{}:{seq}", self.inner.owner),
                job_id: self.inner.owner.clone(),
                amount_micros: size,
                expires_at: r.expires_at,
            };
            self.inner.ledger_writes.fetch_add(1, Ordering::Relaxed);
            match self.inner.ledger.reserve(period, &lease, limit, now).await {
                Ok(ReserveOutcome::Granted) => {
                    let t = Instant::now();
                    let mut st = self.inner.lock();
                    for l in st.leases.iter_mut() {
                        l.retired = true;
                    }
                    st.leases.push(Lease {
                        id: lease.id,
                        period: period.to_string(),
                        amount: size,
                        used: 0,
                        calls: HashMap::new(),
                        lines: BTreeMap::new(),
                        taken_at: t,
                        last_active: t,
                        declared: 0,
                        expires_at: lease.expires_at,
                        retired: false,
                        single: size <= r.amount_micros,
                    });
                    return Ok(());
                }
                Ok(ReserveOutcome::Refused { spent_micros, reserved_micros }) => {
                    let left = (limit - spent_micros - reserved_micros).max(0);
                    if left < r.amount_micros || size <= r.amount_micros {
                        return Err(JobError::Budget {
                            message: format!(
                                "needed ${:.6} for the next call; ${:.6} left of ${:.2} in {period} (spent ${:.6}, leased or held by running calls ${:.6})",
                                micros_to_usd(r.amount_micros),
                                micros_to_usd(left),
                                micros_to_usd(limit),
                                micros_to_usd(spent_micros),
                                micros_to_usd(reserved_micros),
                            ),
                            job_cap: false,
                            // Leased or held money flows back within seconds (returned leases,
                            // ended calls); only a spent month waits the long delay.
                            retry_after: (spent_micros + r.amount_micros <= limit).then_some(BUDGET_RECHECK),
                        });
                    }
                    remaining = left;
                }
                Err(e) => {
                    return Err(JobError::transient(ErrorKind::BudgetUnavailable, format!("budget ledger: {e}")));
                }
            }
        }
        Err(JobError::transient(ErrorKind::BudgetUnavailable, "budget ledger: lease refused three times"))
    }
}
