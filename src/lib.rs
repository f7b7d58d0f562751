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
//! | [`settings`] | the config tree (`tree.rs`), its defaults (`defaults.rs`), layering and the seed's switches (`load.rs`), validation (`validate.rs`), stage isolation (`isolation.rs`) |
//! | [`job`] | the job message (`message.rs`) and its parse, current + legacy (`parse.rs`, `fields.rs`), the job record (`record.rs`), the domain enums with `as_str()` (`kinds.rs`) |
//! | [`error`] | [`error::JobError`] and its disposition: retry, dead-letter, defer, fail |
//! | [`worker`] | receive loop, permits before receive (`receive.rs`) → one task per message (`task.rs`: a `LeaseGuard` whose heartbeat stops when dropped, `lease.rs`; the verdict carried out) → batched deletes (`deletes.rs`); drain (`drain.rs`); backend monitor (`monitor.rs`) |
//! | [`process`] | one job end to end, a straight line of stage files: claim (`mod.rs`) → input (`input.rs`: fetch, crawl, inline, claim check, inside the process's input memory) → extract (`extract.rs`: route, then calls until an answer validates) → one paid call (`call.rs`: job cap → budget hold → rate limit → `sent` on the record → call → charge) → the next model when it failed (`choice.rs`: escalate, larger cap after `length`, fall back) → long inputs (`chunk.rs`) → the result document (`result.rs`) → finish → announce (`announce.rs`); the prompt and its billed token count in `prompt.rs` |
//! | [`fetch`] | SSRF-safe HTTP fetch: address rules (`address.rs`), checked DNS (`resolve.rs`), pinned connections, redirects re-checked (`redirect.rs`), capped bodies (`body.rs`), caller headers (`headers.rs`), errors (`error.rs`) |
//! | [`page`] | HTML → bounded scan (`scan.rs`) → cleaning (`clean.rs`) → main content (`readable.rs`, `main_content.rs`) → Markdown (`markdown.rs`), metadata and JSON-LD (`metadata.rs`), links (`links.rs`); token counting and truncation (`tokens.rs`) |
//! | [`crawl`] | breadth-first same-host crawls with robots.txt and politeness |
//! | [`route`] | complexity score, tier choice per stage, escalation and fallback chains |
//! | [`budget`] | fleet-wide monthly budget as budget leases: slices leased from the ledger (`lease.rs`), calls held (`reserve.rs`, `hold.rs`) and charged in memory (`settle.rs`), leases returned (`give_back.rs`) or recovered after they lapse (`recover.rs`); job caps (`job_cap.rs`) |
//! | [`pricing`] | price table maths in integer micro-USD |
//! | [`ratelimit`] | per-model RPM/TPM limits for the whole fleet: capacity leased in batches from shared windows (`ratelimit/fleet.rs`), a per-process GCRA share when the store is down, 429 and `x-ratelimit-*` corrections |
//! | [`backend`] | the storage seams (`Queue`, `JobStore`, `BudgetLedger`, `RateStore`, `ArtifactStore`) and their contracts: SQLite (`local/{db,queue,jobs,ledger,artifacts}.rs`) and AWS (`aws/sqs/`, `aws/dynamo/{jobs,ledger,month}.rs`, `aws/s3.rs`, `aws/rate.rs`); the queue protocol's limits, once (`limits.rs`) |
//! | [`llm`] | the `LlmClient` seam: OpenAI-compatible provider, simulated provider, strict-schema adaptation |
//! | [`events`] | job end events: one per end, written with the end, published to the stage's topic (or the local events file), repaired after a crash |
//! | [`webhook`] | signed webhooks to a job's `callback_url`: SSRF-guarded, retried with backoff, never holding the job |
//! | [`sweep`] | marks records a dead worker left `processing` at the queue's receive limit as `failed` (`receive_limit`) |
//! | [`mock_openai`] | an OpenAI-compatible mock server that bills as OpenAI does and reports its bill (tests, benchmark): routes and decisions (`server.rs`), answers (`answer.rs`), one key's RPM/TPM (`limits.rs`), the bill (`bill.rs`), runtime control (`handle.rs`) |
//! | [`telemetry`] | logs (`logs.rs`) and metrics (names in `mod.rs`, descriptions in `describe.rs`, the recorder in `recorder.rs`); one function per outcome emits both, one file per area (`jobs.rs`, `queue.rs`, `llm.rs`, `budget.rs`, `ratelimit.rs`, `delivery.rs`) |
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
#[cfg(feature = "testkit")]
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
