//! Main-content quality on labelled real pages (`tests/fixtures/content/`, listed with their kind
//! and origin in `INDEX.tsv`): each page's Markdown from `page::process` is scored against the
//! hand-checked main text (the body: the Markdown's `# title` first line is checked on its own) by
//! 4-gram shingle overlap, the measure of the article-extraction
//! benchmarks. The suite fails when the mean F1 or precision falls below its floors
//! (docs/performance.md has the numbers and the per-kind table).
//!
//! Run `cargo test --release --test content_quality -- --nocapture` for the per-page report
//! (precision, recall, F1, tokens, CPU time); with `ATLAS_CONTENT_DUMP=DIR` each page's Markdown
//! is written to `DIR/{case}.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use atlas_codex::page;

/// The state of the art on pages like these (trafilatura, Readability.js: 0.95-0.97); measured
/// 0.952 on the 54 pages (precision 0.937).
const F1_FLOOR: f64 = 0.95;
const PRECISION_FLOOR: f64 = 0.92;
/// Shingle length of the scoring (words, or characters in scripts written without spaces).
const SHINGLE: usize = 4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/content")
}

struct Case {
    name: String,
    kind: String,
    html: String,
    expected: String,
    /// The title, for the pages labelled here (the library suites' labels hold the body only).
    title: Option<String>,
}

fn cases() -> Vec<Case> {
    let index = std::fs::read_to_string(fixtures().join("INDEX.tsv")).expect("INDEX.tsv");
    index
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t');
            let name = cols.next().expect("case").to_string();
            let kind = cols.next().expect("kind").to_string();
            let dir = fixtures().join(&name);
            let html = String::from_utf8_lossy(&std::fs::read(dir.join("source.html")).expect("source.html")).into_owned();
            let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("expected.txt");
            let title = std::fs::read_to_string(dir.join("title.txt")).ok().map(|t| t.trim().to_string());
            Case { name, kind, html, expected, title }
        })
        .collect()
}

/// Scripts written without spaces between words: each character is a token.
fn unspaced(c: char) -> bool {
    matches!(c as u32, 0x0E00..=0x0E7F | 0x1000..=0x109F | 0x3040..=0x30FF | 0x3400..=0x9FFF | 0xAC00..=0xD7AF)
}

