//! Configuration: the layering order, the shipped stages, every validation rule, the cross-stage
//! isolation check, and the secret. The process environment is never touched: every test builds
//! its own `Sources { env, .. }` and, where it needs files, its own temporary config directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use atlas_codex::settings::{
    check_isolation, names_other_stage, BackendKind, ConfigError, LogFormat, OnBudgetExhausted, ProviderKind, Secret, Settings, Sources,
    Strategy, KNOWN_STAGES,
};

// ---------------------------------------------------------------------------------------------
// helpers

fn shipped_config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn shipped(stage: &str, vars: &[(&str, &str)]) -> Sources {
    Sources { stage: Some(stage.into()), config_dir: shipped_config_dir(), extra_file: None, env: env(vars) }
}

fn load_shipped(stage: &str) -> Settings {
    Settings::load(&shipped(stage, &[])).unwrap_or_else(|e| panic!("{stage}: {e}"))
}

/// A temporary config directory with the given files.
struct Dir(tempfile::TempDir);

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, body) in files {
            std::fs::write(d.path().join(name), body).expect("write config");
        }
        Dir(d)
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn sources(&self, stage: &str, vars: &[(&str, &str)]) -> Sources {
        Sources { stage: Some(stage.into()), config_dir: self.path().to_path_buf(), extra_file: None, env: env(vars) }
    }
}

fn load_err(src: &Sources) -> ConfigError {
    match Settings::load(src) {
        Ok(s) => panic!("expected a config error, loaded {s:?}"),
        Err(e) => e,
    }
}

/// Asserts that some problem contains every one of `needles`.
fn has(problems: &[String], needles: &[&str]) {
    assert!(
        problems.iter().any(|p| needles.iter().all(|n| p.contains(n))),
        "no problem mentions all of {needles:?}; problems: {problems:#?}"
    );
}

/// A valid settings value for `stage` that the tests then break one rule at a time.
fn valid(stage: &str) -> Settings {
    let s = load_shipped(stage);
    assert!(s.problems().is_empty(), "{stage}: {:?}", s.problems());
    s
}

// ---------------------------------------------------------------------------------------------
// the shipped stages

#[test]
fn local_stage_is_embedded_and_may_reach_localhost() {
    let s = load_shipped("local");
    assert_eq!(s.stage, "local");
    assert_eq!(s.storage.backend, BackendKind::Sqlite);
    assert_eq!(s.storage.data_dir, PathBuf::from("./atlas-data"));
    assert!(s.fetch.allow_private_networks);
    assert_eq!(s.telemetry.log_format, LogFormat::Pretty);
    assert_eq!(s.admin.listen, "127.0.0.1:10090");
    assert_eq!(s.budget.monthly_usd, 50.0);
    assert_eq!(s.queue.wait_time_secs, 1);
    assert_eq!(s.queue_name(), "atlas-codex-queue-local");
}

#[test]
fn preview_stage_routes_gpt5_with_a_500_usd_budget() {
    let s = load_shipped("preview");
    assert!(s.routing.gpt5_enabled && !s.routing.force_gpt4);
    assert_eq!(s.routing.strategy, Strategy::Gpt5Preview);
    assert_eq!(s.effective_strategy(), Strategy::Gpt5Preview);
    assert_eq!(s.budget.monthly_usd, 500.0);
    assert_eq!(s.budget_limit_micros(), 500_000_000);
    assert_eq!(s.storage.backend, BackendKind::Aws);
    assert!(!s.fetch.allow_private_networks);
    assert_eq!(s.telemetry.log_format, LogFormat::Json);
    assert!(s.gpt5_allowed() && s.model_allowed("gpt-5") && s.model_allowed("gpt-4o"));
    let reach = s.reachable_models();
    for m in ["gpt-5-nano", "gpt-5-mini", "gpt-5"] {
        assert!(reach.contains(&m.to_string()), "{m} reachable in preview: {reach:?}");
    }
}

#[test]
fn production_stage_is_gpt4_only_with_a_2000_usd_budget() {
    let s = load_shipped("production");
    assert!(!s.routing.gpt5_enabled && s.routing.force_gpt4);
    assert_eq!(s.routing.strategy, Strategy::Gpt4Stable);
    assert_eq!(s.effective_strategy(), Strategy::Gpt4Stable);
    assert_eq!(s.budget.monthly_usd, 2000.0);
    assert_eq!(s.storage.backend, BackendKind::Aws);
    assert!(!s.fetch.allow_private_networks);
    assert_eq!(s.worker.concurrency, 128);
    assert!(!s.gpt5_allowed());
    assert!(!s.model_allowed("gpt-5") && !s.model_allowed("gpt-5-nano"));
    assert!(s.model_allowed("gpt-4o") && s.model_allowed("gpt-4.1"));
    assert!(!s.model_allowed("no-such-model"));
    let reach = s.reachable_models();
    assert_eq!(reach, vec!["gpt-4o".to_string(), "gpt-4.1".to_string()]);
    for m in &reach {
        assert_eq!(s.models[m].family, "gpt4");
    }
}

