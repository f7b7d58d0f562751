//! Wiring: settings → backends, provider, processor, worker, admin server. The same path serves
//! the `worker` command, the demo, the benchmark and the tests' `spawn_app()`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use tracing::{info, warn};

use crate::admin::{self, Health};
use crate::backend::{self, Backends};
use crate::error::BackendError;
use crate::llm::{openai::OpenAiClient, simulated::SimulatedClient, LlmClient};
use crate::process::Processor;
use crate::settings::{BackendKind, ProviderKind, Settings};
use crate::worker::{RunOptions, RunStats, Worker};

/// Opens the stage's backends (SQLite locally, AWS otherwise).
pub async fn open_backends(s: &Settings) -> Result<Backends, BackendError> {
    match s.storage.backend {
        BackendKind::Sqlite => backend::local::open_backends(s),
        BackendKind::Aws => backend::aws::open_backends(s).await,
    }
}

/// Longest pause between attempts to open unreachable backends at start.
const OPEN_RETRY_MAX: Duration = Duration::from_secs(30);

/// [`open_backends`], waiting out an unreachable endpoint: transient failures are retried with
/// exponential backoff (1 s doubling to `OPEN_RETRY_MAX`), one warning per attempt, until the
/// backends answer or `shutdown` fires (`Ok(None)`). Anything else (no credentials, access
/// denied, a missing queue, table or bucket) fails at once.
pub async fn open_backends_patiently(s: &Settings, shutdown: &Shutdown) -> Result<Option<Backends>, BackendError> {
    let mut pause = Duration::from_secs(1);
    for attempt in 1u32.. {
        match open_backends(s).await {
            Ok(b) => return Ok(Some(b)),
            Err(e) if e.is_retryable() => {
                warn!(attempt, retry_in_secs = pause.as_secs(), error = %e, "backends unreachable; not ready, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait() => return Ok(None),
                }
                pause = (pause * 2).min(OPEN_RETRY_MAX);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The process's shutdown: SIGTERM or SIGINT, watched by as many waiters as need it (opening the
/// backends, the worker's receive loop).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Fires on SIGTERM or SIGINT.
    pub fn on_signal() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// Resolves once shutdown was asked for.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// The admin server (`/metrics`, `/healthz`, `/readyz`), listening until [`AdminServer::stop`].
pub struct AdminServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl AdminServer {
    /// Starts listening on `listen` (`None` when it is empty: no admin server).
    pub async fn start(listen: &str, health: Arc<Health>) -> Result<Option<AdminServer>, String> {
        if listen.is_empty() {
            return Ok(None);
        }
        let listener = admin::bind(listen).await.map_err(|e| format!("admin server cannot listen on {listen}: {e}"))?;
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin server listening");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(admin::serve(listener, health, async move {
            let _ = stopped.await;
        }));
        Ok(Some(AdminServer { stop, task }))
    }

    /// Stops listening and waits for the server to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Builds the LLM provider the settings ask for; the string says which, for people.
pub fn build_llm(s: &Settings) -> Result<(Arc<dyn LlmClient>, String), String> {
    let timeout = std::time::Duration::from_secs(s.llm.request_timeout_secs);
    let simulated = |why: &str| -> (Arc<dyn LlmClient>, String) {
        let latency = std::time::Duration::from_millis(s.llm.simulated_latency_ms);
        (
            Arc::new(SimulatedClient::new(latency)),
            format!("simulated ({why}; {} ms per call, nothing is spent, results are invented)", s.llm.simulated_latency_ms),
        )
    };
    if let Some(p) = s.worker_problems().into_iter().next() {
        return Err(p);
    }
    if s.uses_simulated_model() {
        let why =
            if s.llm.provider == ProviderKind::Simulated { "llm.provider = \"simulated\"" } else { "no OPENAI_API_KEY on the local stage" };
        return Ok(simulated(why));
    }
    let Some(key) = &s.llm.api_key else {
        return Err("llm.provider is `openai` but OPENAI_API_KEY is not set".into());
    };
    let c = OpenAiClient::new(&s.llm.base_url, key, timeout).map_err(|e| e.to_string())?;
    Ok((Arc::new(c), format!("openai at {}", s.llm.base_url)))
}

/// A fully built worker process: what `worker`, `demo`, `bench` and tests run.
pub struct App {
    /// Stage settings.
    pub settings: Arc<Settings>,
    /// Its backends.
    pub backends: Backends,
    /// The job processor.
    pub processor: Arc<Processor>,
    /// Readiness state.
    pub health: Arc<Health>,
    /// Which provider, for people.
    pub provider: String,
}

impl App {
    /// Builds the app over given backends and provider.
    pub fn new(settings: Arc<Settings>, backends: Backends, llm: Arc<dyn LlmClient>, provider: String) -> Result<App, String> {
        let processor = Arc::new(Processor::new(settings.clone(), backends.clone(), llm)?);
        Ok(App { settings, backends, processor, health: Arc::new(Health::new()), provider })
    }

    /// The same app reporting readiness through `health` (one the admin server already serves).
    pub fn with_health(mut self, health: Arc<Health>) -> App {
        self.health = health;
        self
    }

    /// Builds everything from settings alone.
    pub async fn from_settings(settings: Settings) -> Result<App, String> {
        let backends = open_backends(&settings).await.map_err(|e| e.to_string())?;
        let (llm, provider) = build_llm(&settings)?;
        App::new(Arc::new(settings), backends, llm, provider)
    }

    /// Runs the worker (and the admin server when configured) until shutdown or idle.
    pub async fn run(&self, opts: RunOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<RunStats, String> {
        let admin = AdminServer::start(&self.settings.admin.listen, self.health.clone()).await?;
        let stats = self.work(opts, shutdown).await;
        if let Some(a) = admin {
            a.stop().await;
        }
        Ok(stats)
    }

    /// Runs the worker alone (its admin server, if any, is the caller's) until shutdown or idle.
    pub async fn work(&self, opts: RunOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> RunStats {
        let worker = Worker::new(self.settings.clone(), self.backends.clone(), self.processor.clone(), self.health.clone());
        worker.run(opts, shutdown).await
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
