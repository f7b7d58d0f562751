//! Token counting, splitting and truncation under the o200k_base encoding.

use std::sync::OnceLock;

/// The o200k_base encoding, loaded once; `None` if it cannot be (it is compiled in).
fn bpe() -> Option<&'static tiktoken_rs::CoreBPE> {
    static BPE: OnceLock<Option<tiktoken_rs::CoreBPE>> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().ok()).as_ref()
}

/// Tokens in `text` under the o200k_base encoding (the GPT-4o / GPT-5 family). Special-token
/// strings in page content are counted as ordinary text. If the encoding cannot be loaded (it is
/// compiled in, so this should not happen) it estimates one token per 4 bytes.
pub fn count_tokens(text: &str) -> usize {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len(),
        None => text.len().div_ceil(4),
    }
}

/// Cuts `text` into consecutive pieces of at most `max_tokens` tokens each (o200k_base), in
/// order and without losing a byte: the last resort of chunking a line longer than the model's
/// input budget (`process::chunk`).
pub fn split_to_tokens(text: &str, max_tokens: usize) -> Vec<String> {
    let max_tokens = max_tokens.max(1);
    let Some(b) = bpe() else {
        // No tokenizer: about four bytes a token, cut on character boundaries.
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = rest.len().min(max_tokens.saturating_mul(4));
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        return out;
    };
    let tokens = b.encode_ordinary(text);
    let mut out = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    for window in tokens.chunks(max_tokens) {
        let mut bytes = std::mem::take(&mut carry);
        bytes.extend(b.decode_bytes(window).unwrap_or_default());
        // A character split between two windows goes with the next one.
        let valid = match std::str::from_utf8(&bytes) {
            Ok(_) => bytes.len(),
            Err(e) => e.valid_up_to(),
        };
        carry = bytes.split_off(valid);
        out.push(String::from_utf8(bytes).unwrap_or_default());
    }
    if !carry.is_empty() {
        out.push(String::from_utf8_lossy(&carry).into_owned());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Cuts `markdown` so that it, plus a note saying so, fits in `max_tokens` (o200k_base); returns
/// the text and whether it was cut. The note reads `[content truncated to N of M tokens]`. When
/// `max_tokens` is smaller than the note itself, the note alone is returned.
pub fn truncate_to_tokens(markdown: &str, max_tokens: usize) -> (String, bool) {
    let Some(b) = bpe() else {
        let limit = max_tokens.saturating_mul(4);
        if markdown.len() <= limit {
            return (markdown.to_string(), false);
        }
        let mut cut = limit.min(markdown.len());
        while !markdown.is_char_boundary(cut) {
            cut -= 1;
        }
        return (format!("{}\n\n[content truncated to about {max_tokens} tokens]", &markdown[..cut]), true);
    };
    let tokens = b.encode_ordinary(markdown);
    let total = tokens.len();
    if total <= max_tokens {
        return (markdown.to_string(), false);
    }
    let probe = format!("\n\n[content truncated to {max_tokens} of {total} tokens]");
    let keep = max_tokens.saturating_sub(b.encode_ordinary(&probe).len());
    let bytes = b.decode_bytes(&tokens[..keep]).unwrap_or_default();
    // Only the tail can hold a partial UTF-8 sequence; cut it off.
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t.to_string(),
        Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
    };
    let text = text.trim_end();
    let note = format!("[content truncated to {keep} of {total} tokens]");
    if text.is_empty() {
        (note, true)
    } else {
        (format!("{text}\n\n{note}"), true)
    }
}
