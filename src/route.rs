//! Model routing: which model a job's first call goes to, where an invalid answer escalates to,
//! and which models to fall back on when a call fails.
//!
//! The decision is rule-based so it is cheap (well under a millisecond) and explainable: every
//! [`Decision`] carries the complexity score and a sentence saying how it was reached, which the
//! worker keeps on the job record ([`crate::job::Route`]).
//!
//! Policy comes from the stage's settings only ([`Settings::effective_strategy`],
//! [`Settings::model_allowed`], `[routing]`, `[models]`); no model id is written in this file.
//! Whatever the job asks, a gpt-5 class model is never returned while the stage does not allow
//! GPT-5 ([`Settings::gpt5_allowed`]): not as a tier, an override, an escalation or a fallback.

use serde_json::Value;

use crate::error::{ErrorKind, JobError};
use crate::job::{Job, JobType, Route};
use crate::settings::{RoutingSettings, Settings, Strategy};

/// Where a job's first call was routed (kept on the job record as its lowercase name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The cheapest gpt-5 model (`routing.nano_model`).
    Nano,
    /// The middle gpt-5 model (`routing.mini_model`).
    Mini,
    /// The top gpt-5 model (`routing.full_model`).
    Full,
    /// The GPT-4-class model used by `gpt4_stable` (`routing.production_model`).
    Production,
    /// The job named its own model.
    Override,
}

impl Tier {
    /// The name on records, in reasons and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Nano => "nano",
            Tier::Mini => "mini",
            Tier::Full => "full",
            Tier::Production => "production",
            Tier::Override => "override",
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deepest schema nesting walked when measuring a schema (job validation caps schemas at 32).
const MAX_SCHEMA_WALK: usize = 64;

/// What the router looks at in a job: the inputs of [`score`].
///
/// Built once per job by [`Features::from_job`]; kept separate from the job so the score can be
/// tested and explained on its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    /// Tokens of input the model will read (instructions + cleaned page), as counted by the caller.
    pub input_tokens: usize,
    /// Number of properties declared anywhere in the output schema (nested ones included).
    pub schema_properties: usize,
    /// Nesting depth of the data the schema describes: a flat object is 1, an object holding an
    /// array of objects is 3, no schema is 0.
    pub schema_depth: usize,
    /// Pages a crawl may visit (`max_pages`); 0 for a single-page extract.
    pub crawl_pages: u32,
    /// The job's instructions, as given (searched for reasoning keywords).
    pub instructions: String,
}

impl Features {
    /// Measures a job. `input_tokens` is the caller's count of what the model will read (the
    /// worker counts it with the tokenizer after cleaning the page).
    pub fn from_job(job: &Job, input_tokens: usize) -> Features {
        let (schema_properties, schema_depth) = match &job.schema {
            Some(s) => (count_properties(s, 0), schema_depth(s, 0)),
            None => (0, 0),
        };
        Features {
            input_tokens,
            schema_properties,
            schema_depth,
            crawl_pages: if job.job_type == JobType::Crawl { job.max_pages } else { 0 },
            instructions: job.instructions.clone().unwrap_or_default(),
        }
    }
}

/// Counts the properties a JSON Schema declares, following `properties`, `items`, `prefixItems`,
/// `additionalProperties`, `anyOf`/`oneOf`/`allOf` and `$defs`/`definitions` (not `$ref`).
fn count_properties(s: &Value, level: usize) -> usize {
    if level > MAX_SCHEMA_WALK {
        return 0;
    }
    let Value::Object(m) = s else { return 0 };
    let mut n = 0;
    if let Some(Value::Object(props)) = m.get("properties") {
        n += props.len();
        n += props.values().map(|v| count_properties(v, level + 1)).sum::<usize>();
    }
    for key in ["items", "additionalProperties"] {
        if let Some(v) = m.get(key) {
            n += count_properties(v, level + 1);
        }
    }
    for key in ["prefixItems", "anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(a)) = m.get(key) {
            n += a.iter().map(|v| count_properties(v, level + 1)).sum::<usize>();
        }
    }
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(d)) = m.get(key) {
            n += d.values().map(|v| count_properties(v, level + 1)).sum::<usize>();
        }
    }
    n
}

