//! Stage configuration: the settings tree, its layering, the seed's switches, and validation.
//!
//! Layers, later wins: built-in defaults ([`Settings::default`]) → `config/default.toml` →
//! `config/{stage}.toml` → `--config FILE` → the seed's variables (`GPT5_ENABLED`, `FORCE_GPT4`,
//! `DEFAULT_MODEL_STRATEGY`, `MONTHLY_BUDGET`, `OPENAI_BASE_URL`) → `ATLAS__SECTION__KEY`.
//! `OPENAI_API_KEY` is read from the environment only and never serialised.
//!
//! [`Settings::problems`] lists every problem at once; [`check_isolation`] is the cross-stage check
//! behind `atlas-codex validate --all-stages`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The environment variable holding the webhook signing secret.
pub const WEBHOOK_SECRET_ENV: &str = "ATLAS_WEBHOOK_SECRET";

/// The stages this project ships config for.
pub const KNOWN_STAGES: &[&str] = &["local", "preview", "production"];

/// The known stage a mistyped or shortened name most likely meant (`prod` → `production`,
/// `preveiw` → `preview`), or `None` when nothing is close.
pub fn suggest_stage(stage: &str) -> Option<&'static str> {
    let s = stage.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    const ALIASES: &[(&str, &str)] =
        &[("prod", "production"), ("prd", "production"), ("dev", "local"), ("stg", "preview"), ("staging", "preview")];
    if let Some((_, k)) = ALIASES.iter().find(|(a, _)| *a == s) {
        return Some(k);
    }
    if let Some(k) = KNOWN_STAGES.iter().find(|k| k.starts_with(s.as_str()) && s.len() >= 3) {
        return Some(k);
    }
    KNOWN_STAGES.iter().map(|k| (edit_distance(&s, k), *k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

/// Levenshtein distance, for [`suggest_stage`].
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The whole settings tree. Every field has a default so a partial file is enough.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Deployment stage (`local`, `preview`, `production`); every resource name derives from it.
    pub stage: String,
    /// Queue and DLQ.
    pub queue: QueueSettings,
    /// Job table, budget table, artifacts.
    pub storage: StorageSettings,
    /// AWS client settings (the SDK's own environment variables also apply).
    pub aws: AwsSettings,
    /// The receive loop and job execution.
    pub worker: WorkerSettings,
    /// The LLM provider.
    pub llm: LlmSettings,
    /// Model routing policy (the seed's switches).
    pub routing: RoutingSettings,
    /// Per-model prices, limits and call parameters, keyed by model id.
    pub models: BTreeMap<String, ModelSettings>,
    /// The monthly budget.
    pub budget: BudgetSettings,
    /// How the models' `rpm` / `tpm` limits are shared by the stage's workers.
    pub rate_limit: RateLimitSettings,
    /// Page fetching (SSRF protection).
    pub fetch: FetchSettings,
    /// Crawl limits and politeness.
    pub crawl: CrawlSettings,
    /// Job end events (the stage's topic, or the local events file).
    pub events: EventSettings,
    /// Signed webhooks to a job's `callback_url`.
    pub webhooks: WebhookSettings,
    /// Admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub admin: AdminSettings,
    /// Logs and metrics.
    pub telemetry: TelemetrySettings,
}

/// Which implementation backs the queue and the stores.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Embedded: one SQLite file plus a directory of artifacts (stage `local`).
    Sqlite,
    /// SQS, DynamoDB and S3.
    Aws,
}

/// Queue settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Queue name; empty means `atlas-codex-queue-{stage}`.
    pub name: String,
    /// DLQ name; empty means `atlas-codex-dlq-{stage}`.
    pub dlq_name: String,
    /// Long-poll wait per receive, seconds (SQS allows 0-20).
    pub wait_time_secs: u64,
    /// Visibility timeout given to a received message, seconds; the heartbeat keeps extending it.
    pub visibility_timeout_secs: u64,
    /// Receives after which the queue moves a message to the DLQ (redrive policy).
    pub max_receive_count: u32,
    /// Messages asked for per receive call (1-10).
    pub receive_batch: usize,
}

