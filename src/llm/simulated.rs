//! The simulated provider: answers that validate against the job's schema, realistic token usage
//! and latency, and nothing spent. It backs stage `local` without an API key, the demo and the
//! benchmark (thousands of calls per second), so generation is a single cheap walk of the schema.
//!
//! [`generate_instance`] is also what the mock OpenAI server answers with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Number, Value};

use super::schema::resolve_ref;
use super::{LlmClient, LlmError, LlmRequest, LlmResponse, ResponseFormat};
use crate::job::Usage;

/// Deepest schema nesting the generator follows (recursive `$ref`s stop here with the smallest
/// value the subschema allows).
const MAX_GEN_DEPTH: usize = 24;

/// A provider that never calls out: it sleeps `latency` (tokio time, so paused-time tests are
/// instant) and returns a schema-conforming answer with plausible usage.
#[derive(Debug)]
pub struct SimulatedClient {
    /// Time each call takes.
    latency: Duration,
    /// Calls answered so far (for tests and the benchmark's sanity checks).
    calls: AtomicU64,
}

impl SimulatedClient {
    /// A simulated provider whose calls take `latency`.
    pub fn new(latency: Duration) -> SimulatedClient {
        SimulatedClient { latency, calls: AtomicU64::new(0) }
    }

    /// The latency every call takes.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// How many calls have been answered.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl LlmClient for SimulatedClient {
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let content = simulated_content(request);
        let usage = simulated_usage(request, &content);
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(LlmResponse { content, usage, model: request.model.clone(), simulated: true, limits: None })
    }

    fn name(&self) -> &'static str {
        "simulated"
    }
}

/// The answer text for a request: an instance of `output_schema` (or of the `json_schema`
/// response format's schema), else a small `{"summary": ...}` object.
pub fn simulated_content(request: &LlmRequest) -> String {
    let schema = request.output_schema.as_ref().or(match &request.response_format {
        ResponseFormat::JsonSchema { schema, .. } => Some(schema),
        _ => None,
    });
    let value = match schema {
        Some(s) => generate_instance(s),
        None => json!({
            "summary": "Simulated answer: the page was read and summarised without calling a model.",
            "simulated": true,
        }),
    };
    value.to_string()
}

/// Plausible usage for a simulated call: input ≈ characters/4, output from the answer's length,
/// plus reasoning tokens for reasoning models by effort; capped at `max_output_tokens`.
pub fn simulated_usage(request: &LlmRequest, content: &str) -> Usage {
    let input_tokens = (request.system.len() + request.user.len()).div_ceil(4) as u64 + 8;
    let visible = (content.len().div_ceil(4) as u64).max(1);
    let reasoning = if request.params.reasoning_model {
        match request.params.reasoning_effort.as_deref() {
            Some("minimal") => 0,
            Some("low") => 64 + visible / 2,
            Some("high") => 1024 + visible * 4,
            _ => 256 + visible * 2,
        }
    } else {
        0
    };
    let mut output_tokens = visible + reasoning;
    let mut reasoning_tokens = reasoning;
    let cap = u64::from(request.params.max_output_tokens);
    if cap > 0 && output_tokens > cap {
        output_tokens = cap;
        reasoning_tokens = reasoning_tokens.min(cap);
    }
    Usage { input_tokens, cached_input_tokens: 0, output_tokens, reasoning_tokens }
}

/// A small instance of `schema`: objects with their properties (all required ones at least),
/// strings honouring `enum`/`const`/`format`/`minLength`/`maxLength`, numbers within their bounds
/// and `multipleOf`, arrays with `minItems` (distinct items under `uniqueItems`), the first branch
/// of `anyOf`/`oneOf`, merged `allOf` objects, and local `$ref`s. `pattern` is not honoured.
pub fn generate_instance(schema: &Value) -> Value {
    Gen { root: schema }.value(schema, "", 0, 0)
}

struct Gen<'a> {
    root: &'a Value,
}