#[test]
fn every_shipped_stage_derives_its_own_resource_names() {
    for stage in KNOWN_STAGES {
        let s = load_shipped(stage);
        assert_eq!(s.stage, *stage);
        assert_eq!(
            s.resource_names(),
            vec![
                ("queue", format!("atlas-codex-queue-{stage}")),
                ("dlq", format!("atlas-codex-dlq-{stage}")),
                ("jobs table", format!("atlas-codex-jobs-{stage}")),
                ("budget table", format!("atlas-codex-budget-{stage}")),
                ("bucket", format!("atlas-codex-artifacts-{stage}")),
                ("event topic", format!("atlas-codex-events-{stage}")),
                ("metrics namespace", stage.to_string()),
            ]
        );
        // The defaults the file promises.
        assert_eq!(s.queue.max_receive_count, 5);
        assert_eq!(s.worker.on_budget_exhausted, OnBudgetExhausted::Defer);
        assert_eq!(s.llm.provider, ProviderKind::Auto);
        assert_eq!(s.models.len(), 5);
        assert!(s.llm.api_key.is_none());
    }
}

#[test]
fn shipped_default_toml_matches_the_builtin_defaults() {
    // default.toml documents every default; it must not drift from the code's.
    let shipped_default = std::fs::read_to_string(shipped_config_dir().join("default.toml")).expect("read");
    let d = Dir::new(&[("default.toml", &shipped_default), ("qa.toml", "")]);
    let file = Settings::load(&d.sources("qa", &[])).expect("default.toml loads");
    let builtin = Settings { stage: "qa".into(), ..Settings::default() };
    let mut file_adjusted = file.clone();
    // default.toml deliberately differs from the built-ins in the log format only (json for fleets).
    assert_eq!(file.telemetry.log_format, LogFormat::Json);
    file_adjusted.telemetry.log_format = builtin.telemetry.log_format;
    assert_eq!(file_adjusted, builtin);
}

// ---------------------------------------------------------------------------------------------
// layering

const BUDGET_LAYERS: [(&str, f64); 6] = [
    ("built-in", 100.0),
    ("default.toml", 201.0),
    ("qa.toml", 302.0),
    ("extra file", 403.0),
    ("MONTHLY_BUDGET", 504.0),
    ("ATLAS__BUDGET__MONTHLY_USD", 605.0),
];

#[test]
fn each_layer_overrides_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = dir.path().join("extra.toml");
    let mut src = Sources { stage: Some("qa".into()), config_dir: dir.path().to_path_buf(), extra_file: None, env: BTreeMap::new() };
    // An unknown stage needs its own file: start with an empty one (so only the built-ins apply).
    std::fs::write(dir.path().join("qa.toml"), "").expect("write");
    let budget = |src: &Sources| Settings::load(src).unwrap_or_else(|e| panic!("{e}")).budget.monthly_usd;
    assert_eq!(budget(&src), BUDGET_LAYERS[0].1, "built-in default");

    std::fs::write(dir.path().join("default.toml"), "[budget]\nmonthly_usd = 201.0\n[worker]\nconcurrency = 11\n").expect("write");
    assert_eq!(budget(&src), BUDGET_LAYERS[1].1, "default.toml over built-ins");

    std::fs::write(dir.path().join("qa.toml"), "[budget]\nmonthly_usd = 302.0\n").expect("write");
    assert_eq!(budget(&src), BUDGET_LAYERS[2].1, "stage file over default.toml");

    std::fs::write(&extra, "[budget]\nmonthly_usd = 403.0\n").expect("write");
    src.extra_file = Some(extra.clone());
    assert_eq!(budget(&src), BUDGET_LAYERS[3].1, "--config over the stage file");

    src.env.insert("MONTHLY_BUDGET".into(), "504".into());
    assert_eq!(budget(&src), BUDGET_LAYERS[4].1, "seed variable over --config");

    src.env.insert("ATLAS__BUDGET__MONTHLY_USD".into(), "605.0".into());
    let s = Settings::load(&src).expect("loads");
    assert_eq!(s.budget.monthly_usd, BUDGET_LAYERS[5].1, "ATLAS__ over the seed variable");
    // Layers merge key by key: what a later layer does not set comes from an earlier one.
    assert_eq!(s.worker.concurrency, 11, "from default.toml");
    assert_eq!(s.queue.receive_batch, 10, "from the built-ins");
}

#[test]
fn sections_merge_key_by_key_across_files() {
    let d = Dir::new(&[("default.toml", "[queue]\nwait_time_secs = 7\nreceive_batch = 3\n"), ("qa.toml", "[queue]\nreceive_batch = 4\n")]);
    let s = Settings::load(&d.sources("qa", &[])).expect("loads");
    assert_eq!((s.queue.wait_time_secs, s.queue.receive_batch), (7, 4));
    assert_eq!(s.queue.visibility_timeout_secs, 120, "untouched key keeps its built-in default");
}

