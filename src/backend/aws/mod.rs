//! The AWS backends: SQS ([`SqsQueue`]), DynamoDB ([`DynamoJobStore`], [`DynamoLedger`]) and S3
//! ([`S3Artifacts`]), plus [`provision`](provision::provision) for the stage's resources.
//!
//! Every SDK error goes through the one [`classify`] function, so "is this worth retrying?" is
//! decided in one place for all three services.

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use crate::backend::{BResult, BackendError, Backends};
use crate::settings::Settings;

pub mod calls;
pub mod dynamo;
pub mod provision;
pub mod rate;
pub mod s3;
pub mod sns;
pub mod sqs;

pub use dynamo::{DynamoJobStore, DynamoLedger};
pub use provision::{provision, provision_with, ProvisionReport, ProvisionedResource};
pub use rate::DynamoRateStore;
pub use s3::S3Artifacts;
pub use sqs::SqsQueue;

/// TCP connect timeout for every AWS call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt's limit: above SQS's longest long poll (20 s) with room for a slow response.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(35);
/// One call's limit, all retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// The SDK config loader for a stage, before loading: region from `aws.region` (else the SDK's
/// chain), endpoint from `aws.endpoint_url` (else `AWS_ENDPOINT_URL` / the real endpoints),
/// standard retries with `aws.max_attempts`, and timeouts that leave room for a 20 s long poll.
/// Credentials come from the default chain (env, profile, web identity for IRSA, ECS, IMDS).
/// Exposed so tests can swap the credentials provider and keep everything else.
pub fn config_loader(settings: &Settings) -> ConfigLoader {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(settings.aws.max_attempts.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        );
    if !settings.aws.region.trim().is_empty() {
        loader = loader.region(Region::new(settings.aws.region.trim().to_string()));
    }
    if !settings.aws.endpoint_url.trim().is_empty() {
        loader = loader.endpoint_url(settings.aws.endpoint_url.trim().to_string());
    }
    loader
}

/// The shared SDK config every AWS client of the stage is built from (see [`config_loader`]).
pub async fn sdk_config(settings: &Settings) -> SdkConfig {
    config_loader(settings).load().await
}

/// How long finding credentials may take at start (IMDS and web identity are network calls).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(10);

/// The stage's AWS backends, built from the default SDK config, after checking what a worker
/// needs before its first message: credentials, the queues (URLs resolved by name), both tables
/// and the bucket. Each failure is one line that says what to do (see [`explain_open_error`]);
/// an unreachable endpoint stays [`BackendError::Transient`] so the caller may wait for it.
pub async fn open_backends(settings: &Settings) -> Result<Backends, BackendError> {
    let sdk = sdk_config(settings).await;
    check_credentials(&sdk).await?;
    let explain = |e| explain_open_error(e, settings);
    let backends = open_backends_with(settings, &sdk).await.map_err(explain)?;
    let dynamo = calls::dynamodb(&sdk);
    for table in [settings.jobs_table(), settings.budget_table()] {
        dynamo
            .describe_table()
            .table_name(&table)
            .send()
            .await
            .map_err(|e| explain(with_context(classify(&e), &format!("table {table}"))))?;
    }
    let bucket = settings.bucket();
    s3::client(&sdk)
        .head_bucket()
        .bucket(&bucket)
        .send()
        .await
        .map_err(|e| explain(with_context(classify(&e), &format!("bucket {bucket}"))))?;
    Ok(backends)
}

/// Fails with one clear line when no credentials provider in the default chain has any.
async fn check_credentials(sdk: &SdkConfig) -> Result<(), BackendError> {
    use aws_sdk_sqs::config::ProvideCredentials;
    let Some(provider) = sdk.credentials_provider() else {
        return Err(BackendError::Other(NO_CREDENTIALS.into()));
    };
    match tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(BackendError::Other(NO_CREDENTIALS.into())),
    }
}

const NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with the stage's IAM role (IRSA: the chart's serviceAccount.annotations eks.amazonaws.com/role-arn)";

/// Error codes that mean the credentials were refused or the role may not do this.
const DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AWS.SimpleQueueService.AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "AuthorizationError",
    "Forbidden",
];

