//! An OpenAI-compatible mock server on 127.0.0.1 for tests, the demo and the benchmark.
//!
//! `POST /v1/chat/completions` answers like the real API: a `chat.completion` body with usage
//! (prompt, cached, completion and reasoning tokens) and content shaped by `response_format`
//! (`json_schema` → an instance valid for the schema, from the simulated provider's generator,
//! a top-level `headings` array filled with the Markdown headings the request showed, a stand-in
//! for a model reading the page; `json_object` → an object; otherwise text). Like the real API it
//! rejects a strict schema that strict mode would not accept (400), so wire-format regressions
//! show up in tests.
//!
//! Behaviour is controlled at runtime through [`MockHandle`] (also reachable through
//! `Deref` on [`MockOpenAi`]): latency, 429 with `Retry-After` (next N / probability), 500
//! (next N / probability), hanging, schema-breaking output (next N / probability), refusals, an
//! RPM limit per model (sliding or fixed one-minute window), a TPM limit per model (sliding,
//! counted at admission as prompt + requested output cap, as OpenAI counts), `x-ratelimit-*`
//! headers on accepted answers, refusals / `length` stops / slow answers by probability, and
//! per-model overrides of all of these. Every request is recorded (model, full JSON body, headers
//! with the `Authorization` value redacted, time, status) and counted per model and status.
//!
//! It bills as OpenAI bills and reports its own bill ([`MockHandle::bill`], `GET /mock/bill`):
//! prompt tokens counted with the o200k tokenizer over every message plus the `json_schema` of
//! `response_format` (the schema is billed input) and a few tokens of framing per message; every
//! 200 carries usage and is billed, refusals and `length` stops included; an answer is generated
//! and billed even when the client stopped waiting for it (the answer runs in a task of its own
//! that the client's disconnect does not cancel).
//!
//! It is built for load: no blocking, latency is a `tokio::time::sleep` (so paused-time tests
//! work), state sits behind one short-held mutex, and probabilities come from a seeded RNG when
//! [`MockConfig::seed`] is set.

mod answer;
mod bill;
mod handle;
mod limits;
mod server;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use tokio::time::Instant;

pub use bill::{BilledModel, MockBill, MockPrice};
use limits::Window;

/// How an RPM limit counts requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RpmWindow {
    /// At most N accepted requests in any 60 s span (what OpenAI enforces, roughly).
    #[default]
    Sliding,
    /// At most N accepted requests per calendar-like minute counted from the server's start.
    Fixed,
}

/// What a rate-limited (429) answer tells the client about when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryHint {
    /// `Retry-After: N` (seconds).
    Seconds(u64),
    /// `Retry-After: <HTTP date>` this far in the future (whole seconds).
    HttpDate(Duration),
    /// No `Retry-After`; OpenAI-style `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`
    /// with these literal values (e.g. `1s`, `6m0s`, `20ms`).
    ResetHeaders {
        /// `x-ratelimit-reset-requests`.
        requests: String,
        /// `x-ratelimit-reset-tokens`.
        tokens: String,
    },
    /// No hint at all.
    None,
}

impl Default for RetryHint {
    fn default() -> Self {
        RetryHint::Seconds(1)
    }
}

/// One behaviour profile: the server default, or a per-model override. "Next N" counters are
/// consumed by the requests this profile answers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Behavior {
    /// Time before a successful (or refused / broken) answer is sent.
    pub latency: Duration,
    /// Answer the next N requests with 429.
    pub rate_limit_next: u32,
    /// Answer each request with 429 with this probability (0..=1).
    pub rate_limit_probability: f64,
    /// What injected 429 answers say about retrying. (429s from the RPM limit always carry the
    /// exact wait as `Retry-After` seconds.)
    pub retry_hint: RetryHint,
    /// Answer the next N requests with 500.
    pub server_error_next: u32,
    /// Answer each request with 500 with this probability (0..=1).
    pub server_error_probability: f64,
    /// Never answer (until [`MockHandle::release_hung`] or the server stops).
    pub hang: bool,
    /// Answer the next N requests with content that breaks the requested schema (or is not JSON).
    pub bad_output_next: u32,
    /// Break the output with this probability (0..=1).
    pub bad_output_probability: f64,
    /// Answer the next N requests with a refusal (`content: null`, `refusal: "..."`).
    pub refuse_next: u32,
    /// Refuse each request with this probability (0..=1). Refusals are billed.
    pub refuse_probability: f64,
    /// Stop each answer at the request's output cap with this probability (0..=1):
    /// `finish_reason: "length"`, cut-off content, the whole cap billed as output.
    pub length_probability: f64,
    /// Answer the next N requests with a `length` stop.
    pub length_next: u32,
    /// Take [`Behavior::slow_latency`] instead of `latency` with this probability (0..=1): an
    /// answer slower than the client's timeout is still generated and billed.
    pub slow_probability: f64,
    /// The latency of a slow answer.
    pub slow_latency: Duration,
    /// A broken or hostile provider: the next N answers report absurd usage (4 billion prompt
    /// tokens, 1 million completion tokens) whatever the request was.
    pub inflate_usage_next: u32,
    /// Accepted requests per minute per model; above it, 429 with the exact `Retry-After`.
    pub rpm_limit: Option<u32>,
    /// Accepted tokens per minute per model (always a sliding minute), counted as OpenAI counts
    /// them when it admits a request: prompt tokens plus the requested output cap
    /// (`max_completion_tokens` / `max_tokens`); above it, 429 with the exact `Retry-After`.
    pub tpm_limit: Option<u64>,
    /// Cached prompt tokens to report; `None`: half the prompt in 128-token steps once the
    /// prompt reaches 1,024 tokens (how OpenAI's prompt cache behaves), else 0.
    pub cached_tokens: Option<u32>,
    /// Reasoning tokens to report; `None`: by `reasoning_effort` (minimal 0, low 64, medium
    /// 192, high 512; none without the parameter).
    pub reasoning_tokens: Option<u32>,
}

