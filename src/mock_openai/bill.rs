//! The mock's bill: prices per model, what each answer cost, and the `GET /mock/bill` route.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::answer::Finish;
use super::Inner;

/// What the mock charges for one model, USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct MockPrice {
    /// Uncached prompt tokens.
    pub input_usd_per_mtok: f64,
    /// Cached prompt tokens.
    pub cached_input_usd_per_mtok: f64,
    /// Completion tokens (reasoning included).
    pub output_usd_per_mtok: f64,
}

impl MockPrice {
    /// The mock's price list from a stage's model table (the prices the provider would charge).
    pub fn table(models: &BTreeMap<String, crate::settings::ModelSettings>) -> BTreeMap<String, MockPrice> {
        models
            .iter()
            .map(|(id, m)| {
                let price = MockPrice {
                    input_usd_per_mtok: m.input_usd_per_mtok,
                    cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
                    output_usd_per_mtok: m.output_usd_per_mtok,
                };
                (id.clone(), price)
            })
            .collect()
    }
}

/// What the mock billed one model.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct BilledModel {
    /// Answers billed (every 200).
    pub answers: u64,
    /// Of those: refusals, `length` stops, and answers finished after the client had left.
    pub refusals: u64,
    /// `finish_reason: "length"` answers.
    pub length_stops: u64,
    /// Answers finished after the client stopped waiting (billed all the same).
    pub after_client_left: u64,
    /// Prompt tokens billed (cached included).
    pub prompt_tokens: u64,
    /// Of those, cached.
    pub cached_tokens: u64,
    /// Completion tokens billed (reasoning included).
    pub completion_tokens: u64,
    /// What those cost at the model's [`MockPrice`].
    pub usd: f64,
}

/// The mock's own bill since it started: what a provider's invoice would show.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct MockBill {
    /// By model id.
    pub by_model: BTreeMap<String, BilledModel>,
    /// Sum over the models.
    pub total_usd: f64,
    /// Models billed without a configured price (billed $0).
    pub unpriced_models: Vec<String>,
}

impl MockBill {
    /// Answers billed over all models.
    pub fn answers(&self) -> u64 {
        self.by_model.values().map(|m| m.answers).sum()
    }
}

/// Adds one billed answer to the bill.
pub(super) fn add_to_bill(
    bill: &mut MockBill,
    prices: &BTreeMap<String, MockPrice>,
    model: &str,
    usage: &Value,
    finish: Finish,
    client_left: bool,
) {
    let n = |p: &str| usage.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (prompt, cached, completion) = (n("/prompt_tokens"), n("/prompt_tokens_details/cached_tokens"), n("/completion_tokens"));
    let usd = match prices.get(model) {
        Some(p) => {
            (prompt.saturating_sub(cached) as f64 * p.input_usd_per_mtok
                + cached as f64 * p.cached_input_usd_per_mtok
                + completion as f64 * p.output_usd_per_mtok)
                / 1e6
        }
        None => {
            if !bill.unpriced_models.iter().any(|m| m == model) {
                bill.unpriced_models.push(model.to_string());
            }
            0.0
        }
    };
    let line = bill.by_model.entry(model.to_string()).or_default();
    line.answers += 1;
    line.refusals += u64::from(finish == Finish::Refusal);
    line.length_stops += u64::from(finish == Finish::Length);
    line.after_client_left += u64::from(client_left);
    line.prompt_tokens += prompt;
    line.cached_tokens += cached;
    line.completion_tokens += completion;
    line.usd += usd;
    bill.total_usd += usd;
}

/// `GET /mock/bill`: the bill so far as JSON.
pub(super) async fn bill_route(State(inner): State<Arc<Inner>>) -> Response {
    let bill = inner.state.lock().unwrap_or_else(|p| p.into_inner()).bill.clone();
    axum::Json(bill).into_response()
}
