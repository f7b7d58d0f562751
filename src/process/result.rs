//! The result document (`jobs/{job_id}/result.json`): the data, the route, usage and cost, every
//! call, timings, and the page outputs the job asked for (`formats`; all of them for a page-only
//! job).

use std::time::Duration;

use serde_json::{json, Value};

use super::Done;
use crate::job::{self, Job, JobRecord};

/// The document stored for a completed job.
pub(super) fn document(stage: &str, job: &Job, rec: &JobRecord, done: &Done, elapsed: Duration, simulated: bool) -> Value {
    let mut doc = json!({
        "job_id": rec.id,
        "stage": stage,
        "type": job.job_type.as_str(),
        "url": job.url(),
        "data": done.data,
        "model": done.model,
        "route": rec.route,
        "usage": rec.usage,
        "cost_usd": rec.cost_usd(),
        "timings": { "total_ms": elapsed.as_millis() as u64, "fetch_ms": done.fetch_ms, "model_ms": done.model_ms },
        "calls": rec.calls,
    });
    let want = |f: job::Format| job.formats.contains(&f) || !job.needs_model();
    if let Some(p) = &done.page {
        doc["metadata"] = serde_json::to_value(&p.metadata).unwrap_or(Value::Null);
        if want(job::Format::Markdown) {
            doc["markdown"] = Value::String(p.markdown.clone());
        }
        if want(job::Format::Links) {
            doc["links"] = serde_json::to_value(&p.links).unwrap_or(Value::Null);
        }
    }
    if let Some(pages) = &done.pages {
        let items: Vec<Value> = pages
            .iter()
            .map(|cp| {
                let mut v = json!({ "url": cp.url, "depth": cp.depth, "metadata": cp.page.metadata });
                if want(job::Format::Markdown) {
                    v["markdown"] = Value::String(cp.page.markdown.clone());
                }
                if want(job::Format::Links) {
                    v["links"] = serde_json::to_value(&cp.page.links).unwrap_or(Value::Null);
                }
                v
            })
            .collect();
        doc["pages"] = Value::Array(items);
    }
    if done.truncated {
        doc["truncated"] = Value::Bool(true);
    }
    if simulated {
        doc["simulated"] = Value::Bool(true);
    }
    doc
}
