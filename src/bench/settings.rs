//! Where the bench runs a level: the settings of the embedded or AWS backends (rate limits off)
//! and the scratch directory.

use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::settings::{Settings, Sources};

/// The embedded backend's settings for one level: data in `dir`, `concurrency` jobs in flight,
/// the simulated provider, and no rate limits.
pub(super) fn bench_settings(dir: &Path, concurrency: usize) -> Result<Settings, String> {
    let mut src = Sources::from_env(Some("local".into()), None);
    src.env.retain(|k, _| !k.starts_with("ATLAS__") && k != "OPENAI_API_KEY");
    src.env.insert("ATLAS__STORAGE__DATA_DIR".into(), dir.display().to_string());
    load_level(src, concurrency)
}

/// Stage `preview` on the AWS backends at `endpoint`, with resource names private to this run
/// and level (`atlas-codex-*-bench{pid}x{concurrency}`).
pub(super) fn aws_settings(endpoint: &str, concurrency: usize) -> Result<Settings, String> {
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
    ] {
        src.env.insert(k.into(), v);
    }
    if !src.env.contains_key("AWS_REGION") && !src.env.contains_key("AWS_DEFAULT_REGION") {
        src.env.insert("ATLAS__AWS__REGION".into(), "us-east-1".into());
    }
    load_level(src, concurrency)
}

/// Loads a level's settings: `concurrency` jobs in flight, the simulated provider, a budget that
/// never binds, quiet logs, no admin server, and no rate limits.
fn load_level(mut src: Sources, concurrency: usize) -> Result<Settings, String> {
    for (k, v) in [
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

/// A fresh scratch directory under the system's temporary directory.
pub(super) fn tempdir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("atlas-bench-{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or(0)));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}