#[test]
fn stage_comes_from_sources_not_from_files() {
    let d = Dir::new(&[("default.toml", "stage = \"production\"\n"), ("qa.toml", "stage = \"preview\"\n")]);
    let s = Settings::load(&d.sources("qa", &[])).expect("loads");
    assert_eq!(s.stage, "qa");
    assert_eq!(s.queue_name(), "atlas-codex-queue-qa");
    // No stage at all means local.
    let s = Settings::load(&Sources { stage: None, config_dir: d.path().to_path_buf(), ..Sources::default() }).expect("loads");
    assert_eq!(s.stage, "local");
}

#[test]
fn atlas_stage_cannot_change_the_stage_behind_the_files_back() {
    // The stage decides which file is loaded; an ATLAS__STAGE override would leave preview's file
    // with production's resource names and checks.
    let e = load_err(&shipped("preview", &[("ATLAS__STAGE", "production")]));
    has(&e.problems, &["ATLAS__STAGE"]);
}

#[test]
fn seed_variables_map_to_their_keys() {
    let s = Settings::load(&shipped(
        "preview",
        &[
            ("GPT5_ENABLED", "false"),
            ("FORCE_GPT4", "TRUE"),
            ("DEFAULT_MODEL_STRATEGY", "gpt4_stable"),
            ("MONTHLY_BUDGET", "1234.5"),
            ("OPENAI_BASE_URL", "http://127.0.0.1:8089/v1"),
        ],
    ))
    .expect("loads");
    assert!(!s.routing.gpt5_enabled && s.routing.force_gpt4);
    assert_eq!(s.routing.strategy, Strategy::Gpt4Stable);
    assert_eq!(s.budget.monthly_usd, 1234.5);
    assert_eq!(s.llm.base_url, "http://127.0.0.1:8089/v1");
    assert_eq!(s.effective_strategy(), Strategy::Gpt4Stable);
}

#[test]
fn force_gpt4_alone_turns_preview_into_gpt4_stable() {
    // FORCE_GPT4 wins over the strategy; GPT5_ENABLED must be turned off with it to be valid.
    let s = Settings::load(&shipped("preview", &[("FORCE_GPT4", "true"), ("GPT5_ENABLED", "false")])).expect("loads");
    assert_eq!(s.routing.strategy, Strategy::Gpt5Preview, "the file's strategy is kept");
    assert_eq!(s.effective_strategy(), Strategy::Gpt4Stable, "but not in force");
    assert!(s.reachable_models().iter().all(|m| s.models[m].family == "gpt4"));
}

#[test]
fn atlas_env_overrides_reach_nested_keys_and_models() {
    let s = Settings::load(&shipped(
        "local",
        &[
            ("ATLAS__WORKER__CONCURRENCY", "7"),
            ("ATLAS__ADMIN__LISTEN", "127.0.0.1:9999"),
            ("ATLAS__FETCH__ALLOW_PRIVATE_NETWORKS", "false"),
            ("ATLAS__ROUTING__PREFER_CHEAPER_ABOVE", "0.5"),
            ("ATLAS__MODELS__GPT-4O__RPM", "42"),
            ("ATLAS__LLM__PROVIDER", "simulated"),
            ("ATLAS__TELEMETRY__LOG_LEVEL", "debug"),
        ],
    ))
    .expect("loads");
    assert_eq!(s.worker.concurrency, 7);
    assert_eq!(s.admin.listen, "127.0.0.1:9999");
    assert!(!s.fetch.allow_private_networks);
    assert_eq!(s.routing.prefer_cheaper_above, 0.5);
    assert_eq!(s.models["gpt-4o"].rpm, 42);
    assert_eq!(s.models["gpt-4o"].tpm, 2_000_000, "other fields of the model are kept");
    assert_eq!(s.llm.provider, ProviderKind::Simulated);
    assert_eq!(s.telemetry.log_level, "debug");
}

