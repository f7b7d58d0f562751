//! Producers learn when a job ends (local stage): one line per job end in the stage's events
//! file, and signed webhooks to `callback_url` that are retried, verified, recorded, and never
//! hold a job. The AWS side (the stage's SNS topic) is in `tests/aws_events.rs`.

#[allow(dead_code)]
mod support {
    pub mod app;
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_codex::events::{DeliveryState, EventType, JobEvent};
use atlas_codex::job::JobStatus;
use atlas_codex::webhook;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use support::app::{spawn_app, text_job, ScriptedLlm};

const SECRET: &str = "whsec-test-0123456789abcdef";
const RECEIVER_KEY: &str = "rk-receiver-key-987654321";

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Vec<u8>,
    answered: u16,
}

#[derive(Clone)]
struct Receiver {
    /// Answers 500 this many times per event id, then 200; `None`: never answers.
    fail_first: Option<usize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let Some(fail_first) = r.fail_first else {
        r.seen.lock().unwrap().push(Seen { headers, body: body.to_vec(), answered: 0 });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::OK;
    };
    let id = headers.get("atlas-event-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut seen = r.seen.lock().unwrap();
    let before = seen.iter().filter(|s| s.headers.get("atlas-event-id").and_then(|v| v.to_str().ok()) == Some(id.as_str())).count();
    let status = if before < fail_first { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
    seen.push(Seen { headers, body: body.to_vec(), answered: status.as_u16() });
    status
}

/// A webhook receiver on loopback; its URL and what it saw.
async fn start_receiver(fail_first: Option<usize>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(Receiver { fail_first, seen: seen.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}/hook?token=query-secret-1"), seen)
}

fn hooked(mut body: Value, url: &str) -> String {
    body["callback_url"] = json!(url);
    body["callback_headers"] = json!({"X-Receiver-Key": RECEIVER_KEY});
    body.to_string()
}

fn events_file(dir: &std::path::Path) -> Vec<JobEvent> {
    let text = std::fs::read_to_string(dir.join(atlas_codex::events::local_file_name("local"))).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("event line is a JobEvent ({e}): {l}"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_fails_twice_gets_each_event_once_signed_and_every_end_is_in_the_events_file() {
    let (url, seen) = start_receiver(Some(2)).await;
    let llm = ScriptedLlm::new(Duration::from_millis(5), 0, false);
    let t = spawn_app(&[("ATLAS_WEBHOOK_SECRET", SECRET)], llm).await;
    let ok: Vec<String> = (0..4).map(|i| format!("hook-ok-{i}")).collect();
    let mut bodies: Vec<String> = ok.iter().map(|id| hooked(serde_json::from_str(&text_job(id)).unwrap(), &url)).collect();
    // A permanent failure: the metadata address is refused even where private networks are allowed.
    bodies.push(hooked(json!({"job_id": "hook-bad", "url": "http://169.254.169.254/latest/meta-data/"}), &url));
    // And a job without a webhook: in the events file, never POSTed.
    bodies.push(text_job("no-hook"));
    t.send(&bodies).await;
    let started = Instant::now();
    let stats = t.run_until_idle().await;
    assert_eq!((stats.completed, stats.failed), (5, 1), "{stats:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "retries with 1 s and 2 s backoff end inside the drain grace");

    // The receiver: three POSTs per hooked job (500, 500, 200), all signed and carrying the
    // producer's header; the event in the body is the job's.
    let seen = seen.lock().unwrap().clone();
    let mut by_event: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for s in &seen {
        let id = s.headers.get("atlas-event-id").and_then(|v| v.to_str().ok()).expect("event id header").to_string();
        by_event.entry(id).or_default().push(s.clone());
    }
    assert_eq!(by_event.len(), 5, "one event per hooked job: {:?}", by_event.keys());
    let now = chrono::Utc::now().timestamp();
    for (id, posts) in &by_event {
        assert_eq!(posts.iter().map(|p| p.answered).collect::<Vec<_>>(), vec![500, 500, 200], "{id}");
        for p in posts {
            let sig = p.headers.get(webhook::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).expect("signature header");
            assert!(webhook::verify(SECRET, sig, &p.body, now, Duration::from_secs(300)), "{id}: signature verifies");
            assert!(!webhook::verify("another-secret-000", sig, &p.body, now, Duration::from_secs(300)));
            assert_eq!(p.headers.get("x-receiver-key").and_then(|v| v.to_str().ok()), Some(RECEIVER_KEY));
            let event: JobEvent = serde_json::from_slice(&p.body).expect("body is the event");
            assert_eq!(&event.event_id, id);
            assert_eq!(p.headers.get("atlas-event-type").and_then(|v| v.to_str().ok()), Some(event.event_type.as_str()));
        }
    }

    // The records: each end announced (published to the file) and its delivery recorded.
    for id in ok.iter().chain(["hook-bad".to_string()].iter()) {
        let rec = t.record(id).await;
        let a = rec.announcement.as_ref().unwrap_or_else(|| panic!("{id} has an announcement"));
        assert!(a.published, "{id}: {a:?}");
        let w = a.webhook.as_ref().expect("webhook delivery recorded");
        assert_eq!((w.state, w.attempts, w.last_status), (DeliveryState::Delivered, 3, Some(200)), "{id}: {w:?}");
        assert!(!w.url.contains("query-secret-1"), "the recorded URL has no query: {}", w.url);
        let stored = serde_json::to_string(&rec).unwrap();
        assert!(!stored.contains(RECEIVER_KEY) && !stored.contains(SECRET), "no secret on the record");
    }
    assert_eq!(t.record("hook-bad").await.status, JobStatus::Failed);
    assert!(t.record("no-hook").await.announcement.is_some_and(|a| a.published && a.webhook.is_none()));

    // The events file: exactly one line per job end, matching the records.
    let events = events_file(t.dir.path());
    assert_eq!(events.len(), 6, "{events:?}");
    let mut ids: Vec<&str> = events.iter().map(|e| e.job_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "one event per job");
    for e in &events {
        let want = if e.job_id == "hook-bad" { EventType::Failed } else { EventType::Completed };
        assert_eq!(e.event_type, want, "{e:?}");
        match want {
            EventType::Completed => {
                assert_eq!(e.result.as_ref().map(|r| r.key.clone()), Some(format!("jobs/{}/result.json", e.job_id)));
                assert!(e.cost_usd >= 0.0 && e.model.is_some(), "{e:?}");
            }
            _ => assert_eq!(e.reason.as_deref(), Some("ssrf_blocked"), "{e:?}"),
        }
    }
    let file = std::fs::read_to_string(t.dir.path().join(atlas_codex::events::local_file_name("local"))).unwrap();
    assert!(!file.contains(RECEIVER_KEY) && !file.contains(SECRET));

    // A redelivery of a completed, announced job announces nothing new and posts nothing.
    t.send(&[hooked(serde_json::from_str(&text_job("hook-ok-0")).unwrap(), &url)]).await;
    let again = t.run_until_idle().await;
    assert_eq!(again.completed, 1, "the duplicate is deleted as completed");
    assert_eq!(events_file(t.dir.path()).len(), 6, "no second event for the same end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_no_job() {
    let (url, seen) = start_receiver(None).await;
    let llm = ScriptedLlm::new(Duration::from_millis(5), 0, false);
    let t =
        spawn_app(&[("ATLAS_WEBHOOK_SECRET", SECRET), ("ATLAS__WEBHOOKS__TIMEOUT_SECS", "30"), ("ATLAS__WEBHOOKS__DRAIN_SECS", "1")], llm)
            .await;
    let ids: Vec<String> = (0..8).map(|i| format!("hang-{i}")).collect();
    t.send(&ids.iter().map(|id| hooked(serde_json::from_str(&text_job(id)).unwrap(), &url)).collect::<Vec<_>>()).await;
    let app = t.app.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        app.run(atlas_codex::worker::RunOptions { exit_when_idle: false }, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    // Every job completes while the receiver holds every POST unanswered (its timeout is 30 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut done = 0;
        for id in &ids {
            if t.backends.jobs.get(id).await.unwrap().is_some_and(|r| r.status == JobStatus::Completed) {
                done += 1;
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{done}/{} jobs completed while the receiver hangs", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted = seen.lock().unwrap().len();
    assert!(posted >= 1, "the webhooks were sent ({posted})");
    // The queue is empty: no message waits for its webhook.
    let d = t.backends.queue.depth().await.unwrap();
    assert_eq!((d.visible, d.in_flight), (0, 0), "{d:?}");
    let _ = stop_tx.send(());
    let stopped = Instant::now();
    run.await.unwrap().expect("run");
    assert!(stopped.elapsed() < Duration::from_secs(10), "a hanging receiver does not stall shutdown ({:?})", stopped.elapsed());
    for id in &ids {
        let rec = t.record(id).await;
        let a = rec.announcement.expect("announced");
        assert!(a.published, "the event was published whatever the webhook does");
        assert_eq!(a.webhook.map(|w| w.state), Some(DeliveryState::Pending), "{id}: still pending when the worker stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_signing_secret_a_webhook_is_refused_and_recorded_and_the_job_still_completes() {
    let (url, seen) = start_receiver(Some(0)).await;
    let t = spawn_app(&[], ScriptedLlm::new(Duration::from_millis(5), 0, false)).await;
    t.send(&[hooked(serde_json::from_str(&text_job("unsigned")).unwrap(), &url)]).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.completed, 1);
    let rec = t.record("unsigned").await;
    let w = rec.announcement.and_then(|a| a.webhook).expect("delivery recorded");
    assert_eq!((w.state, w.attempts), (DeliveryState::Refused, 0), "{w:?}");
    assert!(w.last_error.as_deref().is_some_and(|e| e.contains("ATLAS_WEBHOOK_SECRET")), "{w:?}");
    assert!(seen.lock().unwrap().is_empty(), "nothing unsigned is sent");
}

#[test]
fn the_event_shown_in_docs_messages_md_is_a_job_event_and_its_verifier_matches_ours() {
    let md = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/messages.md")).unwrap();
    let after = md.split("### The event").nth(1).expect("docs/messages.md has a `### The event` section");
    let block = after.split("```text\n").nth(1).and_then(|b| b.split("```").next()).expect("a ```text block");
    let event: JobEvent = serde_json::from_str(block).unwrap_or_else(|e| panic!("the documented event parses ({e}):\n{block}"));
    assert_eq!(event.event_type, EventType::Completed);
    assert_eq!(event.event_id, format!("{}:job.completed:1", event.job_id));
    for h in [webhook::SIGNATURE_HEADER, webhook::EVENT_ID_HEADER, webhook::EVENT_TYPE_HEADER] {
        assert!(md.contains(&format!("`{h}`")), "docs/messages.md names the {h} header");
    }
    assert!(md.contains(r#"f"{t}.".encode() + body"#), "the documented verifier signs `<t>.<body>` as the worker does");
}

/// What a worker killed right after recording an end leaves: the end, its announcement unpublished.
async fn record_end_unannounced(
    t: &support::app::TestApp,
    id: &str,
    status: JobStatus,
    message_id: Option<&str>,
) -> atlas_codex::job::JobRecord {
    let now = chrono::Utc::now();
    let atlas_codex::backend::Claim::Claimed(mut r) =
        t.backends.jobs.claim(id, "local", "dead-worker", now + chrono::Duration::seconds(60), now).await.unwrap()
    else {
        panic!("claim")
    };
    r.status = status;
    if status == JobStatus::Failed {
        r.error = Some(atlas_codex::job::ErrorInfo { kind: "model_forbidden".into(), message: "not allowed here".into(), permanent: true });
    } else {
        r.result_key = Some(format!("jobs/{id}/result.json"));
    }
    r.lease_owner = None;
    r.lease_expires_at = None;
    r.announcement = atlas_codex::events::Announcement::pending(&r, message_id, None);
    t.backends.jobs.finish(&r, "dead-worker").await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_its_worker_never_announced_is_announced_by_the_redelivery_without_running_the_job_again() {
    let llm = ScriptedLlm::new(Duration::from_millis(5), 0, false);
    let t = spawn_app(&[], llm.clone()).await;
    // Completed, then killed before the event: the message comes back.
    record_end_unannounced(&t, "crash-done", JobStatus::Completed, None).await;
    // Failed by a message, then killed before the dead-letter: that same message comes back.
    t.send(&[json!({"job_id": "crash-failed", "text": "x", "instructions": "Extract.", "model": "gpt-3.5-turbo"}).to_string()]).await;
    let m = t.backends.queue.receive(1, Duration::from_secs(2)).await.unwrap().pop().expect("the message");
    record_end_unannounced(&t, "crash-failed", JobStatus::Failed, Some(&m.message_id)).await;
    t.backends.queue.set_visibility(&m.receipt, Duration::ZERO).await.unwrap();
    t.send(&[text_job("crash-done")]).await;

    let stats = t.run_until_idle().await;
    assert_eq!(llm.calls(), 0, "neither job ran again");
    assert_eq!((stats.completed, stats.failed), (1, 1), "{stats:?}");
    let events = events_file(t.dir.path());
    let mut got: Vec<(String, EventType)> = events.iter().map(|e| (e.job_id.clone(), e.event_type)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, vec![("crash-done".into(), EventType::Completed), ("crash-failed".into(), EventType::Failed)]);
    let failed = t.record("crash-failed").await;
    assert_eq!((failed.status, failed.attempts), (JobStatus::Failed, 1), "put back as it was: {failed:?}");
    assert!(failed.announcement.is_some_and(|a| a.published));
    let dlq = t.backends.queue.dlq_peek(10).await.unwrap();
    assert_eq!(dlq.len(), 1, "the failed job's message reached the DLQ");
    assert!(dlq[0].reason.as_deref().is_some_and(|r| r.starts_with("model_forbidden")), "{dlq:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_sweep_announces_a_dead_lettered_end_that_was_never_announced() {
    let t = spawn_app(&[], ScriptedLlm::new(Duration::from_millis(5), 0, false)).await;
    let body = json!({"job_id": "dl-unannounced", "text": "x", "model": "gpt-3.5-turbo"}).to_string();
    t.send(&[body]).await;
    let m = t.backends.queue.receive(1, Duration::from_secs(2)).await.unwrap().pop().expect("the message");
    record_end_unannounced(&t, "dl-unannounced", JobStatus::Failed, Some(&m.message_id)).await;
    t.backends.queue.dead_letter(&m, "model_forbidden: not allowed here").await.unwrap();
    assert!(events_file(t.dir.path()).is_empty());

    let settings = support::app::test_settings(t.dir.path(), &[]);
    let announcer = atlas_codex::events::Announcer::new(Some(t.backends.events.clone()), t.backends.jobs.clone(), "bucket".into(), None);
    atlas_codex::sweep::sweep_and_announce(&t.backends, &settings, "sweeper", &announcer).await;
    let events = events_file(t.dir.path());
    assert_eq!(events.iter().map(|e| (e.job_id.as_str(), e.event_type)).collect::<Vec<_>>(), vec![("dl-unannounced", EventType::Failed)]);
    assert!(t.record("dl-unannounced").await.announcement.is_some_and(|a| a.published));
    atlas_codex::sweep::sweep_and_announce(&t.backends, &settings, "sweeper", &announcer).await;
    assert_eq!(events_file(t.dir.path()).len(), 1, "announced once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_deferred_for_budget_is_announced_as_deferred_with_its_reason() {
    let (url, seen) = start_receiver(Some(0)).await;
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t =
        spawn_app(&[("MONTHLY_BUDGET", "1"), ("ATLAS__WORKER__BUDGET_DEFER_SECS", "60"), ("ATLAS_WEBHOOK_SECRET", SECRET)], llm.clone())
            .await;
    let now = chrono::Utc::now();
    let charge = atlas_codex::backend::Charge::single("earlier", "earlier", "gpt-5-nano", None, 999_900);
    t.backends.ledger.settle(&atlas_codex::budget::period(now), &charge).await.unwrap();
    t.send(&[hooked(serde_json::from_str(&text_job("poor-hooked")).unwrap(), &url)]).await;
    let app = t.app.clone();
    let stats = app.run(atlas_codex::worker::RunOptions::default(), tokio::time::sleep(Duration::from_secs(3))).await.unwrap();
    assert_eq!((stats.deferred, llm.calls()), (1, 0), "{stats:?}");
    let events = events_file(t.dir.path());
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.event_type, e.status, e.reason.as_deref()), (EventType::Deferred, JobStatus::Pending, Some("budget_exhausted")));
    assert!(e.result.is_none());
    let posted = seen.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "the deferral is POSTed too");
    assert_eq!(posted[0].headers.get("atlas-event-type").and_then(|v| v.to_str().ok()), Some("job.deferred"));
}