/// Markdown without what a reader does not see: image syntax and link targets.
fn visible(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut rest = md;
    while let Some(i) = rest.find(['!', ']']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("![") {
            // `![alt](url)`: the whole image goes.
            match after.find("](").and_then(|j| after[j..].find(')').map(|k| j + k)) {
                Some(end) => rest = &after[end + 1..],
                None => {
                    out.push('!');
                    rest = &tail[1..];
                }
            }
        } else if let Some(after) = tail.strip_prefix("](") {
            out.push(']');
            rest = after.find(')').map_or(after, |k| &after[k + 1..]);
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if unspaced(c) {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            out.push(c.to_string());
        } else if c.is_alphanumeric() {
            word.push(c);
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn shingles(t: &[String]) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if t.len() < SHINGLE {
        if !t.is_empty() {
            *m.entry(t).or_default() += 1;
        }
        return m;
    }
    for w in t.windows(SHINGLE) {
        *m.entry(w).or_default() += 1;
    }
    m
}

/// The Markdown's title heading (`# title`, the first line) and the body below it. The labels
/// hold the body: the title is checked on its own (once, and the right one).
fn split_title(md: &str) -> (Option<&str>, &str) {
    match md.strip_prefix("# ") {
        Some(rest) => {
            let (title, body) = rest.split_once('\n').unwrap_or((rest, ""));
            (Some(title.trim()), body)
        }
        None => (None, md),
    }
}

/// Precision, recall and F1 of `got` against `want`, on shingle multisets.
fn score(got: &str, want: &str) -> (f64, f64, f64) {
    let (g, w) = (tokens(&visible(got)), tokens(want));
    let (g, w) = (shingles(&g), shingles(&w));
    let common: usize = g.iter().map(|(k, n)| (*n).min(w.get(k).copied().unwrap_or(0))).sum();
    let (ng, nw) = (g.values().sum::<usize>(), w.values().sum::<usize>());
    let p = if ng == 0 { 0.0 } else { common as f64 / ng as f64 };
    let r = if nw == 0 { 0.0 } else { common as f64 / nw as f64 };
    let f = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    (p, r, f)
}

#[test]
fn the_scorer_rewards_the_main_text_and_penalises_boilerplate_and_omissions() {
    let want = "the quick brown fox jumps over the lazy dog and runs far away";
    assert_eq!(score(want, want), (1.0, 1.0, 1.0));
    let (p, r, _) = score(&format!("{want} related stories you may also like these other links"), want);
    assert!(p < 0.7 && r == 1.0, "boilerplate lowers precision only: {p} {r}");
    let (p, r, _) = score("the quick brown fox jumps over the lazy", want);
    assert!(p == 1.0 && r < 0.6, "an omission lowers recall only: {p} {r}");
    // Link targets and images are not text a reader sees.
    let (p, _, _) =
        score("[the quick brown fox](https://a.example/x/y/z) jumps over the lazy dog and runs far away ![pic](https://b/c.png)", want);
    assert_eq!(p, 1.0);
    // Scripts without spaces are scored per character.
    assert_eq!(tokens("日本語のテキスト").len(), 8);
}

#[test]
fn main_content_of_the_labelled_pages_scores_at_least_the_floors() {
    let cases = cases();
    assert!(cases.len() >= 40, "the labelled set has {} pages; at least 40 are needed", cases.len());
    let mut rows = Vec::new();
    let mut by_kind: HashMap<String, (usize, f64, f64, f64)> = HashMap::new();
    for c in &cases {
        let t = Instant::now();
        let p = page::process(&c.html, None);
        let cpu = t.elapsed().as_secs_f64() * 1e3;
        let (title, body) = split_title(&p.markdown);
        let (pr, re, f1) = score(body, &c.expected);
        let title = title.unwrap_or_else(|| panic!("{}: the Markdown does not start with the page's title", c.name));
        let headings = p.markdown.lines().filter(|l| l.trim_start_matches('#').trim() == title && l.starts_with('#')).count();
        assert_eq!(headings, 1, "{}: the title `{title}` is a heading {headings} times", c.name);
        if let Some(want) = &c.title {
            let (_, _, tf) = score(title, want);
            assert!(tf >= 0.8, "{}: title `{title}`, labelled `{want}`", c.name);
        }
        if let Some(dir) = std::env::var_os("ATLAS_CONTENT_DUMP") {
            std::fs::write(Path::new(&dir).join(format!("{}.md", c.name)), &p.markdown).expect("dump");
        }
        let e = by_kind.entry(c.kind.clone()).or_default();
        *e = (e.0 + 1, e.1 + pr, e.2 + re, e.3 + f1);
        rows.push((c, pr, re, f1, page::count_tokens(&p.markdown), cpu, p));
    }
    let n = rows.len() as f64;
    let mean = |f: fn(&(f64, f64, f64)) -> f64| rows.iter().map(|r| f(&(r.1, r.2, r.3))).sum::<f64>() / n;
    let (mp, mr, mf) = (mean(|s| s.0), mean(|s| s.1), mean(|s| s.2));
    println!("{:<44} {:>13} {:>5} {:>5} {:>5} {:>7} {:>8} {:>7}", "page", "kind", "P", "R", "F1", "tokens", "html KB", "cpu ms");
    for (c, pr, re, f1, tok, cpu, _) in &rows {
        println!("{:<44} {:>13} {pr:>5.2} {re:>5.2} {f1:>5.2} {tok:>7} {:>8} {cpu:>7.1}", c.name, c.kind, c.html.len() / 1024);
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, (m, p, r, f)) in kinds {
        let m = m as f64;
        println!("kind {k:<13} pages {m:>3} P {:.3} R {:.3} F1 {:.3}", p / m, r / m, f / m);
    }
    let tokens: usize = rows.iter().map(|r| r.4).sum();
    let mut by_size: Vec<_> = rows.iter().map(|r| (r.0.html.len(), r.5)).collect();
    by_size.sort_by_key(|r| r.0);
    let p95 = by_size[((by_size.len() * 95).div_ceil(100)).saturating_sub(1)];
    println!(
        "pages {} mean P {mp:.3} R {mr:.3} F1 {mf:.3}; tokens per page {:.0}; p95 page {} KB took {:.1} ms",
        rows.len(),
        tokens as f64 / n,
        p95.0 / 1024,
        p95.1
    );
    for (c, .., p) in &rows {
        assert!(!p.markdown.contains("](data:") && !p.markdown.contains("(data:"), "{}: a data: URI reached the Markdown", c.name);
        let empty_link = p.markdown.match_indices("[](").any(|(i, _)| !p.markdown[..i].ends_with('!'));
        assert!(!empty_link, "{}: an empty link reached the Markdown", c.name);
    }
    assert!(mf >= F1_FLOOR, "mean F1 {mf:.3} is below {F1_FLOOR}");
    assert!(mp >= PRECISION_FLOOR, "mean precision {mp:.3} is below {PRECISION_FLOOR}");
}
