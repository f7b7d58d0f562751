//! The stage's event topic on AWS (moto): two `preview` worker processes, 200 jobs (completed
//! and failed mixed), one worker SIGKILLed mid-run and restarted. An SQS queue subscribed to
//! `atlas-codex-events-{stage}` (raw delivery) receives one event per job end: no job without
//! its event, no job with two different events; a second subscription with a filter policy on
//! the `type` attribute gets the failures only. A job whose `callback_url` names the metadata
//! address gets its webhook refused (recorded), while the job itself ends as usual.
//!
//! Needs moto (`ATLAS_TEST_MOTO_ENDPOINT`, see `tests/support/moto.rs`); never skips.

#[allow(dead_code)]
mod support {
    pub mod moto;
    pub mod procs;
}

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atlas_codex::backend::aws;
use atlas_codex::events::{DeliveryState, EventType, JobEvent};
use atlas_codex::job::JobStatus;
use atlas_codex::mock_openai::{Behavior, MockConfig, MockOpenAi};
use serde_json::{json, Value};
use support::moto;
use support::procs::{run_cli, ProcEnv, WorkerProc};

const API_KEY: &str = "test-key";
const SECRET: &str = "whsec-aws-test-0123456789";
const GOOD: usize = 170;
const FORBIDDEN: usize = 20;
const INVALID: usize = 10;
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(240);

async fn subscribe(sdk: &aws_config::SdkConfig, topic_arn: &str, name: &str, filter: Option<Value>) -> String {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let url = sqs.create_queue().queue_name(name).send().await.expect("create subscriber queue").queue_url().unwrap().to_string();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("queue arn")
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .expect("arn");
    let sns = aws_sdk_sns::Client::new(sdk);
    let mut sub = sns.subscribe().topic_arn(topic_arn).protocol("sqs").endpoint(arn).attributes("RawMessageDelivery", "true");
    if let Some(f) = filter {
        sub = sub.attributes("FilterPolicy", f.to_string());
    }
    sub.send().await.expect("subscribe");
    url
}