#[test]
fn atlas_env_numbers_can_set_string_keys() {
    // A value that looks like a number still sets a string key.
    let s = Settings::load(&shipped("local", &[("ATLAS__TELEMETRY__METRICS_NAMESPACE", "2024"), ("ATLAS__QUEUE__NAME", "q-1")]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.telemetry.metrics_namespace, "2024");
    assert_eq!(s.queue_name(), "q-1");
}

#[test]
fn api_key_comes_from_the_environment_only() {
    let s = Settings::load(&shipped("local", &[("OPENAI_API_KEY", "sk-test-abc")])).expect("loads");
    assert_eq!(s.llm.api_key.as_ref().map(Secret::expose), Some("sk-test-abc"));
    let s = Settings::load(&shipped("local", &[("OPENAI_API_KEY", "")])).expect("loads");
    assert!(s.llm.api_key.is_none(), "an empty key is no key");
    // Not from a file: `api_key` is not a known key there.
    let d = Dir::new(&[("qa.toml", "[llm]\napi_key = \"sk-from-file\"\n")]);
    let e = load_err(&d.sources("qa", &[]));
    has(&e.problems, &["unknown key `llm.api_key`"]);
    assert!(!e.to_string().contains("sk-from-file"));
}

// ---------------------------------------------------------------------------------------------
// the secret

#[test]
fn the_secret_never_appears_in_debug_or_toml() {
    const KEY: &str = "sk-live-DO-NOT-PRINT-1234567890";
    let s = Settings::load(&shipped("preview", &[("OPENAI_API_KEY", KEY)])).expect("loads");
    assert_eq!(s.llm.api_key.as_ref().map(Secret::expose), Some(KEY));
    let debug = format!("{s:?}");
    assert!(!debug.contains(KEY) && debug.contains("Secret(***)"), "{debug}");
    assert!(!format!("{:#?}", s.llm).contains(KEY));
    assert_eq!(format!("{:?}", Secret::new(KEY)), "Secret(***)");
    let toml = s.to_toml();
    assert!(!toml.contains(KEY) && !toml.contains("api_key"), "{toml}");
    let json = serde_json::to_string(&s).expect("json");
    assert!(!json.contains(KEY));
    // A validation error of a config with a key does not print it either.
    let e = load_err(&shipped("preview", &[("OPENAI_API_KEY", KEY), ("ATLAS__QUEUE__RECEIVE_BATCH", "0")]));
    assert!(!e.to_string().contains(KEY) && !format!("{e:?}").contains(KEY));
}

#[test]
fn to_toml_is_a_complete_config_file() {
    // What `validate --output` prints loads back to the same settings (secret aside).
    for stage in KNOWN_STAGES {
        let s = load_shipped(stage);
        let d = Dir::new(&[("dump.toml", &s.to_toml())]);
        let mut src = d.sources(stage, &[]);
        src.extra_file = Some(d.path().join("dump.toml"));
        let again = Settings::load(&src).unwrap_or_else(|e| panic!("{stage}: {e}"));
        assert_eq!(again, s, "{stage}");
    }
}

// ---------------------------------------------------------------------------------------------
// load-time validation

#[test]
fn unknown_keys_are_all_reported() {
    let d = Dir::new(&[(
        "qa.toml",
        "colour = 1\n[queue]\nwait_secs = 5\n[worker]\nconcurency = 3\n[models.\"gpt-4o\"]\nprice = 1.0\n[fetch.extra]\nx = 1\n",
    )]);
    let e = load_err(&d.sources("qa", &[("ATLAS__LLM__TIMEOUT", "5"), ("ATLAS__NOPE", "1")]));
    assert_eq!(e.stage, "qa");
    for k in ["colour", "queue.wait_secs", "worker.concurency", "models.gpt-4o.price", "fetch.extra", "llm.timeout", "nope"] {
        has(&e.problems, &[&format!("unknown key `{k}`")]);
    }
    assert_eq!(e.problems.len(), 7, "{:#?}", e.problems);
    // The Display lists them all, one per line.
    let text = e.to_string();
    assert!(text.starts_with("invalid configuration for stage `qa`"), "{text}");
    assert_eq!(text.matches("\n  - ").count(), 7, "{text}");
}

#[test]
fn a_new_model_id_is_allowed_with_known_fields() {
    let d = Dir::new(&[("qa.toml", "[models.\"my-model\"]\nfamily = \"gpt4\"\ninput_usd_per_mtok = 1.0\n")]);
    let s = Settings::load(&d.sources("qa", &[])).expect("new model ids are free");
    assert_eq!(s.models["my-model"].input_usd_per_mtok, 1.0);
    assert_eq!(s.models["my-model"].max_output_tokens, 4096, "unset model fields take the model default");
    // And fallbacks may name any model id as a key (checked semantically, not as unknown keys).
    let d = Dir::new(&[("qa.toml", "[routing.fallbacks]\n\"my-model\" = [\"gpt-4o\"]\n[models.\"my-model\"]\nfamily = \"gpt4\"\n")]);
    let s = Settings::load(&d.sources("qa", &[])).expect("loads");
    assert_eq!(s.routing.fallbacks["my-model"], vec!["gpt-4o".to_string()]);
}

#[test]
fn bad_types_are_reported_per_section() {
    let d = Dir::new(&[(
        "qa.toml",
        "[queue]\nwait_time_secs = \"soon\"\n[routing]\ngpt5_enabled = \"maybe\"\n[storage]\nbackend = \"postgres\"\n",
    )]);
    let e = load_err(&d.sources("qa", &[]));
    has(&e.problems, &["queue"]);
    has(&e.problems, &["routing"]);
    has(&e.problems, &["storage", "postgres"]);
    assert!(e.problems.len() >= 3, "{:#?}", e.problems);
}

#[test]
fn bad_types_from_the_environment() {
    for (var, val, section) in [
        ("GPT5_ENABLED", "maybe", "routing"),
        ("MONTHLY_BUDGET", "lots", "budget"),
        ("DEFAULT_MODEL_STRATEGY", "cheapest", "routing"),
        ("ATLAS__WORKER__CONCURRENCY", "many", "worker"),
        ("ATLAS__WORKER__CONCURRENCY", "-3", "worker"),
        ("ATLAS__LLM__PROVIDER", "anthropic", "llm"),
    ] {
        let e = load_err(&shipped("local", &[(var, val)]));
        has(&e.problems, &[section]);
        assert!(!e.problems.is_empty(), "{var}={val}");
    }
}

#[test]
fn invalid_stage_names_are_refused() {
    for bad in ["", "Prod", "pre view", "../etc", "a".repeat(33).as_str(), "stage_1"] {
        let e = load_err(&shipped(bad, &[]));
        has(&e.problems, &["must match [a-z0-9-]{1,32}"]);
    }
}

#[test]
fn an_unknown_stage_needs_its_own_file() {
    let e = load_err(&shipped("staging", &[]));
    has(&e.problems, &["no config file for stage `staging`"]);
}

#[test]
fn a_missing_extra_file_is_reported() {
    let mut src = shipped("local", &[]);
    src.extra_file = Some(PathBuf::from("/nonexistent/atlas/extra.toml"));
    let e = load_err(&src);
    has(&e.problems, &["--config file", "does not exist"]);
}

#[test]
fn a_malformed_file_is_reported() {
    let d = Dir::new(&[("qa.toml", "[queue\nname = ")]);
    let e = load_err(&d.sources("qa", &[]));
    assert_eq!(e.problems.len(), 1, "{:#?}", e.problems);
    assert!(e.problems[0].contains("qa.toml"), "{:#?}", e.problems);
}

#[test]
fn load_reports_semantic_problems_too() {
    // Both switches on through the seed variables, on top of production's FORCE_GPT4.
    let e = load_err(&shipped("production", &[("GPT5_ENABLED", "true")]));
    has(&e.problems, &["GPT5_ENABLED and FORCE_GPT4 are both true"]);
    // A fleet stage refuses private networks and the embedded backend.
    let e = load_err(&shipped("preview", &[("ATLAS__FETCH__ALLOW_PRIVATE_NETWORKS", "true"), ("ATLAS__STORAGE__BACKEND", "sqlite")]));
    has(&e.problems, &["fetch.allow_private_networks must be false in `preview`"]);
    has(&e.problems, &["storage.backend `sqlite`", "`preview` must use `aws`"]);
    assert_eq!(e.problems.len(), 2, "{:#?}", e.problems);
}

// ---------------------------------------------------------------------------------------------
// every rule of Settings::problems

#[test]
fn gpt5_enabled_and_force_gpt4_together() {
    let mut s = valid("preview");
    s.routing.force_gpt4 = true;
    has(&s.problems(), &["GPT5_ENABLED and FORCE_GPT4 are both true"]);
}

#[test]
fn gpt5_model_reachable_when_forbidden() {
    // Production's model is gpt-5 class.
    let mut s = valid("production");
    s.routing.production_model = "gpt-5".into();
    has(&s.problems(), &["model `gpt-5` is gpt-5 class but reachable", "`production`"]);
    // A fallback chain leads to a gpt-5 model.
    let mut s = valid("production");
    s.routing.fallbacks.insert("gpt-4.1".into(), vec!["gpt-5-mini".into()]);
    has(&s.problems(), &["model `gpt-5-mini` is gpt-5 class but reachable"]);
    // GPT5_ENABLED off without FORCE_GPT4: the gpt-5 tiers are not reachable, so this is valid.
    let mut s = valid("preview");
    s.routing.gpt5_enabled = false;
    assert!(s.problems().is_empty(), "{:?}", s.problems());
    assert_eq!(s.effective_strategy(), Strategy::Gpt4Stable);
}

#[test]
fn routed_models_must_be_configured() {
    let mut s = valid("preview");
    s.routing.mini_model = "gpt-9".into();
    has(&s.problems(), &["model `gpt-9` is routed to but has no [models.\"gpt-9\"] entry"]);
    let mut s = valid("production");
    s.models.remove("gpt-4.1");
    let p = s.problems();
    has(&p, &["model `gpt-4.1` is routed to"]);
    has(&p, &["routing.fallbacks.gpt-4o names unknown model `gpt-4.1`"]);
}

#[test]
fn fallbacks_must_name_known_models() {
    let mut s = valid("preview");
    s.routing.fallbacks.insert("gpt-5-nano".into(), vec!["gpt-3".into()]);
    has(&s.problems(), &["routing.fallbacks.gpt-5-nano names unknown model `gpt-3`"]);
}

#[test]
fn resource_names_must_not_name_another_stage() {
    type Break = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Break)> = vec![
        ("queue", Box::new(|s| s.queue.name = "atlas-codex-queue-production".into())),
        ("dlq", Box::new(|s| s.queue.dlq_name = "dlq.production".into())),
        ("jobs table", Box::new(|s| s.storage.jobs_table = "jobs_production".into())),
        ("budget table", Box::new(|s| s.storage.budget_table = "production-budget".into())),
        ("bucket", Box::new(|s| s.storage.bucket = "atlas-production-artifacts".into())),
        ("metrics namespace", Box::new(|s| s.telemetry.metrics_namespace = "production".into())),
    ];
    for (what, set) in cases {
        let mut s = valid("preview");
        set(&mut s);
        has(&s.problems(), &[what, "names stage `production`, not `preview`"]);
    }
    // A word that merely contains a stage name is fine; the own stage is fine.
    let mut s = valid("preview");
    s.queue.name = "atlas-codex-queue-preview-localized".into();
    s.storage.bucket = "my-preview-bucket".into();
    assert!(s.problems().is_empty(), "{:?}", s.problems());
    assert_eq!(names_other_stage("a-productions-b", "preview"), None);
    assert_eq!(names_other_stage("a.local", "preview"), Some("local"));
}

