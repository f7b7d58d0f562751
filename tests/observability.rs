//! Observability: the admin server's endpoints, the metrics the telemetry functions export (names,
//! help text, histogram buckets, values), and promtool's verdict on the exposition text.
//!
//! The recorder is process-global. Under nextest each test is its own process; under `cargo test`
//! they share one, so tests that assert on shared series hold `SHARED` and use labels of their own.

// Only the metrics parser of tests/support is needed; including it alone keeps this test
// independent of the other support modules (which need the whole worker).
#[path = "support/metrics.rs"]
#[allow(dead_code)]
mod metrics_support;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use atlas_codex::admin::{self, Health};
use atlas_codex::job::{CallOutcome, Usage};
use atlas_codex::telemetry::{self, names, Outcome};
use metrics_support::{has_help_and_type, metric_value, parse, sum_metric};

const STAGE: &str = "obs-test";

static SHARED: Mutex<()> = Mutex::new(());

fn shared() -> MutexGuard<'static, ()> {
    SHARED.lock().unwrap_or_else(|p| p.into_inner())
}

struct Server {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(health: Arc<Health>) -> Server {
    telemetry::install_metrics(STAGE);
    let listener = admin::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(admin::serve(listener, health, async move {
        let _ = rx.await;
    }));
    Server { base: format!("http://{addr}"), stop: Some(tx), task }
}

impl Server {
    async fn get(&self, path: &str) -> (u16, String, String) {
        let r = reqwest::get(format!("{}{path}", self.base)).await.expect("request");
        let status = r.status().as_u16();
        let ct = r.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        (status, ct, r.text().await.expect("body"))
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops within 5 s of shutdown")
            .expect("server task did not panic");
        assert!(res.is_ok(), "serve returned {res:?}");
    }
}

#[tokio::test]
async fn healthz_is_ok_and_unknown_paths_are_404() {
    let health = Arc::new(Health::new());
    let t0 = Instant::now();
    let srv = start(health).await;
    let (status, _, body) = srv.get("/healthz").await;
    let first_answer = t0.elapsed();
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "ok");
    assert!(first_answer < Duration::from_millis(200), "first /healthz after {first_answer:?}");
    for path in ["/", "/nope", "/metrics/extra", "/healthz/x", "/readyz2"] {
        let (status, _, _) = srv.get(path).await;
        assert_eq!(status, 404, "{path}");
    }
    srv.shutdown().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)] // one runtime per test; the lock only orders tests
async fn readyz_follows_backends_and_draining() {
    let _g = shared();
    let health = Arc::new(Health::new());
    let srv = start(health.clone()).await;

    // New: backends not yet known to answer.
    let (status, _, body) = srv.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("backends"), "{body}");
    assert!(!health.is_ready());

    health.set_backends_ok(true);
    let (status, _, body) = srv.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(health.is_ready());
    assert_eq!(metric_value(&telemetry::render_metrics(), names::WORKER_READY, &[]), 1.0);

    health.set_backends_ok(false);
    let (status, _, _) = srv.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(metric_value(&telemetry::render_metrics(), names::WORKER_READY, &[]), 0.0);

    health.set_backends_ok(true);
    health.set_draining();
    let (status, _, body) = srv.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert!(!health.is_ready());
    assert_eq!(metric_value(&telemetry::render_metrics(), names::WORKER_READY, &[]), 0.0);
    // Liveness is unaffected by draining.
    assert_eq!(srv.get("/healthz").await.0, 200);
    srv.shutdown().await;
}