/// Drains a subscriber queue: every event body received.
async fn drain(sdk: &aws_config::SdkConfig, url: &str) -> Vec<JobEvent> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let r = sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).send().await.expect("receive");
        let msgs = r.messages();
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in msgs {
            let body = m.body().unwrap_or_default();
            out.push(serde_json::from_str(body).unwrap_or_else(|e| panic!("subscriber got a JobEvent ({e}): {body}")));
            sqs.delete_message().queue_url(url).receipt_handle(m.receipt_handle().unwrap_or_default()).send().await.expect("delete");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_queue_gets_one_event_per_job_end_across_a_killed_worker() {
    let t0 = Instant::now();
    let endpoint = moto::endpoint();
    let run = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let logs = tempfile::Builder::new().prefix("atlas-events-").tempdir().expect("log dir").keep();
    let mock = MockOpenAi::start(MockConfig {
        expected_api_key: Some(API_KEY.into()),
        behavior: Behavior { latency: Duration::from_millis(100), ..Behavior::default() },
        ..MockConfig::default()
    })
    .await;
    let env = ProcEnv::moto(&endpoint)
        .openai_mock(&mock.base_url(), API_KEY)
        .private_resources("preview", &format!("ev{run}"))
        .set("ATLAS_WEBHOOK_SECRET", SECRET)
        .set("ATLAS__QUEUE__VISIBILITY_TIMEOUT_SECS", "5")
        .set("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "10")
        .set("ATLAS__WORKER__CONCURRENCY", "8")
        .set("ATLAS__WORKER__RETRY_BASE_SECS", "1")
        .set("ATLAS__WORKER__RETRY_MAX_SECS", "2");
    let settings = env.settings("preview");
    let provisioned = run_cli(&env, "preview", &["--output", "json", "provision"], None, CLI_TIMEOUT).await.ok("provision").json();
    assert!(provisioned.to_string().contains(&settings.event_topic()), "provision creates the event topic: {provisioned}");
    let sdk = moto::sdk_config(&settings).await;
    let backends = aws::open_backends_with(&settings, &sdk).await.expect("open the stage");
    let topic_arn = backends.events.location();
    let all = subscribe(&sdk, &topic_arn, &format!("sub-all-{run}"), None).await;
    let failures = subscribe(&sdk, &topic_arn, &format!("sub-failed-{run}"), Some(json!({"type": ["job.failed"]}))).await;

    let schema =
        json!({"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}, "required": ["name", "price"]});
    let mut bodies = Vec::new();
    let mut want: BTreeMap<String, EventType> = BTreeMap::new();
    for i in 0..GOOD {
        let id = format!("ev-{run}-ok-{i}");
        bodies.push(json!({"job_id": id, "text": format!("Tent {i} costs ${}.", 100 + i), "instructions": "Extract name and price.", "schema": schema}));
        want.insert(id, EventType::Completed);
    }
    for i in 0..FORBIDDEN {
        let id = format!("ev-{run}-forbidden-{i}");
        bodies.push(json!({"job_id": id, "text": "x", "instructions": "Extract.", "model": "gpt-3.5-turbo"}));
        want.insert(id, EventType::Failed);
    }
    for i in 0..INVALID {
        let id = format!("ev-{run}-invalid-{i}");
        bodies.push(json!({"job_id": id, "text": "x", "bogus_field": i}));
        want.insert(id, EventType::Failed);
    }
    // The metadata address as a webhook target: refused in preview, the job completes anyway.
    let metadata_job = format!("ev-{run}-ok-0");
    bodies[0]["callback_url"] = json!("http://169.254.169.254/latest/meta-data/");
    let raw: Vec<String> = bodies.iter().map(Value::to_string).collect();

    let spawn = |idx: usize, gen: usize| {
        WorkerProc::spawn(&env, "preview", &["worker"], &logs.join(format!("w{idx}-{gen}.log")), &format!("w{idx}#{gen}"))
    };
    let mut workers = [spawn(0, 0), spawn(1, 0)];
    for chunk in raw.chunks(50) {
        backends.queue.send_batch(chunk).await.expect("send");
    }
    // Kill one worker once work is under way, then start another in its place.
    let kill_at = Instant::now() + Duration::from_secs(4);
    let mut killed = false;
    let mut in_flight_at_kill = 0;
    loop {
        assert!(t0.elapsed() < DEADLINE, "jobs not announced in time; logs in {}", logs.display());
        if !killed && Instant::now() >= kill_at {
            in_flight_at_kill = backends.queue.depth().await.map(|d| d.in_flight).unwrap_or(0);
            workers[0].kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            workers[0] = spawn(0, 1);
            killed = true;
        }
        let recs = backends.jobs.list(None, 1_000).await.expect("list");
        let announced = recs
            .iter()
            .filter(|r| {
                matches!(r.status, JobStatus::Completed | JobStatus::Failed) && r.announcement.as_ref().is_some_and(|a| a.published)
            })
            .count();
        if killed && announced == want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in workers.iter_mut() {
        w.sigterm();
    }
    for w in workers.iter_mut() {
        w.expect_clean_exit(Duration::from_secs(40)).await;
    }

    assert!(in_flight_at_kill > 0, "the kill hit messages in flight");

    // Every job end has its event, exactly one per end (copies share its event_id).
    let events = drain(&sdk, &all).await;
    let mut ids_by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &events {
        assert_eq!(Some(&e.event_type), want.get(&e.job_id), "{e:?}");
        ids_by_job.entry(e.job_id.clone()).or_default().push(e.event_id.clone());
    }
    let missing: Vec<&String> = want.keys().filter(|id| !ids_by_job.contains_key(*id)).collect();
    assert!(missing.is_empty(), "jobs without an event: {missing:?}");
    let copies = events.len() - want.len();
    for (job, ids) in &ids_by_job {
        let mut distinct = ids.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 1, "{job} ended once and has one event id: {ids:?}");
    }
    for e in &events {
        let rec = backends.jobs.get(&e.job_id).await.unwrap().expect("record");
        assert_eq!(rec.announcement.as_ref().map(|a| a.event_id.as_str()), Some(e.event_id.as_str()), "the record names its event");
        if e.event_type == EventType::Completed {
            let r = e.result.as_ref().expect("a completed event names its result");
            assert_eq!((r.bucket.as_str(), r.key.clone()), (settings.bucket().as_str(), format!("jobs/{}/result.json", e.job_id)));
        } else {
            assert!(matches!(e.reason.as_deref(), Some("model_forbidden" | "invalid_message")), "{e:?}");
        }
    }
    // The filter policy: only failures.
    let failed = drain(&sdk, &failures).await;
    assert!(failed.iter().all(|e| e.event_type == EventType::Failed), "filtered subscription gets failures only");
    let mut failed_jobs: Vec<&str> = failed.iter().map(|e| e.job_id.as_str()).collect();
    failed_jobs.sort();
    failed_jobs.dedup();
    assert_eq!(failed_jobs.len(), FORBIDDEN + INVALID);

    // The metadata webhook: refused, recorded, the job completed.
    let rec = backends.jobs.get(&metadata_job).await.unwrap().expect("record");
    assert_eq!(rec.status, JobStatus::Completed);
    let w = rec.announcement.and_then(|a| a.webhook).expect("delivery recorded");
    assert_eq!((w.state, w.attempts), (DeliveryState::Refused, 1), "{w:?}");
    assert!(w.last_error.as_deref().is_some_and(|e| e.contains("metadata")), "{w:?}");
    eprintln!(
        "aws events: {} jobs, {} events received ({copies} duplicate copies of an event, same event_id), {} filtered failures, \
         {in_flight_at_kill} messages in flight at the kill, {:?}",
        want.len(),
        events.len(),
        failed.len(),
        t0.elapsed()
    );
}
