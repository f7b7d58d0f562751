//! The job message producers enqueue, its legacy (seed) form, and the job record the worker keeps.
//!
//! Parsing never panics and never guesses: every problem is a [`MessageError`] naming the field.
//! The wire format is documented in `docs/messages.md` and `docs/job.schema.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The message version this worker writes and understands.
pub const MESSAGE_VERSION: u32 = 1;
/// The prefix every claim-checked input lives under; an `input_key` outside it is refused.
pub const INPUT_KEY_PREFIX: &str = "inputs/";

/// Largest accepted message body in bytes (SQS's own limit is 256 KiB; larger inputs go by `input_key`).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Hard limits for crawls, whatever a message asks for.
pub const MAX_CRAWL_PAGES: u32 = 100;
/// Deepest crawl a message may ask for.
pub const MAX_CRAWL_DEPTH: u32 = 10;
/// `max_pages` when a message does not give one.
pub const DEFAULT_CRAWL_PAGES: u32 = 10;
/// `max_depth` when a message does not give one.
pub const DEFAULT_CRAWL_DEPTH: u32 = 2;
/// Longest accepted `instructions` text, in bytes.
pub const MAX_INSTRUCTIONS_BYTES: usize = 32 * 1024;
/// Longest `callback_url`, bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// A job's identifier: client-chosen, `[A-Za-z0-9_-]{1,128}`, and the idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// Checks the id's syntax.
    pub fn parse(s: &str) -> Result<JobId, MessageError> {
        let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(JobId(s.to_string()))
        } else {
            Err(MessageError::InvalidField { field: "job_id".into(), reason: "must match [A-Za-z0-9_-]{1,128}".into() })
        }
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// A fresh random id, for producers that did not choose one.
    pub fn generate() -> JobId {
        JobId(uuid::Uuid::new_v4().simple().to_string())
    }
}

impl TryFrom<String> for JobId {
    type Error = MessageError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobId::parse(&s)
    }
}
impl From<JobId> for String {
    fn from(j: JobId) -> String {
        j.0
    }
}
impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of work a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// One page (or inline input) in, one structured result out.
    Extract,
    /// Breadth-first over a site, a result per page plus an aggregate.
    Crawl,
}

impl JobType {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobType::Extract => "extract",
            JobType::Crawl => "crawl",
        }
    }
}

/// Where a job's input comes from: exactly one per message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Fetch this http(s) URL (SSRF-checked).
    Url(String),
    /// Inline HTML, processed like a fetched page.
    Html(String),
    /// Inline plain text, given to the model as it is.
    Text(String),
    /// An object in the artifacts store (claim check for inputs above the message size limit).
    InputKey(String),
}

/// Output formats a producer may ask to have in the result besides `data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The cleaned page as Markdown.
    Markdown,
    /// Absolute, de-duplicated links.
    Links,
    /// Title, description, Open Graph, JSON-LD ...
    Metadata,
    /// Structured data from the model (the default when instructions or a schema are given).
    Json,
}

/// A validated job, normalised from either message format.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// The idempotency key.
    pub job_id: JobId,
    /// Extract or crawl.
    pub job_type: JobType,
    /// The one input.
    pub source: Source,
    /// Natural-language instructions for the model.
    pub instructions: Option<String>,
    /// JSON Schema the model's output must validate against.
    pub schema: Option<Value>,
    /// Extra outputs to include in the result.
    pub formats: Vec<Format>,
    /// Crawl page limit (≤ 100).
    pub max_pages: u32,
    /// Crawl depth limit (≤ 10).
    pub max_depth: u32,
    /// A specific model asked for; honoured only where the stage allows it.
    pub model: Option<String>,
    /// This job's own spending cap in USD, escalations included.
    pub max_cost_usd: Option<f64>,
    /// Who the job is for (cost attribution only; never a metric label).
    pub tenant: Option<String>,
    /// Extra request headers for fetching `url` (extract jobs). Filtered before use: no `Host`,
    /// no hop-by-hop headers, no `Cookie` unless `fetch.allow_cookies`. Never stored or logged.
    #[serde(skip)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Where to POST the job's end event (a signed webhook), if anywhere.
    #[serde(skip)]
    pub callback: Option<Callback>,
    /// Cut an input longer than the model's input budget (`llm.max_input_tokens`) instead of
    /// extracting over chunks of it: one call, the rest of the input unread (`truncate`).
    pub truncate: bool,
    /// True when the message came in the legacy (seed) format.
    pub legacy: bool,
}

