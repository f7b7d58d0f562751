//! HTML → Markdown conversion and the Markdown's tidying (blank lines, table padding).

/// HTML → Markdown with `htmd` (dash bullets, dashed rules; scripts, forms and chrome skipped).
pub(super) fn to_markdown(html: &str) -> String {
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
pub(super) fn tidy(md: &str) -> String {
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
