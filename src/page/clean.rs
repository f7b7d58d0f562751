//! Cleaning a main-content subtree: chrome and link blocks removed, unsafe targets dropped, URLs made absolute.

use scraper::{ElementRef, Html, Node};
use url::Url;

use super::links::{absolute_url_any, safe_target};
use super::selectors::Selectors;

/// Removes chrome below `root` and makes link/image URLs absolute.
pub(super) fn clean_subtree(doc: &mut Html, s: &Selectors, root: ego_tree::NodeId, is_body: bool, base: Option<&Url>) {
    let Some(el) = doc.tree.get(root).and_then(ElementRef::wrap) else { return };
    let mut remove: Vec<_> = el.select(&s.remove_always).map(|e| e.id()).collect();
    if is_body {
        remove.extend(el.select(&s.remove_body).map(|e| e.id()));
    }
    remove.extend(el.select(&s.tracking_pixel).map(|e| e.id()));
    remove.extend(link_blocks(el, s));
    let (titled, rewrite) = targets(el, s, base, &mut remove);
    detach(doc, remove);
    // A link left with neither text nor an image (its image was a `data:` URI or a pixel) would
    // be an empty `[](url)` in the Markdown.
    let empty = empty_links(doc, s, root);
    detach(doc, empty);
    strip_titles(doc, titled);
    rewrite_targets(doc, rewrite);
}

/// A link's or image's target attribute to rewrite: the node, the attribute (`href` or `src`), and
/// the absolute URL to put there, or `None` to remove the attribute.
type Rewrite = (ego_tree::NodeId, &'static str, Option<String>);

/// The links and images below `el` that carry a `title`, and the rewrites of their targets (made
/// absolute against `base`; a link's unsafe target removed). An image with an unsafe source is
/// added to `remove`.
fn targets(
    el: ElementRef<'_>,
    s: &Selectors,
    base: Option<&Url>,
    remove: &mut Vec<ego_tree::NodeId>,
) -> (Vec<ego_tree::NodeId>, Vec<Rewrite>) {
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
    (titled, rewrite)
}

/// The links below `root` with neither text nor an image.
fn empty_links(doc: &Html, s: &Selectors, root: ego_tree::NodeId) -> Vec<ego_tree::NodeId> {
    doc.tree
        .get(root)
        .and_then(ElementRef::wrap)
        .map(|el| {
            el.select(&s.links_any)
                .filter(|a| a.text().all(|t| t.trim().is_empty()) && a.select(&s.img).next().is_none())
                .map(|a| a.id())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the `title` attribute of the elements `ids`.
fn strip_titles(doc: &mut Html, ids: Vec<ego_tree::NodeId>) {
    for id in ids {
        if let Some(mut n) = doc.tree.get_mut(id) {
            if let Node::Element(e) = n.value() {
                e.attrs.retain(|(name, _)| &*name.local != "title");
            }
        }
    }
}

/// Applies the target rewrites: the attribute set to the absolute URL, or removed.
fn rewrite_targets(doc: &mut Html, rewrite: Vec<Rewrite>) {
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