/// Storage settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `sqlite` (embedded) or `aws`.
    pub backend: BackendKind,
    /// Where the embedded backend keeps its SQLite file and artifacts.
    pub data_dir: PathBuf,
    /// Job table; empty means `atlas-codex-jobs-{stage}`.
    pub jobs_table: String,
    /// Budget ledger table; empty means `atlas-codex-budget-{stage}`.
    pub budget_table: String,
    /// Artifacts bucket; empty means `atlas-codex-artifacts-{stage}`.
    pub bucket: String,
    /// Largest result `data` kept inline on the job record, bytes.
    pub inline_result_max_bytes: usize,
    /// Days a job record is kept (DynamoDB TTL); 0 keeps forever.
    pub retention_days: u32,
}

/// AWS client settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSettings {
    /// Region; empty means the SDK's chain (`AWS_REGION`, profile, IMDS).
    pub region: String,
    /// Endpoint override (emulators); empty means `AWS_ENDPOINT_URL` or the real endpoints.
    pub endpoint_url: String,
    /// SDK attempts per call (standard retry mode).
    pub max_attempts: u32,
}

/// What happens to a job when the budget cannot cover its next call.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnBudgetExhausted {
    /// Keep the message and retry later; the job stays `pending` (`budget_exhausted`).
    Defer,
    /// Fail the job (recorded), never dead-letter it for budget.
    Fail,
}

/// Worker settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Jobs run at once per process (independent of the receive batch size).
    pub concurrency: usize,
    /// After SIGTERM, how long in-flight jobs may take before they are given back, seconds.
    pub drain_timeout_secs: u64,
    /// Longest a single job may run, seconds; it then fails transiently.
    pub job_timeout_secs: u64,
    /// First retry delay, seconds; doubled per receive up to `retry_max_secs`.
    pub retry_base_secs: u64,
    /// Longest retry delay, seconds (SQS caps visibility at 12 hours).
    pub retry_max_secs: u64,
    /// Delay before a budget-deferred job is tried again, seconds (≤ 900, SQS's delay limit).
    pub budget_defer_secs: u64,
    /// `defer` or `fail`.
    pub on_budget_exhausted: OnBudgetExhausted,
    /// How often deletes are flushed in a batch, milliseconds.
    pub delete_flush_ms: u64,
    /// Bytes the inputs of all jobs in flight may hold at once (each job takes its input's worst
    /// case while it reads it, then what it keeps); jobs past it wait.
    pub input_bytes_in_flight: usize,
}

/// Which LLM provider to use.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible server at `base_url` (requires `OPENAI_API_KEY`).
    Openai,
    /// Schema-conforming synthetic answers; nothing is spent.
    Simulated,
    /// `openai` when `OPENAI_API_KEY` is set. Without a key, `simulated` on the `local` stage only:
    /// a `preview` or `production` worker refuses to start rather than store invented values.
    Auto,
}

/// LLM provider settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// `openai`, `simulated` or `auto`.
    pub provider: ProviderKind,
    /// OpenAI-compatible API base (`OPENAI_BASE_URL`).
    pub base_url: String,
    /// Timeout for one call, seconds.
    pub request_timeout_secs: u64,
    /// Simulated provider: latency per call, milliseconds.
    pub simulated_latency_ms: u64,
    /// Most tokens of page content given to the model in one call. A longer input is extracted
    /// over chunks of this size (or cut with a note when the job asks for `truncate`).
    pub max_input_tokens: usize,
    /// Most chunks one job's input may be split into; a longer input fails (`input_too_long`)
    /// unless the job asks for `truncate`.
    pub max_chunks: u32,
    /// Model calls per job attempt after which transient model errors give up (fallbacks included).
    pub max_calls_per_job: u32,
    /// The API key: from `OPENAI_API_KEY` only, never from a file, never serialised or logged.
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

/// A secret string whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself; call only where it is sent to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Routing strategy (the seed's `DEFAULT_MODEL_STRATEGY`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Route by complexity to nano / mini / full gpt-5 tiers.
    Gpt5Preview,
    /// Every job to the production GPT-4-class model.
    Gpt4Stable,
    /// `gpt5_preview` when `gpt5_enabled`, else `gpt4_stable`.
    Auto,
}

