//! The fleet's monthly budget as a worker uses it: **budget leases**.
//!
//! A worker does not write the shared [`BudgetLedger`] for every model call. It leases a slice of
//! the month's remaining budget (one reservation on the ledger, which counts leased money as
//! committed), holds each call's worst case against the slice in memory, charges the call's
//! actual cost to the slice, and returns the slice with its actual spend (one settle) when it is
//! retired, idle or drained. So the ledger sees two writes per lease, however many calls the
//! lease covers, and `spent + leased ≤ limit` still holds fleet-wide: a call is made only inside
//! a granted lease, and a lease is granted only when it fits.
//!
//! Slice size follows the worker's spend rate (about [`LEASE_COVER`] of it) and never exceeds
//! `remaining / `[`LEASE_SHARE_OF_REMAINING`], so it shrinks as the month's budget nears its end;
//! at the very end a lease is one call's worst case, returned as soon as the call ends, so the
//! last few percent are still usable by every worker.
//!
//! Before a call would take a lease's spend past the last ceiling it declared, the worker
//! declares a new one on the ledger ([`BudgetLedger::declare`], write-ahead: the call is sent
//! only once the declaration is stored). The ceiling is what the lease has spent plus its
//! calls in flight plus a step of [`DECLARE_STEPS`]th of the lease, so a lease costs a handful
//! of declarations, not one per call. A worker that dies never returns its lease: the lease
//! lapses (after `budget.reservation_ttl_secs`), and any worker's maintenance task recovers it
//! ([`recover_lapsed`]): it closes the lease's ceiling (a live but slow holder can then declare
//! no more) and settles the lease at that ceiling. So the ledger over-counts a dead worker by at
//! most one step plus its calls in flight, never under-counts what the provider billed, and the
//! rest of the slice flows back to the fleet within about 1.5 × the lease lifetime.
//!
//! A call the worker stopped waiting for (timeout, job timeout, drain) may still be generated
//! and billed: its [`Hold`] is charged at its worst case when dropped unsettled ("estimated").
//!
//! Every figure is integer micro-USD (see [`crate::pricing`]). Periods are UTC calendar months
//! ([`period`]); a lease is charged to the month it was taken in.

mod give_back;
mod hold;
mod job_cap;
mod lease;
mod recover;
mod reserve;
mod settle;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use tokio::time::Instant;

use crate::backend::{BResult, BudgetLedger, LedgerSnapshot};
use crate::settings::Settings;
use lease::Lease;

pub use hold::Hold;
pub use job_cap::check_job_cap;
pub use recover::recover_lapsed;

/// How long [`Budget::used_fraction`] reuses a ledger read (it is only a routing hint).
pub const USED_FRACTION_CACHE: Duration = Duration::from_secs(1);
/// Tries of a lease return (settle or release) before giving up (the lease then lapses and
/// counts in full).
pub const LEDGER_WRITE_TRIES: u32 = 4;
/// First pause between two tries; doubled each time.
pub const LEDGER_RETRY_BASE: Duration = Duration::from_millis(50);
/// How long a draining worker keeps retrying the return of its leases on a failing ledger (the
/// leases then lapse and count in full).
pub const DRAIN_RETURN_FOR: Duration = Duration::from_secs(10);
/// A lease aims to cover this much of the worker's recent spend rate.
pub const LEASE_COVER: Duration = Duration::from_secs(30);
/// A lease never takes more than this share of what is left of the month (so several workers
/// can still lease when the budget runs low).
pub const LEASE_SHARE_OF_REMAINING: i64 = 32;
/// A lease covers at least this many calls of the size asked for (when the budget allows).
pub const LEASE_MIN_CALLS: i64 = 4;
/// A lease takes no new calls after this age (or half the lease lifetime, if shorter); it is
/// returned once its calls end.
pub const LEASE_MAX_AGE: Duration = Duration::from_secs(60);
/// A declared ceiling runs this fraction of the lease ahead of what is spent and in flight
/// (at most this many declarations per lease, plus one per call near the budget's end).
pub const DECLARE_STEPS: i64 = 8;
/// A lease with no call in flight for this long is returned (budget flows back to the fleet).
pub const LEASE_IDLE_RETURN: Duration = Duration::from_secs(2);
/// How often the maintenance task looks for leases to return.
pub const LEASE_TICK: Duration = Duration::from_millis(500);
/// How soon a job deferred for budget that is only leased or held (not spent) is tried again.
pub const BUDGET_RECHECK: Duration = Duration::from_secs(5);
/// The window over which the spend rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// The budget period containing `now`: `YYYY-MM` of the UTC calendar month.
pub fn period(now: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", now.year(), now.month())
}

#[derive(Debug, Default)]
struct State {
    leases: Vec<Lease>,
    /// (when, worst case) of recent holds, for the spend rate.
    recent: VecDeque<(Instant, i64)>,
}

