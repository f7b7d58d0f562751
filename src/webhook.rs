//! Signed webhooks: a job's end event POSTed to its `callback_url`.
//!
//! - **Never holds the job.** Delivery starts after the job's end is recorded (and its event
//!   published), in a task of its own; the job's message is settled without waiting for it. At
//!   most `webhooks.concurrency` POSTs run at once per worker; the rest wait their turn.
//! - **Signed.** `Atlas-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//!   with the stage's secret (`ATLAS_WEBHOOK_SECRET`, a Kubernetes Secret in the chart), beside
//!   `Atlas-Event-Id` and `Atlas-Event-Type`. Without a secret nothing is sent (the delivery is
//!   recorded `refused`). docs/messages.md shows how a receiver verifies.
//! - **Retried** on 5xx, 408, 429, timeouts and connection errors, with exponential backoff (1 s
//!   doubling to 60 s, jittered), until `webhooks.retry_for_secs` have passed or
//!   `webhooks.max_attempts` POSTs were sent. Any other answer ends it: 2xx `delivered`, other 4xx
//!   and 3xx (redirects are not followed) `failed`.
//! - **SSRF-guarded** like a page fetch: the receiver's address is checked and pinned; private
//!   targets are refused unless `webhooks.allow_private_networks` (local only); metadata
//!   addresses are refused always.
//! - **Recorded.** The outcome (state, attempts, last status or error) is written onto the job
//!   record's announcement when the delivery ends. A worker that stops mid-delivery waits
//!   `webhooks.drain_secs` for it, then leaves it `pending` on the record.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hmac::{KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::{Notify, Semaphore};

use crate::backend::JobStore;
use crate::events::{Announcement, DeliveryState, JobEvent, WebhookDelivery};
use crate::fetch::{FetchError, Fetcher};
use crate::job::Callback;
use crate::settings::{Secret, Settings, WebhookSettings};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Atlas-Signature";
/// The event id header (the receiver's idempotency key).
pub const EVENT_ID_HEADER: &str = "Atlas-Event-Id";
/// The event type header.
pub const EVENT_TYPE_HEADER: &str = "Atlas-Event-Type";
/// First retry delay; doubled per attempt.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The `Atlas-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` (an `Atlas-Signature` value) signs `body` with `secret` and is no older
/// than `tolerance` at `now` (a receiver's check; docs/messages.md has the same in Python).
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance: Duration) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1 = Some(x.to_string()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if (now - t).unsigned_abs() > tolerance.as_secs() {
        return false;
    }
    let expected = signature(secret, t, body);
    let expected = expected.rsplit("v1=").next().unwrap_or_default();
    // Constant time over the hex digits.
    expected.len() == v1.len() && expected.bytes().zip(v1.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What one POST did.
enum Try {
    Delivered(u16),
    Retry { status: Option<u16>, error: String },
    GiveUp { status: Option<u16>, error: String, refused: bool },
}

fn judge(r: Result<u16, FetchError>) -> Try {
    match r {
        Ok(s) if (200..300).contains(&s) => Try::Delivered(s),
        Ok(s) if s >= 500 || s == 408 || s == 429 => Try::Retry { status: Some(s), error: format!("HTTP {s}") },
        Ok(s) => Try::GiveUp { status: Some(s), error: format!("HTTP {s}"), refused: false },
        Err(e @ (FetchError::Blocked { .. } | FetchError::Scheme(_) | FetchError::InvalidUrl(_))) => {
            Try::GiveUp { status: None, error: e.to_string(), refused: true }
        }
        Err(e) => Try::Retry { status: None, error: e.to_string() },
    }
}

/// The webhook deliverer of one worker process. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    fetcher: Fetcher,
    settings: WebhookSettings,
    secret: Option<Secret>,
    jobs: Arc<dyn JobStore>,
    slots: Arc<Semaphore>,
    in_flight: AtomicUsize,
    idle: Notify,
    user_agent: String,
}

impl Webhooks {
    /// A deliverer for the stage: its own guarded client (the webhook address policy, the
    /// webhook timeout), the signing secret, and the job store to record outcomes in.
    pub fn new(s: &Settings, jobs: Arc<dyn JobStore>) -> Result<Webhooks, String> {
        let mut fetch = s.fetch.clone();
        fetch.allow_private_networks = s.webhooks.allow_private_networks;
        fetch.total_timeout_secs = s.webhooks.timeout_secs.max(1);
        fetch.max_redirects = 0;
        let fetcher = Fetcher::new(&fetch).map_err(|e| format!("webhook client: {e}"))?;
        Ok(Webhooks::with_fetcher(s, jobs, fetcher))
    }

    /// [`Webhooks::new`] with a given client (tests: resolver overrides, exempt addresses).
    pub fn with_fetcher(s: &Settings, jobs: Arc<dyn JobStore>, fetcher: Fetcher) -> Webhooks {
        Webhooks {
            inner: Arc::new(Inner {
                fetcher,
                settings: s.webhooks.clone(),
                secret: s.webhooks.secret.clone(),
                jobs,
                slots: Arc::new(Semaphore::new(s.webhooks.concurrency.max(1))),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
                user_agent: s.fetch.user_agent.clone(),
            }),
        }
    }

    /// Deliveries started and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Starts delivering `event` to `callback` in the background and returns at once.
    pub fn deliver(&self, event: JobEvent, announcement: Announcement, callback: Callback) {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let job_id = event.job_id.clone();
            let ended_at = event.finished_at;
            let delivery = inner.run(&event, &callback).await;
            crate::telemetry::webhook_delivery(
                &job_id,
                delivery.state.as_str(),
                delivery.attempts,
                ended_at,
                delivery.last_error.as_deref(),
            );
            let mut a = announcement;
            a.webhook = Some(delivery);
            if let Err(e) = inner.jobs.set_announcement(&job_id, &a).await {
                tracing::warn!(job_id = %job_id, error = %e, "could not record the webhook delivery on the job");
            }
            if inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                inner.idle.notify_waiters();
            }
        });
    }

    /// Waits until no delivery is in flight, or `limit` passed.
    pub async fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.in_flight() > 0 {
            let notified = self.inner.idle.notified();
            if self.in_flight() == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                tracing::warn!(
                    pending = self.in_flight(),
                    "stopping with webhook deliveries unfinished; they stay pending on their records"
                );
                break;
            }
        }
    }
}

