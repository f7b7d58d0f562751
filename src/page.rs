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

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use scraper::{ElementRef, Html, Node, Selector};
use serde::Serialize;
use url::Url;

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

/// Most JSON-LD blocks kept per page (a page is already size-capped; this bounds the output).
const MAX_JSON_LD_BLOCKS: usize = 64;

fn sel(s: &str) -> Option<Selector> {
    Selector::parse(s).ok()
}

/// Selectors compiled once (parsing them is not free and they never change).
struct Selectors {
    title: Selector,
    meta: Selector,
    canonical: Selector,
    html: Selector,
    base: Selector,
    json_ld: Selector,
    links: Selector,
    article: Selector,
    main: Selector,
    role_main: Selector,
    body: Selector,
    remove_always: Selector,
    remove_body: Selector,
    rewrite: Selector,
    tracking_pixel: Selector,
    links_any: Selector,
    img: Selector,
    link_block: Selector,
    h1: Selector,
}

fn selectors() -> Option<&'static Selectors> {
    static S: OnceLock<Option<Selectors>> = OnceLock::new();
    S.get_or_init(|| {
        Some(Selectors {
            title: sel("title")?,
            meta: sel("meta")?,
            canonical: sel("link[rel~=\"canonical\" i][href]")?,
            html: sel("html")?,
            base: sel("base[href]")?,
            json_ld: sel("script[type]")?,
            links: sel("a[href], area[href]")?,
            article: sel("article")?,
            main: sel("main")?,
            role_main: sel("[role=\"main\" i]")?,
            body: sel("body")?,
            remove_always: sel("nav, aside, footer, script, style, noscript, template, iframe, svg, canvas, object, embed, \
                 input[type=\"hidden\" i], [hidden], [aria-hidden=\"true\"]")?,
            remove_body: sel("header, [role=\"navigation\" i], [role=\"banner\" i], [role=\"contentinfo\" i]")?,
            rewrite: sel("a[href], img[src]")?,
            tracking_pixel: sel("img[width=\"0\"], img[width=\"1\"], img[height=\"0\"], img[height=\"1\"], img[width=\"1px\" i], img[height=\"1px\" i], img:not([src])")?,
            links_any: sel("a")?,
            img: sel("img")?,
            link_block: sel("table, ul, ol")?,
            h1: sel("h1")?,
        })
    })
    .as_ref()
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

/// Readability's article, or `None` when it finds no content worth the name.
fn readable(html: &str) -> Option<dom_smoothie::Article> {
    let cfg = dom_smoothie::Config {
        // Metadata, Open Graph and JSON-LD are read by `extract_metadata`, once.
        disable_json_ld: true,
        ..Default::default()
    };
    let doc = dom_query::Document::from(html);
    prepare(&doc);
    let described = described_item(&doc);
    // No document URL: Readability would resolve every target itself, `javascript:` ones too
    // (as relative paths); `clean_subtree` resolves them after the scheme check.
    let mut r = dom_smoothie::Readability::with_document(doc, None, Some(cfg)).ok()?;
    let mut article = r.parse().ok()?;
    if article.text_content.trim().is_empty() {
        return None;
    }
    if let Some((text, html)) = described {
        // A product page's description lives in its own tab or block, often away from the
        // block Readability picks (price, options): the page declares it, so it is added.
        if !collapse_ws(&article.text_content).contains(&text) {
            article.content = format!("{}\n{html}", article.content).into();
        }
    }
    Some(article)
}

/// Removes, before Readability scores the page, what no reader sees as content: tooltips
/// (`role="tooltip"`, a button's hover text such as "Save this answer.") and footnote markers
/// (a `<sup>` holding only a link to a note on the page, Wikipedia's `[1]`).
fn prepare(doc: &dom_query::Document) {
    doc.select("[role=\"tooltip\" i]").remove();
    for sup in doc.select("sup").iter() {
        let links = sup.select("a[href^=\"#\"]");
        let text = collapse_ws(&sup.text());
        if links.length() == 1 && text.chars().count() <= FOOTNOTE_MARKER_MAX_CHARS && collapse_ws(&links.text()).len() + 2 >= text.len() {
            sup.remove();
        }
    }
}