impl Gen<'_> {
    fn value(&self, schema: &Value, name: &str, salt: usize, depth: usize) -> Value {
        let Some(schema) = resolve_ref(self.root, schema, 0) else { return Value::Null };
        let obj = match schema {
            Value::Object(o) => o,
            Value::Bool(true) => return Value::String(sample_text(name, salt)),
            _ => return Value::Null,
        };
        if let Some(c) = obj.get("const") {
            return c.clone();
        }
        if let Some(Value::Array(values)) = obj.get("enum") {
            if !values.is_empty() {
                return values[salt % values.len()].clone();
            }
        }
        for union in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = obj.get(union) {
                if let Some(first) = branches.first() {
                    return self.value(first, name, salt, depth + 1);
                }
            }
        }
        if let Some(Value::Array(parts)) = obj.get("allOf") {
            return self.all_of(obj, parts, name, salt, depth);
        }
        match pick_type(obj).as_str() {
            "object" => self.object(obj, salt, depth),
            "array" => self.array(obj, name, salt, depth),
            "integer" => integer(obj, salt),
            "number" => number(obj, salt),
            "boolean" => Value::Bool(true),
            "null" => Value::Null,
            _ => Value::String(string(obj, name, salt)),
        }
    }

    fn all_of(&self, obj: &Map<String, Value>, parts: &[Value], name: &str, salt: usize, depth: usize) -> Value {
        // Merge the objects each part (and the schema itself, minus allOf) asks for.
        let mut rest = obj.clone();
        rest.remove("allOf");
        let own = (!rest.is_empty()).then(|| self.value(&Value::Object(rest), name, salt, depth + 1));
        let mut merged = Map::new();
        let mut scalar = None;
        for v in own.into_iter().chain(parts.iter().map(|p| self.value(p, name, salt, depth + 1))) {
            match v {
                Value::Object(m) => merged.extend(m),
                other if scalar.is_none() => scalar = Some(other),
                _ => {}
            }
        }
        if merged.is_empty() {
            scalar.unwrap_or(Value::Null)
        } else {
            Value::Object(merged)
        }
    }

    fn object(&self, obj: &Map<String, Value>, salt: usize, depth: usize) -> Value {
        let mut out = Map::new();
        let required = required_names(obj);
        let props = obj.get("properties").and_then(Value::as_object);
        let max_props = obj.get("maxProperties").and_then(Value::as_u64).map(|m| m as usize);
        // Past the depth guard (recursive schemas) only required properties are produced.
        let only_required = depth > MAX_GEN_DEPTH || max_props.is_some_and(|m| m < props.map_or(0, |p| p.len()));
        if let Some(props) = props {
            for (k, p) in props {
                if only_required && !required.contains(&k.as_str()) {
                    continue;
                }
                out.insert(k.clone(), self.value(p, k, salt, depth + 1));
            }
        }
        let extra = obj.get("additionalProperties");
        for r in &required {
            if !out.contains_key(*r) {
                let v = match extra {
                    Some(s @ Value::Object(_)) => self.value(s, r, salt, depth + 1),
                    _ => Value::String(sample_text(r, salt)),
                };
                out.insert((*r).to_string(), v);
            }
        }
        let min_props = obj.get("minProperties").and_then(Value::as_u64).unwrap_or(0) as usize;
        let mut i = 0;
        while out.len() < min_props && extra != Some(&Value::Bool(false)) && i < 1000 {
            let key = format!("extra_{i}");
            let v = match extra {
                Some(s @ Value::Object(_)) => self.value(s, &key, salt + i, depth + 1),
                _ => Value::String(sample_text(&key, salt + i)),
            };
            out.entry(key).or_insert(v);
            i += 1;
        }
        Value::Object(out)
    }

    fn array(&self, obj: &Map<String, Value>, name: &str, salt: usize, depth: usize) -> Value {
        let min = obj.get("minItems").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = obj.get("maxItems").and_then(Value::as_u64).map(|m| m as usize);
        // One item reads more naturally than none; never below minItems or above maxItems.
        let mut count = min.max(1).min(max.unwrap_or(usize::MAX));
        if depth > MAX_GEN_DEPTH {
            count = min;
        }
        let count = count.min(1000);
        let prefix = obj.get("prefixItems").and_then(Value::as_array);
        let items = obj.get("items");
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let item_schema = match prefix.and_then(|p| p.get(i)) {
                Some(s) => Some(s),
                None => match items {
                    Some(s @ Value::Object(_)) | Some(s @ Value::Bool(true)) => Some(s),
                    Some(Value::Array(tuple)) => tuple.get(i),
                    _ => None,
                },
            };
            let item = match item_schema {
                Some(s) => self.value(s, name, salt + i, depth + 1),
                None => Value::String(sample_text(name, salt + i)),
            };
            out.push(item);
        }
        Value::Array(out)
    }
}

