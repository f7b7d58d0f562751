//! The stage's monthly budget: the ledger's totals and recovered leases.

use metrics::{counter, gauge};

use super::names::*;
use super::recorder::add_float;

/// The stage's budget as last read from the ledger, all in micro-USD; exported in USD.
pub fn budget_snapshot(limit_micros: i64, spent_micros: i64, reserved_micros: i64) {
    let usd = |m: i64| m as f64 / 1_000_000.0;
    gauge!(BUDGET_LIMIT_USD).set(usd(limit_micros));
    gauge!(BUDGET_SPENT_USD).set(usd(spent_micros));
    gauge!(BUDGET_RESERVED_USD).set(usd(reserved_micros));
    let remaining = limit_micros.saturating_sub(spent_micros).saturating_sub(reserved_micros);
    gauge!(BUDGET_REMAINING_USD).set(usd(remaining));
}

/// A lapsed lease of a dead worker settled at its declared bound: `freed_micros` of its
/// `amount_micros` went back to the stage's budget.
pub fn budget_lease_recovered(lease_id: &str, amount_micros: i64, charged_micros: i64) {
    let freed = amount_micros.saturating_sub(charged_micros).max(0);
    counter!(BUDGET_LEASES_RECOVERED_TOTAL).increment(1);
    add_float(BUDGET_RECOVERED_USD_TOTAL, vec![], u128::try_from(freed).unwrap_or(0));
    tracing::info!(
        lease = lease_id,
        leased_usd = amount_micros as f64 / 1e6,
        charged_usd = charged_micros as f64 / 1e6,
        freed_usd = freed as f64 / 1e6,
        "recovered a lapsed budget lease at its declared bound"
    );
}
