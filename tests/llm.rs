//! The LLM providers and schema handling: the OpenAI client against the mock server (wire format,
//! parameters per model family, usage, error mapping, no hidden retries, secret hygiene), the
//! simulated provider's schema conformance, and strict-mode schema adaptation.

use std::time::Duration;

use atlas_codex::llm::openai::OpenAiClient;
use atlas_codex::llm::schema::{self, strip_added_nulls, to_strict, to_strict_with, validate, StrictLimits};
use atlas_codex::llm::simulated::{generate_instance, SimulatedClient};
use atlas_codex::llm::{CallParams, LlmClient, LlmError, LlmRequest, ResponseFormat};
use atlas_codex::mock_openai::{AuthSeen, MockConfig, MockOpenAi, MockPrice, RetryHint, RpmWindow};
use atlas_codex::settings::Secret;
use serde_json::{json, Value};

const KEY: &str = "sk-test-0123456789abcdef-SECRET";

fn product_schema() -> Value {
    json!({
        "title": "Product page",
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "price": {"type": "number", "minimum": 0},
            "currency": {"type": "string", "enum": ["USD", "EUR"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "seller": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "url": {"type": "string", "format": "uri"}},
                "required": ["name"]
            }
        },
        "required": ["name", "price"]
    })
}

fn gpt5_params() -> CallParams {
    CallParams {
        reasoning_model: true,
        max_output_tokens: 2048,
        temperature: Some(0.7), // must NOT be sent for reasoning models
        reasoning_effort: Some("low".into()),
        verbosity: Some("low".into()),
    }
}

fn gpt4_params() -> CallParams {
    CallParams {
        reasoning_model: false,
        max_output_tokens: 1024,
        temperature: Some(0.2),
        reasoning_effort: Some("high".into()), // must NOT be sent for GPT-4-class models
        verbosity: Some("high".into()),
    }
}

fn request(model: &str, format: ResponseFormat, params: CallParams) -> LlmRequest {
    LlmRequest {
        model: model.into(),
        system: "You extract structured data from web pages.".into(),
        user: "Page: Acme Anvil, $19.99, sold by Acme Corp.".into(),
        response_format: format,
        params,
        output_schema: None,
    }
}

fn strict_format(schema: &Value) -> ResponseFormat {
    ResponseFormat::JsonSchema {
        name: schema::schema_name(schema, "extract"),
        schema: to_strict(schema).expect("adaptable schema"),
        strict: true,
    }
}

async fn mock_with_key() -> MockOpenAi {
    MockOpenAi::start(MockConfig { expected_api_key: Some(KEY.into()), seed: Some(7), ..Default::default() }).await
}

fn client(mock: &MockOpenAi, timeout: Duration) -> OpenAiClient {
    OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), timeout).expect("client")
}

fn all_objects_strict(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = schema.as_object() else { return };
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if obj.get("additionalProperties") != Some(&json!(false)) {
            problems.push(format!("{path}: additionalProperties is not false"));
        }
        let required: Vec<&str> =
            obj.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for k in props.keys() {
            if !required.contains(&k.as_str()) {
                problems.push(format!("{path}: `{k}` not required"));
            }
        }
        for (k, v) in props {
            all_objects_strict(v, &format!("{path}/{k}"), problems);
        }
    }
    for key in ["items"] {
        if let Some(v) = obj.get(key) {
            all_objects_strict(v, &format!("{path}/{key}"), problems);
        }
    }
    for key in ["anyOf"] {
        for (i, b) in obj.get(key).and_then(Value::as_array).into_iter().flatten().enumerate() {
            all_objects_strict(b, &format!("{path}/{key}/{i}"), problems);
        }
    }
    if let Some(defs) = obj.get("$defs").and_then(Value::as_object) {
        for (k, v) in defs {
            all_objects_strict(v, &format!("{path}/$defs/{k}"), problems);
        }
    }
}

