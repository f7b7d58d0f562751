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
//! The limiters live in one process. Several replicas sharing one API key each apply the full
//! table, so together they can ask for more than the provider allows; the 429 pause
//! ([`RateLimits::on_rate_limited`]) is what keeps such a fleet in line (or give each replica
//! its share in the stage's `[models]` table).

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::job::MAX_INSTRUCTIONS_BYTES;
use crate::settings::{ModelSettings, Settings};

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

struct ModelLimit {
    rpm: Option<Limiter>,
    tpm: Option<(Limiter, u32)>,
    penalty: Mutex<Penalty>,
}

/// The limits of every model in the table, shared by all jobs of a worker process.
pub struct RateLimits {
    clock: TokioClock,
    models: HashMap<String, ModelLimit>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.models.keys().collect();
        names.sort();
        f.debug_struct("RateLimits")
            .field("models", &names)
            .finish()
    }
}

impl RateLimits {
    /// Limits for every model of `models`. `largest_request_tokens` is the biggest reservation
    /// a single request can make (it sizes the token burst; see the module docs).
    pub fn new(
        models: &BTreeMap<String, ModelSettings>,
        largest_request_tokens: u32,
    ) -> RateLimits {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let models = models
            .iter()
            .map(|(id, m)| {
                let rpm = window_limiter(m.rpm, 1, &clock).map(|(l, _)| l);
                let tpm_burst = (m.tpm / 20)
                    .max(largest_request_tokens)
                    .min((m.tpm / 2).max(1));
                let tpm = window_limiter(m.tpm, tpm_burst, &clock);
                (
                    id.clone(),
                    ModelLimit {
                        rpm,
                        tpm,
                        penalty: Mutex::new(Penalty::default()),
                    },
                )
            })
            .collect();
        RateLimits { clock, models }
    }

    /// The stage's limits: the models table, with the largest request taken as
    /// `llm.max_input_tokens` of page, the longest instructions (≈ 4 bytes a token) and the
    /// largest `max_output_tokens` of the table.
    pub fn from_settings(s: &Settings) -> RateLimits {
        let max_output = s
            .models
            .values()
            .map(|m| m.max_output_tokens)
            .max()
            .unwrap_or(0);
        let page = u32::try_from(s.llm.max_input_tokens).unwrap_or(u32::MAX);
        let instructions = u32::try_from(MAX_INSTRUCTIONS_BYTES / 4).unwrap_or(u32::MAX);
        RateLimits::new(
            &s.models,
            page.saturating_add(instructions).saturating_add(max_output),
        )
    }

    /// Waits until a request of `tokens` reserved tokens (counted input + max output) may be
    /// sent to `model`, and returns how long it waited (for metrics).
    ///
    /// Order: any 429 pause, then a request slot, then the tokens (more than the token burst
    /// count as the burst), then the 429 pause again in case one was set meanwhile. A model not
    /// in the table is not limited. Dropping the future gives nothing back: a slot taken stays
    /// taken, which only errs on the safe side.
    pub async fn acquire(&self, model: &str, tokens: u32) -> Duration {
        let start = Instant::now();
        let Some(l) = self.models.get(model) else {
            return Duration::ZERO;
        };
        wait_penalty(l).await;
        if let Some(rpm) = &l.rpm {
            while let Err(not_until) = rpm.check() {
                tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await;
            }
        }
        if let Some((tpm, burst)) = &l.tpm {
            if let Some(n) = NonZeroU32::new(tokens.min(*burst)) {
                loop {
                    match tpm.check_n(n) {
                        Ok(Ok(())) => break,
                        Ok(Err(not_until)) => {
                            tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await
                        }
                        // Cannot happen (n ≤ burst); never spin on it.
                        Err(_) => break,
                    }
                }
            }
        }
        wait_penalty(l).await;
        start.elapsed()
    }

    /// Records a 429 from `model`: no request for it starts before `now + retry_after` (or, with
    /// no hint, [`DEFAULT_RATE_LIMIT_PAUSE`] doubled per 429 in a row), capped at
    /// [`MAX_RATE_LIMIT_PAUSE`]. An existing later pause is kept. Returns the pause imposed.
    pub fn on_rate_limited(&self, model: &str, retry_after: Option<Duration>) -> Duration {
        let Some(l) = self.models.get(model) else {
            return Duration::ZERO;
        };
        let Ok(mut p) = l.penalty.lock() else {
            return Duration::ZERO;
        };
        let pause = retry_after
            .unwrap_or_else(|| DEFAULT_RATE_LIMIT_PAUSE.saturating_mul(1u32 << p.strikes.min(6)))
            .min(MAX_RATE_LIMIT_PAUSE);
        p.strikes = p.strikes.saturating_add(1);
        let until = Instant::now() + pause;
        p.until = Some(p.until.map_or(until, |u| u.max(until)));
        pause
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
        self.models
            .get(model)
            .and_then(|l| l.tpm.as_ref())
            .map(|t| t.1)
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
        m.insert(
            "m".to_string(),
            ModelSettings {
                rpm,
                tpm,
                ..ModelSettings::default()
            },
        );
        m
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_and_unknown_models_never_wait() {
        let rl = RateLimits::new(&table(0, 0), 1000);
        for _ in 0..1000 {
            assert_eq!(rl.acquire("m", 50_000).await, Duration::ZERO);
            assert_eq!(rl.acquire("not-in-table", 1).await, Duration::ZERO);
        }
        assert_eq!(rl.token_burst("m"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_evenly() {
        let rl = RateLimits::new(&table(60, 0), 1000);
        assert_eq!(rl.acquire("m", 1).await, Duration::ZERO);
        let w = rl.acquire("m", 1).await;
        assert_eq!(w, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn tpm_burst_and_oversize_requests() {
        // tpm 10_000, largest request 3_000: burst max(500, 3000) = 3000 (≤ 5000).
        let rl = RateLimits::new(&table(0, 10_000), 3_000);
        assert_eq!(rl.token_burst("m"), Some(3_000));
        assert_eq!(rl.acquire("m", 3_000).await, Duration::ZERO);
        // A request bigger than the burst waits for a full bucket, then goes.
        let w = rl.acquire("m", 50_000).await;
        assert!(w > Duration::ZERO && w <= Duration::from_secs(30), "{w:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_429s_grow_until_success() {
        let rl = RateLimits::new(&table(0, 0), 1000);
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(1));
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(2));
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(4));
        assert_eq!(rl.acquire("m", 1).await, Duration::from_secs(4));
        rl.on_success("m");
        assert_eq!(rl.on_rate_limited("m", None), Duration::from_secs(1));
        assert_eq!(
            rl.on_rate_limited("m", Some(Duration::from_secs(3600))),
            MAX_RATE_LIMIT_PAUSE
        );
        assert_eq!(rl.on_rate_limited("unknown", None), Duration::ZERO);
    }
}
