//! Long inputs: an input longer than the model's input budget (`llm.max_input_tokens`) is cut
//! into chunks the model reads one call each, and the answers are merged into one result.
//!
//! Chunks follow the input's structure: a crawl page by page (pages share a chunk while they
//! fit), a page section by section (a heading starts a section), a section paragraph by
//! paragraph (fenced code kept whole), a paragraph line by line, and only a single line longer
//! than the budget is cut by tokens. A chunk that continues a crawl page repeats the page's
//! heading, so every call knows which page it reads.
//!
//! Merging ([`merge`]) is guided by the job's schema: objects merge key by key, arrays
//! concatenate without repeating an item (and keep `maxItems`), and a scalar keeps the first
//! chunk's non-null value (the start of a page usually states its title, date and price).

use serde_json::Value;

use super::Processor;
use crate::error::{ErrorKind, JobError};
use crate::job::{self, Job, JobRecord};
use crate::llm::schema;
use crate::page;
use crate::telemetry;

/// One unit of the input: a crawl page's heading (`## Page: url`) and Markdown, or a single
/// page's Markdown with no heading.
pub(crate) struct Unit<'a> {
    pub heading: Option<String>,
    pub markdown: &'a str,
}

/// Tokens kept free in each chunk for the note that says which part it is ([`framed`]).
pub(crate) const FRAME_TOKENS: usize = 40;

