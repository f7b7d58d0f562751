//! The AWS backends on moto: provisioning, the shared conformance suite (every contract line of
//! `Queue`, `JobStore`, `BudgetLedger`, `RateStore`, `ArtifactStore`), and the AWS-specific details the suite
//! cannot see (resource shapes, message attributes, the ledger's item layout, content types).
//!
//! Needs moto: `ATLAS_TEST_MOTO_ENDPOINT`, or `.venv/bin/moto_server` / `moto_server` on PATH
//! (see `tests/support/moto.rs`). Without it the tests fail with instructions; they never skip.

// Only the support modules this file needs (files under tests/support/), so that this suite does
// not depend on the rest of the shared test support compiling.
#[allow(dead_code)]
mod support {
    pub mod conformance;
    pub mod moto;
}

use std::sync::Arc;
use std::time::Duration;

use atlas_codex::backend::aws::{
    self,
    provision::{provision_bucket, provision_budget_table, provision_jobs_table, provision_queues},
    provision_with, DynamoJobStore, DynamoLedger, DynamoRateStore, S3Artifacts, SqsQueue,
};
use atlas_codex::backend::{ArtifactStore, BackendError, BudgetLedger, Charge, JobStore, Queue, RateStore, Reservation, ReserveOutcome};
use atlas_codex::settings::Settings;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use chrono::Utc;
use support::conformance::{
    make_artifacts, make_jobs, make_ledger, make_queue, make_rates, MakeArtifacts, MakeJobs, MakeLedger, MakeQueue, MakeRates, QueueSpec,
};
use support::moto;

/// A fresh SQS queue + DLQ on moto with the spec's attributes (a new stage per call).
fn aws_queue() -> MakeQueue {
    make_queue(|spec: QueueSpec| async move {
        let mut s = moto::stage_settings();
        s.queue.visibility_timeout_secs = spec.visibility_timeout.as_secs();
        s.queue.max_receive_count = spec.max_receive_count;
        let sdk = moto::sdk_config(&s).await;
        provision_queues(&s, &sdk).await.expect("provision queues");
        let q = SqsQueue::open(&sdk, &s.queue_name(), &s.dlq_name()).await.expect("open queue");
        Arc::new(q) as Arc<dyn Queue>
    })
}

/// A fresh jobs table on moto.
fn aws_jobs() -> MakeJobs {
    make_jobs(|| async move {
        let s = moto::stage_settings();
        let sdk = moto::sdk_config(&s).await;
        provision_jobs_table(&s, &sdk).await.expect("provision jobs table");
        let store = DynamoJobStore::new(aws_sdk_dynamodb::Client::new(&sdk), s.jobs_table(), s.storage.retention_days);
        Arc::new(store) as Arc<dyn JobStore>
    })
}

/// A fresh budget table on moto.
fn aws_ledger() -> MakeLedger {
    make_ledger(|| async move {
        let s = moto::stage_settings();
        let sdk = moto::sdk_config(&s).await;
        provision_budget_table(&s, &sdk).await.expect("provision budget table");
        Arc::new(DynamoLedger::new(aws_sdk_dynamodb::Client::new(&sdk), s.budget_table())) as Arc<dyn BudgetLedger>
    })
}

/// Rate windows in a fresh budget table on moto.
fn aws_rates() -> MakeRates {
    make_rates(|| async move {
        let s = moto::stage_settings();
        let sdk = moto::sdk_config(&s).await;
        provision_budget_table(&s, &sdk).await.expect("provision budget table");
        Arc::new(DynamoRateStore::new(aws_sdk_dynamodb::Client::new(&sdk), s.budget_table())) as Arc<dyn RateStore>
    })
}

/// A fresh bucket on moto.
fn aws_artifacts() -> MakeArtifacts {
    make_artifacts(|| async move {
        let s = moto::stage_settings();
        let sdk = moto::sdk_config(&s).await;
        provision_bucket(&s, &sdk).await.expect("provision bucket");
        Arc::new(S3Artifacts::new(aws::s3::client(&sdk), s.bucket())) as Arc<dyn ArtifactStore>
    })
}

