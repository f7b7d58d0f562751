//! The `atlas-codex` command line. Output is a table for people or JSON (`--output json`) for
//! scripts. Exit codes: 0 ok, 1 failure, 2 bad usage or invalid configuration, 3 not found.

use std::io::{BufRead, Read};
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::app::{self, App};
use crate::backend::{RedrivePlan, RedriveReport, RedriveSelect};
use crate::job::{self, JobRecord, JobStatus};
use crate::pricing::micros_to_usd;
use crate::settings::{check_isolation, Settings, Sources, KNOWN_STAGES};
use crate::worker::RunOptions;

/// Exit code for bad usage or invalid configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the thing asked about does not exist.
pub const EXIT_NOT_FOUND: i32 = 3;

/// Atlas Codex: a queue-driven LLM extraction worker.
#[derive(Debug, Parser)]
#[command(name = "atlas-codex", version, about, long_about = None)]
pub struct Cli {
    /// Deployment stage (local, preview, production); `STAGE` when absent, else `local`.
    #[arg(long, global = true, env = "STAGE")]
    pub stage: Option<String>,
    /// Extra config file layered over config/{stage}.toml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    Table,
    /// For scripts.
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: long-poll the stage's queue and process jobs until SIGTERM.
    Worker {
        /// Exit 0 once the queue is empty and nothing is in flight.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Enqueue jobs: one JSON message or JSON lines, from FILE or `-` (stdin). Prints one job id per line.
    Submit {
        /// Input file; `-` or absent reads stdin.
        file: Option<String>,
    },
    /// Show one job's record.
    Status {
        /// The job id.
        job_id: String,
    },
    /// Check configuration; with --all-stages, also that no two stages share a resource.
    Validate {
        /// Load every shipped stage and check isolation between them.
        #[arg(long)]
        all_stages: bool,
    },
    /// Show this month's budget: limit, spent, reserved, remaining, by model and tenant.
    Budget,
    /// Inspect or redrive the dead-letter queue.
    Dlq {
        /// What to do with the DLQ.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Create the stage's queue, DLQ, tables and bucket (idempotent; AWS stages).
    Provision,
    /// Run the sample jobs end to end on the embedded `local` stage.
    Demo,
    /// Measure throughput, CPU, latency and memory with a mock LLM, on the embedded backend or
    /// on AWS (an emulator such as moto), beside an optional Python baseline.
    Bench(crate::bench::BenchArgs),
    /// Serve the in-repo OpenAI-compatible mock on 127.0.0.1 (benchmarks, trying things out):
    /// prints its base URL, then serves until SIGTERM / Ctrl-C.
    #[command(hide = true)]
    MockOpenai {
        /// Latency of every answer, milliseconds.
        #[arg(long, default_value_t = 500)]
        latency_ms: u64,
    },
    /// Print a shell completion script (e.g. `atlas-codex completions bash > /etc/bash_completion.d/atlas-codex`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `atlas-codex man > atlas-codex.1`.
    Man,
}

/// DLQ actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List messages without consuming them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 10)]
        max: usize,
    },
    /// Move messages back to the queue: by default those that failed for a reason that may pass
    /// now (`receive_limit`, `retries_exhausted`); permanent failures stay unless named. Looks at
    /// no more messages than the DLQ held when it started, so it ends even while a worker
    /// dead-letters them again.
    Redrive {
        /// At most this many (all selected when absent).
        #[arg(long)]
        max: Option<u64>,
        /// Only failures of this kind (repeatable; e.g. `model_forbidden`, `receive_limit`).
        #[arg(long = "reason", value_name = "KIND", conflicts_with = "all")]
        reasons: Vec<String>,
        /// Every message, permanent failures included.
        #[arg(long)]
        all: bool,
        /// Only say what would move.
        #[arg(long)]
        dry_run: bool,
    },
}

/// An error with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl CliError {
    fn new(code: i32, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into() }
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::new(1, e.to_string())
}

/// Writes one line of command output (see `outln!`): a closed stdout ends the process with
/// exit 0, any other write error with exit 1 and one line on stderr.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Loads settings for the CLI's stage, mapping problems to exit code 2.
pub fn load_settings(cli: &Cli) -> Result<Settings, CliError> {
    Settings::load(&Sources::from_env(cli.stage.clone(), cli.config.clone())).map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Validate { all_stages } => validate(&cli, *all_stages),
        Command::Demo => crate::demo::run(cli.output == Output::Json).await.map_err(fail),
        Command::Bench(args) => crate::bench::run(args.clone(), cli.output == Output::Json).await.map_err(fail),
        Command::MockOpenai { latency_ms } => crate::bench::serve_mock(*latency_ms).await.map_err(fail),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut <Cli as clap::CommandFactory>::command(), "atlas-codex", &mut out);
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(())
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out).map_err(fail)?;
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(())
        }
        _ => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init_tracing(&settings.telemetry);
            match &cli.command {
                Command::Worker { exit_when_idle } => worker(settings, *exit_when_idle).await,
                Command::Submit { file } => submit(&cli, settings, file.as_deref()).await,
                Command::Status { job_id } => status(&cli, settings, job_id).await,
                Command::Budget => budget(&cli, settings).await,
                Command::Dlq { action } => dlq(&cli, settings, action).await,
                Command::Provision => provision(&cli, settings).await,
                _ => unreachable!("handled above"),
            }
        }
    }
}

