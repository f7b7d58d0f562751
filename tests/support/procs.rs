//! The real `atlas-codex` binary as child processes, for end-to-end and chaos tests.
//!
//! Every child gets an explicit environment ([`ProcEnv`]): nothing is inherited but `PATH`, so a
//! developer's `OPENAI_API_KEY`, `STAGE`, `ATLAS__*` or AWS profile can never leak into a test.
//! Worker output goes to a log file (a pipe nobody reads would fill up and stall the worker).
//! [`WorkerProc`] can be killed with SIGKILL, stopped with SIGTERM, and waited for with a bound;
//! dropping it kills a still-running child, so a failing test leaves no stray workers behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use atlas_codex::settings::{Settings, Sources};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_atlas-codex")
}

/// The crate root (children run there so `config/` is found).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The environment a child process runs with (and the settings it will load from it).
#[derive(Debug, Clone, Default)]
pub struct ProcEnv {
    /// Variables given to the child, exactly.
    pub vars: BTreeMap<String, String>,
}

impl ProcEnv {
    /// Only `PATH` (and `HOME`, which some libraries expect) from the test's environment.
    pub fn new() -> ProcEnv {
        let mut vars = BTreeMap::new();
        for k in ["PATH", "HOME"] {
            if let Ok(v) = std::env::var(k) {
                vars.insert(k.to_string(), v);
            }
        }
        ProcEnv { vars }
    }

    /// An AWS stage against a moto endpoint: static test credentials, `us-east-1`, no instance
    /// metadata lookups, admin server off, short long polls, JSON logs at `info`.
    pub fn moto(endpoint: &str) -> ProcEnv {
        ProcEnv::new()
            .set("ATLAS__AWS__ENDPOINT_URL", endpoint)
            .set("ATLAS__AWS__REGION", "us-east-1")
            .set("AWS_REGION", "us-east-1")
            .set("AWS_ACCESS_KEY_ID", "testing")
            .set("AWS_SECRET_ACCESS_KEY", "testing")
            .set("AWS_EC2_METADATA_DISABLED", "true")
            .set("ATLAS__ADMIN__LISTEN", "")
            .set("ATLAS__QUEUE__WAIT_TIME_SECS", "1")
            .set("ATLAS__TELEMETRY__LOG_FORMAT", "json")
            .set("ATLAS__TELEMETRY__LOG_LEVEL", "info")
    }

    /// The OpenAI provider pointed at a mock server (`base_url` as `MockOpenAi::base_url`).
    pub fn openai_mock(self, base_url: &str, api_key: &str) -> ProcEnv {
        self.set("ATLAS__LLM__PROVIDER", "openai").set("OPENAI_BASE_URL", base_url).set("OPENAI_API_KEY", api_key)
    }

    /// Stage resources private to one run: `atlas-codex-{queue,dlq,jobs,budget,artifacts}-{stage}-{suffix}`,
    /// so a test's queue, tables and bucket never meet another test's (or an earlier run's).
    pub fn private_resources(self, stage: &str, suffix: &str) -> ProcEnv {
        self.set("ATLAS__QUEUE__NAME", &format!("atlas-codex-queue-{stage}-{suffix}"))
            .set("ATLAS__QUEUE__DLQ_NAME", &format!("atlas-codex-dlq-{stage}-{suffix}"))
            .set("ATLAS__STORAGE__JOBS_TABLE", &format!("atlas-codex-jobs-{stage}-{suffix}"))
            .set("ATLAS__STORAGE__BUDGET_TABLE", &format!("atlas-codex-budget-{stage}-{suffix}"))
            .set("ATLAS__STORAGE__BUCKET", &format!("atlas-codex-artifacts-{stage}-{suffix}"))
            .set("ATLAS__EVENTS__TOPIC", &format!("atlas-codex-events-{stage}-{suffix}"))
    }

    /// Sets one variable.
    pub fn set(mut self, key: &str, value: &str) -> ProcEnv {
        self.vars.insert(key.to_string(), value.to_string());
        self
    }

    /// The settings a child of `stage` loads from this environment (same files, same overrides).
    pub fn settings(&self, stage: &str) -> Settings {
        let src =
            Sources { stage: Some(stage.to_string()), config_dir: crate_dir().join("config"), extra_file: None, env: self.vars.clone() };
        Settings::load(&src).unwrap_or_else(|e| panic!("settings of stage {stage} invalid: {e}"))
    }

    /// `atlas-codex --stage STAGE ARGS...` with exactly this environment, run in the crate root.
    pub fn command(&self, stage: &str, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(bin());
        c.env_clear().envs(&self.vars).current_dir(crate_dir()).arg("--stage").arg(stage).args(args);
        c
    }
}

/// What a finished CLI command printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both streams unless the command exited 0.
    pub fn ok(self, what: &str) -> CliOutput {
        assert_eq!(self.code, Some(0), "{what} failed\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    /// Standard output parsed as JSON (panics with the text when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }
}

/// Runs a CLI command to completion (killed after `timeout`), feeding `stdin` when given.
pub async fn run_cli(env: &ProcEnv, stage: &str, args: &[&str], stdin: Option<&str>, timeout: Duration) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut cmd = env.command(stage, args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin()));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => CliOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("`atlas-codex --stage {stage} {}` could not be waited for: {e}", args.join(" ")),
        Err(_) => panic!("`atlas-codex --stage {stage} {}` did not finish within {timeout:?}", args.join(" ")),
    }
}

/// A worker (or any long-running command) as a child process with its output in a log file.
pub struct WorkerProc {
    /// A name for messages (`preview`, `w2#3` ...).
    pub name: String,
    child: std::process::Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl WorkerProc {
    /// Starts `atlas-codex --stage STAGE ARGS...`, stdout and stderr appended to `log`.
    pub fn spawn(env: &ProcEnv, stage: &str, args: &[&str], log: &Path, name: &str) -> WorkerProc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log handle");
        let mut c = std::process::Command::new(bin());
        c.env_clear()
            .envs(&env.vars)
            .current_dir(crate_dir())
            .arg("--stage")
            .arg(stage)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = c.spawn().unwrap_or_else(|e| panic!("cannot start worker {name}: {e}"));
        WorkerProc { name: name.to_string(), child, log: log.to_path_buf(), exited: None }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status once the child has exited (non-blocking).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGKILL, then reap. No-op when it already exited.
    pub fn kill9(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Sends SIGTERM (the graceful drain); does not wait.
    pub fn sigterm(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let pid = self.pid().to_string();
        let ok = std::process::Command::new("kill").args(["-TERM", &pid]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok || self.try_status().is_some(), "could not send SIGTERM to {} (pid {pid})", self.name);
    }

    /// Waits up to `timeout` for the child to exit (polling, so async tests keep running).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for exit and asserts exit code 0 (panics with the log tail otherwise).
    pub async fn expect_clean_exit(&mut self, timeout: Duration) {
        match self.wait_exit(timeout).await {
            Some(s) if s.code() == Some(0) => {}
            Some(s) => panic!("worker {} exited with {s}; log tail:\n{}", self.name, self.log_tail(40)),
            None => {
                self.kill9();
                panic!("worker {} did not exit within {timeout:?}; log tail:\n{}", self.name, self.log_tail(40))
            }
        }
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