/// A job's webhook: `callback_url` and `callback_headers` of the message. The headers are the
/// producer's (an API key of its receiver, say): never stored, logged or echoed.
#[derive(Clone, PartialEq)]
pub struct Callback {
    /// The receiver, `http` or `https`. Checked against the SSRF policy when it is called.
    pub url: String,
    /// Extra request headers sent with the POST.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback").field("url", &crate::redact::url(&self.url)).field("headers", &self.headers.len()).finish()
    }
}

impl Job {
    /// Whether a model call is needed at all (no schema and no instructions means page only).
    pub fn needs_model(&self) -> bool {
        self.schema.is_some() || self.instructions.as_deref().is_some_and(|s| !s.trim().is_empty())
    }

    /// The URL, when the source is one.
    pub fn url(&self) -> Option<&str> {
        match &self.source {
            Source::Url(u) => Some(u),
            _ => None,
        }
    }

    /// Serialises the job back into a current-format message (what `submit` sends).
    pub fn to_message(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("version".into(), MESSAGE_VERSION.into());
        m.insert("job_id".into(), self.job_id.as_str().into());
        m.insert("type".into(), self.job_type.as_str().into());
        let (k, v) = match &self.source {
            Source::Url(s) => ("url", s),
            Source::Html(s) => ("html", s),
            Source::Text(s) => ("text", s),
            Source::InputKey(s) => ("input_key", s),
        };
        m.insert(k.into(), v.clone().into());
        if let Some(i) = &self.instructions {
            m.insert("instructions".into(), i.clone().into());
        }
        if let Some(s) = &self.schema {
            m.insert("schema".into(), s.clone());
        }
        if !self.formats.is_empty() {
            m.insert("formats".into(), serde_json::to_value(&self.formats).unwrap_or_default());
        }
        // Always for a crawl; for an extract job only when not the default, so that
        // `parse_message(to_message(job)) == job` holds for every job.
        if self.job_type == JobType::Crawl || self.max_pages != DEFAULT_CRAWL_PAGES || self.max_depth != DEFAULT_CRAWL_DEPTH {
            m.insert("max_pages".into(), self.max_pages.into());
            m.insert("max_depth".into(), self.max_depth.into());
        }
        if let Some(x) = &self.model {
            m.insert("model".into(), x.clone().into());
        }
        if let Some(x) = self.max_cost_usd {
            m.insert("max_cost_usd".into(), x.into());
        }
        if self.truncate {
            m.insert("truncate".into(), true.into());
        }
        if let Some(x) = &self.tenant {
            m.insert("tenant".into(), x.clone().into());
        }
        if !self.headers.is_empty() {
            m.insert("headers".into(), serde_json::to_value(&self.headers).unwrap_or_default());
        }
        if let Some(cb) = &self.callback {
            m.insert("callback_url".into(), cb.url.clone().into());
            if !cb.headers.is_empty() {
                m.insert("callback_headers".into(), serde_json::to_value(&cb.headers).unwrap_or_default());
            }
        }
        Value::Object(m)
    }
}

