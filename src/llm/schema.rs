//! JSON Schema handling for structured output: adapting a job's schema to what OpenAI's strict
//! mode accepts ([`to_strict`]), validating the model's answer against the job's own schema
//! ([`validate`]), undoing the nulls strict mode forces on optional fields ([`strip_added_nulls`]),
//! and naming the schema for the provider ([`schema_name`]).
//!
//! The contract the worker relies on: the strict schema sent to the provider is never *looser*
//! in a way that matters, because the answer is always validated afterwards against the
//! **original** schema. Keywords strict mode does not support but whose loss only loosens the
//! schema (`minLength`, `uniqueItems`, `title`, unsupported `format`s, ...) are therefore dropped;
//! constructs whose meaning strict mode cannot express at all (maps via `patternProperties`,
//! `allOf`/`not`/`if`, a root that is not an object, schemas above the documented size limits)
//! make the schema "not adaptable" and the caller falls back to `json_object` mode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

/// OpenAI's documented size limits for a strict structured-output schema
/// (Structured Outputs guide, "Supported schemas"): they are the defaults of [`StrictLimits`].
///
/// They are provider facts rather than deployment policy, so they live here with a constructor
/// for callers (or a future config key) that need other numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrictLimits {
    /// Most object properties in the whole schema (documented: 5,000).
    pub max_properties: usize,
    /// Deepest object nesting, the root object counting as level 1 (documented: 10).
    pub max_nesting: usize,
    /// Most `enum` values across the schema (documented: 1,000).
    pub max_enum_values: usize,
    /// Total length in characters of property names, definition names, enum and const string
    /// values (documented: 120,000).
    pub max_string_chars: usize,
}

impl Default for StrictLimits {
    fn default() -> Self {
        StrictLimits { max_properties: 5_000, max_nesting: 10, max_enum_values: 1_000, max_string_chars: 120_000 }
    }
}

/// String formats OpenAI strict mode documents as supported; others are dropped (the answer is
/// still checked against the original `format` by [`validate`]).
const STRICT_FORMATS: &[&str] = &["date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"];

/// Keywords copied as they are into the strict schema (after their subschemas are adapted).
const KEPT_KEYWORDS: &[&str] = &[
    "description",
    "enum",
    "const",
    "pattern",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "minItems",
    "maxItems",
    "$ref",
];

/// Dropped keywords whose value is carried over into the description as a hint
/// (`(format: uri; minLength: 40)`).
pub const HINTED_KEYWORDS: &[&str] = &["minLength", "maxLength", "uniqueItems", "minProperties", "maxProperties"];

/// Keywords strict mode cannot express; a schema using any of them is not adaptable.
const FATAL_KEYWORDS: &[&str] = &[
    "allOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "patternProperties",
    "prefixItems",
    "contains",
    "$dynamicRef",
    "$recursiveRef",
];

/// Adapts `schema` to OpenAI strict structured-output mode with the documented limits
/// ([`StrictLimits::default`]). `None` means "not adaptable": send `json_object` instead and rely
/// on [`validate`].
///
/// Every object gets `additionalProperties: false` and lists all its properties in `required`;
/// properties that were optional become nullable (`type: [T, "null"]`, or `anyOf [.., null]`),
/// which [`strip_added_nulls`] undoes on the answer. `$ref`/`$defs` are kept; `oneOf` becomes
/// `anyOf`.
pub fn to_strict(schema: &Value) -> Option<Value> {
    to_strict_with(schema, &StrictLimits::default())
}