struct Inner {
    ledger: Arc<dyn BudgetLedger>,
    limit_micros: i64,
    ttl: Duration,
    /// A lease takes no new calls after this age: [`LEASE_MAX_AGE`] or half of `ttl`.
    max_age: Duration,
    owner: String,
    state: Mutex<State>,
    /// One lease request at a time per worker.
    acquiring: tokio::sync::Mutex<()>,
    /// One ceiling declaration at a time per worker.
    declaring: tokio::sync::Mutex<()>,
    next_lease: AtomicU64,
    ticker: AtomicBool,
    /// Last used fraction read and when (tokio clock, so paused-time tests see it expire).
    cache: Mutex<Option<(Instant, f64)>>,
    refreshing: AtomicBool,
    /// Ledger writes made (lease requests and returns), for the benchmark.
    ledger_writes: AtomicU64,
    /// Leases taken out of the state and being returned right now (by the ticker or a call).
    returning: AtomicU64,
    estimated_calls: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The stage's budget over a shared ledger, leased a slice at a time.
pub struct Budget {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit_micros", &self.inner.limit_micros)
            .field("ttl", &self.inner.ttl)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl Budget {
    /// A budget of `limit_micros` per month whose leases lapse after `ttl`.
    pub fn new(ledger: Arc<dyn BudgetLedger>, limit_micros: i64, ttl: Duration) -> Budget {
        let owner = uuid::Uuid::new_v4().simple().to_string();
        Budget::with_owner(ledger, limit_micros, ttl, &owner[..12])
    }

    /// Like [`Budget::new`], naming this worker in its lease ids.
    pub fn with_owner(ledger: Arc<dyn BudgetLedger>, limit_micros: i64, ttl: Duration, owner: &str) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                ledger,
                limit_micros: limit_micros.max(0),
                ttl,
                max_age: LEASE_MAX_AGE.min(ttl / 2),
                owner: owner.to_string(),
                state: Mutex::new(State::default()),
                acquiring: tokio::sync::Mutex::new(()),
                declaring: tokio::sync::Mutex::new(()),
                next_lease: AtomicU64::new(0),
                ticker: AtomicBool::new(false),
                cache: Mutex::new(None),
                refreshing: AtomicBool::new(false),
                ledger_writes: AtomicU64::new(0),
                returning: AtomicU64::new(0),
                estimated_calls: AtomicU64::new(0),
            }),
        }
    }

    /// The stage's budget: `budget.monthly_usd` and `budget.reservation_ttl_secs`.
    pub fn from_settings(ledger: Arc<dyn BudgetLedger>, s: &Settings, owner: &str) -> Budget {
        Budget::with_owner(ledger, s.budget_limit_micros(), Duration::from_secs(s.budget.reservation_ttl_secs), owner)
    }

    /// The monthly limit, micro-USD.
    pub fn limit_micros(&self) -> i64 {
        self.inner.limit_micros
    }

    /// Ledger writes this worker made (lease requests and returns).
    pub fn ledger_writes(&self) -> u64 {
        self.inner.ledger_writes.load(Ordering::Relaxed)
    }

    /// Calls charged at their worst case because their answer was never read.
    pub fn estimated_calls(&self) -> u64 {
        self.inner.estimated_calls.load(Ordering::Relaxed)
    }

    /// Money leased by this worker and not yet returned, micro-USD.
    pub fn leased_micros(&self) -> i64 {
        self.inner.lock().leases.iter().map(|l| l.amount).sum()
    }

    /// The month's totals as the ledger reports them.
    pub async fn snapshot(&self, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        self.inner.ledger.snapshot(&period(now), now).await
    }

    /// The share of this month's budget committed (spent, leased or lapsed; 0-1; 1 when the
    /// limit is 0), for routing only: read at most once per [`USED_FRACTION_CACHE`], and when
    /// the ledger cannot be read the last value (or 0) is returned rather than an error.
    pub async fn used_fraction(&self, now: DateTime<Utc>) -> f64 {
        let inner = &self.inner;
        let last = inner.cache.lock().ok().and_then(|c| *c);
        if let Some((at, f)) = last {
            if at.elapsed() < USED_FRACTION_CACHE {
                return f;
            }
        }
        /// Clears the flag when the read ends, even if the caller's future is dropped mid-read.
        struct Refreshing<'a>(&'a AtomicBool);
        impl Drop for Refreshing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let refresher = (!inner.refreshing.swap(true, Ordering::AcqRel)).then(|| Refreshing(&inner.refreshing));
        if refresher.is_none() {
            if let Some((_, f)) = last {
                return f;
            }
        }
        let read = self.snapshot(now).await;
        drop(refresher);
        match read {
            Ok(s) => {
                let f = if inner.limit_micros <= 0 {
                    1.0
                } else {
                    ((s.spent_micros + s.reserved_micros + s.lapsed_micros) as f64 / inner.limit_micros as f64).clamp(0.0, 1.0)
                };
                if let Ok(mut c) = inner.cache.lock() {
                    *c = Some((Instant::now(), f));
                }
                f
            }
            Err(_) => last.map(|(_, f)| f).unwrap_or(0.0),
        }
    }
}

#[cfg(test)]
mod tests;
