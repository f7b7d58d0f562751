//! Fleet-wide limits: every worker of a stage takes request slots and tokens from shared,
//! fixed capacity windows in the stage's [`RateStore`], a small batch at a time.
//!
//! ## Windows
//! Time is cut into windows of `w` seconds, numbered from the Unix epoch (so every worker on
//! every machine agrees which window is current, within clock skew). A span of 60 s touches at
//! most `⌈60 / w⌉ + 1` windows, so a window may hold `L / (⌈60 / w⌉ + 1)` of a per-minute limit
//! `L` and no 60 s span (the provider's sliding minute) ever sees more than `L`. The long-run
//! rate is that cap per `w` seconds: for 120 rpm and `w = 5`, 9 per window, 108 per minute
//! (90% of the key), at most 117 in any minute. `plan` picks the `w` in `1..=30` that leaves
//! the largest usable share, unless `rate_limit.window_secs` fixes it.
//!
//! ## Leases
//! A worker keeps, per model, what it took from the current window and has not used. A call
//! takes one request and its tokens from it; when it runs short, one task of the process (the
//! others wait on a lock) takes a batch from the store: as many requests as calls are waiting,
//! or an eighth of what the worker used in the last window, whichever is more, at most a
//! quarter of the window. Leftovers die with their window (they were never sent, so the
//! provider never counted them). A window the store says is full is not asked again: the
//! worker sleeps to the next one (plus a few ms of jitter, so a fleet does not stampede).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::time::Instant;

use crate::backend::{BackendError, RateStore, RateUnits};
use crate::telemetry;

/// Longest a store call may take before the worker treats the store as unreachable.
pub(crate) const STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest window [`plan`] picks by itself.
const MAX_AUTO_WINDOW_SECS: u64 = 30;
/// A batch is at most this share of a window's cap (`cap / 4`, at least 1).
const BATCH_SHARE_OF_WINDOW: u32 = 4;
/// A batch is at least this share of what the worker used in the previous window.
const BATCH_SHARE_OF_LAST_USE: u32 = 8;
/// Longest random delay added after a window turns, so workers do not all write at once.
const WINDOW_JITTER_MS: u64 = 40;

/// The window length and what one window may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowPlan {
    /// Window length, milliseconds.
    pub(crate) window_ms: u64,
    /// Per window: requests (`u32::MAX` = unlimited) and tokens (`u64::MAX` = unlimited).
    pub(crate) cap: RateUnits,
}

/// Windows a 60 s span of windows `w` seconds long can touch.
fn windows_per_minute_span(w: u64) -> u64 {
    60u64.div_ceil(w) + 1
}

/// What a window of `w` seconds may hold of a per-minute limit (0 = unlimited → `None`).
fn window_cap(limit: u64, w: u64) -> Option<u64> {
    (limit > 0).then(|| limit / windows_per_minute_span(w))
}

/// The plan for limits `rpm` and `tpm` (0 = unlimited), with `window_secs` (0 = automatic).
/// `None` when neither is limited. Every window can hold at least one request.
pub(crate) fn plan(rpm: u64, tpm: u64, window_secs: u64) -> Option<WindowPlan> {
    if rpm == 0 && tpm == 0 {
        return None;
    }
    // The limit that decides the window: requests when limited (they are few), else tokens.
    let decisive = if rpm > 0 { rpm } else { tpm };
    let usable = |w: u64| window_cap(decisive, w).unwrap_or(0) * 60 / w;
    let w = if window_secs > 0 {
        window_secs.min(60)
    } else {
        (1..=MAX_AUTO_WINDOW_SECS)
            .filter(|w| window_cap(decisive, *w).unwrap_or(0) >= 1)
            .max_by(|a, b| usable(*a).cmp(&usable(*b)).then(b.cmp(a)))
            .unwrap_or(60)
    };
    let requests = window_cap(rpm, w).map_or(u32::MAX, |c| u32::try_from(c.max(1)).unwrap_or(u32::MAX));
    let tokens = window_cap(tpm, w).map_or(u64::MAX, |c| c.max(1));
    Some(WindowPlan { window_ms: w * 1000, cap: RateUnits { requests, tokens } })
}

/// Wall-clock milliseconds read through tokio's clock: the Unix time at start plus tokio's
/// elapsed time, so windows agree across processes and paused-time tests still work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FleetClock {
    origin_unix_ms: u64,
    origin: Instant,
}