/// Longest footnote marker (`[123]`, `[a]`) removed by [`prepare`].
const FOOTNOTE_MARKER_MAX_CHARS: usize = 8;

/// Shortest declared description worth adding to the article (shorter ones are a teaser line
/// that the page's metadata carries anyway).
const DESCRIPTION_MIN_CHARS: usize = 200;

/// The text and HTML of the page's declared item description (schema.org microdata
/// `itemprop="description"`, as shops mark their product text), when it is long enough to be
/// the product's text rather than a summary line.
fn described_item(doc: &dom_query::Document) -> Option<(String, String)> {
    let d = doc.select("[itemprop=\"description\" i]:not(meta)");
    let d = d.iter().max_by_key(|e| e.text().len())?;
    let text = collapse_ws(&d.text());
    (text.chars().count() >= DESCRIPTION_MIN_CHARS).then(|| (text, d.html().to_string()))
}

/// The article's title: the page's only `<h1>` when it names what the document title names (the
/// document title usually carries the site's name too: `Title - Site`), else Readability's; when
/// that `<h1>` is the site's name itself (a forum's logo), the document title without it.
fn article_title(doc: &Html, s: &Selectors, readability: &str) -> String {
    let readability = collapse_ws(readability);
    let mut h1s = doc.select(&s.h1).map(|h| collapse_ws(&h.text().collect::<String>()));
    match (h1s.next(), h1s.next()) {
        (Some(h1), None) if is_site_name(&h1, &readability) => {
            // The title without the site's name (and the separator before it).
            let keep = readability.chars().count() - h1.trim().chars().count();
            let head: String = readability.chars().take(keep).collect();
            collapse_ws(head.trim_end().trim_end_matches(TITLE_SEPARATORS))
        }
        (Some(h1), None) if readability.is_empty() || names_the_same(&h1, &readability) => h1,
        _ => readability,
    }
}

/// What separates a page's own title from the site's name in a document title (`Title - Site`).
const TITLE_SEPARATORS: [char; 7] = ['-', '|', '—', '–', ':', '·', '»'];

/// Whether a heading is only the site's name at the end of the document title
/// (`Thread title - Site Forums` with `<h1>Site Forums</h1>`, the logo of a forum).
fn is_site_name(heading: &str, title: &str) -> bool {
    let (h, t) = (heading.trim().to_lowercase(), title.trim().to_lowercase());
    t.len() > h.len() && t.ends_with(&h) && t[..t.len() - h.len()].trim_end().ends_with(TITLE_SEPARATORS)
}

/// Whether a heading names what the document title names: at least half of its words are in
/// the title (`Title: Subtitle` → `Title - Site`, or a product's name with its size).
fn names_the_same(heading: &str, title: &str) -> bool {
    let words =
        |t: &str| t.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_string).collect::<Vec<_>>();
    let (h, t) = (words(heading), words(title));
    !h.is_empty() && 2 * h.iter().filter(|w| t.contains(w)).count() >= h.len()
}

/// The article's title (once) and content as Markdown, cleaned like any main content.
fn article_markdown(article: &dom_smoothie::Article, title: &str, s: &Selectors, base: Option<&Url>) -> String {
    let mut frag = Html::parse_fragment(&article.content);
    let root = frag.root_element().id();
    clean_subtree(&mut frag, s, root, false, base);
    let body = frag.tree.get(root).and_then(ElementRef::wrap).map(|el| to_markdown(&el.inner_html())).unwrap_or_default();
    if title.is_empty() {
        return tidy(&body);
    }
    // The title once: a heading repeating it inside the article goes, the title leads.
    let is_title = |l: &str| l.starts_with('#') && collapse_ws(l.trim_start_matches('#')) == title;
    let body: Vec<&str> = body.lines().filter(|l| !is_title(l)).collect();
    tidy(&format!("# {title}\n\n{}", body.join("\n")))
}

/// The structural rule's main content as Markdown (when Readability finds nothing).
fn structural_markdown(doc: &mut Html, s: &Selectors, base: Option<&Url>) -> String {
    let (roots, is_body) = main_roots(doc, s);
    let mut markdown_parts = Vec::new();
    for root in roots {
        clean_subtree(doc, s, root, is_body, base);
        if let Some(el) = doc.tree.get(root).and_then(ElementRef::wrap) {
            let md = to_markdown(&el.html());
            if !md.is_empty() {
                markdown_parts.push(md);
            }
        }
    }
    tidy(&markdown_parts.join("\n\n"))
}

