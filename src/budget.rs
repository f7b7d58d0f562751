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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use tokio::time::Instant;

use crate::backend::{BResult, BackendError, BudgetLedger, Charge, ChargeLine, LedgerSnapshot, Reservation, ReserveOutcome};
use crate::error::JobError;
use crate::pricing::micros_to_usd;
use crate::settings::Settings;

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

/// A granted hold on the budget for one model call, inside one of this worker's leases.
///
/// Give it back with [`Budget::settle`] (the call was made: its actual cost is charged),
/// [`Budget::settle_estimated`] (the call was sent but its answer never read) or
/// [`Budget::release`] (it was not made). Dropped without either, it is charged at its worst
/// case: a call the worker stopped waiting for may still have been billed.
#[derive(Debug)]
pub struct Hold {
    /// The period it was taken in (and is charged to).
    pub period: String,
    /// The call's own reservation (id, job, worst case).
    pub reservation: Reservation,
    /// The ledger reservation (lease) it sits in.
    lease_id: String,
    /// The budget to hand it back to; `None` once handed back (or for a duplicate).
    budget: Option<Weak<Inner>>,
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

/// One lease held by this worker.
#[derive(Debug)]
struct Lease {
    id: String,
    period: String,
    amount: i64,
    /// Actual (or estimated) spend charged so far.
    used: i64,
    /// Worst cases of calls in flight, by call id.
    calls: HashMap<String, i64>,
    lines: BTreeMap<(String, Option<String>), i64>,
    taken_at: Instant,
    last_active: Instant,
    /// The ceiling last declared on the ledger (spend never passes it), micro-USD.
    declared: i64,
    /// When the lease lapses on the ledger.
    expires_at: DateTime<Utc>,
    /// Takes no new calls; returned once its calls end.
    retired: bool,
    /// Sized to a single call (the budget is nearly spent): returned as soon as it is idle.
    single: bool,
}

impl Lease {
    fn in_flight(&self) -> i64 {
        self.calls.values().sum()
    }
    fn free(&self) -> i64 {
        self.amount - self.used - self.in_flight()
    }
    fn due(&self, now: Instant, max_age: Duration) -> bool {
        self.calls.is_empty()
            && (self.retired
                || self.single
                || now.saturating_duration_since(self.last_active) >= LEASE_IDLE_RETURN
                || now.saturating_duration_since(self.taken_at) >= max_age)
    }
    /// The ceiling to declare before the calls in flight may be sent, if the last one does
    /// not cover them: spent + in flight + one step, at most the lease.
    fn ceiling_needed(&self) -> Option<i64> {
        let need = self.used.saturating_add(self.in_flight());
        (need > self.declared).then(|| need.saturating_add(self.amount / DECLARE_STEPS).min(self.amount).max(need))
    }
    fn charge(&self) -> Charge {
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

    /// Ends a call on its lease: `charge` = Some((amount, model, tenant)) charges it, None
    /// releases it. Idempotent per call id.
    fn finish_call(&self, lease_id: &str, call_id: &str, charge: Option<(i64, &str, Option<&str>)>) {
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

    /// Recovers the leases of this period (and of the last one, at a month's turn) that lapsed
    /// more than `grace` ago (see [`recover_lapsed`]).
    async fn recover(&self, grace: Duration) {
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

/// Counts one lease as no longer being returned when dropped.
struct Returned<'a>(&'a AtomicU64);

impl Drop for Returned<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        Err(JobError::transient("budget_unavailable", "budget ledger: three leases were closed under the call"))
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
            .ok_or_else(|| JobError::transient("budget_unavailable", "a fresh budget lease had no room for the call"))
    }

    /// Makes sure the lease's declared ceiling covers the call before it is sent (write-ahead,
    /// see the module doc). `None` (the hold given back) when the ceiling was closed: the lease
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
            Err(e) => Err(JobError::transient("budget_unavailable", format!("budget ledger: {e}"))),
            Ok(_) => Ok(None),
        }
    }

