//! The job message: current and legacy formats, every `MessageError`, the apiKey rule, the claim
//! check, boundaries, round trips, the documented examples and `docs/job.schema.json`, plus property
//! tests (the CI short run of what `fuzz/` does at length).

use std::path::{Path, PathBuf};

use atlas_codex::job::{
    parse_message, salvage_job_id, Format, Job, JobId, JobType, MessageError, Source, MAX_CRAWL_DEPTH, MAX_CRAWL_PAGES,
    MAX_INSTRUCTIONS_BYTES, MAX_MESSAGE_BYTES, MESSAGE_VERSION,
};
use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// helpers

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/messages")
}

/// Every file in a fixture directory, sorted, as (name, body).
fn read_dir(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("dir entry").path();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            let body = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, body)
        })
        .collect();
    out.sort();
    out
}

fn parse(v: &Value) -> Result<Job, MessageError> {
    parse_message(&v.to_string())
}

fn ok(v: Value) -> Job {
    match parse(&v) {
        Ok(j) => j,
        Err(e) => panic!("expected {v} to parse, got {e}"),
    }
}

fn err(v: Value) -> MessageError {
    match parse(&v) {
        Ok(j) => panic!("expected {v} to be rejected, got {j:?}"),
        Err(e) => e,
    }
}

/// A stable tag per error: the variant, and the field where there is one. The match is exhaustive
/// on purpose, so a new variant has to be added to these tests.
fn tag(e: &MessageError) -> String {
    match e {
        MessageError::NotJson(_) => "NotJson".into(),
        MessageError::NotObject => "NotObject".into(),
        MessageError::TooLarge(_) => "TooLarge".into(),
        MessageError::UnsupportedVersion(_) => "UnsupportedVersion".into(),
        MessageError::MissingField(f) => format!("MissingField:{f}"),
        MessageError::InvalidField { field, .. } => format!("InvalidField:{field}"),
        MessageError::UnknownField(f) => format!("UnknownField:{f}"),
        MessageError::Source(n) => format!("Source:{n}"),
        MessageError::InvalidSchema(_) => "InvalidSchema".into(),
    }
}

fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("docs/job.schema.json")).expect("docs/job.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("job.schema.json is JSON");
    jsonschema::meta::validate(&schema).expect("job.schema.json is a valid JSON Schema");
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::draft202012::new(&schema).expect("job.schema.json compiles")
}

fn schema_errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

fn minimal(id: &str) -> Value {
    json!({"job_id": id, "url": "https://example.com/"})
}

// ---------------------------------------------------------------------------------------------
// fixtures and the JSON Schema

#[test]
fn every_valid_fixture_parses_and_the_schema_accepts_it() {
    let v = schema_validator();
    let all = read_dir(&fixtures().join("valid"));
    assert!(all.len() >= 10, "expected the valid fixtures, found {}", all.len());
    for (name, body) in all {
        let job = parse_message(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(job.legacy, name.starts_with("legacy_"), "{name}: legacy flag");
        let value: Value = serde_json::from_str(&body).expect("fixture is JSON");
        let errors = schema_errors(&v, &value);
        assert!(errors.is_empty(), "{name}: schema rejects a valid message: {errors:?}");
    }
}

#[test]
fn every_invalid_fixture_fails_as_the_manifest_says_and_the_schema_agrees() {
    let v = schema_validator();
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("invalid.manifest.json")).expect("manifest"))
        .expect("manifest is JSON");
    let cases = manifest["cases"].as_object().expect("cases");
    let files = read_dir(&fixtures().join("invalid"));
    assert_eq!(files.len(), cases.len(), "every invalid fixture is in the manifest and vice versa");
    let mut detectable = 0;
    for (name, body) in files {
        let case = cases.get(&name).unwrap_or_else(|| panic!("{name} missing from the manifest"));
        let e = match parse_message(&body) {
            Ok(j) => panic!("{name}: accepted: {j:?}"),
            Err(e) => e,
        };
        assert_eq!(tag(&e), case["error"].as_str().expect("error"), "{name}: {e}");
        let kind = if tag(&e) == "InvalidSchema" { "invalid_schema" } else { "invalid_message" };
        assert_eq!(e.kind(), kind, "{name}");
        match serde_json::from_str::<Value>(&body) {
            Err(_) => assert_eq!(case["schema_detectable"], false, "{name} is not JSON"),
            Ok(value) => {
                let errors = schema_errors(&v, &value);
                if case["schema_detectable"] == true {
                    detectable += 1;
                    assert!(!errors.is_empty(), "{name}: the schema should reject it");
                } else {
                    // The documented gap: only the worker can tell (URL parsing, inner schema validity).
                    assert!(errors.is_empty(), "{name}: marked not detectable but the schema rejects it: {errors:?}");
                }
            }
        }
    }
    assert!(detectable >= 40, "most invalid fixtures are schema-detectable ({detectable})");
}