#[tokio::test]
#[allow(clippy::await_holding_lock)] // one runtime per test; the lock only orders tests
async fn readyz_fails_while_receives_fail_or_one_hangs_past_the_long_poll() {
    let _g = shared();
    let health = Arc::new(Health::new());
    health.set_long_poll(Duration::ZERO); // stalled after the grace alone
    let srv = start(health.clone()).await;
    health.set_backends_ok(true);
    health.receive_started();
    health.receive_finished(false);
    let (status, _, body) = srv.get("/readyz").await;
    assert_eq!((status, body.trim()), (503, "not ready: receive failing"));
    assert_eq!(metric_value(&telemetry::render_metrics(), names::WORKER_READY, &[]), 0.0);
    health.receive_started();
    health.receive_finished(true);
    assert_eq!(srv.get("/readyz").await.0, 200);
    // A receive that does not come back: ready within the grace, then not.
    health.receive_started();
    assert!(health.is_ready());
    tokio::time::sleep(atlas_codex::admin::RECEIVE_STALL_GRACE + Duration::from_millis(300)).await;
    let (status, _, body) = srv.get("/readyz").await;
    assert_eq!((status, body.trim()), (503, "not ready: receive stalled"));
    health.refresh();
    assert_eq!(metric_value(&telemetry::render_metrics(), names::WORKER_READY, &[]), 0.0, "the monitor's refresh updates the gauge");
    health.receive_finished(true);
    assert!(health.is_ready());
    srv.shutdown().await;
}

