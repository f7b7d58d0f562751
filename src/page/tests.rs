//! Unit tests of truncation and plain-text pages.

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