#[test]
fn legacy_fixtures_normalise_to_their_current_equivalents() {
    let normalised = read_dir(&fixtures().join("normalised"));
    assert!(normalised.len() >= 4);
    for (name, current_body) in normalised {
        let legacy_body = std::fs::read_to_string(fixtures().join("valid").join(&name)).unwrap_or_else(|e| panic!("valid/{name}: {e}"));
        let from_legacy = parse_message(&legacy_body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let from_current = parse_message(&current_body).unwrap_or_else(|e| panic!("normalised/{name}: {e}"));
        assert!(from_legacy.legacy && !from_current.legacy);
        assert_eq!(Job { legacy: false, ..from_legacy.clone() }, from_current, "{name}");
        // And the message the worker would write for it is the current format.
        let msg = from_legacy.to_message();
        assert_eq!(msg["version"], MESSAGE_VERSION);
        assert!(msg.get("jobId").is_none() && msg.get("params").is_none());
    }
}

#[test]
fn schema_generated_bodies_that_the_schema_rejects_are_rejected_by_the_parser_too() {
    // Large and programmatic cases the fixtures do not hold.
    let v = schema_validator();
    let long_instructions = json!({"job_id": "i", "url": "https://e.com/", "instructions": "a".repeat(MAX_INSTRUCTIONS_BYTES + 1)});
    assert!(!v.is_valid(&long_instructions));
    assert!(matches!(parse(&long_instructions), Err(MessageError::InvalidField { ref field, .. }) if field == "instructions"));
    let max_instructions = json!({"job_id": "i", "url": "https://e.com/", "instructions": "a".repeat(MAX_INSTRUCTIONS_BYTES)});
    assert!(v.is_valid(&max_instructions));
    assert!(parse(&max_instructions).is_ok());
}

// ---------------------------------------------------------------------------------------------
// docs/messages.md examples

/// The bodies of the ```json blocks of a Markdown file.
fn json_blocks(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        let t = line.trim_start();
        match &mut cur {
            None if t.starts_with("```json") && t.trim_end() == "```json" => cur = Some(String::new()),
            Some(buf) if t.starts_with("```") => {
                out.push(std::mem::take(buf));
                cur = None;
            }
            Some(buf) => {
                buf.push_str(line);
                buf.push('\n');
            }
            None => {}
        }
    }
    assert!(cur.is_none(), "unterminated ```json block");
    out
}

#[test]
fn every_json_example_in_docs_messages_md_parses_and_matches_the_schema() {
    let md = std::fs::read_to_string(root().join("docs/messages.md")).expect("docs/messages.md");
    let blocks = json_blocks(&md);
    assert!(blocks.len() >= 6, "docs/messages.md should show examples in ```json blocks ({})", blocks.len());
    let v = schema_validator();
    let mut legacy = 0;
    for (i, b) in blocks.iter().enumerate() {
        let job = parse_message(b).unwrap_or_else(|e| panic!("example #{} does not parse: {e}\n{b}", i + 1));
        legacy += job.legacy as usize;
        let value: Value = serde_json::from_str(b).expect("json");
        let errors = schema_errors(&v, &value);
        assert!(errors.is_empty(), "example #{} rejected by the schema: {errors:?}\n{b}", i + 1);
    }
    assert!(legacy >= 1, "docs/messages.md should show a legacy example");
}

#[test]
fn docs_name_every_limit_with_its_real_value() {
    let md = std::fs::read_to_string(root().join("docs/messages.md")).expect("docs/messages.md");
    for needle in [
        MAX_MESSAGE_BYTES.to_string(),
        MAX_INSTRUCTIONS_BYTES.to_string(),
        MAX_CRAWL_PAGES.to_string(),
        MAX_CRAWL_DEPTH.to_string(),
        "inputs/{job_id}".to_string(),
        "input_key".to_string(),
    ] {
        assert!(md.contains(&needle), "docs/messages.md does not mention {needle}");
    }
}

// ---------------------------------------------------------------------------------------------
// the current format

#[test]
fn minimal_current_message_gets_the_documented_defaults() {
    let j = ok(minimal("job-1"));
    assert_eq!(j.job_id.as_str(), "job-1");
    assert_eq!(j.job_type, JobType::Extract);
    assert_eq!(j.source, Source::Url("https://example.com/".into()));
    assert_eq!((j.max_pages, j.max_depth), (10, 2));
    assert!(j.formats.is_empty() && j.instructions.is_none() && j.schema.is_none());
    assert!(j.model.is_none() && j.max_cost_usd.is_none() && j.tenant.is_none());
    assert!(!j.legacy);
    assert!(!j.needs_model(), "no schema and no instructions: page only");
    assert_eq!(j.url(), Some("https://example.com/"));
}

#[test]
fn every_current_field_is_carried_over() {
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let j = ok(json!({
        "version": 1, "job_id": "full", "type": "crawl", "url": "https://example.com/start",
        "instructions": "count", "schema": schema, "formats": ["markdown", "links", "metadata", "json", "structured"],
        "max_pages": 7, "max_depth": 4, "model": "gpt-4.1", "max_cost_usd": 1.5, "tenant": "acme"
    }));
    assert_eq!(j.job_type, JobType::Crawl);
    assert_eq!(j.instructions.as_deref(), Some("count"));
    assert_eq!(j.schema, Some(schema));
    assert_eq!(j.formats, vec![Format::Markdown, Format::Links, Format::Metadata, Format::Json, Format::Json]);
    assert_eq!((j.max_pages, j.max_depth), (7, 4));
    assert_eq!(j.model.as_deref(), Some("gpt-4.1"));
    assert_eq!(j.max_cost_usd, Some(1.5));
    assert_eq!(j.tenant.as_deref(), Some("acme"));
    assert!(j.needs_model());
}