#[tokio::test]
async fn strict_json_schema_request_on_the_wire_and_answer_validates() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    let original = product_schema();
    let resp = c.complete(&request("gpt-5-mini", strict_format(&original), gpt5_params())).await.expect("answer");

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 1);
    let body = &reqs[0].body;
    assert_eq!(body["model"], "gpt-5-mini");
    assert_eq!(body["response_format"]["type"], "json_schema");
    let js = &body["response_format"]["json_schema"];
    assert_eq!(js["strict"], json!(true));
    assert_eq!(js["name"], "Product_page");
    let sent = &js["schema"];
    assert_eq!(sent["additionalProperties"], json!(false));
    assert_eq!(sent["required"], json!(["currency", "name", "price", "seller", "tags"]));
    // Optional fields became nullable; nested objects are strict too.
    assert_eq!(sent["properties"]["tags"]["type"], json!(["array", "null"]));
    assert_eq!(sent["properties"]["seller"]["properties"]["url"]["type"], json!(["string", "null"]));
    let mut problems = Vec::new();
    all_objects_strict(sent, "#", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["role"], "user");
    assert_eq!(body["messages"][1]["content"], "Page: Acme Anvil, $19.99, sold by Acme Corp.");

    // The answer is an instance of the strict schema and, nulls stripped, of the original one.
    assert!(!resp.simulated);
    assert_eq!(resp.model, "gpt-5-mini");
    let mut data: Value = serde_json::from_str(&resp.content).expect("JSON content");
    validate(sent, &data).expect("valid for the strict schema");
    strip_added_nulls(&original, &mut data);
    validate(&original, &data).expect("valid for the original schema");
}

#[tokio::test]
async fn gpt5_and_gpt4_parameters_on_the_wire() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.expect("gpt-5");
    c.complete(&request("gpt-4o", ResponseFormat::Text, gpt4_params())).await.expect("gpt-4o");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);

    let g5 = reqs[0].body.as_object().expect("object");
    assert_eq!(g5["max_completion_tokens"], json!(2048));
    assert_eq!(g5["reasoning_effort"], json!("low"));
    assert_eq!(g5["verbosity"], json!("low"));
    assert!(!g5.contains_key("temperature"), "no temperature for gpt-5: {g5:?}");
    assert!(!g5.contains_key("max_tokens"));
    assert_eq!(g5["response_format"], json!({"type": "json_object"}));

    let g4 = reqs[1].body.as_object().expect("object");
    assert_eq!(g4["max_completion_tokens"], json!(1024), "the current parameter for every model");
    let t = g4["temperature"].as_f64().expect("temperature");
    assert!((t - 0.2).abs() < 1e-6);
    for absent in ["max_tokens", "reasoning_effort", "verbosity", "response_format"] {
        assert!(!g4.contains_key(absent), "{absent} must not be sent to GPT-4-class models: {g4:?}");
    }
}

#[tokio::test]
async fn unknown_reasoning_effort_is_rejected_before_sending() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    let mut p = gpt5_params();
    p.reasoning_effort = Some("extreme-ish".into());
    let err = c.complete(&request("gpt-5", ResponseFormat::JsonObject, p)).await.unwrap_err();
    assert!(matches!(err, LlmError::BadRequest { .. }), "{err:?}");
    assert_eq!(mock.total_requests(), 0);
}

#[tokio::test]
async fn usage_is_parsed_including_cached_and_reasoning_tokens() {
    let mock = mock_with_key().await;
    mock.update(|b| {
        b.cached_tokens = Some(384);
        b.reasoning_tokens = Some(77);
    });
    let c = client(&mock, Duration::from_secs(10));
    let mut r = request("gpt-5-nano", strict_format(&product_schema()), gpt5_params());
    r.user = "word ".repeat(1000); // 1,000 o200k tokens, plus the system prompt, schema and framing
    let resp = c.complete(&r).await.expect("answer");
    let u = resp.usage;
    assert_eq!(u.cached_input_tokens, 384);
    assert_eq!(u.reasoning_tokens, 77);
    assert!(u.input_tokens >= 1000 && u.input_tokens < 2000, "{u:?}");
    // completion = visible answer + reasoning
    assert!(u.output_tokens > 77, "{u:?}");
    assert!(u.output_tokens >= 77 + (resp.content.len() as u64) / 4, "{u:?}");

    // Without overrides the mock derives them: no reasoning for GPT-4, no cache for short prompts.
    mock.update(|b| {
        b.cached_tokens = None;
        b.reasoning_tokens = None;
    });
    let resp = c.complete(&request("gpt-4o", ResponseFormat::JsonObject, gpt4_params())).await.expect("answer");
    assert_eq!(resp.usage.reasoning_tokens, 0);
    assert_eq!(resp.usage.cached_input_tokens, 0);
    assert!(resp.usage.input_tokens > 0 && resp.usage.output_tokens > 0);
}

