//! The built-in defaults: [`Settings::default`] holds every one, each section's default is its part.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

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
            routing: default_routing(),
            models: default_models(),
            budget: BudgetSettings { monthly_usd: 100.0, reservation_ttl_secs: 300, warn_fraction: 0.8 },
            rate_limit: RateLimitSettings { scope: RateScope::Fleet, window_secs: 0, fallback_replicas: 4 },
            fetch: default_fetch(),
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

/// The models the defaults route to, priced as in `config/default.toml`.
fn default_models() -> BTreeMap<String, ModelSettings> {
    let mut models = BTreeMap::new();
    models.insert("gpt-5".into(), model(ModelFamily::Gpt5, 1.25, 0.125, 10.0));
    models.insert("gpt-5-mini".into(), model(ModelFamily::Gpt5, 0.25, 0.025, 2.0));
    let mut nano = model(ModelFamily::Gpt5, 0.05, 0.005, 0.40);
    nano.reasoning_effort = Some("minimal".into()); // as in config/default.toml
    models.insert("gpt-5-nano".into(), nano);
    models.insert("gpt-4o".into(), model(ModelFamily::Gpt4, 2.50, 1.25, 10.0));
    models.insert("gpt-4.1".into(), model(ModelFamily::Gpt4, 2.00, 0.50, 8.0));
    models
}

/// The seed's routing: gpt-5 tiers by complexity, gpt-4o in production, one fallback each.
fn default_routing() -> RoutingSettings {
    let mut fallbacks = BTreeMap::new();
    fallbacks.insert("gpt-5".into(), vec!["gpt-5-mini".into()]);
    fallbacks.insert("gpt-5-mini".into(), vec!["gpt-5-nano".into()]);
    fallbacks.insert("gpt-4o".into(), vec!["gpt-4.1".into()]);
    RoutingSettings {
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
    }
}

/// Safe fetching: public networks only, bounded bodies, redirects and time.
fn default_fetch() -> FetchSettings {
    FetchSettings {
        allow_private_networks: false,
        max_body_bytes: 5 * 1024 * 1024,
        connect_timeout_ms: 5_000,
        total_timeout_secs: 30,
        max_redirects: 5,
        user_agent: "AtlasCodexBot/0.1 (+https://github.com/atlas-codex)".into(),
        allowed_content_types: vec!["text/html".into(), "application/xhtml+xml".into(), "text/plain".into(), "application/json".into()],
        allow_cookies: false,
    }
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
