//! Redaction, applied wherever text leaves the process: job records, dead-letter bodies and
//! reasons, logs and error output. Two passes: the secret values this process knows (the
//! provider key, registered at start) are replaced wherever they appear, however they got
//! there (an echoing 401, a config file's offending line); then whatever looks like a key
//! (`sk-…`, the word after `Bearer` or `Basic`) is masked by pattern.

use std::sync::RwLock;

use serde_json::Value;

/// What a secret becomes.
pub const REDACTED: &str = "[redacted]";
/// Shortest value registered as a secret (shorter ones would mask ordinary words).
const MIN_SECRET_CHARS: usize = 8;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a value to redact wherever it appears from now on (the provider key). Values
/// shorter than 8 characters are ignored; surrounding whitespace is not part of the value.
pub fn register(secret: &str) {
    let s = secret.trim();
    if s.chars().count() < MIN_SECRET_CHARS {
        return;
    }
    if let Ok(mut v) = SECRETS.write() {
        if !v.iter().any(|k| k == s) {
            v.push(s.to_string());
        }
    }
}

/// `s` with every registered secret and every key-like token replaced by [`REDACTED`].
pub fn text(s: &str) -> String {
    let mut out = s.to_string();
    if let Ok(v) = SECRETS.read() {
        for k in v.iter() {
            if out.contains(k.as_str()) {
                out = out.replace(k.as_str(), REDACTED);
            }
        }
    }
    by_pattern(&out)
}

/// Masks API-key-like tokens (`sk-…`/`sk_…` of 20+ characters) and the word after `Bearer` or
/// `Basic`.
fn by_pattern(e: &str) -> String {
    let mut out = String::with_capacity(e.len());
    let mut mask_next_word = false;
    for (i, word) in e.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let trimmed = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
        let key_like = trimmed.len() >= 20
            && (trimmed.starts_with("sk-") || trimmed.starts_with("sk_"))
            && trimmed.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        // After `Bearer`/`Basic` the next word is masked, unless the value pass masked it already.
        let already = word.contains(REDACTED);
        if (mask_next_word && !trimmed.is_empty() && !already) || key_like {
            out.push_str(&word.replace(trimmed, REDACTED));
        } else {
            out.push_str(word);
        }
        let bare = word.trim_matches(|c: char| !c.is_ascii_alphabetic());
        mask_next_word = bare.eq_ignore_ascii_case("bearer") || bare.eq_ignore_ascii_case("basic");
    }
    out
}

/// A message body fit to keep (the DLQ, a dead-letter table): `apiKey`/`api_key` removed (also
/// in the legacy `params`), every caller header value replaced by [`REDACTED`] (names kept, so
/// one can see what was sent), then [`text`]. A body that is not a JSON object is only passed
/// through [`text`].
pub fn message_body(body: &str) -> String {
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(body) else {
        return text(body);
    };
    let carries = |m: &serde_json::Map<String, Value>| {
        m.contains_key("apiKey")
            || m.contains_key("api_key")
            || HEADER_FIELDS.iter().any(|f| m.get(*f).is_some_and(|h| h.as_object().is_some_and(|h| !h.is_empty())))
    };
    if !carries(&m) && !m.get("params").and_then(Value::as_object).is_some_and(carries) {
        // Nothing to take out: the body stays byte for byte (bar pattern redaction).
        return text(body);
    }
    scrub(&mut m);
    if let Some(Value::Object(p)) = m.get_mut("params") {
        scrub(p);
    }
    text(&serde_json::to_string(&Value::Object(m)).unwrap_or_default())
}

/// The message fields that carry a producer's header values (fetch headers, webhook headers).
const HEADER_FIELDS: &[&str] = &["headers", "callback_headers"];

fn scrub(m: &mut serde_json::Map<String, Value>) {
    m.remove("apiKey");
    m.remove("api_key");
    for field in HEADER_FIELDS {
        if let Some(Value::Object(h)) = m.get_mut(*field) {
            for v in h.values_mut() {
                *v = Value::String(REDACTED.into());
            }
        }
    }
}

/// A URL fit for a log line or a record: scheme, host, port and path; no user info, no query,
/// no fragment (where signed or tokened URLs carry their secrets). Text that is not a URL
/// becomes [`REDACTED`].
pub fn url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            parsed.set_fragment(None);
            parsed.to_string()
        }
        Err(_) => REDACTED.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_and_key_like_tokens_are_masked() {
        register("correct-horse-battery-staple-42");
        assert_eq!(text("401: bad key correct-horse-battery-staple-42 given"), "401: bad key [redacted] given");
        assert_eq!(text("key=\"correct-horse-battery-staple-42\"\n"), "key=\"[redacted]\"\n");
        assert_eq!(text("Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx."), "Incorrect API key provided: [redacted].");
        assert_eq!(text("header Authorization: Bearer abc.def-ghi sent"), "header Authorization: Bearer [redacted] sent");
        assert_eq!(text("Authorization: Basic dXNlcjpwYXNz"), "Authorization: Basic [redacted]");
        assert_eq!(text("nothing secret here"), "nothing secret here");
        register("short");
        assert_eq!(text("a short word"), "a short word", "short values are not secrets");
    }

    #[test]
    fn urls_lose_their_credentials_query_and_fragment() {
        assert_eq!(url("https://u:p@hooks.example:8443/a/b?token=s3cret#x"), "https://hooks.example:8443/a/b");
        assert_eq!(url("not a url"), REDACTED);
    }

    #[test]
    fn message_bodies_lose_keys_and_header_values() {
        let body = r#"{"job_id":"j","url":"https://e.com","apiKey":"sk-aaaaaaaaaaaaaaaaaaaaaaaa","headers":{"Authorization":"Bearer xyz-123","X-Tenant":"t"}}"#;
        let out = message_body(body);
        assert!(!out.contains("sk-aaaa") && !out.contains("xyz-123") && !out.contains("apiKey"), "{out}");
        assert!(out.contains("\"Authorization\":\"[redacted]\"") && out.contains("\"job_id\":\"j\""), "{out}");
        let legacy = r#"{"jobId":"l","type":"scrape","params":{"url":"https://e.com","apiKey":"k-123456789"}}"#;
        assert!(!message_body(legacy).contains("k-123456789"));
        assert_eq!(message_body("not json Bearer abc"), "not json Bearer [redacted]");
        let hooked = r#"{"job_id":"w","url":"https://e.com","callback_url":"https://r.example/h","callback_headers":{"X-Receiver-Key":"rk-42-very-secret"}}"#;
        let out = message_body(hooked);
        assert!(!out.contains("rk-42-very-secret") && out.contains("\"X-Receiver-Key\":\"[redacted]\""), "{out}");
        let plain = r#"{"url":"https://e.com","job_id":"kept as sent"}"#;
        assert_eq!(message_body(plain), plain, "a body with nothing to take out is unchanged");
    }
}