/// The whole input as one text: a crawl's pages each under its heading.
pub(crate) fn joined(units: &[Unit<'_>]) -> String {
    units
        .iter()
        .map(|u| match &u.heading {
            Some(h) => format!("{h}\n\n{}", u.markdown),
            None => u.markdown.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Tokens a joint between two pieces may add (a blank line).
const JOINT_TOKENS: usize = 2;

/// The input as chunks of at most `budget` tokens each (counted like the request counts them).
pub(crate) fn split(units: &[Unit<'_>], budget: usize) -> Vec<String> {
    let budget = budget.max(16);
    let mut chunks = Vec::new();
    let mut cur = String::new();
    let mut cur_tokens = 0usize;
    for unit in units {
        let heading = unit.heading.as_deref();
        let heading_tokens = heading.map_or(0, |h| page::count_tokens(h) + JOINT_TOKENS);
        let room = budget.saturating_sub(heading_tokens).max(8);
        let mut first = true;
        for piece in pieces(unit.markdown, room) {
            let t = page::count_tokens(&piece) + JOINT_TOKENS;
            let needs_heading = heading.is_some() && (first || cur_tokens == 0);
            let extra = if needs_heading { heading_tokens } else { 0 };
            if cur_tokens > 0 && cur_tokens + extra + t > budget {
                flush(&mut cur, &mut cur_tokens, &mut chunks);
            }
            if let Some(h) = heading.filter(|_| first || cur_tokens == 0) {
                if !cur.is_empty() {
                    cur.push_str("\n\n");
                }
                cur.push_str(h);
                if !first {
                    cur.push_str(" (continued)");
                }
                cur_tokens += heading_tokens;
            }
            first = false;
            if !cur.is_empty() {
                cur.push_str("\n\n");
            }
            cur.push_str(&piece);
            cur_tokens += t;
        }
        if first {
            // A page with no content still shows up as its heading.
            if let Some(h) = heading {
                if cur_tokens > 0 && cur_tokens + heading_tokens > budget {
                    flush(&mut cur, &mut cur_tokens, &mut chunks);
                }
                if !cur.is_empty() {
                    cur.push_str("\n\n");
                }
                cur.push_str(h);
                cur_tokens += heading_tokens;
            }
        }
    }
    flush(&mut cur, &mut cur_tokens, &mut chunks);
    chunks
}

fn flush(cur: &mut String, cur_tokens: &mut usize, chunks: &mut Vec<String>) {
    if !cur.trim().is_empty() {
        chunks.push(std::mem::take(cur).trim().to_string());
    }
    cur.clear();
    *cur_tokens = 0;
}

/// The Markdown's pieces, each at most `room` tokens, in order, splitting only where needed:
/// sections, then paragraphs, then lines, then tokens.
fn pieces(markdown: &str, room: usize) -> Vec<String> {
    let mut out = Vec::new();
    for section in sections(markdown) {
        if page::count_tokens(&section) + JOINT_TOKENS <= room {
            out.push(section);
            continue;
        }
        for para in paragraphs(&section) {
            if page::count_tokens(&para) + JOINT_TOKENS <= room {
                out.push(para);
                continue;
            }
            for line in para.lines().filter(|l| !l.trim().is_empty()) {
                if page::count_tokens(line) + JOINT_TOKENS <= room {
                    out.push(line.to_string());
                } else {
                    out.extend(page::split_to_tokens(line, room.saturating_sub(JOINT_TOKENS).max(1)));
                }
            }
        }
    }
    pack(out, room)
}

/// Joins consecutive small pieces back together while they fit (a split section's paragraphs
/// travel together again).
fn pack(pieces: Vec<String>, room: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut tokens = 0usize;
    for p in pieces {
        let t = page::count_tokens(&p) + JOINT_TOKENS;
        match out.last_mut() {
            Some(last) if tokens + t <= room => {
                last.push_str("\n\n");
                last.push_str(&p);
                tokens += t;
            }
            _ => {
                out.push(p);
                tokens = t;
            }
        }
    }
    out
}

/// Whether a line opens or closes a fenced code block.
fn is_fence(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("```") || l.starts_with("~~~")
}

/// Sections: a Markdown heading outside code starts a new one.
fn sections(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if is_fence(line) {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') && !cur.trim().is_empty() {
            out.push(std::mem::take(&mut cur).trim().to_string());
        }
        cur.push_str(line);
        cur.push('\n');
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Paragraphs: blank lines outside code separate them.
fn paragraphs(section: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_code = false;
    for line in section.lines() {
        if is_fence(line) {
            in_code = !in_code;
        }
        if !in_code && line.trim().is_empty() {
            if !cur.trim().is_empty() {
                out.push(std::mem::take(&mut cur).trim_end().to_string());
            }
            cur.clear();
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim_end().to_string());
    }
    out
}

/// The note that tells the model which part of the input it reads.
pub(crate) fn framed(chunk: &str, index: usize, count: usize) -> String {
    format!("[Part {} of {count} of the input. Extract what this part holds; leave out what it does not state.]\n\n{chunk}", index + 1)
}

/// The answers of every chunk merged into one (see the module documentation).
pub(crate) fn merge(schema: Option<&Value>, answers: Vec<Value>) -> Value {
    let mut it = answers.into_iter();
    let mut acc = it.next().unwrap_or(Value::Null);
    for next in it {
        merge_into(schema, &mut acc, next);
    }
    acc
}

fn merge_into(schema: Option<&Value>, acc: &mut Value, next: Value) {
    match (acc, next) {
        (acc @ Value::Null, next) => *acc = next,
        (_, Value::Null) => {}
        (Value::Object(a), Value::Object(n)) => {
            for (k, v) in n {
                let sub = schema.and_then(|s| s.get("properties")).and_then(|p| p.get(&k));
                match a.get_mut(&k) {
                    Some(existing) => merge_into(sub, existing, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(n)) => {
            for v in n {
                if !a.contains(&v) {
                    a.push(v);
                }
            }
            if let Some(max) = schema.and_then(|s| s.get("maxItems")).and_then(Value::as_u64) {
                a.truncate(usize::try_from(max).unwrap_or(usize::MAX));
            }
        }
        // A scalar (or a type change between answers): the first chunk's value stays.
        _ => {}
    }
}

/// Largest serialised chunk answers kept on a job record for a retry to resume from (DynamoDB
/// items are at most 400 KB, and the record holds its calls and data too).
const CHUNK_PROGRESS_MAX_BYTES: usize = 64 * 1024;

impl Processor {
    /// An input longer than `llm.max_input_tokens`: one extraction per chunk (this module), each
    /// call reserved, charged and recorded like any other (marked with its chunk), all inside
    /// the job's `max_cost_usd`; the answers merged and validated against the job's schema.
    pub(super) async fn extract_chunked(
        &self,
        job: &Job,
        rec: &mut JobRecord,
        units: &[Unit<'_>],
        whole: &str,
    ) -> Result<(Value, String), JobError> {
        let budget = self.settings.llm.max_input_tokens;
        let chunks = split(units, budget.saturating_sub(FRAME_TOKENS));
        let max = self.settings.llm.max_chunks;
        let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
        if count > max {
            let tokens = page::count_tokens(whole);
            return Err(JobError::permanent(
                ErrorKind::InputTooLong,
                format!(
                    "the input is {tokens} tokens: {count} chunks of llm.max_input_tokens ({budget}), more than llm.max_chunks ({max}); \
                     send `truncate: true` to read only its start"
                ),
            ));
        }
        rec.chunks = Some(count);
        telemetry::input_chunked(count);
        // The chunks' identity (each call frames its chunk from the chunk, its index and the
        // count alone, so the chunks and their count are what was sent).
        let input = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(chunks.len().to_le_bytes());
            for c in &chunks {
                h.update(c.as_bytes());
                h.update([0]);
            }
            hex::encode(h.finalize())
        };
        // An earlier attempt that failed part-way over the same chunks: resume after them.
        let (mut answers, mut model) = match rec.chunk_progress.clone() {
            Some(p) if p.input == input && p.answers.len() < chunks.len() => (p.answers, p.model),
            _ => (Vec::with_capacity(chunks.len()), String::new()),
        };
        let mut kept_bytes = serde_json::to_vec(&answers).map_or(0, |b| b.len());
        for (i, c) in chunks.iter().enumerate().skip(answers.len()) {
            let before = rec.calls.len();
            let out = self.extract(job, rec, &framed(c, i, chunks.len())).await;
            for call in rec.calls.iter_mut().skip(before) {
                call.chunk = Some(u32::try_from(i + 1).unwrap_or(u32::MAX));
            }
            let (data, m) = out?;
            kept_bytes = kept_bytes.saturating_add(serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len() + 1));
            answers.push(data);
            model = m;
            // Kept on the record (written with the attempt's outcome) while it stays small: a
            // record must fit one DynamoDB item. Past the bound the earlier prefix stays.
            if kept_bytes <= CHUNK_PROGRESS_MAX_BYTES {
                rec.chunk_progress = Some(job::ChunkProgress { input: input.clone(), answers: answers.clone(), model: model.clone() });
            }
        }
        rec.chunk_progress = None;
        let data = merge(job.schema.as_ref(), answers);
        if let Some(schema) = &job.schema {
            schema::validate(schema, &data).map_err(|errors| {
                JobError::permanent(
                    ErrorKind::MergeInvalid,
                    format!("the {count} chunks' answers merged do not match the schema: {}", errors.join("; ")),
                )
            })?;
        }
        Ok((data, model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn single(md: &str) -> Vec<Unit<'_>> {
        vec![Unit { heading: None, markdown: md }]
    }

    #[test]
    fn an_input_within_the_budget_is_one_chunk() {
        let md = "# Title\n\nShort text.\n\n## More\n\nAnother paragraph.";
        assert_eq!(split(&single(md), 1_000), vec![md.to_string()]);
    }

    #[test]
    fn a_long_page_is_split_on_its_sections_and_loses_nothing() {
        let md: String = (0..40).map(|i| format!("## Section {i}\n\n{}\n\n", format!("word{i} ").repeat(60))).collect();
        let chunks = split(&single(&md), 300);
        assert!(chunks.len() > 5, "{}", chunks.len());
        for c in &chunks {
            assert!(page::count_tokens(c) <= 300, "{} tokens", page::count_tokens(c));
            assert!(c.starts_with("## Section"), "a chunk starts at a heading: {}", &c[..40]);
        }
        for i in 0..40 {
            assert_eq!(chunks.iter().filter(|c| c.contains(&format!("## Section {i}\n"))).count(), 1, "section {i} once");
        }
        let words = |s: &str| s.split_whitespace().filter(|w| w.starts_with("word")).count();
        assert_eq!(chunks.iter().map(|c| words(c)).sum::<usize>(), words(&md));
    }

    #[test]
    fn a_single_huge_line_is_cut_by_tokens_and_code_fences_stay_whole_when_they_fit() {
        let line = "x".repeat(20_000);
        let chunks = split(&single(&line), 500);
        assert!(chunks.len() >= 3 && chunks.iter().all(|c| page::count_tokens(c) <= 500));
        assert_eq!(chunks.concat().len(), 20_000, "nothing lost");
        let md = format!("{}\n\n```\ncode line one\n\ncode line two\n```\n\ntail", "para words here. ".repeat(40));
        let chunks = split(&single(&md), 200);
        assert!(chunks.iter().any(|c| c.contains("```\ncode line one\n\ncode line two\n```")), "{chunks:?}");
    }

    #[test]
    fn crawl_pages_share_chunks_and_a_continued_page_repeats_its_heading() {
        let long = "long page text. ".repeat(200);
        let units = vec![
            Unit { heading: Some("## Page: https://a/1".into()), markdown: "one" },
            Unit { heading: Some("## Page: https://a/2".into()), markdown: "two" },
            Unit { heading: Some("## Page: https://a/3".into()), markdown: &long },
            Unit { heading: Some("## Page: https://a/4".into()), markdown: "" },
        ];
        let chunks = split(&units, 400);
        assert!(chunks[0].contains("https://a/1") && chunks[0].contains("https://a/2"), "small pages together");
        let with3 = chunks.iter().filter(|c| c.contains("## Page: https://a/3")).count();
        assert!(with3 >= 2, "the long page spans chunks, each naming it: {chunks:?}");
        assert!(chunks.iter().any(|c| c.contains("https://a/3 (continued)")));
        assert!(chunks.iter().any(|c| c.contains("https://a/4")), "an empty page still appears");
        assert!(chunks.iter().all(|c| page::count_tokens(c) <= 400));
    }

    #[test]
    fn answers_merge_by_the_schema() {
        let schema = json!({"type": "object", "properties": {
            "title": {"type": "string"}, "tags": {"type": "array", "maxItems": 3},
            "price": {"type": ["number", "null"]}, "nested": {"type": "object", "properties": {"items": {"type": "array"}}}}});
        let merged = merge(
            Some(&schema),
            vec![
                json!({"title": "First", "tags": ["a", "b"], "price": null, "nested": {"items": [1]}}),
                json!({"title": "Second", "tags": ["b", "c", "d"], "price": 9.5, "nested": {"items": [1, 2]}, "extra": true}),
            ],
        );
        assert_eq!(merged, json!({"title": "First", "tags": ["a", "b", "c"], "price": 9.5, "nested": {"items": [1, 2]}, "extra": true}));
        assert_eq!(merge(None, vec![json!([1, 2]), json!([2, 3])]), json!([1, 2, 3]));
        assert_eq!(merge(None, vec![]), Value::Null);
    }
}