/// Deepest element nesting processed as a tree. Tree building costs O(depth) per tag and the
/// Markdown conversion recurses per level, so a page nested deeper than this (hostile, or badly
/// broken: real pages stay well under 100) is reduced to its text and links by a linear scan
/// instead, which neither takes quadratic time nor exhausts the stack.
pub const MAX_NESTING: usize = 256;

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr", "param", "keygen", "frame",
    "basefont", "bgsound",
];
/// Elements a new start tag of the same family closes implicitly (the tree builder's rules, roughly).
const AUTO_CLOSE: &[&[&str]] = &[
    &["p"],
    &["li"],
    &["dt", "dd"],
    &["option", "optgroup"],
    &["tr"],
    &["td", "th"],
    &["thead", "tbody", "tfoot"],
    &["rb", "rp", "rt", "rtc"],
];
const BLOCK: &[&str] = &["p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre", "blockquote"];

/// What the linear pre-scan learned: the nesting estimate and, for the fallback, text and links.
#[derive(Default)]
struct Scan {
    too_deep: bool,
    /// Elements (start tags) seen.
    elements: usize,
    text: String,
    hrefs: Vec<String>,
    title: String,
}

struct ScanSink {
    stack: std::cell::RefCell<Vec<String>>,
    out: std::cell::RefCell<Scan>,
    /// Inside `script`/`style`/`template`-like raw text whose characters are not content.
    hidden: std::cell::Cell<usize>,
    /// `svg`/`math` elements open (self-closing tags are honoured inside them).
    foreign: std::cell::Cell<usize>,
}

const RAW_TEXT: &[&str] = &["script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "title", "textarea"];

impl html5ever::tokenizer::TokenSink for ScanSink {
    type Handle = ();

    fn process_token(&self, token: html5ever::tokenizer::Token, _line: u64) -> html5ever::tokenizer::TokenSinkResult<()> {
        use html5ever::tokenizer::states::RawKind;
        use html5ever::tokenizer::{TagKind, Token, TokenSinkResult};
        let (Ok(mut stack), Ok(mut out)) = (self.stack.try_borrow_mut(), self.out.try_borrow_mut()) else {
            return TokenSinkResult::Continue;
        };
        match token {
            Token::CharacterTokens(t) => {
                if self.hidden.get() == 0 {
                    out.text.push_str(&t);
                } else if stack.last().is_some_and(|n| n == "title") {
                    out.title.push_str(&t);
                }
                TokenSinkResult::Continue
            }
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                if BLOCK.contains(&name) {
                    out.text.push('\n');
                }
                match tag.kind {
                    TagKind::StartTag => {
                        out.elements += 1;
                        if name == "a" && out.hrefs.len() < MAX_SCANNED_HREFS {
                            if let Some(a) = tag.attrs.iter().find(|a| &*a.name.local == "href") {
                                out.hrefs.push(a.value.to_string());
                            }
                        }
                        if VOID.contains(&name) || (self.foreign.get() > 0 && tag.self_closing) {
                            return TokenSinkResult::Continue;
                        }
                        // Once too deep, only text and links matter: stop tracking the stack.
                        if !out.too_deep {
                            if let Some(family) = AUTO_CLOSE.iter().find(|f| f.contains(&name)) {
                                if stack.last().is_some_and(|top| family.contains(&top.as_str())) {
                                    stack.pop();
                                }
                            }
                            if name == "svg" || name == "math" {
                                self.foreign.set(self.foreign.get() + 1);
                            }
                            stack.push(name.to_string());
                            if stack.len() > MAX_NESTING {
                                out.too_deep = true;
                            }
                        }
                        let raw = match name {
                            "script" => Some(RawKind::ScriptData),
                            "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript" => Some(RawKind::Rawtext),
                            "title" | "textarea" => Some(RawKind::Rcdata),
                            _ => None,
                        };
                        match raw {
                            Some(kind) => {
                                self.hidden.set(self.hidden.get() + 1);
                                TokenSinkResult::RawData(kind)
                            }
                            None if name == "plaintext" => TokenSinkResult::Plaintext,
                            None => TokenSinkResult::Continue,
                        }
                    }
                    TagKind::EndTag => {
                        if RAW_TEXT.contains(&name) {
                            self.hidden.set(self.hidden.get().saturating_sub(1));
                        }
                        if out.too_deep {
                            return TokenSinkResult::Continue;
                        }
                        let len = stack.len();
                        if let Some(pos) = stack.iter().rev().take(16).position(|n| n == name) {
                            for popped in stack.drain(len - 1 - pos..) {
                                if popped == "svg" || popped == "math" {
                                    self.foreign.set(self.foreign.get().saturating_sub(1));
                                }
                            }
                        }
                        TokenSinkResult::Continue
                    }
                }
            }
            _ => TokenSinkResult::Continue,
        }
    }
}

