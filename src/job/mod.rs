//! The job message producers enqueue, its legacy (seed) form, and the job record the worker keeps.
//!
//! Parsing never panics and never guesses: every problem is a [`MessageError`] naming the field.
//! The wire format is documented in `docs/messages.md` and `docs/job.schema.json`.

mod fields;
mod kinds;
mod message;
mod parse;
mod record;

pub use fields::json_depth;
pub use kinds::{CallOutcome, JobStatus, PendingReason};
pub use message::{Callback, Format, Job, JobId, JobType, MessageError, Source};
pub use parse::{parse_message, salvage_job_id};
pub use record::{Attempt, ChunkProgress, ErrorInfo, JobRecord, Route, Usage};

/// The message version this worker writes and understands.
pub const MESSAGE_VERSION: u32 = 1;
/// The prefix every claim-checked input lives under; an `input_key` outside it is refused.
pub const INPUT_KEY_PREFIX: &str = "inputs/";

/// Largest accepted message body in bytes (SQS's own limit is 256 KiB; larger inputs go by `input_key`).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Hard limits for crawls, whatever a message asks for.
pub const MAX_CRAWL_PAGES: u32 = 100;
/// Deepest crawl a message may ask for.
pub const MAX_CRAWL_DEPTH: u32 = 10;
/// `max_pages` when a message does not give one.
pub const DEFAULT_CRAWL_PAGES: u32 = 10;
/// `max_depth` when a message does not give one.
pub const DEFAULT_CRAWL_DEPTH: u32 = 2;
/// Longest accepted `instructions` text, in bytes.
pub const MAX_INSTRUCTIONS_BYTES: usize = 32 * 1024;
/// Longest `callback_url`, bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;
/// Most caller headers a job may carry.
pub const MAX_HEADERS: usize = 32;
/// Longest header value a job may carry, bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;
