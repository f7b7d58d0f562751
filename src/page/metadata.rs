//! Page metadata: `<head>` title, description, canonical URL, language, Open Graph and Twitter cards, and JSON-LD.

use std::collections::BTreeMap;

use scraper::Html;
use serde::Serialize;
use url::Url;

use super::links::absolute_http;
use super::selectors::Selectors;
use super::{collapse_ws, non_empty};

/// Metadata found in a page's `<head>` (and JSON-LD blocks anywhere).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metadata {
    /// `<title>`, else `og:title`; whitespace collapsed.
    pub title: Option<String>,
    /// `<meta name=description>`, else `og:description`.
    pub description: Option<String>,
    /// `<link rel=canonical>`, absolute.
    pub canonical_url: Option<String>,
    /// `<html lang>` (else `Content-Language` meta).
    pub language: Option<String>,
    /// Open Graph properties keyed by their full name (`og:title`, `og:image` ...); first wins.
    pub open_graph: BTreeMap<String, String>,
    /// Twitter card properties keyed by their full name (`twitter:card` ...); first wins.
    pub twitter: BTreeMap<String, String>,
    /// Every valid JSON-LD block (top-level arrays are flattened); invalid blocks are skipped.
    pub json_ld: Vec<serde_json::Value>,
}

/// Most JSON-LD blocks kept per page (a page is already size-capped; this bounds the output).
const MAX_JSON_LD_BLOCKS: usize = 64;

/// The page's metadata (see [`Metadata`]); the canonical URL is made absolute against `base`.
pub(super) fn extract_metadata(doc: &Html, s: &Selectors, base: Option<&Url>) -> Metadata {
    let mut m = Metadata::default();
    let mut description = None;
    let mut content_language = None;
    for meta in doc.select(&s.meta) {
        let el = meta.value();
        let key = el.attr("property").or_else(|| el.attr("name")).map(|k| k.trim().to_ascii_lowercase());
        let content = el.attr("content").or_else(|| el.attr("value")).map(collapse_ws);
        if let Some(h) = el.attr("http-equiv") {
            if h.trim().eq_ignore_ascii_case("content-language") && content_language.is_none() {
                content_language = content.clone().and_then(non_empty);
            }
        }
        let (Some(key), Some(content)) = (key, content) else { continue };
        if content.is_empty() {
            continue;
        }
        if key.starts_with("og:") {
            m.open_graph.entry(key).or_insert(content);
        } else if key.starts_with("twitter:") {
            m.twitter.entry(key).or_insert(content);
        } else if key == "description" && description.is_none() {
            description = Some(content);
        }
    }
    m.title = doc
        .select(&s.title)
        .next()
        .map(|t| collapse_ws(&t.text().collect::<String>()))
        .and_then(non_empty)
        .or_else(|| m.open_graph.get("og:title").cloned());
    m.description = description.or_else(|| m.open_graph.get("og:description").cloned());
    m.canonical_url = doc.select(&s.canonical).next().and_then(|e| e.value().attr("href")).and_then(|h| absolute_http(h, base));
    m.language = doc
        .select(&s.html)
        .next()
        .and_then(|e| e.value().attr("lang"))
        .map(|l| l.trim().to_string())
        .and_then(non_empty)
        .or(content_language);
    json_ld_blocks(doc, s, &mut m.json_ld);
    m
}

/// Appends the page's valid JSON-LD blocks to `out` (a top-level array flattened to its objects; an HTML
/// comment or CDATA wrapper removed), stopping at [`MAX_JSON_LD_BLOCKS`].
fn json_ld_blocks(doc: &Html, s: &Selectors, out: &mut Vec<serde_json::Value>) {
    for script in doc.select(&s.json_ld) {
        let ty = script.value().attr("type").unwrap_or("").trim().to_ascii_lowercase();
        if !ty.starts_with("application/ld+json") {
            continue;
        }
        let raw: String = script.text().collect();
        let mut body = raw.trim();
        for (open, close) in [("<!--", "-->"), ("<![CDATA[", "]]>"), ("//<![CDATA[", "//]]>")] {
            if let Some(inner) = body.strip_prefix(open) {
                body = inner.trim().strip_suffix(close).unwrap_or(inner).trim();
            }
        }
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(items)) => out.extend(items.into_iter().filter(|v| v.is_object())),
            Ok(v @ serde_json::Value::Object(_)) => out.push(v),
            _ => {}
        }
        if out.len() >= MAX_JSON_LD_BLOCKS {
            out.truncate(MAX_JSON_LD_BLOCKS);
            break;
        }
    }
}
