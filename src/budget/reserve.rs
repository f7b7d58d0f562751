//! Reserving a call: a hold in a lease with room (or a new lease), covered by a declared ceiling
//! before the call is sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::backend::{BResult, Reservation};
use crate::error::{ErrorKind, JobError};
use crate::pricing::micros_to_usd;

use super::{period, Budget, Hold, Inner, RATE_WINDOW};

/// While a call's ceiling is being declared: dropped (the caller gave up), it gives the call
/// back without a charge, since nothing was sent; [`Unsent::disarm`] once the declaration ended.
struct Unsent<'a> {
    inner: &'a Inner,
    hold: &'a mut Hold,
}

impl Unsent<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.hold.budget.take().is_some() {
            self.inner.finish_call(&self.hold.lease_id, &self.hold.reservation.id, None);
        }
    }
}

impl Budget {
    /// Holds `worst_case_micros` for one call of job `job_id`, inside a lease (taking a new lease
    /// from the ledger when no held lease has room).
    ///
    /// `reservation_id` must be unique per call: reserving an id already in flight is granted
    /// again without a second hold (the duplicate hold charges nothing).
    ///
    /// Errors:
    /// - [`JobError::Budget`] with `job_cap: false` when the month's remaining budget cannot
    ///   cover it (the job is deferred); the message says what was needed and what was left;
    /// - [`JobError::Budget`] with `job_cap: true` when the call alone is larger than the whole
    ///   monthly limit (it could never run; the job is failed rather than deferred forever);
    /// - [`JobError::Transient`] (`budget_unavailable`) when the ledger could not be reached.
    pub async fn reserve(&self, job_id: &str, reservation_id: &str, worst_case_micros: i64, now: DateTime<Utc>) -> Result<Hold, JobError> {
        let amount = worst_case_micros.max(0);
        let limit = self.inner.limit_micros;
        if limit > 0 && amount > limit {
            return Err(JobError::Budget {
                message: format!(
                    "this call's worst case ${:.6} is more than the whole monthly budget ${:.2}",
                    micros_to_usd(amount),
                    micros_to_usd(limit)
                ),
                job_cap: true,
                retry_after: None,
            });
        }
        let period = period(now);
        let reservation = Reservation {
            id: reservation_id.to_string(),
            job_id: job_id.to_string(),
            amount_micros: amount,
            expires_at: now
                .checked_add_signed(chrono::Duration::from_std(self.inner.ttl).unwrap_or(chrono::Duration::MAX))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        self.ensure_ticker();
        // A lease whose ceiling was closed (it lapsed and was recovered) is retired: try another.
        for _ in 0..3 {
            let hold = self.hold_or_lease(&period, &reservation, now).await?;
            if let Some(hold) = self.cover(hold).await? {
                return Ok(hold);
            }
        }
        Err(JobError::transient(ErrorKind::BudgetUnavailable, "budget ledger: three leases were closed under the call"))
    }

    /// A hold in a held lease with room, or in a new lease.
    async fn hold_or_lease(&self, period: &str, reservation: &Reservation, now: DateTime<Utc>) -> Result<Hold, JobError> {
        if let Some(hold) = self.hold_in_lease(period, reservation) {
            return Ok(hold);
        }
        let _one = self.inner.acquiring.lock().await;
        // Another task may have leased meanwhile.
        if let Some(hold) = self.hold_in_lease(period, reservation) {
            return Ok(hold);
        }
        self.lease(period, reservation, now).await?;
        self.hold_in_lease(period, reservation)
            .ok_or_else(|| JobError::transient(ErrorKind::BudgetUnavailable, "a fresh budget lease had no room for the call"))
    }

    /// Makes sure the lease's declared ceiling covers the call before it is sent (write-ahead,
    /// see the [`crate::budget`] doc). `None` (the hold given back) when the ceiling was closed: the lease
    /// lapsed and was recovered, so it is retired and the call must go into another one.
    async fn cover(&self, mut hold: Hold) -> Result<Option<Hold>, JobError> {
        if hold.budget.is_none() {
            return Ok(Some(hold));
        }
        // Nothing is sent before the declaration is stored: a caller that gives up meanwhile
        // (job timeout, drain) drops an unsent call, which is given back without a charge.
        let unsent = Unsent { inner: &self.inner, hold: &mut hold };
        let declared = self.declare_ceiling(&unsent.hold.period, &unsent.hold.lease_id).await;
        unsent.disarm();
        if matches!(declared, Ok(true)) {
            return Ok(Some(hold));
        }
        // Not sent: given back without a charge.
        hold.budget = None;
        self.inner.finish_call(&hold.lease_id, &hold.reservation.id, None);
        match declared {
            Err(e) => Err(JobError::transient(ErrorKind::BudgetUnavailable, format!("budget ledger: {e}"))),
            Ok(_) => Ok(None),
        }
    }

    /// Declares a new ceiling for the lease when its spend and calls in flight passed the last
    /// one. `true` when the ceiling covers them (or the lease is no longer held here); `false`
    /// when the ledger closed the bound (the lease is then retired).
    pub(super) async fn declare_ceiling(&self, period: &str, lease_id: &str) -> BResult<bool> {
        let _one = self.inner.declaring.lock().await;
        let wanted = {
            let st = self.inner.lock();
            st.leases.iter().find(|l| l.id == lease_id).and_then(|l| Some((l.ceiling_needed()?, l.expires_at)))
        };
        let Some((ceiling, expires_at)) = wanted else { return Ok(true) };
        self.inner.ledger_writes.fetch_add(1, Ordering::Relaxed);
        let kept = expires_at.checked_add_signed(crate::backend::BOUND_KEPT).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let declared = self.inner.ledger.declare(period, lease_id, ceiling, kept).await;
        let mut st = self.inner.lock();
        if let Some(lease) = st.leases.iter_mut().find(|l| l.id == lease_id) {
            match declared {
                Ok(true) => lease.declared = lease.declared.max(ceiling),
                Ok(false) => lease.retired = true,
                Err(_) => {}
            }
        }
        declared
    }

    /// Puts the call into a held lease with room for it, if any.
    fn hold_in_lease(&self, period: &str, r: &Reservation) -> Option<Hold> {
        let now = Instant::now();
        let mut st = self.inner.lock();
        if let Some(lease) = st.leases.iter().find(|l| l.calls.contains_key(&r.id)) {
            // Already in flight: a duplicate hold that charges nothing.
            let lease_id = lease.id.clone();
            return Some(Hold { period: period.to_string(), reservation: r.clone(), lease_id, budget: None });
        }
        for l in st.leases.iter_mut() {
            if !l.retired && (l.period != period || now.saturating_duration_since(l.taken_at) >= self.inner.max_age) {
                l.retired = true;
            }
        }
        let lease = st.leases.iter_mut().filter(|l| !l.retired && l.free() >= r.amount_micros).min_by_key(|l| l.free())?;
        lease.calls.insert(r.id.clone(), r.amount_micros);
        lease.last_active = now;
        let lease_id = lease.id.clone();
        st.recent.push_back((now, r.amount_micros));
        while st.recent.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) > RATE_WINDOW) {
            st.recent.pop_front();
        }
        Some(Hold { period: period.to_string(), reservation: r.clone(), lease_id, budget: Some(Arc::downgrade(&self.inner)) })
    }
}
