//! # Atlas Codex worker
//!
//! A queue-driven LLM extraction worker: it long-polls its stage's queue, runs many jobs at once,
//! fetches and cleans pages, asks a model for JSON that must validate against the job's schema,
//! keeps the fleet inside its monthly budget, and writes the job record and result exactly once in
//! effect despite redelivery.
//!
//! ## Module map
//! | module | concern |
//! |---|---|
//! | [`settings`] | the config tree, layering, the seed's switches, validation, stage isolation |
//! | [`job`] | the job message (current + legacy), parse errors, the job record |
//! | [`error`] | [`error::JobError`] and its disposition: retry, dead-letter, defer |
//! | [`backend`] | the storage seams (`Queue`, `JobStore`, `BudgetLedger`, `ArtifactStore`) |
//! | [`llm`] | the `LlmClient` seam and its providers |
//! | [`pricing`] | price table maths in micro-USD |

pub mod backend;
pub mod error;
pub mod job;
pub mod llm;
pub mod pricing;
pub mod settings;
pub mod telemetry;
pub mod admin;
pub mod budget;
pub mod ratelimit;
pub mod route;
pub mod fetch;
pub mod page;
pub mod mock_openai;
pub mod crawl;
pub mod app;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod process;
pub mod worker;
