//! Page processing: fetched (or inline) HTML → clean Markdown, metadata and links, plus the
//! token counting and truncation that keep a page inside the model's input budget.
//!
//! HTML is parsed with `scraper` (html5ever, the browsers' parsing algorithm) and converted to
//! Markdown with `htmd`; nothing here parses HTML with string matching.
//!
//! Main content is found by `dom_smoothie`, a Rust port of Mozilla's Readability (the reader
//! view of Firefox): it scores the page's blocks by text and link density and keeps the best
//! candidate with its related siblings, so related-article lists, link blocks and captions of
//! other stories are left out. Measured on the labelled pages under `tests/fixtures/content/`
//! (docs/performance.md), it is the most precise of the extractors tried. The Markdown starts
//! with the article's title once, then the article. Before Readability scores the page,
//! tooltips (`role="tooltip"`) and footnote markers (`<sup>` links to a note) are removed; after
//! it, a shop's declared product description (`itemprop="description"`, often in a tab away
//! from the block Readability picks) is added when the article lacks it. When Readability finds nothing, the page
//! falls back to the structural rule: the single `<article>` if there is exactly one, else
//! `<main>`, else `[role=main]`, else every `<article>` when there are several, else `<body>`.
//!
//! Either way, before conversion: `nav`, `aside`, `script`, `style`, `noscript`, `template`,
//! `iframe`, `svg`, `canvas`, hidden inputs, `[hidden]` elements and `footer` are removed (and
//! `header` in the `<body>` fallback); images whose source is not `http(s)` (`data:` URIs) and
//! tracking pixels (declared 0 or 1 pixel wide or high) go; links without text go (an image
//! link keeps its image); tables and lists made of links (navigation, related stories) and
//! lists of in-page jumps (a table of contents) go unless the page is such a list. Link and
//! image URLs in the Markdown are made absolute.

mod clean;
mod links;
mod main_content;
mod markdown;
mod metadata;
mod readable;
mod scan;
mod selectors;
#[cfg(test)]
mod tests;
mod tokens;

use std::collections::HashSet;

use scraper::Html;
use serde::Serialize;
use url::Url;

use links::{absolute_http, effective_base, extract_links};
use main_content::structural_markdown;
use metadata::extract_metadata;
use readable::{article_markdown, article_title, readable};
use scan::{scan, shallow_page};
use selectors::selectors;

pub use links::{safe_target, MAX_LINKS};
pub use metadata::Metadata;
pub use scan::{MAX_ELEMENTS, MAX_NESTING};
pub use tokens::{count_tokens, split_to_tokens, truncate_to_tokens};

/// A processed page: what the model and the result's `markdown`/`links`/`metadata` formats get.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Page {
    /// The main content as Markdown.
    pub markdown: String,
    /// Head metadata and JSON-LD.
    pub metadata: Metadata,
    /// Absolute http(s) links, fragments stripped, de-duplicated, in document order.
    pub links: Vec<String>,
}

/// Processes an HTML document. `base` is the page's URL (after redirects), used to make links
/// absolute; a `<base href>` in the page takes precedence. Never fails: malformed HTML is parsed
/// the way a browser would, and anything unusable is left out.
pub fn process(html: &str, base: Option<&Url>) -> Page {
    let Some(s) = selectors() else {
        return text_page(html);
    };
    let scan = scan(html);
    if scan.too_deep || scan.elements > MAX_ELEMENTS {
        return shallow_page(scan, base);
    }
    let mut doc = Html::parse_document(html);

    let base_url = effective_base(&doc, s, base);
    let metadata = extract_metadata(&doc, s, base_url.as_ref());
    let links = extract_links(&doc, s, base_url.as_ref());

    let markdown = match readable(html) {
        Some(article) => {
            let title = article_title(&doc, s, &article.title);
            article_markdown(&article, &title, s, base_url.as_ref())
        }
        None => structural_markdown(&mut doc, s, base_url.as_ref()),
    };
    Page { markdown, metadata, links }
}

/// A plain-text input as a [`Page`]: the text itself is the Markdown, http(s) URLs in it are its
/// links, and there is no metadata.
pub fn text_page(text: &str) -> Page {
    let mut seen = HashSet::new();
    let mut links = Vec::new();
    for word in text.split_whitespace() {
        if links.len() >= MAX_LINKS {
            break;
        }
        let Some(start) = word.find("http://").or_else(|| word.find("https://")) else { continue };
        let candidate = word[start..].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}', '>', '"', '\'']);
        if let Some(u) = absolute_http(candidate, None) {
            if seen.insert(u.clone()) {
                links.push(u);
            }
        }
    }
    Page { markdown: text.trim().to_string(), metadata: Metadata::default(), links }
}

/// `s` with every run of whitespace collapsed to one space, trimmed.
fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `s`, or `None` when it is empty.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}
