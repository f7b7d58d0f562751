//! Fleet-wide rate limits, proven with real processes: four `worker` processes of one stage
//! share one API key whose limit is 120 requests a minute (the in-repo mock answers 429 past
//! it, on a sliding minute, as OpenAI does), with far more jobs queued than the key allows.
//! Run on moto (stage `preview`, the shared windows in the budget table) and on the local stage
//! (the shared windows in the SQLite file). Each run measures [`MEASURE`] of steady state:
//!
//! - the fleet gets at least 85% of what the key allows answered;
//! - at most 3% of its requests draw a 429.
//!
//! Needs moto (`ATLAS_TEST_MOTO_ENDPOINT`, see `tests/support/moto.rs`) for the AWS run.

#[allow(dead_code)]
mod support {
    pub mod moto;
    pub mod procs;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_codex::backend::local::{LocalBackend, QueueOptions};
use atlas_codex::backend::{aws, Queue};
use atlas_codex::mock_openai::{Behavior, MockConfig, MockOpenAi};
use serde_json::json;
use support::moto;
use support::procs::{run_cli, ProcEnv, WorkerProc};

const KEY_RPM: u32 = 120;
const WORKERS: usize = 4;
/// Steady state measured, from the first answer.
const MEASURE: Duration = Duration::from_secs(100);
const MODEL: &str = "gpt-5-nano";
const API_KEY: &str = "fleet-key";
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Visible messages the feeder keeps in the queue (the workers never run dry; moto's queue stays
/// shallow).
const QUEUE_FLOOR: u64 = 40;

fn job(run: &str, i: usize) -> String {
    json!({
        "job_id": format!("rl-{run}-{i}"),
        "text": format!("The Ridge {i} tent costs ${}.50.", 100 + i),
        "instructions": "Extract the product name and price.",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}, "required": ["name", "price"]},
        "model": MODEL,
    })
    .to_string()
}

/// A config file giving every model the key's limit (the worker's view of the key).
fn limits_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut toml = String::new();
    for m in ["gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4o", "gpt-4.1"] {
        toml.push_str(&format!("[models.\"{m}\"]\nrpm = {KEY_RPM}\n\n"));
    }
    let path = dir.join("limits.toml");
    std::fs::write(&path, toml).expect("write limits file");
    path
}

struct Measured {
    ok: usize,
    limited: usize,
    total: usize,
}

