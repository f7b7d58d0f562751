//! Stage configuration: the settings tree, its layering, the seed's switches, and validation.
//!
//! Layers, later wins: built-in defaults ([`Settings::default`]) → `config/default.toml` →
//! `config/{stage}.toml` → `--config FILE` → the seed's variables (`GPT5_ENABLED`, `FORCE_GPT4`,
//! `DEFAULT_MODEL_STRATEGY`, `MONTHLY_BUDGET`, `OPENAI_BASE_URL`) → `ATLAS__SECTION__KEY`.
//! `OPENAI_API_KEY` is read from the environment only and never serialised.
//!
//! [`Settings::problems`] lists every problem at once; [`check_isolation`] is the cross-stage check
//! behind `atlas-codex validate --all-stages`.

mod defaults;
mod isolation;
mod load;
mod tree;
mod validate;

pub use isolation::{check_isolation, names_other_stage, suggest_stage, Clash, KNOWN_STAGES};
pub use load::{ConfigError, Sources};
pub use tree::*;

/// The environment variable holding the webhook signing secret.
pub const WEBHOOK_SECRET_ENV: &str = "ATLAS_WEBHOOK_SECRET";

// What a stage's settings name and allow, derived from the tree.
impl Settings {
    /// Whether these settings run the simulated model: chosen (`llm.provider = "simulated"`), or
    /// `auto` without a key (which [`Settings::worker_problems`] refuses outside `local`).
    pub fn uses_simulated_model(&self) -> bool {
        self.llm.provider == ProviderKind::Simulated || (self.llm.provider == ProviderKind::Auto && self.llm.api_key.is_none())
    }

    /// Whether this stage's policy lets any gpt-5 model be called.
    pub fn gpt5_allowed(&self) -> bool {
        self.routing.gpt5_enabled && !self.routing.force_gpt4
    }

    /// The strategy in force after the seed's switches (`FORCE_GPT4`, `auto`).
    pub fn effective_strategy(&self) -> Strategy {
        if self.routing.force_gpt4 || !self.routing.gpt5_enabled {
            return Strategy::Gpt4Stable;
        }
        match self.routing.strategy {
            Strategy::Auto => Strategy::Gpt5Preview,
            s => s,
        }
    }

    /// Every model the router may call under this policy (tiers, production model, fallbacks).
    pub fn reachable_models(&self) -> Vec<String> {
        let mut start = match self.effective_strategy() {
            Strategy::Gpt4Stable => vec![self.routing.production_model.clone()],
            _ => vec![self.routing.nano_model.clone(), self.routing.mini_model.clone(), self.routing.full_model.clone()],
        };
        let mut i = 0;
        while i < start.len() {
            if let Some(chain) = self.routing.fallbacks.get(&start[i]) {
                for m in chain {
                    if !start.contains(m) {
                        start.push(m.clone());
                    }
                }
            }
            i += 1;
        }
        start
    }

    /// Whether a job may ask for `model` explicitly in this stage.
    pub fn model_allowed(&self, model: &str) -> bool {
        match self.models.get(model) {
            None => false,
            Some(m) => m.family != ModelFamily::Gpt5 || self.gpt5_allowed(),
        }
    }

    /// The queue's name.
    pub fn queue_name(&self) -> String {
        or_default(&self.queue.name, || format!("atlas-codex-queue-{}", self.stage))
    }
    /// The DLQ's name.
    pub fn dlq_name(&self) -> String {
        or_default(&self.queue.dlq_name, || format!("atlas-codex-dlq-{}", self.stage))
    }
    /// The job table's name.
    pub fn jobs_table(&self) -> String {
        or_default(&self.storage.jobs_table, || format!("atlas-codex-jobs-{}", self.stage))
    }
    /// The budget table's name.
    pub fn budget_table(&self) -> String {
        or_default(&self.storage.budget_table, || format!("atlas-codex-budget-{}", self.stage))
    }
    /// The artifacts bucket's name.
    pub fn bucket(&self) -> String {
        or_default(&self.storage.bucket, || format!("atlas-codex-artifacts-{}", self.stage))
    }
    /// The event topic's name.
    pub fn event_topic(&self) -> String {
        or_default(&self.events.topic, || format!("atlas-codex-events-{}", self.stage))
    }
    /// The `stage` label value on every metric.
    pub fn metrics_namespace(&self) -> String {
        or_default(&self.telemetry.metrics_namespace, || self.stage.clone())
    }
    /// The monthly limit in micro-USD.
    pub fn budget_limit_micros(&self) -> i64 {
        (self.budget.monthly_usd * 1_000_000.0).round() as i64
    }

    /// (what, name) for every stage-scoped resource.
    pub fn resource_names(&self) -> Vec<(&'static str, String)> {
        vec![
            ("queue", self.queue_name()),
            ("dlq", self.dlq_name()),
            ("jobs table", self.jobs_table()),
            ("budget table", self.budget_table()),
            ("bucket", self.bucket()),
            ("event topic", self.event_topic()),
            ("metrics namespace", self.metrics_namespace()),
        ]
    }

    /// The settings as TOML with the secret left out (for `validate --output`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn or_default(v: &str, f: impl FnOnce() -> String) -> String {
    if v.is_empty() {
        f()
    } else {
        v.to_string()
    }
}
