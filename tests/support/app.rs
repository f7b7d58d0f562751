//! `spawn_app()`: the real app (settings → SQLite backends → processor → worker) with test config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use atlas_codex::app::App;
use atlas_codex::backend::Backends;
use atlas_codex::job::JobRecord;
use atlas_codex::llm::{simulated::SimulatedClient, LlmClient, LlmError, LlmRequest, LlmResponse};
use atlas_codex::settings::{Settings, Sources};
use atlas_codex::worker::{RunOptions, RunStats};

/// The repo's config directory.
pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Local-stage settings in a fresh temp dir, with `overrides` as `ATLAS__...` variables.
pub fn test_settings(dir: &std::path::Path, overrides: &[(&str, &str)]) -> Settings {
    let mut env = BTreeMap::new();
    env.insert("ATLAS__STORAGE__DATA_DIR".to_string(), dir.display().to_string());
    env.insert("ATLAS__ADMIN__LISTEN".to_string(), String::new());
    env.insert("ATLAS__QUEUE__WAIT_TIME_SECS".to_string(), "1".to_string());
    env.insert("ATLAS__LLM__PROVIDER".to_string(), "simulated".to_string());
    env.insert("ATLAS__TELEMETRY__LOG_LEVEL".to_string(), "warn".to_string());
    env.insert("ATLAS__CRAWL__POLITENESS_DELAY_MS".to_string(), "0".to_string());
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    let src = Sources { stage: Some("local".into()), config_dir: config_dir(), extra_file: None, env };
    let mut s = Settings::load(&src).unwrap_or_else(|e| panic!("test settings invalid: {e}"));
    for m in s.models.values_mut() {
        m.rpm = 0;
        m.tpm = 0;
    }
    s
}

/// An LLM client wrapper that counts calls and can fail on purpose.
pub struct ScriptedLlm {
    /// The answering client.
    pub inner: Arc<dyn LlmClient>,
    /// Calls made (including failed ones).
    pub calls: AtomicUsize,
    /// Fail this many calls first with a 500.
    pub fail_first: AtomicU32,
    /// Fail every call with a 500.
    pub always_fail: bool,
    /// Models called, in order.
    pub models: Mutex<Vec<String>>,
}

impl ScriptedLlm {
    /// A simulated model with `latency`, failing the first `fail_first` calls.
    pub fn new(latency: Duration, fail_first: u32, always_fail: bool) -> Arc<ScriptedLlm> {
        Arc::new(ScriptedLlm {
            inner: Arc::new(SimulatedClient::new(latency)),
            calls: AtomicUsize::new(0),
            fail_first: AtomicU32::new(fail_first),
            always_fail,
            models: Mutex::new(Vec::new()),
        })
    }
    /// Calls so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl LlmClient for ScriptedLlm {
    async fn complete(&self, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.models.lock().unwrap().push(request.model.clone());
        let failing = self.always_fail || self.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if failing {
            return Err(LlmError::Server { status: 500, message: "scripted failure".into() });
        }
        self.inner.complete(request).await
    }
    fn name(&self) -> &'static str {
        "simulated"
    }
}

/// A running test app over a temp dir.
pub struct TestApp {
    /// Keeps the data dir alive.
    pub dir: tempfile::TempDir,
    /// The app.
    pub app: Arc<App>,
    /// Its backends.
    pub backends: Backends,
}

/// Builds the real app over a fresh temp dir with `overrides` and the given model client.
pub async fn spawn_app(overrides: &[(&str, &str)], llm: Arc<dyn LlmClient>) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    spawn_app_in(dir, overrides, llm).await
}

/// Like [`spawn_app`], over an existing dir (several apps can share one SQLite file).
pub async fn spawn_app_in(dir: tempfile::TempDir, overrides: &[(&str, &str)], llm: Arc<dyn LlmClient>) -> TestApp {
    let settings = test_settings(dir.path(), overrides);
    let backends = atlas_codex::app::open_backends(&settings).await.expect("backends");
    let app = App::new(Arc::new(settings), backends.clone(), llm, "test".into()).expect("app");
    TestApp { dir, app: Arc::new(app), backends }
}

/// Another app over the same data dir (a second worker of the same stage).
pub async fn second_worker(first: &TestApp, overrides: &[(&str, &str)], llm: Arc<dyn LlmClient>) -> Arc<App> {
    let settings = test_settings(first.dir.path(), overrides);
    let backends = atlas_codex::app::open_backends(&settings).await.expect("backends");
    Arc::new(App::new(Arc::new(settings), backends, llm, "test".into()).expect("app"))
}

impl TestApp {
    /// Sends raw message bodies.
    pub async fn send(&self, bodies: &[String]) {
        self.backends.queue.send_batch(bodies).await.expect("send");
    }
    /// Runs the worker until the queue is drained.
    pub async fn run_until_idle(&self) -> RunStats {
        self.app.run(RunOptions { exit_when_idle: true }, std::future::pending()).await.expect("run")
    }
    /// One job's record.
    pub async fn record(&self, id: &str) -> JobRecord {
        self.backends.jobs.get(id).await.expect("get").unwrap_or_else(|| panic!("no record for {id}"))
    }
}

/// A text job with a small schema (needs one model call).
pub fn text_job(id: &str) -> String {
    serde_json::json!({
        "job_id": id,
        "text": "Summit 45 Pack costs $189 and weighs 1.2 kg.",
        "instructions": "Extract the name and price.",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}, "price": {"type": "number"}}, "required": ["name", "price"]}
    })
    .to_string()
}
