//! The `atlas-codex` command line. Output is a table for people or JSON (`--output json`) for
//! scripts. Exit codes: 0 ok, 1 failure, 2 bad usage or invalid configuration, 3 not found.

mod args;
mod budget;
mod dlq;
mod provision;
mod status;
mod submit;
mod validate;
mod worker;

pub use args::{Cli, Command, DlqAction, Output};
pub use status::{list_jobs, wait_terminal};

use crate::settings::{Settings, Sources};

/// Exit code for bad usage or invalid configuration.
pub const EXIT_USAGE: i32 = 2;
/// Exit code when the thing asked about does not exist.
pub const EXIT_NOT_FOUND: i32 = 3;

/// An error with its exit code.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl CliError {
    fn new(code: i32, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into() }
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::new(1, e.to_string())
}

/// Writes one line of command output (see `outln!`): a closed stdout ends the process with
/// exit 0, any other write error with exit 1 and one line on stderr.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Loads settings for the CLI's stage, mapping problems to exit code 2.
pub fn load_settings(cli: &Cli) -> Result<Settings, CliError> {
    Settings::load(&Sources::from_env(cli.stage.clone(), cli.config.clone())).map_err(|e| CliError::new(EXIT_USAGE, e.to_string()))
}

/// Runs a parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match &cli.command {
        Command::Validate { all_stages } => validate::validate(&cli, *all_stages),
        Command::Demo => crate::demo::run(cli.output == Output::Json).await.map_err(fail),
        Command::Bench(args) => crate::bench::run(args.clone(), cli.output == Output::Json).await.map_err(fail),
        #[cfg(feature = "testkit")]
        Command::MockOpenai { latency_ms } => crate::bench::serve_mock(*latency_ms).await.map_err(fail),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut <Cli as clap::CommandFactory>::command(), "atlas-codex", &mut out);
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(())
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut out).map_err(fail)?;
            outln!("{}", String::from_utf8_lossy(&out).trim_end());
            Ok(())
        }
        _ => {
            let settings = load_settings(&cli)?;
            crate::telemetry::init_tracing(&settings.telemetry);
            match &cli.command {
                Command::Worker { exit_when_idle } => worker::worker(settings, *exit_when_idle).await,
                Command::Submit { file } => submit::submit(&cli, settings, file.as_deref()).await,
                Command::Status { job_id } => status::status(&cli, settings, job_id).await,
                Command::Budget => budget::budget(&cli, settings).await,
                Command::Dlq { action } => dlq::dlq(&cli, settings, action).await,
                Command::Provision => provision::provision(&cli, settings).await,
                _ => unreachable!("handled above"),
            }
        }
    }
}