/// Routing settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingSettings {
    /// `gpt5_preview`, `gpt4_stable` or `auto` (`DEFAULT_MODEL_STRATEGY`).
    pub strategy: Strategy,
    /// Whether any gpt-5 model may be called (`GPT5_ENABLED`).
    pub gpt5_enabled: bool,
    /// Send everything to `production_model` (`FORCE_GPT4`).
    pub force_gpt4: bool,
    /// The cheapest gpt-5 tier.
    pub nano_model: String,
    /// The middle gpt-5 tier.
    pub mini_model: String,
    /// The top gpt-5 tier.
    pub full_model: String,
    /// The GPT-4-class model for `gpt4_stable`.
    pub production_model: String,
    /// Score at or above which `mini` is chosen.
    pub mini_threshold: u32,
    /// Score at or above which `full` is chosen.
    pub full_threshold: u32,
    /// Instruction words that signal reasoning (each adds to the score).
    pub reasoning_keywords: Vec<String>,
    /// Times invalid output may move a job up a tier.
    pub max_escalations: u32,
    /// On model errors (5xx, timeouts) try these next, by model id.
    pub fallbacks: BTreeMap<String, Vec<String>>,
    /// Budget fraction used above which routing prefers a cheaper tier.
    pub prefer_cheaper_above: f64,
}

/// A model's API family: which call parameters it takes. Written as `gpt5` or `gpt4` in
/// configuration; any other name is kept as [`ModelFamily::Unknown`] so that validation can
/// name the key ([`Settings::problems`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ModelFamily {
    /// gpt-5 class: reasoning parameters (`reasoning_effort`, `verbosity`), no temperature.
    Gpt5,
    /// GPT-4 class: `temperature`.
    Gpt4,
    /// A name this worker does not know (refused by validation).
    Unknown(String),
}

impl ModelFamily {
    /// The name in configuration.
    pub fn as_str(&self) -> &str {
        match self {
            ModelFamily::Gpt5 => "gpt5",
            ModelFamily::Gpt4 => "gpt4",
            ModelFamily::Unknown(name) => name,
        }
    }
}

impl From<&str> for ModelFamily {
    fn from(name: &str) -> Self {
        match name {
            "gpt5" => ModelFamily::Gpt5,
            "gpt4" => ModelFamily::Gpt4,
            other => ModelFamily::Unknown(other.to_string()),
        }
    }
}

impl From<String> for ModelFamily {
    fn from(name: String) -> Self {
        ModelFamily::from(name.as_str())
    }
}

impl From<ModelFamily> for String {
    fn from(f: ModelFamily) -> String {
        f.as_str().to_string()
    }
}

impl PartialEq<&str> for ModelFamily {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model's prices, limits and call parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// `gpt5` (reasoning parameters) or `gpt4` (temperature).
    pub family: ModelFamily,
    /// USD per 1M input tokens.
    pub input_usd_per_mtok: f64,
    /// USD per 1M cached input tokens.
    pub cached_input_usd_per_mtok: f64,
    /// USD per 1M output tokens (reasoning included).
    pub output_usd_per_mtok: f64,
    /// Output cap per call; also the worst case reserved.
    pub max_output_tokens: u32,
    /// Requests per minute allowed (0 = unlimited).
    pub rpm: u32,
    /// Tokens per minute allowed (0 = unlimited).
    pub tpm: u32,
    /// GPT-4 class: sampling temperature.
    pub temperature: Option<f32>,
    /// gpt-5: `minimal` | `low` | `medium` | `high`.
    pub reasoning_effort: Option<String>,
    /// gpt-5: `low` | `medium` | `high`.
    pub verbosity: Option<String>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            family: ModelFamily::Gpt4,
            input_usd_per_mtok: 0.0,
            cached_input_usd_per_mtok: 0.0,
            output_usd_per_mtok: 0.0,
            max_output_tokens: 4096,
            rpm: 0,
            tpm: 0,
            temperature: None,
            reasoning_effort: None,
            verbosity: None,
        }
    }
}

/// Budget settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Monthly limit in USD for the whole stage (`MONTHLY_BUDGET`).
    pub monthly_usd: f64,
    /// A budget lease's lifetime, seconds: a dead worker's lease lapses after this and is
    /// recovered at its declared ceiling about a quarter of it later.
    pub reservation_ttl_secs: u64,
    /// Fraction at which the budget counts as nearly spent (alerts, cheaper routing).
    pub warn_fraction: f64,
}

