//! `atlas-codex`: thin entry point. Parses the command line and hands over to [`atlas_codex::cli`].

use clap::Parser;

fn main() {
    let cli = atlas_codex::cli::Cli::parse();
    // Known before anything can echo it: redacted from every error, record and log line.
    for var in ["OPENAI_API_KEY", atlas_codex::settings::WEBHOOK_SECRET_ENV] {
        if let Ok(key) = std::env::var(var) {
            atlas_codex::redact::register(&key);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(atlas_codex::cli::run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", atlas_codex::redact::text(&e.message));
            e.code
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}
