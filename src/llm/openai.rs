//! The OpenAI provider: chat completions against any OpenAI-compatible server.
//!
//! The request and response bodies are async-openai's own types
//! ([`CreateChatCompletionRequest`], [`CreateChatCompletionResponse`]), so the wire format follows
//! the library. The HTTP exchange itself is one `reqwest` call made here, not through
//! `async_openai::Client`, because the worker needs two things the library's client does not give:
//! the response headers of a failed call (`Retry-After`, `x-ratelimit-reset-*` on a 429 are
//! dropped by its error type) and a guarantee of exactly one HTTP request per [`LlmClient::complete`]
//! (retries, escalations and fallbacks are the worker's decisions).
//!
//! The API key is sent as a bearer token marked sensitive, and never appears in an error, a log
//! line or this type's `Debug` output.

use std::time::{Duration, SystemTime};

use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage, CreateChatCompletionRequest,
    CreateChatCompletionResponse, FinishReason, ReasoningEffort, ResponseFormat as WireFormat, ResponseFormatJsonSchema, Verbosity,
};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;

use super::{LlmClient, LlmError, LlmRequest, LlmResponse, ProviderLimits, ResponseFormat};
use crate::job::Usage;
use crate::settings::Secret;

/// Longest provider error message kept in an [`LlmError`], in characters.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// A chat-completions client for one OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiClient {
    /// `{base_url}/chat/completions`.
    endpoint: String,
    /// HTTP client with the per-call timeout and the bearer token as a default (sensitive) header.
    http: reqwest::Client,
    /// Per-call timeout, kept for `Debug`.
    timeout: Duration,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient").field("endpoint", &self.endpoint).field("timeout", &self.timeout).field("api_key", &"***").finish()
    }
}

impl OpenAiClient {
    /// A client for `base_url` (e.g. `https://api.openai.com/v1`): calls go to
    /// `{base_url}/chat/completions` with `Authorization: Bearer {api_key}`, and each one gives up
    /// after `timeout` ([`LlmError::Timeout`]).
    ///
    /// Fails with [`LlmError::Transport`] when the base URL is not an http(s) URL or the key cannot
    /// be put in a header (the message never contains the key).
    pub fn new(base_url: &str, api_key: &Secret, timeout: Duration) -> Result<Self, LlmError> {
        // The key is redacted from everything this process writes from now on.
        crate::redact::register(api_key.expose());
        let parsed = url::Url::parse(base_url.trim()).map_err(|e| LlmError::Transport(format!("invalid LLM base URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LlmError::Transport(format!("invalid LLM base URL: scheme `{}` is not http or https", parsed.scheme())));
        }
        let endpoint = format!("{}/chat/completions", base_url.trim().trim_end_matches('/'));
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", api_key.expose()))
            .map_err(|_| LlmError::Transport("API key contains characters not allowed in an HTTP header".into()))?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| LlmError::Transport(format!("cannot build HTTP client: {e}")))?;
        Ok(OpenAiClient { endpoint, http, timeout })
    }

    /// The URL calls are sent to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// Builds the chat-completion request body for `request` (exposed so its wire shape can be tested
/// and inspected without a server).
///
/// Every model gets its output cap as `max_completion_tokens` (`max_tokens` is deprecated and
/// refused by reasoning models). Reasoning (gpt-5 style) models also get `reasoning_effort` and
/// `verbosity` and never `temperature`; GPT-4-class models get `temperature`.
pub fn build_request(request: &LlmRequest) -> Result<CreateChatCompletionRequest, LlmError> {
    let mut messages: Vec<ChatCompletionRequestMessage> = Vec::with_capacity(2);
    if !request.system.is_empty() {
        messages.push(ChatCompletionRequestSystemMessage::from(request.system.as_str()).into());
    }
    messages.push(ChatCompletionRequestUserMessage::from(request.user.as_str()).into());
    let response_format = match &request.response_format {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => Some(WireFormat::JsonObject),
        ResponseFormat::JsonSchema { name, schema, strict } => Some(WireFormat::JsonSchema {
            json_schema: ResponseFormatJsonSchema { description: None, name: name.clone(), schema: schema.clone(), strict: Some(*strict) },
        }),
    };
    let p = &request.params;
    let max = (p.max_output_tokens > 0).then_some(p.max_output_tokens);
    let mut body = CreateChatCompletionRequest { messages, model: request.model.clone(), response_format, ..Default::default() };
    body.max_completion_tokens = max;
    if p.reasoning_model {
        body.reasoning_effort = p.reasoning_effort.as_deref().map(parse_effort).transpose()?;
        body.verbosity = p.verbosity.as_deref().map(parse_verbosity).transpose()?;
    } else {
        body.temperature = p.temperature;
    }
    Ok(body)
}

fn parse_effort(s: &str) -> Result<ReasoningEffort, LlmError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| LlmError::BadRequest {
        status: 400,
        message: format!("unsupported reasoning_effort `{s}` (expected minimal, low, medium or high)"),
    })
}

