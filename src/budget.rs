//! The fleet's monthly budget as the worker uses it: hold the worst case before a model call,
//! charge the actual cost after it, give the hold back when nothing was spent.
//!
//! Every figure is integer micro-USD (see [`crate::pricing`]). The atomic check lives in the
//! [`BudgetLedger`] shared by every worker of the stage, so the stage can never pass its limit:
//! a call is made only after `spent + live holds + worst case ≤ limit` was granted, and a settled
//! call is charged its actual cost, which is at most the worst case held for it.
//!
//! Periods are UTC calendar months ([`period`]); a hold is charged to the month it was taken in.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use crate::backend::{BResult, BudgetLedger, Charge, LedgerSnapshot, Reservation, ReserveOutcome};
use crate::error::JobError;
use crate::pricing::micros_to_usd;
use crate::settings::Settings;

/// How long [`Budget::used_fraction`] reuses a ledger read (it is only a routing hint).
pub const USED_FRACTION_CACHE: Duration = Duration::from_secs(1);
/// Tries of a settle or release before giving up (the hold then lapses at its expiry).
pub const LEDGER_WRITE_TRIES: u32 = 4;
/// First pause between two tries; doubled each time.
pub const LEDGER_RETRY_BASE: Duration = Duration::from_millis(50);

/// The budget period containing `now`: `YYYY-MM` of the UTC calendar month.
pub fn period(now: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", now.year(), now.month())
}

/// A granted hold on the budget for one model call. Give it back with [`Budget::settle`] (the
/// call was made) or [`Budget::release`] (it was not); if neither happens it lapses at
/// `expires_at` by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The period it was taken in (and is charged to).
    pub period: String,
    /// The reservation as written to the ledger.
    pub reservation: Reservation,
}

impl Hold {
    /// The reservation id (idempotency key of settle and release).
    pub fn id(&self) -> &str {
        &self.reservation.id
    }
    /// The worst case held, micro-USD.
    pub fn amount_micros(&self) -> i64 {
        self.reservation.amount_micros
    }
}