#[test]
fn empty_resource_names_are_refused() {
    let mut s = valid("local");
    s.stage = String::new();
    has(&s.problems(), &["metrics namespace is empty"]);
}

#[test]
fn private_networks_only_outside_fleets() {
    for stage in ["preview", "production"] {
        let mut s = valid(stage);
        s.fetch.allow_private_networks = true;
        has(&s.problems(), &[&format!("fetch.allow_private_networks must be false in `{stage}`")]);
    }
    let mut s = valid("local");
    s.fetch.allow_private_networks = true;
    assert!(s.problems().is_empty());
}

#[test]
fn sqlite_cannot_serve_a_fleet() {
    for stage in ["preview", "production"] {
        let mut s = valid(stage);
        s.storage.backend = BackendKind::Sqlite;
        has(&s.problems(), &["storage.backend `sqlite` cannot serve a fleet", stage]);
    }
}

#[test]
fn model_entries_are_checked() {
    let mut s = valid("local");
    let m = s.models.get_mut("gpt-4o").expect("gpt-4o");
    m.family = "claude".into();
    m.input_usd_per_mtok = -1.0;
    m.cached_input_usd_per_mtok = f64::NAN;
    m.output_usd_per_mtok = f64::INFINITY;
    m.max_output_tokens = 0;
    m.temperature = Some(2.5);
    let n = s.models.get_mut("gpt-5").expect("gpt-5");
    n.reasoning_effort = Some("extreme".into());
    n.verbosity = Some("chatty".into());
    let p = s.problems();
    for needle in [
        "models.gpt-4o.family must be `gpt5` or `gpt4`",
        "models.gpt-4o.input_usd_per_mtok must be a non-negative number",
        "models.gpt-4o.cached_input_usd_per_mtok must be a non-negative number",
        "models.gpt-4o.output_usd_per_mtok must be a non-negative number",
        "models.gpt-4o.max_output_tokens must be positive",
        "models.gpt-4o.temperature must be within 0..=2",
        "models.gpt-5.reasoning_effort must be minimal|low|medium|high",
        "models.gpt-5.verbosity must be low|medium|high",
    ] {
        has(&p, &[needle]);
    }
    assert_eq!(p.len(), 8, "several problems listed at once: {p:#?}");
}