#[tokio::test]
async fn rate_limit_maps_retry_after_and_sends_exactly_one_request() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    let r = request("gpt-5-mini", ResponseFormat::JsonObject, gpt5_params());

    mock.rate_limit_next(1, RetryHint::Seconds(7));
    let err = c.complete(&r).await.unwrap_err();
    assert_eq!(err, LlmError::RateLimited { retry_after: Some(Duration::from_secs(7)) });
    assert_eq!(mock.total_requests(), 1, "no hidden retry");
    assert_eq!(mock.count("gpt-5-mini", 429), 1);

    mock.rate_limit_next(1, RetryHint::HttpDate(Duration::from_secs(30)));
    match c.complete(&r).await.unwrap_err() {
        LlmError::RateLimited { retry_after: Some(d) } => {
            assert!(d >= Duration::from_secs(27) && d <= Duration::from_secs(31), "{d:?}")
        }
        other => panic!("expected RateLimited with a duration, got {other:?}"),
    }

    mock.rate_limit_next(1, RetryHint::ResetHeaders { requests: "20ms".into(), tokens: "6m0s".into() });
    assert_eq!(c.complete(&r).await.unwrap_err(), LlmError::RateLimited { retry_after: Some(Duration::from_secs(360)) });

    mock.rate_limit_next(1, RetryHint::None);
    assert_eq!(c.complete(&r).await.unwrap_err(), LlmError::RateLimited { retry_after: None });

    assert_eq!(mock.total_requests(), 4, "one HTTP request per complete()");
    // The counter is consumed: the next call succeeds.
    c.complete(&r).await.expect("recovered");
    assert_eq!(mock.count("gpt-5-mini", 200), 1);
}

#[tokio::test]
async fn server_error_maps_to_server_and_is_not_retried() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    mock.fail_next(1);
    let err = c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.unwrap_err();
    match &err {
        LlmError::Server { status, message } => {
            assert_eq!(*status, 500);
            assert!(message.contains("server had an error"), "{message}");
        }
        other => panic!("expected Server, got {other:?}"),
    }
    assert_eq!(mock.total_requests(), 1);
}

#[tokio::test]
async fn hanging_server_maps_to_timeout() {
    let mock = mock_with_key().await;
    mock.set_hang(true);
    let c = client(&mock, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.unwrap_err();
    assert_eq!(err, LlmError::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.count("gpt-5", 0), 1, "recorded as left hanging");
}

#[tokio::test]
async fn connection_refused_maps_to_transport() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let c = OpenAiClient::new(&format!("http://127.0.0.1:{port}/v1"), &Secret::new(KEY), Duration::from_secs(5)).expect("client");
    let err = c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.unwrap_err();
    assert!(matches!(err, LlmError::Transport(_)), "{err:?}");
    assert!(!err.to_string().contains(KEY));
}

#[tokio::test]
async fn bad_output_is_detected_by_schema_validation() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    let original = product_schema();
    let r = request("gpt-5-mini", strict_format(&original), gpt5_params());
    mock.bad_output_next(1);
    let bad = c.complete(&r).await.expect("a 200 with broken content");
    let mut data: Value = serde_json::from_str(&bad.content).unwrap_or(Value::Null);
    strip_added_nulls(&original, &mut data);
    let errors = validate(&original, &data).unwrap_err();
    assert!(!errors.is_empty() && errors.len() <= schema::MAX_REPORTED_ERRORS);
    assert!(errors.iter().any(|e| e.contains("name") || e.contains("price")), "{errors:?}");

    let good = c.complete(&r).await.expect("answer");
    let mut data: Value = serde_json::from_str(&good.content).expect("json");
    strip_added_nulls(&original, &mut data);
    validate(&original, &data).expect("good again");
}

