//! `atlas-codex provision`: creates the stage's AWS resources idempotently, for emulators,
//! sandboxes and first deploys (production resources normally come from CloudFormation; this
//! creates the same shapes).
//!
//! Creates, or converges when they exist: the DLQ (14-day retention), the queue (visibility
//! timeout, long-poll wait, redrive policy to the DLQ with `max_receive_count`), the jobs table
//! (`id` key, the `status-created_at-index` GSI, TTL on `expires_at`), the budget table (`period`
//! key, TTL on `expires_at` for rate-limit windows) and the artifacts bucket.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;

use super::dynamo::STATUS_INDEX;
use super::{classify, s3, sdk_config};
use crate::backend::BackendError;
use crate::settings::Settings;

/// How long DLQ messages are kept, seconds (SQS's maximum, 14 days).
const DLQ_RETENTION_SECS: u32 = 1_209_600;
/// How long to wait for a new table to become active.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One resource `provision` looked at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProvisionedResource {
    /// `queue`, `dlq`, `jobs table`, `budget table` or `bucket`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// True when this run created it; false when it existed (and was brought up to date).
    pub created: bool,
}

/// What `provision` did, resource by resource, so the CLI can print it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProvisionReport {
    /// Every resource, in creation order.
    pub resources: Vec<ProvisionedResource>,
}

impl ProvisionReport {
    fn push(&mut self, kind: &str, name: &str, created: bool) {
        self.resources.push(ProvisionedResource { kind: kind.into(), name: name.into(), created });
    }
    /// Names of the resources this run created.
    pub fn created(&self) -> Vec<&str> {
        self.resources.iter().filter(|r| r.created).map(|r| r.name.as_str()).collect()
    }
    /// Names of the resources that already existed.
    pub fn existed(&self) -> Vec<&str> {
        self.resources.iter().filter(|r| !r.created).map(|r| r.name.as_str()).collect()
    }
}

impl fmt::Display for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.resources {
            writeln!(f, "{:<13} {:<40} {}", r.kind, r.name, if r.created { "created" } else { "exists" })?;
        }
        Ok(())
    }
}

/// Creates (or converges) every AWS resource of the stage, using the default SDK config.
pub async fn provision(settings: &Settings) -> Result<ProvisionReport, BackendError> {
    let sdk = sdk_config(settings).await;
    provision_with(settings, &sdk).await
}

/// [`provision`] with a given SDK config (tests pass one with static credentials).
pub async fn provision_with(settings: &Settings, sdk: &SdkConfig) -> Result<ProvisionReport, BackendError> {
    let mut report = provision_queues(settings, sdk).await?;
    report.resources.extend(provision_jobs_table(settings, sdk).await?.resources);
    report.resources.extend(provision_budget_table(settings, sdk).await?.resources);
    report.resources.extend(provision_bucket(settings, sdk).await?.resources);
    report.resources.extend(provision_event_topic(settings, sdk).await?.resources);
    Ok(report)
}

/// The job events topic (`atlas-codex-events-{stage}`); `CreateTopic` is idempotent by name.
pub async fn provision_event_topic(settings: &Settings, sdk: &SdkConfig) -> Result<ProvisionReport, BackendError> {
    let mut report = ProvisionReport::default();
    let sns = super::calls::sns(sdk);
    let topic = settings.event_topic();
    let existed = super::sns::SnsEvents::find(&sns, &topic, "", None).await.is_ok();
    sns.create_topic().name(&topic).send().await.map_err(|e| classify(&e))?;
    report.push("event topic", &topic, !existed);
    Ok(report)
}