#[test]
fn routing_thresholds_and_fractions() {
    let mut s = valid("preview");
    s.routing.mini_threshold = 70;
    s.routing.full_threshold = 60;
    s.routing.prefer_cheaper_above = 1.5;
    let p = s.problems();
    has(&p, &["routing.mini_threshold must not exceed routing.full_threshold"]);
    has(&p, &["routing.prefer_cheaper_above must be within 0..=1"]);
    s.routing.prefer_cheaper_above = f64::NAN;
    has(&s.problems(), &["routing.prefer_cheaper_above"]);
}

#[test]
fn budget_rules() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let mut s = valid("preview");
        s.budget.monthly_usd = bad;
        has(&s.problems(), &["budget.monthly_usd (MONTHLY_BUDGET) must be a non-negative number"]);
    }
    let mut s = valid("preview");
    s.budget.monthly_usd = 0.0;
    assert!(s.problems().is_empty(), "a zero budget is valid (spends nothing)");
    s.budget.warn_fraction = -0.1;
    s.budget.reservation_ttl_secs = 0;
    let p = s.problems();
    has(&p, &["budget.warn_fraction must be within 0..=1"]);
    has(&p, &["budget.reservation_ttl_secs must be positive"]);
    // From the environment too.
    let e = load_err(&shipped("preview", &[("MONTHLY_BUDGET", "-5")]));
    has(&e.problems, &["MONTHLY_BUDGET"]);
}