/// [`to_strict`] with explicit limits.
pub fn to_strict_with(schema: &Value, limits: &StrictLimits) -> Option<Value> {
    let root = schema.as_object()?;
    // The root must be a plain object schema (no anyOf / $ref at the root).
    if !has_type(root, "object") || root.contains_key("anyOf") || root.contains_key("oneOf") {
        return None;
    }
    if root.contains_key("$ref") {
        return None;
    }
    let mut stats = Stats::default();
    let mut out = adapt(schema, 1, &mut stats)?;
    // Definitions: adapted with the same rules; they are referenced from anywhere so their
    // nesting starts again at the level of the root.
    for defs_key in ["$defs", "definitions"] {
        if let Some(defs) = root.get(defs_key) {
            let defs = defs.as_object()?;
            let mut adapted = Map::with_capacity(defs.len());
            for (name, def) in defs {
                stats.string_chars += name.chars().count();
                adapted.insert(name.clone(), adapt(def, 1, &mut stats)?);
            }
            out.as_object_mut()?.insert(defs_key.to_string(), Value::Object(adapted));
        }
    }
    let within = stats.properties <= limits.max_properties
        && stats.max_depth <= limits.max_nesting
        && stats.enum_values <= limits.max_enum_values
        && stats.string_chars <= limits.max_string_chars;
    within.then_some(out)
}

#[derive(Default)]
struct Stats {
    properties: usize,
    max_depth: usize,
    enum_values: usize,
    string_chars: usize,
}

fn has_type(obj: &Map<String, Value>, t: &str) -> bool {
    match obj.get("type") {
        Some(Value::String(s)) => s == t,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(t)),
        _ => false,
    }
}

/// Adapts one subschema. `depth` is the object nesting level this subschema would open.
fn adapt(schema: &Value, depth: usize, stats: &mut Stats) -> Option<Value> {
    let obj = match schema {
        Value::Object(o) => o,
        // Boolean schemas (`true` = anything) cannot be expressed in strict mode.
        _ => return None,
    };
    if !expressible(obj) {
        return None;
    }
    let mut out = Map::new();
    for key in KEPT_KEYWORDS {
        if let Some(v) = obj.get(*key) {
            out.insert((*key).to_string(), v.clone());
        }
    }
    if let Some(Value::Array(values)) = obj.get("enum") {
        stats.enum_values += values.len();
        stats.string_chars += values.iter().filter_map(Value::as_str).map(|s| s.chars().count()).sum::<usize>();
    }
    if let Some(Value::String(s)) = obj.get("const") {
        stats.string_chars += s.chars().count();
    }
    add_hints(obj, &mut out);
    if let Some(t) = obj.get("type") {
        out.insert("type".into(), t.clone());
    }
    adapt_unions(obj, depth, stats, &mut out)?;
    let is_object = has_type(obj, "object") || (obj.get("type").is_none() && obj.contains_key("properties"));
    let is_array = has_type(obj, "array") || (obj.get("type").is_none() && obj.contains_key("items"));
    if is_object {
        adapt_object(obj, depth, stats, &mut out)?;
    }
    if is_array {
        match obj.get("items") {
            Some(items @ Value::Object(_)) => {
                out.insert("items".into(), adapt(items, depth, stats)?);
            }
            // No item schema, or the old tuple form: not expressible.
            _ => return None,
        }
        if out.get("type").is_none() {
            out.insert("type".into(), Value::String("array".into()));
        }
    }
    // Strict mode needs every subschema to say what it is.
    let typed = out.contains_key("type")
        || out.contains_key("anyOf")
        || out.contains_key("$ref")
        || out.contains_key("enum")
        || out.contains_key("const");
    typed.then_some(Value::Object(out))
}

/// Whether strict mode can express this subschema's keywords at all.
fn expressible(obj: &Map<String, Value>) -> bool {
    if FATAL_KEYWORDS.iter().any(|k| obj.contains_key(*k)) {
        return false;
    }
    if obj.get("unevaluatedProperties").is_some_and(|v| v != &Value::Bool(false)) {
        return false;
    }
    // Only references into the root's definitions survive the rewrite unchanged.
    match obj.get("$ref") {
        None => true,
        Some(r) => r.as_str().is_some_and(|r| r == "#" || r.starts_with("#/$defs/") || r.starts_with("#/definitions/")),
    }
}

