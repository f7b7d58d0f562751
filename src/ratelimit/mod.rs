//! Per-model request and token rate limits, so a worker stays inside the provider's limits
//! instead of collecting 429s, plus an adaptive pause after a 429 that every caller honours.
//!
//! Limits come from the models table (`rpm`, `tpm`; 0 = unlimited) and are enforced with
//! `governor`'s GCRA, driven by the tokio clock (so `tokio::time::pause()` works in tests and
//! waiting never blocks a thread).
//!
//! ## Window guarantee
//! Each limit `L` per minute is enforced so that no window shorter than 60 s ever holds more than
//! `L` (requests, or reserved tokens): with a burst of `B` cells, cells are replenished every
//! `60 s / (L − B + 1)` (rounded up to the nanosecond), and GCRA admits at most
//! `B + T / interval` cells in any window of length `T`.
//! - Requests use `B = 1`: they are spaced evenly and the long-run rate is the full `rpm`.
//! - Tokens use a burst of `max(tpm / 20, largest request)`, at most `tpm / 2`, so a whole request
//!   fits at once; the long-run rate is `tpm − B + 1` per minute (95% of `tpm` with large limits).
//!   A request larger than the burst is counted as the burst (it waits for a full bucket and then
//!   goes) rather than waiting forever.
//!
//! Token counts are what the caller reserves (counted input + `max_output_tokens`), an upper
//! bound of what the provider will count.
//!
//! ## Scope
//! With `rate_limit.scope = "fleet"` (the default on every stage) the limits hold for all
//! workers of the stage together: [`fleet`] leases capacity from shared windows in the stage's
//! [`RateStore`]. The GCRA limiters above then serve as the fallback: when the store is
//! unreachable a worker applies `1 / rate_limit.fallback_replicas` of each limit on its own,
//! says so in its log and in `atlas_ratelimit_fallback`, and tries the store again after
//! [`STORE_RETRY`]. With `scope = "process"` (or [`RateLimits::new`]) each process applies the
//! full table alone.
//!
//! ## The provider knows better
//! A 429 pauses every caller of the process ([`RateLimits::on_rate_limited`]) and, in fleet
//! scope, marks the shared windows until its `Retry-After` as full, so the other workers stop
//! too ([`RateLimits::rate_limited`]). An answer whose `x-ratelimit-remaining-*` header says
//! the key is spent does the same until `x-ratelimit-reset-*`; an `x-ratelimit-limit-requests`
//! below the configured `rpm` lowers this worker's window cap ([`RateLimits::observe`]).
//!
//! ## Tokens
//! A call takes its counted input plus its requested output cap, which is what OpenAI counts
//! against TPM when it admits the request (it does not give back the part of the cap the answer
//! did not use). A call that was never sent gives its request and tokens back
//! ([`RateLimits::give_back`]).

pub mod fleet;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::backend::{BackendError, RateStore};
use crate::job::MAX_INSTRUCTIONS_BYTES;
use crate::llm::ProviderLimits;
use crate::settings::{ModelSettings, RateScope, Settings};
use crate::telemetry;

/// Pause after a 429 that gave no `Retry-After`; doubled with each further 429 in a row.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause a 429 can impose (with or without `Retry-After`).
pub const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// The window every limit is stated over.
const MINUTE_NANOS: u64 = 60_000_000_000;

/// A governor clock reading tokio's clock as the time since the limiter set was built.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A GCRA limiter that admits at most `limit` cells in any window shorter than a minute, with a
/// burst of `burst` cells (`1 ≤ burst ≤ limit`).
fn window_limiter(limit: u32, burst: u32, clock: &TokioClock) -> Option<(Limiter, u32)> {
    let limit = NonZeroU32::new(limit)?;
    let burst = burst.clamp(1, limit.get());
    let per_minute = u64::from(limit.get() - burst + 1);
    let interval = Duration::from_nanos(MINUTE_NANOS.div_ceil(per_minute));
    let quota = Quota::with_period(interval)?.allow_burst(NonZeroU32::new(burst)?);
    Some((RateLimiter::direct_with_clock(quota, clock.clone()), burst))
}

