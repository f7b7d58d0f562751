//! Backend conformance: the shared suite (`tests/support/conformance.rs`) run against the embedded
//! backend, plus the embedded backend's own promises (stage files, strict receipts, several
//! handles on one file as several processes would have, persistence, artifact key checks).
//!
//! Run with `cargo nextest run --test conformance`.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atlas_codex::backend::local::{open_backends, LocalBackend, QueueOptions};
use atlas_codex::backend::{ArtifactStore, BackendError, BudgetLedger, Claim, JobStore, Queue, RateStore, Reservation, ReserveOutcome};
use atlas_codex::job::{JobRecord, JobStatus};
use atlas_codex::settings::{QueueSettings, Settings, StorageSettings};
use chrono::{Duration as ChronoDuration, Utc};
use support::conformance::{
    make_artifacts, make_jobs, make_ledger, make_queue, make_rates, receive_n, receive_one, MakeArtifacts, MakeJobs, MakeLedger, MakeQueue,
    MakeRates, QueueSpec,
};

fn opts(spec: QueueSpec) -> QueueOptions {
    QueueOptions {
        queue_name: "atlas-codex-queue-test".into(),
        dlq_name: "atlas-codex-dlq-test".into(),
        visibility_timeout: spec.visibility_timeout,
        max_receive_count: spec.max_receive_count,
    }
}

fn scratch(spec: QueueSpec) -> LocalBackend {
    LocalBackend::open_scratch(opts(spec)).expect("open a scratch backend")
}

fn local_queue() -> MakeQueue {
    make_queue(|spec| async move { scratch(spec).queue as Arc<dyn Queue> })
}
fn local_jobs() -> MakeJobs {
    make_jobs(|| async { scratch(QueueSpec::default()).jobs as Arc<dyn JobStore> })
}
fn local_ledger() -> MakeLedger {
    make_ledger(|| async { scratch(QueueSpec::default()).ledger as Arc<dyn BudgetLedger> })
}
fn local_rates() -> MakeRates {
    make_rates(|| async { scratch(QueueSpec::default()).rates as Arc<dyn RateStore> })
}
fn local_artifacts() -> MakeArtifacts {
    make_artifacts(|| async { scratch(QueueSpec::default()).artifacts as Arc<dyn ArtifactStore> })
}

mod queue {
    use super::*;
    support::conformance::queue_tests!(local_queue());
}
mod jobs {
    use super::*;
    support::conformance::job_store_tests!(local_jobs());
}
mod ledger {
    use super::*;
    support::conformance::ledger_tests!(local_ledger());
}
mod rates {
    use super::*;
    support::conformance::rate_store_tests!(local_rates());
}
mod artifacts {
    use super::*;
    support::conformance::artifact_tests!(local_artifacts());
}

// ---------------------------------------------------------------------------------------------
// The embedded backend's own promises

