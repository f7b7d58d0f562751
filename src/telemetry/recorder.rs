//! The Prometheus recorder: installed once per process, rendered on `/metrics` with the
//! fractional counters it cannot hold itself.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::describe::describe_all;
use super::labels::label;
use super::names::*;
use super::{process, Outcome, JOB_DURATION_BUCKETS, LLM_LATENCY_BUCKETS, QUEUE_WAIT_BUCKETS, WEBHOOK_DELIVERY_BUCKETS};

/// How often the recorder's upkeep (draining histogram buffers) runs when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Fractional counters rendered by [`render_metrics`]: exact integer sums in millionths of the
/// unit, keyed by (metric name, label pairs).
type FloatKey = (&'static str, Vec<(&'static str, String)>);

/// The installed recorder: its handle, the `stage` label and the fractional counters.
struct Telemetry {
    handle: PrometheusHandle,
    stage: String,
    float_counters: Mutex<BTreeMap<FloatKey, u128>>,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle and
/// ignore their argument). Every series carries `stage=<stage_label>`.
///
/// Describes every metric, sets explicit buckets for every histogram (so they export as
/// histograms, not summaries), registers the series that alerts rely on at zero, sets
/// `atlas_build_info{version}` to 1 and `atlas_worker_ready` to 0 (not ready until
/// [`set_ready`](super::set_ready)), and starts a background thread for the recorder's upkeep.
///
/// If another recorder was already installed globally, the returned handle renders only what this
/// module records itself, and a warning is logged.
pub fn install_metrics(stage_label: &str) -> PrometheusHandle {
    let t = TELEMETRY.get_or_init(|| build(stage_label));
    t.handle.clone()
}

/// Builds and installs the recorder for [`install_metrics`] (called once).
fn build(stage_label: &str) -> Telemetry {
    let stage = label(stage_label);
    let mut builder = PrometheusBuilder::new().add_global_label("stage", stage.clone());
    for (name, buckets) in [
        (JOB_DURATION_SECONDS, JOB_DURATION_BUCKETS),
        (JOB_QUEUE_WAIT_SECONDS, QUEUE_WAIT_BUCKETS),
        (LLM_REQUEST_DURATION_SECONDS, LLM_LATENCY_BUCKETS),
        (WEBHOOK_DELIVERY_SECONDS, WEBHOOK_DELIVERY_BUCKETS),
    ] {
        // Only fails for empty bucket lists, which the constants are not.
        builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("atlas telemetry: cannot set buckets for {name}: {e}");
                PrometheusBuilder::new().add_global_label("stage", stage.clone())
            }
        };
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "a metrics recorder was already installed; atlas metrics will be incomplete");
    }
    describe_all();
    register_defaults();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(UPKEEP_INTERVAL);
        upkeep.run_upkeep();
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms drain on scrape only");
    }
    Telemetry { handle, stage, float_counters: Mutex::new(BTreeMap::new()) }
}

/// Registers the series the alerts and dashboard rely on, so they exist (at zero) before the first
/// event: a rate over a missing series is empty, and the "no progress" alert needs a zero rate.
fn register_defaults() {
    counter!(JOBS_TOTAL, "outcome" => Outcome::Completed.as_str(), "reason" => "ok").increment(0);
    counter!(JOBS_TOTAL, "outcome" => Outcome::Failed.as_str(), "reason" => "none").increment(0);
    counter!(MESSAGES_RECEIVED_TOTAL).increment(0);
    counter!(MESSAGES_DELETED_TOTAL).increment(0);
    counter!(VISIBILITY_EXTENSIONS_TOTAL).increment(0);
    counter!(BUDGET_LEASES_RECOVERED_TOTAL).increment(0);
    counter!(EVENTS_PUBLISHED_TOTAL, "type" => "job.completed", "result" => "published").increment(0);
    counter!(EVENTS_PUBLISHED_TOTAL, "type" => "job.completed", "result" => "failed").increment(0);
    counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "delivered").increment(0);
    counter!(WEBHOOK_DELIVERIES_TOTAL, "outcome" => "failed").increment(0);
    gauge!(JOBS_IN_FLIGHT).set(0.0);
    gauge!(WORKER_READY).set(0.0);
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Renders the installed recorder as Prometheus text (format 0.0.4), fractional counters
/// included. Empty when [`install_metrics`] was never called.
pub fn render_metrics() -> String {
    let Some(t) = TELEMETRY.get() else { return String::new() };
    let mut out = t.handle.render();
    let map = t.float_counters.lock().unwrap_or_else(|p| p.into_inner());
    for (name, help) in [
        (LLM_COST_USD_TOTAL, "USD charged for model calls (list price of the tokens used), by model."),
        (RATELIMIT_WAIT_SECONDS_TOTAL, "Seconds model calls spent waiting for the per-model rate limiter, by model."),
        (BUDGET_RECOVERED_USD_TOTAL, "USD of dead workers' lapsed budget leases given back to the stage (leased, never spent)."),
    ] {
        let series: Vec<_> = map.iter().filter(|((n, _), _)| *n == name).collect();
        if series.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
        for ((_, labels), millionths) in series {
            let mut l = format!("stage=\"{}\"", escape(&t.stage));
            for (k, v) in labels {
                l.push_str(&format!(",{k}=\"{}\"", escape(v)));
            }
            out.push_str(&format!("{name}{{{l}}} {}\n", fmt_millionths(*millionths)));
        }
        out.push('\n');
    }
    drop(map);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&process::render(&escape(&t.stage)));
    out
}

/// Exact decimal text of `v / 1_000_000` (no float drift in the rendered sum).
pub(super) fn fmt_millionths(v: u128) -> String {
    let whole = v / 1_000_000;
    let frac = v % 1_000_000;
    if frac == 0 {
        whole.to_string()
    } else {
        let f = format!("{frac:06}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    }
}

/// Escapes a label value for the text exposition format.
pub(super) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Adds `millionths` to a fractional counter (nothing before [`install_metrics`]).
pub(super) fn add_float(name: &'static str, labels: Vec<(&'static str, String)>, millionths: u128) {
    if let Some(t) = TELEMETRY.get() {
        let mut map = t.float_counters.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry((name, labels)).or_insert(0);
        *e = e.saturating_add(millionths);
    }
}
