//! The job message's types: the validated [`Job`], its id, input, formats and webhook, and the
//! [`MessageError`] a message that cannot become one gets.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DEFAULT_CRAWL_DEPTH, DEFAULT_CRAWL_PAGES, MAX_MESSAGE_BYTES, MESSAGE_VERSION};

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
    pub fn error_kind(&self) -> crate::error::ErrorKind {
        match self {
            MessageError::InvalidSchema(_) => crate::error::ErrorKind::InvalidSchema,
            _ => crate::error::ErrorKind::InvalidMessage,
        }
    }

    /// [`MessageError::error_kind`] as recorded.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }
}