mod queue_conformance {
    use super::*;
    support::conformance::queue_tests!(aws_queue());
}

mod job_store_conformance {
    use super::*;
    support::conformance::job_store_tests!(aws_jobs());
}

mod ledger_conformance {
    use super::*;
    support::conformance::ledger_tests!(aws_ledger());
}

mod rate_store_conformance {
    use super::*;
    support::conformance::rate_store_tests!(aws_rates());
}

mod artifacts_conformance {
    use super::*;
    support::conformance::artifact_tests!(aws_artifacts());
}

// ---------------------------------------------------------------------------------------------
// Provisioning

async fn fresh_stage() -> (Settings, aws_config::SdkConfig) {
    let s = moto::stage_settings();
    let sdk = moto::sdk_config(&s).await;
    (s, sdk)
}

#[tokio::test]
async fn provision_creates_everything_then_is_idempotent() {
    let (mut s, sdk) = fresh_stage().await;
    s.queue.max_receive_count = 4;
    s.queue.visibility_timeout_secs = 77;

    let first = provision_with(&s, &sdk).await.expect("first provision");
    let kinds: Vec<&str> = first.resources.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["dlq", "queue", "jobs table", "budget table", "bucket", "event topic"]);
    assert!(first.resources.iter().all(|r| r.created), "first run creates all: {first}");
    assert_eq!(
        first.created(),
        vec![
            s.dlq_name().as_str(),
            s.queue_name().as_str(),
            s.jobs_table().as_str(),
            s.budget_table().as_str(),
            s.bucket().as_str(),
            s.event_topic().as_str()
        ]
    );

    let second = provision_with(&s, &sdk).await.expect("second provision");
    assert!(second.resources.iter().all(|r| !r.created), "second run finds all: {second}");
    assert_eq!(second.existed().len(), 6);
    assert!(second.to_string().contains("exists"));

    // The queue's redrive policy points at the DLQ with the configured count.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sqs.get_queue_url().queue_name(s.queue_name()).send().await.expect("url");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().expect("url"))
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("attributes");
    let attrs = attrs.attributes().expect("attributes");
    assert_eq!(attrs.get(&QueueAttributeName::VisibilityTimeout).map(String::as_str), Some("77"));
    let policy: serde_json::Value =
        serde_json::from_str(attrs.get(&QueueAttributeName::RedrivePolicy).expect("redrive policy")).expect("policy json");
    assert_eq!(policy["maxReceiveCount"].as_i64(), Some(4), "{policy}");
    assert!(policy["deadLetterTargetArn"].as_str().is_some_and(|a| a.ends_with(&s.dlq_name())), "{policy}");

    // A changed setting converges on the next run.
    s.queue.max_receive_count = 6;
    provision_with(&s, &sdk).await.expect("third provision");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(url.queue_url().expect("url"))
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .expect("attributes");
    let policy: serde_json::Value =
        serde_json::from_str(attrs.attributes().and_then(|a| a.get(&QueueAttributeName::RedrivePolicy)).expect("policy"))
            .expect("policy json");
    assert_eq!(policy["maxReceiveCount"].as_i64(), Some(6));

    // The jobs table has the status index and TTL on expires_at.
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = ddb.describe_table().table_name(s.jobs_table()).send().await.expect("describe");
    let gsis = table.table().map(|t| t.global_secondary_indexes()).unwrap_or_default();
    assert!(gsis.iter().any(|g| g.index_name() == Some(aws::dynamo::STATUS_INDEX)), "{gsis:?}");
    let ttl = ddb.describe_time_to_live().table_name(s.jobs_table()).send().await.expect("ttl");
    assert_eq!(ttl.time_to_live_description().and_then(|d| d.attribute_name()), Some("expires_at"));
}