/// The pause imposed after 429s.
#[derive(Debug, Default)]
struct Penalty {
    /// No request for the model starts before this.
    until: Option<Instant>,
    /// 429s in a row without a success in between.
    strikes: u32,
}

/// GCRA limiters of one model in this process (the full limits, or a fallback share).
struct LocalLimit {
    rpm: Option<Limiter>,
    tpm: Option<(Limiter, u32)>,
}

impl LocalLimit {
    fn new(rpm: u32, tpm: u32, largest_request_tokens: u32, clock: &TokioClock) -> LocalLimit {
        let rpm_l = window_limiter(rpm, 1, clock).map(|(l, _)| l);
        let tpm_burst = (tpm / 20).max(largest_request_tokens).min((tpm / 2).max(1));
        LocalLimit { rpm: rpm_l, tpm: window_limiter(tpm, tpm_burst, clock) }
    }

    async fn acquire(&self, clock: &TokioClock, tokens: u32) {
        if let Some(rpm) = &self.rpm {
            while let Err(not_until) = rpm.check() {
                tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
            }
        }
        if let Some((tpm, burst)) = &self.tpm {
            if let Some(n) = NonZeroU32::new(tokens.min(*burst)) {
                loop {
                    match tpm.check_n(n) {
                        Ok(Ok(())) => break,
                        Ok(Err(not_until)) => tokio::time::sleep(not_until.wait_time_from(clock.now())).await,
                        // Cannot happen (n ≤ burst); never spin on it.
                        Err(_) => break,
                    }
                }
            }
        }
    }
}

/// The fleet side of one model: its shared windows, and the fallback share used while the
/// store is unreachable.
struct FleetLimit {
    shared: fleet::SharedLimit,
    fallback: LocalLimit,
    /// While set and in the future, the store is not tried (it failed).
    down_until: Mutex<Option<Instant>>,
}

struct ModelLimit {
    local: LocalLimit,
    fleet: Option<FleetLimit>,
    penalty: Mutex<Penalty>,
}

/// The shared store and the clock its windows are read with.
struct Fleet {
    store: Arc<dyn RateStore>,
    clock: fleet::FleetClock,
    counters: Arc<fleet::FleetCounters>,
}

/// How long a worker keeps to its fallback share after the store failed, before trying again.
pub const STORE_RETRY: Duration = Duration::from_secs(10);
/// Most shared windows one 429 or "spent" header marks full.
const MAX_FILLED_WINDOWS: u64 = 12;

/// What [`RateLimits::acquire`] gave a call: how long it waited and, in fleet scope, the unit
/// it took (to give back if the call is not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    /// Time spent waiting (for metrics).
    pub waited: Duration,
    /// The shared unit taken; `None` in process scope or on the fallback share.
    pub taken: Option<fleet::Taken>,
}

/// The limits of every model in the table, shared by all jobs of a worker process.
pub struct RateLimits {
    clock: TokioClock,
    models: HashMap<String, ModelLimit>,
    fleet: Option<Fleet>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.models.keys().collect();
        names.sort();
        f.debug_struct("RateLimits").field("models", &names).field("fleet", &self.fleet.is_some()).finish()
    }
}

/// The largest request of a stage: `llm.max_input_tokens` of page, the longest instructions
/// (≈ 4 bytes a token) and the largest `max_output_tokens` of the table.
fn largest_request(s: &Settings) -> u32 {
    let max_output = s.models.values().map(|m| m.max_output_tokens).max().unwrap_or(0);
    let page = u32::try_from(s.llm.max_input_tokens).unwrap_or(u32::MAX);
    let instructions = u32::try_from(MAX_INSTRUCTIONS_BYTES / 4).unwrap_or(u32::MAX);
    page.saturating_add(instructions).saturating_add(max_output)
}

