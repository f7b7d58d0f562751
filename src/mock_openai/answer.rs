//! The answers: prompt-token billing, content shaped by `response_format` (or broken on
//! purpose), the `chat.completion` body, and the strict-mode schema check.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::llm::schema;
use crate::llm::simulated::generate_instance;
use crate::page;

/// How an accepted answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finish {
    /// A normal answer (`stop`), valid for the requested format.
    Stop,
    /// A normal stop whose content breaks the requested format.
    Broken,
    /// `content: null`, `refusal: "..."`.
    Refusal,
    /// Cut at the output cap: `finish_reason: "length"`.
    Length,
}

/// The output cap a request asks for (`max_completion_tokens`, else `max_tokens`; 0 if none).
pub(super) fn requested_output_cap(body: &Value) -> u64 {
    body.get("max_completion_tokens").or_else(|| body.get("max_tokens")).and_then(Value::as_u64).unwrap_or(0)
}

/// Prompt tokens as OpenAI bills them: every message's text under o200k_base plus 3 tokens of
/// framing per message and 3 to prime the answer; a `json_schema` response format's schema (and
/// its name) is billed input too.
pub(super) fn prompt_tokens(body: &Value) -> u32 {
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

/// Reasoning tokens reported by default, by the request's `reasoning_effort`.
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

/// The `chat.completion` body answering `body`, ending as `finish`, with usage as OpenAI reports
/// it (`inflate`: absurd usage; `cached` / `reasoning`: overrides of the reported counts).
pub(super) fn completion_body(
    model: &str,
    body: &Value,
    finish: Finish,
    inflate: bool,
    cached: Option<u32>,
    reasoning: Option<u32>,
) -> Value {
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
pub(super) fn strict_problem(schema: &Value) -> Option<String> {
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

/// Calls `f` with the JSON-pointer path of every object schema in `schema`, the root included.
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