/// The DLQ (14-day retention) and the queue (visibility timeout, long-poll wait, redrive policy
/// to the DLQ after `queue.max_receive_count` receives), created or brought up to date.
pub async fn provision_queues(settings: &Settings, sdk: &SdkConfig) -> Result<ProvisionReport, BackendError> {
    let mut report = ProvisionReport::default();
    let sqs = super::calls::sqs(sdk);
    // DLQ first: the queue's redrive policy names its ARN.
    let dlq = settings.dlq_name();
    let dlq_attrs = HashMap::from([(QueueAttributeName::MessageRetentionPeriod, DLQ_RETENTION_SECS.to_string())]);
    let (dlq_url, created) = ensure_queue(&sqs, &dlq, dlq_attrs).await?;
    report.push("dlq", &dlq, created);
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| classify(&e))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .ok_or_else(|| BackendError::Other(format!("queue {dlq}: no ARN")))?;

    let queue = settings.queue_name();
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": settings.queue.max_receive_count.max(1),
    })
    .to_string();
    let queue_attrs = HashMap::from([
        (
            QueueAttributeName::VisibilityTimeout,
            settings.queue.visibility_timeout_secs.min(crate::backend::limits::SQS_MAX_VISIBILITY_SECS).to_string(),
        ),
        (QueueAttributeName::ReceiveMessageWaitTimeSeconds, settings.queue.wait_time_secs.min(20).to_string()),
        (QueueAttributeName::RedrivePolicy, redrive),
    ]);
    let (_, created) = ensure_queue(&sqs, &queue, queue_attrs).await?;
    report.push("queue", &queue, created);
    Ok(report)
}

/// The jobs table: `id` key, the `status-created_at-index` GSI, TTL on `expires_at`.
pub async fn provision_jobs_table(settings: &Settings, sdk: &SdkConfig) -> Result<ProvisionReport, BackendError> {
    let ddb = super::calls::dynamodb(sdk);
    let jobs = settings.jobs_table();
    let created = ensure_table(&ddb, &jobs, TableShape::Jobs).await?;
    ensure_ttl(&ddb, &jobs, "expires_at").await?;
    let mut report = ProvisionReport::default();
    report.push("jobs table", &jobs, created);
    Ok(report)
}

/// The budget ledger table: `period` key.
pub async fn provision_budget_table(settings: &Settings, sdk: &SdkConfig) -> Result<ProvisionReport, BackendError> {
    let ddb = super::calls::dynamodb(sdk);
    let budget = settings.budget_table();
    let created = ensure_table(&ddb, &budget, TableShape::Budget).await?;
    // Rate-limit windows (`rate#…` items) expire; the month items carry no `expires_at`.
    ensure_ttl(&ddb, &budget, "expires_at").await?;
    let mut report = ProvisionReport::default();
    report.push("budget table", &budget, created);
    Ok(report)
}

/// The artifacts bucket (in the SDK config's region).
pub async fn provision_bucket(settings: &Settings, sdk: &SdkConfig) -> Result<ProvisionReport, BackendError> {
    let bucket = settings.bucket();
    let region = sdk.region().map(|r| r.as_ref().to_string());
    let created = ensure_bucket(&s3::client(sdk), &bucket, region.as_deref()).await?;
    let mut report = ProvisionReport::default();
    report.push("bucket", &bucket, created);
    Ok(report)
}

/// Creates a queue with `attrs`, or sets them on the existing one. Returns (url, created).
async fn ensure_queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attrs: HashMap<QueueAttributeName, String>,
) -> Result<(String, bool), BackendError> {
    match super::sqs::queue_url_of(sqs, name).await {
        Ok(url) => {
            sqs.set_queue_attributes().queue_url(&url).set_attributes(Some(attrs)).send().await.map_err(|e| classify(&e))?;
            Ok((url, false))
        }
        Err(BackendError::NotFound(_)) => {
            let out = sqs.create_queue().queue_name(name).set_attributes(Some(attrs)).send().await.map_err(|e| classify(&e))?;
            let url = out.queue_url().map(str::to_string).ok_or_else(|| BackendError::Other(format!("queue {name}: no URL returned")))?;
            Ok((url, true))
        }
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy)]
enum TableShape {
    Jobs,
    Budget,
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, BackendError> {
    KeySchemaElement::builder().attribute_name(name).key_type(kind).build().map_err(|e| BackendError::Other(format!("key schema: {e}")))
}

fn attr(name: &str) -> Result<AttributeDefinition, BackendError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| BackendError::Other(format!("attribute definition: {e}")))
}

