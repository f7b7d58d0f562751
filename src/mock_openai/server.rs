//! The HTTP side: the routes, `POST /v1/chat/completions`, and the decision of what each
//! request gets (401, 400, hang, 429, 500, or an answer).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::answer::{completion_body, prompt_tokens, requested_output_cap, strict_problem, Finish};
use super::bill::{add_to_bill, bill_route};
use super::limits::{admit, limit_wait, rate_limited};
use super::{AuthSeen, Behavior, Inner, MockConfig, RecordedRequest, RetryHint, State_};

/// The mock's routes, on its shared state.
pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/mock/bill", get(bill_route))
        .with_state(inner)
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
    RateLimited { retry_after: Option<Duration>, hint: RetryHint },
    ServerError,
    Answer(Plan),
}

/// How an accepted request is answered.
struct Plan {
    /// How long the answer takes.
    latency: Duration,
    /// How it ends.
    finish: Finish,
    /// Report absurd usage.
    inflate: bool,
    /// Cached prompt tokens to report (`None`: the default rule).
    cached: Option<u32>,
    /// Reasoning tokens to report (`None`: by `reasoning_effort`).
    reasoning: Option<u32>,
    /// `x-ratelimit-*` headers for the answer.
    limits: Vec<(&'static str, String)>,
}

impl Decision {
    /// The status the request is recorded with (0: left hanging).
    fn status(&self) -> u16 {
        match self {
            Decision::Hang => 0,
            Decision::Unauthorized => 401,
            Decision::Invalid(_) => 400,
            Decision::RateLimited { .. } => 429,
            Decision::ServerError => 500,
            Decision::Answer(_) => 200,
        }
    }
}

/// Whether a draw with probability `p` comes up.
fn draw(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && (p >= 1.0 || rng.random::<f64>() < p)
}

/// `GET /v1/models`: an empty list.
async fn models() -> Response {
    axum::Json(json!({"object": "list", "data": []})).into_response()
}

/// `POST /v1/chat/completions`: decides, records, then answers as decided.
async fn chat_completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = Instant::now();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed.as_ref().and_then(|b| b.get("model")).and_then(Value::as_str).unwrap_or("").to_string();
    let auth = auth_seen(&headers, inner.config.expected_api_key.as_deref());
    let (decision, status) = decide_and_record(&inner, &model, parsed.as_ref(), &headers, auth, now);
    tracing::trace!(model = %model, status, "mock OpenAI request");
    match decision {
        Decision::Hang => {
            let mut rx = inner.release.subscribe();
            let _ = rx.changed().await;
            error_response(StatusCode::SERVICE_UNAVAILABLE, "released by the mock", "server_error", None)
        }
        Decision::Unauthorized => unauthorized(&inner.config, &headers),
        Decision::Invalid(msg) => error_response(StatusCode::BAD_REQUEST, &msg, "invalid_request_error", None),
        Decision::RateLimited { retry_after, hint } => rate_limited(&model, retry_after, &hint),
        Decision::ServerError => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request.",
            "server_error",
            None,
        ),
        Decision::Answer(plan) => send_answer(inner, model, parsed, plan).await,
    }
}

/// Decides what one request gets and records it (log and counters), under one hold of the lock.
fn decide_and_record(
    inner: &Inner,
    model: &str,
    parsed: Option<&Value>,
    headers: &HeaderMap,
    auth: AuthSeen,
    now: Instant,
) -> (Decision, u16) {
    let mut guard = inner.state.lock().unwrap_or_else(|p| p.into_inner());
    let st = &mut *guard;
    let decision = decide(&inner.config, st, model, parsed, auth, now, inner.started);
    let status = decision.status();
    st.total += 1;
    *st.counts.entry((model.to_string(), status)).or_insert(0) += 1;
    if inner.config.max_recorded > 0 {
        if st.log.len() >= inner.config.max_recorded {
            st.log.pop_front();
        }
        st.log.push_back(RecordedRequest {
            model: model.to_string(),
            body: parsed.cloned().unwrap_or(Value::Null),
            headers: redacted_headers(headers),
            auth,
            received_at: SystemTime::now(),
            since_start: now.saturating_duration_since(inner.started),
            status,
        });
    }
    (decision, status)
}

/// The 401 answer; quotes the key it was given when [`MockConfig::echo_key_on_401`] is set.
fn unauthorized(config: &MockConfig, headers: &HeaderMap) -> Response {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|_| config.echo_key_on_401)
        .map(|k| format!("Incorrect API key provided: {k}. You can find your API key at https://platform.openai.com/account/api-keys."))
        .unwrap_or_else(|| "Incorrect API key provided.".to_string());
    error_response(StatusCode::UNAUTHORIZED, &given, "invalid_request_error", Some("invalid_api_key"))
}