/// Where the models' `rpm` / `tpm` limits are enforced (see `crate::ratelimit`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// The whole stage: every worker leases capacity from the stage's shared store (the
    /// budget table on AWS, the SQLite file locally), so the limits hold for the fleet.
    Fleet,
    /// Each worker process alone applies the full limits (one process per key only).
    Process,
}

/// Rate-limit settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// `fleet` (default) or `process`.
    pub scope: RateScope,
    /// Length of one capacity window, seconds (1..=60); 0 picks the length that leaves the
    /// largest share of each model's `rpm` usable (5 s for 120 rpm).
    pub window_secs: u64,
    /// Replicas assumed when the shared store is unreachable: each worker then applies
    /// `rpm / fallback_replicas` (and the same share of `tpm`) on its own until the store
    /// answers again. Set it to the deployment's maximum replica count.
    pub fallback_replicas: u32,
}

/// Fetch settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FetchSettings {
    /// Allow private, loopback and link-local targets. `local` and tests only.
    pub allow_private_networks: bool,
    /// Largest body accepted, bytes, counted after decompression.
    pub max_body_bytes: usize,
    /// TCP connect timeout, milliseconds.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout, seconds.
    pub total_timeout_secs: u64,
    /// Redirect hops followed (each one checked again).
    pub max_redirects: u32,
    /// User-Agent sent.
    pub user_agent: String,
    /// Accepted content types (prefix match).
    pub allowed_content_types: Vec<String>,
    /// Forward `Cookie` headers supplied by a job.
    pub allow_cookies: bool,
}

/// Crawl settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CrawlSettings {
    /// Pause between two requests to one host, milliseconds.
    pub politeness_delay_ms: u64,
    /// Obey robots.txt.
    pub respect_robots: bool,
}

/// Job end events ([`crate::events`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Publish an event for every job end (`job.completed`, `job.failed`, `job.deferred`).
    pub enabled: bool,
    /// SNS topic name; empty means `atlas-codex-events-{stage}` (AWS backend).
    pub topic: String,
    /// The topic's ARN (the CloudFormation stack's `EventTopicArn` output); empty means found by
    /// name at start.
    pub topic_arn: String,
}

/// Webhook delivery ([`crate::webhook`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Deliver to a job's `callback_url`.
    pub enabled: bool,
    /// Allow private and loopback receivers. `local` and tests only; metadata addresses are
    /// refused always.
    pub allow_private_networks: bool,
    /// Longest one POST may take (connect, send, answer), seconds.
    pub timeout_secs: u64,
    /// How long a delivery is retried after its first POST, seconds.
    pub retry_for_secs: u64,
    /// Most POSTs per delivery.
    pub max_attempts: u32,
    /// Most POSTs in flight at once per worker.
    pub concurrency: usize,
    /// How long a stopping worker waits for deliveries in flight, seconds.
    pub drain_secs: u64,
    /// The signing secret: from `ATLAS_WEBHOOK_SECRET` only, never from a file, never serialised.
    #[serde(skip)]
    pub secret: Option<Secret>,
}

/// Admin server settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Listen address (`ATLAS__ADMIN__LISTEN`); empty disables the server.
    pub listen: String,
}

/// Log format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (preview, production).
    Json,
    /// Human-readable (local).
    Pretty,
}