impl RateLimits {
    /// Per-process limits for every model of `models`. `largest_request_tokens` is the biggest
    /// reservation a single request can make (it sizes the token burst; see the module docs).
    pub fn new(models: &BTreeMap<String, ModelSettings>, largest_request_tokens: u32) -> RateLimits {
        let clock = TokioClock { origin: Instant::now() };
        let models = models
            .iter()
            .map(|(id, m)| {
                let limit = ModelLimit {
                    local: LocalLimit::new(m.rpm, m.tpm, largest_request_tokens, &clock),
                    fleet: None,
                    penalty: Mutex::new(Penalty::default()),
                };
                (id.clone(), limit)
            })
            .collect();
        RateLimits { clock, models, fleet: None }
    }

    /// Fleet-wide limits over `store`: each model's `rpm`/`tpm` cut into shared windows
    /// (`window_secs`, 0 = automatic), with `1 / fallback_replicas` of them as the fallback.
    pub fn fleet(
        models: &BTreeMap<String, ModelSettings>,
        largest_request_tokens: u32,
        store: Arc<dyn RateStore>,
        window_secs: u64,
        fallback_replicas: u32,
    ) -> RateLimits {
        let mut limits = RateLimits::new(models, largest_request_tokens);
        let counters = Arc::new(fleet::FleetCounters::default());
        let replicas = fallback_replicas.max(1);
        for (id, m) in models {
            let Some(plan) = fleet::plan(u64::from(m.rpm), u64::from(m.tpm), window_secs) else {
                continue;
            };
            let share = |v: u32| if v == 0 { 0 } else { (v / replicas).max(1) };
            if let Some(l) = limits.models.get_mut(id) {
                l.fleet = Some(FleetLimit {
                    shared: fleet::SharedLimit::new(id, plan, counters.clone()),
                    fallback: LocalLimit::new(share(m.rpm), share(m.tpm), largest_request_tokens, &limits.clock),
                    down_until: Mutex::new(None),
                });
                telemetry::ratelimit_registered(id);
            }
        }
        limits.fleet = Some(Fleet { store, clock: fleet::FleetClock::new(), counters });
        limits
    }

    /// The stage's limits: fleet scope over `store` unless `rate_limit.scope = "process"`.
    pub fn from_settings(s: &Settings, store: Arc<dyn RateStore>) -> RateLimits {
        match s.rate_limit.scope {
            RateScope::Process => RateLimits::new(&s.models, largest_request(s)),
            RateScope::Fleet => {
                RateLimits::fleet(&s.models, largest_request(s), store, s.rate_limit.window_secs, s.rate_limit.fallback_replicas)
            }
        }
    }

    /// Waits until a request of `tokens` reserved tokens (counted input + max output) may be
    /// sent to `model`, and returns how long it waited (for metrics) and what it took.
    ///
    /// Order: any 429 pause, then capacity (the shared windows in fleet scope, falling back to
    /// this worker's share when the store fails; the process's limiters otherwise), then the
    /// 429 pause again in case one was set meanwhile. A model not in the table is not limited.
    pub async fn acquire(&self, model: &str, tokens: u32) -> Grant {
        let start = Instant::now();
        let Some(l) = self.models.get(model) else {
            return Grant::default();
        };
        wait_penalty(l).await;
        let mut taken = None;
        match (&l.fleet, &self.fleet) {
            (Some(f), Some(fleet)) => {
                if f.store_usable() {
                    match f.shared.acquire(fleet.store.as_ref(), &fleet.clock, u64::from(tokens)).await {
                        Ok(t) => {
                            taken = Some(t);
                            f.store_answered(model);
                        }
                        Err(e) => f.store_failed(model, &e),
                    }
                }
                if taken.is_none() {
                    f.fallback.acquire(&self.clock, tokens).await;
                }
            }
            _ => l.local.acquire(&self.clock, tokens).await,
        }
        wait_penalty(l).await;
        Grant { waited: start.elapsed(), taken }
    }

    /// Gives back what `grant` took for a call that was not sent after all.
    pub async fn give_back(&self, model: &str, grant: &Grant) {
        let (Some(taken), Some(l), Some(fleet)) = (grant.taken, self.models.get(model), &self.fleet) else {
            return;
        };
        if let Some(f) = &l.fleet {
            if let Err(e) = f.shared.give_back(fleet.store.as_ref(), &fleet.clock, taken).await {
                f.store_failed(model, &e);
            }
        }
    }

