//! What the model is sent: the system message, the user message (instructions, the schema when
//! it does not travel as `response_format`, the page) and the count of every input token billed.

use crate::job::Job;
use crate::llm::ResponseFormat;
use crate::page;

const SYSTEM_PROMPT: &str = "You extract structured data from web pages. Answer with one JSON object only. \
Use only facts present in the page; use null where the page does not say.";

/// Tokens of chat framing the provider bills beyond the message texts: a few per message, a few
/// for the reply's priming, and the `response_format` wrapper (name, `strict`, type). Kept
/// generous: the worst case must never be below what is billed.
pub(crate) const FRAMING_TOKENS: u64 = 32;

/// One job's prompt and its billed input size.
#[derive(Debug, Clone)]
pub(crate) struct Prompt {
    pub(crate) system: String,
    pub(crate) user: String,
    /// Every input token the provider bills for a call with this prompt: both messages, the
    /// strict schema sent in `response_format` (billed as input) and the framing.
    pub(crate) input_tokens: u64,
}

impl Prompt {
    /// The prompt for `job` over `content`. The schema is sent once: in `response_format` when
    /// it is strict, in the user message otherwise (JSON mode).
    pub(crate) fn new(job: &Job, content: &str, format: &ResponseFormat) -> Prompt {
        let system = SYSTEM_PROMPT.to_string();
        let mut user = String::new();
        if let Some(i) = &job.instructions {
            user.push_str("Instructions:\n");
            user.push_str(i);
            user.push_str("\n\n");
        }
        let mut schema_tokens = 0u64;
        match (&job.schema, format) {
            (Some(_), ResponseFormat::JsonSchema { schema, name, .. }) => {
                user.push_str("Answer as JSON matching the response schema.\n\n");
                schema_tokens = page::count_tokens(&schema.to_string()) as u64 + page::count_tokens(name) as u64;
            }
            (Some(sc), _) => {
                user.push_str("Answer as JSON matching this schema:\n");
                user.push_str(&sc.to_string());
                user.push_str("\n\n");
            }
            (None, _) => user.push_str("Answer as a JSON object.\n\n"),
        }
        user.push_str("Page content (Markdown):\n");
        user.push_str(content);
        let input_tokens = page::count_tokens(&system) as u64 + page::count_tokens(&user) as u64 + schema_tokens + FRAMING_TOKENS;
        Prompt { system, user, input_tokens }
    }
}
