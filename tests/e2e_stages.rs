//! The AWS backends end to end on moto, with the real binary: `provision` of `preview` and
//! `production` side by side under their default resource names, one worker process per stage
//! against a mock OpenAI server each, and proof that the stages stay apart:
//!
//! - each job lands only in its own stage's table and bucket (CLI `status` and the crate's own
//!   AWS backends opened with each stage's settings);
//! - the preview worker never reads the production queue (production jobs stay untouched while
//!   only the preview worker runs; the production worker then completes them);
//! - production only ever calls a GPT-4-class model, even for a job that asks for `gpt-5`
//!   (checked at the production mock's request log);
//! - each stage's ledger grew by exactly the cost its own job records carry.
//!
//! Needs moto (`ATLAS_TEST_MOTO_ENDPOINT`, see `tests/support/moto.rs`); never skips.

#[allow(dead_code)]
mod support {
    pub mod moto;
    pub mod procs;
}

use std::collections::BTreeSet;
use std::time::Duration;

use atlas_codex::backend::{aws, Backends};
use atlas_codex::job::JobStatus;
use atlas_codex::mock_openai::{AuthSeen, MockConfig, MockOpenAi};
use atlas_codex::settings::Settings;
use serde_json::{json, Value};
use support::moto;
use support::procs::{run_cli, ProcEnv, WorkerProc};

const CLI_TIMEOUT: Duration = Duration::from_secs(90);
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);
const API_KEY: &str = "test-key";

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
        "required": ["name", "price"]
    })
}

/// Inline jobs only: the fetcher refuses loopback URLs in preview and production.
fn jobs(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut m = json!({
                "job_id": format!("{prefix}-{i}"),
                "instructions": "Extract the product name and its price in USD.",
                "schema": schema(),
                "tenant": "e2e",
            });
            if i % 2 == 0 {
                m["text"] = json!(format!("Summit {i} Pack costs ${} and weighs 1.2 kg.", 100 + i));
            } else {
                m["html"] = json!(format!(
                    "<html><head><title>Trail {i}</title></head><body><h1>Trail Runner {i}</h1><p>Price: ${}.99</p></body></html>",
                    50 + i
                ));
            }
            m
        })
        .collect()
}

