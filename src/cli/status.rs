//! `status`: one job's record; and the job record helpers the demo and tests use.

use std::time::Duration;

use crate::app;
use crate::job::{self, JobRecord, JobStatus};
use crate::settings::Settings;

use super::{fail, Cli, CliError, Output, EXIT_NOT_FOUND, EXIT_USAGE};

/// `status`: prints one job's record (exit 3 when there is none).
pub(super) async fn status(cli: &Cli, settings: Settings, job_id: &str) -> Result<(), CliError> {
    job::JobId::parse(job_id).map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))?;
    let backends = app::open_backends(&settings).await.map_err(fail)?;
    let rec = backends
        .jobs
        .get(job_id)
        .await
        .map_err(fail)?
        .ok_or_else(|| CliError::new(EXIT_NOT_FOUND, format!("no job `{job_id}` in stage `{}`", settings.stage)))?;
    match cli.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&rec).map_err(fail)?),
        Output::Table => {
            outln!("job        {}", rec.id);
            outln!("status     {}", rec.status.as_str());
            if let Some(r) = &rec.pending_reason {
                outln!("waiting    {r}");
            }
            outln!("attempts   {}", rec.attempts);
            if let Some(m) = &rec.model {
                outln!("model      {m}");
            }
            if let Some(r) = &rec.route {
                outln!("route      {} ({}, score {}): {}", r.model, r.tier, r.score, r.reason);
            }
            outln!(
                "tokens     in {} (cached {}), out {} (reasoning {})",
                rec.usage.input_tokens,
                rec.usage.cached_input_tokens,
                rec.usage.output_tokens,
                rec.usage.reasoning_tokens
            );
            outln!("cost       ${:.6}", rec.cost_usd());
            if let Some(k) = &rec.result_key {
                outln!("result     {}", backends.artifacts.location(k));
            }
            if let Some(e) = &rec.error {
                outln!("error      {}: {}", e.kind, e.message);
            }
            if let Some(a) = &rec.announcement {
                let published = if a.published { "published" } else { "not yet published" };
                outln!("event      {} {} ({published})", a.event_type.as_str(), a.event_id);
                if let Some(w) = &a.webhook {
                    let status = w.last_status.map(|s| format!(", last HTTP {s}")).unwrap_or_default();
                    let error = w.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                    outln!("webhook    {} after {} POST(s){status} to {}{error}", w.state.as_str(), w.attempts, w.url);
                }
            }
            if rec.simulated {
                outln!("simulated  true");
            }
        }
    }
    Ok(())
}

/// Lists job records (used by the demo and tests).
pub async fn list_jobs(b: &crate::backend::Backends, status: Option<JobStatus>, limit: usize) -> Vec<JobRecord> {
    b.jobs.list(status, limit).await.unwrap_or_default()
}

/// Waits until every given job is terminal or the timeout passes.
pub async fn wait_terminal(b: &crate::backend::Backends, ids: &[String], timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut all = true;
        for id in ids {
            match b.jobs.get(id).await {
                Ok(Some(r)) if matches!(r.status, JobStatus::Completed | JobStatus::Failed) => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