#[test]
fn metrics_carry_the_processs_cpu_memory_and_file_descriptors_in_the_standard_names() {
    let _g = shared();
    telemetry::install_metrics(STAGE);
    let before = telemetry::process::read().expect("/proc is readable on Linux");
    let burn: u64 = (0..30_000_000u64).fold(0, |a, i| a.wrapping_add(i * i));
    assert!(burn > 0);
    let files: Vec<std::fs::File> = (0..20).map(|_| std::fs::File::open("/proc/self/stat").unwrap()).collect();
    let text = telemetry::render_metrics();
    let after = telemetry::process::read().unwrap();
    assert!(after.cpu_seconds >= before.cpu_seconds);
    assert!(after.open_fds >= before.open_fds + 20, "{before:?} → {after:?}");
    drop(files);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} ")), "{name} described");
    }
    assert!(metric_value(&text, "process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(metric_value(&text, "process_open_fds", &[]) >= 20.0);
    let started = metric_value(&text, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(started <= now + 1.0 && started > now - 3600.0, "started {started}, now {now}");
}

#[tokio::test]
#[allow(clippy::await_holding_lock)] // one runtime per test; the lock only orders tests
async fn metrics_endpoint_serves_prometheus_text() {
    let _g = shared();
    let srv = start(Arc::new(Health::new())).await;
    telemetry::messages_received(1);
    let (status, ct, body) = srv.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "content type {ct}");
    assert!(has_help_and_type(&body, names::MESSAGES_RECEIVED_TOTAL, "counter"), "{body}");
    assert!(has_help_and_type(&body, names::BUILD_INFO, "gauge"), "{body}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(metric_value(&body, names::BUILD_INFO, &[("version", version), ("stage", STAGE)]), 1.0);
    assert!(metric_value(&body, names::MESSAGES_RECEIVED_TOTAL, &[("stage", STAGE)]) >= 1.0);
    srv.shutdown().await;
}

/// Calls every telemetry function, then checks each series, its help/type, buckets and values.
#[test]
fn telemetry_functions_export_described_series() {
    let _g = shared();
    telemetry::install_metrics(STAGE);
    // A second install is a no-op returning the same recorder (idempotent).
    telemetry::install_metrics("ignored-second-label");

    let before = telemetry::render_metrics();
    let done_before = metric_value(&before, names::JOBS_TOTAL, &[("outcome", "completed"), ("reason", "ok")]);
    let recv_before = metric_value(&before, names::MESSAGES_RECEIVED_TOTAL, &[]);
    let del_before = metric_value(&before, names::MESSAGES_DELETED_TOTAL, &[]);
    let vis_before = metric_value(&before, names::VISIBILITY_EXTENSIONS_TOTAL, &[]);
    let inflight_before = metric_value(&before, names::JOBS_IN_FLIGHT, &[]);

    telemetry::job_started(Some(Duration::from_millis(1500)));
    telemetry::job_started(None);
    let t = telemetry::render_metrics();
    assert_eq!(metric_value(&t, names::JOBS_IN_FLIGHT, &[]), inflight_before + 2.0);
    telemetry::job_outcome("job-obs-1", Outcome::Completed, "ok", Duration::from_millis(700), None);
    telemetry::job_finished();
    telemetry::job_outcome(
        "job-obs-2",
        Outcome::DeadLettered,
        "obs_ssrf_blocked",
        Duration::from_millis(30),
        Some("target is a private address"),
    );
    telemetry::job_finished();
    telemetry::messages_received(7);
    telemetry::messages_deleted(5);
    telemetry::visibility_extended();
    telemetry::visibility_extended();

    let usage = Usage { input_tokens: 1000, cached_input_tokens: 200, output_tokens: 300, reasoning_tokens: 50 };
    telemetry::llm_request("obs-model-a", CallOutcome::Ok, Duration::from_millis(800), Some(&usage), 1_250_000);
    telemetry::llm_request("obs-model-a", CallOutcome::Ok, Duration::from_millis(1200), Some(&usage), 250_001);
    telemetry::llm_request("obs-model-a", CallOutcome::RateLimited, Duration::from_millis(40), None, 0);
    telemetry::llm_request("obs-model-a", CallOutcome::Length, Duration::from_millis(40), None, -5);
    telemetry::route_decision("obs-tier", "score");
    telemetry::route_decision("obs-tier", "made-up");
    telemetry::input_chunked(5);
    telemetry::input_chunked(2);
    telemetry::escalation("obs-model-a", "obs-model-b");
    telemetry::fallback("obs-model-b", "obs-model-c");
    telemetry::ratelimit_wait("obs-model-a", Duration::from_millis(1500));
    telemetry::ratelimit_wait("obs-model-a", Duration::from_micros(250));
    telemetry::ratelimit_wait("obs-model-z", Duration::ZERO);
    telemetry::budget_snapshot(100_000_000, 79_500_000, 1_250_000);
    telemetry::queue_depth(&atlas_codex::backend::QueueDepth { visible: 4, in_flight: 3, delayed: 2, dead_letters: 1 });

    let text = telemetry::render_metrics();
    parse(&text).expect("rendered text parses");

    // Every catalogued metric is described with help text and the right type.
    for (name, kind) in [
        (names::JOBS_TOTAL, "counter"),
        (names::JOB_DURATION_SECONDS, "histogram"),
        (names::JOB_QUEUE_WAIT_SECONDS, "histogram"),
        (names::JOBS_IN_FLIGHT, "gauge"),
        (names::MESSAGES_RECEIVED_TOTAL, "counter"),
        (names::MESSAGES_DELETED_TOTAL, "counter"),
        (names::VISIBILITY_EXTENSIONS_TOTAL, "counter"),
        (names::LLM_REQUESTS_TOTAL, "counter"),
        (names::LLM_REQUEST_DURATION_SECONDS, "histogram"),
        (names::LLM_TOKENS_TOTAL, "counter"),
        (names::LLM_COST_USD_TOTAL, "counter"),
        (names::BUDGET_LIMIT_USD, "gauge"),
        (names::BUDGET_SPENT_USD, "gauge"),
        (names::BUDGET_RESERVED_USD, "gauge"),
        (names::BUDGET_REMAINING_USD, "gauge"),
        (names::RATELIMIT_WAITS_TOTAL, "counter"),
        (names::RATELIMIT_WAIT_SECONDS_TOTAL, "counter"),
        (names::ROUTE_DECISIONS_TOTAL, "counter"),
        (names::LLM_ESCALATIONS_TOTAL, "counter"),
        (names::LLM_FALLBACKS_TOTAL, "counter"),
        (names::LLM_CHUNKED_INPUTS_TOTAL, "counter"),
        (names::LLM_INPUT_CHUNKS_TOTAL, "counter"),
        (names::QUEUE_MESSAGES, "gauge"),
        (names::WORKER_READY, "gauge"),
        (names::BUILD_INFO, "gauge"),
    ] {
        assert!(has_help_and_type(&text, name, kind), "{name} lacks HELP or TYPE {kind}:\n{text}");
    }

    // Every series carries the stage label, and no job id leaks into the metrics.
    for s in parse(&text).expect("parses") {
        assert_eq!(s.labels.get("stage").map(String::as_str), Some(STAGE), "{s:?}");
    }
    assert!(!text.contains("job-obs-1") && !text.contains("job-obs-2"));

    // Jobs.
    assert_eq!(metric_value(&text, names::JOBS_TOTAL, &[("outcome", "completed"), ("reason", "ok")]), done_before + 1.0);
    assert_eq!(metric_value(&text, names::JOBS_TOTAL, &[("outcome", "dead_lettered"), ("reason", "obs_ssrf_blocked")]), 1.0);
    assert_eq!(metric_value(&text, names::JOBS_IN_FLIGHT, &[]), inflight_before);
    assert_eq!(metric_value(&text, names::MESSAGES_RECEIVED_TOTAL, &[]), recv_before + 7.0);
    assert_eq!(metric_value(&text, names::MESSAGES_DELETED_TOTAL, &[]), del_before + 5.0);
    assert_eq!(metric_value(&text, names::VISIBILITY_EXTENSIONS_TOTAL, &[]), vis_before + 2.0);

    // Histograms export as histograms with the configured buckets (not summaries).
    let dl = [("outcome", "dead_lettered")];
    assert_eq!(metric_value(&text, "atlas_job_duration_seconds_count", &dl), 1.0);
    assert!((metric_value(&text, "atlas_job_duration_seconds_sum", &dl) - 0.03).abs() < 1e-9);
    assert_eq!(metric_value(&text, "atlas_job_duration_seconds_bucket", &[("outcome", "dead_lettered"), ("le", "0.05")]), 1.0);
    assert_eq!(metric_value(&text, "atlas_job_duration_seconds_bucket", &[("outcome", "dead_lettered"), ("le", "+Inf")]), 1.0);
    for le in telemetry::JOB_DURATION_BUCKETS {
        let le = le.to_string();
        assert!(text.contains(&format!("le=\"{le}\"")), "bucket le={le} missing for job duration:\n{text}");
    }
    assert!(!text.contains("quantile="), "a histogram rendered as a summary:\n{text}");
    let m = [("model", "obs-model-a")];
    assert_eq!(metric_value(&text, "atlas_llm_request_duration_seconds_count", &m), 4.0);
    assert_eq!(metric_value(&text, "atlas_llm_request_duration_seconds_bucket", &[("model", "obs-model-a"), ("le", "1")]), 3.0);
    assert!(metric_value(&text, "atlas_job_queue_wait_seconds_count", &[]) >= 1.0);

    // Long inputs: how many, and in how many chunks.
    assert_eq!(metric_value(&text, names::LLM_CHUNKED_INPUTS_TOTAL, &[]), 2.0);
    assert_eq!(metric_value(&text, names::LLM_INPUT_CHUNKS_TOTAL, &[]), 7.0);
    // Model calls: statuses are a closed set (a `length` answer counted as itself, not as
    // `other`); tokens by kind; exact cost in USD.
    assert_eq!(metric_value(&text, names::LLM_REQUESTS_TOTAL, &[("model", "obs-model-a"), ("status", "ok")]), 2.0);
    assert_eq!(metric_value(&text, names::LLM_REQUESTS_TOTAL, &[("model", "obs-model-a"), ("status", "rate_limited")]), 1.0);
    assert_eq!(metric_value(&text, names::LLM_REQUESTS_TOTAL, &[("model", "obs-model-a"), ("status", "length")]), 1.0);
    for (kind, n) in [("input", 2000.0), ("cached_input", 400.0), ("output", 600.0), ("reasoning", 100.0)] {
        assert_eq!(metric_value(&text, names::LLM_TOKENS_TOTAL, &[("model", "obs-model-a"), ("kind", kind)]), n, "{kind}");
    }
    assert_eq!(metric_value(&text, names::LLM_COST_USD_TOTAL, &m), 1.500001);
    assert!(text.contains("atlas_llm_cost_usd_total{stage=\"obs-test\",model=\"obs-model-a\"} 1.500001\n"));

    // Routing, escalation, fallback.
    assert_eq!(metric_value(&text, names::ROUTE_DECISIONS_TOTAL, &[("tier", "obs-tier"), ("reason", "score")]), 1.0);
    assert_eq!(metric_value(&text, names::ROUTE_DECISIONS_TOTAL, &[("tier", "obs-tier"), ("reason", "other")]), 1.0);
    assert_eq!(metric_value(&text, names::LLM_ESCALATIONS_TOTAL, &[("from_model", "obs-model-a"), ("to_model", "obs-model-b")]), 1.0);
    assert_eq!(metric_value(&text, names::LLM_FALLBACKS_TOTAL, &[("from_model", "obs-model-b"), ("to_model", "obs-model-c")]), 1.0);

    // Rate-limit waits: zero waits are not counted.
    assert_eq!(metric_value(&text, names::RATELIMIT_WAITS_TOTAL, &m), 2.0);
    assert_eq!(metric_value(&text, names::RATELIMIT_WAIT_SECONDS_TOTAL, &m), 1.50025);
    assert_eq!(sum_metric(&text, names::RATELIMIT_WAITS_TOTAL, &[("model", "obs-model-z")]), 0.0);

    // Budget in USD, remaining = limit - spent - reserved.
    assert_eq!(metric_value(&text, names::BUDGET_LIMIT_USD, &[]), 100.0);
    assert_eq!(metric_value(&text, names::BUDGET_SPENT_USD, &[]), 79.5);
    assert_eq!(metric_value(&text, names::BUDGET_RESERVED_USD, &[]), 1.25);
    assert_eq!(metric_value(&text, names::BUDGET_REMAINING_USD, &[]), 19.25);

    // Queue depth by state.
    for (state, n) in [("visible", 4.0), ("in_flight", 3.0), ("delayed", 2.0), ("dead_letter", 1.0)] {
        assert_eq!(metric_value(&text, names::QUEUE_MESSAGES, &[("state", state)]), n, "{state}");
    }
}

/// `promtool check metrics` lints the exposition text (naming, units, types, syntax).
#[test]
fn promtool_accepts_the_exposition() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let _g = shared();
    telemetry::install_metrics(STAGE);
    // Make sure every kind of series exists.
    let usage = Usage { input_tokens: 10, cached_input_tokens: 0, output_tokens: 5, reasoning_tokens: 0 };
    telemetry::job_started(Some(Duration::from_secs(2)));
    telemetry::job_outcome("promtool-job", Outcome::Retried, "llm_timeout", Duration::from_secs(3), Some("timed out"));
    telemetry::job_finished();
    telemetry::llm_request("promtool-model", CallOutcome::Timeout, Duration::from_secs(3), Some(&usage), 42);
    telemetry::route_decision("nano", "forced");
    telemetry::escalation("promtool-model", "promtool-model-2");
    telemetry::fallback("promtool-model", "promtool-model-3");
    telemetry::ratelimit_wait("promtool-model", Duration::from_millis(10));
    telemetry::budget_snapshot(1_000_000, 10, 20);
    telemetry::queue_depth(&Default::default());
    telemetry::set_ready(true);
    let text = telemetry::render_metrics();

    let child =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("CI").is_some() {
                panic!("promtool is not installed, and CI must run this check (scripts/install-tools.sh installs it)");
            }
            eprintln!("\n!!!!!! SKIPPED: promtool not found; `apt-get install prometheus` to run this check !!!!!!\n");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}\n--- text ---\n{text}");
}