fn required_names(obj: &Map<String, Value>) -> Vec<&str> {
    obj.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// The type to produce: the first non-null declared type, else inferred from the keywords.
fn pick_type(obj: &Map<String, Value>) -> String {
    match obj.get("type") {
        Some(Value::String(t)) => return t.clone(),
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            if let Some(t) = names.iter().find(|t| **t != "null").or(names.first()) {
                return (*t).to_string();
            }
        }
        _ => {}
    }
    let has = |k: &str| obj.contains_key(k);
    if has("properties") || has("required") || has("additionalProperties") || has("minProperties") {
        "object".into()
    } else if has("items") || has("prefixItems") || has("minItems") || has("maxItems") {
        "array".into()
    } else if has("minimum") || has("maximum") || has("exclusiveMinimum") || has("exclusiveMaximum") || has("multipleOf") {
        "number".into()
    } else {
        "string".into()
    }
}

fn sample_text(name: &str, salt: usize) -> String {
    let base = if name.is_empty() { "sample" } else { name };
    if salt == 0 {
        format!("Sample {base}")
    } else {
        format!("Sample {base} {salt}")
    }
}

/// A constraint given as a description hint by [`super::schema::to_strict`]
/// (`... (format: uri; minLength: 40)`), read the way a model would.
fn hint<'s>(obj: &'s Map<String, Value>, key: &str) -> Option<&'s str> {
    let d = obj.get("description")?.as_str()?;
    let open = d.rfind('(')?;
    let inner = d[open + 1..].strip_suffix(')')?;
    inner.split("; ").find_map(|part| part.strip_prefix(key)?.strip_prefix(": "))
}

fn string(obj: &Map<String, Value>, name: &str, salt: usize) -> String {
    let format = obj.get("format").and_then(Value::as_str).or_else(|| hint(obj, "format")).unwrap_or("");
    let mut s = match format {
        "date" => format!("2024-01-{:02}", 1 + salt % 28),
        "date-time" => format!("2024-01-{:02}T10:30:00Z", 1 + salt % 28),
        "time" => format!("10:{:02}:00Z", salt % 60),
        "duration" => format!("P{}D", salt + 1),
        "email" | "idn-email" => format!("user{salt}@example.com"),
        "hostname" | "idn-hostname" => format!("host{salt}.example.com"),
        "ipv4" => format!("192.0.2.{}", 1 + salt % 254),
        "ipv6" => format!("2001:db8::{:x}", salt + 1),
        "uri" | "url" | "iri" => format!("https://example.com/item/{salt}"),
        "uri-reference" | "iri-reference" => format!("/item/{salt}"),
        "uri-template" => "https://example.com/{id}".into(),
        "uuid" => format!("00000000-0000-4000-8000-{:012x}", salt),
        "json-pointer" => format!("/item/{salt}"),
        "relative-json-pointer" => "0".into(),
        "regex" => "^[a-z]+$".into(),
        _ => sample_text(name, salt),
    };
    let min =
        obj.get("minLength").and_then(Value::as_u64).or_else(|| hint(obj, "minLength").and_then(|v| v.parse().ok())).unwrap_or(0) as usize;
    let len = s.chars().count();
    if len < min {
        s.extend(std::iter::repeat_n('x', (min - len).min(100_000)));
    }
    let max = obj.get("maxLength").and_then(Value::as_u64).or_else(|| hint(obj, "maxLength").and_then(|v| v.parse().ok()));
    if let Some(max) = max.map(|m| m as usize) {
        if s.chars().count() > max {
            s = s.chars().take(max).collect();
        }
    }
    s
}