/// Why a message could not be turned into a [`Job`]. Always permanent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    /// The body is not JSON (or not UTF-8).
    #[error("message is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("message must be a JSON object")]
    NotObject,
    /// The body is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message is {0} bytes; the limit is {MAX_MESSAGE_BYTES} (use input_key for large inputs)")]
    TooLarge(usize),
    /// `version` names a version this worker does not know.
    #[error("unsupported message version {0} (this worker understands {MESSAGE_VERSION})")]
    UnsupportedVersion(String),
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    MissingField(String),
    /// A field has the wrong type or an invalid value.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field's name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A field this format does not define.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// No input, or more than one.
    #[error("exactly one of url, html, text, input_key is required (found {0})")]
    Source(String),
    /// `schema` is a JSON Schema document the validator cannot compile (an invalid `pattern`
    /// regex, an unresolvable `$ref`): every answer would fail it, so no model is ever called.
    #[error("schema cannot be compiled: {0}")]
    InvalidSchema(String),
}

impl MessageError {
    /// Stable reason for the job record and the DLQ attributes: `invalid_schema` for a schema
    /// that cannot be compiled, `invalid_message` for everything else.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::InvalidSchema(_) => "invalid_schema",
            _ => "invalid_message",
        }
    }
}

const CURRENT_FIELDS: &[&str] = &[
    "version",
    "job_id",
    "type",
    "url",
    "html",
    "text",
    "input_key",
    "instructions",
    "schema",
    "formats",
    "max_pages",
    "max_depth",
    "model",
    "max_cost_usd",
    "truncate",
    "tenant",
    "headers",
    "callback_url",
    "callback_headers",
    "apiKey",
    "api_key",
];

/// Most caller headers a job may carry.
pub const MAX_HEADERS: usize = 32;
/// Longest header value a job may carry, bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

fn parse_headers(v: Option<&Value>) -> Result<std::collections::BTreeMap<String, String>, MessageError> {
    parse_header_map(v, "headers")
}

/// `callback_url` and `callback_headers`: an absolute `http(s)` URL without credentials.
fn parse_callback(obj: &serde_json::Map<String, Value>) -> Result<Option<Callback>, MessageError> {
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

/// Extracts the job id from a body even when the rest of it is broken, so the failure can be
/// recorded on the job. Returns `None` when no valid id can be found.
pub fn salvage_job_id(body: &str) -> Option<JobId> {
    let v: Value = serde_json::from_str(body).ok()?;
    let id = v.get("job_id").or_else(|| v.get("jobId"))?.as_str()?;
    JobId::parse(id).ok()
}

/// Parses a message body in the current or the legacy format.
///
/// An `apiKey`/`api_key` field is dropped wherever it appears at the top level or in `params`:
/// it is never stored, logged or used.
pub fn parse_message(body: &str) -> Result<Job, MessageError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge(body.len()));
    }
    let v: Value = serde_json::from_str(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = v else {
        return Err(MessageError::NotObject);
    };
    obj.remove("apiKey");
    obj.remove("api_key");
    if obj.contains_key("jobId") || obj.contains_key("params") {
        return parse_legacy(obj);
    }
    parse_current(obj)
}

