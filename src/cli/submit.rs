//! `submit`: enqueue one JSON message or JSON lines, claim-checking large inline inputs.

use std::io::{BufRead, Read};

use chrono::Utc;
use serde_json::{json, Value};

use crate::app;
use crate::job::{self, JobRecord};
use crate::settings::Settings;

use super::{fail, Cli, CliError, Output, EXIT_USAGE};

/// Turns one input line into a message body ready to send, uploading large inline inputs.
async fn prepare(app_backends: &crate::backend::Backends, raw: &str) -> Result<(String, String), String> {
    let mut v: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object_mut().ok_or("a message must be a JSON object")?;
    obj.remove("apiKey");
    obj.remove("api_key");
    let legacy = obj.contains_key("jobId") || obj.contains_key("params");
    if !legacy && !obj.contains_key("job_id") {
        obj.insert("job_id".into(), Value::String(job::JobId::generate().to_string()));
    }
    let mut body = serde_json::to_string(&v).map_err(|e| e.to_string())?;
    if body.len() > job::MAX_MESSAGE_BYTES && !legacy {
        // Claim check: move the large inline input to the artifacts store.
        let obj = v.as_object_mut().ok_or("a message must be a JSON object")?;
        let id = obj.get("job_id").and_then(Value::as_str).unwrap_or_default().to_string();
        job::JobId::parse(&id).map_err(|e| e.to_string())?;
        let input = obj.remove("html").or_else(|| obj.remove("text")).ok_or("message too large and has no html/text to move")?;
        let key = format!("inputs/{id}");
        let text = input.as_str().ok_or("html/text must be a string")?.to_string();
        app_backends.artifacts.put(&key, text.into_bytes(), "text/plain; charset=utf-8").await.map_err(|e| e.to_string())?;
        obj.insert("input_key".into(), Value::String(key));
        body = serde_json::to_string(&v).map_err(|e| e.to_string())?;
    }
    let parsed = job::parse_message(&body).map_err(|e| e.to_string())?;
    Ok((parsed.job_id.to_string(), body))
}

/// `submit`: validates every message first, then writes a `pending` record and enqueues each; prints the job ids.
pub(super) async fn submit(cli: &Cli, settings: Settings, file: Option<&str>) -> Result<(), CliError> {
    let mut input = String::new();
    match file {
        None | Some("-") => std::io::stdin().read_to_string(&mut input).map_err(fail)?,
        Some(f) => std::fs::File::open(f).and_then(|mut h| h.read_to_string(&mut input)).map_err(|e| fail(format!("{f}: {e}")))?,
    };
    let trimmed = input.trim();
    let lines: Vec<String> = if trimmed.starts_with('{') && serde_json::from_str::<Value>(trimmed).is_ok() {
        vec![trimmed.to_string()]
    } else {
        std::io::Cursor::new(&input).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).collect()
    };
    if lines.is_empty() {
        return Err(CliError::new(EXIT_USAGE, "no messages given"));
    }
    let backends = app::open_backends(&settings).await.map_err(fail)?;
    let bar = progress(lines.len() as u64, "submitting");
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        match prepare(&backends, line).await {
            Ok((id, body)) => {
                ids.push(id);
                bodies.push(body);
            }
            Err(e) => errors.push(format!("line {}: {e}", n + 1)),
        }
    }
    if !errors.is_empty() {
        bar.finish_and_clear();
        return Err(CliError::new(EXIT_USAGE, format!("nothing submitted; invalid messages:\n  {}", errors.join("\n  "))));
    }
    let now = Utc::now();
    for chunk in ids.chunks(100).zip(bodies.chunks(100)) {
        for id in chunk.0 {
            let rec = JobRecord::new(id, &settings.stage, now);
            backends.jobs.put_if_absent(&rec).await.map_err(fail)?;
        }
        backends.queue.send_batch(chunk.1).await.map_err(fail)?;
        bar.inc(chunk.0.len() as u64);
    }
    bar.finish_and_clear();
    match cli.output {
        Output::Json => outln!("{}", json!(ids)),
        Output::Table => ids.iter().for_each(|i| outln!("{i}")),
    }
    Ok(())
}

/// A progress bar on stderr for `n` items, hidden for fewer than 200.
fn progress(n: u64, what: &str) -> indicatif::ProgressBar {
    if n < 200 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}