fn settings_for(stage: &str, dir: &std::path::Path) -> Settings {
    let d = Settings::default();
    Settings {
        stage: stage.into(),
        storage: StorageSettings { data_dir: dir.to_path_buf(), ..d.storage.clone() },
        queue: QueueSettings { visibility_timeout_secs: 30, ..d.queue.clone() },
        ..d
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_backends_uses_stage_file_and_artifacts_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let local = open_backends(&settings_for("local", dir.path())).expect("open local");
    let dev = open_backends(&settings_for("dev", dir.path())).expect("open dev");
    assert!(dir.path().join("atlas-local.sqlite").is_file());
    assert!(dir.path().join("atlas-dev.sqlite").is_file());

    local.queue.send("for-local", Duration::ZERO).await.expect("send");
    assert!(dev.queue.receive(10, Duration::from_millis(200)).await.expect("receive").is_empty(), "two stages never share a queue");
    let m = receive_one(&*local.queue, Duration::from_secs(2)).await;
    assert_eq!(m.body, "for-local");

    local.artifacts.put("jobs/j1/result.json", b"{}".to_vec(), "application/json").await.expect("put");
    let file = dir.path().join("artifacts/jobs/j1/result.json");
    assert_eq!(std::fs::read(&file).expect("artifact file"), b"{}");
    let loc = local.artifacts.location("jobs/j1/result.json");
    assert_eq!(std::path::Path::new(&loc), file.canonicalize().expect("canonical"));

    let now = Utc::now();
    assert!(matches!(local.jobs.claim("j1", "local", "w", now, now).await.expect("claim"), Claim::Claimed(_)));
    assert!(dev.jobs.get("j1").await.expect("get").is_none(), "two stages never share a job table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now = Utc::now();
    {
        let b = LocalBackend::open(dir.path(), "atlas-x.sqlite", opts(QueueSpec::default())).expect("open");
        b.queue.send("kept", Duration::ZERO).await.expect("send");
        assert!(b.jobs.put_if_absent(&JobRecord::new("kept-job", "x", now)).await.expect("put"));
        let r = Reservation { id: "r".into(), job_id: "kept-job".into(), amount_micros: 10, expires_at: now };
        b.ledger.reserve("2031-02", &r, 100, now).await.expect("reserve");
        b.ledger.settle("2031-02", &atlas_codex::backend::Charge::single("r", "kept-job", "m", None, 9)).await.expect("settle");
    }
    let b = LocalBackend::open(dir.path(), "atlas-x.sqlite", opts(QueueSpec::default())).expect("reopen");
    assert_eq!(receive_one(&*b.queue, Duration::from_secs(2)).await.body, "kept");
    assert_eq!(b.jobs.get("kept-job").await.expect("get").expect("kept").status, JobStatus::Pending);
    assert_eq!(b.ledger.snapshot("2031-02", now).await.expect("snapshot").spent_micros, 9);
}

/// The embedded queue is stricter than SQS: only the current delivery's receipt acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_of_earlier_deliveries_are_stale() {
    let b = scratch(QueueSpec { visibility_timeout: Duration::from_secs(30), max_receive_count: 5 });
    let q = b.queue.clone();
    q.send("m", Duration::ZERO).await.expect("send");
    let first = receive_one(&*q, Duration::from_secs(2)).await;
    q.set_visibility(&first.receipt, Duration::ZERO).await.expect("give back");
    let second = receive_one(&*q, Duration::from_secs(2)).await;
    assert!(matches!(q.set_visibility(&first.receipt, Duration::ZERO).await, Err(BackendError::Conflict(_))));
    assert!(matches!(q.dead_letter(&first, "x").await, Err(BackendError::Conflict(_))));
    assert_eq!(q.delete_batch(std::slice::from_ref(&first.receipt)).await.expect("delete"), vec![first.receipt.clone()]);
    assert_eq!(q.depth().await.expect("depth").in_flight, 1, "the stale receipt touched nothing");
    assert!(q.delete_batch(std::slice::from_ref(&second.receipt)).await.expect("delete").is_empty());
    assert_eq!(
        q.delete_batch(std::slice::from_ref(&second.receipt)).await.expect("delete twice"),
        vec![second.receipt],
        "a deleted message's receipt is stale"
    );
}

/// A receive that meets over-received messages dead-letters them and still fills its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_dead_letters_and_still_fills_the_batch() {
    let b = scratch(QueueSpec { visibility_timeout: Duration::from_secs(30), max_receive_count: 1 });
    let q = b.queue.clone();
    q.send_batch(&["old1".into(), "old2".into()]).await.expect("send");
    let olds = receive_n(&*q, 2, Duration::from_secs(2)).await;
    for m in &olds {
        q.set_visibility(&m.receipt, Duration::ZERO).await.expect("give back");
    }
    q.send_batch(&["new1".into(), "new2".into()]).await.expect("send");
    let got = q.receive(10, Duration::from_secs(1)).await.expect("receive");
    let bodies: BTreeSet<_> = got.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, BTreeSet::from(["new1", "new2"]));
    let dlq: BTreeSet<_> = q.dlq_peek(10).await.expect("peek").into_iter().map(|d| d.body).collect();
    assert_eq!(dlq, BTreeSet::from(["old1".to_string(), "old2".to_string()]));
}