#[test]
fn each_source_kind_is_recognised() {
    assert_eq!(ok(json!({"job_id": "a", "html": "<p>x</p>"})).source, Source::Html("<p>x</p>".into()));
    assert_eq!(ok(json!({"job_id": "a", "text": "x"})).source, Source::Text("x".into()));
    assert_eq!(ok(json!({"job_id": "a", "input_key": "inputs/a"})).source, Source::InputKey("inputs/a".into()));
    let j = ok(json!({"job_id": "a", "text": "x"}));
    assert_eq!(j.url(), None);
    // Whitespace-only instructions do not ask for a model call.
    assert!(!ok(json!({"job_id": "a", "text": "x", "instructions": "  \n"})).needs_model());
    assert!(ok(json!({"job_id": "a", "text": "x", "instructions": "sum"})).needs_model());
}

#[test]
fn type_scrape_is_an_alias_of_extract_and_structured_of_json() {
    let j = ok(json!({"job_id": "a", "type": "scrape", "url": "https://e.com/", "formats": ["structured"]}));
    assert_eq!(j.job_type, JobType::Extract);
    assert_eq!(j.formats, vec![Format::Json]);
}

#[test]
fn crawl_needs_a_url_and_extract_does_not() {
    for src in [json!({"html": "<p/>"}), json!({"text": "t"}), json!({"input_key": "inputs/x"})] {
        let mut m = src.clone();
        m["job_id"] = json!("c");
        m["type"] = json!("crawl");
        assert_eq!(tag(&err(m.clone())), "InvalidField:url", "{m}");
        m["type"] = json!("extract");
        ok(m);
    }
}

// ---------------------------------------------------------------------------------------------
// every MessageError variant, with its message

#[test]
fn not_json() {
    for body in ["", "{", "nul", "{\"job_id\": 'x'}", "\u{feff}{}", "{} {}"] {
        let e = parse_message(body).expect_err(body);
        assert!(matches!(e, MessageError::NotJson(_)), "{body:?}: {e:?}");
        assert!(e.to_string().starts_with("message is not valid JSON"), "{e}");
    }
}

#[test]
fn not_object() {
    for body in ["[]", "null", "true", "1", "\"job\"", "[{\"job_id\":\"a\",\"url\":\"https://e.com/\"}]"] {
        assert_eq!(parse_message(body), Err(MessageError::NotObject), "{body}");
    }
    assert_eq!(MessageError::NotObject.to_string(), "message must be a JSON object");
}

#[test]
fn too_large_is_checked_before_parsing_and_names_the_size() {
    // A valid message padded past the limit with inline HTML: rejected by size.
    let pad = "x".repeat(MAX_MESSAGE_BYTES);
    let body = json!({"job_id": "big", "html": pad}).to_string();
    let e = parse_message(&body).expect_err("too large");
    assert_eq!(e, MessageError::TooLarge(body.len()));
    assert!(e.to_string().contains(&body.len().to_string()) && e.to_string().contains("input_key"), "{e}");
    // Not even JSON, but too large: the size is what is reported (nothing is parsed).
    let junk = "{".repeat(MAX_MESSAGE_BYTES + 1);
    assert_eq!(parse_message(&junk), Err(MessageError::TooLarge(MAX_MESSAGE_BYTES + 1)));
}

#[test]
fn size_limit_boundary_is_inclusive() {
    let skeleton = json!({"job_id": "edge", "html": ""}).to_string();
    let fill = MAX_MESSAGE_BYTES - skeleton.len();
    let at = json!({"job_id": "edge", "html": "y".repeat(fill)}).to_string();
    assert_eq!(at.len(), MAX_MESSAGE_BYTES);
    assert!(parse_message(&at).is_ok());
    let over = json!({"job_id": "edge", "html": "y".repeat(fill + 1)}).to_string();
    assert_eq!(parse_message(&over), Err(MessageError::TooLarge(MAX_MESSAGE_BYTES + 1)));
    // The limit is in bytes, not characters: 2-byte characters count twice.
    let wide = json!({"job_id": "edge", "html": "é".repeat(fill / 2 + 1)}).to_string();
    assert!(wide.len() > MAX_MESSAGE_BYTES);
    assert!(matches!(parse_message(&wide), Err(MessageError::TooLarge(_))));
}

#[test]
fn unsupported_version() {
    for v in [json!(0), json!(2), json!("1"), json!(1.5), json!(-1), json!(null), json!({"v": 1})] {
        let e = err(json!({"version": v, "job_id": "a", "url": "https://e.com/"}));
        assert!(matches!(e, MessageError::UnsupportedVersion(_)), "{v}: {e:?}");
        assert!(e.to_string().contains("unsupported message version"), "{e}");
    }
    ok(json!({"version": 1, "job_id": "a", "url": "https://e.com/"}));
}