fn with_context(e: BackendError, what: &str) -> BackendError {
    match e {
        BackendError::Transient(m) => BackendError::Transient(format!("{what}: {m}")),
        BackendError::Conflict(m) => BackendError::Conflict(format!("{what}: {m}")),
        BackendError::NotFound(m) => BackendError::NotFound(format!("{what}: {m}")),
        BackendError::Other(m) => BackendError::Other(format!("{what}: {m}")),
    }
}

/// Turns an error met while opening the stage into what to do about it: an unreachable endpoint
/// (kept transient), a missing queue, table or bucket, refused credentials or a missing
/// permission. Anything else passes unchanged.
pub fn explain_open_error(e: BackendError, settings: &Settings) -> BackendError {
    let endpoint = if settings.aws.endpoint_url.trim().is_empty() {
        format!("the AWS endpoints of region `{}`", settings.aws.region.trim())
    } else {
        settings.aws.endpoint_url.trim().to_string()
    };
    match e {
        BackendError::Transient(m) if m.contains("could not be sent") || m.contains("timed out") => BackendError::Transient(format!(
            "cannot reach {endpoint} ({m}); check aws.endpoint_url (AWS_ENDPOINT_URL), aws.region and the network"
        )),
        BackendError::NotFound(m) => BackendError::NotFound(format!(
            "{m}; create the stage's resources with `atlas-codex --stage {} provision` or deploy deploy/cloudformation/atlas-codex-stage.yaml",
            settings.stage
        )),
        BackendError::Other(m) if m.contains("(HTTP 403)") || DENIED_CODES.iter().any(|c| m.contains(c)) => BackendError::Other(format!(
            "access denied: {m}; check the credentials, and that the role has the stage's worker policy (deploy/cloudformation/atlas-codex-stage.yaml)"
        )),
        other => other,
    }
}

/// [`open_backends`] with a given SDK config (tests pass one with static credentials).
pub async fn open_backends_with(settings: &Settings, sdk: &SdkConfig) -> Result<Backends, BackendError> {
    let queue = SqsQueue::open(sdk, &settings.queue_name(), &settings.dlq_name()).await?;
    let dynamo = calls::dynamodb(sdk);
    let jobs = DynamoJobStore::new(dynamo.clone(), settings.jobs_table(), settings.storage.retention_days);
    let ledger = DynamoLedger::new(dynamo.clone(), settings.budget_table());
    let rates = DynamoRateStore::new(dynamo, settings.budget_table());
    let artifacts = S3Artifacts::new(s3::client(sdk), settings.bucket());
    let events: Arc<dyn crate::events::EventSink> = if settings.events.enabled {
        let topic = settings.event_topic();
        let region = sdk.region().map(|r| r.as_ref().to_string()).unwrap_or_default();
        let derived = sns::account_of_queue_url(queue.queue_url()).filter(|_| !region.is_empty()).map(|a| (region.as_str(), a));
        let events = sns::SnsEvents::open(calls::sns(sdk), &topic, &settings.events.topic_arn, derived).await;
        Arc::new(events.map_err(|e| with_context(e, &format!("topic {topic}")))?)
    } else {
        Arc::new(crate::events::NoEvents)
    };
    Ok(Backends {
        queue: Arc::new(queue),
        jobs: Arc::new(jobs),
        ledger: Arc::new(ledger),
        artifacts: Arc::new(artifacts),
        rates: Arc::new(rates),
        events,
    })
}

/// The HTTP status of a raw response, so [`classify`] can look at 5xx without knowing the
/// response type.
pub trait HttpStatus {
    /// The status code, if there is one.
    fn http_status(&self) -> Option<u16>;
}

impl HttpStatus for HttpResponse {
    fn http_status(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }
}

/// Error codes that mean "slow down" across SQS, DynamoDB and S3.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
    "TransactionConflictException",
    "LimitExceededException",
    "SlowDown",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "KMS.ThrottlingException",
    "AWS.SimpleQueueService.KmsThrottled",
];

/// Error codes that mean "the named thing does not exist".
const NOT_FOUND_CODES: &[&str] = &[
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "NonExistentQueue",
    "QueueDoesNotExist",
    "NoSuchKey",
    "NoSuchBucket",
    "NotFound",
    "TableNotFoundException",
];