impl FleetClock {
    pub(crate) fn new() -> FleetClock {
        let origin_unix_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0);
        FleetClock { origin_unix_ms, origin: Instant::now() }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.origin_unix_ms + u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The tokio instant at which Unix time `ms` is reached.
    fn instant_at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms.saturating_sub(self.origin_unix_ms))
    }
}

/// What this worker holds of the current window for one model.
#[derive(Debug, Default)]
struct Lease {
    window: u64,
    left: RateUnits,
    /// Requests used in `window` and in the one before.
    used: u32,
    used_before: u32,
    /// The store said `window` is full (or the provider did).
    full: bool,
}

/// One unit taken for a call: its window and what it took (to give back when not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The window it was taken from.
    pub window: u64,
    /// What it took.
    pub units: RateUnits,
}

/// Counters for benchmarks and tests.
#[derive(Debug, Default)]
pub(crate) struct FleetCounters {
    pub(crate) store_writes: AtomicU64,
}

/// One model's shared limit as this worker sees it.
pub(crate) struct SharedLimit {
    model: String,
    plan: WindowPlan,
    /// The provider's own request limit when lower than the configured one (0 = none seen).
    provider_rpm: AtomicU64,
    lease: tokio::sync::Mutex<Lease>,
    waiting: AtomicU32,
    pub(crate) counters: Arc<FleetCounters>,
}

/// Decrements the waiting count (and gauge) when a waiting call stops waiting.
struct Waiting<'a>(&'a SharedLimit);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        telemetry::ratelimit_waiting(&self.0.model, -1);
    }
}

impl SharedLimit {
    pub(crate) fn new(model: &str, plan: WindowPlan, counters: Arc<FleetCounters>) -> SharedLimit {
        SharedLimit {
            model: model.to_string(),
            plan,
            provider_rpm: AtomicU64::new(0),
            lease: tokio::sync::Mutex::new(Lease::default()),
            waiting: AtomicU32::new(0),
            counters,
        }
    }

    pub(crate) fn plan(&self) -> WindowPlan {
        self.plan
    }

    /// The cap of one window now: the plan's, lowered to the provider's limit when it said less.
    fn cap(&self) -> RateUnits {
        let provider = self.provider_rpm.load(Ordering::Relaxed);
        let mut cap = self.plan.cap;
        if provider > 0 {
            if let Some(c) = window_cap(provider, self.plan.window_ms / 1000) {
                cap.requests = cap.requests.min(u32::try_from(c.max(1)).unwrap_or(u32::MAX));
            }
        }
        cap
    }

    /// The provider says the key allows `rpm` requests a minute; lowers this worker's caps when
    /// that is less than configured. Returns true when it changed something.
    pub(crate) fn provider_limit(&self, rpm: u64) -> bool {
        let provider_cap = window_cap(rpm, self.plan.window_ms / 1000).unwrap_or(u64::MAX);
        if provider_cap >= u64::from(self.plan.cap.requests) {
            return false;
        }
        self.provider_rpm.swap(rpm, Ordering::Relaxed) != rpm
    }

    fn window_at(&self, ms: u64) -> u64 {
        ms / self.plan.window_ms
    }

