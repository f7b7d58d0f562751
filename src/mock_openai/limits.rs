//! Rate limits: the per-model RPM / TPM windows, the `x-ratelimit-*` headers of accepted
//! answers, and the 429 answer.

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use tokio::time::Instant;

use super::server::error_response;
use super::{Behavior, RetryHint, RpmWindow};

/// One model's rate-limit windows: the accepted requests and their admitted tokens.
#[derive(Default)]
pub(super) struct Window {
    accepted: VecDeque<Instant>,
    /// Sliding-minute token counts of accepted requests.
    tokens: VecDeque<(Instant, u64)>,
    fixed_index: u64,
    fixed_count: u32,
}

const MINUTE: Duration = Duration::from_secs(60);

/// `Some(wait)` when admitting one more request of `tokens` would exceed `b`'s RPM or TPM limit
/// (the longer wait of the two).
pub(super) fn limit_wait(w: &mut Window, b: &Behavior, mode: RpmWindow, tokens: u64, now: Instant, started: Instant) -> Option<Duration> {
    let rpm_wait = b.rpm_limit.and_then(|limit| rpm_check(w, limit, mode, now, started));
    let tpm_wait = b.tpm_limit.and_then(|limit| tpm_check(w, limit, tokens, now));
    rpm_wait.max(tpm_wait)
}

/// Counts an accepted request (of `tokens` admitted tokens) towards the RPM and TPM windows and
/// returns what is left, as the `x-ratelimit-*` headers of OpenAI's answers say it.
pub(super) fn admit(
    w: &mut Window,
    b: &Behavior,
    mode: RpmWindow,
    tokens: u64,
    now: Instant,
    started: Instant,
) -> Vec<(&'static str, String)> {
    let mut limits = Vec::new();
    if let Some(limit) = b.rpm_limit {
        let (used, reset) = match mode {
            RpmWindow::Sliding => {
                w.accepted.push_back(now);
                let oldest = w.accepted.front().copied().unwrap_or(now);
                (w.accepted.len() as u64, (oldest + MINUTE).saturating_duration_since(now))
            }
            RpmWindow::Fixed => {
                w.fixed_count += 1;
                let end = started + MINUTE * (w.fixed_index as u32 + 1);
                (u64::from(w.fixed_count), end.saturating_duration_since(now))
            }
        };
        limits.push(("x-ratelimit-limit-requests", limit.to_string()));
        limits.push(("x-ratelimit-remaining-requests", u64::from(limit).saturating_sub(used).to_string()));
        limits.push(("x-ratelimit-reset-requests", go_duration(reset)));
    }
    if let Some(limit) = b.tpm_limit {
        w.tokens.push_back((now, tokens));
        let used: u64 = w.tokens.iter().map(|(_, t)| t).sum();
        let oldest = w.tokens.front().map_or(now, |(t, _)| *t);
        limits.push(("x-ratelimit-limit-tokens", limit.to_string()));
        limits.push(("x-ratelimit-remaining-tokens", limit.saturating_sub(used).to_string()));
        limits.push(("x-ratelimit-reset-tokens", go_duration((oldest + MINUTE).saturating_duration_since(now))));
    }
    limits
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` (`20ms`, `1.5s`, `6m0s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", (ms as f64 / 1000.0))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// `Some(wait)` when `tokens` more would exceed `limit` in the sliding minute.
fn tpm_check(w: &mut Window, limit: u64, tokens: u64, now: Instant) -> Option<Duration> {
    while w.tokens.front().is_some_and(|(t, _)| *t + MINUTE <= now) {
        w.tokens.pop_front();
    }
    let used: u64 = w.tokens.iter().map(|(_, t)| t).sum();
    if used + tokens <= limit || w.tokens.is_empty() {
        return None;
    }
    // Wait until enough of the oldest entries leave the window.
    let mut freed = 0u64;
    for (t, n) in &w.tokens {
        freed += n;
        if used - freed + tokens <= limit {
            return Some((*t + MINUTE).saturating_duration_since(now).max(Duration::from_millis(1)));
        }
    }
    w.tokens.back().map(|(t, _)| (*t + MINUTE).saturating_duration_since(now).max(Duration::from_millis(1)))
}

/// `Some(wait)` when one more request would exceed `limit` in the current window.
fn rpm_check(w: &mut Window, limit: u32, mode: RpmWindow, now: Instant, started: Instant) -> Option<Duration> {
    match mode {
        RpmWindow::Sliding => {
            while w.accepted.front().is_some_and(|t| *t + MINUTE <= now) {
                w.accepted.pop_front();
            }
            if w.accepted.len() >= limit as usize {
                let oldest = w.accepted.front().copied().unwrap_or(now);
                return Some((oldest + MINUTE).saturating_duration_since(now).max(Duration::from_millis(1)));
            }
            None
        }
        RpmWindow::Fixed => {
            let index = now.saturating_duration_since(started).as_secs() / 60;
            if index != w.fixed_index {
                w.fixed_index = index;
                w.fixed_count = 0;
            }
            if w.fixed_count >= limit {
                let end = started + MINUTE * (index as u32 + 1);
                return Some(end.saturating_duration_since(now).max(Duration::from_millis(1)));
            }
            None
        }
    }
}

/// A 429 for `model`: `Retry-After` from `retry_after` (an exact wait) or `hint`, or the
/// `x-ratelimit-reset-*` headers `hint` asks for.
pub(super) fn rate_limited(model: &str, retry_after: Option<Duration>, hint: &RetryHint) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Rate limit reached for {model} (mock)."),
        "requests",
        Some("rate_limit_exceeded"),
    );
    let h = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    match hint {
        RetryHint::Seconds(s) => {
            let secs = retry_after.map(|d| d.as_secs_f64().ceil() as u64).unwrap_or(*s);
            set("retry-after", secs.to_string());
        }
        RetryHint::HttpDate(d) => {
            let when = chrono::Utc::now() + chrono::Duration::seconds(d.as_secs() as i64);
            set("retry-after", when.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
        }
        RetryHint::ResetHeaders { requests, tokens } => {
            set("x-ratelimit-reset-requests", requests.clone());
            set("x-ratelimit-reset-tokens", tokens.clone());
        }
        RetryHint::None => {}
    }
    resp
}