    /// Records a 429 from `model`: no request for it starts before `now + retry_after` (or, with
    /// no hint, [`DEFAULT_RATE_LIMIT_PAUSE`] doubled per 429 in a row), capped at
    /// [`MAX_RATE_LIMIT_PAUSE`]. An existing later pause is kept. Returns the pause imposed.
    /// This process only; [`RateLimits::rate_limited`] also tells the fleet.
    pub fn on_rate_limited(&self, model: &str, retry_after: Option<Duration>) -> Duration {
        let Some(l) = self.models.get(model) else {
            return Duration::ZERO;
        };
        let Ok(mut p) = l.penalty.lock() else {
            return Duration::ZERO;
        };
        let pause =
            retry_after.unwrap_or_else(|| DEFAULT_RATE_LIMIT_PAUSE.saturating_mul(1u32 << p.strikes.min(6))).min(MAX_RATE_LIMIT_PAUSE);
        p.strikes = p.strikes.saturating_add(1);
        let until = Instant::now() + pause;
        p.until = Some(p.until.map_or(until, |u| u.max(until)));
        pause
    }

    /// A 429 from `model`: [`RateLimits::on_rate_limited`], and in fleet scope the shared
    /// windows until the pause ends are marked full, so every worker of the stage waits.
    pub async fn rate_limited(&self, model: &str, retry_after: Option<Duration>) -> Duration {
        let pause = self.on_rate_limited(model, retry_after);
        self.spend_shared(model, pause).await;
        pause
    }

    /// What the provider's `x-ratelimit-*` headers on an answer say: a spent key pauses this
    /// process and (fleet scope) marks the shared windows full until the reset; a request limit
    /// below the configured `rpm` lowers this worker's window cap.
    pub async fn observe(&self, model: &str, seen: &ProviderLimits) {
        let Some(l) = self.models.get(model) else { return };
        if let (Some(f), Some(rpm)) = (&l.fleet, seen.limit_requests) {
            if f.shared.provider_limit(rpm) {
                telemetry::ratelimit_provider_limit(model, rpm);
            }
        }
        let spent = |remaining: Option<u64>, reset: Option<Duration>| match (remaining, reset) {
            (Some(0), Some(r)) => Some(r),
            (Some(0), None) => Some(DEFAULT_RATE_LIMIT_PAUSE),
            _ => None,
        };
        let wait = [spent(seen.remaining_requests, seen.reset_requests), spent(seen.remaining_tokens, seen.reset_tokens)]
            .into_iter()
            .flatten()
            .max();
        if let Some(wait) = wait.map(|w| w.min(MAX_RATE_LIMIT_PAUSE)) {
            if let Ok(mut p) = l.penalty.lock() {
                let until = Instant::now() + wait;
                p.until = Some(p.until.map_or(until, |u| u.max(until)));
            }
            self.spend_shared(model, wait).await;
        }
    }

    async fn spend_shared(&self, model: &str, pause: Duration) {
        let (Some(l), Some(fleet)) = (self.models.get(model), &self.fleet) else { return };
        let Some(f) = &l.fleet else { return };
        if !f.store_usable() {
            return;
        }
        let until = fleet.clock.now_ms() + u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        if let Err(e) = f.shared.spent_until(fleet.store.as_ref(), &fleet.clock, until, MAX_FILLED_WINDOWS).await {
            f.store_failed(model, &e);
        }
    }

    /// Records a successful call to `model`: the 429 streak ends, so the next 429 without a hint
    /// pauses for [`DEFAULT_RATE_LIMIT_PAUSE`] again. A pause already imposed runs out by itself
    /// (a request that started before the 429 must not cut it short).
    pub fn on_success(&self, model: &str) {
        if let Some(l) = self.models.get(model) {
            if let Ok(mut p) = l.penalty.lock() {
                p.strikes = 0;
            }
        }
    }

    /// The token burst of `model` (the most a single request is counted as), `None` when its
    /// tokens are unlimited or it is not in the table.
    pub fn token_burst(&self, model: &str) -> Option<u32> {
        self.models.get(model).and_then(|l| l.local.tpm.as_ref()).map(|t| t.1)
    }