#[test]
fn queue_rules() {
    let mut s = valid("preview");
    s.queue.wait_time_secs = 21;
    s.queue.receive_batch = 0;
    s.queue.visibility_timeout_secs = 1;
    s.queue.max_receive_count = 0;
    let p = s.problems();
    has(&p, &["queue.wait_time_secs must be at most 20"]);
    has(&p, &["queue.receive_batch must be between 1 and 10"]);
    has(&p, &["queue.visibility_timeout_secs must be between 2 and 43200"]);
    has(&p, &["queue.max_receive_count must be positive"]);
    assert_eq!(p.len(), 4, "{p:#?}");
    let mut s = valid("preview");
    s.queue.receive_batch = 11;
    s.queue.visibility_timeout_secs = 43_201;
    let p = s.problems();
    has(&p, &["queue.receive_batch"]);
    has(&p, &["queue.visibility_timeout_secs"]);
    // The boundaries themselves are fine.
    let mut s = valid("preview");
    s.queue.wait_time_secs = 20;
    s.queue.receive_batch = 10;
    s.queue.visibility_timeout_secs = 43_200;
    assert!(s.problems().is_empty(), "{:?}", s.problems());
    s.queue.receive_batch = 1;
    s.queue.visibility_timeout_secs = 2;
    s.queue.wait_time_secs = 0;
    assert!(s.problems().is_empty(), "{:?}", s.problems());
}

#[test]
fn worker_rules() {
    let mut s = valid("production");
    s.worker.concurrency = 0;
    s.worker.budget_defer_secs = 901;
    s.worker.retry_max_secs = 43_201;
    s.worker.job_timeout_secs = 0;
    let p = s.problems();
    has(&p, &["worker.concurrency must be between 1 and 16384"]);
    has(&p, &["worker.budget_defer_secs must be at most 900"]);
    has(&p, &["worker.retry_max_secs must be at most 43200"]);
    has(&p, &["worker.job_timeout_secs must be positive"]);
    let mut s = valid("production");
    s.worker.concurrency = 16_385;
    has(&s.problems(), &["worker.concurrency"]);
    s.worker.concurrency = 16_384;
    s.worker.budget_defer_secs = 900;
    assert!(s.problems().is_empty(), "{:?}", s.problems());
}

#[test]
fn fetch_rules() {
    let mut s = valid("preview");
    s.fetch.max_redirects = 11;
    s.fetch.max_body_bytes = 0;
    let p = s.problems();
    has(&p, &["fetch.max_redirects must be at most 10"]);
    has(&p, &["fetch.max_body_bytes must be positive"]);
}

#[test]
fn llm_rules() {
    for bad in ["", "api.openai.com/v1", "ftp://example.com/", "not a url"] {
        let mut s = valid("preview");
        s.llm.base_url = bad.into();
        has(&s.problems(), &["llm.base_url", "is not an http(s) URL"]);
    }
    let mut s = valid("preview");
    s.llm.provider = ProviderKind::Openai;
    has(&s.problems(), &["llm.provider is `openai` but OPENAI_API_KEY is not set"]);
    s.llm.api_key = Some(Secret::new("sk-x"));
    assert!(s.problems().is_empty());
    // Through load: provider openai without the key in the environment.
    let e = load_err(&shipped("preview", &[("ATLAS__LLM__PROVIDER", "openai")]));
    has(&e.problems, &["OPENAI_API_KEY is not set"]);
    assert!(Settings::load(&shipped("preview", &[("ATLAS__LLM__PROVIDER", "openai"), ("OPENAI_API_KEY", "sk-x")])).is_ok());
}

#[test]
fn admin_and_telemetry_rules() {
    let mut s = valid("preview");
    s.admin.listen = "localhost:10090".into();
    s.telemetry.log_level = "info,[".into();
    let p = s.problems();
    has(&p, &["admin.listen `localhost:10090` is not a socket address"]);
    has(&p, &["telemetry.log_level"]);
    s.admin.listen = String::new();
    s.telemetry.log_level = "warn,atlas_codex=debug".into();
    assert!(s.problems().is_empty(), "an empty listen address disables the server: {:?}", s.problems());
}

#[test]
fn many_problems_are_listed_at_once() {
    let e = load_err(&shipped(
        "production",
        &[
            ("GPT5_ENABLED", "true"),
            ("ATLAS__QUEUE__RECEIVE_BATCH", "0"),
            ("ATLAS__WORKER__CONCURRENCY", "0"),
            ("ATLAS__FETCH__ALLOW_PRIVATE_NETWORKS", "true"),
            ("ATLAS__STORAGE__BACKEND", "sqlite"),
            ("ATLAS__STORAGE__BUCKET", "atlas-codex-artifacts-preview"),
        ],
    ));
    assert_eq!(e.stage, "production");
    for needle in [
        "GPT5_ENABLED and FORCE_GPT4",
        "queue.receive_batch",
        "worker.concurrency",
        "fetch.allow_private_networks",
        "storage.backend `sqlite`",
        "bucket `atlas-codex-artifacts-preview` names stage `preview`",
    ] {
        has(&e.problems, &[needle]);
    }
    assert!(e.problems.len() >= 6, "{:#?}", e.problems);
}

// ---------------------------------------------------------------------------------------------
// isolation between stages (validate --all-stages)