/// Telemetry settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` or `pretty`.
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info,atlas_codex=debug` (`RUST_LOG` wins when set).
    pub log_level: String,
    /// Value of the `stage` label on every metric; empty means the stage. Must differ per stage.
    pub metrics_namespace: String,
}

fn model(family: ModelFamily, i: f64, c: f64, o: f64) -> ModelSettings {
    let gpt5 = family == ModelFamily::Gpt5;
    ModelSettings {
        family,
        input_usd_per_mtok: i,
        cached_input_usd_per_mtok: c,
        output_usd_per_mtok: o,
        max_output_tokens: 4096,
        rpm: 500,
        tpm: 2_000_000,
        temperature: if gpt5 { None } else { Some(0.0) },
        reasoning_effort: if gpt5 { Some("low".into()) } else { None },
        verbosity: if gpt5 { Some("low".into()) } else { None },
    }
}

impl Default for Settings {
    fn default() -> Self {
        let mut models = BTreeMap::new();
        models.insert("gpt-5".into(), model(ModelFamily::Gpt5, 1.25, 0.125, 10.0));
        models.insert("gpt-5-mini".into(), model(ModelFamily::Gpt5, 0.25, 0.025, 2.0));
        let mut nano = model(ModelFamily::Gpt5, 0.05, 0.005, 0.40);
        nano.reasoning_effort = Some("minimal".into()); // as in config/default.toml
        models.insert("gpt-5-nano".into(), nano);
        models.insert("gpt-4o".into(), model(ModelFamily::Gpt4, 2.50, 1.25, 10.0));
        models.insert("gpt-4.1".into(), model(ModelFamily::Gpt4, 2.00, 0.50, 8.0));
        let mut fallbacks = BTreeMap::new();
        fallbacks.insert("gpt-5".into(), vec!["gpt-5-mini".into()]);
        fallbacks.insert("gpt-5-mini".into(), vec!["gpt-5-nano".into()]);
        fallbacks.insert("gpt-4o".into(), vec!["gpt-4.1".into()]);
        Settings {
            stage: "local".into(),
            queue: QueueSettings {
                name: String::new(),
                dlq_name: String::new(),
                wait_time_secs: 20,
                visibility_timeout_secs: 120,
                max_receive_count: 5,
                receive_batch: 10,
            },
            storage: StorageSettings {
                backend: BackendKind::Sqlite,
                data_dir: PathBuf::from("./atlas-data"),
                jobs_table: String::new(),
                budget_table: String::new(),
                bucket: String::new(),
                inline_result_max_bytes: 32 * 1024,
                retention_days: 30,
            },
            aws: AwsSettings { region: String::new(), endpoint_url: String::new(), max_attempts: 3 },
            worker: WorkerSettings {
                concurrency: 64,
                drain_timeout_secs: 60,
                job_timeout_secs: 300,
                retry_base_secs: 5,
                retry_max_secs: 900,
                budget_defer_secs: 300,
                on_budget_exhausted: OnBudgetExhausted::Defer,
                delete_flush_ms: 50,
                input_bytes_in_flight: 512 * 1024 * 1024,
            },
            llm: LlmSettings {
                provider: ProviderKind::Auto,
                base_url: "https://api.openai.com/v1".into(),
                request_timeout_secs: 120,
                simulated_latency_ms: 300,
                max_input_tokens: 12_000,
                max_chunks: 32,
                max_calls_per_job: 4,
                api_key: None,
            },
            routing: RoutingSettings {
                strategy: Strategy::Auto,
                gpt5_enabled: true,
                force_gpt4: false,
                nano_model: "gpt-5-nano".into(),
                mini_model: "gpt-5-mini".into(),
                full_model: "gpt-5".into(),
                production_model: "gpt-4o".into(),
                mini_threshold: 30,
                full_threshold: 60,
                reasoning_keywords: [
                    "analyze",
                    "analyse",
                    "compare",
                    "infer",
                    "reason",
                    "summarize",
                    "summarise",
                    "classify",
                    "evaluate",
                    "explain",
                    "judge",
                    "rank",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                max_escalations: 2,
                fallbacks,
                prefer_cheaper_above: 0.8,
            },
            models,
            budget: BudgetSettings { monthly_usd: 100.0, reservation_ttl_secs: 300, warn_fraction: 0.8 },
            rate_limit: RateLimitSettings { scope: RateScope::Fleet, window_secs: 0, fallback_replicas: 4 },
            fetch: FetchSettings {
                allow_private_networks: false,
                max_body_bytes: 5 * 1024 * 1024,
                connect_timeout_ms: 5_000,
                total_timeout_secs: 30,
                max_redirects: 5,
                user_agent: "AtlasCodexBot/0.1 (+https://github.com/atlas-codex)".into(),
                allowed_content_types: vec![
                    "text/html".into(),
                    "application/xhtml+xml".into(),
                    "text/plain".into(),
                    "application/json".into(),
                ],
                allow_cookies: false,
            },
            crawl: CrawlSettings { politeness_delay_ms: 500, respect_robots: true },
            events: EventSettings { enabled: true, topic: String::new(), topic_arn: String::new() },
            webhooks: WebhookSettings {
                enabled: true,
                allow_private_networks: false,
                timeout_secs: 10,
                retry_for_secs: 900,
                max_attempts: 10,
                concurrency: 32,
                drain_secs: 10,
                secret: None,
            },
            admin: AdminSettings { listen: "0.0.0.0:10090".into() },
            telemetry: TelemetrySettings { log_format: LogFormat::Pretty, log_level: "info".into(), metrics_namespace: String::new() },
        }
    }
}

/// Everything wrong with a configuration, listed at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid configuration for stage `{stage}`:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// The stage being loaded.
    pub stage: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Where settings come from; tests build this directly instead of touching the process env.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The stage (`--stage` or `STAGE`); `local` when absent.
    pub stage: Option<String>,
    /// Directory holding `default.toml` and `{stage}.toml`.
    pub config_dir: PathBuf,
    /// `--config FILE`.
    pub extra_file: Option<PathBuf>,
    /// Environment variables (seed switches and `ATLAS__*`).
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// Sources from the real process environment.
    pub fn from_env(stage: Option<String>, extra_file: Option<PathBuf>) -> Sources {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let config_dir = env.get("ATLAS_CONFIG_DIR").map(PathBuf::from).unwrap_or_else(default_config_dir);
        Sources { stage: stage.or_else(|| env.get("STAGE").cloned()), config_dir, extra_file, env }
    }
}

/// `./config` when it exists, else the directory next to the crate's sources (for `cargo run`
/// from elsewhere), else `/etc/atlas-codex`.
fn default_config_dir() -> PathBuf {
    let cwd = PathBuf::from("config");
    if cwd.join("default.toml").exists() {
        return cwd;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    if built.join("default.toml").exists() {
        return built;
    }
    PathBuf::from("/etc/atlas-codex")
}

impl Settings {
    /// Loads and validates one stage's settings.
    pub fn load(src: &Sources) -> Result<Settings, ConfigError> {
        let stage = src.stage.clone().unwrap_or_else(|| "local".into());
        let fail = |problems: Vec<String>| ConfigError { stage: stage.clone(), problems };
        let mut problems = Vec::new();
        if !valid_stage_name(&stage) {
            let hint = suggest_stage(&stage).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
            return Err(fail(vec![format!("stage `{stage}` must match [a-z0-9-]{{1,32}}{hint}")]));
        }
        // The built-in defaults are merged in after `config` has layered the files and the
        // environment (see `deep_merge`): fed to `config` as a source, their keys are split on
        // dots, so a model id such as `gpt-4.1` would become `gpt-4` → `1`.
        let mut b = config::Config::builder();
        let default_file = src.config_dir.join("default.toml");
        if default_file.exists() {
            b = b.add_source(config::File::from(default_file));
        }
        let stage_file = src.config_dir.join(format!("{stage}.toml"));
        if stage_file.exists() {
            b = b.add_source(config::File::from(stage_file.clone()));
        } else if !KNOWN_STAGES.contains(&stage.as_str()) {
            let hint = suggest_stage(&stage).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
            problems.push(format!("no config file for stage `{stage}` ({}){hint}", stage_file.display()));
        }
        if let Some(f) = &src.extra_file {
            if !f.exists() {
                problems.push(format!("--config file {} does not exist", f.display()));
            } else {
                b = b.add_source(config::File::from(f.clone()));
            }
        }
        // The seed's switches.
        let seed: &[(&str, &str)] = &[
            ("GPT5_ENABLED", "routing.gpt5_enabled"),
            ("FORCE_GPT4", "routing.force_gpt4"),
            ("DEFAULT_MODEL_STRATEGY", "routing.strategy"),
            ("MONTHLY_BUDGET", "budget.monthly_usd"),
            ("OPENAI_BASE_URL", "llm.base_url"),
        ];
        for (var, key) in seed {
            if let Some(v) = src.env.get(*var) {
                b = match parse_scalar(v) {
                    Scalar::Bool(x) => b.set_override(*key, x),
                    Scalar::Float(x) => b.set_override(*key, x),
                    Scalar::Str(x) => b.set_override(*key, x),
                }
                .map_err(|e| fail(vec![format!("{var}: {e}")]))?;
            }
        }
        b = b.set_override("stage", stage.clone()).map_err(|e| fail(vec![e.to_string()]))?;
        // ATLAS__SECTION__KEY overrides.
        for (k, v) in &src.env {
            let Some(rest) = k.strip_prefix("ATLAS__") else { continue };
            let key = rest.split("__").map(|p| p.to_ascii_lowercase()).collect::<Vec<_>>().join(".");
            if key == "stage" {
                // The stage chose the files already loaded; changing it here would mix stages.
                problems.push(format!("{k} cannot set the stage; use --stage or STAGE"));
                continue;
            }
            // A string key keeps the text as it is, even when it looks like a number or a bool.
            let string_key = default_at(&key).is_some_and(|d| d.is_string());
            b = match parse_scalar(v) {
                _ if string_key => b.set_override(&key, v.clone()),
                Scalar::Bool(x) => b.set_override(&key, x),
                Scalar::Float(x) if !v.contains('.') && x.fract() == 0.0 && x.abs() < 9e15 => b.set_override(&key, x as i64),
                Scalar::Float(x) => b.set_override(&key, x),
                Scalar::Str(x) => b.set_override(&key, x),
            }
            .map_err(|e| fail(vec![format!("{k}: {e}")]))?;
        }
        let layered: Value = b.build().and_then(|c| c.try_deserialize::<Value>()).map_err(|e| fail(vec![e.to_string()]))?;
        let mut merged = serde_json::to_value(Settings::default()).map_err(|e| fail(vec![format!("defaults: {e}")]))?;
        deep_merge(&mut merged, layered);
        // Unknown keys, every one of them.
        let known = serde_json::to_value(Settings::default()).unwrap_or(Value::Null);
        unknown_keys(&merged, &known, "", &mut problems);
        let mut settings: Option<Settings> = None;
        if problems.is_empty() {
            match serde_json::from_value::<Settings>(merged.clone()) {
                Ok(s) => settings = Some(s),
                Err(_) => {
                    // Report each bad section rather than the first error only, naming the key
                    // (and the seed variable that set it, if one did).
                    if let Value::Object(m) = &merged {
                        for (section, v) in m {
                            let mut probe = serde_json::Map::new();
                            probe.insert(section.clone(), v.clone());
                            if let Err(e) = serde_path_to_error::deserialize::<_, Settings>(Value::Object(probe)) {
                                let path = e.path().to_string();
                                let via = seed
                                    .iter()
                                    .find(|(_, k)| *k == path)
                                    .filter(|(var, _)| src.env.contains_key(*var))
                                    .map(|(var, _)| format!(" (from {var})"))
                                    .unwrap_or_default();
                                problems.push(format!("{path}{via}: {}", e.inner()));
                            }
                        }
                    }
                }
            }
        }
        let Some(mut s) = settings else { return Err(fail(problems)) };
        s.llm.api_key = src.env.get("OPENAI_API_KEY").filter(|k| !k.is_empty()).map(Secret::new);
        s.webhooks.secret = src.env.get(WEBHOOK_SECRET_ENV).filter(|k| !k.is_empty()).map(Secret::new);
        problems.extend(s.problems());
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(fail(problems))
        }
    }

    /// Every semantic problem with these settings (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
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
        if self.queue.wait_time_secs > 20 {
            p.push("queue.wait_time_secs must be at most 20".into());
        }
        if !(1..=10).contains(&self.queue.receive_batch) {
            p.push("queue.receive_batch must be between 1 and 10".into());
        }
        if self.queue.visibility_timeout_secs < 2 || self.queue.visibility_timeout_secs > 43_200 {
            p.push("queue.visibility_timeout_secs must be between 2 and 43200".into());
        }
        if self.queue.max_receive_count == 0 {
            p.push("queue.max_receive_count must be positive".into());
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 16_384 {
            p.push("worker.concurrency must be between 1 and 16384".into());
        }
        if self.worker.budget_defer_secs > 900 {
            p.push("worker.budget_defer_secs must be at most 900 (the SQS delay limit)".into());
        }
        if self.worker.retry_max_secs > 43_200 {
            p.push("worker.retry_max_secs must be at most 43200".into());
        }
        if self.worker.job_timeout_secs == 0 {
            p.push("worker.job_timeout_secs must be positive".into());
        }
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
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!("admin.listen `{}` is not a socket address", self.admin.listen));
        }
        if self.storage.backend == BackendKind::Sqlite && matches!(stage, "preview" | "production") {
            p.push(format!("storage.backend `sqlite` cannot serve a fleet; `{stage}` must use `aws`"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            p.push(format!("telemetry.log_level: {e}"));
        }
        p
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

/// The built-in default at a dotted key path (`worker.concurrency`, `models.gpt-4o.family`), if any.
fn default_at(path: &str) -> Option<Value> {
    let parts: Vec<&str> = path.split('.').collect();
    let (mut cur, rest) = match parts.as_slice() {
        ["models", _id, rest @ ..] => (serde_json::to_value(ModelSettings::default()).ok()?, rest),
        all => (serde_json::to_value(Settings::default()).ok()?, all),
    };
    for p in rest {
        cur = cur.get(*p)?.clone();
    }
    Some(cur)
}

/// Lays `over` onto `base` the way `config` layers sources: tables merge key by key, anything else
/// (scalars, arrays) replaces.
fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn or_default(v: &str, f: impl FnOnce() -> String) -> String {
    if v.is_empty() {
        f()
    } else {
        v.to_string()
    }
}

fn valid_stage_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// If `name` mentions a known stage other than `stage` as a `-`/`_`/`.` separated word, that stage.
pub fn names_other_stage(name: &str, stage: &str) -> Option<&'static str> {
    let words: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    KNOWN_STAGES.iter().copied().find(|s| *s != stage && words.contains(s))
}

enum Scalar {
    Bool(bool),
    Float(f64),
    Str(String),
}

fn parse_scalar(v: &str) -> Scalar {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => return Scalar::Bool(true),
        "false" => return Scalar::Bool(false),
        _ => {}
    }
    match v.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => Scalar::Float(f),
        _ => Scalar::Str(v.to_string()),
    }
}

fn unknown_keys(v: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(m), Value::Object(k)) = (v, known) else { return };
    for (key, val) in m {
        let p = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        if path == "models" {
            // Model ids are free; their fields are checked against a default model.
            let proto = serde_json::to_value(ModelSettings::default()).unwrap_or(Value::Null);
            unknown_keys(val, &proto, &p, out);
            continue;
        }
        if path == "routing.fallbacks" {
            continue;
        }
        match k.get(key) {
            None => out.push(format!("unknown key `{p}`")),
            Some(kv) => unknown_keys(val, kv, &p, out),
        }
    }
}

/// A clash between two stages found by [`check_isolation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clash {
    /// What is shared (`queue`, `bucket`, ...).
    pub what: String,
    /// The shared name.
    pub name: String,
    /// The stages that share it (or the stage whose resource names another stage).
    pub stages: Vec<String>,
}