/// Server-wide settings, fixed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// The behaviour of models without an override.
    pub behavior: Behavior,
    /// Seed for the probability draws; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// How RPM limits count.
    pub rpm_window: RpmWindow,
    /// When set, requests whose bearer token differs get 401 (the key is never recorded).
    pub expected_api_key: Option<String>,
    /// Requests kept in the log (oldest dropped first); counters are never capped. 0 keeps none.
    pub max_recorded: usize,
    /// Reject (400) `json_schema` requests with `strict: true` whose schema strict mode would
    /// refuse (an object without `additionalProperties: false` or with a property missing from
    /// `required`), as the real API does.
    pub enforce_strict_schema: bool,
    /// A hostile provider: a 401 quotes the whole key it was given in its message.
    pub echo_key_on_401: bool,
    /// Prices per model for the bill; a model without one is billed tokens but $0 (and listed
    /// in [`MockBill::unpriced_models`]).
    pub prices: BTreeMap<String, MockPrice>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            behavior: Behavior::default(),
            seed: None,
            rpm_window: RpmWindow::Sliding,
            expected_api_key: None,
            max_recorded: 1_000,
            enforce_strict_schema: true,
            echo_key_on_401: false,
            prices: BTreeMap::new(),
        }
    }
}

/// How a request authenticated (the token itself is never kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSeen {
    /// No `Authorization` header.
    Missing,
    /// `Authorization: Bearer ...`; `matches_expected` is known when [`MockConfig::expected_api_key`] is set.
    Bearer {
        /// Whether the token equals the expected key.
        matches_expected: Option<bool>,
    },
    /// Some other scheme.
    Other,
}

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// The `model` field (empty when absent).
    pub model: String,
    /// The full JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// Request headers, lower-case names; the `Authorization` value is replaced by `<redacted>`.
    pub headers: Vec<(String, String)>,
    /// How the request authenticated.
    pub auth: AuthSeen,
    /// Wall-clock arrival time.
    pub received_at: SystemTime,
    /// Arrival time since the server started (tokio time, so it follows paused clocks).
    pub since_start: Duration,
    /// The status it was answered with; 0 for a request left hanging.
    pub status: u16,
}

impl RecordedRequest {
    /// A header's recorded value by (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// The mutable state, behind one short-held mutex.
struct State_ {
    default: Behavior,
    per_model: HashMap<String, Behavior>,
    windows: HashMap<String, Window>,
    rng: StdRng,
    log: VecDeque<RecordedRequest>,
    counts: BTreeMap<(String, u16), u64>,
    total: u64,
    bill: MockBill,
}

/// What the handlers and the handles share.
struct Inner {
    config: MockConfig,
    started: Instant,
    state: Mutex<State_>,
    /// Bumped to release hung requests (and on shutdown).
    release: tokio::sync::watch::Sender<u64>,
}

/// Runtime control of a running mock (cheap to clone; usable from any task).
#[derive(Clone)]
pub struct MockHandle {
    inner: Arc<Inner>,
}

/// A running mock server; stops when dropped.
pub struct MockOpenAi {
    handle: MockHandle,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::ops::Deref for MockOpenAi {
    type Target = MockHandle;
    fn deref(&self) -> &MockHandle {
        &self.handle
    }
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.handle.release_hung();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl MockOpenAi {
    /// Starts a mock on an ephemeral 127.0.0.1 port. Panics only when no loopback port can be
    /// bound (test infrastructure failure); use [`MockOpenAi::try_start`] to handle that.
    pub async fn start(config: MockConfig) -> MockOpenAi {
        match MockOpenAi::try_start(config).await {
            Ok(m) => m,
            Err(e) => panic!("mock OpenAI server could not bind 127.0.0.1: {e}"),
        }
    }

    /// Starts a mock on an ephemeral 127.0.0.1 port.
    pub async fn try_start(config: MockConfig) -> std::io::Result<MockOpenAi> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        let (release, _) = tokio::sync::watch::channel(0u64);
        let inner = Arc::new(Inner {
            state: Mutex::new(State_ {
                default: config.behavior.clone(),
                per_model: HashMap::new(),
                windows: HashMap::new(),
                rng,
                log: VecDeque::new(),
                counts: BTreeMap::new(),
                total: 0,
                bill: MockBill::default(),
            }),
            config,
            started: Instant::now(),
            release,
        });
        let app = server::router(inner.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "mock OpenAI server stopped with an error");
            }
        });
        Ok(MockOpenAi { handle: MockHandle { inner }, addr, shutdown: Some(tx) })
    }

    /// `http://127.0.0.1:PORT/v1`, the value for `llm.base_url` / `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A control handle that outlives borrows of the server.
    pub fn handle(&self) -> MockHandle {
        self.handle.clone()
    }
}