fn parse_current(obj: serde_json::Map<String, Value>) -> Result<Job, MessageError> {
    for k in obj.keys() {
        if !CURRENT_FIELDS.contains(&k.as_str()) {
            return Err(MessageError::UnknownField(clip(k)));
        }
    }
    if let Some(v) = obj.get("version") {
        match v.as_u64() {
            Some(n) if n == MESSAGE_VERSION as u64 => {}
            _ => return Err(MessageError::UnsupportedVersion(clip(&v.to_string()))),
        }
    }
    let job_id = JobId::parse(req_str(&obj, "job_id")?)?;
    let job_type = parse_type(obj.get("type"), "type")?;
    let mut sources = Vec::new();
    for key in ["url", "html", "text", "input_key"] {
        if let Some(v) = obj.get(key) {
            let s = v.as_str().ok_or_else(|| invalid(key, "must be a string"))?;
            sources.push(match key {
                "url" => Source::Url(s.to_string()),
                "html" => Source::Html(s.to_string()),
                "text" => Source::Text(s.to_string()),
                _ => Source::InputKey(s.to_string()),
            });
        }
    }
    let source = one_source(sources)?;
    let instructions = opt_str(&obj, "instructions")?;
    let schema = obj.get("schema").filter(|v| !v.is_null()).cloned();
    let formats = parse_formats(obj.get("formats"), "formats")?;
    let max_pages = opt_u32(&obj, "max_pages")?;
    let max_depth = opt_u32(&obj, "max_depth")?;
    let model = opt_str(&obj, "model")?;
    let max_cost_usd = match obj.get("max_cost_usd") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(v.as_f64().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| invalid("max_cost_usd", "must be a positive number"))?)
        }
    };
    let truncate = match obj.get("truncate") {
        None | Some(Value::Null) => false,
        Some(v) => v.as_bool().ok_or_else(|| invalid("truncate", "must be true or false"))?,
    };
    let tenant = opt_str(&obj, "tenant")?;
    let headers = parse_headers(obj.get("headers"))?;
    if !headers.is_empty() && !matches!(job_type, JobType::Extract) {
        return Err(invalid("headers", "only extract jobs fetch with caller headers"));
    }
    let callback = parse_callback(&obj)?;
    finish(Job {
        job_id,
        job_type,
        source,
        instructions,
        schema,
        formats,
        max_pages: max_pages.unwrap_or(DEFAULT_CRAWL_PAGES),
        max_depth: max_depth.unwrap_or(DEFAULT_CRAWL_DEPTH),
        model,
        max_cost_usd,
        tenant,
        headers,
        callback,
        truncate,
        legacy: false,
    })
}

fn parse_legacy(mut obj: serde_json::Map<String, Value>) -> Result<Job, MessageError> {
    let job_id = JobId::parse(req_str(&obj, "jobId")?)?;
    let job_type = parse_type(obj.get("type"), "type")?;
    let mut params = match obj.remove("params") {
        Some(Value::Object(p)) => p,
        None => serde_json::Map::new(),
        Some(_) => return Err(invalid("params", "must be an object")),
    };
    params.remove("apiKey");
    params.remove("api_key");
    let mut sources = Vec::new();
    if let Some(v) = params.get("url") {
        sources.push(Source::Url(v.as_str().ok_or_else(|| invalid("params.url", "must be a string"))?.to_string()));
    }
    if let Some(v) = params.get("html") {
        sources.push(Source::Html(v.as_str().ok_or_else(|| invalid("params.html", "must be a string"))?.to_string()));
    }
    let source = one_source(sources)?;
    let instructions = opt_str(&params, "extractionInstructions")?;
    let schema = params.get("outputSchema").filter(|v| !v.is_null()).cloned();
    let formats = parse_formats(params.get("formats"), "params.formats")?;
    let max_pages = opt_u32(&params, "maxPages")?;
    let max_depth = opt_u32(&params, "maxDepth")?;
    let model = opt_str(&params, "model")?;
    finish(Job {
        job_id,
        job_type,
        source,
        instructions,
        schema,
        formats,
        max_pages: max_pages.unwrap_or(DEFAULT_CRAWL_PAGES),
        max_depth: max_depth.unwrap_or(DEFAULT_CRAWL_DEPTH),
        model,
        max_cost_usd: None,
        tenant: opt_str(&params, "tenant")?,
        headers: Default::default(),
        callback: None,
        truncate: false,
        legacy: true,
    })
}