#[test]
fn missing_field() {
    assert_eq!(err(json!({"url": "https://e.com/"})), MessageError::MissingField("job_id".into()));
    assert_eq!(err(json!({})), MessageError::MissingField("job_id".into()));
    assert_eq!(err(json!({"params": {"url": "https://e.com/"}})), MessageError::MissingField("jobId".into()));
    assert_eq!(MessageError::MissingField("job_id".into()).to_string(), "missing required field `job_id`");
}

#[test]
fn invalid_field_names_the_field_and_the_reason() {
    let e = err(json!({"job_id": "a", "url": "https://e.com/", "max_cost_usd": -1}));
    match &e {
        MessageError::InvalidField { field, reason } => {
            assert_eq!(field, "max_cost_usd");
            assert!(reason.contains("positive"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().starts_with("invalid field `max_cost_usd`: "), "{e}");
}

#[test]
fn unknown_field_in_the_current_format_is_rejected() {
    for k in ["callback", "jobid", "Job_Id", "maxPages", "extractionInstructions", "priority", ""] {
        let mut m = minimal("a");
        m[k] = json!(1);
        assert_eq!(err(m), MessageError::UnknownField(k.to_string()), "{k:?}");
    }
    assert_eq!(MessageError::UnknownField("x".into()).to_string(), "unknown field `x`");
}

#[test]
fn source_errors_count_what_was_found() {
    assert_eq!(err(json!({"job_id": "a"})), MessageError::Source("0".into()));
    assert_eq!(err(json!({"job_id": "a", "url": "https://e.com/", "text": "t"})), MessageError::Source("2".into()));
    assert_eq!(
        err(json!({"job_id": "a", "url": "https://e.com/", "html": "h", "text": "t", "input_key": "k"})),
        MessageError::Source("4".into())
    );
    assert!(MessageError::Source("0".into()).to_string().contains("exactly one of url, html, text, input_key"));
}

#[test]
fn every_error_kind_is_invalid_message_but_an_uncompilable_schema() {
    assert_eq!(MessageError::InvalidSchema("bad regex".into()).kind(), "invalid_schema");
    let all = [
        MessageError::NotJson("x".into()),
        MessageError::NotObject,
        MessageError::TooLarge(1),
        MessageError::UnsupportedVersion("2".into()),
        MessageError::MissingField("job_id".into()),
        MessageError::InvalidField { field: "f".into(), reason: "r".into() },
        MessageError::UnknownField("u".into()),
        MessageError::Source("0".into()),
    ];
    for e in all {
        assert_eq!(e.kind(), "invalid_message", "{e:?}");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn errors_never_echo_large_input() {
    // Error text is recorded on the job and sent as the DLQ reason: it must stay short whatever
    // the producer sent.
    let big = "Z".repeat(100_000);
    let cases = [
        json!({"job_id": "e", "url": "https://e.com/", "formats": [big]}),
        json!({"job_id": "e", "url": "https://e.com/", "formats": [{"a": big}]}),
        json!({"job_id": "e", "url": "https://e.com/", big.clone(): 1}),
        json!({"version": big, "job_id": "e", "url": "https://e.com/"}),
        json!({"version": [big], "job_id": "e", "url": "https://e.com/"}),
        json!({"job_id": "e", "url": "https://e.com/", "type": big}),
        json!({"job_id": "e", "text": "t", "schema": {"type": big}}),
        json!({"job_id": "e", "text": "t", "schema": {"properties": {"a": {"type": big}}}}),
        json!({"jobId": "e", "params": {"url": "https://e.com/", "formats": [big]}}),
    ];
    for m in cases {
        let e = err(m);
        let text = e.to_string();
        assert!(text.chars().count() <= MAX_ERROR_CHARS, "{} chars: {}...", text.len(), &text[..200.min(text.len())]);
        assert!(!text.contains(&"Z".repeat(201)), "echoes more than 200 characters of the input");
    }
}

// ---------------------------------------------------------------------------------------------
// the URL and the claim check

#[test]
fn urls_must_be_absolute_http_or_https() {
    for u in ["https://example.com/", "http://example.com:8080/a?b#c", "HTTPS://EXAMPLE.COM/", "http://127.0.0.1/"] {
        ok(json!({"job_id": "u", "url": u}));
    }
    for u in [
        "ftp://e.com/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:text/html,x",
        "//e.com/",
        "e.com",
        "",
        "http://",
        "https://exa mple.com/",
    ] {
        assert_eq!(tag(&err(json!({"job_id": "u", "url": u}))), "InvalidField:url", "{u:?}");
    }
}

#[test]
fn input_keys_live_under_inputs_and_cannot_climb_or_reach_other_objects() {
    ok(json!({"job_id": "k", "input_key": "inputs/k"}));
    ok(json!({"job_id": "k", "input_key": "inputs/a.b/c"}));
    for k in [
        "",
        "/inputs/k",
        "../k",
        "inputs/../../etc",
        "inputs/..",
        "..",
        "jobs/other/result.json",
        "inputs/",
        "inputsX/k",
        "k",
        "inputs//jobs/x",
        "inputs/\\..\\x",
        "INPUTS/k",
    ] {
        assert_eq!(tag(&err(json!({"job_id": "k", "input_key": k}))), "InvalidField:input_key", "{k:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// the legacy (seed) format

#[test]
fn legacy_message_is_normalised() {
    let j = ok(json!({
        "jobId": "seed-1", "type": "scrape",
        "params": {
            "url": "https://e.com/p", "extractionInstructions": "prices", "outputSchema": {"type": "object"},
            "formats": ["structured", "links"], "maxPages": 3, "maxDepth": 1, "model": "gpt-4o", "tenant": "t1"
        }
    }));
    assert!(j.legacy);
    assert_eq!(j.job_id.as_str(), "seed-1");
    assert_eq!(j.job_type, JobType::Extract);
    assert_eq!(j.source, Source::Url("https://e.com/p".into()));
    assert_eq!(j.instructions.as_deref(), Some("prices"));
    assert_eq!(j.schema, Some(json!({"type": "object"})));
    assert_eq!(j.formats, vec![Format::Json, Format::Links]);
    assert_eq!((j.max_pages, j.max_depth), (3, 1));
    assert_eq!(j.model.as_deref(), Some("gpt-4o"));
    assert_eq!(j.tenant.as_deref(), Some("t1"));
    assert_eq!(j.max_cost_usd, None, "the legacy format has no cost cap");
}

#[test]
fn legacy_html_and_defaults() {
    let j = ok(json!({"jobId": "seed-2", "params": {"html": "<p/>"}}));
    assert!(j.legacy);
    assert_eq!(j.job_type, JobType::Extract);
    assert_eq!(j.source, Source::Html("<p/>".into()));
    assert_eq!((j.max_pages, j.max_depth), (10, 2));
}

#[test]
fn legacy_ignores_unknown_keys_but_not_bad_known_ones() {
    let j = ok(json!({"jobId": "s", "createdAt": 1, "params": {"url": "https://e.com/", "waitFor": 100, "text": "ignored"}}));
    assert_eq!(j.source, Source::Url("https://e.com/".into()));
    assert_eq!(tag(&err(json!({"jobId": "s", "params": {"url": "https://e.com/", "maxPages": "5"}}))), "InvalidField:maxPages");
    assert_eq!(tag(&err(json!({"jobId": "s", "params": {"url": "https://e.com/", "maxDepth": -2}}))), "InvalidField:maxDepth");
    assert_eq!(tag(&err(json!({"jobId": "s", "params": {"html": 5}}))), "InvalidField:params.html");
    assert_eq!(tag(&err(json!({"jobId": 5, "params": {"url": "https://e.com/"}}))), "InvalidField:jobId");
    // A `params` key alone makes a message legacy, so a current message cannot carry one.
    assert_eq!(tag(&err(json!({"job_id": "a", "url": "https://e.com/", "params": {}}))), "MissingField:jobId");
}

// ---------------------------------------------------------------------------------------------
// the apiKey rule

const SECRET: &str = "sk-proj-THIS-MUST-NEVER-BE-STORED-0123456789";

fn assert_no_trace(j: &Job) {
    let debug = format!("{j:?}");
    let ser = serde_json::to_string(j).expect("job serialises");
    let msg = j.to_message().to_string();
    for text in [&debug, &ser, &msg] {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
        assert!(!text.contains("apiKey") && !text.contains("api_key"), "key name kept: {text}");
        assert!(!text.contains("sk-proj"), "secret prefix kept: {text}");
    }
}

#[test]
fn api_key_is_dropped_everywhere() {
    let cases = [
        json!({"job_id": "k", "url": "https://e.com/", "apiKey": SECRET}),
        json!({"job_id": "k", "url": "https://e.com/", "api_key": SECRET}),
        json!({"job_id": "k", "url": "https://e.com/", "apiKey": {"nested": SECRET}}),
        json!({"jobId": "k", "apiKey": SECRET, "params": {"url": "https://e.com/"}}),
        json!({"jobId": "k", "params": {"url": "https://e.com/", "apiKey": SECRET}}),
        json!({"jobId": "k", "params": {"url": "https://e.com/", "api_key": SECRET}}),
        json!({"jobId": "k", "api_key": SECRET, "params": {"url": "https://e.com/", "apiKey": SECRET, "api_key": SECRET}}),
    ];
    for m in cases {
        let j = ok(m.clone());
        assert_no_trace(&j);
    }
}

#[test]
fn api_key_never_appears_in_errors() {
    // Each message is otherwise broken; the error must not echo the key.
    let cases = [
        json!({"job_id": "k", "apiKey": SECRET}),
        json!({"job_id": "bad id", "url": "https://e.com/", "api_key": SECRET}),
        json!({"version": 9, "job_id": "k", "url": "https://e.com/", "apiKey": SECRET}),
        json!({"jobId": "k", "params": {"apiKey": SECRET}}),
        json!({"jobId": "k", "params": {"url": "ftp://x/", "apiKey": SECRET}}),
        json!({"job_id": "k", "url": "https://e.com/", "apiKey": SECRET, "unknown": 1}),
    ];
    for m in cases {
        let e = err(m);
        assert!(!e.to_string().contains(SECRET) && !format!("{e:?}").contains(SECRET), "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// salvage_job_id

#[test]
fn salvage_finds_the_id_of_a_broken_message() {
    let id = |b: &str| salvage_job_id(b).map(|j| j.as_str().to_string());
    assert_eq!(id(r#"{"job_id":"j-1","type":"nope"}"#).as_deref(), Some("j-1"));
    assert_eq!(id(r#"{"job_id":"j-2","url":"https://e.com/","html":"x"}"#).as_deref(), Some("j-2"));
    assert_eq!(id(r#"{"jobId":"seed-3","params":"x"}"#).as_deref(), Some("seed-3"));
    assert_eq!(id(r#"{"version":7,"job_id":"v-4"}"#).as_deref(), Some("v-4"));
    // No usable id: nothing to record the failure on.
    assert_eq!(id(r#"{"url":"https://e.com/"}"#), None);
    assert_eq!(id(r#"{"job_id":"has space"}"#), None);
    assert_eq!(id(r#"{"job_id":5}"#), None);
    assert_eq!(id(r#"["job_id"]"#), None);
    assert_eq!(id("not json"), None);
    assert_eq!(id(r#"{"job_id":"cut"#), None, "a truncated body has no trustworthy id");
    assert_eq!(id(&"[".repeat(10_000)), None);
}

#[test]
fn salvage_agrees_with_parse_on_valid_messages() {
    for (name, body) in read_dir(&fixtures().join("valid")) {
        let j = parse_message(&body).expect("valid");
        assert_eq!(salvage_job_id(&body), Some(j.job_id.clone()), "{name}");
    }
}

// ---------------------------------------------------------------------------------------------
// round trip

#[test]
fn to_message_round_trips_every_valid_current_fixture() {
    for (name, body) in read_dir(&fixtures().join("valid")) {
        let j = parse_message(&body).expect("valid");
        let again = parse_message(&j.to_message().to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
        if j.legacy {
            assert_eq!(again, Job { legacy: false, ..j }, "{name}");
        } else {
            assert_eq!(again, j, "{name}");
        }
    }
}

#[test]
fn to_message_keeps_limits_of_an_extract_job() {
    // max_pages/max_depth on an extract job are accepted, so they must survive a round trip.
    let j = ok(json!({"job_id": "e", "url": "https://e.com/", "max_pages": 50, "max_depth": 7}));
    assert_eq!((j.max_pages, j.max_depth), (50, 7));
    assert_eq!(parse(&j.to_message()).expect("round trip"), j);
}

// ---------------------------------------------------------------------------------------------
// boundaries

#[test]
fn job_id_length_and_alphabet() {
    let id128 = "a".repeat(128);
    assert_eq!(ok(minimal(&id128)).job_id.as_str(), id128);
    assert_eq!(tag(&err(minimal(&"a".repeat(129)))), "InvalidField:job_id");
    ok(minimal("A-z_0-9"));
    ok(minimal("-"));
    for bad in ["", " a", "a.b", "a/b", "a:b", "ä", "a\u{0}", "a\n"] {
        assert_eq!(tag(&err(minimal(bad))), "InvalidField:job_id", "{bad:?}");
        assert!(JobId::parse(bad).is_err());
    }
    // 64 two-byte characters are 128 bytes but not in the alphabet.
    assert!(JobId::parse(&"é".repeat(64)).is_err());
    let g = JobId::generate();
    assert!(JobId::parse(g.as_str()).is_ok(), "generated ids are valid: {g}");
    assert_ne!(JobId::generate(), g);
}

#[test]
fn crawl_limit_boundaries() {
    let crawl = |p: Value, d: Value| json!({"job_id": "c", "type": "crawl", "url": "https://e.com/", "max_pages": p, "max_depth": d});
    let j = ok(crawl(json!(MAX_CRAWL_PAGES), json!(MAX_CRAWL_DEPTH)));
    assert_eq!((j.max_pages, j.max_depth), (100, 10));
    ok(crawl(json!(1), json!(0)));
    assert_eq!(tag(&err(crawl(json!(101), json!(0)))), "InvalidField:max_pages");
    assert_eq!(tag(&err(crawl(json!(0), json!(0)))), "InvalidField:max_pages");
    assert_eq!(tag(&err(crawl(json!(10), json!(11)))), "InvalidField:max_depth");
    assert_eq!(tag(&err(crawl(json!(u64::MAX), json!(1)))), "InvalidField:max_pages");
    assert_eq!(tag(&err(crawl(json!(10), json!(u32::MAX as u64 + 1)))), "InvalidField:max_depth");
}

#[test]
fn instructions_and_tenant_limits_are_in_bytes() {
    let with = |k: &str, v: String| {
        let mut m = minimal("b");
        m[k] = json!(v);
        m
    };
    ok(with("instructions", "a".repeat(MAX_INSTRUCTIONS_BYTES)));
    assert_eq!(tag(&err(with("instructions", "a".repeat(MAX_INSTRUCTIONS_BYTES + 1)))), "InvalidField:instructions");
    // 16385 two-byte characters: fewer than 32768 characters, more than 32768 bytes.
    assert_eq!(tag(&err(with("instructions", "é".repeat(MAX_INSTRUCTIONS_BYTES / 2 + 1)))), "InvalidField:instructions");
    ok(with("tenant", "t".repeat(128)));
    assert_eq!(tag(&err(with("tenant", "t".repeat(129)))), "InvalidField:tenant");
}

#[test]
fn max_cost_usd_must_be_positive_and_finite() {
    let with = |v: Value| json!({"job_id": "m", "url": "https://e.com/", "max_cost_usd": v});
    assert_eq!(ok(with(json!(0.000001))).max_cost_usd, Some(0.000001));
    assert_eq!(ok(with(json!(3))).max_cost_usd, Some(3.0));
    for bad in [json!(0), json!(0.0), json!(-0.01), json!("1"), json!(true), json!([1])] {
        assert_eq!(tag(&err(with(bad.clone()))), "InvalidField:max_cost_usd", "{bad}");
    }
    // 1e400 is not a finite f64; serde_json refuses it as a number out of range.
    assert!(parse_message(r#"{"job_id":"m","url":"https://e.com/","max_cost_usd":1e400}"#).is_err());
}

#[test]
fn inline_schema_is_checked() {
    let with = |s: Value| json!({"job_id": "s", "text": "t", "schema": s});
    ok(with(json!({})));
    ok(with(json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"})));
    assert_eq!(tag(&err(with(json!({"type": 7})))), "InvalidField:schema");
    assert_eq!(tag(&err(with(json!([])))), "InvalidField:schema");
    // 32 levels of nesting are fine, 33 are not.
    let nest = |levels: usize| {
        let mut v = json!({"type": "string"});
        // Each wrap adds two levels: {"properties": {"a": ...}}.
        for _ in 0..levels {
            v = json!({"type": "object", "properties": {"a": v}});
        }
        v
    };
    let ok_schema = nest(15); // depth 31
    assert_eq!(atlas_codex::job::json_depth(&ok_schema), 31);
    ok(with(ok_schema));
    let deep = nest(16); // depth 33
    assert_eq!(atlas_codex::job::json_depth(&deep), 33);
    let e = err(with(deep));
    assert!(e.to_string().contains("deeper than 32"), "{e}");
}

#[test]
fn deep_nesting_is_refused_by_the_json_parser_not_the_stack() {
    // 10k levels: serde_json's recursion limit (128) turns it into a clear error.
    for body in [
        "[".repeat(10_000) + &"]".repeat(10_000),
        format!(
            "{{\"job_id\":\"d\",\"url\":\"https://e.com/\",\"schema\":{}{}}}",
            "{\"a\":".repeat(10_000),
            "1".to_string() + &"}".repeat(10_000)
        ),
        "{\"a\":".repeat(10_000),
    ] {
        let e = parse_message(&body).expect_err("deep");
        match &e {
            MessageError::NotJson(m) => assert!(m.contains("recursion limit exceeded"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(salvage_job_id(&body), None);
    }
    // Just under the parser's limit, inside `schema`: refused by the depth rule, no overflow.
    let mut schema = "{}".to_string();
    for _ in 0..120 {
        schema = format!("{{\"not\":{schema}}}");
    }
    let body = format!("{{\"job_id\":\"d\",\"text\":\"t\",\"schema\":{schema}}}");
    assert_eq!(tag(&parse_message(&body).expect_err("too deep")), "InvalidField:schema");
}

// ---------------------------------------------------------------------------------------------
// property tests (the CI short run; fuzz/ holds the long-running targets)

/// Arbitrary JSON values, nested a few levels.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![Just("https://example.com/"), Just("crawl"), Just("extract"), Just("markdown"), Just("inputs/x"), Just("job-1")]
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly the names the parser knows (both formats), sometimes anything.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "version", "job_id", "type", "url", "html", "text", "input_key", "instructions", "schema",
            "formats", "max_pages", "max_depth", "model", "max_cost_usd", "tenant", "headers", "apiKey", "api_key",
            "jobId", "params", "extractionInstructions", "outputSchema", "maxPages", "maxDepth",
            "type", "properties", "required",
        ])
        .prop_map(String::from),
        1 => "[a-zA-Z_]{0,12}",
    ]
}

/// A valid current-format job, built from parts.
fn arb_job() -> impl Strategy<Value = Job> {
    let source = prop_oneof![
        "[a-z]{1,12}(\\.[a-z]{2,5}){1,2}".prop_map(|h| Source::Url(format!("https://{h}/"))),
        ".{0,64}".prop_map(Source::Html),
        ".{0,64}".prop_map(Source::Text),
        "inputs/[A-Za-z0-9_-]{1,40}".prop_map(Source::InputKey),
    ];
    let formats = prop::collection::vec(prop::sample::select(vec![Format::Markdown, Format::Links, Format::Metadata, Format::Json]), 0..5);
    let schema = prop::option::of(prop_oneof![
        Just(json!({})),
        Just(json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]})),
        Just(json!({"type": "array", "items": {"type": "number"}})),
    ]);
    (
        "[A-Za-z0-9_-]{1,128}",
        any::<bool>(),
        source,
        prop::option::of(".{0,80}"),
        schema,
        formats,
        (1u32..=MAX_CRAWL_PAGES, 0u32..=MAX_CRAWL_DEPTH),
        prop::option::of("[a-z0-9.-]{1,20}"),
        prop::option::of(prop_oneof![(1e-9f64..1e6), any::<f64>().prop_filter("positive finite", |x| x.is_finite() && *x > 0.0)]),
        prop::option::of(".{0,40}"),
        any::<bool>(),
    )
        .prop_map(
            |(id, crawl, source, instructions, schema, formats, (max_pages, max_depth), model, max_cost_usd, tenant, truncate)| {
                let job_type = if crawl && matches!(source, Source::Url(_)) { JobType::Crawl } else { JobType::Extract };
                Job {
                    job_id: JobId::parse(&id).expect("strategy yields valid ids"),
                    job_type,
                    source,
                    instructions,
                    schema,
                    formats,
                    max_pages,
                    max_depth,
                    model,
                    max_cost_usd,
                    tenant: tenant.filter(|t| t.len() <= 128),
                    headers: Default::default(),
                    callback: None,
                    truncate,
                    legacy: false,
                }
            },
        )
}

/// Error text is bounded: it goes into the job record and the DLQ attributes.
const MAX_ERROR_CHARS: usize = 1024;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_strings(s in ".{0,400}") {
        let _ = parse_message(&s);
        let _ = salvage_job_id(&s);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_json(v in arb_json()) {
        let body = v.to_string();
        match parse_message(&body) {
            Ok(j) => {
                // Anything accepted is a coherent job that survives a round trip.
                prop_assert!(j.max_pages >= 1 && j.max_pages <= MAX_CRAWL_PAGES);
                prop_assert!(j.max_depth <= MAX_CRAWL_DEPTH);
                prop_assert_eq!(salvage_job_id(&body), Some(j.job_id.clone()));
                let again = parse_message(&j.to_message().to_string());
                prop_assert_eq!(again, Ok(Job { legacy: false, ..j }));
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), "invalid_message");
                prop_assert!(e.to_string().chars().count() <= MAX_ERROR_CHARS, "error too long: {} chars", e.to_string().len());
            }
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(job in arb_job(), key in field_name(), value in arb_json()) {
        let mut m = job.to_message();
        m[key.as_str()] = value;
        let body = m.to_string();
        if let Err(e) = parse_message(&body) {
            prop_assert!(e.to_string().chars().count() <= MAX_ERROR_CHARS, "error too long: {} chars", e.to_string().len());
        }
        // A legacy shape built from the same parts never panics either.
        let legacy = json!({"jobId": job.job_id.as_str(), "type": job.job_type.as_str(), "params": m});
        let _ = parse_message(&legacy.to_string());
    }

    #[test]
    fn accepted_jobs_round_trip(job in arb_job()) {
        let body = job.to_message().to_string();
        let parsed = parse_message(&body);
        prop_assert_eq!(parsed, Ok(job));
    }

    #[test]
    fn api_key_is_dropped_from_any_valid_message(job in arb_job(), secret in "sk-[A-Za-z0-9]{20,40}", snake in any::<bool>()) {
        let mut m = job.to_message();
        m[if snake { "api_key" } else { "apiKey" }] = json!(secret);
        let j = parse_message(&m.to_string()).expect("apiKey does not invalidate a message");
        prop_assert_eq!(&j, &job);
        let debug = format!("{:?}", j);
        let ser = serde_json::to_string(&j).expect("ser");
        prop_assert!(!debug.contains(&secret) && !ser.contains(&secret));
    }
}

#[test]
fn caller_headers_are_checked_and_round_trip() {
    let ok =
        parse_message(r#"{"job_id":"h1","url":"https://a.example/","headers":{"Accept-Language":"de","X-Token":"abc"}}"#).expect("valid");
    assert_eq!(ok.headers.get("Accept-Language").map(String::as_str), Some("de"));
    assert_eq!(parse_message(&ok.to_message().to_string()).expect("round trip"), ok);
    assert!(!serde_json::to_string(&ok).unwrap().contains("abc"), "headers are not serialised with the job");
    for bad in [
        r#"{"job_id":"h2","url":"https://a.example/","headers":["Accept: x"]}"#,
        r#"{"job_id":"h3","url":"https://a.example/","headers":{"Bad Name":"x"}}"#,
        r#"{"job_id":"h4","url":"https://a.example/","headers":{"X-A":7}}"#,
        r#"{"job_id":"h5","url":"https://a.example/","headers":{"X-A":"a\r\nHost: evil"}}"#,
        r#"{"job_id":"h6","type":"crawl","url":"https://a.example/","headers":{"X-A":"a"}}"#,
    ] {
        let e = parse_message(bad).expect_err(bad);
        assert!(e.to_string().contains("headers"), "{bad}: {e}");
    }
}