/// Constraints strict mode does not take are kept as a hint in the description, which the model
/// reads (and the simulated generator honours); validate() still enforces them.
fn add_hints(obj: &Map<String, Value>, out: &mut Map<String, Value>) {
    let mut hints: Vec<String> = Vec::new();
    if let Some(Value::String(f)) = obj.get("format") {
        if STRICT_FORMATS.contains(&f.as_str()) {
            out.insert("format".into(), Value::String(f.clone()));
        } else {
            hints.push(format!("format: {f}"));
        }
    }
    for key in HINTED_KEYWORDS {
        if let Some(v) = obj.get(*key).filter(|v| v.is_number() || v.is_boolean()) {
            hints.push(format!("{key}: {v}"));
        }
    }
    if !hints.is_empty() {
        let hint = format!("({})", hints.join("; "));
        let text = match obj.get("description").and_then(Value::as_str) {
            Some(d) if !d.trim().is_empty() => format!("{} {hint}", d.trim_end()),
            _ => hint,
        };
        out.insert("description".into(), Value::String(text));
    }
}

/// `anyOf` / `oneOf` branches, adapted; `None` when a branch cannot be, or both are present.
fn adapt_unions(obj: &Map<String, Value>, depth: usize, stats: &mut Stats, out: &mut Map<String, Value>) -> Option<()> {
    for union in ["anyOf", "oneOf"] {
        if let Some(branches) = obj.get(union) {
            let branches = branches.as_array().filter(|b| !b.is_empty())?;
            let adapted: Option<Vec<Value>> = branches.iter().map(|b| adapt(b, depth, stats)).collect();
            let mut adapted = adapted?;
            // `anyOf` and `oneOf` together: both must hold; strict mode cannot say that.
            if out.contains_key("anyOf") {
                return None;
            }
            // oneOf -> anyOf loosens "exactly one" to "at least one"; validate() re-checks it.
            out.insert("anyOf".into(), Value::Array(std::mem::take(&mut adapted)));
        }
    }
    Some(())
}

