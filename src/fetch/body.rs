//! Reading a response: the content-type check, the decompressed-size cap, and charset decoding.

use url::Url;

use super::{FetchError, Fetched, Fetcher};

impl Fetcher {
    /// Reads a final (2xx) response under the body rules: an allowed content type (or an HTML-looking
    /// body when the header is missing), at most `max_body_bytes` after decompression, decoded to text.
    pub(super) async fn read_body(&self, final_url: Url, mut resp: reqwest::Response) -> Result<Fetched, FetchError> {
        let status = resp.status().as_u16();
        let limit = self.settings.max_body_bytes;
        let header_ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
            .filter(|s| !s.is_empty());
        let (media, charset) = match &header_ct {
            Some(ct) => {
                let (m, c) = parse_content_type(ct);
                if !self.content_type_allowed(&m) {
                    return Err(FetchError::ContentType(m));
                }
                (Some(m), c)
            }
            None => (None, None),
        };
        // Content-Length is only left on undecoded bodies, so it is the decoded size here.
        if let Some(len) = resp.content_length() {
            if len > limit as u64 {
                return Err(FetchError::BodyTooLarge { limit });
            }
        }
        let mut body: Vec<u8> = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| self.map_reqwest(e))?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > limit {
                return Err(FetchError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        let content_type = match media {
            Some(m) => m,
            None if looks_like_html(&body) && self.content_type_allowed("text/html") => "text/html".to_string(),
            None => return Err(FetchError::ContentType("(missing)".into())),
        };
        let text = decode_body(&body, charset.as_deref(), &content_type);
        Ok(Fetched { final_url, status, content_type, bytes: body.len(), body: text })
    }

    /// Whether `media` matches one of `allowed_content_types` (prefix match).
    fn content_type_allowed(&self, media: &str) -> bool {
        self.settings.allowed_content_types.iter().any(|a| !a.trim().is_empty() && media.starts_with(&a.trim().to_ascii_lowercase()))
    }
}

/// Splits `type/subtype; charset=x` into the lower-case media type and the charset label.
fn parse_content_type(ct: &str) -> (String, Option<String>) {
    let mut parts = ct.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("charset")).then(|| v.trim().trim_matches(['"', '\'']).to_string())
    });
    (media, charset)
}

/// Whether the first bytes look like an HTML document (used when `Content-Type` is missing).
pub fn looks_like_html(body: &[u8]) -> bool {
    let head = &body[..body.len().min(1024)];
    let text = String::from_utf8_lossy(head).trim_start_matches('\u{feff}').trim_start().to_ascii_lowercase();
    text.starts_with("<!doctype html")
        || text.starts_with("<html")
        || text.starts_with("<head")
        || text.starts_with("<body")
        || (text.starts_with("<!--") && (text.contains("<html") || text.contains("<!doctype html")))
}

/// Decodes a body to text (see the module doc for the order of rules).
pub(super) fn decode_body(body: &[u8], header_charset: Option<&str>, media: &str) -> String {
    if let Some(enc) = header_charset.and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes())) {
        // A BOM still wins over the header, as browsers do.
        let (text, _, _) = enc.decode(body);
        return text.into_owned();
    }
    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(body) {
        let (text, _, _) = enc.decode(body);
        return text.into_owned();
    }
    if let Ok(s) = std::str::from_utf8(body) {
        return s.to_string();
    }
    let is_html = media.contains("html");
    let enc =
        if is_html { meta_charset(body) } else { None }.unwrap_or(if is_html { encoding_rs::WINDOWS_1252 } else { encoding_rs::UTF_8 });
    let (text, _, _) = enc.decode(body);
    text.into_owned()
}

/// A `charset=` declaration within the first 1024 bytes (the HTML prescan window), if any.
fn meta_charset(body: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let head = String::from_utf8_lossy(&body[..body.len().min(1024)]).to_ascii_lowercase();
    let idx = head.find("charset=")?;
    let rest = head[idx + "charset=".len()..].trim_start_matches(['"', '\'', ' ']);
    let label: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')).collect();
    let enc = encoding_rs::Encoding::for_label(label.as_bytes())?;
    // A page cannot truthfully declare UTF-16 in ASCII-compatible bytes.
    if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE {
        return Some(encoding_rs::UTF_8);
    }
    Some(enc)
}