#[tokio::test]
async fn refusal_is_a_clear_error() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    mock.refuse_next(1);
    let err = c.complete(&request("gpt-5", strict_format(&product_schema()), gpt5_params())).await.unwrap_err();
    match err {
        LlmError::Unfinished { reason, usage, message } => {
            assert_eq!(reason, atlas_codex::llm::Unfinished::Refusal);
            assert!(message.contains("refused"), "{message}");
            assert!(usage.input_tokens > 0 && usage.output_tokens > 0, "a refusal is billed: {usage:?}");
        }
        other => panic!("expected Unfinished for a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_schema_strict_mode_would_refuse_is_rejected_like_the_real_api() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    // Sent without to_strict: the optional property is not in `required`.
    let loose = ResponseFormat::JsonSchema { name: "p".into(), schema: product_schema(), strict: true };
    let err = c.complete(&request("gpt-5", loose, gpt5_params())).await.unwrap_err();
    match err {
        LlmError::BadRequest { status, message } => {
            assert_eq!(status, 400);
            assert!(message.contains("additionalProperties"), "{message}");
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

#[tokio::test]
async fn api_key_is_sent_as_bearer_and_never_shown() {
    let mock = mock_with_key().await;
    let good = client(&mock, Duration::from_secs(10));
    good.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.expect("accepted key");
    let reqs = mock.requests();
    assert_eq!(reqs[0].auth, AuthSeen::Bearer { matches_expected: Some(true) });
    assert_eq!(reqs[0].header("authorization"), Some("<redacted>"));
    assert_eq!(reqs[0].header("content-type"), Some("application/json"));
    assert!(!format!("{:?}", reqs).contains(KEY));
    assert!(!format!("{good:?}").contains(KEY));

    let wrong_key = "sk-wrong-key-should-not-leak-42";
    let bad = OpenAiClient::new(&mock.base_url(), &Secret::new(wrong_key), Duration::from_secs(10)).expect("client");
    let err = bad.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.unwrap_err();
    assert!(matches!(err, LlmError::BadRequest { status: 401, .. }), "{err:?}");
    for shown in [err.to_string(), format!("{err:?}"), format!("{bad:?}")] {
        assert!(!shown.contains(wrong_key) && !shown.contains(KEY), "{shown}");
    }
    assert_eq!(mock.requests()[1].auth, AuthSeen::Bearer { matches_expected: Some(false) });
}

#[tokio::test]
async fn rpm_limit_is_per_model_and_tells_when_to_come_back() {
    let mock = MockOpenAi::start(MockConfig { rpm_window: RpmWindow::Sliding, ..Default::default() }).await;
    mock.set_rpm_limit(Some(2));
    let c = OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), Duration::from_secs(10)).expect("client");
    let r = request("gpt-5-nano", ResponseFormat::JsonObject, gpt5_params());
    c.complete(&r).await.expect("1st");
    c.complete(&r).await.expect("2nd");
    match c.complete(&r).await.unwrap_err() {
        LlmError::RateLimited { retry_after: Some(d) } => assert!(d > Duration::ZERO && d <= Duration::from_secs(60), "{d:?}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Another model has its own window.
    c.complete(&request("gpt-5-mini", ResponseFormat::JsonObject, gpt5_params())).await.expect("other model");
    assert_eq!(mock.count("gpt-5-nano", 200), 2);
    assert_eq!(mock.count("gpt-5-nano", 429), 1);
}

#[tokio::test(start_paused = true)]
async fn fixed_rpm_window_reopens_after_the_minute() {
    let mock = MockOpenAi::start(MockConfig { rpm_window: RpmWindow::Fixed, ..Default::default() }).await;
    mock.set_rpm_limit(Some(1));
    let c = OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), Duration::from_secs(600)).expect("client");
    let r = request("gpt-4o", ResponseFormat::JsonObject, gpt4_params());
    c.complete(&r).await.expect("1st");
    let wait = match c.complete(&r).await.unwrap_err() {
        LlmError::RateLimited { retry_after: Some(d) } => d,
        other => panic!("expected RateLimited, got {other:?}"),
    };
    assert!(wait <= Duration::from_secs(60));
    tokio::time::sleep(wait + Duration::from_secs(1)).await;
    c.complete(&r).await.expect("window reopened");
}

#[tokio::test]
async fn per_model_overrides_leave_other_models_alone() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    mock.update_model("gpt-5", |b| b.server_error_next = 2);
    let err = c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.unwrap_err();
    assert!(matches!(err, LlmError::Server { status: 500, .. }));
    c.complete(&request("gpt-5-mini", ResponseFormat::JsonObject, gpt5_params())).await.expect("fallback model fine");
    mock.clear_model_behavior("gpt-5");
    c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.expect("override removed");
}

async fn outcome_sequence(seed: u64) -> Vec<u16> {
    let mock = MockOpenAi::start(MockConfig { seed: Some(seed), ..Default::default() }).await;
    mock.set_failure_probability(0.5);
    let c = OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), Duration::from_secs(10)).expect("client");
    let r = request("gpt-5", ResponseFormat::JsonObject, gpt5_params());
    let mut out = Vec::new();
    for _ in 0..24 {
        out.push(match c.complete(&r).await {
            Ok(_) => 200,
            Err(LlmError::Server { status, .. }) => status,
            Err(e) => panic!("unexpected {e:?}"),
        });
    }
    out
}

