//! Typed readers for a message's fields (strings, numbers, type, formats, headers, callback), each
//! failing with a [`MessageError`] that names the field.

use serde_json::Value;

use super::{Callback, Format, JobType, MessageError, Source, MAX_CALLBACK_URL_BYTES, MAX_HEADERS, MAX_HEADER_VALUE_BYTES};

/// `headers`: the caller's request headers for fetching `url`.
pub(super) fn parse_headers(v: Option<&Value>) -> Result<std::collections::BTreeMap<String, String>, MessageError> {
    parse_header_map(v, "headers")
}

/// `callback_url` and `callback_headers`: an absolute `http(s)` URL without credentials.
pub(super) fn parse_callback(obj: &serde_json::Map<String, Value>) -> Result<Option<Callback>, MessageError> {
    let headers = parse_header_map(obj.get("callback_headers"), "callback_headers")?;
    let Some(url) = opt_str(obj, "callback_url")? else {
        if !headers.is_empty() {
            return Err(invalid("callback_headers", "needs a callback_url"));
        }
        return Ok(None);
    };
    if url.len() > MAX_CALLBACK_URL_BYTES {
        return Err(invalid("callback_url", &format!("longer than {MAX_CALLBACK_URL_BYTES} bytes")));
    }
    let parsed = url::Url::parse(&url).map_err(|e| invalid("callback_url", &e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("callback_url", "only http and https URLs are accepted"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("callback_url", "credentials in the URL are not accepted (use callback_headers)"));
    }
    Ok(Some(Callback { url, headers }))
}

fn parse_header_map(v: Option<&Value>, field: &str) -> Result<std::collections::BTreeMap<String, String>, MessageError> {
    let mut out = std::collections::BTreeMap::new();
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(out) };
    let invalid = |_: &str, reason: &str| invalid(field, reason);
    let obj = v.as_object().ok_or_else(|| invalid("headers", "must be an object of header name to string value"))?;
    if obj.len() > MAX_HEADERS {
        return Err(invalid("headers", &format!("at most {MAX_HEADERS} headers")));
    }
    for (name, value) in obj {
        let token_ok =
            !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token_ok {
            return Err(invalid("headers", &format!("`{}` is not a valid header name", clip(name))));
        }
        let value = value.as_str().ok_or_else(|| invalid("headers", &format!("the value of `{}` must be a string", clip(name))))?;
        if value.len() > MAX_HEADER_VALUE_BYTES || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(invalid("headers", &format!("the value of `{}` is too long or contains control characters", clip(name))));
        }
        out.insert(name.clone(), value.to_string());
    }
    Ok(out)
}

/// Nesting depth of a JSON value (a scalar is 0).
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A [`MessageError::InvalidField`] for `field`, its `reason` clipped.
pub(super) fn invalid(field: &str, reason: &str) -> MessageError {
    MessageError::InvalidField { field: field.to_string(), reason: clip(reason) }
}

/// Longest piece of producer-supplied text an error repeats, in characters. Errors are recorded
/// on the job and sent as the DLQ reason, so they stay short whatever the message held.
const ERROR_ECHO_CHARS: usize = 200;

/// `s`, cut to [`ERROR_ECHO_CHARS`] characters (on a character boundary) with a marker when cut.
pub(super) fn clip(s: &str) -> String {
    match s.char_indices().nth(ERROR_ECHO_CHARS) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} bytes in all)", &s[..at], s.len()),
    }
}

/// The one input among `s`; none or several is a [`MessageError::Source`].
pub(super) fn one_source(mut s: Vec<Source>) -> Result<Source, MessageError> {
    match s.len() {
        1 => Ok(s.remove(0)),
        n => Err(MessageError::Source(n.to_string())),
    }
}

/// A required string field.
pub(super) fn req_str<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Result<&'a str, MessageError> {
    match o.get(k) {
        None | Some(Value::Null) => Err(MessageError::MissingField(k.to_string())),
        Some(v) => v.as_str().ok_or_else(|| invalid(k, "must be a string")),
    }
}

/// An optional string field (`null` counts as absent).
pub(super) fn opt_str(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, MessageError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(v.as_str().ok_or_else(|| invalid(k, "must be a string"))?.to_string())),
    }
}

/// An optional non-negative integer field that fits a `u32` (`null` counts as absent).
pub(super) fn opt_u32(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<u32>, MessageError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| invalid(k, "must be a non-negative integer")),
    }
}

/// The job type (`extract` when absent; `scrape` is the legacy name of `extract`).
pub(super) fn parse_type(v: Option<&Value>, field: &str) -> Result<JobType, MessageError> {
    match v {
        None | Some(Value::Null) => Ok(JobType::Extract),
        Some(Value::String(s)) => match s.as_str() {
            "extract" | "scrape" => Ok(JobType::Extract),
            "crawl" => Ok(JobType::Crawl),
            other => Err(invalid(field, &format!("unknown type `{other}` (extract | crawl)"))),
        },
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

/// The list of extra output formats (`structured` is the legacy name of `json`).
pub(super) fn parse_formats(v: Option<&Value>, field: &str) -> Result<Vec<Format>, MessageError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i.as_str() {
                Some("markdown") => Ok(Format::Markdown),
                Some("links") => Ok(Format::Links),
                Some("metadata") => Ok(Format::Metadata),
                Some("json") | Some("structured") => Ok(Format::Json),
                _ => Err(invalid(field, &format!("unknown format {i} (markdown | links | metadata | json)"))),
            })
            .collect(),
        Some(_) => Err(invalid(field, "must be an array of strings")),
    }
}