/// Nesting depth of the data a schema describes: each object-with-properties or array level
/// counts one; alternatives (`anyOf`...) count as their deepest branch.
fn schema_depth(s: &Value, level: usize) -> usize {
    if level > MAX_SCHEMA_WALK {
        return 0;
    }
    let Value::Object(m) = s else { return 0 };
    let mut deepest_child = 0;
    let mut is_container = false;
    if let Some(Value::Object(props)) = m.get("properties") {
        is_container = true;
        deepest_child = props.values().map(|v| schema_depth(v, level + 1)).max().unwrap_or(0);
    }
    if let Some(items) = m.get("items") {
        is_container = true;
        deepest_child = deepest_child.max(schema_depth(items, level + 1));
    }
    if let Some(Value::Array(a)) = m.get("prefixItems") {
        is_container = true;
        deepest_child = deepest_child.max(a.iter().map(|v| schema_depth(v, level + 1)).max().unwrap_or(0));
    }
    if let Some(v @ Value::Object(_)) = m.get("additionalProperties") {
        is_container = true;
        deepest_child = deepest_child.max(schema_depth(v, level + 1));
    }
    let own = usize::from(is_container) + deepest_child;
    // Alternatives describe the same level: take the deepest one.
    let alt = ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|k| m.get(*k))
        .filter_map(Value::as_array)
        .flat_map(|a| a.iter().map(|v| schema_depth(v, level + 1)))
        .max()
        .unwrap_or(0);
    own.max(alt)
}

/// Points given for input size: one per 400 tokens, at most 30 (so 12,000 tokens scores 30).
const TOKENS_PER_POINT: usize = 400;
const TOKENS_MAX: u32 = 30;
/// Points per declared schema property, at most 25.
const PER_PROPERTY: u32 = 2;
const PROPERTIES_MAX: u32 = 25;
/// Points per schema nesting level beyond the first, at most 15.
const PER_DEPTH: u32 = 5;
const DEPTH_MAX: u32 = 15;
/// A crawl gets a base plus a point per 10 pages, at most 10.
const CRAWL_BASE: u32 = 5;
const CRAWL_PAGES_PER_POINT: u32 = 10;
const CRAWL_MAX: u32 = 10;
/// Points per distinct reasoning keyword found in the instructions, at most 30.
const PER_KEYWORD: u32 = 10;
const KEYWORDS_MAX: u32 = 30;