#[tokio::test]
async fn open_backends_needs_provisioned_queues_then_works() {
    let (s, sdk) = fresh_stage().await;
    match aws::open_backends_with(&s, &sdk).await {
        Err(BackendError::NotFound(m)) => assert!(m.contains(&s.queue_name()), "{m}"),
        Err(e) => panic!("expected NotFound, got {e:?}"),
        Ok(_) => panic!("opened backends before provisioning"),
    }
    provision_with(&s, &sdk).await.expect("provision");
    let b = aws::open_backends_with(&s, &sdk).await.expect("open");
    b.queue.send("hello", Duration::ZERO).await.expect("send");
    let got = b.queue.receive(10, Duration::from_secs(1)).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert!(b.jobs.get("nope").await.expect("get").is_none());
    assert_eq!(b.artifacts.location("jobs/x/result.json"), format!("s3://{}/jobs/x/result.json", s.bucket()));
    let snap = b.ledger.snapshot("2030-01", Utc::now()).await.expect("snapshot");
    assert_eq!(snap.spent_micros, 0);
}

// ---------------------------------------------------------------------------------------------
// AWS-specific details

#[tokio::test]
async fn explicit_dead_letter_carries_attributes_on_the_dlq_message() {
    let (s, sdk) = fresh_stage().await;
    provision_queues(&s, &sdk).await.expect("provision");
    let q = SqsQueue::open(&sdk, &s.queue_name(), &s.dlq_name()).await.expect("open");
    let id = q.send("payload", Duration::ZERO).await.expect("send");
    let m = q.receive(1, Duration::from_secs(1)).await.expect("receive").remove(0);
    q.dead_letter(&m, "ssrf_blocked: 10.0.0.1").await.expect("dead letter");

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let out = sqs
        .receive_message()
        .queue_url(q.dlq_url())
        .message_attribute_names("All")
        .visibility_timeout(0)
        .send()
        .await
        .expect("receive dlq");
    let msg = out.messages().first().expect("a DLQ message");
    let attr = |k: &str| msg.message_attributes().and_then(|a| a.get(k)).and_then(|v| v.string_value()).map(str::to_string);
    assert_eq!(attr(aws::sqs::ATTR_REASON).as_deref(), Some("ssrf_blocked: 10.0.0.1"));
    assert_eq!(attr(aws::sqs::ATTR_ORIGINAL_ID), Some(id));
    assert_eq!(attr(aws::sqs::ATTR_RECEIVE_COUNT).as_deref(), Some("1"));
    let at = attr(aws::sqs::ATTR_DEAD_LETTERED_AT).expect("timestamp");
    assert!(chrono::DateTime::parse_from_rfc3339(&at).is_ok(), "{at}");
}

