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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::llm::schema;
use crate::llm::simulated::generate_instance;
use crate::page;

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

/// What the mock charges for one model, USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct MockPrice {
    /// Uncached prompt tokens.
    pub input_usd_per_mtok: f64,
    /// Cached prompt tokens.
    pub cached_input_usd_per_mtok: f64,
    /// Completion tokens (reasoning included).
    pub output_usd_per_mtok: f64,
}

impl MockPrice {
    /// The mock's price list from a stage's model table (the prices the provider would charge).
    pub fn table(models: &BTreeMap<String, crate::settings::ModelSettings>) -> BTreeMap<String, MockPrice> {
        models
            .iter()
            .map(|(id, m)| {
                let price = MockPrice {
                    input_usd_per_mtok: m.input_usd_per_mtok,
                    cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
                    output_usd_per_mtok: m.output_usd_per_mtok,
                };
                (id.clone(), price)
            })
            .collect()
    }
}

/// What the mock billed one model.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct BilledModel {
    /// Answers billed (every 200).
    pub answers: u64,
    /// Of those: refusals, `length` stops, and answers finished after the client had left.
    pub refusals: u64,
    /// `finish_reason: "length"` answers.
    pub length_stops: u64,
    /// Answers finished after the client stopped waiting (billed all the same).
    pub after_client_left: u64,
    /// Prompt tokens billed (cached included).
    pub prompt_tokens: u64,
    /// Of those, cached.
    pub cached_tokens: u64,
    /// Completion tokens billed (reasoning included).
    pub completion_tokens: u64,
    /// What those cost at the model's [`MockPrice`].
    pub usd: f64,
}

/// The mock's own bill since it started: what a provider's invoice would show.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct MockBill {
    /// By model id.
    pub by_model: BTreeMap<String, BilledModel>,
    /// Sum over the models.
    pub total_usd: f64,
    /// Models billed without a configured price (billed $0).
    pub unpriced_models: Vec<String>,
}

impl MockBill {
    /// Answers billed over all models.
    pub fn answers(&self) -> u64 {
        self.by_model.values().map(|m| m.answers).sum()
    }
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

struct Window {
    accepted: VecDeque<Instant>,
    /// Sliding-minute token counts of accepted requests.
    tokens: VecDeque<(Instant, u64)>,
    fixed_index: u64,
    fixed_count: u32,
}

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
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/chat/completions", post(chat_completions))
            .route("/v1/models", get(models))
            .route("/mock/bill", get(bill_route))
            .with_state(inner.clone());
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

impl MockHandle {
    fn state(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock cannot leave the state inconsistent in a way that
        // matters for a test double, so poisoning is ignored.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the default behaviour (models without an override).
    pub fn update(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.state().default);
    }

    /// Changes `model`'s override, creating it from the current default when absent.
    pub fn update_model(&self, model: &str, f: impl FnOnce(&mut Behavior)) {
        let mut st = self.state();
        let base = st.default.clone();
        f(st.per_model.entry(model.to_string()).or_insert(base));
    }

    /// Replaces `model`'s override.
    pub fn set_model_behavior(&self, model: &str, behavior: Behavior) {
        self.state().per_model.insert(model.to_string(), behavior);
    }

    /// Removes `model`'s override.
    pub fn clear_model_behavior(&self, model: &str) {
        self.state().per_model.remove(model);
    }

    /// Default latency for answers.
    pub fn set_latency(&self, latency: Duration) {
        self.update(|b| b.latency = latency);
    }

    /// The next `n` requests (default profile) get 429 with `hint`.
    pub fn rate_limit_next(&self, n: u32, hint: RetryHint) {
        self.update(|b| {
            b.rate_limit_next = n;
            b.retry_hint = hint;
        });
    }

    /// Each request gets 429 with probability `p`.
    pub fn set_rate_limit_probability(&self, p: f64) {
        self.update(|b| b.rate_limit_probability = p);
    }

    /// The next `n` requests get 500.
    pub fn fail_next(&self, n: u32) {
        self.update(|b| b.server_error_next = n);
    }

    /// Each request gets 500 with probability `p`.
    pub fn set_failure_probability(&self, p: f64) {
        self.update(|b| b.server_error_probability = p);
    }

