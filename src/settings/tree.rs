//! The settings tree: one struct per section, every field with a default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