/// The stage's budget over a shared ledger.
pub struct Budget {
    ledger: Arc<dyn BudgetLedger>,
    limit_micros: i64,
    ttl: Duration,
    /// Last used fraction read and when (tokio clock, so paused-time tests see it expire).
    cache: Mutex<Option<(tokio::time::Instant, f64)>>,
    /// Set while one caller re-reads the ledger for [`Budget::used_fraction`]; the others keep
    /// using the last value meanwhile, so an expired cache costs one ledger read, not one per
    /// job in flight (a snapshot sums every charge of the month).
    refreshing: AtomicBool,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit_micros", &self.limit_micros)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Budget {
    /// A budget of `limit_micros` per month whose holds lapse after `ttl`.
    pub fn new(ledger: Arc<dyn BudgetLedger>, limit_micros: i64, ttl: Duration) -> Budget {
        Budget {
            ledger,
            limit_micros: limit_micros.max(0),
            ttl,
            cache: Mutex::new(None),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The stage's budget: `budget.monthly_usd` and `budget.reservation_ttl_secs`.
    pub fn from_settings(ledger: Arc<dyn BudgetLedger>, s: &Settings) -> Budget {
        Budget::new(
            ledger,
            s.budget_limit_micros(),
            Duration::from_secs(s.budget.reservation_ttl_secs),
        )
    }

    /// The monthly limit, micro-USD.
    pub fn limit_micros(&self) -> i64 {
        self.limit_micros
    }

    /// Holds `worst_case_micros` for one call of job `job_id`.
    ///
    /// `reservation_id` must be unique per call and stable across a retry of the same call
    /// (e.g. `{job_id}:{attempt}:{call}`): reserving it again is granted without a second hold.
    ///
    /// Errors:
    /// - [`JobError::Budget`] with `job_cap: false` when the month's remaining budget cannot
    ///   cover it (the job is deferred); the message says what was needed and what was left;
    /// - [`JobError::Budget`] with `job_cap: true` when the call alone is larger than the whole
    ///   monthly limit (it could never run; the job is failed rather than deferred forever);
    /// - [`JobError::Transient`] (`budget_unavailable`) when the ledger could not be reached.
    pub async fn reserve(
        &self,
        job_id: &str,
        reservation_id: &str,
        worst_case_micros: i64,
        now: DateTime<Utc>,
    ) -> Result<Hold, JobError> {
        let amount = worst_case_micros.max(0);
        if self.limit_micros > 0 && amount > self.limit_micros {
            return Err(JobError::Budget {
                message: format!(
                    "this call's worst case ${:.6} is more than the whole monthly budget ${:.2}",
                    micros_to_usd(amount),
                    micros_to_usd(self.limit_micros)
                ),
                job_cap: true,
            });
        }
        let period = period(now);
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::MAX);
        let reservation = Reservation {
            id: reservation_id.to_string(),
            job_id: job_id.to_string(),
            amount_micros: amount,
            expires_at: now
                .checked_add_signed(ttl)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        match self
            .ledger
            .reserve(&period, &reservation, self.limit_micros, now)
            .await
        {
            Ok(ReserveOutcome::Granted) => Ok(Hold {
                period,
                reservation,
            }),
            Ok(ReserveOutcome::Refused {
                spent_micros,
                reserved_micros,
            }) => {
                let left = (self.limit_micros - spent_micros - reserved_micros).max(0);
                Err(JobError::Budget {
                    message: format!(
                        "needed ${:.6} for the next call; ${:.6} left of ${:.2} in {period} (spent ${:.6}, held by running calls ${:.6})",
                        micros_to_usd(amount),
                        micros_to_usd(left),
                        micros_to_usd(self.limit_micros),
                        micros_to_usd(spent_micros),
                        micros_to_usd(reserved_micros),
                    ),
                    job_cap: false,
                })
            }
            Err(e) => Err(JobError::transient(
                "budget_unavailable",
                format!("budget ledger: {e}"),
            )),
        }
    }

    /// Charges the actual cost of the call `hold` was taken for (idempotent per hold).
    ///
    /// Transient ledger errors are retried [`LEDGER_WRITE_TRIES`] times with a doubling pause;
    /// the last error is returned (the hold then lapses at its expiry, and the caller should log
    /// the lost charge: the job record still has it).
    pub async fn settle(
        &self,
        hold: Hold,
        actual_micros: i64,
        model: &str,
        tenant: Option<&str>,
    ) -> BResult<()> {
        let charge = Charge {
            reservation_id: hold.reservation.id.clone(),
            job_id: hold.reservation.job_id.clone(),
            model: model.to_string(),
            tenant: tenant.map(str::to_string),
            amount_micros: actual_micros.max(0),
        };
        let period = hold.period;
        retry(|| self.ledger.settle(&period, &charge)).await
    }

    /// Gives a hold back without a charge (the call was not made). Retried like [`Budget::settle`].
    pub async fn release(&self, hold: Hold) -> BResult<()> {
        let id = hold.reservation.id;
        let period = hold.period;
        retry(|| self.ledger.release(&period, &id)).await
    }

    /// The month's totals as the ledger reports them.
    pub async fn snapshot(&self, now: DateTime<Utc>) -> BResult<LedgerSnapshot> {
        self.ledger.snapshot(&period(now), now).await
    }

    /// The share of this month's budget spent or held (0-1; 1 when the limit is 0), for routing
    /// only: read at most once per [`USED_FRACTION_CACHE`], and when the ledger cannot be read
    /// the last value (or 0) is returned rather than an error.
    pub async fn used_fraction(&self, now: DateTime<Utc>) -> f64 {
        let last = self.cache.lock().ok().and_then(|c| *c);
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
        let refresher = (!self.refreshing.swap(true, Ordering::AcqRel)).then(|| Refreshing(&self.refreshing));
        if refresher.is_none() {
            // Another caller is reading the ledger: a routing hint may be a moment old.
            if let Some((_, f)) = last {
                return f;
            }
        }
        let read = self.snapshot(now).await;
        drop(refresher);
        match read {
            Ok(s) => {
                let f = if self.limit_micros <= 0 {
                    1.0
                } else {
                    ((s.spent_micros + s.reserved_micros) as f64 / self.limit_micros as f64)
                        .clamp(0.0, 1.0)
                };
                if let Ok(mut c) = self.cache.lock() {
                    *c = Some((tokio::time::Instant::now(), f));
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
pub fn check_job_cap(
    max_cost_usd: Option<f64>,
    spent_micros: i64,
    worst_case_micros: i64,
) -> Result<(), JobError> {
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
        let t = Utc
            .with_ymd_and_hms(2025, 3, 31, 23, 59, 59)
            .single()
            .expect("valid date");
        assert_eq!(period(t), "2025-03");
        let t = Utc
            .with_ymd_and_hms(2025, 12, 1, 0, 0, 0)
            .single()
            .expect("valid date");
        assert_eq!(period(t), "2025-12");
        // A local time just after midnight on Apr 1 east of UTC is still March in UTC.
        let local = chrono::FixedOffset::east_opt(2 * 3600)
            .and_then(|o| o.with_ymd_and_hms(2025, 4, 1, 1, 0, 0).single())
            .expect("valid date");
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
