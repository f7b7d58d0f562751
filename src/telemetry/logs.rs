//! Structured logs: the subscriber on stderr, and the bounds on error text logged with an outcome.

use crate::settings::{LogFormat, TelemetrySettings};

/// Log directives added to `telemetry.log_level` unless it names an `aws` target itself.
const QUIET_SDK_TARGETS: &[&str] = &[
    "aws_config=error",
    "aws_smithy_runtime=error",
    "aws_smithy_runtime_api=error",
    "aws_sdk_sqs=error",
    "aws_sdk_dynamodb=error",
    "aws_sdk_s3=error",
    "aws_sdk_sns=error",
];

/// Sets up structured logging on stderr: JSON or human-readable per `t.log_format`.
///
/// The filter is `RUST_LOG` when it is set and valid, else `t.log_level` (with the AWS SDK's
/// targets at `error`), else `info`. Safe to call more than once (later calls do nothing): tests
/// and the binary may both call it.
pub fn init_tracing(t: &TelemetrySettings) {
    use tracing_subscriber::EnvFilter;
    let mut problem = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => Some(f),
            Err(e) => {
                problem = Some(format!("RUST_LOG is not a valid filter ({e}); using telemetry.log_level"));
                None
            }
        },
        _ => None,
    };
    let filter = match filter {
        Some(f) => f,
        None => match EnvFilter::try_new(&t.log_level) {
            // The AWS SDK logs every failed credentials provider and retry at WARN, kilobytes of
            // debug output around one error the worker reports in a line of its own.
            Ok(f) if !t.log_level.contains("aws") => {
                QUIET_SDK_TARGETS.iter().filter_map(|d| d.parse().ok()).fold(f, |f, d| f.add_directive(d))
            }
            Ok(f) => f,
            Err(e) => {
                problem = Some(format!("telemetry.log_level is not a valid filter ({e}); using info"));
                EnvFilter::new("info")
            }
        },
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match t.log_format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).flatten_event(true).try_init().is_ok(),
        LogFormat::Pretty => builder.with_target(true).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init().is_ok(),
    };
    if installed {
        if let Some(p) = problem {
            tracing::warn!(problem = %p, "log filter fallback");
        }
    }
}

/// Longest error text logged with a job outcome, in characters; longer text is cut with `…`.
pub const MAX_ERROR_LOG_CHARS: usize = 1024;

/// Defence in depth for the `error` field of outcome logs: errors are built never to hold secrets,
/// but an upstream body echoed into one might. Redacts ([`crate::redact::text`]: the registered
/// key, `sk-…` tokens, whatever follows `Bearer `) and bounds the length.
pub(super) fn sanitize_error(e: &str) -> String {
    let mut out = crate::redact::text(e);
    if out.chars().count() > MAX_ERROR_LOG_CHARS {
        out = out.chars().take(MAX_ERROR_LOG_CHARS).collect::<String>() + "…";
    }
    out
}