/// Not a test on its own: the body of the logging tests below, run in a child process (the global
/// subscriber can be installed only once per process). Does nothing unless `ATLAS_OBS_CHILD` is set.
#[test]
fn child_process_logging_body() {
    let Ok(format) = std::env::var("ATLAS_OBS_CHILD") else { return };
    let t = atlas_codex::settings::TelemetrySettings {
        log_format: if format == "json" { atlas_codex::settings::LogFormat::Json } else { atlas_codex::settings::LogFormat::Pretty },
        log_level: "info".into(),
        metrics_namespace: String::new(),
    };
    telemetry::init_tracing(&t);
    telemetry::init_tracing(&t); // a second call must not panic
    telemetry::install_metrics(STAGE);
    telemetry::job_outcome("child-job-ok", Outcome::Completed, "ok", Duration::from_millis(1234), None);
    telemetry::job_outcome("child-job-retry", Outcome::Retried, "llm_timeout", Duration::from_millis(5), Some("model timed out"));
    telemetry::job_outcome(
        "child-job-dlq",
        Outcome::DeadLettered,
        "ssrf_blocked",
        Duration::from_millis(7),
        Some("upstream said: invalid key sk-test-0123456789abcdefghijKLMN"),
    );
}

fn run_child(format: &str, rust_log: Option<&str>) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", "child_process_logging_body", "--nocapture", "--test-threads", "1"])
        .env("ATLAS_OBS_CHILD", format)
        .env_remove("RUST_LOG");
    if let Some(f) = rust_log {
        cmd.env("RUST_LOG", f);
    }
    let out = cmd.output().expect("run the child");
    assert!(out.status.success(), "child failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every job outcome is one JSON line on stderr with its fields, at the level its outcome implies.
#[test]
fn job_outcome_logs_one_json_event_per_outcome() {
    let stderr = run_child("json", None);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "job outcome")
        .collect();
    assert_eq!(events.len(), 3, "stderr:\n{stderr}");
    let by_id = |id: &str| events.iter().find(|e| e["job_id"] == id).unwrap_or_else(|| panic!("no event for {id}:\n{stderr}"));
    let ok = by_id("child-job-ok");
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["outcome"], "completed");
    assert_eq!(ok["reason"], "ok");
    assert_eq!(ok["duration_ms"], 1234);
    assert!(ok.get("error").is_none(), "{ok}");
    let retry = by_id("child-job-retry");
    assert_eq!(retry["level"], "WARN");
    assert_eq!(retry["reason"], "llm_timeout");
    assert_eq!(retry["error"], "model timed out");
    let dlq = by_id("child-job-dlq");
    assert_eq!(dlq["level"], "ERROR");
    assert_eq!(dlq["outcome"], "dead_lettered");
    // A key-like token in an error never reaches the logs.
    assert_eq!(dlq["error"], "upstream said: invalid key [redacted]");
    assert!(!stderr.contains("sk-test-0123456789"), "{stderr}");
}

