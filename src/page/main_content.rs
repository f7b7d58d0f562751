//! The structural main-content rule used when Readability finds nothing: `<article>`, `<main>`, `[role=main]`, else `<body>`.

use std::collections::HashSet;

use scraper::{ElementRef, Html};
use url::Url;

use super::clean::clean_subtree;
use super::markdown::{tidy, to_markdown};
use super::selectors::Selectors;

/// The structural rule's main content as Markdown (when Readability finds nothing).
pub(super) fn structural_markdown(doc: &mut Html, s: &Selectors, base: Option<&Url>) -> String {
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
