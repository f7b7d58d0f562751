//! Proof under faults: three `preview` worker processes on moto (test-private resource names),
//! a mock LLM that answers ~10% of calls with 500, ~5% with 429 and takes 50-500 ms, ~80 jobs
//! submitted in waves (a few of them permanently failing), and workers killed with SIGKILL and
//! restarted at random (seeded, bounded) while they work. At the end:
//!
//! - no message is lost: every submitted job has a terminal record; the good ones `completed`
//!   with their result stored, the bad ones `failed` permanently with their reason;
//! - nothing is charged twice: per job, the ledger's charges equal the record's `cost_micros`,
//!   and the month's `spent` equals the sum over the records (by model too);
//! - the DLQ holds exactly the permanently failing messages;
//! - every worker still running drains and exits 0 on SIGTERM.
//!
//! Bounded: ≤ 20 messages submitted per wave, at most [`MAX_KILLS`] kills, hard deadlines.
//! Needs moto (`ATLAS_TEST_MOTO_ENDPOINT`, see `tests/support/moto.rs`); never skips.

#[allow(dead_code)]
mod support {
    pub mod moto;
    pub mod procs;
}

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atlas_codex::backend::{aws, Backends};
use atlas_codex::job::{JobRecord, JobStatus};
use atlas_codex::mock_openai::{Behavior, MockConfig, MockOpenAi, RetryHint};
use atlas_codex::settings::Settings;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use support::moto;
use support::procs::{run_cli, ProcEnv, WorkerProc};

/// Seed of every random choice (kills, restarts, latency, mock faults).
const SEED: u64 = 0xC4A0_5EED;
const WORKERS: usize = 3;
const GOOD_JOBS: usize = 72;
const FORBIDDEN_JOBS: usize = 3;
const WAVES: usize = 4;
const WAVE_EVERY: Duration = Duration::from_secs(3);
const MAX_KILLS: usize = 6;
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// From the first submission until every job must be terminal.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);
const API_KEY: &str = "test-key";
/// A model this stage does not configure: a job asking for it fails with `model_forbidden`.
const FORBIDDEN_MODEL: &str = "gpt-3.5-turbo";

fn good_job(run: &str, i: usize) -> Value {
    let schema = json!({
        "type": "object",
        "properties": {"name": {"type": "string"}, "price": {"type": "number"}, "in_stock": {"type": "boolean"}},
        "required": ["name", "price"]
    });
    // Vary the instructions so routing uses more than one tier.
    let instructions = match i % 3 {
        0 => "Extract the product name and price.".to_string(),
        1 => "Extract the product name, its price in USD and whether it is in stock.".to_string(),
        _ => "Analyze the page, compare the listed prices, reason about discounts step by step, then extract the \
              product name, the final price in USD and whether it is in stock."
            .repeat(3),
    };
    let mut m =
        json!({"job_id": format!("chaos-{run}-ok-{i}"), "instructions": instructions, "schema": schema, "tenant": format!("t{}", i % 4)});
    if i % 2 == 0 {
        m["text"] = json!(format!("The Ridge {i} tent costs ${}.50 and is in stock.", 200 + i));
    } else {
        m["html"] = json!(format!("<html><body><h1>Boot {i}</h1><p class=price>${}</p><p>Sold out</p></body></html>", 90 + i));
    }
    m
}

