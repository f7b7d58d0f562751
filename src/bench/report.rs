//! The benchmark's table: start-up, limiter cost, one row per level, AWS calls by operation,
//! and the baseline's numbers.

use super::{BaselineResult, BenchArgs, LevelResult, LimiterCost, Startup};

/// Prints the benchmark's numbers as a table.
pub(super) fn print_table(
    args: &BenchArgs,
    backend: &str,
    startup: Option<&Startup>,
    limiter: &[LimiterCost],
    results: &[LevelResult],
    baselines: &[BaselineResult],
) {
    print_setup(args, backend, startup, limiter);
    print_levels(results);
    print_baselines(baselines);
}

/// Start-up, the limiter's cost, and what the levels ran on.
fn print_setup(args: &BenchArgs, backend: &str, startup: Option<&Startup>, limiter: &[LimiterCost]) {
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
}

/// One row per level, then each level's AWS calls per job by operation.
fn print_levels(results: &[LevelResult]) {
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
}

/// The baseline's numbers, one line per level.
fn print_baselines(baselines: &[BaselineResult]) {
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