fn bounds(obj: &Map<String, Value>) -> (f64, f64, bool, bool) {
    let mut lo = f64::NEG_INFINITY;
    let mut hi = f64::INFINITY;
    let mut lo_excl = false;
    let mut hi_excl = false;
    if let Some(m) = obj.get("minimum").and_then(Value::as_f64) {
        lo = m;
    }
    if let Some(m) = obj.get("exclusiveMinimum") {
        // Draft 6+: a number; draft 4: a boolean modifying `minimum`.
        match m {
            Value::Number(n) => {
                if let Some(n) = n.as_f64() {
                    if n >= lo {
                        lo = n;
                        lo_excl = true;
                    }
                }
            }
            Value::Bool(true) => lo_excl = true,
            _ => {}
        }
    }
    if let Some(m) = obj.get("maximum").and_then(Value::as_f64) {
        hi = m;
    }
    if let Some(m) = obj.get("exclusiveMaximum") {
        match m {
            Value::Number(n) => {
                if let Some(n) = n.as_f64() {
                    if n <= hi {
                        hi = n;
                        hi_excl = true;
                    }
                }
            }
            Value::Bool(true) => hi_excl = true,
            _ => {}
        }
    }
    (lo, hi, lo_excl, hi_excl)
}

fn integer(obj: &Map<String, Value>, salt: usize) -> Value {
    let (lo, hi, lo_excl, hi_excl) = bounds(obj);
    let min = if lo.is_finite() {
        if lo_excl {
            lo.floor() + 1.0
        } else {
            lo.ceil()
        }
    } else {
        f64::MIN
    };
    let max = if hi.is_finite() {
        if hi_excl {
            hi.ceil() - 1.0
        } else {
            hi.floor()
        }
    } else {
        f64::MAX
    };
    let mut v = (1 + salt) as f64;
    v = v.max(min).min(max);
    if let Some(step) = obj.get("multipleOf").and_then(Value::as_f64).filter(|s| *s > 0.0) {
        let up = (v / step).ceil() * step;
        let down = (v / step).floor() * step;
        v = if up <= max && up.fract() == 0.0 {
            up
        } else if down >= min && down.fract() == 0.0 {
            down
        } else {
            v
        };
    }
    if v.abs() < 9.0e15 {
        Value::Number(Number::from(v as i64))
    } else {
        Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
    }
}

fn number(obj: &Map<String, Value>, salt: usize) -> Value {
    let (lo, hi, lo_excl, hi_excl) = bounds(obj);
    let mut v = 1.5 + salt as f64;
    if let Some(step) = obj.get("multipleOf").and_then(Value::as_f64).filter(|s| *s > 0.0) {
        // Multiples only: start from the smallest multiple inside the bounds.
        let start = if lo.is_finite() { lo } else { v };
        let mut k = (start / step).ceil();
        if lo_excl && k * step <= lo {
            k += 1.0;
        }
        v = (k + salt as f64) * step;
        if hi.is_finite() && (v > hi || (hi_excl && v >= hi)) {
            v = k * step;
        }
        return Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null);
    }
    if lo.is_finite() && (v < lo || (lo_excl && v <= lo)) {
        v = if lo_excl { lo + if hi.is_finite() { ((hi - lo) / 2.0).min(1.0) } else { 1.0 } } else { lo };
    }
    if hi.is_finite() && (v > hi || (hi_excl && v >= hi)) {
        v = if hi_excl {
            if lo.is_finite() {
                lo + (hi - lo) / 2.0
            } else {
                hi - 1.0
            }
        } else {
            hi
        };
    }
    Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_bounds_and_multiple() {
        let o = json!({"type": "integer", "minimum": 10, "maximum": 20, "multipleOf": 7});
        assert_eq!(generate_instance(&o), json!(14));
        let o = json!({"type": "integer", "exclusiveMaximum": 0});
        assert_eq!(generate_instance(&o), json!(-1));
    }

    #[test]
    fn number_exclusive_bounds() {
        let v = generate_instance(&json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}));
        let f = v.as_f64().expect("number");
        assert!(f > 0.0 && f < 1.0, "{f}");
    }
}
