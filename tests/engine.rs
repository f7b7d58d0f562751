//! The worker engine on the embedded SQLite backend: throughput correctness, heartbeat,
//! retries, dead-lettering, drain on SIGTERM, and redelivery of completed jobs.

mod support;

use std::time::Duration;

use atlas_codex::job::{JobStatus, PendingReason};
use atlas_codex::worker::RunOptions;
use support::app::{second_worker, spawn_app, text_job, ScriptedLlm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_complete_exactly_once() {
    let llm = ScriptedLlm::new(Duration::from_millis(5), 0, false);
    let t = spawn_app(&[("ATLAS__WORKER__CONCURRENCY", "64")], llm.clone()).await;
    let bodies: Vec<String> = (0..1000).map(|i| text_job(&format!("job-{i}"))).collect();
    t.send(&bodies).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, 1000, "{stats:?}");
    assert_eq!(stats.received, 1000, "each message received once: {stats:?}");
    assert_eq!(llm.calls(), 1000, "one model call per job");
    let done = t.backends.jobs.list(Some(JobStatus::Completed), 2000).await.unwrap();
    assert_eq!(done.len(), 1000);
    assert!(done.iter().all(|r| r.attempts == 1 && r.result_key.is_some() && r.data.is_some()));
    let depth = t.backends.queue.depth().await.unwrap();
    assert!(depth.is_drained() && depth.dead_letters == 0, "{depth:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_outlives_the_visibility_timeout_is_not_run_twice() {
    // Visibility 3 s, model 7 s: without the heartbeat the message would reappear twice.
    let over = [("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "3")];
    let llm = ScriptedLlm::new(Duration::from_secs(7), 0, false);
    let t = spawn_app(&over, llm.clone()).await;
    let other = second_worker(&t, &over, llm.clone()).await;
    t.send(&[text_job("slow-1")]).await;
    let a = t.app.clone();
    let b = other.clone();
    let ra = tokio::spawn(async move { a.run(RunOptions { exit_when_idle: true }, std::future::pending()).await });
    let rb = tokio::spawn(async move { b.run(RunOptions { exit_when_idle: true }, std::future::pending()).await });
    let (sa, sb) = (ra.await.unwrap().unwrap(), rb.await.unwrap().unwrap());
    assert_eq!(llm.calls(), 1, "the model was called once");
    assert_eq!(sa.completed + sb.completed, 1, "{sa:?} {sb:?}");
    assert_eq!(sa.received + sb.received, 1, "never redelivered while running: {sa:?} {sb:?}");
    let r = t.record("slow-1").await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_retries_then_succeeds() {
    let llm = ScriptedLlm::new(Duration::from_millis(5), 1, false);
    let t = spawn_app(&[("ATLAS__WORKER__RETRY_BASE_SECS", "1")], llm.clone()).await;
    t.send(&[text_job("flaky-1")]).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.retried, 1, "{stats:?}");
    assert_eq!(stats.completed, 1, "{stats:?}");
    let r = t.record("flaky-1").await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.attempts, 2);
    assert!(r.error.is_none());
    assert_eq!(r.calls.len(), 2, "both calls are on the record: {:?}", r.calls);
    assert_eq!(r.calls[0].outcome, "server_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_reaches_the_dlq_after_max_receive_count() {
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, true);
    let t = spawn_app(&[("ATLAS__WORKER__RETRY_BASE_SECS", "1"), ("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "3")], llm.clone()).await;
    t.send(&[text_job("poison-1")]).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.received, 3, "received exactly max_receive_count times: {stats:?}");
    assert_eq!(stats.failed, 1);
    let dlq = t.backends.queue.dlq_peek(10).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0].reason.as_deref().unwrap_or("").contains("retries_exhausted"), "{:?}", dlq[0]);
    let r = t.record("poison-1").await;
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.error.as_ref().unwrap().kind, "retries_exhausted");
    assert!(r.error.as_ref().unwrap().permanent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparsable_message_is_dead_lettered_at_once_and_recorded() {
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t = spawn_app(&[], llm.clone()).await;
    t.send(&[r#"{"job_id":"bad-1","type":"teleport","url":"https://example.com"}"#.to_string(), "not json".to_string()]).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.received, 2, "never retried: {stats:?}");
    assert_eq!(stats.failed, 2);
    assert_eq!(llm.calls(), 0);
    let r = t.record("bad-1").await;
    assert_eq!(r.status, JobStatus::Failed);
    assert_eq!(r.error.as_ref().unwrap().kind, "invalid_message");
    assert_eq!(t.backends.queue.depth().await.unwrap().dead_letters, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_of_a_completed_job_does_no_work_and_spends_nothing() {
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t = spawn_app(&[], llm.clone()).await;
    t.send(&[text_job("once-1")]).await;
    t.run_until_idle().await;
    let now = chrono::Utc::now();
    let period = atlas_codex::budget::period(now);
    let spent = t.backends.ledger.snapshot(&period, now).await.unwrap().spent_micros;
    let before = t.record("once-1").await;
    assert!(before.cost_micros > 0 && spent == before.cost_micros, "ledger {spent} vs record {}", before.cost_micros);
    // The same message again (a redelivery after a lost delete looks exactly like this).
    t.send(&[text_job("once-1")]).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, 1, "counted as a (duplicate) completion: {stats:?}");
    assert_eq!(llm.calls(), 1, "no second model call");
    let after = t.record("once-1").await;
    assert_eq!(after, before, "the record is untouched");
    let spent_after = t.backends.ledger.snapshot(&period, chrono::Utc::now()).await.unwrap().spent_micros;
    assert_eq!(spent_after, spent, "nothing spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_exhaustion_defers_without_dead_lettering() {
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t = spawn_app(&[("MONTHLY_BUDGET", "1"), ("ATLAS__WORKER__BUDGET_DEFER_SECS", "60")], llm.clone()).await;
    // Spend all but 100 µUSD of the month: less than one call's worst case.
    let now = chrono::Utc::now();
    let charge = atlas_codex::backend::Charge::single("earlier", "earlier", "gpt-5-nano", None, 999_900);
    t.backends.ledger.settle(&atlas_codex::budget::period(now), &charge).await.unwrap();
    t.send(&[text_job("poor-1")]).await;
    let app = t.app.clone();
    let run = tokio::spawn(async move { app.run(RunOptions::default(), tokio::time::sleep(Duration::from_secs(3))).await });
    let stats = run.await.unwrap().unwrap();
    assert_eq!(stats.deferred, 1, "{stats:?}");
    assert_eq!(llm.calls(), 0);
    let r = t.record("poor-1").await;
    assert_eq!(r.status, JobStatus::Pending);
    assert_eq!(r.pending_reason.map(PendingReason::as_str), Some("budget_exhausted"));
    let d = t.backends.queue.depth().await.unwrap();
    assert_eq!(d.dead_letters, 0);
    assert_eq!(d.delayed + d.visible + d.in_flight, 1, "the message is kept: {d:?}");
}

#[test]
fn sigterm_with_jobs_in_flight_finishes_them_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_atlas-codex");
    let envs = [
        ("ATLAS__STORAGE__DATA_DIR", dir.path().display().to_string()),
        ("ATLAS__ADMIN__LISTEN", String::new()),
        ("ATLAS__LLM__PROVIDER", "simulated".into()),
        ("ATLAS__LLM__SIMULATED_LATENCY_MS", "2500".into()),
        ("ATLAS__QUEUE__WAIT_TIME_SECS", "1".into()),
        ("ATLAS__TELEMETRY__LOG_LEVEL", "info".into()),
    ];
    let cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.args(["--stage", "local"]).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env_remove("OPENAI_API_KEY");
        for (k, v) in &envs {
            c.env(k, v);
        }
        c
    };
    let jobs: Vec<String> = (0..5).map(|i| text_job(&format!("term-{i}"))).collect();
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, jobs.join("\n")).unwrap();
    let out = cmd(&["submit", file.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    let child = cmd(&["worker"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500)); // jobs received and in the model call
    let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "exit code; log:\n{log}");
    for i in 0..5 {
        let st = cmd(&["--output", "json", "status", &format!("term-{i}")]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
        assert_eq!(v["status"], "completed", "job term-{i} after drain; worker log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_recorded_before_a_crash_is_settled_exactly_once_by_the_next_claim() {
    use atlas_codex::job::{Attempt, Usage};
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t = spawn_app(&[], llm.clone()).await;
    let now = chrono::Utc::now();
    let period = atlas_codex::budget::period(now);
    // A worker claimed the job, recorded a paid call, and was killed before settling it.
    let past = now - chrono::Duration::seconds(5);
    let claim = t.backends.jobs.claim("crash-1", "local", "dead-worker", past, past - chrono::Duration::seconds(1)).await.unwrap();
    let atlas_codex::backend::Claim::Claimed(mut rec) = claim else { panic!("not claimed") };
    rec.calls.push(Attempt {
        model: "gpt-5-nano".into(),
        outcome: atlas_codex::job::CallOutcome::Ok,
        usage: Usage { input_tokens: 1000, cached_input_tokens: 0, output_tokens: 100, reasoning_tokens: 0 },
        cost_micros: 90,
        latency_ms: 10,
        chunk: None,
        reservation_id: Some("crash-1:1:0".into()),
        period: Some(period.clone()),
        settled: false,
        estimated: false,
        claimed_usage: None,
    });
    rec.cost_micros = 90;
    t.backends.jobs.finish(&rec, "dead-worker").await.unwrap();
    assert_eq!(t.backends.ledger.snapshot(&period, now).await.unwrap().spent_micros, 0);

    t.send(&[text_job("crash-1")]).await;
    t.run_until_idle().await;
    let r = t.record("crash-1").await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.attempts, 2);
    assert!(r.calls.iter().all(|c| c.settled), "{:?}", r.calls);
    assert_eq!(r.calls.len(), 2);
    let spent = t.backends.ledger.snapshot(&period, chrono::Utc::now()).await.unwrap().spent_micros;
    assert_eq!(spent, r.cost_micros, "ledger equals the record: the earlier charge settled once");
    assert_eq!(r.cost_micros, 90 + r.calls[1].cost_micros);
}

/// A model client that answers after `latency` and remembers the most calls it had at once.
struct PeakLlm {
    inner: atlas_codex::llm::simulated::SimulatedClient,
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl atlas_codex::llm::LlmClient for PeakLlm {
    async fn complete(&self, request: &atlas_codex::llm::LlmRequest) -> Result<atlas_codex::llm::LlmResponse, atlas_codex::llm::LlmError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
        let answer = self.inner.complete(request).await;
        self.now.fetch_sub(1, SeqCst);
        answer
    }
    fn name(&self) -> &'static str {
        "simulated"
    }
}

async fn peak_model_calls(text_bytes: usize) -> usize {
    let llm = std::sync::Arc::new(PeakLlm {
        inner: atlas_codex::llm::simulated::SimulatedClient::new(Duration::from_millis(150)),
        now: Default::default(),
        peak: Default::default(),
    });
    // Eight jobs may run at once; their inputs may hold 200 KiB together. A model job with an
    // inline text takes five times the text's length before reading it.
    let t = spawn_app(
        &[
            ("ATLAS__WORKER__CONCURRENCY", "8"),
            ("ATLAS__FETCH__MAX_BODY_BYTES", "32768"),
            ("ATLAS__WORKER__INPUT_BYTES_IN_FLIGHT", "204800"),
        ],
        llm.clone(),
    )
    .await;
    let sentence = "The Summit 45 Pack costs $189 and weighs 1.2 kg. ";
    let text = sentence.repeat(text_bytes / sentence.len() + 1);
    let bodies: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({
                "job_id": format!("mem-{text_bytes}-{i}"), "text": text, "truncate": true,
                "instructions": "Extract the name and price.",
                "schema": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}, "required": ["name", "price"]}
            })
            .to_string()
        })
        .collect();
    t.send(&bodies).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, 8, "{stats:?}");
    llm.peak.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_whose_inputs_do_not_fit_the_input_memory_together_wait_for_each_other() {
    // A 24 KB text takes ~121 KiB to read and ~98 KiB once read (four copies): with 200 KiB of
    // input memory, no second job fits until the first is done.
    assert_eq!(peak_model_calls(24_000).await, 1, "one large input at a time");
    // A 1 KB text takes ~9 KiB: all eight fit, and run at once.
    assert!(peak_model_calls(1_000).await >= 4, "small inputs are not held back");
}