/// One linear pass of the HTML tokenizer (no tree building) estimating the nesting depth.
fn scan(html: &str) -> Scan {
    use html5ever::tendril::StrTendril;
    use html5ever::tokenizer::{BufferQueue, Tokenizer, TokenizerOpts};
    let sink = ScanSink {
        stack: std::cell::RefCell::new(Vec::new()),
        out: std::cell::RefCell::new(Scan::default()),
        hidden: std::cell::Cell::new(0),
        foreign: std::cell::Cell::new(0),
    };
    let tok = Tokenizer::new(sink, TokenizerOpts::default());
    let queue = BufferQueue::default();
    queue.push_back(StrTendril::from(html));
    let _ = tok.feed(&queue);
    tok.end();
    tok.sink.out.take()
}

/// Most elements of a page processed as a tree. A parsed element costs about a kilobyte across
/// the two trees (`scraper`'s and Readability's) and the Markdown, so this bounds one page's
/// parse at roughly 100 MiB whatever its bytes; real pages stay far below it (the labelled
/// pages: at most 2,200; a very long encyclopedia article: tens of thousands). A page with more
/// (a link farm, a generated table of a million cells) is read by the linear scan instead: its
/// text and links, without main-content selection.
pub const MAX_ELEMENTS: usize = 50_000;

/// Most link targets the linear scan keeps (duplicates and non-http ones are dropped after it,
/// down to [`MAX_LINKS`]): a page of millions of links does not hold them all.
const MAX_SCANNED_HREFS: usize = 8 * MAX_LINKS;

/// The fallback for pages nested deeper than [`MAX_NESTING`] or with more than
/// [`MAX_ELEMENTS`] elements: text and links only.
fn shallow_page(scan: Scan, base: Option<&Url>) -> Page {
    let markdown = tidy(&scan.text.lines().map(collapse_ws).collect::<Vec<_>>().join("\n"));
    let mut seen = HashSet::new();
    let links = scan.hrefs.iter().filter_map(|h| absolute_http(h, base)).filter(|u| seen.insert(u.clone())).take(MAX_LINKS).collect();
    let title = non_empty(collapse_ws(&scan.title));
    Page { markdown, metadata: Metadata { title, ..Metadata::default() }, links }
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

/// The URL relative links resolve against: `<base href>` (itself resolved against the page URL),
/// else the page URL.
fn effective_base(doc: &Html, s: &Selectors, page: Option<&Url>) -> Option<Url> {
    let href = doc.select(&s.base).next().and_then(|e| e.value().attr("href")).map(str::trim);
    match (href, page) {
        (Some(h), Some(p)) => p.join(h).ok().or_else(|| Some(p.clone())),
        (Some(h), None) => Url::parse(h).ok(),
        (None, p) => p.cloned(),
    }
    .filter(|u| matches!(u.scheme(), "http" | "https"))
}

/// `href` made absolute, fragment stripped; `None` unless it is http(s).
fn absolute_http(href: &str, base: Option<&Url>) -> Option<String> {
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

fn collapse_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn extract_metadata(doc: &Html, s: &Selectors, base: Option<&Url>) -> Metadata {
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
            Ok(serde_json::Value::Array(items)) => m.json_ld.extend(items.into_iter().filter(|v| v.is_object())),
            Ok(v @ serde_json::Value::Object(_)) => m.json_ld.push(v),
            _ => {}
        }
        if m.json_ld.len() >= MAX_JSON_LD_BLOCKS {
            m.json_ld.truncate(MAX_JSON_LD_BLOCKS);
            break;
        }
    }
    m
}

