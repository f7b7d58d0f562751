//! Parsing a message body, in the current or the legacy (seed) format, into a validated [`Job`].

use serde_json::Value;

use super::fields::{clip, invalid, one_source, opt_str, opt_u32, parse_callback, parse_formats, parse_headers, parse_type, req_str};
use super::{
    json_depth, Job, JobId, JobType, MessageError, Source, DEFAULT_CRAWL_DEPTH, DEFAULT_CRAWL_PAGES, INPUT_KEY_PREFIX, MAX_CRAWL_DEPTH,
    MAX_CRAWL_PAGES, MAX_INSTRUCTIONS_BYTES, MAX_MESSAGE_BYTES, MESSAGE_VERSION,
};

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

/// A current-format message; a field the format does not define is refused.
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

/// A legacy (seed) message: `jobId`, `type` and the inputs and options under `params`.
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

/// The checks both formats share: limits, the URL, the `input_key`, the schema, the tenant.
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