async fn worker(settings: Settings, exit_when_idle: bool) -> Result<(), CliError> {
    // Refuses a preview/production worker without a key (`worker_problems`): exit 2, one line.
    let (llm, provider) = app::build_llm(&settings).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    crate::telemetry::install_metrics(&settings.metrics_namespace());
    // Listening first: while the backends are unreachable the pod is alive and visibly unready.
    let health = std::sync::Arc::new(crate::admin::Health::new());
    let admin = app::AdminServer::start(&settings.admin.listen, health.clone()).await.map_err(fail)?;
    let shutdown = app::Shutdown::on_signal();
    let opened = app::open_backends_patiently(&settings, &shutdown).await;
    let result = match opened {
        Ok(Some(backends)) => match App::new(std::sync::Arc::new(settings), backends, llm, provider) {
            Ok(app) => {
                let app = app.with_health(health);
                tracing::info!(provider = %app.provider, "starting");
                let stop = shutdown.clone();
                let stats = app.work(RunOptions { exit_when_idle }, async move { stop.wait().await }).await;
                tracing::info!(received = stats.received, completed = stats.completed, failed = stats.failed, "done");
                Ok(())
            }
            Err(e) => Err(fail(e)),
        },
        Ok(None) => {
            tracing::info!("shutdown before the backends answered");
            Ok(())
        }
        Err(e) => Err(fail(e)),
    };
    if let Some(a) = admin {
        a.stop().await;
    }
    result
}

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

async fn submit(cli: &Cli, settings: Settings, file: Option<&str>) -> Result<(), CliError> {
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

async fn status(cli: &Cli, settings: Settings, job_id: &str) -> Result<(), CliError> {
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

fn validate(cli: &Cli, all_stages: bool) -> Result<(), CliError> {
    let stages: Vec<String> = if all_stages {
        KNOWN_STAGES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![cli.stage.clone().unwrap_or_else(|| "local".into())]
    };
    let mut loaded = Vec::new();
    let mut problems: Vec<Value> = Vec::new();
    for st in &stages {
        let mut src = Sources::from_env(Some(st.clone()), cli.config.clone());
        if all_stages {
            // Each stage as its own deployment would see it: no process-wide seed overrides.
            for v in ["STAGE", "GPT5_ENABLED", "FORCE_GPT4", "DEFAULT_MODEL_STRATEGY", "MONTHLY_BUDGET"] {
                src.env.remove(v);
            }
        }
        match Settings::load(&src) {
            Ok(s) => loaded.push(s),
            Err(e) => problems.extend(e.problems.iter().map(|p| json!({"stage": st, "problem": p}))),
        }
    }
    let clashes = if all_stages { check_isolation(&loaded) } else { Vec::new() };
    for c in &clashes {
        problems.push(json!({"stage": c.stages.join(","), "problem": format!("{} `{}` is shared by or names stages {}", c.what, c.name, c.stages.join(" and "))}));
    }
    let ok = problems.is_empty();
    // What would stop a worker here but not the configuration (the provider key lives in a Secret
    // a deploy pipeline does not have): reported, not failed.
    let warnings: Vec<Value> = loaded
        .iter()
        .flat_map(|s| {
            s.worker_problems().into_iter().map(|p| json!({"stage": s.stage, "problem": format!("the worker would refuse to start: {p}")}))
        })
        .collect();
    match cli.output {
        Output::Json => {
            let resources: Vec<Value> = loaded
                .iter()
                .map(|s| json!({"stage": s.stage, "resources": s.resource_names().into_iter().map(|(k, v)| (k.replace(' ', "_"), Value::String(v))).collect::<serde_json::Map<_, _>>()}))
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"ok": ok, "stages": stages, "problems": problems, "warnings": warnings, "resources": resources})
                )
                .map_err(fail)?
            );
        }
        Output::Table => {
            for s in &loaded {
                outln!("stage {}: ok", s.stage);
                for (k, v) in s.resource_names() {
                    outln!("  {k:<18} {v}");
                }
            }
            for w in &warnings {
                eprintln!("warning [{}]: {}", w["stage"].as_str().unwrap_or(""), w["problem"].as_str().unwrap_or(""));
            }
            for p in &problems {
                eprintln!("error [{}]: {}", p["stage"].as_str().unwrap_or(""), p["problem"].as_str().unwrap_or(""));
            }
        }
    }
    if ok {
        Ok(())
    } else {
        Err(CliError::new(EXIT_USAGE, format!("{} problem(s) found", problems.len())))
    }
}