    /// Requests hang (never answered) while `on`.
    pub fn set_hang(&self, on: bool) {
        self.update(|b| b.hang = on);
    }

    /// The next `n` answers break the schema.
    pub fn bad_output_next(&self, n: u32) {
        self.update(|b| b.bad_output_next = n);
    }

    /// Each answer breaks the schema with probability `p`.
    pub fn set_bad_output_probability(&self, p: f64) {
        self.update(|b| b.bad_output_probability = p);
    }

    /// Refuses each request with probability `p` (refusals are billed).
    pub fn set_refuse_probability(&self, p: f64) {
        self.update(|b| b.refuse_probability = p);
    }

    /// Stops each answer at its output cap (`finish_reason: "length"`) with probability `p`.
    pub fn set_length_probability(&self, p: f64) {
        self.update(|b| b.length_probability = p);
    }

    /// Makes each answer take `latency` instead of the usual one with probability `p`.
    pub fn set_slow(&self, p: f64, latency: Duration) {
        self.update(|b| {
            b.slow_probability = p;
            b.slow_latency = latency;
        });
    }

    /// The next `n` answers are refusals.
    pub fn refuse_next(&self, n: u32) {
        self.update(|b| b.refuse_next = n);
    }

    /// Requests per minute accepted per model (default profile); `None` removes the limit.
    pub fn set_rpm_limit(&self, rpm: Option<u32>) {
        self.update(|b| b.rpm_limit = rpm);
    }

    /// Sets the default profile's TPM limit (`None` = unlimited).
    pub fn set_tpm_limit(&self, tpm: Option<u64>) {
        self.update(|b| b.tpm_limit = tpm);
    }

    /// Answers every request currently hanging with 503 (later ones hang again while `hang` is on).
    pub fn release_hung(&self) {
        self.inner.release.send_modify(|g| *g += 1);
    }

    /// The recorded requests, oldest first (at most [`MockConfig::max_recorded`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().log.iter().cloned().collect()
    }

    /// Requests received since start (never capped).
    pub fn total_requests(&self) -> u64 {
        self.state().total
    }

    /// Requests for `model` answered with `status` (0 = left hanging).
    pub fn count(&self, model: &str, status: u16) -> u64 {
        self.state().counts.get(&(model.to_string(), status)).copied().unwrap_or(0)
    }

    /// All counters: (model, status) → requests.
    pub fn counts(&self) -> BTreeMap<(String, u16), u64> {
        self.state().counts.clone()
    }

    /// Forgets recorded requests and counters (behaviour is kept).
    pub fn clear_records(&self) {
        let mut st = self.state();
        st.log.clear();
        st.counts.clear();
        st.total = 0;
    }

    /// What the mock has billed since it started (kept across [`MockHandle::clear_records`]).
    pub fn bill(&self) -> MockBill {
        self.state().bill.clone()
    }
}

/// Adds one billed answer to the bill.
fn add_to_bill(bill: &mut MockBill, prices: &BTreeMap<String, MockPrice>, model: &str, usage: &Value, finish: Finish, client_left: bool) {
    let n = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, cached, completion) = (n("/prompt_tokens"), n("/prompt_tokens_details/cached_tokens"), n("/completion_tokens"));
    let usd = match prices.get(model) {
        Some(p) => {
            (prompt.saturating_sub(cached) as f64 * p.input_usd_per_mtok
                + cached as f64 * p.cached_input_usd_per_mtok
                + completion as f64 * p.output_usd_per_mtok)
                / 1e6
        }
        None => {
            if !bill.unpriced_models.iter().any(|m| m == model) {
                bill.unpriced_models.push(model.to_string());
            }
            0.0
        }
    };
    let line = bill.by_model.entry(model.to_string()).or_default();
    line.answers += 1;
    line.refusals += u64::from(finish == Finish::Refusal);
    line.length_stops += u64::from(finish == Finish::Length);
    line.after_client_left += u64::from(client_left);
    line.prompt_tokens += prompt;
    line.cached_tokens += cached;
    line.completion_tokens += completion;
    line.usd += usd;
    bill.total_usd += usd;
}

async fn bill_route(State(inner): State<Arc<Inner>>) -> Response {
    let bill = inner.state.lock().unwrap_or_else(|p| p.into_inner()).bill.clone();
    axum::Json(bill).into_response()
}