#[test]
fn shipped_stages_are_isolated() {
    let all: Vec<Settings> = KNOWN_STAGES.iter().map(|s| load_shipped(s)).collect();
    assert_eq!(check_isolation(&all), vec![]);
}

#[test]
fn isolation_finds_each_shared_resource() {
    type Set = Box<dyn Fn(&mut Settings, &str)>;
    let cases: Vec<(&str, Set)> = vec![
        ("queue", Box::new(|s, n| s.queue.name = n.into())),
        ("dlq", Box::new(|s, n| s.queue.dlq_name = n.into())),
        ("jobs table", Box::new(|s, n| s.storage.jobs_table = n.into())),
        ("budget table", Box::new(|s, n| s.storage.budget_table = n.into())),
        ("bucket", Box::new(|s, n| s.storage.bucket = n.into())),
        ("metrics namespace", Box::new(|s, n| s.telemetry.metrics_namespace = n.into())),
    ];
    for (what, set) in cases {
        let mut a = valid("preview");
        let mut b = valid("production");
        set(&mut a, "atlas-shared");
        set(&mut b, "atlas-shared");
        let clashes = check_isolation(&[a, b]);
        assert_eq!(clashes.len(), 1, "{what}: {clashes:?}");
        assert_eq!(clashes[0].what, what);
        assert_eq!(clashes[0].name, "atlas-shared");
        assert_eq!(clashes[0].stages, vec!["preview".to_string(), "production".to_string()]);
    }
}

#[test]
fn isolation_finds_a_queue_used_as_another_stages_dlq() {
    let a = valid("preview");
    let mut b = valid("production");
    b.queue.dlq_name = a.queue_name();
    let clashes = check_isolation(&[a, b]);
    // Named after preview and shared with preview's queue.
    assert!(clashes.iter().any(|c| c.what == "queue/dlq" && c.name == "atlas-codex-queue-preview"), "{clashes:?}");
    assert!(clashes.iter().any(|c| c.what == "dlq" && c.stages == vec!["production".to_string(), "preview".to_string()]), "{clashes:?}");
}

#[test]
fn isolation_finds_a_resource_naming_another_stage() {
    let mut a = valid("preview");
    a.storage.jobs_table = "atlas-codex-jobs-local".into();
    let clashes = check_isolation(&[a, valid("production")]);
    assert_eq!(clashes.len(), 1, "{clashes:?}");
    assert_eq!(clashes[0].what, "jobs table");
    assert_eq!(clashes[0].stages, vec!["preview".to_string(), "local".to_string()]);
}

#[test]
fn isolation_finds_a_clash_within_one_stage() {
    let mut a = valid("preview");
    a.queue.dlq_name = a.queue_name();
    let clashes = check_isolation(&[a]);
    assert_eq!(clashes.len(), 1, "{clashes:?}");
    assert_eq!(clashes[0].what, "queue/dlq");
}

#[test]
fn same_name_in_different_services_is_not_a_clash() {
    // A queue and a table may share a name: they live in different namespaces.
    let mut a = valid("preview");
    let mut b = valid("production");
    a.queue.name = "atlas-x".into();
    b.storage.jobs_table = "atlas-x".into();
    assert_eq!(check_isolation(&[a, b]), vec![]);
}

#[test]
fn settings_no_worker_could_succeed_with_are_refused_at_start_naming_the_key() {
    for (var, value, key) in [
        ("ATLAS__LLM__MAX_CALLS_PER_JOB", "0", "llm.max_calls_per_job"),
        ("ATLAS__LLM__REQUEST_TIMEOUT_SECS", "0", "llm.request_timeout_secs"),
        ("ATLAS__LLM__MAX_INPUT_TOKENS", "0", "llm.max_input_tokens"),
    ] {
        let e = load_err(&shipped("preview", &[(var, value)]));
        has(&e.problems, &[key, "at least 1"]);
    }
    // A budget given as text names the key and the variable that set it.
    let e = load_err(&shipped("preview", &[("MONTHLY_BUDGET", "fifty dollars")]));
    has(&e.problems, &["budget.monthly_usd", "MONTHLY_BUDGET", "invalid type"]);
    let e = load_err(&shipped("preview", &[("ATLAS__WORKER__CONCURRENCY", "many")]));
    has(&e.problems, &["worker.concurrency", "invalid type"]);
    // A key with a newline (pasted, or read from a file) is refused without being shown.
    for bad in ["sk-test-key-1234567890\n", " sk-test-key-1234567890", "sk-test\tkey"] {
        let e = load_err(&shipped("preview", &[("OPENAI_API_KEY", bad)]));
        has(&e.problems, &["OPENAI_API_KEY", "whitespace or a control character"]);
        assert!(!e.to_string().contains("sk-test"), "the key is never printed: {e}");
    }
    assert!(Settings::load(&shipped("preview", &[("OPENAI_API_KEY", "sk-test-key-1234567890")])).is_ok());
}
