//! The monitor: queue depth and budget gauges, and backend reachability for `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::Health;
use crate::backend::Backends;
use crate::settings::Settings;
use crate::telemetry;

/// How often the monitor checks the backends (and re-evaluates readiness).
const MONITOR_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a monitor check may take: a backend slower than this counts as unreachable, so a
/// frozen endpoint turns readiness off within seconds rather than after the SDK's timeouts.
const MONITOR_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes queue depth and budget gauges, and backend reachability for `/readyz`.
pub(super) fn spawn_monitor(b: Backends, s: Arc<Settings>, health: Arc<Health>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        loop {
            tick.tick().await;
            health.refresh();
            let now = chrono::Utc::now();
            let check = async {
                let depth = b.queue.depth().await;
                if let Ok(d) = &depth {
                    telemetry::queue_depth(d);
                }
                let snap = b.ledger.snapshot(&crate::budget::period(now), now).await;
                if let Ok(sn) = &snap {
                    telemetry::budget_snapshot(s.budget_limit_micros(), sn.spent_micros, sn.reserved_micros);
                }
                depth.is_ok() && snap.is_ok()
            };
            let ok = tokio::time::timeout(MONITOR_CHECK_TIMEOUT, check).await.unwrap_or(false);
            health.set_backends_ok(ok);
        }
    })
}
