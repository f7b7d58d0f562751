//! # Atlas Codex worker
//!
//! A queue-driven LLM extraction worker: it long-polls its stage's queue, runs many jobs at once,
//! fetches and cleans pages, asks a model for JSON that must validate against the job's schema,
//! keeps the fleet inside its monthly budget and the provider's rate limits, and writes the job
//! record and result exactly once in effect despite redelivery. `docs/design.md` tells a
//! message's life; this is the map of the code.
//!
//! ## Module map
//! | module | concern |
//! |---|---|
//! | [`settings`] | the config tree, layering, the seed's switches, validation, stage isolation |
//! | [`job`] | the job message (current + legacy), parse errors, the job record and its states |
//! | [`error`] | [`error::JobError`] and its disposition: retry, dead-letter, defer, fail |
//! | [`worker`] | receive loop → semaphore → one task per message (heartbeat, settle the message) → batched deletes; drain |
//! | [`process`] | one job end to end: claim → input → page → route → paid call (`process/call.rs`: job cap → budget hold → rate limit → `sent` on the record → call → charge) → validate, and the next model when it failed (`process/choice.rs`: escalate, larger cap after `length`, fall back) → store (`process/result.rs`, the result document) → finish → announce (`process/announce.rs`); the prompt and its billed token count in `process/prompt.rs` |
//! | [`fetch`] | SSRF-safe HTTP fetch: checked DNS, pinned connections, redirects re-checked, capped bodies |
//! | [`page`] | HTML → main content → Markdown, metadata, JSON-LD, links; token counting and truncation |
//! | [`crawl`] | breadth-first same-host crawls with robots.txt and politeness |
//! | [`route`] | complexity score, tier choice per stage, escalation and fallback chains |
//! | [`budget`] | fleet-wide monthly budget as budget leases: slices leased from the ledger, calls held and charged in memory, leases returned; job caps |
//! | [`pricing`] | price table maths in integer micro-USD |
//! | [`ratelimit`] | per-model RPM/TPM limits for the whole fleet: capacity leased in batches from shared windows (`ratelimit/fleet.rs`), a per-process GCRA share when the store is down, 429 and `x-ratelimit-*` corrections |
//! | [`backend`] | the storage seams (`Queue`, `JobStore`, `BudgetLedger`, `RateStore`, `ArtifactStore`): SQLite (`local`) and AWS |
//! | [`llm`] | the `LlmClient` seam: OpenAI-compatible provider, simulated provider, strict-schema adaptation |
//! | [`events`] | job end events: one per end, written with the end, published to the stage's topic (or the local events file), repaired after a crash |
//! | [`webhook`] | signed webhooks to a job's `callback_url`: SSRF-guarded, retried with backoff, never holding the job |
//! | [`sweep`] | marks records a dead worker left `processing` at the queue's receive limit as `failed` (`receive_limit`) |
//! | [`mock_openai`] | an OpenAI-compatible mock server that bills as OpenAI does and reports its bill (tests, benchmark) |
//! | [`telemetry`] | logs and metrics; one function per outcome emits both |
//! | [`admin`] | `/metrics`, `/healthz`, `/readyz` |
//! | [`app`] | wiring: settings → backends, provider, processor, worker, admin server |
//! | [`cli`], [`demo`], [`mod@bench`] | the `atlas-codex` commands |

/// `println!` for command output that ends the process quietly (exit 0) when stdout is closed
/// (`atlas-codex ... | head`), where `println!` would panic.
macro_rules! outln {
    () => { $crate::cli::write_line(format_args!("")) };
    ($($t:tt)*) => { $crate::cli::write_line(format_args!($($t)*)) };
}

pub mod admin;
pub mod app;
pub mod backend;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod crawl;
pub mod demo;
pub mod error;
pub mod events;
pub mod fetch;
pub mod job;
pub mod llm;
pub mod mock_openai;
pub mod page;
pub mod pricing;
pub mod process;
pub mod ratelimit;
pub mod redact;
pub mod route;
pub mod settings;
pub mod sweep;
pub mod telemetry;
pub mod webhook;
pub mod worker;
