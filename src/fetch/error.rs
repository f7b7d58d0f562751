//! [`FetchError`], its stable job-error kinds, and the mapping from reqwest's errors.

use std::net::IpAddr;
use std::time::Duration;

use super::resolve::GuardError;
use super::{BlockReason, Fetcher};
use crate::error::{ErrorKind, JobError};

/// Why a fetch failed. Each variant maps to a stable [`JobError`] kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The URL's scheme is not `http` or `https` (e.g. `file`, `ftp`).
    #[error("scheme `{0}` is not allowed (only http and https)")]
    Scheme(String),
    /// The URL does not parse, has no host, or carries credentials.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// The target (or one of the addresses its name resolves to) is not a public address.
    #[error("refused to connect to {addr} ({reason}) for host `{host}`")]
    Blocked {
        /// The host as written in the URL.
        host: String,
        /// The offending address.
        addr: IpAddr,
        /// Why it is refused.
        reason: BlockReason,
    },
    /// A redirect pointed somewhere a fetch may not go; `reason` is the check that failed.
    #[error("redirect to `{location}` refused: {reason}")]
    RedirectBlocked {
        /// The redirect target (query string removed).
        location: String,
        /// What was wrong with it.
        reason: Box<FetchError>,
    },
    /// The name did not resolve.
    #[error("DNS lookup for `{host}` failed: {message}")]
    Dns {
        /// The host name.
        host: String,
        /// The resolver's explanation.
        message: String,
    },
    /// More redirects than `max_redirects`.
    #[error("more than {max} redirects")]
    TooManyRedirects {
        /// The configured limit.
        max: u32,
    },
    /// The body (after decompression) exceeded `max_body_bytes`.
    #[error("response body larger than {limit} bytes (after decompression)")]
    BodyTooLarge {
        /// The configured limit, bytes.
        limit: usize,
    },
    /// The TCP connection was not established within `connect_timeout_ms`.
    #[error("connect timed out after {ms} ms")]
    ConnectTimeout {
        /// The configured limit, milliseconds.
        ms: u64,
    },
    /// The whole fetch (hops and body) took longer than `total_timeout_secs`.
    #[error("fetch timed out after {secs} s")]
    Timeout {
        /// The configured limit, seconds.
        secs: u64,
    },
    /// The content type is not in `allowed_content_types` (or missing and not HTML-looking).
    #[error("content type `{0}` is not accepted")]
    ContentType(String),
    /// A non-success HTTP status (after redirects).
    #[error("HTTP status {0}")]
    Status(u16),
    /// The server answered 429; `retry_after_secs` comes from `Retry-After` when given in seconds.
    #[error("rate limited by the server (HTTP 429)")]
    RateLimited {
        /// The server's hint, seconds.
        retry_after_secs: Option<u64>,
    },
    /// The connection failed or broke (refused, reset, TLS failure).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The body could not be decoded (e.g. corrupt gzip).
    #[error("response body could not be decoded: {0}")]
    Decode(String),
    /// The HTTP client could not be built (bad settings, e.g. an invalid User-Agent).
    #[error("fetcher configuration: {0}")]
    Config(String),
}

impl FetchError {
    /// The stable machine-readable kind recorded on the job (same as the [`JobError`] kind).
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            FetchError::Scheme(_) | FetchError::InvalidUrl(_) => ErrorKind::InvalidUrl,
            FetchError::Blocked { .. } => ErrorKind::SsrfBlocked,
            FetchError::RedirectBlocked { reason, .. } => match reason.as_ref() {
                FetchError::Scheme(_) | FetchError::Blocked { .. } => ErrorKind::SsrfBlocked,
                other => other.error_kind(),
            },
            FetchError::Dns { .. } => ErrorKind::Dns,
            FetchError::TooManyRedirects { .. } => ErrorKind::TooManyRedirects,
            FetchError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            FetchError::ConnectTimeout { .. } | FetchError::Timeout { .. } => ErrorKind::FetchTimeout,
            FetchError::ContentType(_) => ErrorKind::UnsupportedContentType,
            FetchError::Status(c) if (500..600).contains(c) => ErrorKind::Http5xx,
            FetchError::Status(c) if (400..500).contains(c) => ErrorKind::Http4xx,
            FetchError::Status(_) => ErrorKind::HttpStatus,
            FetchError::RateLimited { .. } => ErrorKind::Http429,
            FetchError::Connect(_) => ErrorKind::FetchConnect,
            FetchError::Decode(_) => ErrorKind::InvalidBody,
            FetchError::Config(_) => ErrorKind::FetchConfig,
        }
    }

    /// [`FetchError::error_kind`] as recorded.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    /// Whether trying again later may succeed (network trouble, 5xx, 429, DNS, timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.error_kind(),
            ErrorKind::Dns
                | ErrorKind::FetchTimeout
                | ErrorKind::Http5xx
                | ErrorKind::Http429
                | ErrorKind::FetchConnect
                | ErrorKind::FetchConfig
        )
    }
}

impl From<FetchError> for JobError {
    fn from(e: FetchError) -> Self {
        let kind = e.error_kind();
        let message = e.to_string();
        match e {
            FetchError::RateLimited { retry_after_secs } => {
                JobError::Transient { kind, message, retry_after: retry_after_secs.map(Duration::from_secs) }
            }
            ref other if other.is_transient() => JobError::transient(kind, message),
            _ => JobError::permanent(kind, message),
        }
    }
}

impl Fetcher {
    /// The typed error for a reqwest failure: a refusal raised by the resolver comes back as
    /// itself, else a timeout, decode or connection error.
    pub(super) fn map_reqwest(&self, e: reqwest::Error) -> FetchError {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if let Some(g) = s.downcast_ref::<GuardError>() {
                return g.0.clone();
            }
            src = s.source();
        }
        if e.is_timeout() {
            if e.is_connect() {
                return FetchError::ConnectTimeout { ms: self.settings.connect_timeout_ms };
            }
            return FetchError::Timeout { secs: self.settings.total_timeout_secs };
        }
        if e.is_decode() {
            return FetchError::Decode(error_chain(&e.without_url()));
        }
        FetchError::Connect(error_chain(&e.without_url()))
    }
}

/// An error and its sources joined with `: ` (a source already in the message is not repeated).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}
