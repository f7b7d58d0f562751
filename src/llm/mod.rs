//! The LLM seam: [`LlmClient`] and its request/response types.
//!
//! Providers: [`openai`] (async-openai against any OpenAI-compatible server, chat completions)
//! and [`simulated`] (schema-conforming answers with realistic usage and latency, no spending).

pub mod openai;
pub mod schema;
pub mod simulated;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::job::Usage;

/// How the model must shape its answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object (validated afterwards).
    JsonObject,
    /// Structured output against a schema.
    JsonSchema {
        /// Schema name sent to the provider (`[A-Za-z0-9_-]`).
        name: String,
        /// The (strict-adapted) schema.
        schema: Value,
        /// `strict: true` on the wire.
        strict: bool,
    },
}

/// Per-call parameters, from the model's tier settings in config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallParams {
    /// gpt-5 style (`reasoning_effort`, `verbosity`, no temperature) rather than GPT-4 style
    /// (`temperature`). Both send their cap as `max_completion_tokens`.
    pub reasoning_model: bool,
    /// Upper bound on output tokens (also the budget reservation's output size).
    pub max_output_tokens: u32,
    /// GPT-4 class only.
    pub temperature: Option<f32>,
    /// gpt-5 only: `minimal` | `low` | `medium` | `high`.
    pub reasoning_effort: Option<String>,
    /// gpt-5 only: `low` | `medium` | `high`.
    pub verbosity: Option<String>,
}

/// One chat completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    /// Model id as the provider knows it.
    pub model: String,
    /// System message.
    pub system: String,
    /// User message (instructions plus the cleaned page).
    pub user: String,
    /// Output shape.
    pub response_format: ResponseFormat,
    /// Tier parameters.
    pub params: CallParams,
    /// The schema the answer must satisfy, for providers that synthesise answers (simulated).
    pub output_schema: Option<Value>,
}

/// A completed call.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmResponse {
    /// The message content (JSON text for structured calls).
    pub content: String,
    /// Tokens as reported by the provider.
    pub usage: Usage,
    /// The model that answered.
    pub model: String,
    /// True for the simulated provider.
    pub simulated: bool,
    /// What the provider's `x-ratelimit-*` headers said about the key, when it sent them.
    pub limits: Option<ProviderLimits>,
}

/// The provider's view of the key's rate limits, from the `x-ratelimit-*` headers of an answer
/// (`limit-requests`, `limit-tokens`, `remaining-requests`, `remaining-tokens`,
/// `reset-requests`, `reset-tokens`). Absent headers are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    /// Requests per minute the key allows.
    pub limit_requests: Option<u64>,
    /// Tokens per minute the key allows.
    pub limit_tokens: Option<u64>,
    /// Requests left before the limit.
    pub remaining_requests: Option<u64>,
    /// Tokens left before the limit.
    pub remaining_tokens: Option<u64>,
    /// Until the request limit is fully replenished.
    pub reset_requests: Option<std::time::Duration>,
    /// Until the token limit is fully replenished.
    pub reset_tokens: Option<std::time::Duration>,
}

impl ProviderLimits {
    /// True when no header was present.
    pub fn is_empty(&self) -> bool {
        *self == ProviderLimits::default()
    }
}

/// Why a call failed. None of these carry secrets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// 429: slow down; never fails a job by itself.
    #[error("rate limited (retry after {retry_after:?})")]
    RateLimited {
        /// From `Retry-After` or `x-ratelimit-reset-*`.
        retry_after: Option<Duration>,
    },
    /// 5xx from the provider.
    #[error("provider error {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Provider's message.
        message: String,
    },
    /// No answer in time.
    #[error("model call timed out")]
    Timeout,
    /// 4xx other than 429: the request itself is wrong (bad model id, bad schema).
    #[error("request rejected {status}: {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// Provider's message.
        message: String,
    },
    /// Connection-level failure.
    #[error("transport error: {0}")]
    Transport(String),
    /// The provider answered (and billed) but the answer is not usable: a refusal, the output
    /// cap reached (`finish_reason: length`), or content filtered. The usage is kept so the
    /// call is charged what it cost.
    #[error("{reason:?}: {message}")]
    Unfinished {
        /// Why the answer ended.
        reason: Unfinished,
        /// Tokens billed for the call.
        usage: Usage,
        /// What the provider said (never page content).
        message: String,
    },
}

/// Why a billed answer carries no usable content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// The model refused (`refusal` set).
    Refusal,
    /// The output token cap was reached (`finish_reason: length`).
    Length,
    /// The provider's content filter stopped the answer.
    ContentFilter,
}

impl Unfinished {
    /// How a call that ended so is recorded.
    pub fn outcome(self) -> crate::job::CallOutcome {
        match self {
            Unfinished::Refusal => crate::job::CallOutcome::Refused,
            Unfinished::Length => crate::job::CallOutcome::Length,
            Unfinished::ContentFilter => crate::job::CallOutcome::ContentFilter,
        }
    }

    /// The label used in records and metrics.
    pub fn as_str(self) -> &'static str {
        self.outcome().as_str()
    }
}

/// A chat-completions provider.
#[async_trait]
pub trait LlmClient: Send + Sync + 'static {
    /// Makes one call; no hidden retries (the caller decides on retries and fallbacks).
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError>;
    /// Provider name for logs (`openai`, `simulated`).
    fn name(&self) -> &'static str;
}