    /// Declares a new ceiling for the lease when its spend and calls in flight passed the last
    /// one. `true` when the ceiling covers them (or the lease is no longer held here); `false`
    /// when the ledger closed the bound (the lease is then retired).
    async fn declare_ceiling(&self, period: &str, lease_id: &str) -> BResult<bool> {
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
    async fn lease(&self, period: &str, r: &Reservation, now: DateTime<Utc>) -> Result<(), JobError> {
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
                    return Err(JobError::transient("budget_unavailable", format!("budget ledger: {e}")));
                }
            }
        }
        Err(JobError::transient("budget_unavailable", "budget ledger: lease refused three times"))
    }

    /// Starts the task that returns idle and retired leases (once per budget).
    fn ensure_ticker(&self) {
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
    async fn return_due(&self) -> BResult<()> {
        let due = self.inner.take_due(false);
        self.inner.give_back(due).await
    }

    /// Charges the actual cost of the call `hold` was taken for (once per hold). When that ends
    /// a lease that is due, the lease goes back to the ledger now, and a ledger error is
    /// returned (after [`LEDGER_WRITE_TRIES`]; the lease then lapses and counts in full).
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

/// Checks a job's own cap (`max_cost_usd`) before a call: refused when what the job has spent
/// so far plus this call's worst case would pass it. `None` means no cap.
///
/// The cap is converted to micro-USD rounding down, so rounding never lets a job pass it.
/// A refusal is [`JobError::Budget`] with `job_cap: true` (the job is failed, not deferred).
pub fn check_job_cap(max_cost_usd: Option<f64>, spent_micros: i64, worst_case_micros: i64) -> Result<(), JobError> {
    let Some(cap_usd) = max_cost_usd else {
        return Ok(());
    };
    let cap = cap_micros(cap_usd);
    let after = spent_micros.max(0).saturating_add(worst_case_micros.max(0));
    if after > cap {
        return Err(JobError::Budget {
            message: format!(
                "job cap max_cost_usd=${cap_usd} would be passed: spent ${:.6} so far, next call may cost up to ${:.6}",
                micros_to_usd(spent_micros),
                micros_to_usd(worst_case_micros)
            ),
            job_cap: true,
            retry_after: None,
        });
    }
    Ok(())
}

/// A USD cap in micro-USD, rounded down (a tiny epsilon absorbs float noise such as
/// `0.07 × 1e6 = 70000.00000000001`).
fn cap_micros(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    (usd * crate::pricing::MICROS_PER_USD + 1e-6).floor() as i64
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn period_is_utc_month() {
        let t = Utc.with_ymd_and_hms(2025, 3, 31, 23, 59, 59).single().expect("valid date");
        assert_eq!(period(t), "2025-03");
        let t = Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).single().expect("valid date");
        assert_eq!(period(t), "2025-12");
        // A local time just after midnight on Apr 1 east of UTC is still March in UTC.
        let local =
            chrono::FixedOffset::east_opt(2 * 3600).and_then(|o| o.with_ymd_and_hms(2025, 4, 1, 1, 0, 0).single()).expect("valid date");
        assert_eq!(period(local.with_timezone(&Utc)), "2025-03");
    }

    #[test]
    fn job_cap() {
        assert!(check_job_cap(None, 1_000_000_000, 1_000_000_000).is_ok());
        // 0.01 USD = 10_000 µUSD: exactly reaching the cap is allowed, one more is not.
        assert!(check_job_cap(Some(0.01), 4_000, 6_000).is_ok());
        let e = check_job_cap(Some(0.01), 4_000, 6_001).expect_err("over the cap");
        assert!(matches!(e, JobError::Budget { job_cap: true, .. }), "{e:?}");
        assert!(e.message().contains("0.004000"), "{}", e.message());
        assert_eq!(cap_micros(0.07), 70_000);
        assert_eq!(cap_micros(0.000_000_5), 0);
        assert_eq!(cap_micros(f64::NAN), 0);
    }
}