/// The seed's isolation check: no two stages share a queue, DLQ, table, bucket or metrics
/// namespace, and no stage's resource names another stage.
pub fn check_isolation(all: &[Settings]) -> Vec<Clash> {
    let mut clashes = Vec::new();
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for s in all {
        for (what, name) in s.resource_names() {
            if let Some(other) = names_other_stage(&name, &s.stage) {
                clashes.push(Clash { what: what.into(), name: name.clone(), stages: vec![s.stage.clone(), other.to_string()] });
            }
            // Queues and DLQs live in one namespace, tables in another.
            let ns = match what {
                "queue" | "dlq" => "sqs",
                "jobs table" | "budget table" => "dynamodb",
                "bucket" => "s3",
                _ => "metrics",
            };
            let key = format!("{ns}:{name}");
            if let Some((stage0, what0)) = seen.get(&key) {
                if stage0 != &s.stage || what0 != what {
                    clashes.push(Clash {
                        what: if what0 == what { what.into() } else { format!("{what0}/{what}") },
                        name: name.clone(),
                        stages: vec![stage0.clone(), s.stage.clone()],
                    });
                }
            } else {
                seen.insert(key, (s.stage.clone(), what.to_string()));
            }
        }
    }
    clashes
}

/// Each section's default is its part of [`Settings::default`], so one place holds every default.
macro_rules! section_default {
    ($($t:ty => $f:ident),* $(,)?) => {$(
        impl Default for $t {
            fn default() -> Self {
                Settings::default().$f
            }
        }
    )*};
}
section_default!(
    QueueSettings => queue,
    StorageSettings => storage,
    AwsSettings => aws,
    WorkerSettings => worker,
    LlmSettings => llm,
    RoutingSettings => routing,
    BudgetSettings => budget,
    RateLimitSettings => rate_limit,
    FetchSettings => fetch,
    CrawlSettings => crawl,
    EventSettings => events,
    WebhookSettings => webhooks,
    AdminSettings => admin,
    TelemetrySettings => telemetry,
);
