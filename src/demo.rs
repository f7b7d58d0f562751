//! `atlas-codex demo`: the main job end to end on the embedded `local` stage, from a fresh clone
//! with nothing else running. Serves the sample site shipped in `demo/pages/` from a local HTTP
//! server, enqueues `demo/jobs.jsonl`, runs the worker until the queue is drained, and prints a table.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use chrono::Utc;
use serde_json::json;

use crate::app::App;
use crate::job::{JobRecord, JobStatus};
use crate::settings::{Settings, Sources};
use crate::worker::RunOptions;

/// The sample site, compiled in so the demo works from any directory.
const PAGES: &[(&str, &str)] = &[
    ("index.html", include_str!("../demo/pages/index.html")),
    ("about.html", include_str!("../demo/pages/about.html")),
    ("products/summit-pack.html", include_str!("../demo/pages/products/summit-pack.html")),
    ("blog/ultralight.html", include_str!("../demo/pages/blog/ultralight.html")),
];
/// The sample jobs; `{BASE}` becomes the local server's address.
const JOBS: &str = include_str!("../demo/jobs.jsonl");

/// Serves the sample site on 127.0.0.1 (random port); returns its base URL.
pub async fn serve_sample_site() -> std::io::Result<String> {
    async fn page(Path(path): Path<String>) -> impl IntoResponse {
        match PAGES.iter().find(|(p, _)| *p == path) {
            Some((_, body)) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], *body).into_response(),
            None => (StatusCode::NOT_FOUND, "not found").into_response(),
        }
    }
    let app = axum::Router::new().route("/{*path}", get(page));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// Runs the demo; `json` prints the result table as JSON.
pub async fn run(json_out: bool) -> Result<(), String> {
    let mut src = Sources::from_env(Some("local".into()), None);
    src.env.insert("ATLAS__ADMIN__LISTEN".into(), String::new());
    src.env.insert("ATLAS__QUEUE__WAIT_TIME_SECS".into(), "1".into());
    src.env.insert("ATLAS__CRAWL__POLITENESS_DELAY_MS".into(), "100".into());
    let mut settings = Settings::load(&src).map_err(|e| e.to_string())?;
    // Simulated costs are not money: they go to a scratch ledger beside the stage's data, never
    // into the budget a real local worker spends from.
    let simulated = settings.uses_simulated_model();
    if simulated {
        settings.storage.data_dir = settings.storage.data_dir.join("demo-simulated");
    }
    crate::telemetry::init_tracing(&crate::settings::TelemetrySettings {
        log_level: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        ..settings.telemetry.clone()
    });
    let base = serve_sample_site().await.map_err(|e| format!("cannot serve the sample site: {e}"))?;
    let app = App::from_settings(settings).await?;
    let s: Arc<Settings> = app.settings.clone();
    eprintln!("Atlas Codex demo — stage `{}`, data in {}", s.stage, s.storage.data_dir.display());
    eprintln!("  sample site: {base}");
    eprintln!("  model provider: {}", app.provider);

    // Unique ids per run, so a second demo run does real work instead of finding duplicates.
    let run_id = Utc::now().format("%H%M%S").to_string();
    let mut ids = Vec::new();
    let mut bodies = Vec::new();
    for line in JOBS.lines().filter(|l| !l.trim().is_empty()) {
        let line = line.replace("{BASE}", &base).replace("\"demo-", &format!("\"demo{run_id}-"));
        let job = crate::job::parse_message(&line).map_err(|e| format!("sample job invalid: {e}"))?;
        let rec = JobRecord::new(job.job_id.as_str(), &s.stage, Utc::now());
        app.backends.jobs.put_if_absent(&rec).await.map_err(|e| e.to_string())?;
        ids.push(job.job_id.to_string());
        bodies.push(line);
    }
    app.backends.queue.send_batch(&bodies).await.map_err(|e| e.to_string())?;
    eprintln!("  enqueued {} jobs; running the worker until the queue is drained...\n", ids.len());
    let stats = app.run(RunOptions { exit_when_idle: true }, std::future::pending()).await?;

    let mut rows = Vec::new();
    for id in &ids {
        if let Ok(Some(r)) = app.backends.jobs.get(id).await {
            rows.push(r);
        }
    }
    if json_out {
        print_json(&app, &rows, simulated)?;
    } else {
        print_table(&app, &rows, simulated, &ids[0], &s.storage.data_dir);
    }
    let completed = rows.iter().filter(|r| r.status == JobStatus::Completed).count();
    if completed != ids.len() {
        return Err(format!("{} of {} demo jobs did not complete (worker stats: {stats:?})", ids.len() - completed, ids.len()));
    }
    Ok(())
}

