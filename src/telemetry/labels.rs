//! Label values: bounded in length and character set, or picked from a closed set.

/// Longest label value kept; longer ones are cut (bounds memory and series size).
pub(super) const MAX_LABEL_LEN: usize = 64;

/// Bounds a label value: at most 64 characters from `[A-Za-z0-9_.:/-]` (others become `_`),
/// `none` when empty. Keeps a bad caller from blowing up series size or exposition syntax.
pub(super) fn label(v: &str) -> String {
    let s: String = v.chars().take(MAX_LABEL_LEN).map(|c| if c.is_ascii_alphanumeric() || "_.:/-".contains(c) { c } else { '_' }).collect();
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// `v` as its static spelling from `allowed`, or `other`: a closed label set.
pub(super) fn known(v: &str, allowed: &'static [&'static str]) -> &'static str {
    allowed.iter().find(|a| **a == v).copied().unwrap_or("other")
}
