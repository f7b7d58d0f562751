//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, and 404 for everything else.
//!
//! Kept deliberately small (no middleware, no state beyond [`Health`]) so it is listening within
//! milliseconds of start-up and cannot be slowed by the worker's own load. Orchestrators use
//! `/healthz` for liveness (the process runs) and `/readyz` for readiness (backends reachable and
//! not draining); Prometheus scrapes `/metrics`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Content type of `/metrics`: the Prometheus text exposition format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Shared readiness state, written by the worker and read by `/readyz`.
///
/// A new `Health` is *not* ready: the worker calls [`Health::set_backends_ok`] once its backends
/// answered, and [`Health::set_draining`] on shutdown. Every change also updates the
/// `atlas_worker_ready` gauge.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    backends_ok: AtomicBool,
}

impl Health {
    /// A fresh state: not draining, backends not yet known to be reachable (so not ready).
    /// Share it as `Arc<Health>` between the worker and [`serve`].
    pub fn new() -> Health {
        Health::default()
    }

    /// The worker stopped taking work (SIGTERM): readiness fails from now on, for good.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        crate::telemetry::set_ready(self.is_ready());
    }

    /// Whether the backends (queue, stores) answered the last check.
    pub fn set_backends_ok(&self, ok: bool) {
        self.backends_ok.store(ok, Ordering::SeqCst);
        crate::telemetry::set_ready(self.is_ready());
    }

    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Ready: backends reachable and not draining.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why the worker is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.is_draining() {
            Some("draining")
        } else if !self.backends_ok.load(Ordering::SeqCst) {
            Some("backends unreachable")
        } else {
            None
        }
    }
}

/// Binds the admin listener (e.g. `0.0.0.0:9090`, or `127.0.0.1:0` in tests for a free port).
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

/// Serves the admin routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(health)).with_graceful_shutdown(shutdown).await
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