/// Error codes that mean a conditional write lost.
const CONFLICT_CODES: &[&str] = &["ConditionalCheckFailedException", "ConditionalCheckFailed"];

/// A conditional write's answer: `true` when it was applied, `false` when its condition failed
/// ([`BackendError::Conflict`]), any other error as [`classify`] maps it.
pub(crate) fn condition_held<T, E, R>(res: Result<T, SdkError<E, R>>) -> BResult<bool>
where
    E: ProvideErrorMetadata,
    R: HttpStatus,
{
    match res {
        Ok(_) => Ok(true),
        Err(e) => match classify(&e) {
            BackendError::Conflict(_) => Ok(false),
            other => Err(other),
        },
    }
}

/// The one place that decides what an AWS SDK error means for the caller:
/// throttling codes, 5xx, timeouts and dispatch failures are [`BackendError::Transient`];
/// failed conditions (and transactions cancelled by one) are [`BackendError::Conflict`]; missing
/// queues, tables, buckets and keys are [`BackendError::NotFound`]; anything else is
/// [`BackendError::Other`]. The message carries the code and the service's message, never
/// request content.
pub fn classify<E, R>(err: &SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata,
    R: HttpStatus,
{
    match err {
        SdkError::TimeoutError(_) => BackendError::Transient("AWS call timed out".into()),
        SdkError::DispatchFailure(d) => {
            let kind = if d.is_timeout() {
                "timeout"
            } else if d.is_io() {
                "I/O error"
            } else {
                "connection error"
            };
            if d.is_user() {
                BackendError::Other(format!("AWS request could not be sent: {kind}"))
            } else {
                BackendError::Transient(format!("AWS request could not be sent: {kind}"))
            }
        }
        SdkError::ConstructionFailure(_) => BackendError::Other("AWS request could not be built (invalid input)".into()),
        SdkError::ResponseError(r) => {
            // A truncated or garbled body is almost always the network or an overloaded
            // endpoint; the calls that reach here are safe to repeat.
            let status = r.raw().http_status();
            BackendError::Transient(format!("unreadable AWS response (HTTP {})", fmt_status(status)))
        }
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or("");
            let status = se.raw().http_status();
            let msg = format!(
                "{} (HTTP {}): {}",
                if code.is_empty() { "unknown error" } else { code },
                fmt_status(status),
                e.message().unwrap_or("")
            );
            classify_code(code, status, e.message().unwrap_or(""), msg)
        }
        _ => BackendError::Other(format!("AWS error: {err}")),
    }
}

fn fmt_status(s: Option<u16>) -> String {
    s.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
}