#[tokio::test]
async fn seeded_probabilities_are_deterministic() {
    let a = outcome_sequence(42).await;
    let b = outcome_sequence(42).await;
    assert_eq!(a, b);
    assert!(a.contains(&200) && a.contains(&500), "{a:?}");
}

#[tokio::test(start_paused = true)]
async fn mock_latency_uses_tokio_time() {
    let mock = MockOpenAi::start(MockConfig::default()).await;
    mock.set_latency(Duration::from_secs(30));
    let c = OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), Duration::from_secs(120)).expect("client");
    let start = tokio::time::Instant::now();
    c.complete(&request("gpt-5", ResponseFormat::JsonObject, gpt5_params())).await.expect("answer");
    assert!(start.elapsed() >= Duration::from_secs(30));
}

fn schema_table() -> Vec<(&'static str, Value)> {
    vec![
        ("product", product_schema()),
        (
            "formats",
            json!({"type": "object", "properties": {
            "d": {"type": "string", "format": "date"}, "dt": {"type": "string", "format": "date-time"},
            "e": {"type": "string", "format": "email"}, "u": {"type": "string", "format": "uri"},
            "id": {"type": "string", "format": "uuid"}, "ip": {"type": "string", "format": "ipv4"},
            "t": {"type": "string", "format": "time"}, "h": {"type": "string", "format": "hostname"}
        }, "required": ["d", "dt", "e", "u", "id", "ip", "t", "h"]}),
        ),
        (
            "bounds",
            json!({"type": "object", "properties": {
            "pct": {"type": "number", "minimum": 0, "maximum": 1},
            "n": {"type": "integer", "minimum": 100, "exclusiveMaximum": 102},
            "neg": {"type": "integer", "maximum": -5},
            "step": {"type": "number", "multipleOf": 0.25, "minimum": 3.1},
            "s": {"type": "string", "minLength": 40, "maxLength": 45},
            "short": {"type": "string", "maxLength": 3}
        }, "required": ["pct", "n", "neg", "step", "s", "short"]}),
        ),
        (
            "arrays",
            json!({"type": "object", "properties": {
            "three": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "uniqueItems": true},
            "none": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "objs": {"type": "array", "minItems": 2, "uniqueItems": true, "items": {"type": "object",
                "properties": {"k": {"type": "string"}}, "required": ["k"], "additionalProperties": false}}
        }, "required": ["three", "none", "objs"]}),
        ),
        (
            "enum_const_nullable",
            json!({"type": "object", "properties": {
            "status": {"enum": ["in_stock", "sold_out"]}, "v": {"const": 2},
            "maybe": {"type": ["null", "string"]}, "b": {"type": "boolean"}
        }, "required": ["status", "v", "maybe", "b"], "additionalProperties": false}),
        ),
        (
            "anyof_oneof",
            json!({"type": "object", "properties": {
            "x": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
            "y": {"oneOf": [{"type": "integer", "minimum": 5}, {"type": "string"}]}
        }, "required": ["x", "y"]}),
        ),
        (
            "refs",
            json!({"type": "object", "$defs": {
            "addr": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string", "minLength": 5}}, "required": ["city", "zip"]}
        }, "properties": {"home": {"$ref": "#/$defs/addr"}, "work": {"$ref": "#/$defs/addr"}}, "required": ["home"]}),
        ),
        (
            "recursive",
            json!({"type": "object", "$defs": {
            "node": {"type": "object", "properties": {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["label", "children"]}
        }, "properties": {"root": {"$ref": "#/$defs/node"}}, "required": ["root"]}),
        ),
        (
            "allof",
            json!({"allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
            ]}),
        ),
        ("map", json!({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 2})),
        ("top_array", json!({"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 2})),
        ("untyped", json!({"properties": {"n": {"minimum": 3}}, "required": ["n"]})),
        ("empty", json!({})),
    ]
}

#[test]
fn simulated_instances_validate_for_a_table_of_schemas() {
    for (name, s) in schema_table() {
        let v = generate_instance(&s);
        if let Err(e) = validate(&s, &v) {
            panic!("{name}: generated {v} is invalid: {e:?}");
        }
        // And through the strict pipeline when the schema is adaptable.
        if let Some(strict) = to_strict(&s) {
            let mut v = generate_instance(&strict);
            validate(&strict, &v).unwrap_or_else(|e| panic!("{name}: invalid for strict: {e:?}"));
            strip_added_nulls(&s, &mut v);
            validate(&s, &v).unwrap_or_else(|e| panic!("{name}: strict answer invalid for original {v}: {e:?}"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn simulated_client_answers_with_valid_json_usage_and_latency() {
    let sim = SimulatedClient::new(Duration::from_millis(300));
    let mut r = request("gpt-5-mini", strict_format(&product_schema()), gpt5_params());
    r.output_schema = Some(product_schema());
    r.user = "x".repeat(4000);
    let start = tokio::time::Instant::now();
    let resp = sim.complete(&r).await.expect("answer");
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert!(resp.simulated);
    assert_eq!(resp.model, "gpt-5-mini");
    let v: Value = serde_json::from_str(&resp.content).expect("json");
    validate(&product_schema(), &v).expect("valid");
    let u = resp.usage;
    let expected_input = ((r.system.len() + r.user.len()) / 4) as u64;
    assert!(u.input_tokens >= expected_input && u.input_tokens <= expected_input + 20, "{u:?}");
    assert!(u.reasoning_tokens > 0, "reasoning model spends reasoning tokens: {u:?}");
    assert!(u.output_tokens > u.reasoning_tokens);
    assert!(u.output_tokens <= 2048);

    let r4 = LlmRequest { params: gpt4_params(), model: "gpt-4o".into(), ..r.clone() };
    let resp4 = sim.complete(&r4).await.expect("answer");
    assert_eq!(resp4.usage.reasoning_tokens, 0);
    assert_eq!(sim.calls(), 2);

    let free = request("gpt-4o", ResponseFormat::JsonObject, gpt4_params());
    let v: Value = serde_json::from_str(&sim.complete(&free).await.expect("answer").content).expect("json");
    assert!(v["summary"].is_string());
}

#[test]
fn to_strict_on_adaptable_schemas() {
    // Nested, optional, refs, oneOf, dropped keywords.
    let s = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "title": "T",
        "properties": {
            "name": {"type": "string", "minLength": 2, "format": "uri"},
            "when": {"type": "string", "format": "date"},
            "kind": {"enum": ["a", "b"]},
            "owner": {"$ref": "#/$defs/person"},
            "v": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "list": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "integer", "minimum": 1}}}, "uniqueItems": true}
        },
        "required": ["name"],
        "$defs": {"person": {"type": "object", "properties": {"n": {"type": "string"}}, "additionalProperties": true}}
    });
    let t = to_strict(&s).expect("adaptable");
    assert!(t.get("$schema").is_none() && t.get("title").is_none());
    assert_eq!(
        t["properties"]["name"],
        json!({"type": "string", "description": "(format: uri; minLength: 2)"}),
        "minLength and an unsupported format become a description hint"
    );
    assert_eq!(t["properties"]["when"], json!({"type": ["string", "null"], "format": "date"}));
    assert_eq!(t["properties"]["kind"], json!({"enum": ["a", "b", null]}));
    assert_eq!(t["properties"]["owner"], json!({"anyOf": [{"$ref": "#/$defs/person"}, {"type": "null"}]}));
    assert_eq!(t["properties"]["v"], json!({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}));
    assert_eq!(t["properties"]["list"]["items"]["required"], json!(["k"]));
    assert_eq!(t["properties"]["list"]["items"]["properties"]["k"], json!({"type": ["integer", "null"], "minimum": 1}));
    assert!(t["properties"]["list"].get("uniqueItems").is_none());
    assert_eq!(t["properties"]["list"]["description"], json!("(uniqueItems: true)"));
    assert_eq!(t["$defs"]["person"]["additionalProperties"], json!(false));
    assert_eq!(t["$defs"]["person"]["required"], json!(["n"]));
    let mut problems = Vec::new();
    all_objects_strict(&t, "#", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    // The strict schema is itself a valid JSON Schema.
    assert!(jsonschema::meta::validate(&t).is_ok());
}

#[test]
fn to_strict_declines_what_strict_mode_cannot_express() {
    let not_adaptable = [
        ("root array", json!({"type": "array", "items": {"type": "string"}})),
        ("root anyOf", json!({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}]})),
        (
            "root ref",
            json!({"type": "object", "$ref": "#/$defs/x", "$defs": {"x": {"type": "object", "properties": {"a": {"type": "string"}}}}}),
        ),
        (
            "patternProperties",
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "patternProperties": {"^x": {"type": "string"}}}),
        ),
        ("map", json!({"type": "object", "properties": {"m": {"type": "object", "additionalProperties": {"type": "integer"}}}})),
        ("free object", json!({"type": "object"})),
        ("allOf", json!({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}]}}})),
        ("not", json!({"type": "object", "properties": {"a": {"type": "string", "not": {"const": "x"}}}})),
        ("if/then", json!({"type": "object", "properties": {"a": {"type": "string"}}, "if": {"required": ["a"]}, "then": {}})),
        ("untyped property", json!({"type": "object", "properties": {"a": {}}})),
        ("array without items", json!({"type": "object", "properties": {"a": {"type": "array"}}})),
        ("required without property", json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]})),
        ("boolean schema", json!({"type": "object", "properties": {"a": true}})),
        ("remote ref", json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}})),
        ("ref into properties", json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"$ref": "#/properties/a"}}})),
    ];
    for (name, s) in not_adaptable {
        assert!(to_strict(&s).is_none(), "{name} should not be adaptable: {:?}", to_strict(&s));
    }
}