/// Creates the table when missing and waits until it is active. Returns whether it was created.
async fn ensure_table(ddb: &aws_sdk_dynamodb::Client, name: &str, shape: TableShape) -> Result<bool, BackendError> {
    match ddb.describe_table().table_name(name).send().await {
        Ok(_) => {
            wait_active(ddb, name).await?;
            return Ok(false);
        }
        Err(e) => match classify(&e) {
            BackendError::NotFound(_) => {}
            other => return Err(other),
        },
    }
    let mut req = ddb.create_table().table_name(name).billing_mode(BillingMode::PayPerRequest);
    match shape {
        TableShape::Jobs => {
            let gsi = GlobalSecondaryIndex::builder()
                .index_name(STATUS_INDEX)
                .key_schema(key("status", KeyType::Hash)?)
                .key_schema(key("created_at", KeyType::Range)?)
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .map_err(|e| BackendError::Other(format!("index: {e}")))?;
            req = req
                .attribute_definitions(attr("id")?)
                .attribute_definitions(attr("status")?)
                .attribute_definitions(attr("created_at")?)
                .key_schema(key("id", KeyType::Hash)?)
                .global_secondary_indexes(gsi);
        }
        TableShape::Budget => {
            req = req.attribute_definitions(attr("period")?).key_schema(key("period", KeyType::Hash)?);
        }
    }
    match req.send().await {
        Ok(_) => {}
        // Another provisioner won the race: fine.
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => {
            wait_active(ddb, name).await?;
            return Ok(false);
        }
        Err(e) => return Err(classify(&e)),
    }
    wait_active(ddb, name).await?;
    Ok(true)
}

async fn wait_active(ddb: &aws_sdk_dynamodb::Client, name: &str) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    loop {
        let out = ddb.describe_table().table_name(name).send().await.map_err(|e| classify(&e))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BackendError::Transient(format!("table {name} not active after {TABLE_ACTIVE_TIMEOUT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Turns on TTL on `attribute` unless it already is.
async fn ensure_ttl(ddb: &aws_sdk_dynamodb::Client, table: &str, attribute: &str) -> Result<(), BackendError> {
    let out = ddb.describe_time_to_live().table_name(table).send().await.map_err(|e| classify(&e))?;
    let on = out.time_to_live_description().is_some_and(|d| {
        matches!(d.time_to_live_status(), Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling))
            && d.attribute_name() == Some(attribute)
    });
    if on {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(attribute)
        .build()
        .map_err(|e| BackendError::Other(format!("ttl spec: {e}")))?;
    ddb.update_time_to_live().table_name(table).time_to_live_specification(spec).send().await.map_err(|e| classify(&e))?;
    Ok(())
}

/// Creates the bucket unless it exists (ours). Returns whether it was created.
async fn ensure_bucket(s3c: &aws_sdk_s3::Client, bucket: &str, region: Option<&str>) -> Result<bool, BackendError> {
    match s3c.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(false),
        Err(e) => match classify(&e) {
            BackendError::NotFound(_) => {}
            // HeadBucket has no body, so a missing bucket is a bare 404.
            BackendError::Other(m) if m.contains("HTTP 404") => {}
            other => return Err(other),
        },
    }
    let mut req = s3c.create_bucket().bucket(bucket);
    if let Some(r) = region.filter(|r| *r != "us-east-1") {
        req = req.create_bucket_configuration(
            CreateBucketConfiguration::builder().location_constraint(BucketLocationConstraint::from(r)).build(),
        );
    }
    match req.send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_bucket_already_owned_by_you()) => Ok(false),
        Err(e) => Err(classify(&e)),
    }
}