/// An accepted request's answer, with its `x-ratelimit-*` headers.
async fn send_answer(inner: Arc<Inner>, model: String, parsed: Option<Value>, plan: Plan) -> Response {
    let Plan { latency, finish, inflate, cached, reasoning, limits } = plan;
    // The answer is generated and billed in a task of its own: a client that stops
    // waiting (a timeout, a drained worker) is billed all the same, as by OpenAI.
    let waiting = Waiting(Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let still_waiting = waiting.0.clone();
    let task = tokio::spawn(async move {
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let body = parsed.unwrap_or(Value::Null);
        let answer = completion_body(&model, &body, finish, inflate, cached, reasoning);
        let left = !still_waiting.load(std::sync::atomic::Ordering::SeqCst);
        let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        add_to_bill(&mut st.bill, &inner.config.prices, &model, &answer["usage"], finish, left);
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

/// What the mock does with one request, by the behaviour profile of its model (consuming that
/// profile's "next N" counters and, for an accepted request, counting it in the rate windows).
fn decide(
    config: &MockConfig,
    st: &mut State_,
    model: &str,
    body: Option<&Value>,
    auth: AuthSeen,
    now: Instant,
    started: Instant,
) -> Decision {
    let body = match validate(config, model, body, auth) {
        Ok(body) => body,
        Err(rejected) => return rejected,
    };
    let State_ { default, per_model, windows, rng, .. } = st;
    let b = per_model.get_mut(model).unwrap_or(default);
    if b.hang {
        return Decision::Hang;
    }
    let admitted_tokens = u64::from(prompt_tokens(body)) + requested_output_cap(body);
    if b.rpm_limit.is_some() || b.tpm_limit.is_some() {
        let w = windows.entry(model.to_string()).or_default();
        if let Some(wait) = limit_wait(w, b, config.rpm_window, admitted_tokens, now, started) {
            return Decision::RateLimited { retry_after: Some(wait), hint: RetryHint::Seconds(wait.as_secs_f64().ceil() as u64) };
        }
    }
    if let Some(failure) = injected_failure(b, rng) {
        return failure;
    }
    let finish = pick_finish(b, rng);
    let latency = if draw(rng, b.slow_probability) { b.slow_latency } else { b.latency };
    let inflate = b.inflate_usage_next > 0;
    b.inflate_usage_next = b.inflate_usage_next.saturating_sub(1);
    // The request is accepted: it counts towards the RPM and TPM windows, and the answer says
    // what is left (`x-ratelimit-*`, as OpenAI's answers do).
    let limits = match windows.get_mut(model) {
        Some(w) => admit(w, b, config.rpm_window, admitted_tokens, now, started),
        None => Vec::new(),
    };
    Decision::Answer(Plan { latency, finish, inflate, cached: b.cached_tokens, reasoning: b.reasoning_tokens, limits })
}

/// The request's body when it may be answered; else the 401 (wrong or missing key) or 400
/// (no JSON, no model, no messages, a strict schema strict mode would refuse).
fn validate<'a>(config: &MockConfig, model: &str, body: Option<&'a Value>, auth: AuthSeen) -> Result<&'a Value, Decision> {
    match auth {
        AuthSeen::Bearer { matches_expected: Some(false) } | AuthSeen::Missing | AuthSeen::Other if config.expected_api_key.is_some() => {
            return Err(Decision::Unauthorized);
        }
        _ => {}
    }
    let Some(body) = body else { return Err(Decision::Invalid("We could not parse the JSON body of your request.".into())) };
    if model.is_empty() {
        return Err(Decision::Invalid("you must provide a model parameter".into()));
    }
    if body.get("messages").and_then(Value::as_array).is_none_or(|a| a.is_empty()) {
        return Err(Decision::Invalid("'messages' must be a non-empty array".into()));
    }
    if config.enforce_strict_schema {
        if let Some(js) = body.pointer("/response_format/json_schema") {
            if js.get("strict") == Some(&Value::Bool(true)) {
                if let Some(problem) = js.get("schema").and_then(strict_problem) {
                    return Err(Decision::Invalid(format!(
                        "Invalid schema for response_format '{}': {problem}",
                        js.get("name").and_then(Value::as_str).unwrap_or("")
                    )));
                }
            }
        }
    }
    Ok(body)
}

/// An injected 429 or 500, if this request gets one: "next N" counters first, then the
/// probabilities, 429 before 500.
fn injected_failure(b: &mut Behavior, rng: &mut StdRng) -> Option<Decision> {
    if b.rate_limit_next > 0 {
        b.rate_limit_next -= 1;
        return Some(Decision::RateLimited { retry_after: None, hint: b.retry_hint.clone() });
    }
    if draw(rng, b.rate_limit_probability) {
        return Some(Decision::RateLimited { retry_after: None, hint: b.retry_hint.clone() });
    }
    if b.server_error_next > 0 {
        b.server_error_next -= 1;
        return Some(Decision::ServerError);
    }
    if draw(rng, b.server_error_probability) {
        return Some(Decision::ServerError);
    }
    None
}

/// How an accepted answer ends: "next N" counters first (refusal, `length`, broken), then the
/// probabilities in the same order.
fn pick_finish(b: &mut Behavior, rng: &mut StdRng) -> Finish {
    if b.refuse_next > 0 {
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
    }
}

/// How a request authenticated, against the expected key when there is one.
fn auth_seen(headers: &HeaderMap, expected: Option<&str>) -> AuthSeen {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else { return AuthSeen::Missing };
    let Ok(v) = v.to_str() else { return AuthSeen::Other };
    match v.strip_prefix("Bearer ") {
        Some(token) => AuthSeen::Bearer { matches_expected: expected.map(|e| e == token) },
        None => AuthSeen::Other,
    }
}

/// The request's headers, lower-case names, the `Authorization` / `api-key` values redacted.
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

/// An OpenAI-style error answer.
pub(super) fn error_response(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}