async fn budget(cli: &Cli, settings: Settings) -> Result<(), CliError> {
    let backends = app::open_backends(&settings).await.map_err(fail)?;
    let now = Utc::now();
    let period = crate::budget::period(now);
    let snap = backends.ledger.snapshot(&period, now).await.map_err(fail)?;
    let limit = settings.budget_limit_micros();
    let remaining = (limit - snap.spent_micros - snap.reserved_micros).max(0);
    let by = |m: &std::collections::BTreeMap<String, i64>| {
        m.iter().map(|(k, v)| (k.clone(), json!(micros_to_usd(*v)))).collect::<serde_json::Map<_, _>>()
    };
    match cli.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "stage": settings.stage, "period": period,
                "limit_usd": micros_to_usd(limit), "spent_usd": micros_to_usd(snap.spent_micros),
                "reserved_usd": micros_to_usd(snap.reserved_micros), "remaining_usd": micros_to_usd(remaining),
                "by_model": by(&snap.by_model), "by_tenant": by(&snap.by_tenant),
            }))
            .map_err(fail)?
        ),
        Output::Table => {
            outln!("stage {}  period {period}", settings.stage);
            outln!("  limit      ${:>12.6}", micros_to_usd(limit));
            outln!("  spent      ${:>12.6}", micros_to_usd(snap.spent_micros));
            outln!("  reserved   ${:>12.6}", micros_to_usd(snap.reserved_micros));
            outln!("  remaining  ${:>12.6}", micros_to_usd(remaining));
            outln!("by model:");
            for (m, v) in &snap.by_model {
                outln!("  {m:<20} ${:>12.6}", micros_to_usd(*v));
            }
            outln!("by tenant:");
            for (t, v) in &snap.by_tenant {
                outln!("  {t:<20} ${:>12.6}", micros_to_usd(*v));
            }
        }
    }
    Ok(())
}

async fn dlq(cli: &Cli, settings: Settings, action: &DlqAction) -> Result<(), CliError> {
    let backends = app::open_backends(&settings).await.map_err(fail)?;
    match action {
        DlqAction::List { max } => {
            let items = backends.queue.dlq_peek(*max).await.map_err(fail)?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&items).map_err(fail)?),
                Output::Table => {
                    if items.is_empty() {
                        outln!("the DLQ {} is empty", settings.dlq_name());
                    }
                    for d in &items {
                        let id = job::salvage_job_id(&d.body).map(|j| j.to_string()).unwrap_or_else(|| "-".into());
                        outln!(
                            "{:<36} job {:<24} receives {:<3} {}",
                            d.message_id,
                            id,
                            d.receive_count,
                            d.reason.as_deref().unwrap_or("(redrive policy)")
                        );
                    }
                }
            }
        }
        DlqAction::Redrive { max, reasons, all, dry_run } => {
            let select = if *all {
                RedriveSelect::All
            } else if reasons.is_empty() {
                RedriveSelect::Retryable
            } else {
                RedriveSelect::Kinds(reasons.iter().cloned().collect())
            };
            let held = backends.queue.depth().await.map_err(fail)?.dead_letters;
            let plan = RedrivePlan { examine: held, max_moved: max.unwrap_or(u64::MAX), select };
            let report = if *dry_run {
                let mut r = RedriveReport::default();
                for d in backends.queue.dlq_peek(usize::try_from(held).unwrap_or(usize::MAX)).await.map_err(fail)? {
                    let take = plan.admits(r.moved_total(), d.kind());
                    r.count(d.kind(), take);
                }
                r
            } else {
                backends.queue.dlq_redrive(&plan).await.map_err(fail)?
            };
            print_redrive(cli.output, &settings, &report, *dry_run);
        }
    }
    Ok(())
}

fn print_redrive(output: Output, settings: &Settings, report: &RedriveReport, dry_run: bool) {
    let by_kind = |m: &std::collections::BTreeMap<String, u64>| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    match output {
        Output::Json => outln!(
            "{}",
            json!({"dry_run": dry_run, "moved": report.moved_total(), "examined": report.examined(), "moved_by_kind": report.moved, "left_by_kind": report.left})
        ),
        Output::Table => {
            let verb = if dry_run { "would move" } else { "moved" };
            let n = report.moved_total();
            let detail = if n > 0 { format!(" ({})", by_kind(&report.moved)) } else { String::new() };
            outln!("{verb} {n} message(s) from {} back to {}{detail}", settings.dlq_name(), settings.queue_name());
            if !report.left.is_empty() {
                let left: u64 = report.left.values().sum();
                outln!("left {left} in the DLQ ({}); name a kind with --reason KIND, or --all, to move them", by_kind(&report.left));
            }
        }
    }
}

async fn provision(cli: &Cli, settings: Settings) -> Result<(), CliError> {
    if settings.storage.backend == crate::settings::BackendKind::Sqlite {
        let _ = app::open_backends(&settings).await.map_err(fail)?;
        outln!("stage {} uses the embedded backend under {}; nothing to provision", settings.stage, settings.storage.data_dir.display());
        return Ok(());
    }
    let report = crate::backend::aws::provision::provision(&settings).await.map_err(fail)?;
    match cli.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&report).map_err(fail)?),
        Output::Table => outln!("{report}"),
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