    /// Shared-store writes made so far (fleet scope; 0 otherwise), for benchmarks and tests.
    pub fn store_writes(&self) -> u64 {
        self.fleet.as_ref().map_or(0, |f| f.counters.store_writes.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Window length and per-window cap of `model` in fleet scope: `(window, requests, tokens)`
    /// (`u32::MAX` / `u64::MAX` for unlimited).
    pub fn window_plan(&self, model: &str) -> Option<(Duration, u32, u64)> {
        let p = self.models.get(model)?.fleet.as_ref()?.shared.plan();
        Some((Duration::from_millis(p.window_ms), p.cap.requests, p.cap.tokens))
    }

    /// True while `model` runs on its fallback share: the shared store failed and has not
    /// answered since (it is tried again every [`STORE_RETRY`]).
    pub fn on_fallback(&self, model: &str) -> bool {
        self.models.get(model).and_then(|l| l.fleet.as_ref()).is_some_and(|f| f.down_until.lock().ok().is_some_and(|d| d.is_some()))
    }
}

impl FleetLimit {
    fn store_usable(&self) -> bool {
        let down = self.down_until.lock().ok().and_then(|d| *d);
        down.is_none_or(|u| Instant::now() >= u)
    }

    fn store_failed(&self, model: &str, e: &BackendError) {
        if let Ok(mut d) = self.down_until.lock() {
            let was_up = d.is_none();
            *d = Some(Instant::now() + STORE_RETRY);
            if was_up {
                telemetry::ratelimit_fallback_on(model, &e.to_string());
            }
        }
    }

    fn store_answered(&self, model: &str) {
        if let Ok(mut d) = self.down_until.lock() {
            if d.take().is_some() {
                telemetry::ratelimit_fallback_off(model);
            }
        }
    }
}

async fn wait_penalty(l: &ModelLimit) {
    loop {
        let until = l.penalty.lock().ok().and_then(|p| p.until);
        match until {
            Some(u) if u > Instant::now() => tokio::time::sleep_until(u).await,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rpm: u32, tpm: u32) -> BTreeMap<String, ModelSettings> {
        let mut m = BTreeMap::new();
        m.insert("m".to_string(), ModelSettings { rpm, tpm, ..ModelSettings::default() });
        m
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_and_unknown_models_never_wait() {
        let rl = RateLimits::new(&table(0, 0), 1000);
        for _ in 0..1000 {
            assert_eq!(rl.acquire("m", 50_000).await.waited, Duration::ZERO);
            assert_eq!(rl.acquire("not-in-table", 1).await.waited, Duration::ZERO);
        }
        assert_eq!(rl.token_burst("m"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_evenly() {
        let rl = RateLimits::new(&table(60, 0), 1000);
        assert_eq!(rl.acquire("m", 1).await.waited, Duration::ZERO);
        let w = rl.acquire("m", 1).await.waited;
        assert_eq!(w, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_burst_and_oversize_requests() {
        // tpm 10_000, largest request 3_000: burst max(500, 3000) = 3000 (≤ 5000).
        let rl = RateLimits::new(&table(0, 10_000), 3_000);
        assert_eq!(rl.token_burst("m"), Some(3_000));
        assert_eq!(rl.acquire("m", 3_000).await.waited, Duration::ZERO);
        // A request bigger than the burst waits for a full bucket, then goes.
        let w = rl.acquire("m", 50_000).await.waited;
        assert!(w > Duration::ZERO && w <= Duration::from_secs(30), "{w:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_429s_grow_until_success() {
        let rl = RateLimits::new(&table(0, 0), 1000);
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(1));
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(2));
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(4));
        assert_eq!(rl.acquire("m", 1).await.waited, Duration::from_secs(4));
        rl.on_success("m");
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(1));
        assert_eq!(rl.on_rate_limited("m", Some(Duration::from_secs(3600))), MAX_RATE_LIMIT_PAUSE);
        assert_eq!(rl.on_rate_limited("unknown", None), Duration::ZERO);
    }
}
