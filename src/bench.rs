//! `atlas-codex bench`: throughput, CPU, latency and memory of the worker on the embedded backend
//! with a fast mock model at a set latency. Prints numbers; asserts nothing (targets are in
//! `docs/performance.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use crate::app::App;
use crate::backend::{BResult, BudgetLedger, Charge, LedgerSnapshot, Reservation, ReserveOutcome};
use crate::job::JobStatus;
use crate::llm::{simulated::SimulatedClient, LlmClient};
use crate::settings::{Settings, Sources};
use crate::worker::RunOptions;

/// Benchmark options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Concurrency levels to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![64usize, 256, 1024, 4096])]
    pub concurrency: Vec<usize>,
    /// Model latency per call, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub latency_ms: u64,
    /// Jobs per level = this × concurrency (at least 500): ten rounds, so the one-off ramp-up
    /// (the first receives and claims) does not dominate the steady-state rate.
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// `simulated` (in-process mock model) or `http` (the OpenAI-compatible mock server over HTTP).
    #[arg(long, default_value = "simulated")]
    pub llm: String,
    /// Also measure the real binary's start-up: time to ready and idle RSS.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub startup: bool,
    /// Also measure the fleet rate limiter's cost (store writes per 1,000 calls, added latency
    /// per call) on the SQLite store, and on DynamoDB when `--limiter-dynamodb-endpoint` is given.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub limiter: bool,
    /// A DynamoDB endpoint (e.g. moto's) for the limiter measurement; a scratch table is created.
    #[arg(long)]
    pub limiter_dynamodb_endpoint: Option<String>,
    /// `local` (the embedded SQLite backend, a scratch directory per level) or `aws` (SQS,
    /// DynamoDB and S3 at `--aws-endpoint`, e.g. moto; scratch resources provisioned per level).
    #[arg(long, value_enum, default_value_t = BenchBackend::Local)]
    pub backend: BenchBackend,
    /// The AWS endpoint for `--backend aws`.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub aws_endpoint: Option<String>,
    /// A Python baseline worker (`scripts/bench_baseline.py`) run at each level after the worker,
    /// on the same endpoint and mock model; its numbers are printed beside the worker's
    /// (`--backend aws --llm http`).
    #[arg(long)]
    pub baseline: Option<std::path::PathBuf>,
    /// The Python interpreter for `--baseline`.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// Where the benchmark's jobs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    /// The embedded SQLite backend.
    Local,
    /// SQS, DynamoDB and S3 (an emulator such as moto).
    Aws,
}

/// The fleet rate limiter's cost on one store.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimiterCost {
    /// `sqlite` or `dynamodb`.
    pub store: String,
    /// Calls made.
    pub calls: u64,
    /// Shared-store writes per 1,000 calls.
    pub writes_per_1000_calls: f64,
    /// Mean time a call spent in `acquire` (store round trips included), microseconds.
    pub mean_added_us: f64,
    /// 99th percentile of that, microseconds.
    pub p99_added_us: u64,
}