fn finish(job: Job) -> Result<Job, MessageError> {
    if job.max_pages == 0 || job.max_pages > MAX_CRAWL_PAGES {
        return Err(invalid("max_pages", &format!("must be between 1 and {MAX_CRAWL_PAGES}")));
    }
    if job.max_depth > MAX_CRAWL_DEPTH {
        return Err(invalid("max_depth", &format!("must be at most {MAX_CRAWL_DEPTH}")));
    }
    if job.job_type == JobType::Crawl && !matches!(job.source, Source::Url(_)) {
        return Err(invalid("url", "a crawl needs a url"));
    }
    if let Source::Url(u) = &job.source {
        let parsed = url::Url::parse(u).map_err(|e| invalid("url", &e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("url", "only http and https URLs are accepted"));
        }
    }
    if let Source::InputKey(k) = &job.source {
        if k.is_empty() || k.contains("..") || k.starts_with('/') {
            return Err(invalid("input_key", "must be a relative key without `..`"));
        }
        // Claim-checked inputs live under their own prefix: a key elsewhere (another job's
        // result, any object in the bucket) would hand that object to the model and the result.
        if !k.starts_with(INPUT_KEY_PREFIX) || k.len() == INPUT_KEY_PREFIX.len() || k.contains('\\') || k.contains("//") {
            return Err(invalid(
                "input_key",
                &format!("must name an object under `{INPUT_KEY_PREFIX}` (e.g. `{INPUT_KEY_PREFIX}<job_id>`)"),
            ));
        }
    }
    if job.instructions.as_ref().is_some_and(|i| i.len() > MAX_INSTRUCTIONS_BYTES) {
        return Err(invalid("instructions", &format!("longer than {MAX_INSTRUCTIONS_BYTES} bytes")));
    }
    if let Some(schema) = &job.schema {
        if !schema.is_object() {
            return Err(invalid("schema", "must be a JSON Schema object"));
        }
        if let Err(e) = jsonschema::meta::validate(schema) {
            return Err(invalid("schema", &format!("not a valid JSON Schema: {e}")));
        }
        if json_depth(schema) > 32 {
            return Err(invalid("schema", "nested deeper than 32 levels"));
        }
        // Compiled now, exactly as the answer will be validated (formats and regexes included),
        // so a schema nothing can satisfy is refused before anything is paid for.
        if let Err(e) = crate::llm::schema::check_compiles(schema) {
            return Err(MessageError::InvalidSchema(e));
        }
    }
    if let Some(t) = &job.tenant {
        if t.len() > 128 {
            return Err(invalid("tenant", "longer than 128 characters"));
        }
    }
    Ok(job)
}

/// Nesting depth of a JSON value (a scalar is 0).
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn invalid(field: &str, reason: &str) -> MessageError {
    MessageError::InvalidField { field: field.to_string(), reason: clip(reason) }
}

/// Longest piece of producer-supplied text an error repeats, in characters. Errors are recorded
/// on the job and sent as the DLQ reason, so they stay short whatever the message held.
const ERROR_ECHO_CHARS: usize = 200;

/// `s`, cut to [`ERROR_ECHO_CHARS`] characters (on a character boundary) with a marker when cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(ERROR_ECHO_CHARS) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} bytes in all)", &s[..at], s.len()),
    }
}

fn one_source(mut s: Vec<Source>) -> Result<Source, MessageError> {
    match s.len() {
        1 => Ok(s.remove(0)),
        n => Err(MessageError::Source(n.to_string())),
    }
}

fn req_str<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Result<&'a str, MessageError> {
    match o.get(k) {
        None | Some(Value::Null) => Err(MessageError::MissingField(k.to_string())),
        Some(v) => v.as_str().ok_or_else(|| invalid(k, "must be a string")),
    }
}

fn opt_str(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<String>, MessageError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(v.as_str().ok_or_else(|| invalid(k, "must be a string"))?.to_string())),
    }
}

fn opt_u32(o: &serde_json::Map<String, Value>, k: &str) -> Result<Option<u32>, MessageError> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| invalid(k, "must be a non-negative integer")),
    }
}

fn parse_type(v: Option<&Value>, field: &str) -> Result<JobType, MessageError> {
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

fn parse_formats(v: Option<&Value>, field: &str) -> Result<Vec<Format>, MessageError> {
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

/// A job's state. Transitions: `pending` → `processing` → `completed` | `failed`;
/// `processing` → `pending` (retry or budget deferral); `failed` → `processing` (DLQ redrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Known, not running (new, waiting for a retry, or deferred for budget).
    Pending,
    /// A worker holds the lease.
    Processing,
    /// Done; the result is stored. Terminal.
    Completed,
    /// Failed for good: dead-lettered (permanent failures, retries exhausted), or deleted for a
    /// budget failure (`on_budget_exhausted = fail`, the job's own `max_cost_usd`). Terminal,
    /// though a DLQ redrive claims it again.
    Failed,
}

impl JobStatus {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }
    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobStatus> {
        Some(match s {
            "pending" => JobStatus::Pending,
            "processing" => JobStatus::Processing,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            _ => return None,
        })
    }
}

