//! Unit tests of label bounds, error sanitising, exposition text and outcome names.

use super::labels::{label, MAX_LABEL_LEN};
use super::logs::sanitize_error;
use super::recorder::{escape, fmt_millionths};
use super::*;

#[test]
fn millionths_render_exactly() {
    assert_eq!(fmt_millionths(0), "0");
    assert_eq!(fmt_millionths(1), "0.000001");
    assert_eq!(fmt_millionths(1_500_000), "1.5");
    assert_eq!(fmt_millionths(12_000_000), "12");
    assert_eq!(fmt_millionths(123_456_789), "123.456789");
}

#[test]
fn labels_are_bounded_and_safe() {
    assert_eq!(label(""), "none");
    assert_eq!(label("gpt-5-mini"), "gpt-5-mini");
    assert_eq!(label("a\"b\nc d"), "a_b_c_d");
    assert_eq!(label(&"x".repeat(500)).len(), MAX_LABEL_LEN);
}

#[test]
fn error_text_is_redacted_and_bounded() {
    assert_eq!(sanitize_error("model timed out after 120 s"), "model timed out after 120 s");
    assert_eq!(
        sanitize_error("401: Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwxyz012345."),
        "401: Incorrect API key provided: [redacted]."
    );
    assert_eq!(sanitize_error("header Authorization: Bearer abc.def-ghi sent"), "header Authorization: Bearer [redacted] sent");
    assert_eq!(sanitize_error("sk-short"), "sk-short");
    let long = "x".repeat(5000);
    let cut = sanitize_error(&long);
    assert_eq!(cut.chars().count(), MAX_ERROR_LOG_CHARS + 1);
    assert!(cut.ends_with('…'));
}

#[test]
fn escape_handles_specials() {
    assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape("a\nb"), "a\\nb");
}

#[test]
fn outcome_names_are_distinct_snake_case() {
    let mut seen = std::collections::BTreeSet::new();
    for o in Outcome::ALL {
        assert!(o.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        assert!(seen.insert(o.as_str()));
    }
}
