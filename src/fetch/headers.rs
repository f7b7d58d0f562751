//! Which caller-supplied request headers a fetch may send.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Headers a job may never set: the client owns them, they are hop-by-hop, or they would let a
/// job impersonate the worker (`User-Agent`, which robots.txt rules are matched against).
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "accept-encoding",
    "user-agent",
];

/// Keeps the caller-supplied headers a fetch may send: drops `Host`, hop-by-hop headers
/// (`Connection`, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`),
/// headers the client owns (`Content-Length`, `Expect`, `Accept-Encoding`, `User-Agent`), and
/// `Cookie` unless `allow_cookies`. Names or values that are not valid HTTP are dropped too.
pub fn filter_headers<'a, I>(headers: I, allow_cookies: bool) -> HeaderMap
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let lower = name.trim().to_ascii_lowercase();
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            continue;
        }
        if lower == "cookie" && !allow_cookies {
            continue;
        }
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_str(value)) else {
            continue;
        };
        out.append(n, v);
    }
    out
}
