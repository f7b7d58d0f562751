//! The per-model rate limiter: waits, leased and used capacity, and the fallback share.

use std::time::Duration;

use metrics::{counter, gauge};

use super::labels::label;
use super::logs::sanitize_error;
use super::names::*;
use super::recorder::add_float;

/// A call waited `waited` for `model`'s rate limiter; counted only when `waited > 0`.
pub fn ratelimit_wait(model: &str, waited: Duration) {
    if waited.is_zero() {
        return;
    }
    let model = label(model);
    counter!(RATELIMIT_WAITS_TOTAL, "model" => model.clone()).increment(1);
    add_float(RATELIMIT_WAIT_SECONDS_TOTAL, vec![("model", model)], waited.as_micros());
}

/// A call of `model` started (`+1`) or stopped (`-1`) waiting for rate-limit capacity.
pub fn ratelimit_waiting(model: &str, delta: i32) {
    gauge!(RATELIMIT_WAITING, "model" => label(model)).increment(f64::from(delta));
}

/// A take from the shared rate-limit store for `model` granted `got` (nothing: window full).
pub fn ratelimit_leased(model: &str, got: crate::backend::RateUnits) {
    let model = label(model);
    let result = if got == crate::backend::RateUnits::default() { "full" } else { "granted" };
    counter!(RATELIMIT_STORE_WRITES_TOTAL, "model" => model.clone(), "result" => result).increment(1);
    counter!(RATELIMIT_LEASED_TOTAL, "model" => model.clone(), "unit" => "requests").increment(u64::from(got.requests));
    counter!(RATELIMIT_LEASED_TOTAL, "model" => model, "unit" => "tokens").increment(got.tokens);
}

/// A call of `model` used `units` of leased rate-limit capacity.
pub fn ratelimit_used(model: &str, units: crate::backend::RateUnits) {
    let model = label(model);
    counter!(RATELIMIT_USED_TOTAL, "model" => model.clone(), "unit" => "requests").increment(u64::from(units.requests));
    counter!(RATELIMIT_USED_TOTAL, "model" => model, "unit" => "tokens").increment(units.tokens);
}

/// `model` has a fleet-wide limit: its fallback gauge exists (at 0) before any failure.
pub fn ratelimit_registered(model: &str) {
    gauge!(RATELIMIT_FALLBACK, "model" => label(model)).set(0.0);
}

/// The shared rate-limit store failed for `model`: this worker uses its fallback share.
pub fn ratelimit_fallback_on(model: &str, error: &str) {
    gauge!(RATELIMIT_FALLBACK, "model" => label(model)).set(1.0);
    tracing::warn!(
        model,
        error = sanitize_error(error),
        "shared rate-limit store unreachable; using this worker's fallback share of the limits"
    );
}

/// The shared rate-limit store answers again for `model`: fleet-wide limits are back.
pub fn ratelimit_fallback_off(model: &str) {
    gauge!(RATELIMIT_FALLBACK, "model" => label(model)).set(0.0);
    tracing::info!(model, "shared rate-limit store reachable again; fleet-wide limits restored");
}

/// The provider says `model`'s key allows `rpm` requests a minute, less than configured.
pub fn ratelimit_provider_limit(model: &str, rpm: u64) {
    tracing::warn!(model, provider_rpm = rpm, "the provider's request limit is below the configured rpm; using the provider's");
}
