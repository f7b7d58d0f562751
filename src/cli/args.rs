//! The clap definitions: global options, the commands and their arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Atlas Codex: a queue-driven LLM extraction worker.
#[derive(Debug, Parser)]
#[command(name = "atlas-codex", version, about, long_about = None)]
pub struct Cli {
    /// Deployment stage (local, preview, production); `STAGE` when absent, else `local`.
    #[arg(long, global = true, env = "STAGE")]
    pub stage: Option<String>,
    /// Extra config file layered over config/{stage}.toml.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    Table,
    /// For scripts.
    Json,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker: long-poll the stage's queue and process jobs until SIGTERM.
    Worker {
        /// Exit 0 once the queue is empty and nothing is in flight.
        #[arg(long)]
        exit_when_idle: bool,
    },
    /// Enqueue jobs: one JSON message or JSON lines, from FILE or `-` (stdin). Prints one job id per line.
    Submit {
        /// Input file; `-` or absent reads stdin.
        file: Option<String>,
    },
    /// Show one job's record.
    Status {
        /// The job id.
        job_id: String,
    },
    /// Check configuration; with --all-stages, also that no two stages share a resource.
    Validate {
        /// Load every shipped stage and check isolation between them.
        #[arg(long)]
        all_stages: bool,
    },
    /// Show this month's budget: limit, spent, reserved, remaining, by model and tenant.
    Budget,
    /// Inspect or redrive the dead-letter queue.
    Dlq {
        /// What to do with the DLQ.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Create the stage's queue, DLQ, tables and bucket (idempotent; AWS stages).
    Provision,
    /// Run the sample jobs end to end on the embedded `local` stage.
    Demo,
    /// Measure throughput, CPU, latency and memory with a mock LLM, on the embedded backend or
    /// on AWS (an emulator such as moto), beside an optional Python baseline.
    Bench(crate::bench::BenchArgs),
    /// Serve the in-repo OpenAI-compatible mock on 127.0.0.1 (benchmarks, trying things out):
    /// prints its base URL, then serves until SIGTERM / Ctrl-C.
    #[cfg(feature = "testkit")]
    #[command(hide = true)]
    MockOpenai {
        /// Latency of every answer, milliseconds.
        #[arg(long, default_value_t = 500)]
        latency_ms: u64,
    },
    /// Print a shell completion script (e.g. `atlas-codex completions bash > /etc/bash_completion.d/atlas-codex`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `atlas-codex man > atlas-codex.1`.
    Man,
}

/// DLQ actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List messages without consuming them.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 10)]
        max: usize,
    },
    /// Move messages back to the queue: by default those that failed for a reason that may pass
    /// now (`receive_limit`, `retries_exhausted`); permanent failures stay unless named. Looks at
    /// no more messages than the DLQ held when it started, so it ends even while a worker
    /// dead-letters them again.
    Redrive {
        /// At most this many (all selected when absent).
        #[arg(long)]
        max: Option<u64>,
        /// Only failures of this kind (repeatable; e.g. `model_forbidden`, `receive_limit`).
        #[arg(long = "reason", value_name = "KIND", conflicts_with = "all")]
        reasons: Vec<String>,
        /// Every message, permanent failures included.
        #[arg(long)]
        all: bool,
        /// Only say what would move.
        #[arg(long)]
        dry_run: bool,
    },
}