/// Runs the fleet against `mock` until [`MEASURE`] after the first answer, feeding `queue`.
async fn run_fleet(env: &ProcEnv, stage: &str, queue: Arc<dyn Queue>, mock: &MockOpenAi, logs: &std::path::Path) -> Measured {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let config = limits_file(logs);
    let config = config.to_string_lossy().to_string();
    let mut workers: Vec<WorkerProc> = (0..WORKERS)
        .map(|i| {
            let log = logs.join(format!("{stage}-w{i}.log"));
            WorkerProc::spawn(env, stage, &["--config", &config, "worker"], &log, &format!("{stage}-w{i}"))
        })
        .collect();
    let start = Instant::now();
    let mut next = 0usize;
    let mut first_ok: Option<Duration> = None;
    loop {
        for w in workers.iter_mut() {
            if let Some(s) = w.try_status() {
                panic!("worker {} exited on its own with {s}; log tail:\n{}", w.name, w.log_tail(40));
            }
        }
        let depth = queue.depth().await.expect("queue depth");
        if depth.visible < QUEUE_FLOOR {
            let bodies: Vec<String> = (next..next + 20).map(|i| job(&run, i)).collect();
            next += bodies.len();
            queue.send_batch(&bodies).await.expect("send jobs");
        }
        if first_ok.is_none() {
            first_ok = mock.requests().iter().filter(|r| r.status == 200).map(|r| r.since_start).min();
        }
        if let Some(t) = first_ok {
            if mock.requests().iter().map(|r| r.since_start).max().is_some_and(|last| last >= t + MEASURE) {
                break;
            }
        }
        assert!(start.elapsed() < MEASURE + Duration::from_secs(90), "the fleet never got going; logs in {}", logs.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in workers.iter_mut() {
        w.sigterm();
    }
    for w in workers.iter_mut() {
        w.expect_clean_exit(Duration::from_secs(60)).await;
    }
    let t0 = first_ok.unwrap_or_default();
    let seen: Vec<_> = mock.requests().into_iter().filter(|r| r.since_start >= t0 && r.since_start < t0 + MEASURE).collect();
    let m = Measured {
        ok: seen.iter().filter(|r| r.status == 200).count(),
        limited: seen.iter().filter(|r| r.status == 429).count(),
        total: seen.len(),
    };
    let allowed = f64::from(KEY_RPM) * MEASURE.as_secs_f64() / 60.0;
    eprintln!(
        "{stage}: {} answered of {allowed:.0} the key allows in {:?} ({:.1}%), {} of {} requests drew 429 ({:.2}%)",
        m.ok,
        MEASURE,
        100.0 * m.ok as f64 / allowed,
        m.limited,
        m.total,
        100.0 * m.limited as f64 / m.total.max(1) as f64
    );
    assert!(m.ok as f64 >= 0.85 * allowed, "{stage}: only {} answered of {allowed:.0} allowed; logs in {}", m.ok, logs.display());
    assert!(
        m.limited as f64 <= 0.03 * m.total as f64,
        "{stage}: {} of {} requests drew 429; logs in {}",
        m.limited,
        m.total,
        logs.display()
    );
    m
}

fn key_mock_config() -> MockConfig {
    MockConfig {
        seed: Some(7),
        expected_api_key: Some(API_KEY.into()),
        max_recorded: 20_000,
        behavior: Behavior { latency: Duration::from_millis(300), rpm_limit: Some(KEY_RPM), ..Behavior::default() },
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_on_moto_share_one_keys_rpm_without_a_429_storm() {
    let endpoint = moto::endpoint();
    let logs = tempfile::Builder::new().prefix("atlas-rl-aws-").tempdir().expect("log dir").keep();
    let mock = MockOpenAi::start(key_mock_config()).await;
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let env = ProcEnv::moto(&endpoint)
        .openai_mock(&mock.base_url(), API_KEY)
        .private_resources("preview", &format!("rl{run}"))
        .set("ATLAS__WORKER__CONCURRENCY", "16")
        .set("ATLAS__WORKER__JOB_TIMEOUT_SECS", "120")
        .set("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "30");
    run_cli(&env, "preview", &["--output", "json", "provision"], None, CLI_TIMEOUT).await.ok("provision");
    let settings = env.settings("preview");
    let sdk = moto::sdk_config(&settings).await;
    let backends = aws::open_backends_with(&settings, &sdk).await.expect("open backends");
    run_fleet(&env, "preview", backends.queue.clone(), &mock, &logs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_local_workers_share_one_keys_rpm_through_the_sqlite_file() {
    let logs = tempfile::Builder::new().prefix("atlas-rl-local-").tempdir().expect("log dir").keep();
    let data = logs.join("data");
    let mock = MockOpenAi::start(key_mock_config()).await;
    let env = ProcEnv::new()
        .openai_mock(&mock.base_url(), API_KEY)
        .set("ATLAS__STORAGE__DATA_DIR", &data.to_string_lossy())
        .set("ATLAS__ADMIN__LISTEN", "")
        .set("ATLAS__TELEMETRY__LOG_FORMAT", "json")
        .set("ATLAS__WORKER__CONCURRENCY", "16")
        .set("ATLAS__WORKER__JOB_TIMEOUT_SECS", "120")
        .set("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "30");
    let settings = env.settings("local");
    let local = LocalBackend::open(&data, &atlas_codex::backend::local::db_file_name("local"), QueueOptions::from_settings(&settings))
        .expect("open the local stage's file");
    run_fleet(&env, "local", local.queue.clone(), &mock, &logs).await;
}

// ---------------------------------------------------------------------------------------------
// In one process: the fallback share, and what the provider's headers do to the fleet.

mod in_process {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use atlas_codex::backend::local::{LocalBackend, QueueOptions};
    use atlas_codex::backend::{BResult, BackendError, RateStore, RateUnits};
    use atlas_codex::llm::ProviderLimits;
    use atlas_codex::ratelimit::RateLimits;
    use atlas_codex::settings::{ModelSettings, Settings};

    fn table(rpm: u32) -> BTreeMap<String, ModelSettings> {
        let mut m = BTreeMap::new();
        m.insert("m".to_string(), ModelSettings { rpm, tpm: 0, ..ModelSettings::default() });
        m
    }

    /// A shared store that is down.
    struct DeadStore;

    #[async_trait]
    impl RateStore for DeadStore {
        async fn take(&self, _: &str, _: u64, _: RateUnits, _: RateUnits) -> BResult<RateUnits> {
            Err(BackendError::Transient("connection refused".into()))
        }
        async fn give_back(&self, _: &str, _: u64, _: RateUnits) -> BResult<()> {
            Err(BackendError::Transient("connection refused".into()))
        }
        async fn fill(&self, _: &str, _: u64) -> BResult<()> {
            Err(BackendError::Transient("connection refused".into()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_shared_store_leaves_each_worker_its_fallback_share_and_it_keeps_serving() {
        let store: Arc<dyn RateStore> = Arc::new(DeadStore);
        let workers: Vec<Arc<RateLimits>> = (0..4).map(|_| Arc::new(RateLimits::fleet(&table(120), 1_000, store.clone(), 0, 4))).collect();
        let served = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for w in &workers {
            for _ in 0..8 {
                let (w, served) = (w.clone(), served.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let g = w.acquire("m", 10).await;
                        assert!(g.taken.is_none(), "nothing is taken from a dead store");
                        if start.elapsed() >= Duration::from_secs(120) {
                            return;
                        }
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
        for w in &workers {
            assert!(w.on_fallback("m"), "the worker says it is on its fallback share");
        }
        // 4 workers × 30 a minute for two minutes: the key's 240, never more (plus the first
        // request of each worker, which GCRA lets through at once).
        let n = served.load(Ordering::Relaxed);
        assert!((220..=244).contains(&n), "served {n} in two minutes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_does_not_answer_is_given_up_on_within_the_store_timeout() {
        let mut s = Settings::default();
        s.aws.endpoint_url = "http://127.0.0.1:9".into();
        s.aws.region = "us-east-1".into();
        let sdk = atlas_codex::backend::aws::sdk_config(&s).await;
        let store: Arc<dyn RateStore> =
            Arc::new(atlas_codex::backend::aws::DynamoRateStore::new(aws_sdk_dynamodb::Client::new(&sdk), "nowhere"));
        let rl = RateLimits::fleet(&table(600), 1_000, store, 0, 4);
        let t = std::time::Instant::now();
        let g = rl.acquire("m", 10).await;
        assert!(g.taken.is_none());
        assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
        assert!(rl.on_fallback("m"));
        // The next calls do not wait on the store again; they run on the fallback share.
        let t = std::time::Instant::now();
        rl.acquire("m", 10).await;
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
    }

    fn scratch_store() -> Arc<dyn RateStore> {
        let b = LocalBackend::open_scratch(QueueOptions {
            queue_name: "q".into(),
            dlq_name: "d".into(),
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: 3,
        })
        .expect("scratch backend");
        b.rates
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spent_key_header_stops_every_worker_until_the_reset() {
        let store = scratch_store();
        let a = RateLimits::fleet(&table(600), 1_000, store.clone(), 0, 4);
        let b = RateLimits::fleet(&table(600), 1_000, store.clone(), 0, 4);
        assert!(a.acquire("m", 10).await.taken.is_some());
        let spent =
            ProviderLimits { remaining_requests: Some(0), reset_requests: Some(Duration::from_secs(2)), ..ProviderLimits::default() };
        let t = std::time::Instant::now();
        a.observe("m", &spent).await;
        let (ga, gb) = tokio::join!(
            async {
                a.acquire("m", 10).await;
                t.elapsed()
            },
            async {
                let g = b.acquire("m", 10).await;
                (g.taken.is_some(), t.elapsed())
            }
        );
        assert!(ga >= Duration::from_millis(1_900), "this worker waited only {ga:?}");
        assert!(gb.0, "the other worker still uses the shared windows");
        assert!(gb.1 >= Duration::from_millis(1_500), "the other worker waited only {:?}", gb.1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provider_limit_below_the_configured_rpm_lowers_the_share_taken() {
        let store = scratch_store();
        let rl = RateLimits::fleet(&table(6_000), 1_000, store, 0, 4);
        let (window, cap, _) = rl.window_plan("m").expect("fleet plan");
        assert!(cap > 50, "configured cap {cap} per {window:?}");
        rl.observe("m", &ProviderLimits { limit_requests: Some(60), ..ProviderLimits::default() }).await;
        // 60 a minute in windows of `window`: at most 60 / (60 s / window + 1) per window.
        let per_window = (60 / (60 / window.as_secs() + 1)).max(1) as usize;
        // 2 × that + 1 calls span three windows: at least one whole window passes.
        let t = std::time::Instant::now();
        for _ in 0..2 * per_window + 1 {
            rl.acquire("m", 10).await;
        }
        assert!(t.elapsed() >= window.mul_f64(0.9), "{} calls took only {:?}", 2 * per_window + 1, t.elapsed());
    }
}
