//! Validation: every problem with a stage's settings, listed at once.

use super::isolation::names_other_stage;
use super::*;
use crate::backend::limits::{SQS_BATCH, SQS_MAX_DELAY_SECS, SQS_MAX_VISIBILITY_SECS, SQS_MAX_WAIT_SECS};

impl Settings {
    /// Every semantic problem with these settings (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.isolation_problems(&mut p);
        self.model_problems(&mut p);
        self.routing_and_budget_problems(&mut p);
        self.queue_and_worker_problems(&mut p);
        self.fetch_and_llm_problems(&mut p);
        self.service_problems(&mut p);
        p
    }

    /// Problems with the seed's switches, resource names and network isolation.
    fn isolation_problems(&self, p: &mut Vec<String>) {
        let stage = self.stage.as_str();
        if self.routing.gpt5_enabled && self.routing.force_gpt4 {
            p.push("GPT5_ENABLED and FORCE_GPT4 are both true; pick one".into());
        }
        for (what, name) in self.resource_names() {
            if let Some(other) = names_other_stage(&name, stage) {
                p.push(format!("{what} `{name}` names stage `{other}`, not `{stage}`"));
            }
            if name.is_empty() {
                p.push(format!("{what} is empty"));
            }
        }
        if self.fetch.allow_private_networks && matches!(stage, "preview" | "production") {
            p.push(format!("fetch.allow_private_networks must be false in `{stage}`"));
        }
        if self.webhooks.allow_private_networks && matches!(stage, "preview" | "production") {
            p.push(format!("webhooks.allow_private_networks must be false in `{stage}`"));
        }
        if self.webhooks.enabled && (self.webhooks.timeout_secs == 0 || self.webhooks.max_attempts == 0 || self.webhooks.concurrency == 0) {
            p.push("webhooks.timeout_secs, webhooks.max_attempts and webhooks.concurrency must be at least 1".into());
        }
    }

    /// Problems with the models reachable under the policy, and every model entry.
    fn model_problems(&self, p: &mut Vec<String>) {
        let stage = self.stage.as_str();
        // Models reachable under this policy must exist and respect GPT5_ENABLED.
        for m in self.reachable_models() {
            match self.models.get(&m) {
                None => p.push(format!("model `{m}` is routed to but has no [models.\"{m}\"] entry")),
                Some(ms) => {
                    if ms.family == ModelFamily::Gpt5 && !self.gpt5_allowed() {
                        p.push(format!("model `{m}` is gpt-5 class but reachable while GPT-5 is not allowed in `{stage}`"));
                    }
                }
            }
        }
        for (id, m) in &self.models {
            if matches!(m.family, ModelFamily::Unknown(_)) {
                p.push(format!("models.{id}.family must be `gpt5` or `gpt4`"));
            }
            for (k, v) in [
                ("input_usd_per_mtok", m.input_usd_per_mtok),
                ("cached_input_usd_per_mtok", m.cached_input_usd_per_mtok),
                ("output_usd_per_mtok", m.output_usd_per_mtok),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    p.push(format!("models.{id}.{k} must be a non-negative number"));
                }
            }
            if m.max_output_tokens == 0 {
                p.push(format!("models.{id}.max_output_tokens must be positive"));
            }
            if let Some(e) = &m.reasoning_effort {
                if !matches!(e.as_str(), "minimal" | "low" | "medium" | "high") {
                    p.push(format!("models.{id}.reasoning_effort must be minimal|low|medium|high"));
                }
            }
            if let Some(v) = &m.verbosity {
                if !matches!(v.as_str(), "low" | "medium" | "high") {
                    p.push(format!("models.{id}.verbosity must be low|medium|high"));
                }
            }
            if let Some(t) = m.temperature {
                if !(0.0..=2.0).contains(&t) {
                    p.push(format!("models.{id}.temperature must be within 0..=2"));
                }
            }
        }
    }

    /// Problems with routing thresholds and fallbacks, the budget, the rate limits.
    fn routing_and_budget_problems(&self, p: &mut Vec<String>) {
        for (from, chain) in &self.routing.fallbacks {
            for to in chain {
                if !self.models.contains_key(to) {
                    p.push(format!("routing.fallbacks.{from} names unknown model `{to}`"));
                }
            }
        }
        if self.routing.mini_threshold > self.routing.full_threshold {
            p.push("routing.mini_threshold must not exceed routing.full_threshold".into());
        }
        if !(0.0..=1.0).contains(&self.routing.prefer_cheaper_above) {
            p.push("routing.prefer_cheaper_above must be within 0..=1".into());
        }
        if !(self.budget.monthly_usd.is_finite() && self.budget.monthly_usd >= 0.0) {
            p.push("budget.monthly_usd (MONTHLY_BUDGET) must be a non-negative number".into());
        }
        if !(0.0..=1.0).contains(&self.budget.warn_fraction) {
            p.push("budget.warn_fraction must be within 0..=1".into());
        }
        if self.budget.reservation_ttl_secs == 0 {
            p.push("budget.reservation_ttl_secs must be positive".into());
        }
        if self.rate_limit.window_secs > 60 {
            p.push("rate_limit.window_secs must be at most 60 (0 = automatic)".into());
        }
        if self.rate_limit.fallback_replicas == 0 {
            p.push("rate_limit.fallback_replicas must be at least 1".into());
        }
    }

    /// Problems with the queue and the worker loop.
    fn queue_and_worker_problems(&self, p: &mut Vec<String>) {
        if self.queue.wait_time_secs > SQS_MAX_WAIT_SECS {
            p.push(format!("queue.wait_time_secs must be at most {SQS_MAX_WAIT_SECS}"));
        }
        if !(1..=SQS_BATCH).contains(&self.queue.receive_batch) {
            p.push(format!("queue.receive_batch must be between 1 and {SQS_BATCH}"));
        }
        if self.queue.visibility_timeout_secs < 2 || self.queue.visibility_timeout_secs > SQS_MAX_VISIBILITY_SECS {
            p.push(format!("queue.visibility_timeout_secs must be between 2 and {SQS_MAX_VISIBILITY_SECS}"));
        }
        if self.queue.max_receive_count == 0 {
            p.push("queue.max_receive_count must be positive".into());
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 16_384 {
            p.push("worker.concurrency must be between 1 and 16384".into());
        }
        if self.worker.budget_defer_secs > SQS_MAX_DELAY_SECS {
            p.push(format!("worker.budget_defer_secs must be at most {SQS_MAX_DELAY_SECS} (the SQS delay limit)"));
        }
        if self.worker.retry_max_secs > SQS_MAX_VISIBILITY_SECS {
            p.push(format!("worker.retry_max_secs must be at most {SQS_MAX_VISIBILITY_SECS}"));
        }
        if self.worker.job_timeout_secs == 0 {
            p.push("worker.job_timeout_secs must be positive".into());
        }
    }

    /// Problems with fetching, the input memory, the provider.
    fn fetch_and_llm_problems(&self, p: &mut Vec<String>) {
        if self.fetch.max_redirects > 10 {
            p.push("fetch.max_redirects must be at most 10".into());
        }
        if self.fetch.max_body_bytes == 0 {
            p.push("fetch.max_body_bytes must be positive".into());
        }
        if self.worker.input_bytes_in_flight / 5 < self.fetch.max_body_bytes {
            p.push(format!(
                "worker.input_bytes_in_flight ({}) must be at least 5 x fetch.max_body_bytes ({}): a model job reading a page takes that much",
                self.worker.input_bytes_in_flight, self.fetch.max_body_bytes
            ));
        }
        if self.llm.max_calls_per_job == 0 {
            p.push("llm.max_calls_per_job must be at least 1 (0 would fail every job without calling a model)".into());
        }
        if self.llm.request_timeout_secs == 0 {
            p.push("llm.request_timeout_secs must be at least 1 (0 times out every call)".into());
        }
        if self.llm.max_chunks == 0 {
            p.push("llm.max_chunks must be at least 1".into());
        }
        if self.llm.max_input_tokens == 0 {
            p.push("llm.max_input_tokens must be at least 1 (0 sends the model no page content)".into());
        }
        if let Some(key) = &self.llm.api_key {
            if key.expose().chars().any(|c| c.is_control() || c.is_whitespace()) {
                p.push("OPENAI_API_KEY contains whitespace or a control character (a trailing newline from a file or a paste?); the key itself is not shown".into());
            }
        }
        if url::Url::parse(&self.llm.base_url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
            p.push(format!("llm.base_url `{}` is not an http(s) URL", self.llm.base_url));
        }
        if self.llm.provider == ProviderKind::Openai && self.llm.api_key.is_none() {
            p.push("llm.provider is `openai` but OPENAI_API_KEY is not set".into());
        }
    }

    /// Problems with the admin server, the backend, logging.
    fn service_problems(&self, p: &mut Vec<String>) {
        let stage = self.stage.as_str();
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("admin.listen `{}` is not a socket address", self.admin.listen));
        }
        if self.storage.backend == BackendKind::Sqlite && matches!(stage, "preview" | "production") {
            p.push(format!("storage.backend `sqlite` cannot serve a fleet; `{stage}` must use `aws`"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            p.push(format!("telemetry.log_level: {e}"));
        }
    }

    /// What stops a worker of this stage from starting here, beyond [`Settings::problems`]: the
    /// provider key, which deploy pipelines and producers (`submit`, `status`) do not need.
    pub fn worker_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.llm.provider == ProviderKind::Auto && self.llm.api_key.is_none() && self.stage != "local" {
            p.push(format!(
                "OPENAI_API_KEY is not set: a `{}` worker calls a real model; set the key, or choose the simulated model explicitly with llm.provider = \"simulated\" (ATLAS__LLM__PROVIDER=simulated)",
                self.stage
            ));
        }
        p
    }
}