/// `RUST_LOG` wins over `telemetry.log_level`; the pretty format is not JSON.
#[test]
fn rust_log_overrides_the_configured_level_and_pretty_is_human() {
    let stderr = run_child("json", Some("error"));
    assert!(!stderr.contains("child-job-ok") && !stderr.contains("child-job-retry"), "{stderr}");
    assert!(stderr.contains("child-job-dlq"), "{stderr}");

    let pretty = run_child("pretty", None);
    let line = pretty.lines().find(|l| l.contains("child-job-ok")).unwrap_or_else(|| panic!("{pretty}"));
    assert!(serde_json::from_str::<serde_json::Value>(line).is_err(), "pretty line is JSON: {line}");
    assert!(line.contains("INFO") && line.contains("outcome"), "{line}");
}

#[tokio::test]
async fn the_admin_server_cuts_half_sent_requests_caps_connections_and_never_holds_up_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = start(Arc::new(Health::new())).await;
    let addr = srv.base.trim_start_matches("http://").to_string();
    // A half-sent request is closed after the header timeout.
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(admin::HEADER_READ_TIMEOUT + Duration::from_secs(3), half.read(&mut buf)).await;
    assert!(closed.is_ok(), "a half-sent request held its connection past the header timeout");
    println!("half-sent request closed after {:?}", t0.elapsed());
    // More connections than the cap: the extra ones are closed at once, the server keeps serving
    // once the holders go.
    let mut held = Vec::new();
    for _ in 0..admin::MAX_ADMIN_CONNECTIONS {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never finished
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await.expect("over the cap: closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "over the cap a connection is closed: {n:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(srv.get("/healthz").await.0, 200);
    // Shutdown with a client holding a connection open does not wait for it.
    let mut holder = tokio::net::TcpStream::connect(&addr).await.unwrap();
    holder.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let t0 = Instant::now();
    srv.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(2), "shutdown waited {:?} for an admin client", t0.elapsed());
}