/// The complexity score of a job, 0-100, and a one-line explanation of how it was reached.
///
/// Formula (each part capped, the total capped at 100):
/// - input: `min(30, input_tokens / 400)`;
/// - schema size: `min(25, 2 × schema_properties)`;
/// - schema depth: `min(15, 5 × (schema_depth − 1))` (a flat object adds nothing);
/// - crawl: 0 for an extract, else `min(10, 5 + crawl_pages / 10)`;
/// - reasoning: `min(30, 10 × distinct keywords)` where a keyword of
///   `routing.reasoning_keywords` counts when it appears in the instructions as whole word(s),
///   case-insensitively (`"Compare"` matches `compare`, `"comparison"` does not).
///
/// With the default thresholds (mini from 30, full from 60) a short page with a small flat
/// schema goes to nano, a reasoning instruction or a large page lifts a job to mini, and a large
/// page with a big nested schema and reasoning goes to full.
pub fn score(f: &Features, s: &RoutingSettings) -> (u32, String) {
    let input = u32::try_from(f.input_tokens / TOKENS_PER_POINT).unwrap_or(u32::MAX).min(TOKENS_MAX);
    let props = u32::try_from(f.schema_properties).unwrap_or(u32::MAX).saturating_mul(PER_PROPERTY).min(PROPERTIES_MAX);
    let depth = u32::try_from(f.schema_depth.saturating_sub(1)).unwrap_or(u32::MAX).saturating_mul(PER_DEPTH).min(DEPTH_MAX);
    let crawl = if f.crawl_pages == 0 { 0 } else { (CRAWL_BASE + f.crawl_pages / CRAWL_PAGES_PER_POINT).min(CRAWL_MAX) };
    let found = keywords_found(&f.instructions, &s.reasoning_keywords);
    let reasoning = u32::try_from(found.len()).unwrap_or(u32::MAX).saturating_mul(PER_KEYWORD).min(KEYWORDS_MAX);
    let total = (input + props + depth + crawl + reasoning).min(100);
    let mut why = format!(
        "score {total}: input {} tokens +{input}, schema {} properties +{props}, depth {} +{depth}",
        f.input_tokens, f.schema_properties, f.schema_depth
    );
    if f.crawl_pages > 0 {
        why.push_str(&format!(", crawl {} pages +{crawl}", f.crawl_pages));
    }
    if found.is_empty() {
        why.push_str(", no reasoning keywords +0");
    } else {
        why.push_str(&format!(", reasoning keywords [{}] +{reasoning}", found.join(", ")));
    }
    (total, why)
}

/// The configured keywords that occur in `text` as whole words (case-insensitive), in config
/// order, each once. A keyword of several words matches the same words in sequence.
fn keywords_found(text: &str, keywords: &[String]) -> Vec<String> {
    let words: Vec<String> = split_words(text);
    let mut found = Vec::new();
    for k in keywords {
        let kw = split_words(k);
        if kw.is_empty() || found.contains(k) {
            continue;
        }
        if words.windows(kw.len()).any(|w| w == kw.as_slice()) {
            found.push(k.clone());
        }
    }
    found
}

fn split_words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect()
}

/// Where a job's first call goes, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The model id to call (a key of the `[models]` table).
    pub model: String,
    /// The tier chosen.
    pub tier: Tier,
    /// The complexity score (0-100) from [`score`].
    pub score: u32,
    /// The explanation kept on the job record.
    pub reason: String,
    /// True when budget pressure (`routing.prefer_cheaper_above`) moved the job one tier down
    /// (a metric label; the reason says the same in words, with "cheaper").
    pub downgraded: bool,
}

impl From<Decision> for Route {
    fn from(d: Decision) -> Route {
        Route { model: d.model, tier: d.tier, score: d.score, reason: d.reason }
    }
}

/// The stage's routing policy, built once from settings and shared by every job.
#[derive(Debug, Clone)]
pub struct Router {
    /// The settings the policy reads (API key removed: the router never needs it).
    settings: Settings,
    strategy: Strategy,
}

impl Router {
    /// Builds the policy from the stage's settings.
    pub fn new(settings: &Settings) -> Router {
        let mut settings = settings.clone();
        settings.llm.api_key = None;
        let strategy = settings.effective_strategy();
        Router { settings, strategy }
    }

    /// The strategy in force (after `FORCE_GPT4`, `GPT5_ENABLED` and `auto`).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// How often invalid output may move a job up a tier (`routing.max_escalations`).
    pub fn max_escalations(&self) -> u32 {
        self.settings.routing.max_escalations
    }

    /// Whether the stage may call `model` at all: it is in the models table, and is not gpt-5
    /// class while GPT-5 is not allowed.
    pub fn allowed(&self, model: &str) -> bool {
        self.settings.model_allowed(model)
    }