/// Token counts reported by the provider for one call (or summed over a job's calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Completion tokens, reasoning included.
    pub output_tokens: u64,
    /// The part of `output_tokens` spent on reasoning.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Adds another call's usage.
    pub fn add(&mut self, o: &Usage) {
        self.input_tokens += o.input_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.output_tokens += o.output_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
    }
}

/// Why a `pending` job is waiting (kept on the record as its snake_case name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PendingReason {
    /// A transient failure: the message comes back after its backoff.
    Retry,
    /// Deferred for budget: the message comes back when budget may have freed up.
    BudgetExhausted,
}

impl PendingReason {
    /// The name on records and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            PendingReason::Retry => "retry",
            PendingReason::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl std::fmt::Display for PendingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job was routed: the model, its tier, the complexity score and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// The model first chosen.
    pub model: String,
    /// `nano`, `mini`, `full`, `production` or `override`.
    pub tier: crate::route::Tier,
    /// The complexity score (0-100).
    pub score: u32,
    /// A short explanation of the decision.
    pub reason: String,
}

/// The chunks of a long input already answered (see [`JobRecord::chunk_progress`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkProgress {
    /// SHA-256 (hex) of the chunks as sent: a later attempt resumes only over the same chunks
    /// (a page that changed between attempts is read again from its first chunk).
    pub input: String,
    /// The answers of the first `answers.len()` chunks, in order.
    pub answers: Vec<Value>,
    /// The model that gave the last of them.
    pub model: String,
}

/// How one model call ended, as kept on the job record (`calls[].outcome`) and counted in
/// `atlas_llm_requests_total{status}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// Written before the request goes out: a crash mid-call leaves it so, and the next claim
    /// charges it at its worst case.
    Sent,
    /// A call an earlier attempt left `sent` (charged at its worst case, `estimated`).
    Abandoned,
    /// Answered, and the answer validated.
    Ok,
    /// Answered, but the answer did not validate against the job's schema.
    InvalidOutput,
    /// The provider answered 429.
    RateLimited,
    /// The provider answered 5xx.
    ServerError,
    /// No answer within `llm.request_timeout_secs`.
    Timeout,
    /// The provider refused the request (4xx other than 429).
    BadRequest,
    /// The connection failed.
    Transport,
    /// The model refused (`refusal` set).
    Refused,
    /// The output token cap was reached (`finish_reason: length`).
    Length,
    /// The provider's content filter stopped the answer.
    ContentFilter,
}

impl CallOutcome {
    /// The spelling on records and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Sent => "sent",
            CallOutcome::Abandoned => "abandoned",
            CallOutcome::Ok => "ok",
            CallOutcome::InvalidOutput => "invalid_output",
            CallOutcome::RateLimited => "rate_limited",
            CallOutcome::ServerError => "server_error",
            CallOutcome::Timeout => "timeout",
            CallOutcome::BadRequest => "bad_request",
            CallOutcome::Transport => "transport",
            CallOutcome::Refused => "refused",
            CallOutcome::Length => "length",
            CallOutcome::ContentFilter => "content_filter",
        }
    }
}