/// With a zero visibility timeout a message is visible again at once, but one receive still
/// never returns it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_visibility_never_duplicates_within_a_batch() {
    let b = scratch(QueueSpec { visibility_timeout: Duration::ZERO, max_receive_count: 100 });
    let q = b.queue.clone();
    q.send_batch(&["z1".into(), "z2".into(), "z3".into()]).await.expect("send");
    let got = q.receive(10, Duration::from_secs(1)).await.expect("receive");
    let ids: BTreeSet<_> = got.iter().map(|m| m.message_id.clone()).collect();
    assert_eq!((got.len(), ids.len()), (3, 3), "{got:?}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = q.receive(10, Duration::from_secs(1)).await.expect("receive");
    assert_eq!(again.len(), 3, "visible again at once");
    assert!(again.iter().all(|m| m.receive_count == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_options_and_oversized_bodies_are_refused() {
    let mut o = opts(QueueSpec::default());
    o.max_receive_count = 0;
    assert!(LocalBackend::open_scratch(o).is_err());
    let mut o = opts(QueueSpec::default());
    o.dlq_name = o.queue_name.clone();
    assert!(LocalBackend::open_scratch(o).is_err(), "the queue and its DLQ must differ");
    let b = scratch(QueueSpec::default());
    let big = "x".repeat(atlas_codex::job::MAX_MESSAGE_BYTES + 1);
    assert!(b.queue.send(&big, Duration::ZERO).await.is_err());
    assert!(b.queue.send_batch(&["ok".into(), big]).await.is_err());
    assert!(b.queue.depth().await.expect("depth").is_drained(), "a refused batch sends nothing");
    let neg = Reservation { id: "n".into(), job_id: "j".into(), amount_micros: -5, expires_at: Utc::now() };
    assert!(b.ledger.reserve("2031-01", &neg, 100, Utc::now()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_keys_are_validated() {
    let b = scratch(QueueSpec::default());
    let a = b.artifacts.clone();
    for key in ["", "../escape", "/etc/passwd", "jobs/../../x", "a//b", "a/./b", "trailing/", "back\\slash"] {
        assert!(a.put(key, b"x".to_vec(), "text/plain").await.is_err(), "put {key:?} must be refused");
        assert!(a.get(key).await.is_err(), "get {key:?} must be refused");
    }
    assert!(!a.root().parent().expect("parent").join("escape").exists());
    a.put("inputs/ok-key_1.txt", b"x".to_vec(), "text/plain").await.expect("valid key");
    // No temp files are left behind.
    let names: Vec<_> = std::fs::read_dir(a.root().join("inputs")).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ok-key_1.txt")]);
}

// ---------------------------------------------------------------------------------------------
// Several handles on one file: what several worker processes do.

fn two_handles(spec: QueueSpec) -> (tempfile::TempDir, LocalBackend, LocalBackend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = LocalBackend::open(dir.path(), "atlas-shared.sqlite", opts(spec)).expect("open a");
    let b = LocalBackend::open(dir.path(), "atlas-shared.sqlite", opts(spec)).expect("open b");
    (dir, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_never_receive_the_same_message() {
    let (_dir, a, b) = two_handles(QueueSpec { visibility_timeout: Duration::from_secs(60), max_receive_count: 5 });
    let bodies: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    a.queue.send_batch(&bodies).await.expect("send");
    let mut tasks = Vec::new();
    for q in [a.queue.clone(), b.queue.clone(), a.queue.clone(), b.queue.clone()] {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let ms = q.receive(10, Duration::from_millis(200)).await.expect("receive");
                if ms.is_empty() {
                    return got;
                }
                got.extend(ms.into_iter().map(|m| m.body));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let unique: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), 200, "every message delivered exactly once");
    assert_eq!(unique.len(), 200);
    let d = b.queue.depth().await.expect("depth");
    assert_eq!((d.visible, d.in_flight), (0, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_claim_each_job_once_and_share_one_budget() {
    let (_dir, a, b) = two_handles(QueueSpec::default());
    let now = Utc::now();
    let lease = now + ChronoDuration::seconds(60);
    let mut tasks = Vec::new();
    for (w, s) in [(0, a.jobs.clone()), (1, b.jobs.clone()), (2, a.jobs.clone()), (3, b.jobs.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for j in 0..25 {
                if let Claim::Claimed(_) = s.claim(&format!("job{j}"), "st", &format!("w{w}"), lease, now).await.expect("claim") {
                    won.push(j);
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.expect("task"));
    }
    won.sort();
    assert_eq!(won, (0..25).collect::<Vec<_>>(), "each job claimed exactly once");

    let limit = 5_000;
    let mut tasks = Vec::new();
    for (w, l) in [(0, a.ledger.clone()), (1, b.ledger.clone()), (2, a.ledger.clone()), (3, b.ledger.clone())] {
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for i in 0..30 {
                let r = Reservation { id: format!("{w}-{i}"), job_id: "j".into(), amount_micros: 100, expires_at: lease };
                if l.reserve("2031-03", &r, limit, now).await.expect("reserve") == ReserveOutcome::Granted {
                    n += 1;
                }
            }
            n
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += t.await.expect("task");
    }
    assert_eq!(granted * 100, limit);
    assert_eq!(a.ledger.snapshot("2031-03", now).await.expect("snapshot").reserved_micros, limit);
}

/// Throughput probe for the worker's per-job pattern (receive, heartbeat, claim, finish, batched
/// delete). Ignored by default (timing); run with `--run-ignored only` to see jobs/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_probe() {
    let b = scratch(QueueSpec { visibility_timeout: Duration::from_secs(60), max_receive_count: 5 });
    let n = 5_000usize;
    let bodies: Vec<String> = (0..n).map(|i| format!("{{\"job_id\":\"j{i}\"}}")).collect();
    for chunk in bodies.chunks(500) {
        b.queue.send_batch(chunk).await.expect("send");
    }
    let t0 = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (q, jobs, done) = (b.queue.clone(), b.jobs.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let ms = q.receive(10, Duration::from_millis(100)).await.expect("receive");
                if ms.is_empty() {
                    return;
                }
                let mut handles = Vec::new();
                for m in ms {
                    let (q, jobs) = (q.clone(), jobs.clone());
                    handles.push(tokio::spawn(async move {
                        let now = Utc::now();
                        let owner = format!("w{w}");
                        q.set_visibility(&m.receipt, Duration::from_secs(120)).await.expect("heartbeat");
                        let rec =
                            match jobs.claim(&m.message_id, "st", &owner, now + ChronoDuration::seconds(60), now).await.expect("claim") {
                                Claim::Claimed(r) => r,
                                other => panic!("{other:?}"),
                            };
                        let mut fin = rec;
                        fin.status = JobStatus::Completed;
                        fin.lease_owner = None;
                        fin.lease_expires_at = None;
                        jobs.finish(&fin, &owner).await.expect("finish");
                        m.receipt
                    }));
                }
                let mut receipts = Vec::new();
                for h in handles {
                    receipts.push(h.await.expect("job"));
                }
                let failed = q.delete_batch(&receipts).await.expect("delete");
                assert!(failed.is_empty());
                done.fetch_add(receipts.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = t0.elapsed().as_secs_f64();
    let total = done.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(total, n);
    println!("throughput: {total} jobs in {secs:.2}s = {:.0} jobs/s", total as f64 / secs);
}

// ---------------------------------------------------------------------------------------------
// Real processes on one file: this test binary re-runs itself as children.

const CHILD_DIR: &str = "ATLAS_CONFORMANCE_CHILD_DIR";
const CHILD_NAME: &str = "ATLAS_CONFORMANCE_CHILD_NAME";

/// The child's side of `separate_processes_share_one_file_safely`; does nothing unless started by
/// it (it is ignored, so plain runs never start it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn child_process_worker() {
    let (Ok(dir), Ok(name)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_NAME)) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let spec = QueueSpec { visibility_timeout: Duration::from_secs(60), max_receive_count: 5 };
    let b = LocalBackend::open(&dir, "atlas-shared.sqlite", opts(spec)).expect("child open");
    let now = Utc::now();
    let lease = now + ChronoDuration::seconds(60);
    let mut lines = Vec::new();
    // Claims and reservations first, while the siblings do the same.
    for j in 0..40 {
        if let Claim::Claimed(_) = b.jobs.claim(&format!("job{j}"), "st", &name, lease, now).await.expect("claim") {
            lines.push(format!("claim job{j}"));
        }
        let r = Reservation { id: format!("{name}-{j}"), job_id: "j".into(), amount_micros: 100, expires_at: lease };
        if b.ledger.reserve("2031-04", &r, 3_000, now).await.expect("reserve") == ReserveOutcome::Granted {
            lines.push(format!("grant {name}-{j}"));
        }
    }
    loop {
        let ms = b.queue.receive(10, Duration::from_millis(300)).await.expect("receive");
        if ms.is_empty() {
            break;
        }
        for m in &ms {
            lines.push(format!("msg {}", m.body));
        }
        let receipts: Vec<String> = ms.into_iter().map(|m| m.receipt).collect();
        assert!(b.queue.delete_batch(&receipts).await.expect("delete").is_empty());
    }
    std::fs::write(dir.join(format!("{name}.out")), lines.join("\n")).expect("write results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_share_one_file_safely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = QueueSpec { visibility_timeout: Duration::from_secs(60), max_receive_count: 5 };
    let parent = LocalBackend::open(dir.path(), "atlas-shared.sqlite", opts(spec)).expect("open");
    let bodies: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
    parent.queue.send_batch(&bodies).await.expect("send");

    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..3)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_process_worker", "--ignored", "--test-threads", "1"])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_NAME, format!("c{i}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut c in children {
        let status = tokio::task::spawn_blocking(move || c.wait()).await.expect("join").expect("wait");
        assert!(status.success(), "child failed: {status}");
    }
    let mut msgs = Vec::new();
    let mut claims = Vec::new();
    let mut grants = 0;
    for i in 0..3 {
        let out = std::fs::read_to_string(dir.path().join(format!("c{i}.out"))).expect("child output");
        for line in out.lines() {
            if let Some(m) = line.strip_prefix("msg ") {
                msgs.push(m.to_string());
            } else if let Some(j) = line.strip_prefix("claim ") {
                claims.push(j.to_string());
            } else if line.starts_with("grant ") {
                grants += 1;
            }
        }
    }
    let unique: BTreeSet<_> = msgs.iter().cloned().collect();
    assert_eq!(msgs.len(), 300, "every message received once across processes");
    assert_eq!(unique, bodies.iter().cloned().collect());
    claims.sort();
    let expected: Vec<String> = {
        let mut v: Vec<String> = (0..40).map(|j| format!("job{j}")).collect();
        v.sort();
        v
    };
    assert_eq!(claims, expected, "each job claimed exactly once across processes");
    assert_eq!(grants * 100, 3_000, "the shared ledger never passes its limit");
    assert!(parent.queue.depth().await.expect("depth").is_drained());
}

/// The DLQ pass of the sweep on the embedded backend (the check is shared with moto).
#[tokio::test]
async fn the_dlq_sweep_marks_records_whose_message_was_dead_lettered_with_fewer_claims_than_receives() {
    let b = scratch(QueueSpec { visibility_timeout: Duration::from_secs(1), max_receive_count: 2 });
    support::conformance::sweep_marks_records_whose_message_was_dead_lettered(b.queue.clone(), b.jobs.clone()).await;
}