fn parse_verbosity(s: &str) -> Result<Verbosity, LlmError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| LlmError::BadRequest { status: 400, message: format!("unsupported verbosity `{s}` (expected low, medium or high)") })
}

/// Maps the provider's usage block onto [`Usage`] (missing details count as zero).
pub fn usage_from(response: &CreateChatCompletionResponse) -> Usage {
    let Some(u) = &response.usage else { return Usage::default() };
    Usage {
        input_tokens: u64::from(u.prompt_tokens),
        cached_input_tokens: u.prompt_tokens_details.as_ref().and_then(|d| d.cached_tokens).map_or(0, u64::from),
        output_tokens: u64::from(u.completion_tokens),
        reasoning_tokens: u.completion_tokens_details.as_ref().and_then(|d| d.reasoning_tokens).map_or(0, u64::from),
    }
}

/// How long a 429 asks us to wait: `Retry-After` (seconds or an HTTP date), else `retry-after-ms`,
/// else the later of `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` (`1s`, `6m0s`,
/// `20ms`, `1h2m3.5s`). `None` when no header says.
pub fn retry_after_from_headers(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = get("retry-after") {
        if let Ok(secs) = v.parse::<f64>() {
            if secs.is_finite() && secs >= 0.0 {
                return Some(Duration::from_secs_f64(secs.min(86_400.0)));
            }
        }
        if let Ok(when) = httpdate_parse(v) {
            return Some(when.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(86_400.0)));
        }
    }
    let resets: Vec<Duration> =
        ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"].iter().filter_map(|h| get(h)).filter_map(parse_go_duration).collect();
    resets.into_iter().max()
}

/// The `x-ratelimit-*` headers of an answer; `None` when there are none.
pub fn provider_limits(headers: &HeaderMap) -> Option<ProviderLimits> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
    let dur = |name: &str| get(name).and_then(parse_go_duration);
    let l = ProviderLimits {
        limit_requests: num("x-ratelimit-limit-requests"),
        limit_tokens: num("x-ratelimit-limit-tokens"),
        remaining_requests: num("x-ratelimit-remaining-requests"),
        remaining_tokens: num("x-ratelimit-remaining-tokens"),
        reset_requests: dur("x-ratelimit-reset-requests"),
        reset_tokens: dur("x-ratelimit-reset-tokens"),
    };
    (!l.is_empty()).then_some(l)
}

/// Parses an HTTP date (RFC 7231 IMF-fixdate, e.g. `Wed, 21 Oct 2015 07:28:00 GMT`).
fn httpdate_parse(s: &str) -> Result<SystemTime, ()> {
    let dt = chrono::DateTime::parse_from_rfc2822(s).map_err(|_| ())?;
    let secs = dt.timestamp();
    if secs < 0 {
        return Err(());
    }
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// Parses Go-style durations as OpenAI sends them in `x-ratelimit-reset-*`: a sequence of
/// number+unit pairs with units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns` (`6m0s`, `20ms`, `1.5s`).
/// A bare number counts as seconds.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(86_400.0)))
}