/// How an accepted answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// A normal answer (`stop`), valid for the requested format.
    Stop,
    /// A normal stop whose content breaks the requested format.
    Broken,
    /// `content: null`, `refusal: "..."`.
    Refusal,
    /// Cut at the output cap: `finish_reason: "length"`.
    Length,
}

/// Clears a flag when dropped: the handler holds one while the answer's task runs, so the task
/// can tell that the client left (the handler's future was dropped) before the answer was done.
struct Waiting(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the mock decided to do with one request.
enum Decision {
    Hang,
    Unauthorized,
    Invalid(String),
    RateLimited {
        retry_after: Option<Duration>,
        hint: RetryHint,
    },
    ServerError,
    Answer {
        latency: Duration,
        finish: Finish,
        inflate: bool,
        cached: Option<u32>,
        reasoning: Option<u32>,
        limits: Vec<(&'static str, String)>,
    },
}

fn draw(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && (p >= 1.0 || rng.random::<f64>() < p)
}

async fn models() -> Response {
    axum::Json(json!({"object": "list", "data": []})).into_response()
}

async fn chat_completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = Instant::now();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed.as_ref().and_then(|b| b.get("model")).and_then(Value::as_str).unwrap_or("").to_string();
    let auth = auth_seen(&headers, inner.config.expected_api_key.as_deref());
    let (decision, status) = {
        let mut guard = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        let decision = decide(&inner.config, st, &model, parsed.as_ref(), auth, now, inner.started);
        let status = match &decision {
            Decision::Hang => 0,
            Decision::Unauthorized => 401,
            Decision::Invalid(_) => 400,
            Decision::RateLimited { .. } => 429,
            Decision::ServerError => 500,
            Decision::Answer { .. } => 200,
        };
        st.total += 1;
        *st.counts.entry((model.clone(), status)).or_insert(0) += 1;
        if inner.config.max_recorded > 0 {
            if st.log.len() >= inner.config.max_recorded {
                st.log.pop_front();
            }
            st.log.push_back(RecordedRequest {
                model: model.clone(),
                body: parsed.clone().unwrap_or(Value::Null),
                headers: redacted_headers(&headers),
                auth,
                received_at: SystemTime::now(),
                since_start: now.saturating_duration_since(inner.started),
                status,
            });
        }
        (decision, status)
    };
    tracing::trace!(model = %model, status, "mock OpenAI request");
    match decision {
        Decision::Hang => {
            let mut rx = inner.release.subscribe();
            let _ = rx.changed().await;
            error_response(StatusCode::SERVICE_UNAVAILABLE, "released by the mock", "server_error", None)
        }
        Decision::Unauthorized => {
            let given = headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .filter(|_| inner.config.echo_key_on_401)
                .map(|k| {
                    format!("Incorrect API key provided: {k}. You can find your API key at https://platform.openai.com/account/api-keys.")
                })
                .unwrap_or_else(|| "Incorrect API key provided.".to_string());
            error_response(StatusCode::UNAUTHORIZED, &given, "invalid_request_error", Some("invalid_api_key"))
        }
        Decision::Invalid(msg) => error_response(StatusCode::BAD_REQUEST, &msg, "invalid_request_error", None),
        Decision::RateLimited { retry_after, hint } => rate_limited(&model, retry_after, &hint),
        Decision::ServerError => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
            None,
        ),
        Decision::Answer { latency, finish, inflate, cached, reasoning, limits } => {
            // The answer is generated and billed in a task of its own: a client that stops
            // waiting (a timeout, a drained worker) is billed all the same, as by OpenAI.
            let waiting = Waiting(Arc::new(std::sync::atomic::AtomicBool::new(true)));
            let still_waiting = waiting.0.clone();
            let task_inner = inner.clone();
            let task = tokio::spawn(async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let body = parsed.unwrap_or(Value::Null);
                let answer = completion_body(&model, &body, finish, inflate, cached, reasoning);
                let left = !still_waiting.load(std::sync::atomic::Ordering::SeqCst);
                let mut st = task_inner.state.lock().unwrap_or_else(|p| p.into_inner());
                add_to_bill(&mut st.bill, &task_inner.config.prices, &model, &answer["usage"], finish, left);
                answer
            });
            let answer = match task.await {
                Ok(a) => a,
                Err(_) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, "mock answer task failed", "server_error", None),
            };
            drop(waiting);
            let mut resp = axum::Json(answer).into_response();
            for (name, value) in limits {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    resp.headers_mut().insert(name, v);
                }
            }
            resp
        }
    }
}

