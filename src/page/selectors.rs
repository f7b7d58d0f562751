//! The CSS selectors page processing uses, compiled once.

use std::sync::OnceLock;

use scraper::Selector;

/// A selector, or `None` when `s` does not parse.
fn sel(s: &str) -> Option<Selector> {
    Selector::parse(s).ok()
}

/// Selectors compiled once (parsing them is not free and they never change).
pub(super) struct Selectors {
    pub(super) title: Selector,
    pub(super) meta: Selector,
    pub(super) canonical: Selector,
    pub(super) html: Selector,
    pub(super) base: Selector,
    pub(super) json_ld: Selector,
    pub(super) links: Selector,
    pub(super) article: Selector,
    pub(super) main: Selector,
    pub(super) role_main: Selector,
    pub(super) body: Selector,
    pub(super) remove_always: Selector,
    pub(super) remove_body: Selector,
    pub(super) rewrite: Selector,
    pub(super) tracking_pixel: Selector,
    pub(super) links_any: Selector,
    pub(super) img: Selector,
    pub(super) link_block: Selector,
    pub(super) h1: Selector,
}

/// The compiled selectors; `None` only if one of them fails to parse (never, in practice).
pub(super) fn selectors() -> Option<&'static Selectors> {
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
