//! `atlas-codex bench`: throughput, CPU, latency and memory of the worker on the embedded backend
//! with a fast mock model at a set latency. Prints numbers; asserts nothing (targets are in
//! `docs/performance.md`).

mod baseline;
mod ledger;
mod level;
mod limiter;
mod mock;
mod procstat;
mod report;
mod settings;
mod startup;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::llm::{simulated::SimulatedClient, LlmClient};

pub use baseline::BaselineResult;
pub use level::LevelResult;
pub use limiter::LimiterCost;
#[cfg(feature = "testkit")]
pub use mock::serve_mock;
pub use startup::Startup;

use baseline::run_baseline;
use level::run_level;
use limiter::limiter_costs;
use mock::MockChild;
use report::print_table;
use settings::{aws_settings, bench_settings, tempdir};
use startup::measure_startup;

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
    let (results, baselines) = run_levels(&args, endpoint.as_deref(), mock.as_ref()).await?;
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

/// Runs every level, and the baseline after each when asked, then removes the levels' scratch
/// directories.
async fn run_levels(
    args: &BenchArgs,
    endpoint: Option<&str>,
    mock: Option<&MockChild>,
) -> Result<(Vec<LevelResult>, Vec<BaselineResult>), String> {
    let mut results = Vec::new();
    let mut baselines = Vec::new();
    let mut dirs = Vec::new();
    // Metrics are recorded as in a real worker process (the recorder costs CPU per job too).
    let mut metrics_installed = false;
    for &c in &args.concurrency {
        let dir = tempdir()?;
        let settings = match endpoint {
            Some(e) => aws_settings(e, c)?,
            None => bench_settings(&dir, c)?,
        };
        if !metrics_installed {
            crate::telemetry::install_metrics(&settings.metrics_namespace());
            metrics_installed = true;
        }
        let llm = level_llm(mock, args.latency_ms)?;
        let jobs = (c * args.rounds).max(500);
        results.push(run_level(args, settings, llm, c, jobs).await?);
        if let (Some(script), Some(m), Some(e)) = (&args.baseline, mock, endpoint) {
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
    Ok((results, baselines))
}

/// A level's model: the mock model over HTTP when it runs, else the in-process simulated model
/// answering in `latency_ms`.
fn level_llm(mock: Option<&MockChild>, latency_ms: u64) -> Result<Arc<dyn LlmClient>, String> {
    let llm: Arc<dyn LlmClient> = match mock {
        Some(m) => Arc::new(
            crate::llm::openai::OpenAiClient::new(&m.url, &crate::settings::Secret::new("bench-key"), Duration::from_secs(60))
                .map_err(|e| e.to_string())?,
        ),
        None => Arc::new(SimulatedClient::new(Duration::from_millis(latency_ms))),
    };
    Ok(llm)
}
