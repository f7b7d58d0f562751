//! Every AWS request the worker sends, counted: one SDK interceptor on each service client adds
//! one to `atlas_aws_requests_total{service, operation}` per HTTP attempt (retries included, so
//! the count is what AWS bills), and to a process-wide total per service and operation
//! that `atlas-codex bench` reads for "AWS calls per job".

use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};

/// The AWS services the worker talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The job queue and its DLQ.
    Sqs,
    /// The job table, the budget ledger and the rate-limit windows.
    DynamoDb,
    /// Results and claim-checked inputs.
    S3,
    /// The job events topic.
    Sns,
}

impl Service {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Sqs => "sqs",
            Service::DynamoDb => "dynamodb",
            Service::S3 => "s3",
            Service::Sns => "sns",
        }
    }

    fn total(self) -> &'static AtomicU64 {
        static TOTALS: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        &TOTALS[self as usize]
    }
}

/// AWS requests sent by this process so far, per service (`(sqs, dynamodb, s3)`).
pub fn requests_sent() -> (u64, u64, u64) {
    let n = |s: Service| s.total().load(Ordering::Relaxed);
    (n(Service::Sqs), n(Service::DynamoDb), n(Service::S3))
}

/// AWS requests sent by this process so far, by `service.operation` (e.g. `dynamodb.UpdateItem`).
pub fn requests_by_operation() -> std::collections::BTreeMap<String, u64> {
    by_operation().lock().map(|m| m.clone()).unwrap_or_default()
}

fn by_operation() -> &'static std::sync::Mutex<std::collections::BTreeMap<String, u64>> {
    static MAP: std::sync::OnceLock<std::sync::Mutex<std::collections::BTreeMap<String, u64>>> = std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// The interceptor: counts each attempt as it is transmitted.
#[derive(Debug)]
struct CountRequests(Service);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "atlas-count-requests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let request = context.request();
        // SQS and DynamoDB name the operation in `X-Amz-Target` (`DynamoDB_20120810.PutItem`,
        // `AmazonSQS.ReceiveMessage`); S3 and SNS (a form POST) by method, so the method is the label.
        let operation = request.headers().get("x-amz-target").and_then(|t| t.rsplit('.').next()).unwrap_or_else(|| request.method());
        self.0.total().fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = by_operation().lock() {
            *m.entry(format!("{}.{operation}", self.0.as_str())).or_insert(0) += 1;
        }
        crate::telemetry::aws_request(self.0.as_str(), operation);
        Ok(())
    }
}

/// A DynamoDB client of the stage's SDK config, its requests counted.
pub fn dynamodb(sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(CountRequests(Service::DynamoDb)).build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// An SQS client of the stage's SDK config, its requests counted.
pub fn sqs(sdk: &SdkConfig) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::config::Builder::from(sdk).interceptor(CountRequests(Service::Sqs)).build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// An S3 client of the stage's SDK config (path-style addressing on an emulator), its requests
/// counted.
pub fn s3(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(sdk.endpoint_url().is_some())
        .interceptor(CountRequests(Service::S3))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An SNS client of the stage's SDK config, its requests counted.
pub fn sns(sdk: &SdkConfig) -> aws_sdk_sns::Client {
    let conf = aws_sdk_sns::config::Builder::from(sdk).interceptor(CountRequests(Service::Sns)).build();
    aws_sdk_sns::Client::from_conf(conf)
}
