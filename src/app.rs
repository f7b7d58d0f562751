//! Wiring: settings → backends, provider, processor, worker, admin server. The same path serves
//! the `worker` command, the demo, the benchmark and the tests' `spawn_app()`.

use std::future::Future;
use std::sync::Arc;

use tracing::info;

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
    match (s.llm.provider, &s.llm.api_key) {
        (ProviderKind::Simulated, _) => Ok(simulated("llm.provider = \"simulated\"")),
        (ProviderKind::Auto, None) => Ok(simulated("no OPENAI_API_KEY on the local stage")),
        (ProviderKind::Openai, None) => Err("llm.provider is `openai` but OPENAI_API_KEY is not set".into()),
        (ProviderKind::Openai | ProviderKind::Auto, Some(key)) => {
            let c = OpenAiClient::new(&s.llm.base_url, key, timeout).map_err(|e| e.to_string())?;
            Ok((Arc::new(c), format!("openai at {}", s.llm.base_url)))
        }
    }
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

    /// Builds everything from settings alone.
    pub async fn from_settings(settings: Settings) -> Result<App, String> {
        let backends = open_backends(&settings).await.map_err(|e| e.to_string())?;
        let (llm, provider) = build_llm(&settings)?;
        App::new(Arc::new(settings), backends, llm, provider)
    }

    /// Runs the worker (and the admin server when configured) until shutdown or idle.
    pub async fn run(&self, opts: RunOptions, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<RunStats, String> {
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin_task = if self.settings.admin.listen.is_empty() {
            None
        } else {
            let listener = admin::bind(&self.settings.admin.listen)
                .await
                .map_err(|e| format!("admin server cannot listen on {}: {e}", self.settings.admin.listen))?;
            info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin server listening");
            let health = self.health.clone();
            Some(tokio::spawn(admin::serve(listener, health, async move {
                let _ = admin_stop_rx.await;
            })))
        };
        let worker = Worker::new(self.settings.clone(), self.backends.clone(), self.processor.clone(), self.health.clone());
        let stats = worker.run(opts, shutdown).await;
        let _ = admin_stop_tx.send(());
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        Ok(stats)
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
