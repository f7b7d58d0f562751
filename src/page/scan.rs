//! The linear pre-scan (tokenizer only, no tree): nesting depth and element count, and the text-and-links fallback page.

use std::collections::HashSet;

use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{Tag, TagKind, Token, TokenSink, TokenSinkResult};
use url::Url;

use super::links::absolute_http;
use super::markdown::tidy;
use super::{collapse_ws, non_empty, Metadata, Page, MAX_LINKS};

/// Deepest element nesting processed as a tree. Tree building costs O(depth) per tag and the
/// Markdown conversion recurses per level, so a page nested deeper than this (hostile, or badly
/// broken: real pages stay well under 100) is reduced to its text and links by a linear scan
/// instead, which neither takes quadratic time nor exhausts the stack.
pub const MAX_NESTING: usize = 256;

/// Elements that have no end tag (never pushed on the stack of open elements).
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
/// Elements that start a new line in the fallback's text.
const BLOCK: &[&str] = &["p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre", "blockquote"];

/// What the linear pre-scan learned: the nesting estimate and, for the fallback, text and links.
#[derive(Default)]
pub(super) struct Scan {
    /// More than [`MAX_NESTING`] elements were open at once.
    pub(super) too_deep: bool,
    /// Elements (start tags) seen.
    pub(super) elements: usize,
    /// The text outside raw-text elements, a newline before each block element.
    text: String,
    /// `<a href>` targets in document order, at most [`MAX_SCANNED_HREFS`].
    hrefs: Vec<String>,
    /// The `<title>`'s text.
    title: String,
}

/// The tokenizer's sink: tracks open elements (an estimate of the tree builder's stack) and
/// collects the [`Scan`].
struct ScanSink {
    /// The names of the open elements, innermost last.
    stack: std::cell::RefCell<Vec<String>>,
    /// What the scan has learned so far.
    out: std::cell::RefCell<Scan>,
    /// Inside `script`/`style`/`template`-like raw text whose characters are not content.
    hidden: std::cell::Cell<usize>,
    /// `svg`/`math` elements open (self-closing tags are honoured inside them).
    foreign: std::cell::Cell<usize>,
}

/// Elements whose content the tokenizer reads as raw text (their end tag leaves it).
const RAW_TEXT: &[&str] = &["script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "title", "textarea"];

impl TokenSink for ScanSink {
    type Handle = ();

    fn process_token(&self, token: Token, _line: u64) -> TokenSinkResult<()> {
        let (Ok(mut stack), Ok(mut out)) = (self.stack.try_borrow_mut(), self.out.try_borrow_mut()) else {
            return TokenSinkResult::Continue;
        };
        match token {
            Token::CharacterTokens(t) => {
                self.text(&stack, &mut out, &t);
                TokenSinkResult::Continue
            }
            Token::TagToken(tag) => {
                let name: &str = &tag.name;
                if BLOCK.contains(&name) {
                    out.text.push('\n');
                }
                match tag.kind {
                    TagKind::StartTag => self.start_tag(&mut stack, &mut out, &tag),
                    TagKind::EndTag => self.end_tag(&mut stack, out.too_deep, name),
                }
            }
            _ => TokenSinkResult::Continue,
        }
    }
}

impl ScanSink {
    /// Character tokens: content unless inside raw text, where only a `<title>`'s text is kept.
    fn text(&self, stack: &[String], out: &mut Scan, t: &str) {
        if self.hidden.get() == 0 {
            out.text.push_str(t);
        } else if stack.last().is_some_and(|n| n == "title") {
            out.title.push_str(t);
        }
    }

    /// A start tag: counted, its `href` kept (for `<a>`), the element opened unless it is void
    /// (stack tracking stops once too deep), and the tokenizer state for its content returned.
    fn start_tag(&self, stack: &mut Vec<String>, out: &mut Scan, tag: &Tag) -> TokenSinkResult<()> {
        let name: &str = &tag.name;
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
            self.open(stack, out, name);
        }
        self.content_state(name)
    }

    /// Pushes `name` on the stack of open elements, first closing an open sibling of the same
    /// [`AUTO_CLOSE`] family; past [`MAX_NESTING`] the page is too deep.
    fn open(&self, stack: &mut Vec<String>, out: &mut Scan, name: &str) {
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

    /// The tokenizer state for the content of a `name` element just opened: raw text (whose
    /// characters are not content) for `script`, `style`, `title` and the like, else as usual.
    fn content_state(&self, name: &str) -> TokenSinkResult<()> {
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

    /// An end tag: raw text left, and (unless too deep) the stack popped down to the matching
    /// element when it is among the 16 innermost.
    fn end_tag(&self, stack: &mut Vec<String>, too_deep: bool, name: &str) -> TokenSinkResult<()> {
        if RAW_TEXT.contains(&name) {
            self.hidden.set(self.hidden.get().saturating_sub(1));
        }
        if too_deep {
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

/// One linear pass of the HTML tokenizer (no tree building) estimating the nesting depth.
pub(super) fn scan(html: &str) -> Scan {
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
pub(super) fn shallow_page(scan: Scan, base: Option<&Url>) -> Page {
    let markdown = tidy(&scan.text.lines().map(collapse_ws).collect::<Vec<_>>().join("\n"));
    let mut seen = HashSet::new();
    let links = scan.hrefs.iter().filter_map(|h| absolute_http(h, base)).filter(|u| seen.insert(u.clone())).take(MAX_LINKS).collect();
    let title = non_empty(collapse_ws(&scan.title));
    Page { markdown, metadata: Metadata { title, ..Metadata::default() }, links }
}
