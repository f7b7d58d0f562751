//! The bad-input catalogue: hostile or broken messages, pages and model answers. Each one ends
//! with a clear, typed error on the job and/or in the DLQ, and the worker keeps serving.

mod support;

use std::sync::Arc;
use std::time::Duration;

use atlas_codex::job::JobStatus;
use atlas_codex::llm::openai::OpenAiClient;
use atlas_codex::llm::LlmClient;
use atlas_codex::mock_openai::{Behavior, MockConfig, MockOpenAi};
use atlas_codex::settings::Secret;
use serde_json::json;
use support::app::{spawn_app, text_job, ScriptedLlm, TestApp};
use support::pages::PageServer;

/// What a case must end as.
struct Case {
    name: &'static str,
    body: String,
    /// The job id to check on the record (None when the message has no usable id).
    id: Option<&'static str>,
    /// The error kind expected on the record and in the DLQ reason.
    kind: &'static str,
}

fn case(name: &'static str, id: Option<&'static str>, kind: &'static str, body: impl Into<String>) -> Case {
    Case { name, body: body.into(), id, kind }
}

fn schema() -> serde_json::Value {
    json!({"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]})
}

/// Runs `cases` on `t`, then a good job, and checks every outcome.
async fn run_catalogue(t: &TestApp, cases: &[Case]) {
    let mut bodies: Vec<String> = cases.iter().map(|c| c.body.clone()).collect();
    bodies.push(text_job("still-serving"));
    t.send(&bodies).await;
    let stats = t.run_until_idle().await;
    assert_eq!(stats.received, bodies.len() as u64, "each message received once (never retried): {stats:?}");

    let dlq = t.backends.queue.dlq_peek(1000).await.unwrap();
    let mut problems = Vec::new();
    for c in cases {
        let in_dlq = dlq.iter().find(|d| d.body == c.body);
        match in_dlq {
            None => problems.push(format!("{}: not in the DLQ", c.name)),
            Some(d) => {
                let reason = d.reason.clone().unwrap_or_default();
                if !reason.contains(c.kind) {
                    problems.push(format!("{}: DLQ reason `{reason}` lacks `{}`", c.name, c.kind));
                }
            }
        }
        if let Some(id) = c.id {
            match t.backends.jobs.get(id).await.unwrap() {
                None => problems.push(format!("{}: no job record for {id}", c.name)),
                Some(r) => {
                    let e = r.error.clone();
                    let ok = r.status == JobStatus::Failed
                        && e.as_ref()
                            .is_some_and(|e| e.permanent && (e.kind == c.kind || e.message.contains(c.kind)) && !e.message.is_empty());
                    if !ok {
                        problems.push(format!("{}: record {:?} {:?}", c.name, r.status, e));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} of {} cases wrong:\n  {}", problems.len(), cases.len(), problems.join("\n  "));
    assert_eq!(dlq.len(), cases.len(), "the DLQ holds exactly the bad inputs");
    let good = t.record("still-serving").await;
    assert_eq!(good.status, JobStatus::Completed, "the worker kept serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_broken_messages() {
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t = spawn_app(&[("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "1")], llm.clone()).await;
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let s = schema();
    let cases = vec![
        case("not JSON", None, "invalid_message", "this is not json"),
        case("truncated JSON", None, "invalid_message", r#"{"job_id": "t-1", "url": "#),
        case("JSON array", None, "invalid_message", "[1, 2, 3]"),
        case("JSON string", None, "invalid_message", "\"job\""),
        case("empty object", None, "invalid_message", "{}"),
        case("job_id wrong type", None, "invalid_message", json!({"job_id": 42, "text": "x"}).to_string()),
        case("job_id path traversal", None, "invalid_message", json!({"job_id": "../../etc/passwd", "text": "x"}).to_string()),
        case("job_id too long", None, "invalid_message", json!({"job_id": "a".repeat(129), "text": "x"}).to_string()),
        case("unknown version", Some("b-version"), "invalid_message", json!({"version": 99, "job_id": "b-version", "text": "x"}).to_string()),
        case("unknown type", Some("b-type"), "invalid_message", json!({"job_id": "b-type", "type": "teleport", "text": "x"}).to_string()),
        case("no source", Some("b-nosource"), "invalid_message", json!({"job_id": "b-nosource", "instructions": "x"}).to_string()),
        case("two sources", Some("b-twosources"), "invalid_message", json!({"job_id": "b-twosources", "url": "https://a.example", "html": "<p>x</p>"}).to_string()),
        case("url wrong type", Some("b-urltype"), "invalid_message", json!({"job_id": "b-urltype", "url": ["https://a.example"]}).to_string()),
        case("file url", Some("b-file"), "invalid_message", json!({"job_id": "b-file", "url": "file:///etc/passwd"}).to_string()),
        case("ftp url", Some("b-ftp"), "invalid_message", json!({"job_id": "b-ftp", "url": "ftp://a.example/x"}).to_string()),
        case("garbage url", Some("b-garbage"), "invalid_message", json!({"job_id": "b-garbage", "url": "http//nothing"}).to_string()),
        case("max_pages zero", Some("b-pages0"), "invalid_message", json!({"job_id": "b-pages0", "type": "crawl", "url": "https://a.example", "max_pages": 0}).to_string()),
        case("max_pages huge", Some("b-pages"), "invalid_message", json!({"job_id": "b-pages", "type": "crawl", "url": "https://a.example", "max_pages": 100000}).to_string()),
        case("max_depth huge", Some("b-depth"), "invalid_message", json!({"job_id": "b-depth", "type": "crawl", "url": "https://a.example", "max_depth": 50}).to_string()),
        case("negative max_pages", Some("b-negpages"), "invalid_message", json!({"job_id": "b-negpages", "type": "crawl", "url": "https://a.example", "max_pages": -1}).to_string()),
        case("schema not an object", Some("b-schema-str"), "invalid_message", json!({"job_id": "b-schema-str", "text": "x", "schema": "give me json"}).to_string()),
        case("schema that is not a schema", Some("b-schema-bad"), "invalid_message", json!({"job_id": "b-schema-bad", "text": "x", "schema": {"type": "flarp", "properties": 7}}).to_string()),
        case("unknown format", Some("b-format"), "invalid_message", json!({"job_id": "b-format", "text": "x", "formats": ["pdf"]}).to_string()),
        case("negative cost cap", Some("b-cost"), "invalid_message", json!({"job_id": "b-cost", "text": "x", "max_cost_usd": -5}).to_string()),
        case("unknown field", Some("b-field"), "invalid_message", json!({"job_id": "b-field", "text": "x", "callback": "https://evil.example"}).to_string()),
        case("huge instructions", Some("b-instr"), "invalid_message", json!({"job_id": "b-instr", "text": "x", "instructions": "a".repeat(40_000)}).to_string()),
        case("deep nesting", None, "invalid_message", nested),
        case("tenant too long", Some("b-tenant"), "invalid_message", json!({"job_id": "b-tenant", "text": "x", "tenant": "t".repeat(500)}).to_string()),
        case("html source not a string", Some("b-htmltype"), "invalid_message", json!({"job_id": "b-htmltype", "html": {"tag": "p"}}).to_string()),
        case("lone surrogate (not UTF-8)", None, "invalid_message", r#"{"job_id": "b-utf", "text": "\ud800"}"#),
        case("legacy params not an object", Some("b-legacy"), "invalid_message", json!({"jobId": "b-legacy", "type": "scrape", "params": "url=x"}).to_string()),
        case("forbidden model override", Some("b-model"), "model_forbidden", json!({"job_id": "b-model", "text": "x", "instructions": "y", "schema": s, "model": "gpt-9-ultra"}).to_string()),
        case("missing claim-check object", Some("b-inputkey"), "input_missing", json!({"job_id": "b-inputkey", "input_key": "inputs/nothing-here", "instructions": "y"}).to_string()),
        case("SSRF metadata IP", Some("b-ssrf-meta"), "ssrf_blocked", json!({"job_id": "b-ssrf-meta", "url": "http://169.254.169.254/latest/meta-data/"}).to_string()),
        case("SSRF ECS metadata IPv6", Some("b-ssrf-ec2v6"), "ssrf_blocked", json!({"job_id": "b-ssrf-ec2v6", "url": "http://[fd00:ec2::254]/"}).to_string()),
        case("SSRF metadata as IPv4-translated IPv6", Some("b-ssrf-xlat"), "ssrf_blocked", json!({"job_id": "b-ssrf-xlat", "url": "http://[::ffff:0:169.254.169.254]/latest/meta-data/"}).to_string()),
        case("SSRF metadata through local-use NAT64", Some("b-ssrf-nat64"), "ssrf_blocked", json!({"job_id": "b-ssrf-nat64", "url": "http://[64:ff9b:1::a9fe:a9fe]/"}).to_string()),
        case("SSRF metadata through Teredo", Some("b-ssrf-teredo"), "ssrf_blocked", json!({"job_id": "b-ssrf-teredo", "url": "http://[2001:0:808:808::5601:5601]/"}).to_string()),
        case("input_key naming another job's result", Some("b-inputkey-other"), "invalid_message", json!({"job_id": "b-inputkey-other", "input_key": "jobs/someone-else/result.json", "instructions": "y"}).to_string()),
        case("input_key outside inputs/", Some("b-inputkey-root"), "invalid_message", json!({"job_id": "b-inputkey-root", "input_key": "config.json", "instructions": "y"}).to_string()),
        case("schema with an invalid regex", Some("b-schema-regex"), "invalid_schema", json!({"job_id": "b-schema-regex", "text": "x", "instructions": "y", "schema": {"type": "object", "properties": {"sku": {"type": "string", "pattern": "([unclosed"}}}}).to_string()),
        case("schema with a dangling $ref", Some("b-schema-ref"), "invalid_schema", json!({"job_id": "b-schema-ref", "text": "x", "instructions": "y", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}}).to_string()),
    ];
    assert!(cases.len() >= 30, "the catalogue has {} message cases", cases.len());
    run_catalogue(&t, &cases).await;
    assert_eq!(llm.calls(), 1, "only the good job reached the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pages_and_private_targets() {
    let pages = PageServer::start().await;
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    // Private targets refused (production policy) for the SSRF cases.
    let strict =
        spawn_app(&[("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "1"), ("ATLAS__FETCH__ALLOW_PRIVATE_NETWORKS", "false")], llm.clone()).await;
    let ssrf = |name: &'static str, id: &'static str, url: &str| {
        case(name, Some(id), "ssrf_blocked", json!({"job_id": id, "url": url}).to_string())
    };
    let cases = vec![
        ssrf("localhost", "p-localhost", "http://localhost/admin"),
        ssrf("loopback IP", "p-loop", "http://127.0.0.1:9/"),
        ssrf("10/8", "p-ten", "http://10.0.0.1/"),
        ssrf("192.168/16", "p-192", "http://192.168.1.1/"),
        ssrf("IPv6 loopback", "p-v6loop", "http://[::1]/"),
        ssrf("IPv6 ULA", "p-ula", "http://[fd00::1]/"),
        ssrf("IPv4-mapped IPv6 loopback", "p-mapped", "http://[::ffff:127.0.0.1]/"),
        ssrf("decimal IP for loopback", "p-decimal", "http://2130706433/"),
        ssrf("fixture server on loopback", "p-fixture", &pages.url("/article.html")),
    ];
    run_catalogue(&strict, &cases).await;

    // Private networks allowed (local stage), so the fixture server is reachable; hostile pages.
    let local = spawn_app(
        &[("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "1"), ("ATLAS__FETCH__MAX_BODY_BYTES", "1048576"), ("ATLAS__FETCH__TOTAL_TIMEOUT_SECS", "2")],
        llm.clone(),
    )
    .await;
    let page = |name: &'static str, id: &'static str, kind: &'static str, path: &str| {
        case(name, Some(id), kind, json!({"job_id": id, "url": pages.url(path)}).to_string())
    };
    let cases = vec![
        page("redirect into the metadata IP", "h-redir-meta", "ssrf_blocked", "/redirect/metadata"),
        page("redirect to file://", "h-redir-file", "ssrf_blocked", "/redirect/file"),
        page("redirect loop", "h-loop", "too_many_redirects", "/redirect/loop"),
        page("gzip bomb", "h-bomb", "body_too_large", "/gzip-bomb"),
        page("huge body", "h-huge", "body_too_large", "/huge"),
        page("image instead of a page", "h-image", "unsupported_content_type", "/image"),
        page("binary without a content type", "h-binary", "unsupported_content_type", "/no-type-binary"),
        page("404", "h-404", "http_4xx", "/status/404"),
        page("slow drip past the timeout", "h-drip", "fetch_timeout", "/drip"),
    ];
    run_catalogue(&local, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_answers_that_are_not_json_or_break_the_schema() {
    let mock = MockOpenAi::start(MockConfig {
        behavior: Behavior { bad_output_probability: 1.0, ..Behavior::default() },
        seed: Some(7),
        ..MockConfig::default()
    })
    .await;
    let llm: Arc<dyn LlmClient> =
        Arc::new(OpenAiClient::new(&mock.base_url(), &Secret::new("sk-test-secret"), Duration::from_secs(10)).unwrap());
    let t = support::app::spawn_app(&[("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "1")], llm).await;
    let cases = vec![
        case("model answer breaks the schema", Some("m-bad"), "invalid_output", text_job("m-bad")),
        case(
            "model answer for a non-strict schema breaks it",
            Some("m-loose"),
            "invalid_output",
            json!({"job_id": "m-loose", "text": "x", "schema": {"type": "object", "patternProperties": {"^a": {"type": "string"}}, "minProperties": 1}}).to_string(),
        ),
    ];
    // Every answer is bad, so the good job is expected to fail too: check the two cases only.
    let bodies: Vec<String> = cases.iter().map(|c| c.body.clone()).collect();
    t.send(&bodies).await;
    t.run_until_idle().await;
    for c in &cases {
        let r = t.record(c.id.unwrap()).await;
        assert_eq!(r.status, JobStatus::Failed, "{}", c.name);
        let e = r.error.unwrap();
        assert!(e.message.contains("invalid_output") || e.kind == "invalid_output", "{}: {e:?}", c.name);
        assert!(!r.calls.is_empty() && r.calls.iter().all(|a| a.outcome == "invalid_output"), "{}: {:?}", c.name, r.calls);
        assert!(r.cost_micros > 0, "bad answers are still charged");
    }
    // Invalid output escalated a tier before giving up.
    let models: Vec<String> = t.record("m-bad").await.calls.iter().map(|a| a.model.clone()).collect();
    assert!(models.len() >= 2 && models[0] != models[1], "escalated: {models:?}");
    // And the key never reached the record or the DLQ.
    let dlq = t.backends.queue.dlq_peek(10).await.unwrap();
    let all = format!("{:?}{:?}", dlq, t.backends.jobs.list(None, 10).await.unwrap());
    assert!(!all.contains("sk-test-secret"));
    // The worker keeps serving once the model behaves.
    mock.handle().update(|b| b.bad_output_probability = 0.0);
    t.send(&[text_job("m-good")]).await;
    t.run_until_idle().await;
    assert_eq!(t.record("m-good").await.status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_dlq_or_the_job_record_even_when_a_provider_echoes_them() {
    const KEY: &str = "wrong-key-Zx81Qp0aLm7"; // not `sk-` shaped: only the known value can catch it
    let mock =
        MockOpenAi::start(MockConfig { expected_api_key: Some("sk-the-right-key".into()), echo_key_on_401: true, ..MockConfig::default() })
            .await;
    let llm: Arc<dyn LlmClient> = Arc::new(OpenAiClient::new(&mock.base_url(), &Secret::new(KEY), Duration::from_secs(10)).unwrap());
    let t = support::app::spawn_app(&[("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "1")], llm).await;
    let secrets = [KEY, "sk-caller-key-0123456789abcd", "caller-token-5Kd93LxQ", "legacy-key-77aa88bb99"];
    let bodies = vec![
        json!({"job_id": "s-401", "text": "x", "instructions": "y", "schema": schema()}).to_string(),
        json!({"job_id": "s-hdr", "url": "http://169.254.169.254/", "apiKey": secrets[1], "headers": {"Authorization": format!("Bearer {}", secrets[2])}}).to_string(),
        json!({"jobId": "s-legacy", "type": "scrape", "params": {"url": "http://169.254.169.254/", "apiKey": secrets[3]}}).to_string(),
    ];
    t.send(&bodies).await;
    t.run_until_idle().await;
    let dlq = t.backends.queue.dlq_peek(10).await.unwrap();
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    let r401 = t.record("s-401").await;
    assert!(
        r401.error.as_ref().is_some_and(|e| e.message.contains("Incorrect API key provided: [redacted]")),
        "the provider's echo, redacted: {:?}",
        r401.error
    );
    let everything = format!("{:?}{:?}", dlq, t.backends.jobs.list(None, 10).await.unwrap());
    for s in secrets {
        assert!(!everything.contains(s), "`{s}` reached the DLQ or a record:\n{everything}");
    }
    let hdr = dlq.iter().find(|d| d.body.contains("s-hdr")).expect("s-hdr dead-lettered");
    assert!(hdr.body.contains(r#""Authorization":"[redacted]""#), "header names stay, values go: {}", hdr.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_from_a_provider_is_charged_at_what_the_request_could_cost_and_kept_as_its_claim() {
    let mock =
        MockOpenAi::start(MockConfig { behavior: Behavior { inflate_usage_next: 2, ..Behavior::default() }, ..MockConfig::default() })
            .await;
    let llm: Arc<dyn LlmClient> =
        Arc::new(OpenAiClient::new(&mock.base_url(), &Secret::new("sk-test-key-for-usage"), Duration::from_secs(10)).unwrap());
    let t = support::app::spawn_app(&[("ATLAS__BUDGET__MONTHLY_USD", "50")], llm).await;
    t.send(&[text_job("u-absurd-1"), text_job("u-absurd-2")]).await;
    t.run_until_idle().await;
    let mut charged = 0;
    for id in ["u-absurd-1", "u-absurd-2"] {
        let r = t.record(id).await;
        assert_eq!(r.status, JobStatus::Completed, "{id}: {:?}", r.error);
        let call = &r.calls[0];
        let claim = call.claimed_usage.expect("the provider's claim is kept on the call");
        assert_eq!((claim.input_tokens, claim.output_tokens), (4_000_000_000, 1_000_000));
        assert!(call.usage.input_tokens < 10_000 && call.usage.output_tokens <= 16_384, "charged at the bound: {:?}", call.usage);
        assert!(r.cost_micros < 100_000, "{id} cost ${}: a bounded charge, not $1,933", r.cost_micros as f64 / 1e6);
        charged += r.cost_micros;
    }
    // The ledger holds the bounded charges, and the budget still serves the next job.
    let period = atlas_codex::budget::period(chrono::Utc::now());
    let spent = t.backends.ledger.snapshot(&period, chrono::Utc::now()).await.unwrap().spent_micros;
    assert!(spent >= charged && spent < 1_000_000, "ledger {spent} vs records {charged}");
    t.send(&[text_job("u-after")]).await;
    t.run_until_idle().await;
    let after = t.record("u-after").await;
    assert_eq!(after.status, JobStatus::Completed);
    assert!(after.calls[0].claimed_usage.is_none(), "a plausible answer is charged as reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_checked_input_larger_than_one_jobs_bound_is_refused_before_it_is_parsed() {
    let llm = ScriptedLlm::new(Duration::from_millis(1), 0, false);
    let t = spawn_app(&[("ATLAS__QUEUE__MAX_RECEIVE_COUNT", "1"), ("ATLAS__FETCH__MAX_BODY_BYTES", "65536")], llm.clone()).await;
    let links: String = (0..20_000).map(|i| format!("<a href=\"https://e.com/{i}\">{i}</a>")).collect();
    t.backends.artifacts.put("inputs/huge-1", format!("<html><body>{links}</body></html>").into_bytes(), "text/html").await.unwrap();
    t.backends.artifacts.put("inputs/fits-1", b"<p>Price: $5</p>".to_vec(), "text/html").await.unwrap();
    let cases = vec![case(
        "claim-checked input over the bound",
        Some("c-huge"),
        "input_too_large",
        json!({"job_id": "c-huge", "input_key": "inputs/huge-1", "instructions": "y"}).to_string(),
    )];
    run_catalogue(&t, &cases).await;
    let r = t.record("c-huge").await;
    assert!(r.error.unwrap().message.contains("fetch.max_body_bytes"));
    assert_eq!(llm.calls(), 1, "only the good job reached the model");
    t.send(&[
        json!({"job_id": "c-fits", "input_key": "inputs/fits-1", "instructions": "Extract the price", "schema": schema()}).to_string()
    ])
    .await;
    t.run_until_idle().await;
    assert_eq!(t.record("c-fits").await.status, JobStatus::Completed);
}
