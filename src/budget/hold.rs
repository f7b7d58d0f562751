//! The per-call hold: one model call's worst case, held inside one of this worker's leases.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use crate::backend::Reservation;

use super::Inner;

/// A granted hold on the budget for one model call, inside one of this worker's leases.
///
/// Give it back with [`Budget::settle`](super::Budget::settle) (the call was made: its actual
/// cost is charged), [`Budget::settle_estimated`](super::Budget::settle_estimated) (the call was
/// sent but its answer never read) or [`Budget::release`](super::Budget::release) (it was not
/// made). Dropped without either, it is charged at its worst case: a call the worker stopped
/// waiting for may still have been billed.
#[derive(Debug)]
pub struct Hold {
    /// The period it was taken in (and is charged to).
    pub period: String,
    /// The call's own reservation (id, job, worst case).
    pub reservation: Reservation,
    /// The ledger reservation (lease) it sits in.
    pub(super) lease_id: String,
    /// The budget to hand it back to; `None` once handed back (or for a duplicate).
    pub(super) budget: Option<Weak<Inner>>,
}

impl Hold {
    /// The call's reservation id.
    pub fn id(&self) -> &str {
        &self.reservation.id
    }
    /// The ledger reservation (budget lease) this call is charged to.
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }
    /// The worst case held, micro-USD.
    pub fn amount_micros(&self) -> i64 {
        self.reservation.amount_micros
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(inner) = self.budget.take().and_then(|w| w.upgrade()) {
            // Abandoned mid-call: the provider may bill it, so charge the worst case.
            let worst = self.reservation.amount_micros;
            inner.finish_call(&self.lease_id, &self.reservation.id, Some((worst, "(abandoned call)", None)));
            inner.estimated_calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}