/// Workers × tasks calling a model of 60,000 rpm (a 1 s window of 983) with a 100 ms "call"
/// after each acquire, for `run`: demand (640/s per worker) stays under the key, so what
/// `acquire` costs is the limiter itself.
async fn limiter_cost(store_name: &str, store: Arc<dyn crate::backend::RateStore>, run: Duration) -> LimiterCost {
    use crate::ratelimit::RateLimits;
    let mut models = std::collections::BTreeMap::new();
    models.insert("bench-model".to_string(), crate::settings::ModelSettings { rpm: 60_000, tpm: 0, ..Default::default() });
    let rl = Arc::new(RateLimits::fleet(&models, 1_000, store, 0, 1));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let rl = rl.clone();
        tasks.push(tokio::spawn(async move {
            let mut waits = Vec::new();
            while t0.elapsed() < run {
                let t = Instant::now();
                rl.acquire("bench-model", 500).await;
                waits.push(t.elapsed().as_micros() as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            waits
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_unstable();
    let calls = all.len() as u64;
    LimiterCost {
        store: store_name.into(),
        calls,
        writes_per_1000_calls: rl.store_writes() as f64 * 1000.0 / calls.max(1) as f64,
        mean_added_us: all.iter().sum::<u64>() as f64 / calls.max(1) as f64,
        p99_added_us: all.get((all.len() * 99 / 100).min(all.len().saturating_sub(1))).copied().unwrap_or(0),
    }
}

async fn limiter_costs(args: &BenchArgs) -> Result<Vec<LimiterCost>, String> {
    let run = Duration::from_secs(10);
    let local = crate::backend::local::LocalBackend::open_scratch(crate::backend::local::QueueOptions {
        queue_name: "bench".into(),
        dlq_name: "bench-dlq".into(),
        visibility_timeout: Duration::from_secs(30),
        max_receive_count: 3,
    })
    .map_err(|e| e.to_string())?;
    let mut out = vec![limiter_cost("sqlite", local.rates.clone(), run).await];
    if let Some(endpoint) = &args.limiter_dynamodb_endpoint {
        let d = Settings::default();
        let s = Settings {
            stage: format!("bench{}", std::process::id()),
            aws: crate::settings::AwsSettings { endpoint_url: endpoint.clone(), region: "us-east-1".into(), ..d.aws.clone() },
            ..d
        };
        let sdk = crate::backend::aws::sdk_config(&s).await;
        crate::backend::aws::provision::provision_budget_table(&s, &sdk).await.map_err(|e| e.to_string())?;
        let store = crate::backend::aws::DynamoRateStore::new(crate::backend::aws::calls::dynamodb(&sdk), s.budget_table());
        out.push(limiter_cost("dynamodb", Arc::new(store), run).await);
    }
    Ok(out)
}

/// One level's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelResult {
    /// Jobs in flight allowed.
    pub concurrency: usize,
    /// Jobs run.
    pub jobs: usize,
    /// Jobs completed per second, from the start of the run to the last job's completion.
    pub jobs_per_sec: f64,
    /// `jobs_per_sec` as a share of the ideal `concurrency / latency`.
    pub efficiency: f64,
    /// Seconds from the start of the run to the last job's completion (what `jobs_per_sec` uses).
    pub busy_secs: f64,
    /// Jobs completed per second while the pool was full: from the moment `concurrency` jobs
    /// had started to the last job's start (fill and drain left out).
    pub steady_jobs_per_sec: f64,
    /// `steady_jobs_per_sec` as a share of the ideal.
    pub steady_efficiency: f64,
    /// Seconds until the worker returned (adds the final empty long-poll and the drain).
    pub wall_secs: f64,
    /// Process CPU seconds (user + system) per 1,000 jobs.
    pub cpu_secs_per_1000: f64,
    /// Median job latency (claim to completion), ms.
    pub p50_ms: u64,
    /// 99th percentile job latency, ms.
    pub p99_ms: u64,
    /// Peak resident memory during the level, MiB.
    pub peak_rss_mib: f64,
    /// Budget-ledger writes (reserve, settle, release) per job.
    pub ledger_writes_per_job: f64,
    /// AWS requests per job (`--backend aws`).
    pub aws_calls_per_job: Option<f64>,
    /// AWS requests per job by `service.operation` (`--backend aws`).
    pub aws_calls_per_job_by_operation: std::collections::BTreeMap<String, f64>,
}

/// Runs the benchmark and prints a table (or JSON).
pub async fn run(args: BenchArgs, json_out: bool) -> Result<(), String> {
    let endpoint = match args.backend {
        BenchBackend::Aws => Some(args.aws_endpoint.clone().filter(|e| !e.trim().is_empty()).ok_or(
            "--backend aws needs an endpoint: --aws-endpoint URL or AWS_ENDPOINT_URL (e.g. a moto server), and credentials in the environment",
        )?),
        BenchBackend::Local => None,
    };
    if args.baseline.is_some() && args.llm != "http" {
        return Err("--baseline needs --llm http: the baseline calls the mock model over HTTP".into());
    }
    let mut startup = None;
    if args.startup {
        startup = Some(measure_startup().await?);
    }
    let limiter = if args.limiter { limiter_costs(&args).await? } else { Vec::new() };
    // The mock model runs in a child process, so its CPU is not counted as the worker's.
    let mock = if args.llm == "http" { Some(MockChild::start(args.latency_ms).await?) } else { None };
    let mut results = Vec::new();
    let mut baselines = Vec::new();
    let mut dirs = Vec::new();
    // Metrics are recorded as in a real worker process (the recorder costs CPU per job too).
    let mut metrics_installed = false;
    for &c in &args.concurrency {
        let dir = tempdir()?;
        let settings = match &endpoint {
            Some(e) => aws_settings(e, c)?,
            None => bench_settings(&dir, c)?,
        };
        if !metrics_installed {
            crate::telemetry::install_metrics(&settings.metrics_namespace());
            metrics_installed = true;
        }
        let llm: Arc<dyn LlmClient> = match &mock {
            Some(m) => Arc::new(
                crate::llm::openai::OpenAiClient::new(&m.url, &crate::settings::Secret::new("bench-key"), Duration::from_secs(60))
                    .map_err(|e| e.to_string())?,
            ),
            None => Arc::new(SimulatedClient::new(Duration::from_millis(args.latency_ms))),
        };
        let jobs = (c * args.rounds).max(500);
        results.push(run_level(&args, settings, llm, c, jobs).await?);
        if let (Some(script), Some(m), Some(e)) = (&args.baseline, &mock, &endpoint) {
            baselines.push(run_baseline(&args.python, script, e, &m.url, c, jobs).await?);
        }
        // Removed after the last level: on ext4, tens of thousands of freshly deleted inodes
        // make the next level's file creations scan past them (`recently_deleted`), which would
        // charge one level's clean-up to the next level's numbers.
        dirs.push(dir);
    }
    for d in &dirs {
        let _ = std::fs::remove_dir_all(d);
    }
    let backend = match args.backend {
        BenchBackend::Local => "local",
        BenchBackend::Aws => "aws",
    };
    if json_out {
        let doc = json!({"startup": startup, "levels": results, "baseline": baselines, "backend": backend, "latency_ms": args.latency_ms, "llm": args.llm, "limiter": limiter});
        outln!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
    } else {
        print_table(&args, backend, startup.as_ref(), &limiter, &results, &baselines);
    }
    Ok(())
}

/// One level: `jobs` jobs at `concurrency` in flight on `settings`' backend.
async fn run_level(args: &BenchArgs, settings: Settings, llm: Arc<dyn LlmClient>, c: usize, jobs: usize) -> Result<LevelResult, String> {
    if args.backend == BenchBackend::Aws {
        crate::backend::aws::provision(&settings).await.map_err(|e| e.to_string())?;
    }
    let mut backends = crate::app::open_backends(&settings).await.map_err(|e| e.to_string())?;
    let ledger_writes = Arc::new(AtomicU64::new(0));
    backends.ledger = Arc::new(CountingLedger { inner: backends.ledger.clone(), writes: ledger_writes.clone() });
    let app = App::new(Arc::new(settings), backends, llm, args.llm.clone())?;
    let bodies: Vec<String> = (0..jobs).map(|i| bench_job(&format!("bench-{c}-{i}")).to_string()).collect();
    for chunk in bodies.chunks(1_000) {
        app.backends.queue.send_batch(chunk).await.map_err(|e| e.to_string())?;
    }
    reset_peak_rss();
    let aws0 = crate::backend::aws::calls::requests_sent();
    let ops0 = crate::backend::aws::calls::requests_by_operation();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let start_utc = Utc::now();
    let stats = app.run(RunOptions { exit_when_idle: true }, std::future::pending()).await?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak = peak_rss_mib();
    let aws1 = crate::backend::aws::calls::requests_sent();
    let ops1 = crate::backend::aws::calls::requests_by_operation();
    let recs = app.backends.jobs.list(Some(JobStatus::Completed), jobs + 10).await.map_err(|e| e.to_string())?;
    let mut lat: Vec<u64> = recs.iter().filter_map(|r| r.duration_ms).collect();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let done = stats.completed as usize;
    // Throughput up to the last completion: the worker's exit (one more empty long-poll of
    // `queue.wait_time_secs`, then the drain) is not work and would skew short runs.
    let busy = recs
        .iter()
        .map(|r| r.updated_at)
        .max()
        .map(|last| (last - start_utc).num_microseconds().unwrap_or(0) as f64 / 1e6)
        .filter(|b| *b > 0.0)
        .unwrap_or(wall)
        .min(wall);
    let jps = done as f64 / busy;
    let ideal = c as f64 / (args.latency_ms.max(1) as f64 / 1000.0);
    let steady = steady_rate(&recs, c).unwrap_or(jps);
    let per_job = |n: u64| n as f64 / done.max(1) as f64;
    let aws_calls = (aws1.0 - aws0.0) + (aws1.1 - aws0.1) + (aws1.2 - aws0.2);
    let r = LevelResult {
        concurrency: c,
        jobs: done,
        jobs_per_sec: jps,
        efficiency: jps / ideal,
        busy_secs: busy,
        steady_jobs_per_sec: steady,
        steady_efficiency: steady / ideal,
        wall_secs: wall,
        cpu_secs_per_1000: cpu / (done.max(1) as f64) * 1000.0,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        peak_rss_mib: peak,
        ledger_writes_per_job: per_job(ledger_writes.load(Ordering::Relaxed)),
        aws_calls_per_job: (args.backend == BenchBackend::Aws).then(|| per_job(aws_calls)),
        aws_calls_per_job_by_operation: ops1
            .iter()
            .map(|(op, n)| (op.clone(), per_job(n - ops0.get(op).copied().unwrap_or(0))))
            .filter(|(_, v)| *v > 0.0)
            .collect(),
    };
    eprintln!("  c={c}: {done}/{jobs} jobs, last done after {busy:.2}s, worker returned after {wall:.2}s");
    Ok(r)
}

fn bench_job(id: &str) -> serde_json::Value {
    json!({
        "job_id": id,
        "type": "extract",
        "text": "Summit 45 Pack. Price $189.00. Weight 1.2 kg. In stock.",
        "instructions": "Extract the product name and price.",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}, "required": ["name", "price"]}
    })
}

fn print_table(
    args: &BenchArgs,
    backend: &str,
    startup: Option<&Startup>,
    limiter: &[LimiterCost],
    results: &[LevelResult],
    baselines: &[BaselineResult],
) {
    if let Some(s) = startup {
        outln!("startup: ready in {:.0} ms, idle RSS {:.1} MiB", s.ready_ms, s.idle_rss_mib);
    }
    for l in limiter {
        outln!(
            "fleet rate limiter on {}: {} calls, {:.1} store writes per 1,000 calls, {:.0} µs added per call (p99 {} µs)",
            l.store,
            l.calls,
            l.writes_per_1000_calls,
            l.mean_added_us,
            l.p99_added_us
        );
    }
    outln!(
        "backend {backend}, model latency {} ms, llm {}, {} cores",
        args.latency_ms,
        args.llm,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    outln!(
        "{:>11} {:>7} {:>8} {:>9} {:>7} {:>9} {:>8} {:>10} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "CONCURRENCY",
        "JOBS",
        "BUSY s",
        "JOBS/S",
        "IDEAL%",
        "STEADY/S",
        "STEADY%",
        "CPU ms/job",
        "P50 ms",
        "P99 ms",
        "PEAK MiB",
        "LEDGER/j",
        "AWS/job"
    );
    for r in results {
        outln!(
            "{:>11} {:>7} {:>8.2} {:>9.1} {:>6.1}% {:>9.1} {:>7.1}% {:>10.3} {:>8} {:>8} {:>10.1} {:>9.3} {:>8}",
            r.concurrency,
            r.jobs,
            r.busy_secs,
            r.jobs_per_sec,
            r.efficiency * 100.0,
            r.steady_jobs_per_sec,
            r.steady_efficiency * 100.0,
            r.cpu_secs_per_1000,
            r.p50_ms,
            r.p99_ms,
            r.peak_rss_mib,
            r.ledger_writes_per_job,
            r.aws_calls_per_job.map_or("-".to_string(), |a| format!("{a:.2}"))
        );
    }
    for r in results.iter().filter(|r| !r.aws_calls_per_job_by_operation.is_empty()) {
        let ops: Vec<String> = r.aws_calls_per_job_by_operation.iter().map(|(op, n)| format!("{op} {n:.2}")).collect();
        outln!("AWS calls per job at {}: {}", r.concurrency, ops.join(", "));
    }
    for b in baselines {
        outln!(
            "baseline (python asyncio) c={}: {} jobs in {:.2} s = {:.1} jobs/s, {:.2} CPU ms/job, {:.2} AWS calls/job",
            b.concurrency,
            b.jobs,
            b.wall_secs,
            b.jobs_per_sec,
            b.cpu_ms_per_job,
            b.aws_calls_per_job
        );
    }
}

/// The Python baseline's numbers for one level (what `scripts/bench_baseline.py` prints).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaselineResult {
    /// Jobs in flight allowed.
    pub concurrency: usize,
    /// Jobs completed.
    pub jobs: usize,
    /// From its first receive to its last completion.
    pub wall_secs: f64,
    /// Completed per second.
    pub jobs_per_sec: f64,
    /// Its process CPU per job, ms.
    pub cpu_ms_per_job: f64,
    /// AWS calls it made per job.
    pub aws_calls_per_job: f64,
}

/// Runs the baseline on the same endpoint and mock model, with its own scratch resources.
async fn run_baseline(
    python: &str,
    script: &std::path::Path,
    endpoint: &str,
    model_url: &str,
    c: usize,
    jobs: usize,
) -> Result<BaselineResult, String> {
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args(["--endpoint", endpoint, "--model-url", model_url, "--concurrency", &c.to_string(), "--jobs", &jobs.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("cannot run the baseline {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("the baseline {} failed: {}", script.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or("the baseline printed no JSON line")?;
    serde_json::from_str(line).map_err(|e| format!("the baseline's JSON line: {e}"))
}

/// The mock model in a child process (`atlas-codex mock-openai`); killed when dropped.
struct MockChild {
    _child: tokio::process::Child,
    url: String,
}

impl MockChild {
    async fn start(latency_ms: u64) -> Result<MockChild, String> {
        use tokio::io::AsyncBufReadExt;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .args(["mock-openai", "--latency-ms", &latency_ms.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the mock model: {e}"))?;
        let stdout = child.stdout.take().ok_or("the mock model has no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "the mock model did not start within 10 s")?
            .map_err(|e| e.to_string())?
            .ok_or("the mock model exited at start")?;
        Ok(MockChild { _child: child, url: url.trim().to_string() })
    }
}

/// `atlas-codex mock-openai`: serves the mock until SIGTERM or Ctrl-C; prints its base URL.
pub async fn serve_mock(latency_ms: u64) -> Result<(), String> {
    let mock = crate::mock_openai::MockOpenAi::try_start(crate::mock_openai::MockConfig {
        behavior: crate::mock_openai::Behavior { latency: Duration::from_millis(latency_ms), ..Default::default() },
        max_recorded: 0,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    outln!("{}", mock.base_url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Counts the writes the worker makes to the budget ledger (reserve, settle, release, declare,
/// close).
struct CountingLedger {
    inner: Arc<dyn BudgetLedger>,
    writes: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl BudgetLedger for CountingLedger {
    async fn reserve(
        &self,
        period: &str,
        reservation: &Reservation,
        limit_micros: i64,
        now: chrono::DateTime<Utc>,
    ) -> BResult<ReserveOutcome> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.reserve(period, reservation, limit_micros, now).await
    }
    async fn settle(&self, period: &str, charge: &Charge) -> BResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.settle(period, charge).await
    }
    async fn release(&self, period: &str, reservation_id: &str) -> BResult<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.release(period, reservation_id).await
    }
    async fn snapshot(&self, period: &str, now: chrono::DateTime<Utc>) -> BResult<LedgerSnapshot> {
        self.inner.snapshot(period, now).await
    }
    async fn declare(&self, period: &str, id: &str, bound: i64, expires_at: chrono::DateTime<Utc>) -> BResult<bool> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.declare(period, id, bound, expires_at).await
    }
    async fn close(&self, period: &str, id: &str) -> BResult<Option<i64>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.close(period, id).await
    }
    async fn lapsed(&self, period: &str, before: chrono::DateTime<Utc>) -> BResult<Vec<Reservation>> {
        self.inner.lapsed(period, before).await
    }
}

/// Completions per second while the pool was full. A job started at `updated_at - duration_ms`
/// (its claim) and ended at `updated_at`. The window runs from the `concurrency`-th start (the
/// pool has filled) to the last start (after it, the pool drains); `None` when the run was too
/// short to have such a window.
fn steady_rate(recs: &[crate::job::JobRecord], concurrency: usize) -> Option<f64> {
    let mut spans: Vec<(i64, i64)> = recs
        .iter()
        .filter_map(|r| {
            let end = r.updated_at.timestamp_micros();
            Some((end - r.duration_ms? as i64 * 1000, end))
        })
        .collect();
    spans.sort_unstable();
    let from = spans.get(concurrency.checked_sub(1)?)?.0;
    let to = spans.last()?.0;
    let secs = (to - from) as f64 / 1e6;
    if secs < 1.0 {
        return None;
    }
    let done = spans.iter().filter(|(_, end)| *end >= from && *end <= to).count();
    Some(done as f64 / secs)
}

fn bench_settings(dir: &std::path::Path, concurrency: usize) -> Result<Settings, String> {
    let mut src = Sources::from_env(Some("local".into()), None);
    src.env.retain(|k, _| !k.starts_with("ATLAS__") && k != "OPENAI_API_KEY");
    for (k, v) in [
        ("ATLAS__STORAGE__DATA_DIR", dir.display().to_string()),
        ("ATLAS__WORKER__CONCURRENCY", concurrency.to_string()),
        ("ATLAS__ADMIN__LISTEN", String::new()),
        ("ATLAS__QUEUE__WAIT_TIME_SECS", "1".into()),
        ("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "300".into()),
        ("ATLAS__LLM__PROVIDER", "simulated".into()),
        ("ATLAS__TELEMETRY__LOG_LEVEL", "error".into()),
        ("MONTHLY_BUDGET", "1000000".into()),
    ] {
        src.env.insert(k.into(), v);
    }
    let mut s = Settings::load(&src).map_err(|e| e.to_string())?;
    for m in s.models.values_mut() {
        m.rpm = 0;
        m.tpm = 0;
    }
    Ok(s)
}

/// Stage `preview` on the AWS backends at `endpoint`, with resource names private to this run
/// and level (`atlas-codex-*-bench{pid}x{concurrency}`).
fn aws_settings(endpoint: &str, concurrency: usize) -> Result<Settings, String> {
    let mut src = Sources::from_env(Some("preview".into()), None);
    src.env.retain(|k, _| !k.starts_with("ATLAS__") && k != "OPENAI_API_KEY" && k != "MONTHLY_BUDGET");
    let suffix = format!("bench{}x{concurrency}", std::process::id());
    for (k, v) in [
        ("ATLAS__STORAGE__BACKEND", "aws".to_string()),
        ("ATLAS__AWS__ENDPOINT_URL", endpoint.to_string()),
        ("ATLAS__QUEUE__NAME", format!("atlas-codex-queue-{suffix}")),
        ("ATLAS__QUEUE__DLQ_NAME", format!("atlas-codex-dlq-{suffix}")),
        ("ATLAS__STORAGE__JOBS_TABLE", format!("atlas-codex-jobs-{suffix}")),
        ("ATLAS__STORAGE__BUDGET_TABLE", format!("atlas-codex-budget-{suffix}")),
        ("ATLAS__STORAGE__BUCKET", format!("atlas-codex-artifacts-{suffix}")),
        ("ATLAS__EVENTS__TOPIC", format!("atlas-codex-events-{suffix}")),
        ("ATLAS__WORKER__CONCURRENCY", concurrency.to_string()),
        ("ATLAS__ADMIN__LISTEN", String::new()),
        ("ATLAS__QUEUE__WAIT_TIME_SECS", "1".into()),
        ("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "300".into()),
        ("ATLAS__LLM__PROVIDER", "simulated".into()),
        ("ATLAS__TELEMETRY__LOG_LEVEL", "error".into()),
        ("MONTHLY_BUDGET", "1000000".into()),
    ] {
        src.env.insert(k.into(), v);
    }
    if !src.env.contains_key("AWS_REGION") && !src.env.contains_key("AWS_DEFAULT_REGION") {
        src.env.insert("ATLAS__AWS__REGION".into(), "us-east-1".into());
    }
    let mut s = Settings::load(&src).map_err(|e| e.to_string())?;
    for m in s.models.values_mut() {
        m.rpm = 0;
        m.tpm = 0;
    }
    Ok(s)
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    let d = std::env::temp_dir().join(format!("atlas-bench-{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the full line (utime, stime) are 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

fn peak_rss_mib() -> f64 {
    status_kib("self", "VmHWM:") / 1024.0
}

/// Resets the kernel's peak-RSS mark so each level reports its own peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Start-up numbers of the real binary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Startup {
    /// From spawn to `/readyz` answering 200, ms.
    pub ready_ms: f64,
    /// Resident memory once idle, MiB.
    pub idle_rss_mib: f64,
}

async fn measure_startup() -> Result<Startup, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = tempdir()?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?.port()
    };
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args(["--stage", "local", "worker"])
        .env("ATLAS__STORAGE__DATA_DIR", &dir)
        .env("ATLAS__ADMIN__LISTEN", format!("127.0.0.1:{port}"))
        .env("ATLAS__LLM__PROVIDER", "simulated")
        .env("ATLAS__TELEMETRY__LOG_LEVEL", "error")
        .env_remove("OPENAI_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the worker binary: {e}"))?;
    let ready_ms = loop {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("worker not ready within 10 s".into());
        }
        if readyz(port).await {
            break t0.elapsed().as_secs_f64() * 1000.0;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let idle_rss_mib = status_kib(&pid, "VmRSS:") / 1024.0;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Startup { ready_ms, idle_rss_mib })
}

async fn readyz(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    buf.starts_with(b"HTTP/1.1 200")
}
