//! Main content by Readability (`dom_smoothie`): the page prepared, the article, its title once, and its Markdown.

use scraper::{ElementRef, Html};
use url::Url;

use super::clean::clean_subtree;
use super::collapse_ws;
use super::markdown::{tidy, to_markdown};
use super::selectors::Selectors;

/// Readability's article, or `None` when it finds no content worth the name.
pub(super) fn readable(html: &str) -> Option<dom_smoothie::Article> {
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
pub(super) fn article_title(doc: &Html, s: &Selectors, readability: &str) -> String {
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
pub(super) fn article_markdown(article: &dom_smoothie::Article, title: &str, s: &Selectors, base: Option<&Url>) -> String {
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