/// An object with fixed properties: every property required, the optional ones nullable, no
/// others allowed. `None` for a free-form object or map, which strict mode cannot express.
fn adapt_object(obj: &Map<String, Value>, depth: usize, stats: &mut Stats, out: &mut Map<String, Value>) -> Option<()> {
    stats.max_depth = stats.max_depth.max(depth);
    let props = match obj.get("properties") {
        Some(Value::Object(p)) if !p.is_empty() => p,
        // A free-form object or a map (`additionalProperties: {schema}`) has no fixed keys.
        _ => return None,
    };
    if obj.contains_key("propertyNames") {
        return None;
    }
    let required: Vec<&str> = match obj.get("required") {
        None => Vec::new(),
        Some(Value::Array(r)) => r.iter().map(|v| v.as_str()).collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    // A required name without a property definition cannot be produced under
    // `additionalProperties: false`.
    if required.iter().any(|r| !props.contains_key(*r)) {
        return None;
    }
    let mut new_props = Map::with_capacity(props.len());
    for (name, prop) in props {
        stats.properties += 1;
        stats.string_chars += name.chars().count();
        let mut adapted = adapt(prop, depth + 1, stats)?;
        if !required.contains(&name.as_str()) {
            adapted = make_nullable(adapted);
        }
        new_props.insert(name.clone(), adapted);
    }
    let all: Vec<Value> = new_props.keys().map(|k| Value::String(k.clone())).collect();
    out.insert("type".into(), obj.get("type").cloned().unwrap_or_else(|| Value::String("object".into())));
    out.insert("properties".into(), Value::Object(new_props));
    out.insert("required".into(), Value::Array(all));
    out.insert("additionalProperties".into(), Value::Bool(false));
    Some(())
}

/// Makes an adapted subschema accept `null` as well (how strict mode expresses "optional").
fn make_nullable(schema: Value) -> Value {
    let Value::Object(mut obj) = schema else { return schema };
    let null = Value::String("null".into());
    if obj.contains_key("$ref") || obj.contains_key("anyOf") || obj.contains_key("const") {
        if let Some(Value::Array(branches)) = obj.get_mut("anyOf") {
            if !branches.iter().any(|b| b.get("type") == Some(&null)) {
                branches.push(serde_json::json!({"type": "null"}));
            }
            return Value::Object(obj);
        }
        return serde_json::json!({"anyOf": [Value::Object(obj), {"type": "null"}]});
    }
    match obj.get_mut("type") {
        Some(Value::String(t)) if t != "null" => {
            let t = std::mem::take(t);
            obj.insert("type".into(), Value::Array(vec![Value::String(t), null.clone()]));
        }
        Some(Value::Array(ts)) if !ts.contains(&null) => ts.push(null.clone()),
        _ => {}
    }
    if let Some(Value::Array(values)) = obj.get_mut("enum") {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
    }
    Value::Object(obj)
}

/// Removes `null` values that strict mode made the model emit for properties the original
/// schema declares optional and non-nullable, so the answer can be validated against the
/// original schema. Follows `properties`, `items` and local `$ref`s; leaves everything else as is.
pub fn strip_added_nulls(original: &Value, instance: &mut Value) {
    strip_nulls_at(original, original, instance, 0);
}

fn strip_nulls_at(root: &Value, schema: &Value, instance: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    let Some(schema) = resolve_ref(root, schema, 0) else { return };
    match instance {
        Value::Object(map) => {
            let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
            let required: Vec<&str> =
                schema.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            map.retain(|k, v| !(v.is_null() && !required.contains(&k.as_str()) && props.get(k).is_some_and(|p| !allows_null(root, p))));
            for (k, v) in map.iter_mut() {
                if let Some(p) = props.get(k) {
                    strip_nulls_at(root, p, v, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items").filter(|i| i.is_object()) {
                for item in items {
                    strip_nulls_at(root, item_schema, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn allows_null(root: &Value, schema: &Value) -> bool {
    let Some(s) = resolve_ref(root, schema, 0) else { return true };
    let Some(obj) = s.as_object() else { return s.as_bool().unwrap_or(true) };
    if let Some(t) = obj.get("type") {
        return match t {
            Value::String(t) => t == "null",
            Value::Array(ts) => ts.iter().any(|t| t.as_str() == Some("null")),
            _ => true,
        };
    }
    if let Some(Value::Array(values)) = obj.get("enum") {
        return values.contains(&Value::Null);
    }
    if let Some(c) = obj.get("const") {
        return c.is_null();
    }
    for union in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = obj.get(union) {
            return branches.iter().any(|b| allows_null(root, b));
        }
    }
    true
}

/// Follows a local `$ref` (`#`, `#/json/pointer`) inside `root`; other refs are left unresolved
/// (the schema itself is returned). `None` when a local ref points nowhere or loops.
pub(crate) fn resolve_ref<'a>(root: &'a Value, schema: &'a Value, hops: usize) -> Option<&'a Value> {
    match schema.get("$ref").and_then(Value::as_str) {
        None => Some(schema),
        Some(_) if hops > 32 => None,
        Some("#") => Some(root),
        Some(r) => match r.strip_prefix('#') {
            Some(pointer) => {
                let target = root.pointer(&percent_decode(pointer))?;
                resolve_ref(root, target, hops + 1)
            }
            None => Some(schema),
        },
    }
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Most validation errors reported by [`validate`].
pub const MAX_REPORTED_ERRORS: usize = 10;
/// Longest single error message reported by [`validate`], in characters (messages quote the
/// offending value, which can be a whole page of model output).
const MAX_ERROR_CHARS: usize = 240;
/// Compiled validators kept for reuse (schemas repeat across jobs; compiling is the costly part).
const VALIDATOR_CACHE_SIZE: usize = 256;

type Cache = Mutex<(HashMap<String, Arc<jsonschema::Validator>>, VecDeque<String>)>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new((HashMap::new(), VecDeque::new())))
}

/// Whether `schema` compiles as the answer validator will compile it (the error says why not).
pub fn check_compiles(schema: &Value) -> Result<(), String> {
    compiled(schema).map(|_| ())
}

/// Compiles `schema` (cached by its serialised text). Formats are asserted, not just annotated:
/// a job asking for `format: email` gets an email or a validation error.
fn compiled(schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    let key = schema.to_string();
    if let Ok(guard) = cache().lock() {
        if let Some(v) = guard.0.get(&key) {
            return Ok(v.clone());
        }
    }
    let validator =
        jsonschema::options().should_validate_formats(true).build(schema).map_err(|e| truncate(&format!("invalid schema: {e}")))?;
    let validator = Arc::new(validator);
    if let Ok(mut guard) = cache().lock() {
        let (map, order) = &mut *guard;
        if !map.contains_key(&key) {
            if order.len() >= VALIDATOR_CACHE_SIZE {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
            order.push_back(key.clone());
            map.insert(key, validator.clone());
        }
    }
    Ok(validator)
}

/// Validates `instance` against `schema`. On failure returns at most
/// [`MAX_REPORTED_ERRORS`] readable messages, each `"<json pointer or /> : <what is wrong>"`.
/// A schema that cannot be compiled is reported the same way (one message, path `(schema)`).
pub fn validate(schema: &Value, instance: &Value) -> Result<(), Vec<String>> {
    let validator = compiled(schema).map_err(|e| vec![format!("(schema): {e}")])?;
    if validator.is_valid(instance) {
        return Ok(());
    }
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .take(MAX_REPORTED_ERRORS)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() { "/".to_string() } else { path };
            truncate(&format!("{path}: {e}"))
        })
        .collect();
    if errors.is_empty() {
        // is_valid and iter_errors disagree only if the library changes; never report "valid".
        return Err(vec!["/: instance does not match the schema".into()]);
    }
    Err(errors)
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_ERROR_CHARS {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_ERROR_CHARS).collect();
    t.push('…');
    t
}

/// Longest schema name providers accept.
pub const MAX_SCHEMA_NAME_LEN: usize = 64;

/// A provider-safe name (`[A-Za-z0-9_-]{1,64}`) for a schema: its `title` when it has one,
/// else `fallback` (e.g. the job type), else `extraction`. Other characters become `_`.
pub fn schema_name(schema: &Value, fallback: &str) -> String {
    let candidates = [schema.get("title").and_then(Value::as_str).unwrap_or(""), fallback, "extraction"];
    for c in candidates {
        let cleaned: String = c
            .trim()
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' { ch } else { '_' })
            .take(MAX_SCHEMA_NAME_LEN)
            .collect();
        if cleaned.chars().any(|ch| ch.is_ascii_alphanumeric()) {
            return cleaned;
        }
    }
    "extraction".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn optional_becomes_nullable_and_all_required() {
        let s = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "required": ["a"]});
        let t = to_strict(&s).expect("adaptable");
        assert_eq!(t["additionalProperties"], json!(false));
        assert_eq!(t["required"], json!(["a", "b"]));
        assert_eq!(t["properties"]["a"]["type"], json!("string"));
        assert_eq!(t["properties"]["b"]["type"], json!(["integer", "null"]));
    }

    #[test]
    fn strip_added_nulls_removes_only_optional_non_nullable() {
        let s = json!({"type": "object", "properties": {
            "a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": ["string", "null"]}
        }, "required": ["a"]});
        let mut v = json!({"a": "x", "b": null, "c": null});
        strip_added_nulls(&s, &mut v);
        assert_eq!(v, json!({"a": "x", "c": null}));
        assert!(validate(&s, &v).is_ok());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("/a%20b"), "/a b");
        assert_eq!(percent_decode("/a%2"), "/a%2");
    }

    #[test]
    fn names_are_sanitised() {
        assert_eq!(schema_name(&json!({"title": "My Product!"}), "x"), "My_Product_");
        assert_eq!(schema_name(&json!({}), "extract"), "extract");
        assert_eq!(schema_name(&json!({"title": "???"}), ""), "extraction");
        assert_eq!(schema_name(&json!({"title": "a".repeat(100)}), "").len(), 64);
    }
}