/// The decision by code and status, shared by [`classify`] and its tests.
fn classify_code(code: &str, status: Option<u16>, message: &str, msg: String) -> BackendError {
    if CONFLICT_CODES.contains(&code) {
        return BackendError::Conflict(msg);
    }
    if code == "TransactionCanceledException" {
        // Cancelled because one of the items' conditions failed: a lost conditional write.
        // Cancelled for throttling or a conflicting transaction: worth retrying.
        if message.contains("ConditionalCheckFailed") {
            return BackendError::Conflict(msg);
        }
        if message.contains("TransactionConflict") || message.contains("Throttling") || message.contains("ProvisionedThroughputExceeded") {
            return BackendError::Transient(msg);
        }
        return BackendError::Conflict(msg);
    }
    if THROTTLING_CODES.contains(&code) {
        return BackendError::Transient(msg);
    }
    if NOT_FOUND_CODES.contains(&code) {
        return BackendError::NotFound(msg);
    }
    match status {
        Some(s) if s >= 500 => BackendError::Transient(msg),
        Some(429) => BackendError::Transient(msg),
        Some(404) if code.is_empty() => BackendError::NotFound(msg),
        _ => BackendError::Other(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_sdk_sqs::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;

    fn raw(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().expect("valid status"), SdkBody::empty())
    }

    fn sqs_err(code: &str, status: u16) -> SdkError<ReceiveMessageError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message("detail").build();
        SdkError::service_error(ReceiveMessageError::generic(meta), raw(status))
    }

    fn ddb_err(code: &str, message: &str, status: u16) -> SdkError<PutItemError, HttpResponse> {
        let meta = aws_sdk_dynamodb::error::ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(PutItemError::generic(meta), raw(status))
    }

    #[test]
    fn throttling_and_5xx_are_transient() {
        assert!(matches!(classify(&sqs_err("ThrottlingException", 400)), BackendError::Transient(_)));
        assert!(matches!(classify(&ddb_err("ProvisionedThroughputExceededException", "slow", 400)), BackendError::Transient(_)));
        assert!(matches!(classify(&sqs_err("SlowDown", 503)), BackendError::Transient(_)));
        assert!(matches!(classify(&sqs_err("Whatever", 500)), BackendError::Transient(_)));
        assert!(matches!(classify(&sqs_err("", 502)), BackendError::Transient(_)));
        assert!(matches!(classify(&sqs_err("", 429)), BackendError::Transient(_)));
    }

    #[test]
    fn timeouts_and_dispatch_failures_are_transient() {
        let t: SdkError<ReceiveMessageError, HttpResponse> = SdkError::timeout_error("took too long");
        assert!(classify(&t).is_retryable());
        let d: SdkError<ReceiveMessageError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        assert!(classify(&d).is_retryable());
        let d: SdkError<ReceiveMessageError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::timeout("read timed out".into()));
        assert!(classify(&d).is_retryable());
        let r: SdkError<ReceiveMessageError, HttpResponse> = SdkError::response_error("truncated", raw(502));
        assert!(classify(&r).is_retryable());
    }

    #[test]
    fn failed_conditions_are_conflicts() {
        let typed = PutItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder()
                .message("The conditional request failed")
                .meta(aws_sdk_dynamodb::error::ErrorMetadata::builder().code("ConditionalCheckFailedException").build())
                .build(),
        );
        let e: SdkError<PutItemError, HttpResponse> = SdkError::service_error(typed, raw(400));
        assert!(matches!(classify(&e), BackendError::Conflict(_)));
        let tx = ddb_err(
            "TransactionCanceledException",
            "Transaction cancelled, please refer cancellation reasons for specific reasons \
             [None, ConditionalCheckFailed]",
            400,
        );
        assert!(matches!(classify(&tx), BackendError::Conflict(_)));
        let tx = ddb_err("TransactionCanceledException", "Transaction cancelled [TransactionConflict, None]", 400);
        assert!(matches!(classify(&tx), BackendError::Transient(_)));
    }

    #[test]
    fn missing_resources_are_not_found() {
        for code in
            ["ResourceNotFoundException", "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NoSuchKey", "NoSuchBucket"]
        {
            assert!(matches!(classify(&sqs_err(code, 400)), BackendError::NotFound(_)), "{code}");
        }
    }

    #[test]
    fn everything_else_is_other_and_not_retryable() {
        for code in ["AccessDenied", "ValidationException", "InvalidParameterValue", ""] {
            let e = classify(&sqs_err(code, 400));
            assert!(matches!(e, BackendError::Other(_)), "{code}: {e:?}");
            assert!(!e.is_retryable());
        }
        let c: SdkError<ReceiveMessageError, HttpResponse> = SdkError::construction_failure("bad input");
        assert!(matches!(classify(&c), BackendError::Other(_)));
    }

    #[test]
    fn message_names_code_and_status() {
        let e = classify(&sqs_err("AccessDenied", 403));
        let text = e.to_string();
        assert!(text.contains("AccessDenied") && text.contains("403"), "{text}");
    }

    #[test]
    fn loader_takes_region_and_endpoint_from_settings() {
        let mut s = Settings::default();
        s.aws.region = "eu-west-1".into();
        s.aws.endpoint_url = "http://127.0.0.1:9".into();
        s.aws.max_attempts = 7;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let cfg = rt.block_on(config_loader(&s).test_credentials().load());
        assert_eq!(cfg.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(cfg.endpoint_url(), Some("http://127.0.0.1:9"));
        assert_eq!(cfg.retry_config().map(|r| r.max_attempts()), Some(7));
        let t = cfg.timeout_config().expect("timeouts");
        assert_eq!(t.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
    }
}