fn jsonl(messages: &[Value]) -> String {
    messages.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

/// One stage as the test sees it: the child environment, the same settings, and the crate's own
/// AWS backends opened with them (test credentials).
struct StageUnderTest {
    stage: &'static str,
    env: ProcEnv,
    settings: Settings,
    backends: Backends,
}

async fn stage(stage: &'static str, endpoint: &str, mock: &MockOpenAi) -> StageUnderTest {
    let env = ProcEnv::moto(endpoint).openai_mock(&mock.base_url(), API_KEY).set("ATLAS__WORKER__CONCURRENCY", "4");
    let settings = env.settings(stage);
    assert_eq!(settings.queue_name(), format!("atlas-codex-queue-{stage}"), "default names are what is shown here");
    let backends = open(&settings).await;
    StageUnderTest { stage, env, settings, backends }
}

async fn open(settings: &Settings) -> Backends {
    let sdk = moto::sdk_config(settings).await;
    aws::open_backends_with(settings, &sdk).await.expect("open the stage's AWS backends (provisioned?)")
}

async fn spent(b: &Backends) -> (i64, std::collections::BTreeMap<String, i64>) {
    let now = chrono::Utc::now();
    let snap = b.ledger.snapshot(&atlas_codex::budget::period(now), now).await.expect("ledger snapshot");
    (snap.spent_micros, snap.by_model)
}

/// Runs the stage's worker with `--exit-when-idle` to completion (exit 0).
async fn run_worker_until_idle(s: &StageUnderTest, logs: &std::path::Path) -> String {
    let log = logs.join(format!("worker-{}.log", s.stage));
    let mut w = WorkerProc::spawn(&s.env, s.stage, &["worker", "--exit-when-idle"], &log, s.stage);
    w.expect_clean_exit(WORKER_TIMEOUT).await;
    w.log()
}

async fn status_json(s: &StageUnderTest, id: &str) -> Value {
    run_cli(&s.env, s.stage, &["--output", "json", "status", id], None, CLI_TIMEOUT).await.ok("status").json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_and_production_stay_apart_end_to_end() {
    let endpoint = moto::endpoint();
    let logs = tempfile::tempdir().expect("log dir");
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mock_pre = MockOpenAi::start(MockConfig { seed: Some(1), expected_api_key: Some(API_KEY.into()), ..MockConfig::default() }).await;
    let mock_prod = MockOpenAi::start(MockConfig { seed: Some(2), expected_api_key: Some(API_KEY.into()), ..MockConfig::default() }).await;

    // Provision both stages side by side through the binary.
    let pre_env = ProcEnv::moto(&endpoint);
    let (p1, p2) = tokio::join!(
        run_cli(&pre_env, "preview", &["--output", "json", "provision"], None, CLI_TIMEOUT),
        run_cli(&pre_env, "production", &["--output", "json", "provision"], None, CLI_TIMEOUT),
    );
    let mut names = Vec::new();
    for (st, out) in [("preview", p1.ok("provision preview")), ("production", p2.ok("provision production"))] {
        let report = out.json();
        let res = report["resources"].as_array().expect("resources in the provision report").clone();
        let kinds: BTreeSet<&str> = res.iter().filter_map(|r| r["kind"].as_str()).collect();
        assert_eq!(kinds, BTreeSet::from(["queue", "dlq", "jobs table", "budget table", "bucket", "event topic"]), "{report}");
        for r in &res {
            let name = r["name"].as_str().unwrap_or_default().to_string();
            assert!(name.ends_with(&format!("-{st}")), "{st} resource `{name}` carries its stage");
            names.push(name);
        }
    }
    let distinct: BTreeSet<&String> = names.iter().collect();
    assert_eq!(distinct.len(), names.len(), "no resource shared between stages: {names:?}");

    let pre = stage("preview", &endpoint, &mock_pre).await;
    let prod = stage("production", &endpoint, &mock_prod).await;

    // A queue left non-empty by an earlier, interrupted run of this test would blur the ledger
    // deltas below: let each stage's own worker drain it first (rare).
    for s in [&pre, &prod] {
        let d = s.backends.queue.depth().await.expect("depth");
        if !d.is_drained() {
            eprintln!("{}: draining {d:?} left by an earlier run", s.stage);
            run_worker_until_idle(s, logs.path()).await;
        }
    }
    mock_pre.clear_records();
    mock_prod.clear_records();
    let (pre_spent0, _) = spent(&pre.backends).await;
    let (prod_spent0, _) = spent(&prod.backends).await;

    // Submit through the binary: 4 jobs per stage, plus a production job asking for gpt-5.
    let pre_jobs = jobs(&format!("e2e-{run}-pre"), 4);
    let mut prod_jobs = jobs(&format!("e2e-{run}-prod"), 4);
    let forbidden_id = format!("e2e-{run}-prod-asks-gpt5");
    let mut ask = prod_jobs[0].clone();
    ask["job_id"] = json!(forbidden_id);
    ask["model"] = json!("gpt-5");
    prod_jobs.push(ask);
    let ids = |jobs: &[Value]| -> Vec<String> { jobs.iter().map(|j| j["job_id"].as_str().unwrap_or_default().to_string()).collect() };
    let (pre_ids, prod_ids) = (ids(&pre_jobs), ids(&prod_jobs));
    for (s, jobs, want) in [(&pre, &pre_jobs, &pre_ids), (&prod, &prod_jobs, &prod_ids)] {
        let out = run_cli(&s.env, s.stage, &["--output", "json", "submit", "-"], Some(&jsonl(jobs)), CLI_TIMEOUT).await.ok("submit");
        let got: Vec<String> = serde_json::from_value(out.json()).expect("submit prints the ids");
        assert_eq!(&got, want);
    }
    assert!(
        pre.backends.jobs.get(&pre_ids[0]).await.expect("get").is_some_and(|r| r.status == JobStatus::Pending),
        "submit records the job as pending in its own stage"
    );

    // Phase 1: only the preview worker runs.
    let pre_log = run_worker_until_idle(&pre, logs.path()).await;
    for id in &pre_ids {
        let v = status_json(&pre, id).await;
        assert_eq!(v["status"], "completed", "preview job {id}: {v}\nworker log:\n{pre_log}");
        assert_eq!(v["stage"], "preview");
        let model = v["model"].as_str().unwrap_or_default();
        assert!(model.starts_with("gpt-5"), "preview routes to the gpt-5 tiers: {v}");
    }
    for id in &prod_ids {
        let r = prod.backends.jobs.get(id).await.expect("get").expect("production record from submit");
        assert_eq!(r.status, JobStatus::Pending, "production job {id} untouched while only preview ran: {r:?}");
        assert_eq!((r.attempts, r.calls.len()), (0, 0), "never claimed by the preview worker: {r:?}");
    }
    let d = prod.backends.queue.depth().await.expect("depth");
    assert!(d.visible + d.delayed >= prod_ids.len() as u64 && d.in_flight == 0, "production messages still queued, none received: {d:?}");
    assert_eq!(mock_prod.total_requests(), 0, "no production model call yet");
    let (prod_spent_mid, _) = spent(&prod.backends).await;
    assert_eq!(prod_spent_mid, prod_spent0, "nothing charged to production while only preview ran");

    // Phase 2: the production worker completes its own jobs.
    let prod_log = run_worker_until_idle(&prod, logs.path()).await;
    let prod_models: BTreeSet<String> = prod.settings.reachable_models().into_iter().collect();
    for id in &prod_ids {
        let v = status_json(&prod, id).await;
        assert_eq!(v["stage"], "production");
        if *id == forbidden_id {
            assert_eq!(v["status"], "failed", "{v}");
            assert_eq!(v["error"]["kind"], "model_forbidden", "{v}");
            assert_eq!(v["error"]["permanent"], true);
            continue;
        }
        assert_eq!(v["status"], "completed", "production job {id}: {v}\nworker log:\n{prod_log}");
        let model = v["model"].as_str().unwrap_or_default();
        assert!(prod_models.contains(model) && !model.starts_with("gpt-5"), "production answered by a GPT-4-class model: {v}");
        assert_eq!(v["route"]["tier"], "production", "{v}");
    }
    let dlq = run_cli(&prod.env, "production", &["--output", "json", "dlq", "list", "--max", "50"], None, CLI_TIMEOUT)
        .await
        .ok("dlq list")
        .json();
    assert!(
        dlq.as_array().into_iter().flatten().any(|m| m["body"].as_str().is_some_and(|b| b.contains(&forbidden_id))),
        "the forbidden job is in the production DLQ: {dlq}"
    );

    // Production only ever called GPT-4-class models; preview only its gpt-5 tiers.
    let prod_reqs = mock_prod.requests();
    assert!(!prod_reqs.is_empty(), "production called its model");
    for r in &prod_reqs {
        assert!(!r.model.starts_with("gpt-5"), "production called {}", r.model);
        assert_eq!(prod.settings.models.get(&r.model).map(|m| m.family.as_str()), Some("gpt4"), "production called {}", r.model);
        assert_eq!(r.auth, AuthSeen::Bearer { matches_expected: Some(true) }, "the stage's key was sent");
    }
    let pre_reqs = mock_pre.requests();
    assert!(pre_reqs.len() >= pre_ids.len(), "one call per preview job at least");
    assert!(pre_reqs.iter().all(|r| r.model.starts_with("gpt-5")), "{:?}", pre_reqs.iter().map(|r| &r.model).collect::<Vec<_>>());

    // Each job's record and result live in its own stage only.
    for (own, other, ids) in [(&pre, &prod, &pre_ids), (&prod, &pre, &prod_ids)] {
        for id in ids {
            let rec = own.backends.jobs.get(id).await.expect("get").expect("record in its own table");
            assert_eq!(rec.stage, own.stage);
            assert!(other.backends.jobs.get(id).await.expect("get").is_none(), "{id} absent from {}'s table", other.stage);
            let key = format!("jobs/{id}/result.json");
            if rec.status == JobStatus::Completed {
                assert_eq!(rec.result_key.as_deref(), Some(key.as_str()));
                let body = own.backends.artifacts.get(&key).await.expect("s3 get").expect("result in its own bucket");
                let doc: Value = serde_json::from_slice(&body).expect("result is JSON");
                assert_eq!((doc["job_id"].as_str(), doc["stage"].as_str()), (Some(id.as_str()), Some(own.stage)));
                assert!(doc["data"]["name"].is_string() && doc["data"]["price"].is_number(), "{doc}");
            }
            assert!(
                other.backends.artifacts.get(&key).await.expect("s3 get").is_none(),
                "{id} result absent from {}'s bucket",
                other.stage
            );
            let cross = run_cli(&other.env, other.stage, &["--output", "json", "status", id], None, CLI_TIMEOUT).await;
            assert_eq!(cross.code, Some(3), "`--stage {} status {id}` does not find it: {}", other.stage, cross.stderr);
        }
    }

    // Each ledger grew by exactly what its own records say, and production's holds no gpt-5.
    for (s, ids, before) in [(&pre, &pre_ids, pre_spent0), (&prod, &prod_ids, prod_spent0)] {
        let mut sum = 0i64;
        for id in ids {
            sum += s.backends.jobs.get(id).await.expect("get").map(|r| r.cost_micros).unwrap_or(0);
        }
        let (after, by_model) = spent(&s.backends).await;
        assert!(sum > 0, "{} jobs cost something", s.stage);
        assert_eq!(after - before, sum, "{} ledger delta equals the sum of its records' cost_micros", s.stage);
        if s.stage == "production" {
            assert!(by_model.keys().all(|m| !m.starts_with("gpt-5")), "production ledger by model: {by_model:?}");
        }
    }
}
