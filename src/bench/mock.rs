//! The OpenAI-compatible mock model the bench calls over HTTP, served by a child process.

use std::time::Duration;

/// The mock model in a child process (`atlas-codex mock-openai`); killed when dropped.
pub(super) struct MockChild {
    /// The child, killed on drop.
    _child: tokio::process::Child,
    /// Its base URL.
    pub(super) url: String,
}

impl MockChild {
    /// Starts the child with answers taking `latency_ms` and reads its base URL.
    pub(super) async fn start(latency_ms: u64) -> Result<MockChild, String> {
        use tokio::io::AsyncBufReadExt;
        if cfg!(not(feature = "testkit")) {
            return Err(
                "`bench --llm http` serves the in-repo OpenAI mock, which this build leaves out (built without the `testkit` feature)"
                    .into(),
            );
        }
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .args(["mock-openai", "--latency-ms", &latency_ms.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the mock model: {e}"))?;
        let stdout = child.stdout.take().ok_or("the mock model has no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "the mock model did not start within 10 s")?
            .map_err(|e| e.to_string())?
            .ok_or("the mock model exited at start")?;
        Ok(MockChild { _child: child, url: url.trim().to_string() })
    }
}

#[cfg(feature = "testkit")]
/// `atlas-codex mock-openai`: serves the mock until SIGTERM or Ctrl-C; prints its base URL.
pub async fn serve_mock(latency_ms: u64) -> Result<(), String> {
    let mock = crate::mock_openai::MockOpenAi::try_start(crate::mock_openai::MockConfig {
        behavior: crate::mock_openai::Behavior { latency: Duration::from_millis(latency_ms), ..Default::default() },
        max_recorded: 0,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    outln!("{}", mock.base_url());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