    /// Chooses the model for a job's first call.
    ///
    /// - A job's own `model` is honoured when the stage allows it ([`Settings::model_allowed`]);
    ///   otherwise the job fails permanently with `model_forbidden`. An override is not moved to a
    ///   cheaper tier.
    /// - `gpt4_stable` sends every other job to `routing.production_model`.
    /// - `gpt5_preview` picks nano / mini / full by [`score`] against `routing.mini_threshold` and
    ///   `routing.full_threshold`; when `budget_used_fraction` (0-1, a hint from
    ///   [`crate::budget::Budget::used_fraction`]) is above `routing.prefer_cheaper_above`, it drops
    ///   one tier (nano stays nano) and says so in the reason.
    ///
    /// A routed model missing from the models table (a configuration error that validation
    /// rejects) is reported as a transient `model_unconfigured` error so the job survives a fix.
    pub fn decide(&self, job: &Job, f: &Features, budget_used_fraction: f64) -> Result<Decision, JobError> {
        let r = &self.settings.routing;
        let (score, explanation) = score(f, r);
        if let Some(m) = &job.model {
            if !self.allowed(m) {
                return Err(self.forbidden(m));
            }
            return Ok(Decision {
                model: m.clone(),
                tier: Tier::Override,
                score,
                reason: format!("{explanation}; the job asked for `{m}` and this stage allows it"),
                downgraded: false,
            });
        }
        let mut downgraded = false;
        let (model, tier, mut reason) = match self.strategy {
            Strategy::Gpt4Stable => (
                r.production_model.clone(),
                Tier::Production,
                format!("{explanation}; strategy gpt4_stable sends every job to the production model"),
            ),
            Strategy::Gpt5Preview | Strategy::Auto => {
                let tier = if score >= r.full_threshold {
                    Tier::Full
                } else if score >= r.mini_threshold {
                    Tier::Mini
                } else {
                    Tier::Nano
                };
                let mut reason = format!("{explanation}; tiers: nano < {} ≤ mini < {} ≤ full → {tier}", r.mini_threshold, r.full_threshold);
                let tier = if budget_used_fraction > r.prefer_cheaper_above {
                    let cheaper = match tier {
                        Tier::Full => Tier::Mini,
                        _ => Tier::Nano,
                    };
                    if cheaper != tier {
                        downgraded = true;
                        reason.push_str(&format!(
                            "; budget {:.0}% used (above {:.0}%), dropped to the cheaper tier {cheaper}",
                            budget_used_fraction * 100.0,
                            r.prefer_cheaper_above * 100.0
                        ));
                    }
                    cheaper
                } else {
                    tier
                };
                (self.tier_model(tier).to_string(), tier, reason)
            }
        };
        if self.strategy == Strategy::Gpt4Stable && budget_used_fraction > r.prefer_cheaper_above {
            reason.push_str(&format!("; budget {:.0}% used, but gpt4_stable has a single tier", budget_used_fraction * 100.0));
        }
        if !self.allowed(&model) {
            return Err(JobError::transient(
                ErrorKind::ModelUnconfigured,
                format!("tier {tier} routes to `{model}`, which this stage cannot call (not in [models] or gpt-5 not allowed)"),
            ));
        }
        Ok(Decision { model, tier, score, reason, downgraded })
    }

    /// The next tier up after an invalid answer from `current_model`: nano → mini → full.
    /// `None` for the top tier, the production model, any other model, under `gpt4_stable`, or
    /// when the next tier is not callable in this stage. Callers cap escalations at
    /// [`Router::max_escalations`] and do not escalate an explicit override unless they mean to.
    pub fn escalate(&self, current_model: &str) -> Option<String> {
        if self.strategy == Strategy::Gpt4Stable {
            return None;
        }
        let r = &self.settings.routing;
        let next = if current_model == r.nano_model {
            &r.mini_model
        } else if current_model == r.mini_model {
            &r.full_model
        } else {
            return None;
        };
        (next != current_model && self.allowed(next)).then(|| next.clone())
    }