    /// Waits for one request slot and `tokens` tokens from the shared windows. `Err` when the
    /// store failed or did not answer in [`STORE_TIMEOUT`] (the caller falls back).
    pub(crate) async fn acquire(&self, store: &dyn RateStore, clock: &FleetClock, tokens: u64) -> Result<Taken, BackendError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        telemetry::ratelimit_waiting(&self.model, 1);
        let _waiting = Waiting(self);
        loop {
            let mut lease = self.lease.lock().await;
            let now = clock.now_ms();
            let window = self.window_at(now);
            if lease.window != window {
                let before = if lease.window + 1 == window { lease.used } else { 0 };
                *lease = Lease { window, used_before: before, ..Lease::default() };
            }
            let cap = self.cap();
            let need = RateUnits {
                requests: u32::from(cap.requests != u32::MAX),
                tokens: if cap.tokens == u64::MAX { 0 } else { tokens.min(cap.tokens) },
            };
            if lease.left.requests >= need.requests && lease.left.tokens >= need.tokens {
                lease.left.requests -= need.requests;
                lease.left.tokens -= need.tokens;
                lease.used += 1;
                telemetry::ratelimit_used(&self.model, need);
                return Ok(Taken { window, units: need });
            }
            if !lease.full {
                let waiting = self.waiting.load(Ordering::Relaxed);
                let batch =
                    waiting.max(lease.used_before / BATCH_SHARE_OF_LAST_USE).clamp(1, (cap.requests / BATCH_SHARE_OF_WINDOW).max(1));
                let want = RateUnits {
                    requests: if lease.left.requests >= need.requests { 0 } else { batch * need.requests },
                    tokens: if lease.left.tokens >= need.tokens {
                        0
                    } else {
                        need.tokens.saturating_mul(u64::from(batch)).min(cap.tokens).max(need.tokens - lease.left.tokens)
                    },
                };
                self.counters.store_writes.fetch_add(1, Ordering::Relaxed);
                let got = match tokio::time::timeout(STORE_TIMEOUT, store.take(&self.model, window, want, cap)).await {
                    Ok(Ok(got)) => got,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(BackendError::Transient(format!("rate store did not answer in {STORE_TIMEOUT:?}"))),
                };
                telemetry::ratelimit_leased(&self.model, got);
                if got != RateUnits::default() {
                    lease.left.requests += got.requests;
                    lease.left.tokens += got.tokens;
                    continue;
                }
                lease.full = true;
            }
            drop(lease);
            let jitter = rand::rng().random_range(0..=WINDOW_JITTER_MS);
            let next = (window + 1) * self.plan.window_ms + jitter;
            tokio::time::sleep_until(clock.instant_at(next)).await;
        }
    }

    /// Gives back a unit taken for a call that was never sent (still the current window only:
    /// a past window's capacity is of no use to anyone).
    pub(crate) async fn give_back(&self, store: &dyn RateStore, clock: &FleetClock, taken: Taken) -> Result<(), BackendError> {
        {
            let mut lease = self.lease.lock().await;
            if lease.window == taken.window && !lease.full {
                // Back into this worker's lease: the next call uses it without a store write.
                lease.left.requests += taken.units.requests;
                lease.left.tokens += taken.units.tokens;
                lease.used = lease.used.saturating_sub(1);
                return Ok(());
            }
        }
        if self.window_at(clock.now_ms()) != taken.window {
            return Ok(());
        }
        match tokio::time::timeout(STORE_TIMEOUT, store.give_back(&self.model, taken.window, taken.units)).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Transient("rate store did not answer".into())),
        }
    }

    /// The provider refused or said the key is spent until `until_ms` (Unix ms): every window
    /// from now to then is marked full in the store, and this worker's lease is dropped. At
    /// most `max_windows` are written.
    pub(crate) async fn spent_until(
        &self,
        store: &dyn RateStore,
        clock: &FleetClock,
        until_ms: u64,
        max_windows: u64,
    ) -> Result<(), BackendError> {
        let first = self.window_at(clock.now_ms());
        let last = self.window_at(until_ms).min(first + max_windows.saturating_sub(1));
        {
            let mut lease = self.lease.lock().await;
            if lease.window == first {
                lease.left = RateUnits::default();
                lease.full = true;
            }
        }
        for w in first..=last {
            self.counters.store_writes.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout(STORE_TIMEOUT, store.fill(&self.model, w)).await {
                Ok(r) => r?,
                Err(_) => return Err(BackendError::Transient("rate store did not answer".into())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_plans_keep_every_minute_within_the_limit_and_use_most_of_it() {
        let p = plan(120, 0, 0).expect("limited");
        assert_eq!(p.window_ms, 5_000);
        assert_eq!(p.cap.requests, 9);
        assert_eq!(p.cap.tokens, u64::MAX);
        for rpm in [1u64, 2, 7, 60, 120, 500, 3_500, 10_000, 30_000] {
            let p = plan(rpm, 0, 0).expect("limited");
            let w = p.window_ms / 1000;
            let worst_minute = u64::from(p.cap.requests) * windows_per_minute_span(w);
            assert!(worst_minute <= rpm.max(2), "rpm {rpm}: window {w}s cap {} allows {worst_minute}", p.cap.requests);
            let usable = u64::from(p.cap.requests) * 60 / w;
            if rpm >= 60 {
                assert!(usable * 100 >= rpm * 85, "rpm {rpm}: only {usable}/min usable");
            }
        }
        let p = plan(0, 2_000_000, 0).expect("limited");
        assert_eq!(p.cap.requests, u32::MAX);
        assert!(p.cap.tokens * windows_per_minute_span(p.window_ms / 1000) <= 2_000_000);
        let p = plan(120, 60_000, 0).expect("limited");
        assert_eq!(p.cap.tokens, 60_000 / 13);
        assert_eq!(plan(0, 0, 0), None);
        assert_eq!(plan(120, 0, 10).expect("limited").cap.requests, 120 / 7);
    }
}