fn nested(levels: usize) -> Value {
    let mut s = json!({"type": "object", "properties": {"leaf": {"type": "string"}}});
    for _ in 1..levels {
        s = json!({"type": "object", "properties": {"child": s}});
    }
    s
}

#[test]
fn to_strict_enforces_documented_size_limits() {
    let limits = StrictLimits::default();
    assert!(to_strict(&nested(limits.max_nesting)).is_some());
    assert!(to_strict(&nested(limits.max_nesting + 1)).is_none(), "too deep");

    let wide = |n: usize| {
        let props: serde_json::Map<String, Value> = (0..n).map(|i| (format!("p{i}"), json!({"type": "string"}))).collect();
        json!({"type": "object", "properties": props})
    };
    assert!(to_strict(&wide(limits.max_properties)).is_some());
    assert!(to_strict(&wide(limits.max_properties + 1)).is_none(), "too many properties");

    let many_enum = json!({"type": "object", "properties": {"e": {"type": "integer", "enum": (0..1001).collect::<Vec<_>>()}}});
    assert!(to_strict(&many_enum).is_none(), "too many enum values");

    let tight = StrictLimits { max_properties: 100, max_nesting: 5, ..limits };
    assert!(to_strict_with(&wide(101), &tight).is_none());
    assert!(to_strict_with(&nested(6), &tight).is_none());
    assert!(to_strict_with(&nested(5), &tight).is_some());
}

