//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, and 404 for everything else.
//!
//! Kept deliberately small (no middleware, no state beyond [`Health`]) so it is listening within
//! milliseconds of start-up and cannot be slowed by the worker's own load. Orchestrators use
//! `/healthz` for liveness (the process runs) and `/readyz` for readiness (backends reachable and
//! not draining); Prometheus scrapes `/metrics`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Content type of `/metrics`: the Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Shared readiness state, written by the worker and read by `/readyz`.
///
/// Ready means all of: not draining; the backends answered the monitor's last check (each check
/// bounded by a timeout, so a frozen endpoint fails it instead of hanging it); the receive loop's
/// last receive succeeded; and no receive has been pending longer than the long poll plus
/// [`RECEIVE_STALL_GRACE`]. A new `Health` is *not* ready: the worker calls
/// [`Health::set_backends_ok`] once its backends answered. Every change, and every
/// [`Health::refresh`] (the monitor's tick), updates the `atlas_worker_ready` gauge.
#[derive(Debug)]
pub struct Health {
    draining: AtomicBool,
    backends_ok: AtomicBool,
    receive_failing: AtomicBool,
    /// Milliseconds after `epoch` at which the pending receive started (+1); 0: none pending.
    receive_pending_since: AtomicU64,
    /// How long a receive may be pending before it counts as stalled, milliseconds.
    stall_after_ms: AtomicU64,
    epoch: Instant,
}

/// How much longer than its long poll a receive may take before readiness fails: room for one
/// slow response, far less than a frozen endpoint's SDK timeouts.
pub const RECEIVE_STALL_GRACE: Duration = Duration::from_secs(10);

/// Why a worker is not ready, as `/readyz` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// SIGTERM: it stopped taking work.
    Draining,
    /// The backends did not answer the last check (or have not been checked yet).
    BackendsUnreachable,
    /// The last receive from the queue failed.
    ReceiveFailing,
    /// A receive has been pending far longer than its long poll.
    ReceiveStalled,
}

impl NotReady {
    /// The reason as `/readyz` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Draining => "draining",
            NotReady::BackendsUnreachable => "backends unreachable",
            NotReady::ReceiveFailing => "receive failing",
            NotReady::ReceiveStalled => "receive stalled",
        }
    }
}

impl Default for Health {
    fn default() -> Health {
        Health {
            draining: AtomicBool::new(false),
            backends_ok: AtomicBool::new(false),
            receive_failing: AtomicBool::new(false),
            receive_pending_since: AtomicU64::new(0),
            stall_after_ms: AtomicU64::new((Duration::from_secs(20) + RECEIVE_STALL_GRACE).as_millis() as u64),
            epoch: Instant::now(),
        }
    }
}

impl Health {
    /// A fresh state: not draining, backends not yet known to be reachable (so not ready).
    /// Share it as `Arc<Health>` between the worker and [`serve`].
    pub fn new() -> Health {
        Health::default()
    }

    /// The long poll the receive loop uses: a receive pending longer than this plus
    /// [`RECEIVE_STALL_GRACE`] makes the worker unready.
    pub fn set_long_poll(&self, wait: Duration) {
        self.stall_after_ms.store((wait + RECEIVE_STALL_GRACE).as_millis() as u64, Ordering::SeqCst);
    }

    /// The worker stopped taking work (SIGTERM): readiness fails from now on, for good.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.refresh();
    }

    /// Whether the backends (queue, stores) answered the last check.
    pub fn set_backends_ok(&self, ok: bool) {
        self.backends_ok.store(ok, Ordering::SeqCst);
        self.refresh();
    }

    /// The receive loop started a receive.
    pub fn receive_started(&self) {
        let since = self.epoch.elapsed().as_millis() as u64 + 1;
        self.receive_pending_since.store(since, Ordering::SeqCst);
    }

    /// The receive loop's receive returned, successfully or not.
    pub fn receive_finished(&self, ok: bool) {
        self.receive_pending_since.store(0, Ordering::SeqCst);
        self.receive_failing.store(!ok, Ordering::SeqCst);
        self.refresh();
    }

    /// Re-evaluates readiness (a receive may have stalled since the last change) and updates the
    /// `atlas_worker_ready` gauge.
    pub fn refresh(&self) {
        crate::telemetry::set_ready(self.is_ready());
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready: see [`Health`].
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the worker is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<NotReady> {
        let since = self.receive_pending_since.load(Ordering::SeqCst);
        let stalled =
            since > 0 && (self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(since) > self.stall_after_ms.load(Ordering::SeqCst);
        if self.is_draining() {
            Some(NotReady::Draining)
        } else if !self.backends_ok.load(Ordering::SeqCst) {
            Some(NotReady::BackendsUnreachable)
        } else if self.receive_failing.load(Ordering::SeqCst) {
            Some(NotReady::ReceiveFailing)
        } else if stalled {
            Some(NotReady::ReceiveStalled)
        } else {
            None
        }
    }

    /// Why the worker is not ready, as text, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        self.not_ready().map(NotReady::as_str)
    }
}

/// Binds the admin listener (e.g. `0.0.0.0:10090`, or `127.0.0.1:0` in tests for a free port).
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// The admin routes, for embedding or testing without a socket.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(health)
}

/// Most admin connections served at once; more are closed on accept. Scrapers and probes need a
/// handful; the cap keeps a flood of idle connections from taking the worker's file descriptors.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers (a half-sent request is cut here).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an admin connection lives, keep-alive included: no client holds a slot for good.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin routes on `listener` until `shutdown` completes.
///
/// Guarantees: at most [`MAX_ADMIN_CONNECTIONS`] connections at once (more are closed at
/// accept); a request's headers must arrive within [`HEADER_READ_TIMEOUT`]; a connection lives
/// at most [`CONNECTION_LIFETIME`]; on shutdown the open connections are dropped rather than
/// waited for, so an admin client can never hold up the worker's exit.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(health);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Out of file descriptors or a reset before accept: pause rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let _slot = slot;
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let conn = b.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
    conns.abort_all();
    Ok(())
}

async fn metrics() -> Response {
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], crate::telemetry::render_metrics()).into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(axum::extract::State(health): axum::extract::State<Arc<Health>>) -> Response {
    match health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