#[tokio::test]
async fn ledger_keeps_committed_totals_and_one_charge_item_per_settle() {
    let (s, sdk) = fresh_stage().await;
    provision_budget_table(&s, &sdk).await.expect("provision");
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let l = DynamoLedger::new(ddb.clone(), s.budget_table());
    let now = Utc::now();
    let exp = now + chrono::Duration::minutes(10);
    let r = |id: &str, amount| Reservation { id: id.into(), job_id: format!("job-{id}"), amount_micros: amount, expires_at: exp };
    assert_eq!(l.reserve("2030-02", &r("a", 300), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    assert_eq!(l.reserve("2030-02", &r("b", 200), 1000, now).await.expect("reserve"), ReserveOutcome::Granted);
    let charge = Charge::single("a", "job-a", "m", Some("acme"), 120);
    l.settle("2030-02", &charge).await.expect("settle");
    l.settle("2030-02", &charge).await.expect("settle again");

    let month = ddb
        .get_item()
        .table_name(s.budget_table())
        .key("period", AttributeValue::S("2030-02".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("month item");
    let num = |k: &str| month.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
    assert_eq!(num("spent"), Some(120));
    assert_eq!(num("reserved"), Some(200));
    assert_eq!(num("committed"), Some(320));
    assert_eq!(num("version"), Some(3), "two reserves and one settle; the repeat wrote nothing");
    let holds = month.get("reservations").and_then(|v| v.as_m().ok()).expect("reservations map");
    assert!(holds.contains_key("b") && !holds.contains_key("a"), "{holds:?}");

    let charge_item = ddb
        .get_item()
        .table_name(s.budget_table())
        .key("period", AttributeValue::S("2030-02#charge#a".into()))
        .send()
        .await
        .expect("get")
        .item
        .expect("charge item");
    assert_eq!(charge_item.get("amount").and_then(|v| v.as_n().ok()).map(String::as_str), Some("120"));
}

#[tokio::test]
async fn s3_stores_content_type_and_reports_missing_bucket() {
    let (s, sdk) = fresh_stage().await;
    let client = aws::s3::client(&sdk);
    let store = S3Artifacts::new(client.clone(), s.bucket());
    // Before the bucket exists: a missing bucket is an error, not a missing object.
    match store.get("jobs/x/result.json").await {
        Err(BackendError::NotFound(_)) => {}
        other => panic!("expected NotFound for a missing bucket, got {other:?}"),
    }
    provision_bucket(&s, &sdk).await.expect("provision");
    store.put("jobs/x/result.json", b"{}".to_vec(), "").await.expect("put");
    let head = client.head_object().bucket(s.bucket()).key("jobs/x/result.json").send().await.expect("head");
    assert_eq!(head.content_type(), Some("application/json"));
    store.put("inputs/x", b"<html/>".to_vec(), "text/html").await.expect("put");
    let head = client.head_object().bucket(s.bucket()).key("inputs/x").send().await.expect("head");
    assert_eq!(head.content_type(), Some("text/html"));
    assert_eq!(store.location("inputs/x"), format!("s3://{}/inputs/x", s.bucket()));
}

#[tokio::test]
async fn classify_maps_real_moto_errors() {
    let (s, sdk) = fresh_stage().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let e = ddb
        .get_item()
        .table_name("atlas-codex-no-such-table")
        .key("id", AttributeValue::S("x".into()))
        .send()
        .await
        .expect_err("missing table");
    assert!(matches!(aws::classify(&e), BackendError::NotFound(_)), "{:?}", aws::classify(&e));

    provision_jobs_table(&s, &sdk).await.expect("provision");
    let put = || {
        ddb.put_item()
            .table_name(s.jobs_table())
            .item("id", AttributeValue::S("dup".into()))
            .condition_expression("attribute_not_exists(id)")
            .send()
    };
    put().await.expect("first put");
    let e = put().await.expect_err("second put");
    assert!(matches!(aws::classify(&e), BackendError::Conflict(_)), "{:?}", aws::classify(&e));

    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let e = sqs.get_queue_url().queue_name("atlas-codex-no-such-queue").send().await.expect_err("missing");
    assert!(matches!(aws::classify(&e), BackendError::NotFound(_)), "{:?}", aws::classify(&e));

    // Nothing listens on port 9 of loopback: a dispatch failure, worth retrying.
    let mut dead = s.clone();
    dead.aws.endpoint_url = "http://127.0.0.1:9".into();
    dead.aws.max_attempts = 1;
    let sdk = moto::sdk_config(&dead).await;
    let e = aws_sdk_sqs::Client::new(&sdk).get_queue_url().queue_name("q").send().await.expect_err("connection refused");
    assert!(aws::classify(&e).is_retryable(), "{:?}", aws::classify(&e));
}

/// The DLQ pass of the sweep on SQS and DynamoDB: the redrive policy's move is seen from the DLQ.
#[tokio::test]
async fn the_dlq_sweep_marks_records_whose_message_was_dead_lettered_with_fewer_claims_than_receives() {
    let queue = aws_queue()(QueueSpec { visibility_timeout: Duration::from_secs(1), max_receive_count: 2 }).await;
    let jobs = aws_jobs()().await;
    support::conformance::sweep_marks_records_whose_message_was_dead_lettered(queue, jobs).await;
}