#[test]
fn validate_reports_paths_and_caps_the_error_count() {
    let s =
        json!({"type": "object", "properties": {"items": {"type": "array", "items": {"type": "integer"}}}, "required": ["items", "name"]});
    let errs = validate(&s, &json!({"items": [1, "two", 3]})).unwrap_err();
    assert!(errs.iter().any(|e| e.starts_with("/items/1:")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("name")), "{errs:?}");

    let many = json!({"type": "array", "items": {"type": "integer"}});
    let errs = validate(&many, &json!(vec!["x"; 50])).unwrap_err();
    assert_eq!(errs.len(), schema::MAX_REPORTED_ERRORS);

    let formats = json!({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}});
    assert!(validate(&formats, &json!({"e": "not-an-email"})).is_err(), "formats are asserted");

    let errs = validate(&json!({"type": 12}), &json!(1)).unwrap_err();
    assert!(errs[0].starts_with("(schema):"), "{errs:?}");
}

#[tokio::test]
async fn remote_refs_fail_validation_without_network_or_panic() {
    let s = json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}});
    let errs = validate(&s, &json!({"a": 1})).unwrap_err();
    assert!(errs[0].starts_with("(schema):"), "{errs:?}");
}

#[tokio::test]
async fn empty_answer_is_a_clear_error() {
    let mock = mock_with_key().await;
    let c = client(&mock, Duration::from_secs(10));
    // In text mode the mock's "bad output" is an empty message.
    mock.bad_output_next(1);
    let err = c.complete(&request("gpt-4o", ResponseFormat::Text, gpt4_params())).await.unwrap_err();
    match err {
        LlmError::BadRequest { status, message } => {
            assert_eq!(status, 200);
            assert!(message.contains("empty model answer"), "{message}");
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_serves_concurrent_requests_without_serialising_latency() {
    let mock = MockOpenAi::start(MockConfig { max_recorded: 0, ..Default::default() }).await;
    mock.set_latency(Duration::from_secs(1));
    let c = OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), Duration::from_secs(30)).expect("client");
    let started = std::time::Instant::now();
    let calls = (0..300).map(|i| {
        let c = c.clone();
        async move {
            let model = if i % 2 == 0 { "gpt-5-nano" } else { "gpt-4o" };
            c.complete(&request(model, strict_format(&product_schema()), gpt5_params())).await
        }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| r.is_ok()), "{:?}", results.iter().find(|r| r.is_err()));
    // 300 calls of 1 s each: concurrent, so a few seconds at most, not 300.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(mock.total_requests(), 300);
    assert!(mock.requests().is_empty(), "max_recorded = 0 keeps no log");
    assert_eq!(mock.count("gpt-5-nano", 200) + mock.count("gpt-4o", 200), 300);
}

#[tokio::test]
async fn the_mock_bills_every_answer_refusals_and_length_stops_included_at_its_prices() {
    let mut prices = std::collections::BTreeMap::new();
    prices
        .insert("gpt-5-nano".to_string(), MockPrice { input_usd_per_mtok: 1.0, cached_input_usd_per_mtok: 0.1, output_usd_per_mtok: 10.0 });
    let mock = MockOpenAi::start(MockConfig { expected_api_key: Some(KEY.into()), prices, ..MockConfig::default() }).await;
    let c = client(&mock, Duration::from_secs(10));
    let r = request("gpt-5-nano", strict_format(&product_schema()), gpt5_params());
    let ok = c.complete(&r).await.expect("answer");
    mock.refuse_next(1);
    let refused = c.complete(&r).await.unwrap_err();
    mock.update(|b| b.length_next = 1);
    let cut = c.complete(&r).await.unwrap_err();
    let usage_of = |e: &LlmError| match e {
        LlmError::Unfinished { usage, .. } => *usage,
        other => panic!("expected an unfinished answer, got {other:?}"),
    };
    let (refusal_usage, length_usage) = (usage_of(&refused), usage_of(&cut));
    // A `length` stop bills the whole output cap.
    assert_eq!(length_usage.output_tokens, u64::from(r.params.max_output_tokens), "{length_usage:?}");
    let bill = mock.bill();
    let line = &bill.by_model["gpt-5-nano"];
    assert_eq!((line.answers, line.refusals, line.length_stops), (3, 1, 1), "{bill:?}");
    let prompt: u64 = [ok.usage, refusal_usage, length_usage].iter().map(|u| u.input_tokens).sum();
    let completion: u64 = [ok.usage, refusal_usage, length_usage].iter().map(|u| u.output_tokens).sum();
    assert_eq!((line.prompt_tokens, line.completion_tokens), (prompt, completion));
    let want = (prompt as f64 * 1.0 + completion as f64 * 10.0) / 1e6;
    assert!((bill.total_usd - want).abs() < 1e-12, "billed {} want {want}", bill.total_usd);
    // The schema is billed input: the same request without it costs fewer prompt tokens.
    let plain = c.complete(&request("gpt-5-nano", ResponseFormat::JsonObject, gpt5_params())).await.expect("answer");
    assert!(plain.usage.input_tokens + 20 < ok.usage.input_tokens, "{:?} vs {:?}", plain.usage, ok.usage);
    // The same bill over HTTP.
    let url = format!("{}/mock/bill", mock.base_url().trim_end_matches("/v1"));
    let text = reqwest::get(&url).await.expect("GET /mock/bill").text().await.expect("body");
    let served: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(served["by_model"]["gpt-5-nano"]["answers"], 4);
}

#[tokio::test]
async fn an_answer_the_client_stopped_waiting_for_is_still_billed() {
    let mock = mock_with_key().await;
    mock.set_latency(Duration::from_millis(600));
    let c = client(&mock, Duration::from_millis(150));
    let r = request("gpt-5-nano", strict_format(&product_schema()), gpt5_params());
    let err = c.complete(&r).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout), "{err:?}");
    assert_eq!(mock.bill().answers(), 0, "not generated yet");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let bill = mock.bill();
    let line = &bill.by_model["gpt-5-nano"];
    assert_eq!((line.answers, line.after_client_left), (1, 1), "{bill:?}");
    assert!(line.prompt_tokens > 0 && line.completion_tokens > 0);
}
