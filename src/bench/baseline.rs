//! The Python baseline worker (`scripts/bench_baseline.py`), run beside the worker for comparison.

use std::path::Path;

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
pub(super) async fn run_baseline(
    python: &str,
    script: &Path,
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