impl PartialEq<&str> for CallOutcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model call made for a job, kept on the record (every try is recorded and charged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The model called.
    pub model: String,
    /// How the call ended (`ok`, `invalid_output`, `length`, ...; `sent` while it is out).
    pub outcome: CallOutcome,
    /// Tokens used by this call.
    pub usage: Usage,
    /// What this call cost, in micro-USD.
    pub cost_micros: i64,
    /// Wall time of the call in milliseconds.
    pub latency_ms: u64,
    /// Which chunk of a long input this call read (1-based), when the input was chunked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
    /// The budget reservation this call's charge settles (paid calls only): the ledger's
    /// idempotency key, so a charge written here first can be settled again after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<String>,
    /// The budget period (`YYYY-MM`) the charge belongs to (paid calls only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Whether the charge has reached the ledger. A paid call is recorded here *before* it is
    /// settled; the next claim settles any call still `false` (settle is idempotent).
    #[serde(default = "settled_default", skip_serializing_if = "is_true")]
    pub settled: bool,
    /// True when `cost_micros` is the call's worst case rather than the provider's usage: the
    /// call was sent and its answer never read (timeout, crash, drain), so it may have been
    /// billed in full.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// What the provider reported when it was more than the request could use (more input than
    /// twice the counted prompt, more output than the cap): `usage` and `cost_micros` are then
    /// the bound, and this is the claim, kept for the dispute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_usage: Option<Usage>,
}

fn settled_default() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The failure kept on a job record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable reason (see [`crate::error::JobError::kind`]).
    pub kind: String,
    /// Human-readable detail.
    pub message: String,
    /// Whether the failure was permanent.
    pub permanent: bool,
}

/// The job record kept in the job store (DynamoDB `atlas-codex-jobs-{stage}` or SQLite).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id (partition key).
    pub id: String,
    /// Current state.
    pub status: JobStatus,
    /// The stage that ran it.
    pub stage: String,
    /// `extract` or `crawl` (absent when the message could not be parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// The URL, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Tenant for cost attribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// When the record was created.
    pub created_at: DateTime<Utc>,
    /// When the record last changed.
    pub updated_at: DateTime<Utc>,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// The worker holding the lease while `processing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// When that lease runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Why a pending job is waiting (`retry`, `budget_exhausted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<PendingReason>,
    /// The last error (current one when `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The routing decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// The model whose answer was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Every model call made, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<Attempt>,
    /// Summed token usage.
    #[serde(default)]
    pub usage: Usage,
    /// Total charged, in micro-USD (the exact unit the budget ledger uses).
    #[serde(default)]
    pub cost_micros: i64,
    /// Where the full result lives in the artifacts store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    /// How many chunks a long input was extracted over (absent: one call read it whole). Each
    /// chunk's calls are in `calls`, marked with their `chunk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u32>,
    /// The answers of the chunks already read, kept when an attempt fails part-way through a
    /// chunked input so that the next attempt resumes after them instead of paying for them
    /// again. Cleared when the job's answers are merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_progress: Option<ChunkProgress>,
    /// The result's `data`, inline when it serialises to at most 32 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// Wall time of the successful attempt in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// True when produced by the simulated provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
    /// Unix time after which the store may delete the record (DynamoDB TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The announcement of the job's latest end (event published? webhook delivered?),
    /// written with the end itself (see [`crate::events`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<crate::events::Announcement>,
}

impl JobRecord {
    /// A fresh `pending` record.
    pub fn new(id: &str, stage: &str, now: DateTime<Utc>) -> JobRecord {
        JobRecord {
            id: id.to_string(),
            status: JobStatus::Pending,
            stage: stage.to_string(),
            job_type: None,
            url: None,
            tenant: None,
            created_at: now,
            updated_at: now,
            attempts: 0,
            lease_owner: None,
            lease_expires_at: None,
            pending_reason: None,
            error: None,
            route: None,
            model: None,
            calls: Vec::new(),
            usage: Usage::default(),
            cost_micros: 0,
            result_key: None,
            chunks: None,
            chunk_progress: None,
            data: None,
            duration_ms: None,
            simulated: false,
            expires_at: None,
            announcement: None,
        }
    }

    /// Total charged, in USD.
    pub fn cost_usd(&self) -> f64 {
        crate::pricing::micros_to_usd(self.cost_micros)
    }
}