/// The provider's error message from an error body (`{"error": {"message": ...}}`), else the
/// body text, cut to a sane length.
fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| {
        v.get("error")
            .and_then(|e| e.get("message").and_then(|m| m.as_str()).map(str::to_string).or_else(|| e.as_str().map(str::to_string)))
    });
    let msg = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    let msg = if msg.is_empty() { "(no message)".to_string() } else { msg };
    // A provider's 401 may echo the key it was given.
    cut(&crate::redact::text(&msg))
}

fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_MESSAGE_CHARS {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
        t.push('…');
        t
    }
}

fn transport_error(e: &reqwest::Error) -> LlmError {
    if e.is_timeout() {
        return LlmError::Timeout;
    }
    // The URL is the configured endpoint (no credentials); the key is only in a header.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    LlmError::Transport(cut(&msg))
}

#[async_trait]
impl LlmClient for OpenAiClient {
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        let body = build_request(request)?;
        let body =
            serde_json::to_vec(&body).map_err(|e| LlmError::BadRequest { status: 400, message: format!("cannot encode request: {e}") })?;
        let response = self
            .http
            .post(&self.endpoint)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| transport_error(&e))?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = retry_after_from_headers(&headers, SystemTime::now());
            tracing::debug!(model = %request.model, ?retry_after, "model call rate limited");
            return Err(LlmError::RateLimited { retry_after });
        }
        if status.is_server_error() {
            return Err(LlmError::Server { status: status.as_u16(), message: error_message(&bytes) });
        }
        if !status.is_success() {
            return Err(LlmError::BadRequest { status: status.as_u16(), message: error_message(&bytes) });
        }
        let parsed: CreateChatCompletionResponse = serde_json::from_slice(&bytes).map_err(|e| LlmError::Server {
            status: status.as_u16(),
            message: cut(&format!("unparseable chat completion response: {e}")),
        })?;
        let usage = usage_from(&parsed);
        let limits = provider_limits(&headers);
        let Some(choice) = parsed.choices.first() else {
            return Err(LlmError::Server { status: status.as_u16(), message: "response has no choices".into() });
        };
        if let Some(refusal) = choice.message.refusal.as_deref().filter(|r| !r.trim().is_empty()) {
            // A refusal is the model's answer to this very input (billed all the same).
            return Err(LlmError::Unfinished {
                reason: super::Unfinished::Refusal,
                usage,
                message: cut(&format!("model refused: {refusal}")),
            });
        }
        match choice.finish_reason {
            Some(FinishReason::Length) => {
                return Err(LlmError::Unfinished {
                    reason: super::Unfinished::Length,
                    usage,
                    message: "output token limit reached before the answer ended".into(),
                });
            }
            Some(FinishReason::ContentFilter) => {
                return Err(LlmError::Unfinished {
                    reason: super::Unfinished::ContentFilter,
                    usage,
                    message: "the provider's content filter stopped the answer".into(),
                });
            }
            _ => {}
        }
        let content = choice.message.content.clone().unwrap_or_default();
        if content.trim().is_empty() {
            let why = match choice.finish_reason {
                Some(FinishReason::Length) => "output token limit reached before any content",
                Some(FinishReason::ContentFilter) => "content filtered",
                Some(FinishReason::ToolCalls) | Some(FinishReason::FunctionCall) => "model called a tool instead of answering",
                _ => "no content",
            };
            return Err(LlmError::BadRequest { status: status.as_u16(), message: format!("empty model answer: {why}") });
        }
        Ok(LlmResponse { content, usage, model: parsed.model, simulated: false, limits })
    }

    fn name(&self) -> &'static str {
        "openai"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
        assert_eq!(parse_go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("abc"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::from_secs(10)));
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset-requests", HeaderValue::from_static("1s"));
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        assert_eq!(retry_after_from_headers(&h, now), Some(Duration::from_secs(360)));
        assert_eq!(retry_after_from_headers(&HeaderMap::new(), now), None);
    }

    #[test]
    fn invalid_base_url_and_key_do_not_leak() {
        let key = Secret::new("sk-secret-value\n");
        let err = OpenAiClient::new("http://127.0.0.1:1/v1", &key, Duration::from_secs(1)).unwrap_err();
        assert!(!err.to_string().contains("sk-secret"));
        let err = OpenAiClient::new("ftp://x", &Secret::new("k"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, LlmError::Transport(_)));
    }
}
