//! One benchmark level: enqueue the jobs, run the worker until the queue is empty, and measure
//! throughput, CPU, latency, memory, ledger writes and AWS calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::ledger::CountingLedger;
use super::procstat::{cpu_seconds, peak_rss_mib, reset_peak_rss};
use super::{BenchArgs, BenchBackend};
use crate::app::App;
use crate::job::{JobRecord, JobStatus};
use crate::llm::LlmClient;
use crate::settings::Settings;
use crate::worker::RunOptions;

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

/// One level: `jobs` jobs at `concurrency` in flight on `settings`' backend.
pub(super) async fn run_level(
    args: &BenchArgs,
    settings: Settings,
    llm: Arc<dyn LlmClient>,
    c: usize,
    jobs: usize,
) -> Result<LevelResult, String> {
    let (app, ledger_writes) = prepare(args, settings, llm, c, jobs).await?;
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
    let (p50_ms, p99_ms) = latency_percentiles(&recs);
    let done = stats.completed as usize;
    let busy = busy_secs(&recs, start_utc, wall);
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
        p50_ms,
        p99_ms,
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

/// The level's app on `settings`' backends (provisioned first on AWS), its budget ledger
/// counting writes, with the level's `jobs` jobs already queued.
async fn prepare(
    args: &BenchArgs,
    settings: Settings,
    llm: Arc<dyn LlmClient>,
    c: usize,
    jobs: usize,
) -> Result<(App, Arc<AtomicU64>), String> {
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
    Ok((app, ledger_writes))
}

/// Median and 99th percentile of the completed jobs' latency (claim to completion), ms.
fn latency_percentiles(recs: &[JobRecord]) -> (u64, u64) {
    let mut lat: Vec<u64> = recs.iter().filter_map(|r| r.duration_ms).collect();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    (pct(0.50), pct(0.99))
}

/// Seconds from `start_utc` to the last completion, at most `wall` (`wall` when there is none).
/// Throughput is counted up to the last completion: the worker's exit (one more empty long-poll
/// of `queue.wait_time_secs`, then the drain) is not work and would skew short runs.
fn busy_secs(recs: &[JobRecord], start_utc: DateTime<Utc>, wall: f64) -> f64 {
    recs.iter()
        .map(|r| r.updated_at)
        .max()
        .map(|last| (last - start_utc).num_microseconds().unwrap_or(0) as f64 / 1e6)
        .filter(|b| *b > 0.0)
        .unwrap_or(wall)
        .min(wall)
}

/// The job every level runs: a small extraction.
fn bench_job(id: &str) -> serde_json::Value {
    json!({
        "job_id": id,
        "type": "extract",
        "text": "Summit 45 Pack. Price $189.00. Weight 1.2 kg. In stock.",
        "instructions": "Extract the product name and price.",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}, "required": ["name", "price"]}
    })
}

/// Completions per second while the pool was full. A job started at `updated_at - duration_ms`
/// (its claim) and ended at `updated_at`. The window runs from the `concurrency`-th start (the
/// pool has filled) to the last start (after it, the pool drains); `None` when the run was too
/// short to have such a window.
fn steady_rate(recs: &[JobRecord], concurrency: usize) -> Option<f64> {
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