impl Inner {
    /// Tries until delivered, given up or out of time; the delivery as it ended.
    async fn run(&self, event: &JobEvent, callback: &Callback) -> WebhookDelivery {
        let mut d = WebhookDelivery {
            url: crate::redact::url(&callback.url),
            state: DeliveryState::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            delivered_at: None,
        };
        let Some(secret) = &self.secret else {
            d.state = DeliveryState::Refused;
            d.last_error = Some("no webhook signing secret: set ATLAS_WEBHOOK_SECRET".into());
            return d;
        };
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                d.state = DeliveryState::Failed;
                d.last_error = Some(format!("cannot encode the event: {e}"));
                return d;
            }
        };
        let started = Instant::now();
        let budget = Duration::from_secs(self.settings.retry_for_secs);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let outcome = {
                let Ok(_slot) = self.slots.clone().acquire_owned().await else {
                    d.state = DeliveryState::Failed;
                    d.last_error = Some("webhook deliverer stopped".into());
                    return d;
                };
                d.attempts += 1;
                let headers = self.headers(secret, event, callback, &body);
                judge(self.fetcher.post(&callback.url, headers, body.clone()).await)
            };
            match outcome {
                Try::Delivered(status) => {
                    d.state = DeliveryState::Delivered;
                    d.last_status = Some(status);
                    d.last_error = None;
                    d.delivered_at = Some(Utc::now());
                    return d;
                }
                Try::GiveUp { status, error, refused } => {
                    d.state = if refused { DeliveryState::Refused } else { DeliveryState::Failed };
                    d.last_status = status;
                    d.last_error = Some(crate::redact::text(&error));
                    return d;
                }
                Try::Retry { status, error } => {
                    d.last_status = status;
                    d.last_error = Some(crate::redact::text(&error));
                    let jitter = 0.8 + rand::random::<f64>() * 0.4;
                    let wait = backoff.mul_f64(jitter);
                    if d.attempts >= self.settings.max_attempts.max(1) || started.elapsed() + wait > budget {
                        d.state = DeliveryState::Failed;
                        return d;
                    }
                    crate::telemetry::webhook_retry(&event.job_id, d.attempts, &error);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The producer's headers, then ours (which win): content type, event id and type, signature.
    fn headers(&self, secret: &Secret, event: &JobEvent, callback: &Callback, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in &callback.headers {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.insert(k, v);
            }
        }
        let mut set = |k: &'static str, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert(HeaderName::from_static(k), v);
            }
        };
        set("content-type", "application/json");
        set("user-agent", &self.user_agent);
        set("atlas-event-id", &event.event_id);
        set("atlas-event-type", event.event_type.as_str());
        set("atlas-signature", &signature(secret.expose(), Utc::now().timestamp(), body));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_with_its_secret_body_and_time() {
        let body = br#"{"event_id":"j:job.completed:1"}"#;
        let sig = signature("whsec-test-123", 1_700_000_000, body);
        assert!(sig.starts_with("t=1700000000,v1=") && sig.len() == "t=1700000000,v1=".len() + 64, "{sig}");
        let tol = Duration::from_secs(300);
        assert!(verify("whsec-test-123", &sig, body, 1_700_000_100, tol));
        assert!(!verify("another-secret", &sig, body, 1_700_000_100, tol), "wrong secret");
        assert!(!verify("whsec-test-123", &sig, b"{}", 1_700_000_100, tol), "other body");
        assert!(!verify("whsec-test-123", &sig, body, 1_700_001_000, tol), "too old");
        assert!(!verify("whsec-test-123", "v1=00", body, 1_700_000_000, tol), "no timestamp");
    }

    #[test]
    fn answers_are_judged_as_delivered_retried_or_given_up() {
        assert!(matches!(judge(Ok(204)), Try::Delivered(204)));
        assert!(matches!(judge(Ok(500)), Try::Retry { status: Some(500), .. }));
        assert!(matches!(judge(Ok(429)), Try::Retry { .. }));
        assert!(matches!(judge(Ok(404)), Try::GiveUp { refused: false, .. }));
        assert!(matches!(judge(Ok(302)), Try::GiveUp { refused: false, .. }), "redirects are not followed");
        assert!(matches!(judge(Err(FetchError::Timeout { secs: 1 })), Try::Retry { .. }));
        let blocked = FetchError::Blocked {
            host: "169.254.169.254".into(),
            addr: "169.254.169.254".parse().expect("ip"),
            reason: crate::fetch::BlockReason::CloudMetadata,
        };
        assert!(matches!(judge(Err(blocked)), Try::GiveUp { refused: true, .. }));
    }
}