fn extract_links(doc: &Html, s: &Selectors, base: Option<&Url>) -> Vec<String> {
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

/// The node(s) holding the main content, and whether that is the `<body>` fallback.
fn main_roots(doc: &Html, s: &Selectors) -> (Vec<ego_tree::NodeId>, bool) {
    let articles: Vec<_> = doc.select(&s.article).map(|e| e.id()).collect();
    if articles.len() == 1 {
        return (articles, false);
    }
    if let Some(m) = doc.select(&s.main).next().or_else(|| doc.select(&s.role_main).next()) {
        return (vec![m.id()], false);
    }
    if articles.len() > 1 {
        // Nested articles (comments inside a post) would be emitted twice; keep outermost ones.
        let set: HashSet<_> = articles.iter().copied().collect();
        let outer = articles
            .into_iter()
            .filter(|id| doc.tree.get(*id).map(|n| !n.ancestors().any(|a| set.contains(&a.id()))).unwrap_or(false))
            .collect();
        return (outer, false);
    }
    match doc.select(&s.body).next() {
        Some(b) => (vec![b.id()], true),
        None => (vec![doc.root_element().id()], true),
    }
}

/// Removes chrome below `root` and makes link/image URLs absolute.
fn clean_subtree(doc: &mut Html, s: &Selectors, root: ego_tree::NodeId, is_body: bool, base: Option<&Url>) {
    let Some(el) = doc.tree.get(root).and_then(ElementRef::wrap) else { return };
    let mut remove: Vec<_> = el.select(&s.remove_always).map(|e| e.id()).collect();
    if is_body {
        remove.extend(el.select(&s.remove_body).map(|e| e.id()));
    }
    remove.extend(el.select(&s.tracking_pixel).map(|e| e.id()));
    remove.extend(link_blocks(el, s));
    let mut rewrite = Vec::new();
    // A link's or image's `title` mostly repeats its text: `[x](url "x")` pays for it twice.
    let mut titled = Vec::new();
    for e in el.select(&s.rewrite) {
        if e.value().attr("title").is_some() {
            titled.push(e.id());
        }
        let is_link = e.value().name() == "a";
        let attr = if is_link { "href" } else { "src" };
        let Some(v) = e.value().attr(attr) else { continue };
        if !safe_target(v, is_link) {
            // `javascript:`, `vbscript:`, `data:` and other schemes never reach the Markdown: a
            // link keeps its text, an image goes.
            if is_link {
                rewrite.push((e.id(), attr, None));
            } else {
                remove.push(e.id());
            }
        } else if let Some(abs) = base.and_then(|b| absolute_url_any(v, b)) {
            rewrite.push((e.id(), attr, Some(abs)));
        }
    }
    detach(doc, remove);
    // A link left with neither text nor an image (its image was a `data:` URI or a pixel) would
    // be an empty `[](url)` in the Markdown.
    let empty_links: Vec<_> = doc
        .tree
        .get(root)
        .and_then(ElementRef::wrap)
        .map(|el| {
            el.select(&s.links_any)
                .filter(|a| a.text().all(|t| t.trim().is_empty()) && a.select(&s.img).next().is_none())
                .map(|a| a.id())
                .collect()
        })
        .unwrap_or_default();
    detach(doc, empty_links);
    for id in titled {
        if let Some(mut n) = doc.tree.get_mut(id) {
            if let Node::Element(e) = n.value() {
                e.attrs.retain(|(name, _)| &*name.local != "title");
            }
        }
    }
    for (id, attr, abs) in rewrite {
        if let Some(mut n) = doc.tree.get_mut(id) {
            if let Node::Element(e) = n.value() {
                match abs {
                    Some(abs) => {
                        for (name, value) in e.attrs.iter_mut() {
                            if &*name.local == attr {
                                *value = abs.as_str().into();
                            }
                        }
                    }
                    None => e.attrs.retain(|(name, _)| &*name.local != attr),
                }
            }
        }
    }
}

/// Detaches the nodes `ids` from the document (a node already detached with an ancestor stays so).
fn detach(doc: &mut Html, ids: Vec<ego_tree::NodeId>) {
    for id in ids {
        if let Some(mut n) = doc.tree.get_mut(id) {
            n.detach();
        }
    }
}

/// Fewest links in a table or list for it to count as a navigation block.
const LINK_BLOCK_MIN_LINKS: usize = 10;
/// Fewest links in a list for it to count as a table of contents (all its links in-page jumps).
const CONTENTS_MIN_LINKS: usize = 3;
/// Share of a block's text inside links from which it is navigation (a navbox, a list of
/// related stories), not prose that cites sources.
const LINK_BLOCK_DENSITY: f64 = 0.8;
/// A navigation block is removed only while the rest of the content holds at least this many
/// times its text: on a page that *is* a list of links (an index, a listing) the links are the
/// content and stay.
const LINK_BLOCK_REST_FACTOR: usize = 3;

/// The outermost tables and lists below `el` made of links (see the constants above).
fn link_blocks(el: ElementRef<'_>, s: &Selectors) -> Vec<ego_tree::NodeId> {
    let chars = |e: ElementRef<'_>| e.text().map(|t| t.trim().chars().count()).sum::<usize>();
    let total = chars(el);
    let mut found: Vec<(ego_tree::NodeId, usize)> = Vec::new();
    for b in el.select(&s.link_block) {
        if b.ancestors().any(|a| found.iter().any(|(id, _)| *id == a.id())) {
            continue;
        }
        let links: Vec<_> = b.select(&s.links_any).collect();
        // A table of contents: every link a jump to a heading of this same page.
        let contents =
            links.len() >= CONTENTS_MIN_LINKS && links.iter().all(|a| a.value().attr("href").is_some_and(|h| h.starts_with('#')));
        if links.len() < LINK_BLOCK_MIN_LINKS && !contents {
            continue;
        }
        let text = chars(b);
        let in_links: usize = links.iter().map(|a| chars(*a)).sum();
        if text > 0 && in_links as f64 >= LINK_BLOCK_DENSITY * text as f64 {
            found.push((b.id(), text));
        }
    }
    let removed: usize = found.iter().map(|(_, t)| t).sum();
    if total.saturating_sub(removed) < LINK_BLOCK_REST_FACTOR * removed {
        return Vec::new();
    }
    found.into_iter().map(|(id, _)| id).collect()
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
fn absolute_url_any(v: &str, base: &Url) -> Option<String> {
    let v = v.trim();
    if v.is_empty() || v.starts_with('#') {
        return None;
    }
    let u = base.join(v).ok()?;
    matches!(u.scheme(), "http" | "https").then(|| u.to_string())
}

fn to_markdown(html: &str) -> String {
    let options = htmd::options::Options {
        bullet_list_marker: htmd::options::BulletListMarker::Dash,
        ul_bullet_spacing: 1,
        hr_style: htmd::options::HrStyle::Dashes,
        ..Default::default()
    };
    let converter = htmd::HtmlToMarkdown::builder()
        .options(options)
        .skip_tags(vec![
            "script", "style", "noscript", "template", "iframe", "svg", "canvas", "object", "embed", "nav", "aside", "head", "input",
            "button", "select", "textarea",
        ])
        .build();
    converter.convert(html).unwrap_or_default()
}

/// Trims lines' trailing spaces' excess, collapses runs of blank lines, and drops the padding
/// `htmd` aligns table columns with (a wide cell would pad every row of its column).
fn tidy(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut blank = 0;
    let mut in_code = false;
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 && !in_code {
                continue;
            }
            out.push('\n');
        } else if !in_code && line.trim_start().starts_with('|') {
            blank = 0;
            out.push_str(&compact_table_row(line.trim()));
            out.push('\n');
        } else {
            blank = 0;
            out.push_str(line.trim_end_matches([' ', '\t']).trim_end());
            if line.ends_with("  ") {
                out.push_str("  "); // Markdown hard line break
            }
            out.push('\n');
        }
    }
    out.trim().to_string()
}