    /// Models to try, in order, after `model` failed with a server error or timeout:
    /// `routing.fallbacks[model]` without the models this stage may not call (never a gpt-5
    /// model while GPT-5 is not allowed) and without `model` itself.
    pub fn fallbacks(&self, model: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for m in self.settings.routing.fallbacks.get(model).into_iter().flatten() {
            if m != model && self.allowed(m) && !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }

    fn tier_model(&self, tier: Tier) -> &str {
        let r = &self.settings.routing;
        match tier {
            Tier::Full => &r.full_model,
            Tier::Mini => &r.mini_model,
            Tier::Nano => &r.nano_model,
            Tier::Production | Tier::Override => &r.production_model,
        }
    }

    fn forbidden(&self, m: &str) -> JobError {
        let message = match self.settings.models.get(m) {
            None => format!(
                "model `{m}` is not configured in stage `{}` (known: {})",
                self.settings.stage,
                self.settings.models.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            Some(_) => format!(
                "model `{m}` is gpt-5 class and GPT-5 is not allowed in stage `{}` (GPT5_ENABLED=false or FORCE_GPT4=true)",
                self.settings.stage
            ),
        };
        JobError::permanent(ErrorKind::ModelForbidden, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs() -> RoutingSettings {
        RoutingSettings::default()
    }

    #[test]
    fn keywords_match_whole_words_case_insensitively() {
        let k: Vec<String> = vec!["compare".into(), "rank".into(), "step by step".into()];
        assert_eq!(keywords_found("Please COMPARE the prices.", &k), vec!["compare"]);
        assert!(keywords_found("a comparison of ranking", &k).is_empty());
        assert_eq!(keywords_found("Think step-by-step, then rank", &k), vec!["rank", "step by step"]);
        assert!(keywords_found("", &k).is_empty());
    }

    #[test]
    fn score_formula_parts() {
        let f = Features { input_tokens: 2000, schema_properties: 3, schema_depth: 1, ..Default::default() };
        let (s, why) = score(&f, &rs());
        assert_eq!(s, 5 + 6);
        assert!(why.contains("input 2000 tokens +5"), "{why}");

        let f = Features {
            input_tokens: 100_000,
            schema_properties: 100,
            schema_depth: 10,
            crawl_pages: 100,
            instructions: "analyze, compare, rank and explain".into(),
        };
        let (s, why) = score(&f, &rs());
        assert_eq!(s, 100, "{why}");
        assert!(why.contains("reasoning keywords [analyze, compare, explain, rank] +30"), "{why}");

        let f = Features { crawl_pages: 25, ..Default::default() };
        assert_eq!(score(&f, &rs()).0, 7);
    }

    #[test]
    fn schema_measures() {
        let flat = json!({"type":"object","properties":{"a":{"type":"string"},"b":{"type":"number"}}});
        assert_eq!(count_properties(&flat, 0), 2);
        assert_eq!(schema_depth(&flat, 0), 1);
        let nested = json!({"type":"object","properties":{
            "items":{"type":"array","items":{"type":"object","properties":{"x":{"type":"string"},"y":{"type":"string"}}}},
            "name":{"type":"string"}}});
        assert_eq!(count_properties(&nested, 0), 4);
        assert_eq!(schema_depth(&nested, 0), 3);
        let alt = json!({"anyOf":[flat, nested]});
        assert_eq!(schema_depth(&alt, 0), 3);
        assert_eq!(count_properties(&alt, 0), 6);
        assert_eq!(schema_depth(&json!({"type":"string"}), 0), 0);
        assert_eq!(count_properties(&json!(true), 0), 0);
    }

    #[test]
    fn score_is_cheap() {
        let f =
            Features { input_tokens: 12_000, schema_properties: 40, schema_depth: 5, crawl_pages: 0, instructions: "word ".repeat(6000) };
        let t = std::time::Instant::now();
        for _ in 0..10 {
            let _ = score(&f, &rs());
        }
        // Ten scores of a 30 KB instruction text, generous for a debug build on a busy machine.
        assert!(t.elapsed() < std::time::Duration::from_millis(100), "{:?}", t.elapsed());
    }
}