/// Jobs that must end `failed` permanently and in the DLQ: (job id or `None`, raw body, reason kind).
fn bad_messages(run: &str) -> Vec<(Option<String>, String, &'static str)> {
    let mut v = Vec::new();
    for i in 0..FORBIDDEN_JOBS {
        let id = format!("chaos-{run}-forbidden-{i}");
        let body = json!({"job_id": id, "text": "Anything.", "instructions": "Extract anything.", "model": FORBIDDEN_MODEL}).to_string();
        v.push((Some(id), body, "model_forbidden"));
    }
    let invalid = [
        json!({"job_id": format!("chaos-{run}-invalid-0"), "type": "teleport", "text": "x"}),
        json!({"job_id": format!("chaos-{run}-invalid-1"), "text": "x", "html": "<p>two sources</p>"}),
        json!({"job_id": format!("chaos-{run}-invalid-2"), "text": "x", "bogus_field": 1}),
    ];
    for m in invalid {
        let id = m["job_id"].as_str().map(str::to_string);
        v.push((id, m.to_string(), "invalid_message"));
    }
    v.push((None, format!("not json at all {run} {{"), "invalid_message"));
    // Hostile messages (issue #15's classes), sent raw as a producer could.
    let hostile = [
        // Another job's result as this job's input.
        (
            json!({"job_id": format!("chaos-{run}-foreign-input"), "input_key": format!("jobs/chaos-{run}-ok-0/result.json"),
                "instructions": "Extract anything."}),
            "invalid_message",
        ),
        // A schema no validator can compile: refused before any call is paid.
        (
            json!({"job_id": format!("chaos-{run}-bad-pattern"), "text": "x", "instructions": "Extract anything.",
                "schema": {"type": "object", "properties": {"code": {"type": "string", "pattern": "(unclosed"}}}}),
            "invalid_schema",
        ),
        // The metadata address written as IPv6 forms that embed it, carrying secrets.
        (
            json!({"job_id": format!("chaos-{run}-ssrf-translated"), "url": "http://[::ffff:0:169.254.169.254]/latest/meta-data/",
                "instructions": "Extract anything.", "apiKey": secret(run, "key"),
                "headers": {"Authorization": format!("Bearer {}", secret(run, "header"))}}),
            "ssrf_blocked",
        ),
        (
            json!({"job_id": format!("chaos-{run}-ssrf-nat64"), "url": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
                "instructions": "Extract anything.", "headers": {"Authorization": format!("Bearer {}", secret(run, "header"))}}),
            "ssrf_blocked",
        ),
    ];
    for (m, kind) in hostile {
        let id = m["job_id"].as_str().map(str::to_string);
        v.push((id, m.to_string(), kind));
    }
    v
}

/// A secret a hostile message carries (it must never come back out: DLQ, records, logs).
fn secret(run: &str, what: &str) -> String {
    format!("sk-chaos-{what}-{run}-0123456789abcdef")
}

/// What identifies a message in the DLQ: its job id, or the raw body when it has none.
fn dlq_key(body: &str) -> String {
    serde_json::from_str::<Value>(body).ok().and_then(|v| v["job_id"].as_str().map(str::to_string)).unwrap_or_else(|| body.to_string())
}

async fn open(settings: &Settings) -> Backends {
    let sdk = moto::sdk_config(settings).await;
    aws::open_backends_with(settings, &sdk).await.expect("open the stage's AWS backends")
}

