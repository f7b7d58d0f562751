//! `worker`: run the worker until SIGTERM (or until idle), with its admin server.

use crate::app::{self, App};
use crate::settings::Settings;
use crate::worker::RunOptions;

use super::{fail, CliError, EXIT_USAGE};

/// `worker`: builds the provider, starts the admin server, opens the backends (waiting for them) and works the queue.
pub(super) async fn worker(settings: Settings, exit_when_idle: bool) -> Result<(), CliError> {
    // Refuses a preview/production worker without a key (`worker_problems`): exit 2, one line.
    let (llm, provider) = app::build_llm(&settings).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    crate::telemetry::install_metrics(&settings.metrics_namespace());
    // Listening first: while the backends are unreachable the pod is alive and visibly unready.
    let health = std::sync::Arc::new(crate::admin::Health::new());
    let admin = app::AdminServer::start(&settings.admin.listen, health.clone()).await.map_err(fail)?;
    let shutdown = app::Shutdown::on_signal();
    let opened = app::open_backends_patiently(&settings, &shutdown).await;
    let result = match opened {
        Ok(Some(backends)) => match App::new(std::sync::Arc::new(settings), backends, llm, provider) {
            Ok(app) => {
                let app = app.with_health(health);
                tracing::info!(provider = %app.provider, "starting");
                let stop = shutdown.clone();
                let stats = app.work(RunOptions { exit_when_idle }, async move { stop.wait().await }).await;
                tracing::info!(received = stats.received, completed = stats.completed, failed = stats.failed, "done");
                Ok(())
            }
            Err(e) => Err(fail(e)),
        },
        Ok(None) => {
            tracing::info!("shutdown before the backends answered");
            Ok(())
        }
        Err(e) => Err(fail(e)),
    };
    if let Some(a) = admin {
        a.stop().await;
    }
    result
}