fn decide(
    config: &MockConfig,
    st: &mut State_,
    model: &str,
    body: Option<&Value>,
    auth: AuthSeen,
    now: Instant,
    started: Instant,
) -> Decision {
    match auth {
        AuthSeen::Bearer { matches_expected: Some(false) } | AuthSeen::Missing | AuthSeen::Other if config.expected_api_key.is_some() => {
            return Decision::Unauthorized;
        }
        _ => {}
    }
    let Some(body) = body else { return Decision::Invalid("We could not parse the JSON body of your request.".into()) };
    if model.is_empty() {
        return Decision::Invalid("you must provide a model parameter".into());
    }
    if body.get("messages").and_then(Value::as_array).is_none_or(|a| a.is_empty()) {
        return Decision::Invalid("'messages' must be a non-empty array".into());
    }
    if config.enforce_strict_schema {
        if let Some(js) = body.pointer("/response_format/json_schema") {
            if js.get("strict") == Some(&Value::Bool(true)) {
                if let Some(problem) = js.get("schema").and_then(strict_problem) {
                    return Decision::Invalid(format!(
                        "Invalid schema for response_format '{}': {problem}",
                        js.get("name").and_then(Value::as_str).unwrap_or("")
                    ));
                }
            }
        }
    }
    let State_ { default, per_model, windows, rng, .. } = st;
    let b = per_model.get_mut(model).unwrap_or(default);
    if b.hang {
        return Decision::Hang;
    }
    let admitted_tokens = u64::from(prompt_tokens(body)) + requested_output_cap(body);
    if b.rpm_limit.is_some() || b.tpm_limit.is_some() {
        let w = windows.entry(model.to_string()).or_insert_with(|| Window {
            accepted: VecDeque::new(),
            tokens: VecDeque::new(),
            fixed_index: 0,
            fixed_count: 0,
        });
        let rpm_wait = b.rpm_limit.and_then(|limit| rpm_check(w, limit, config.rpm_window, now, started));
        let tpm_wait = b.tpm_limit.and_then(|limit| tpm_check(w, limit, admitted_tokens, now));
        if let Some(wait) = rpm_wait.max(tpm_wait) {
            return Decision::RateLimited { retry_after: Some(wait), hint: RetryHint::Seconds(wait.as_secs_f64().ceil() as u64) };
        }
    }
    if b.rate_limit_next > 0 {
        b.rate_limit_next -= 1;
        return Decision::RateLimited { retry_after: None, hint: b.retry_hint.clone() };
    }
    if draw(rng, b.rate_limit_probability) {
        return Decision::RateLimited { retry_after: None, hint: b.retry_hint.clone() };
    }
    if b.server_error_next > 0 {
        b.server_error_next -= 1;
        return Decision::ServerError;
    }
    if draw(rng, b.server_error_probability) {
        return Decision::ServerError;
    }
    let finish = if b.refuse_next > 0 {
        b.refuse_next -= 1;
        Finish::Refusal
    } else if b.length_next > 0 {
        b.length_next -= 1;
        Finish::Length
    } else if b.bad_output_next > 0 {
        b.bad_output_next -= 1;
        Finish::Broken
    } else if draw(rng, b.refuse_probability) {
        Finish::Refusal
    } else if draw(rng, b.length_probability) {
        Finish::Length
    } else if draw(rng, b.bad_output_probability) {
        Finish::Broken
    } else {
        Finish::Stop
    };
    let latency = if draw(rng, b.slow_probability) { b.slow_latency } else { b.latency };
    let inflate = b.inflate_usage_next > 0;
    b.inflate_usage_next = b.inflate_usage_next.saturating_sub(1);
    // The request is accepted: it counts towards the RPM and TPM windows, and the answer says
    // what is left (`x-ratelimit-*`, as OpenAI's answers do).
    let mut limits = Vec::new();
    if let Some(w) = windows.get_mut(model) {
        if let Some(limit) = b.rpm_limit {
            let (used, reset) = match config.rpm_window {
                RpmWindow::Sliding => {
                    w.accepted.push_back(now);
                    let oldest = w.accepted.front().copied().unwrap_or(now);
                    (w.accepted.len() as u64, (oldest + MINUTE).saturating_duration_since(now))
                }
                RpmWindow::Fixed => {
                    w.fixed_count += 1;
                    let end = started + MINUTE * (w.fixed_index as u32 + 1);
                    (u64::from(w.fixed_count), end.saturating_duration_since(now))
                }
            };
            limits.push(("x-ratelimit-limit-requests", limit.to_string()));
            limits.push(("x-ratelimit-remaining-requests", u64::from(limit).saturating_sub(used).to_string()));
            limits.push(("x-ratelimit-reset-requests", go_duration(reset)));
        }
        if let Some(limit) = b.tpm_limit {
            w.tokens.push_back((now, admitted_tokens));
            let used: u64 = w.tokens.iter().map(|(_, t)| t).sum();
            let oldest = w.tokens.front().map_or(now, |(t, _)| *t);
            limits.push(("x-ratelimit-limit-tokens", limit.to_string()));
            limits.push(("x-ratelimit-remaining-tokens", limit.saturating_sub(used).to_string()));
            limits.push(("x-ratelimit-reset-tokens", go_duration((oldest + MINUTE).saturating_duration_since(now))));
        }
    }
    Decision::Answer { latency, finish, inflate, cached: b.cached_tokens, reasoning: b.reasoning_tokens, limits }
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` (`20ms`, `1.5s`, `6m0s`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}s", (ms as f64 / 1000.0))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The output cap a request asks for (`max_completion_tokens`, else `max_tokens`; 0 if none).
fn requested_output_cap(body: &Value) -> u64 {
    body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64).unwrap_or(0)
}

/// `Some(wait)` when `tokens` more would exceed `limit` in the sliding minute.
fn tpm_check(w: &mut Window, limit: u64, tokens: u64, now: Instant) -> Option<Duration> {
    while w.tokens.front().is_some_and(|(t, _)| *t + MINUTE <= now) {
        w.tokens.pop_front();
    }
    let used: u64 = w.tokens.iter().map(|(_, t)| t).sum();
    if used + tokens <= limit || w.tokens.is_empty() {
        return None;
    }
    // Wait until enough of the oldest entries leave the window.
    let mut freed = 0u64;
    for (t, n) in &w.tokens {
        freed += n;
        if used - freed + tokens <= limit {
            return Some((*t + MINUTE).saturating_duration_since(now).max(Duration::from_millis(1)));
        }
    }
    w.tokens.back().map(|(t, _)| (*t + MINUTE).saturating_duration_since(now).max(Duration::from_millis(1)))
}

const MINUTE: Duration = Duration::from_secs(60);

/// `Some(wait)` when one more request would exceed `limit` in the current window.
fn rpm_check(w: &mut Window, limit: u32, mode: RpmWindow, now: Instant, started: Instant) -> Option<Duration> {
    match mode {
        RpmWindow::Sliding => {
            while w.accepted.front().is_some_and(|t| *t + MINUTE <= now) {
                w.accepted.pop_front();
            }
            if w.accepted.len() >= limit as usize {
                let oldest = w.accepted.front().copied().unwrap_or(now);
                return Some((oldest + MINUTE).saturating_duration_since(now).max(Duration::from_millis(1)));
            }
            None
        }
        RpmWindow::Fixed => {
            let index = now.saturating_duration_since(started).as_secs() / 60;
            if index != w.fixed_index {
                w.fixed_index = index;
                w.fixed_count = 0;
            }
            if w.fixed_count >= limit {
                let end = started + MINUTE * (index as u32 + 1);
                return Some(end.saturating_duration_since(now).max(Duration::from_millis(1)));
            }
            None
        }
    }
}

fn auth_seen(headers: &HeaderMap, expected: Option<&str>) -> AuthSeen {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else { return AuthSeen::Missing };
    let Ok(v) = v.to_str() else { return AuthSeen::Other };
    match v.strip_prefix("Bearer ") {
        Some(token) => AuthSeen::Bearer { matches_expected: expected.map(|e| e == token) },
        None => AuthSeen::Other,
    }
}

fn redacted_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            let name = k.as_str().to_ascii_lowercase();
            let value = if name == "authorization" || name == "api-key" {
                "<redacted>".to_string()
            } else {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            };
            (name, value)
        })
        .collect()
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

fn rate_limited(model: &str, retry_after: Option<Duration>, hint: &RetryHint) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Rate limit reached for {model} (mock)."),
        "requests",
        Some("rate_limit_exceeded"),
    );
    let h = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    match hint {
        RetryHint::Seconds(s) => {
            let secs = retry_after.map(|d| d.as_secs_f64().ceil() as u64).unwrap_or(*s);
            set("retry-after", secs.to_string());
        }
        RetryHint::HttpDate(d) => {
            let when = chrono::Utc::now() + chrono::Duration::seconds(d.as_secs() as i64);
            set("retry-after", when.format("%a, %d %b %Y %H:%M:%S GMT").to_string());
        }
        RetryHint::ResetHeaders { requests, tokens } => {
            set("x-ratelimit-reset-requests", requests.clone());
            set("x-ratelimit-reset-tokens", tokens.clone());
        }
        RetryHint::None => {}
    }
    resp
}

/// Prompt tokens as OpenAI bills them: every message's text under o200k_base plus 3 tokens of
/// framing per message and 3 to prime the answer; a `json_schema` response format's schema (and
/// its name) is billed input too.
fn prompt_tokens(body: &Value) -> u32 {
    let mut tokens = 3usize;
    if let Some(ms) = body.get("messages").and_then(Value::as_array) {
        for m in ms {
            tokens += 3;
            match m.get("content") {
                Some(Value::String(s)) => tokens += page::count_tokens(s),
                Some(Value::Array(parts)) => {
                    tokens += parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(page::count_tokens).sum::<usize>()
                }
                _ => {}
            }
        }
    }
    if let Some(js) = body.pointer("/response_format/json_schema") {
        if let Some(schema) = js.get("schema") {
            tokens += page::count_tokens(&schema.to_string());
        }
        if let Some(name) = js.get("name").and_then(Value::as_str) {
            tokens += page::count_tokens(name);
        }
    }
    tokens.min(u32::MAX as usize) as u32
}

fn default_reasoning(body: &Value) -> u32 {
    match body.get("reasoning_effort").and_then(Value::as_str) {
        Some("minimal") | Some("none") => 0,
        Some("low") => 64,
        Some("medium") => 192,
        Some("high") | Some("xhigh") => 512,
        _ => 0,
    }
}

/// The message content for a request: honours `response_format`, or breaks it when `bad`.
fn answer_content(body: &Value, bad: bool) -> String {
    let format = body.pointer("/response_format/type").and_then(Value::as_str).unwrap_or("text");
    match format {
        "json_schema" => {
            let schema = body.pointer("/response_format/json_schema/schema").cloned().unwrap_or(json!({}));
            let mut instance = generate_instance(&schema);
            echo_headings(body, &schema, &mut instance);
            if bad {
                instance = break_instance(&schema, instance);
            }
            instance.to_string()
        }
        "json_object" if !bad => json!({"summary": "Mock answer in JSON mode.", "items": []}).to_string(),
        "json_object" => "Sure! Here is the data you asked for: {\"summary\": ".to_string(),
        _ if bad => String::new(),
        _ => "Mock answer: the page describes a product and its price.".to_string(),
    }
}

/// A stand-in for a model that reads the page: a top-level `headings` property (an array of
/// strings) is answered with the Markdown headings of the request's user messages, in order,
/// so a test can tell which parts of an input reached which answer.
fn echo_headings(body: &Value, schema: &Value, instance: &mut Value) {
    let wants = schema
        .pointer("/properties/headings/type")
        .is_some_and(|t| t == "array" || t.as_array().is_some_and(|a| a.contains(&json!("array"))));
    let Some(obj) = instance.as_object_mut().filter(|_| wants) else { return };
    let headings: Vec<Value> = body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .flat_map(str::lines)
        .filter(|l| l.starts_with('#'))
        .map(|l| Value::String(l.trim_start_matches('#').trim().to_string()))
        .collect();
    obj.insert("headings".into(), Value::Array(headings));
}

/// Turns a valid instance into one `schema` rejects: drop every required property (so the
/// answer also breaks the caller's original, less strict schema), else change the root's type,
/// else give up (a schema that accepts anything cannot be broken).
fn break_instance(schema: &Value, instance: Value) -> Value {
    if let Value::Object(mut map) = instance.clone() {
        let required: Vec<&str> =
            schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if !required.is_empty() {
            map.retain(|k, _| !required.contains(&k.as_str()));
            map.insert("unexpected_note".into(), json!("the model ignored the schema"));
            let broken = Value::Object(map);
            if schema::validate(schema, &broken).is_err() {
                return broken;
            }
        }
    }
    for candidate in [json!("not the requested object"), json!(12345), json!([]), Value::Null] {
        if schema::validate(schema, &candidate).is_err() {
            return candidate;
        }
    }
    instance
}

fn completion_body(model: &str, body: &Value, finish: Finish, inflate: bool, cached: Option<u32>, reasoning: Option<u32>) -> Value {
    let prompt = if inflate { 4_000_000_000 } else { prompt_tokens(body) };
    let cached = cached.unwrap_or(if prompt >= 1024 { (prompt / 2) / 128 * 128 } else { 0 }).min(prompt);
    let reasoning = reasoning.unwrap_or_else(|| default_reasoning(body));
    let (message, visible_len, finish_reason) = match finish {
        Finish::Refusal => {
            let text = "I'm sorry, but I can't help with that request.";
            (json!({"role": "assistant", "content": null, "refusal": text}), text.len(), "stop")
        }
        Finish::Length => {
            // Cut mid-answer: what was generated before the cap (not valid JSON).
            let content = answer_content(body, false);
            let cut: String = content.chars().take(content.chars().count() / 2).collect();
            let len = cut.len();
            (json!({"role": "assistant", "content": cut, "refusal": null}), len, "length")
        }
        Finish::Stop | Finish::Broken => {
            let content = answer_content(body, finish == Finish::Broken);
            let len = content.len();
            (json!({"role": "assistant", "content": content, "refusal": null}), len, "stop")
        }
    };
    let cap = match requested_output_cap(body) {
        0 => 4096,
        c => c.min(u64::from(u32::MAX)) as u32,
    };
    let completion = if inflate {
        1_000_000
    } else if finish == Finish::Length {
        // The whole cap was generated (reasoning included) and is billed.
        cap
    } else {
        (visible_len.div_ceil(4) as u32).max(1).saturating_add(reasoning)
    };
    let reasoning = reasoning.min(completion);
    let created = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "id": format!("chatcmpl-mock{}", uuid::Uuid::new_v4().simple()),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0
            }
        }
    })
}

/// Why strict mode would refuse `schema`, checking what the worker is responsible for: the root
/// is an object, every object has `additionalProperties: false` and requires all its properties.
fn strict_problem(schema: &Value) -> Option<String> {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Some("the root schema must be of type object".into());
    }
    let mut problem = None;
    walk_objects(schema, "#", &mut |path, obj| {
        if problem.is_some() {
            return;
        }
        if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
            problem = Some(format!("In context={path}, 'additionalProperties' is required to be supplied and to be false."));
            return;
        }
        let required: Vec<&str> =
            obj.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            if let Some(missing) = props.keys().find(|k| !required.contains(&k.as_str())) {
                problem = Some(format!("In context={path}, 'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'."));
            }
        }
    });
    problem
}

fn walk_objects(schema: &Value, path: &str, f: &mut dyn FnMut(&str, &serde_json::Map<String, Value>)) {
    let Some(obj) = schema.as_object() else { return };
    let is_object = match obj.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t.as_str() == Some("object")),
        _ => obj.contains_key("properties"),
    };
    if is_object {
        f(path, obj);
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            walk_objects(v, &format!("{path}/properties/{k}"), f);
        }
    }
    if let Some(items) = obj.get("items") {
        walk_objects(items, &format!("{path}/items"), f);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = obj.get(key).and_then(Value::as_array) {
            for (i, b) in branches.iter().enumerate() {
                walk_objects(b, &format!("{path}/{key}/{i}"), f);
            }
        }
    }
    for key in ["$defs", "definitions"] {
        if let Some(defs) = obj.get(key).and_then(Value::as_object) {
            for (k, v) in defs {
                walk_objects(v, &format!("{path}/{key}/{k}"), f);
            }
        }
    }
}