/// A Markdown table row without alignment padding: `|  a   | b |` → `| a | b |`, and a
/// delimiter row's dashes shortened to three (any run of spaces becomes one, of dashes at most
/// three).
fn compact_table_row(row: &str) -> String {
    let mut out = String::with_capacity(row.len());
    let mut dashes = 0;
    for c in row.chars() {
        dashes = if c == '-' { dashes + 1 } else { 0 };
        if (c == ' ' && out.ends_with(' ')) || dashes > 3 {
            continue;
        }
        out.push(c);
    }
    out
}

fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Tokens in `text` under the o200k_base encoding (the GPT-4o / GPT-5 family). Special-token
/// strings in page content are counted as ordinary text. If the encoding cannot be loaded (it is
/// compiled in, so this should not happen) it estimates one token per 4 bytes.
pub fn count_tokens(text: &str) -> usize {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len(),
        None => text.len().div_ceil(4),
    }
}

/// Cuts `text` into consecutive pieces of at most `max_tokens` tokens each (o200k_base), in
/// order and without losing a byte: the last resort of chunking a line longer than the model's
/// input budget (`process::chunk`).
pub fn split_to_tokens(text: &str, max_tokens: usize) -> Vec<String> {
    let max_tokens = max_tokens.max(1);
    let Some(b) = bpe() else {
        // No tokenizer: about four bytes a token, cut on character boundaries.
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(max_tokens.saturating_mul(4));
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        return out;
    };
    let tokens = b.encode_ordinary(text);
    let mut out = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    for window in tokens.chunks(max_tokens) {
        let mut bytes = std::mem::take(&mut carry);
        bytes.extend(b.decode_bytes(window).unwrap_or_default());
        // A character split between two windows goes with the next one.
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) => e.valid_up_to(),
        };
        carry = bytes.split_off(valid);
        out.push(String::from_utf8(bytes).unwrap_or_default());
    }
    if !carry.is_empty() {
        out.push(String::from_utf8_lossy(&carry).into_owned());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Cuts `markdown` so that it, plus a note saying so, fits in `max_tokens` (o200k_base); returns
/// the text and whether it was cut. The note reads `[content truncated to N of M tokens]`. When
/// `max_tokens` is smaller than the note itself, the note alone is returned.
pub fn truncate_to_tokens(markdown: &str, max_tokens: usize) -> (String, bool) {
    let Some(b) = bpe() else {
        let limit = max_tokens.saturating_mul(4);
        if markdown.len() <= limit {
            return (markdown.to_string(), false);
        }
        let mut cut = limit.min(markdown.len());
        while !markdown.is_char_boundary(cut) {
            cut -= 1;
        }
        return (format!("{}\n\n[content truncated to about {max_tokens} tokens]", &markdown[..cut]), true);
    };
    let tokens = b.encode_ordinary(markdown);
    let total = tokens.len();
    if total <= max_tokens {
        return (markdown.to_string(), false);
    }
    let probe = format!("\n\n[content truncated to {max_tokens} of {total} tokens]");
    let keep = max_tokens.saturating_sub(b.encode_ordinary(&probe).len());
    let bytes = b.decode_bytes(&tokens[..keep]).unwrap_or_default();
    // Only the tail can hold a partial UTF-8 sequence; cut it off.
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t.to_string(),
        Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
    };
    let text = text.trim_end();
    let note = format!("[content truncated to {keep} of {total} tokens]");
    if text.is_empty() {
        (note, true)
    } else {
        (format!("{text}\n\n{note}"), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_fits_and_notes() {
        let text = "word ".repeat(5000);
        let (out, cut) = truncate_to_tokens(&text, 100);
        assert!(cut);
        assert!(out.contains("[content truncated to"), "{out}");
        assert!(count_tokens(&out) <= 100, "{}", count_tokens(&out));
        let (same, cut) = truncate_to_tokens("short text", 100);
        assert_eq!((same.as_str(), cut), ("short text", false));
    }

    #[test]
    fn truncation_never_splits_chars() {
        let text = "日本語のテキスト🎉".repeat(500);
        for max in [20, 21, 22, 23, 50] {
            let (out, cut) = truncate_to_tokens(&text, max);
            assert!(cut);
            assert!(!out.contains('\u{fffd}'));
        }
    }

    #[test]
    fn text_page_links() {
        let p = text_page("see https://a.example/x#top, and (http://b.example/y). ftp://c.example/z");
        assert_eq!(p.links, vec!["https://a.example/x", "http://b.example/y"]);
    }
}