/// Sums over the demo's records: input and output tokens, cost, time.
fn totals(rows: &[JobRecord]) -> (u64, u64, f64, u64) {
    let total_in: u64 = rows.iter().map(|r| r.usage.input_tokens).sum();
    let total_out: u64 = rows.iter().map(|r| r.usage.output_tokens).sum();
    let total_cost: f64 = rows.iter().map(|r| r.cost_usd()).sum();
    let total_ms: u64 = rows.iter().filter_map(|r| r.duration_ms).sum();
    (total_in, total_out, total_cost, total_ms)
}

/// The result table as JSON (`demo --json`).
fn print_json(app: &App, rows: &[JobRecord], simulated: bool) -> Result<(), String> {
    let (total_in, total_out, total_cost, total_ms) = totals(rows);
    let v: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "job_id": r.id, "status": r.status.as_str(), "model": r.model,
                "input_tokens": r.usage.input_tokens, "output_tokens": r.usage.output_tokens,
                "cost_usd": r.cost_usd(), "simulated": r.simulated, "duration_ms": r.duration_ms,
                "result": r.result_key.as_ref().map(|k| app.backends.artifacts.location(k)),
                "error": r.error.as_ref().map(|e| format!("{}: {}", e.kind, e.message)),
            })
        })
        .collect();
    let total = json!({"jobs": rows.len(), "input_tokens": total_in, "output_tokens": total_out, "cost_usd": total_cost, "simulated": simulated, "duration_ms": total_ms});
    outln!("{}", serde_json::to_string_pretty(&json!({"jobs": v, "total": total})).map_err(|e| e.to_string())?);
    Ok(())
}

/// The result table, then where to look next.
fn print_table(app: &App, rows: &[JobRecord], simulated: bool, first_id: &str, data_dir: &std::path::Path) {
    let (total_in, total_out, total_cost, total_ms) = totals(rows);
    let cost_head = if simulated { "SIM. USD" } else { "COST USD" };
    outln!("{:<28} {:<10} {:<12} {:>8} {:>8} {:>11} {:>9}", "JOB", "STATUS", "MODEL", "TOK IN", "TOK OUT", cost_head, "TIME");
    for r in rows {
        outln!(
            "{:<28} {:<10} {:<12} {:>8} {:>8} {:>11.6} {:>8}ms",
            r.id,
            r.status.as_str(),
            r.model.as_deref().unwrap_or("-"),
            r.usage.input_tokens,
            r.usage.output_tokens,
            r.cost_usd(),
            r.duration_ms.unwrap_or(0)
        );
        if let Some(e) = &r.error {
            outln!("    error: {}: {}", e.kind, e.message);
        }
    }
    outln!(
        "{:<28} {:<10} {:<12} {:>8} {:>8} {:>11.6} {:>8}ms",
        "TOTAL",
        format!("{} jobs", rows.len()),
        "",
        total_in,
        total_out,
        total_cost,
        total_ms
    );
    if simulated {
        outln!("Costs are simulated (no OPENAI_API_KEY): nothing was spent and the stage's budget is untouched.");
    }
    outln!();
    if let Some(k) = rows.iter().find_map(|r| r.result_key.as_ref()) {
        let loc = app.backends.artifacts.location(k);
        let dir = loc.rsplit_once("/jobs/").map(|(d, _)| format!("{d}/jobs/")).unwrap_or(loc);
        outln!("Results: {dir}<job_id>/result.json");
    }
    let env = if simulated { format!("ATLAS__STORAGE__DATA_DIR={} ", data_dir.display()) } else { String::new() };
    outln!("Status of one job: {env}cargo run --release -- status {}", first_id);
    if !simulated {
        outln!("Budget this month: cargo run --release -- budget");
    }
}
