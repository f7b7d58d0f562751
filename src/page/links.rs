//! Link targets: the page's links, the base URL they resolve against, absolute URLs, and which targets are safe.

use std::collections::HashSet;

use scraper::Html;
use url::Url;

use super::selectors::Selectors;

/// The page's absolute http(s) links (`<a href>`, `<area href>`), de-duplicated, in document order, at most
/// [`MAX_LINKS`].
pub(super) fn extract_links(doc: &Html, s: &Selectors, base: Option<&Url>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for a in doc.select(&s.links) {
        if out.len() >= MAX_LINKS {
            break;
        }
        if let Some(u) = a.value().attr("href").and_then(|h| absolute_http(h, base)) {
            if seen.insert(u.clone()) {
                out.push(u);
            }
        }
    }
    out
}

/// Most links kept from one page (document order, duplicates dropped): a page of a million
/// links must not hold a million URLs in the job's memory and result.
pub const MAX_LINKS: usize = 1_000;

/// The URL relative links resolve against: `<base href>` (itself resolved against the page URL),
/// else the page URL.
pub(super) fn effective_base(doc: &Html, s: &Selectors, page: Option<&Url>) -> Option<Url> {
    let href = doc.select(&s.base).next().and_then(|e| e.value().attr("href")).map(str::trim);
    match (href, page) {
        (Some(h), Some(p)) => p.join(h).ok().or_else(|| Some(p.clone())),
        (Some(h), None) => Url::parse(h).ok(),
        (None, p) => p.cloned(),
    }
    .filter(|u| matches!(u.scheme(), "http" | "https"))
}

/// `href` made absolute, fragment stripped; `None` unless it is http(s).
pub(super) fn absolute_http(href: &str, base: Option<&Url>) -> Option<String> {
    let href = href.trim();
    if href.is_empty() || href.starts_with('#') {
        return None;
    }
    let mut u = match base {
        Some(b) => b.join(href).ok()?,
        None => Url::parse(href).ok()?,
    };
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    u.set_fragment(None);
    Some(u.to_string())
}

/// Whether a link or image target may appear in the Markdown: relative, or an absolute URL of a
/// scheme that cannot run code (`http`, `https`, and for links `mailto` and `tel`). The scheme is
/// read the way a browser reads it: ASCII whitespace and control characters inside it ignored,
/// case folded (`JaVa\tScRiPt:` is `javascript:`).
pub fn safe_target(v: &str, is_link: bool) -> bool {
    let cleaned: String = v.chars().filter(|c| !c.is_ascii_whitespace() && !c.is_ascii_control()).collect::<String>().to_ascii_lowercase();
    let Some(colon) = cleaned.find(':') else { return true };
    let scheme = &cleaned[..colon];
    let looks_like_scheme = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    // A colon after a path, query or fragment character is not a scheme (`a/b:c`, `?x=y:z`).
    if !looks_like_scheme {
        return true;
    }
    matches!(scheme, "http" | "https") || (is_link && matches!(scheme, "mailto" | "tel"))
}

/// Like [`absolute_http`] but keeps fragments (in-page anchors stay meaningful in Markdown).
pub(super) fn absolute_url_any(v: &str, base: &Url) -> Option<String> {
    let v = v.trim();
    if v.is_empty() || v.starts_with('#') {
        return None;
    }
    let u = base.join(v).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.to_string())
}