fn log_dir_note(dir: &std::path::Path) -> String {
    format!("worker logs in {}", dir.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_under_llm_faults_lose_nothing_and_charge_once() {
    let t0 = Instant::now();
    let endpoint = moto::endpoint();
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    // Kept on failure for inspection (the path is printed).
    let logs = tempfile::Builder::new().prefix("atlas-chaos-").tempdir().expect("log dir").keep();

    let mock = MockOpenAi::start(MockConfig {
        seed: Some(SEED),
        expected_api_key: Some(API_KEY.into()),
        max_recorded: 5_000,
        behavior: Behavior {
            latency: Duration::from_millis(200),
            server_error_probability: 0.10,
            rate_limit_probability: 0.05,
            retry_hint: RetryHint::Seconds(1),
            ..Behavior::default()
        },
        ..MockConfig::default()
    })
    .await;
    // Slow answers: the latency wanders over 50-500 ms (seeded).
    let handle = mock.handle();
    let jitter = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(SEED ^ 0x1a7e);
        loop {
            handle.set_latency(Duration::from_millis(rng.random_range(50..=500)));
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });

    // Stage `preview` with resource names private to this run.
    let env = ProcEnv::moto(&endpoint)
        .openai_mock(&mock.base_url(), API_KEY)
        .private_resources("preview", &format!("chaos{run}"))
        .set("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "5")
        .set("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "10")
        .set("ATLAS__WORKER__RETRY_BASE_SECS", "1")
        .set("ATLAS__WORKER__RETRY_MAX_SECS", "4")
        .set("ATLAS__WORKER__CONCURRENCY", "6")
        .set("ATLAS__WORKER__DRAIN_TIMEOUT_SECS", "20")
        .set("ATLAS__WORKER__JOB_TIMEOUT_SECS", "60");
    let settings = env.settings("preview");
    run_cli(&env, "preview", &["--output", "json", "provision"], None, CLI_TIMEOUT).await.ok("provision");
    let backends = open(&settings).await;

    // The jobs, in waves of at most 20 messages.
    let good: Vec<Value> = (0..GOOD_JOBS).map(|i| good_job(&run, i)).collect();
    let bad = bad_messages(&run);
    let forbidden: Vec<&(Option<String>, String, &str)> = bad.iter().filter(|b| b.2 == "model_forbidden").collect();
    // `submit` refuses what is not a valid job: the rest goes to the queue raw.
    let raw_invalid: Vec<&(Option<String>, String, &str)> = bad.iter().filter(|b| b.2 != "model_forbidden").collect();
    let mut waves: Vec<Vec<String>> = vec![Vec::new(); WAVES];
    for (i, g) in good.iter().enumerate() {
        waves[i % WAVES].push(g.to_string());
    }
    for (i, f) in forbidden.iter().enumerate() {
        waves[(i + 1) % WAVES].push(f.1.clone());
    }
    assert!(waves.iter().all(|w| w.len() <= 20), "shallow queues");
    let good_ids: Vec<String> = good.iter().map(|g| g["job_id"].as_str().unwrap_or_default().to_string()).collect();
    let bad_ids: BTreeMap<String, &str> = bad.iter().filter_map(|b| b.0.clone().map(|id| (id, b.2))).collect();
    let all_ids: Vec<String> = good_ids.iter().cloned().chain(bad_ids.keys().cloned()).collect();

    let spawn = |idx: usize, gen: usize| {
        let log = logs.join(format!("w{idx}-{gen}.log"));
        WorkerProc::spawn(&env, "preview", &["worker"], &log, &format!("w{idx}#{gen}"))
    };
    let mut workers: Vec<WorkerProc> = (0..WORKERS).map(|i| spawn(i, 0)).collect();
    let mut generation = [0usize; WORKERS];
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut kills: Vec<(usize, u64)> = Vec::new(); // (worker, messages in flight at the kill)

    // Chaos: submit waves every few seconds; kill -9 a random worker at random moments and
    // restart it after a short pause.
    let start = Instant::now();
    let mut next_wave = 0usize;
    let mut next_kill = start + Duration::from_millis(rng.random_range(1500..3500));
    while next_wave < WAVES || kills.len() < MAX_KILLS {
        assert!(start.elapsed() < SETTLE_DEADLINE, "chaos phase overran; {}", log_dir_note(&logs));
        for w in workers.iter_mut() {
            if let Some(s) = w.try_status() {
                panic!("worker {} exited on its own with {s}; log tail:\n{}", w.name, w.log_tail(40));
            }
        }
        if next_wave < WAVES && start.elapsed() >= WAVE_EVERY * next_wave as u32 {
            let body = waves[next_wave].join("\n");
            let out = run_cli(&env, "preview", &["--output", "json", "submit", "-"], Some(&body), CLI_TIMEOUT).await.ok("submit");
            let n = serde_json::from_value::<Vec<String>>(out.json()).map(|v| v.len()).unwrap_or(0);
            assert_eq!(n, waves[next_wave].len(), "wave {next_wave} submitted whole");
            if next_wave == 1 {
                // Invalid messages cannot go through `submit` (it refuses them): send them raw.
                let raw: Vec<String> = raw_invalid.iter().map(|b| b.1.clone()).collect();
                backends.queue.send_batch(&raw).await.expect("send invalid messages");
            }
            next_wave += 1;
        }
        if kills.len() < MAX_KILLS && Instant::now() >= next_kill {
            let idx = rng.random_range(0..WORKERS);
            let in_flight = backends.queue.depth().await.map(|d| d.in_flight).unwrap_or(0);
            workers[idx].kill9();
            kills.push((idx, in_flight));
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
            generation[idx] += 1;
            workers[idx] = spawn(idx, generation[idx]);
            next_kill = Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every job terminal, then the queue empty (deletes flushed, nothing waiting).
    let records: BTreeMap<String, JobRecord> = loop {
        let listed = backends.jobs.list(None, 1_000).await.expect("list records");
        let records: BTreeMap<String, JobRecord> = listed.into_iter().map(|r| (r.id.clone(), r)).collect();
        let open: Vec<&String> = all_ids
            .iter()
            .filter(|id| !records.get(*id).is_some_and(|r| matches!(r.status, JobStatus::Completed | JobStatus::Failed)))
            .collect();
        if open.is_empty() {
            break records;
        }
        if start.elapsed() > SETTLE_DEADLINE {
            let detail: Vec<String> =
                open.iter().map(|id| format!("{id}: {:?}", records.get(*id).map(|r| (r.status, r.attempts, &r.error)))).collect();
            panic!("{} job(s) not terminal after {SETTLE_DEADLINE:?}:\n{}\n{}", open.len(), detail.join("\n"), log_dir_note(&logs));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = backends.queue.depth().await.expect("depth");
        if d.is_drained() {
            break;
        }
        assert!(Instant::now() < drain_deadline, "queue not drained after every job was terminal: {d:?}; {}", log_dir_note(&logs));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in workers.iter_mut() {
        w.sigterm();
    }
    for w in workers.iter_mut() {
        w.expect_clean_exit(Duration::from_secs(40)).await;
    }
    jitter.abort();

    // 1. No message lost; outcomes as planned.
    for id in &good_ids {
        let r = &records[id];
        assert_eq!(r.status, JobStatus::Completed, "good job {id} completed: {r:?}");
        assert_eq!(r.result_key.as_deref(), Some(format!("jobs/{id}/result.json").as_str()));
        assert!(r.model.as_deref().is_some_and(|m| m.starts_with("gpt-5")), "{r:?}");
        let body = backends.artifacts.get(&format!("jobs/{id}/result.json")).await.expect("s3 get").expect("result stored");
        let doc: Value = serde_json::from_slice(&body).expect("result is JSON");
        assert_eq!(doc["job_id"].as_str(), Some(id.as_str()));
    }
    for (id, kind) in &bad_ids {
        let r = &records[id];
        assert_eq!(r.status, JobStatus::Failed, "{id}: {r:?}");
        let e = r.error.as_ref().unwrap_or_else(|| panic!("{id} failed without a reason"));
        assert_eq!((e.kind.as_str(), e.permanent), (*kind, true), "{id}: {e:?}");
        assert!(!e.message.is_empty());
    }

    // 2. Nothing charged twice.
    //
    // What is guaranteed (docs/design.md): a call is settled at most once (per reservation id),
    // only after the provider answered it and after it was written on the job record; a claim
    // killed between the record write and the settle is repaired by the next claim (settle is
    // idempotent). So the ledger's spent equals the sum of the records' `cost_micros` exactly,
    // kills or not. (A call answered but killed before it reached the record is on neither: its
    // hold lapses. The provider billed it; we cannot know.)
    let now = chrono::Utc::now();
    let snap = backends.ledger.snapshot(&atlas_codex::budget::period(now), now).await.expect("snapshot");
    let counts = mock.counts();
    let status_total = |code: u16| counts.iter().filter(|((_, s), _)| *s == code).map(|(_, n)| *n).sum::<u64>();
    // Budget leases (docs/design-ledger.md): the ledger is settled per lease, and a killed
    // worker's lease lapses and counts in full. So the ledger never shows less than the
    // records (which carry every paid call, killed calls at their worst case).
    let record_sum: i64 = records.values().map(|r| r.cost_micros).sum();
    for (id, r) in &records {
        let paid: i64 = r.calls.iter().map(|c| c.cost_micros).sum();
        assert_eq!(paid, r.cost_micros, "{id}: cost_micros is the sum of its calls");
    }
    let committed = snap.spent_micros + snap.reserved_micros + snap.lapsed_micros;
    assert!(committed >= record_sum, "ledger {committed} µUSD under the records' {record_sum} µUSD: {snap:?}");
    let conflicts: usize = (0..WORKERS)
        .flat_map(|i| (0..=generation[i]).map(move |g| (i, g)))
        .map(|(i, g)| {
            std::fs::read_to_string(logs.join(format!("w{i}-{g}.log"))).unwrap_or_default().matches("\"reason\":\"store_conflict\"").count()
        })
        .sum();
    let attempts: BTreeMap<u32, usize> = records.values().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.attempts).or_insert(0) += 1;
        m
    });
    eprintln!(
        "chaos: {} jobs, kills {kills:?}, attempts histogram {attempts:?}, mock 200/429/500 = {}/{}/{}, \
         ledger spent {} + leased {} + lapsed {} µUSD, records {record_sum} µUSD; store_conflict outcomes in logs: {conflicts}; elapsed {:?}; {}",
        all_ids.len(),
        status_total(200),
        status_total(429),
        status_total(500),
        snap.spent_micros,
        snap.reserved_micros,
        snap.lapsed_micros,
        t0.elapsed(),
        log_dir_note(&logs)
    );

    // 3. The DLQ holds exactly the permanently failing messages (through the CLI).
    let dlq = run_cli(&env, "preview", &["--output", "json", "dlq", "list", "--max", "50"], None, CLI_TIMEOUT).await.ok("dlq list").json();
    let bodies: Vec<String> =
        dlq.as_array().expect("dlq list is an array").iter().filter_map(|m| m["body"].as_str().map(str::to_string)).collect();
    let mut got: Vec<String> = bodies.iter().map(|b| dlq_key(b)).collect();
    got.sort();
    let mut want: Vec<String> = bad.iter().map(|b| dlq_key(&b.1)).collect();
    want.sort();
    assert_eq!(got, want, "DLQ content (reasons: {:?})", dlq.as_array().map(|a| a.iter().map(|m| m["reason"].clone()).collect::<Vec<_>>()));
    for m in dlq.as_array().into_iter().flatten() {
        let reason = m["reason"].as_str().unwrap_or_default();
        let key = dlq_key(m["body"].as_str().unwrap_or_default());
        let kind = bad.iter().find(|b| dlq_key(&b.1) == key).map(|b| b.2).unwrap_or("?");
        assert!(reason.starts_with(kind), "DLQ reason for {key} is not {kind}: {m}");
        for what in ["key", "header"] {
            assert!(!m.to_string().contains(&secret(&run, what)), "a secret reached the DLQ: {m}");
        }
    }
    for what in ["key", "header"] {
        let secret = secret(&run, what);
        assert!(records.values().all(|r| !format!("{r:?}").contains(&secret)), "a secret reached a job record");
        for entry in std::fs::read_dir(&logs).expect("log dir").flatten() {
            let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(!log.contains(&secret), "a secret reached the log {}", entry.path().display());
        }
    }

    // 4. The faults really happened, and the kills hit work in flight.
    assert!(status_total(500) > 0 && status_total(429) > 0, "faults injected: {counts:?}");
    assert!(counts.keys().all(|(m, _)| m != FORBIDDEN_MODEL), "the forbidden model was never called");
    assert_eq!(kills.len(), MAX_KILLS);
    assert!(kills.iter().map(|k| k.1).sum::<u64>() > 0, "at least one kill hit messages in flight: {kills:?}");
    assert!(t0.elapsed() < Duration::from_secs(180), "bounded in time: {:?}", t0.elapsed());
}
