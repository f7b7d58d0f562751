//! Runtime control of a running mock through [`MockHandle`]: behaviour changes, the request log
//! and counters, and the bill.

use std::collections::BTreeMap;
use std::sync::MutexGuard;
use std::time::Duration;

use super::{Behavior, MockBill, MockHandle, RecordedRequest, RetryHint, State_};

impl MockHandle {
    /// The shared state, locked.
    fn state(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters for a test double, so poisoning is ignored.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the default behaviour (models without an override).
    pub fn update(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.state().default);
    }

    /// Changes `model`'s override, creating it from the current default when absent.
    pub fn update_model(&self, model: &str, f: impl FnOnce(&mut Behavior)) {
        let mut st = self.state();
        let base = st.default.clone();
        f(st.per_model.entry(model.to_string()).or_insert(base));
    }

    /// Replaces `model`'s override.
    pub fn set_model_behavior(&self, model: &str, behavior: Behavior) {
        self.state().per_model.insert(model.to_string(), behavior);
    }

    /// Removes `model`'s override.
    pub fn clear_model_behavior(&self, model: &str) {
        self.state().per_model.remove(model);
    }

    /// Default latency for answers.
    pub fn set_latency(&self, latency: Duration) {
        self.update(|b| b.latency = latency);
    }

    /// The next `n` requests (default profile) get 429 with `hint`.
    pub fn rate_limit_next(&self, n: u32, hint: RetryHint) {
        self.update(|b| {
            b.rate_limit_next = n;
            b.retry_hint = hint;
        });
    }

    /// Each request gets 429 with probability `p`.
    pub fn set_rate_limit_probability(&self, p: f64) {
        self.update(|b| b.rate_limit_probability = p);
    }

    /// The next `n` requests get 500.
    pub fn fail_next(&self, n: u32) {
        self.update(|b| b.server_error_next = n);
    }

    /// Each request gets 500 with probability `p`.
    pub fn set_failure_probability(&self, p: f64) {
        self.update(|b| b.server_error_probability = p);
    }

    /// Requests hang (never answered) while `on`.
    pub fn set_hang(&self, on: bool) {
        self.update(|b| b.hang = on);
    }

    /// The next `n` answers break the schema.
    pub fn bad_output_next(&self, n: u32) {
        self.update(|b| b.bad_output_next = n);
    }

    /// Each answer breaks the schema with probability `p`.
    pub fn set_bad_output_probability(&self, p: f64) {
        self.update(|b| b.bad_output_probability = p);
    }

    /// Refuses each request with probability `p` (refusals are billed).
    pub fn set_refuse_probability(&self, p: f64) {
        self.update(|b| b.refuse_probability = p);
    }

    /// Stops each answer at its output cap (`finish_reason: "length"`) with probability `p`.
    pub fn set_length_probability(&self, p: f64) {
        self.update(|b| b.length_probability = p);
    }

    /// Makes each answer take `latency` instead of the usual one with probability `p`.
    pub fn set_slow(&self, p: f64, latency: Duration) {
        self.update(|b| {
            b.slow_probability = p;
            b.slow_latency = latency;
        });
    }

    /// The next `n` answers are refusals.
    pub fn refuse_next(&self, n: u32) {
        self.update(|b| b.refuse_next = n);
    }

    /// Requests per minute accepted per model (default profile); `None` removes the limit.
    pub fn set_rpm_limit(&self, rpm: Option<u32>) {
        self.update(|b| b.rpm_limit = rpm);
    }

    /// Sets the default profile's TPM limit (`None` = unlimited).
    pub fn set_tpm_limit(&self, tpm: Option<u64>) {
        self.update(|b| b.tpm_limit = tpm);
    }

    /// Answers every request currently hanging with 503 (later ones hang again while `hang` is on).
    pub fn release_hung(&self) {
        self.inner.release.send_modify(|g| *g += 1);
    }

    /// The recorded requests, oldest first (at most [`MockConfig::max_recorded`](super::MockConfig::max_recorded)).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().log.iter().cloned().collect()
    }

    /// Requests received since start (never capped).
    pub fn total_requests(&self) -> u64 {
        self.state().total
    }

    /// Requests for `model` answered with `status` (0 = left hanging).
    pub fn count(&self, model: &str, status: u16) -> u64 {
        self.state().counts.get(&(model.to_string(), status)).copied().unwrap_or(0)
    }

    /// All counters: (model, status) → requests.
    pub fn counts(&self) -> BTreeMap<(String, u16), u64> {
        self.state().counts.clone()
    }

    /// Forgets recorded requests and counters (behaviour is kept).
    pub fn clear_records(&self) {
        let mut st = self.state();
        st.log.clear();
        st.counts.clear();
        st.total = 0;
    }

    /// What the mock has billed since it started (kept across [`MockHandle::clear_records`]).
    pub fn bill(&self) -> MockBill {
        self.state().bill.clone()
    }
}
