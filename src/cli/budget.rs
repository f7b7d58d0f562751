//! `budget`: this month's limit, spent, reserved and remaining, by model and tenant.

use chrono::Utc;
use serde_json::json;

use crate::app;
use crate::pricing::micros_to_usd;
use crate::settings::Settings;

use super::{fail, Cli, CliError, Output};

/// `budget`: prints the current period's budget snapshot.
pub(super) async fn budget(cli: &Cli, settings: Settings) -> Result<(), CliError> {
    let backends = app::open_backends(&settings).await.map_err(fail)?;
    let now = Utc::now();
    let period = crate::budget::period(now);
    let snap = backends.ledger.snapshot(&period, now).await.map_err(fail)?;
    let limit = settings.budget_limit_micros();
    let remaining = (limit - snap.spent_micros - snap.reserved_micros).max(0);
    let by = |m: &std::collections::BTreeMap<String, i64>| {
        m.iter().map(|(k, v)| (k.clone(), json!(micros_to_usd(*v)))).collect::<serde_json::Map<_, _>>()
    };
    match cli.output {
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "stage": settings.stage, "period": period,
                "limit_usd": micros_to_usd(limit), "spent_usd": micros_to_usd(snap.spent_micros),
                "reserved_usd": micros_to_usd(snap.reserved_micros), "remaining_usd": micros_to_usd(remaining),
                "by_model": by(&snap.by_model), "by_tenant": by(&snap.by_tenant),
            }))
            .map_err(fail)?
        ),
        Output::Table => {
            outln!("stage {}  period {period}", settings.stage);
            outln!("  limit      ${:>12.6}", micros_to_usd(limit));
            outln!("  spent      ${:>12.6}", micros_to_usd(snap.spent_micros));
            outln!("  reserved   ${:>12.6}", micros_to_usd(snap.reserved_micros));
            outln!("  remaining  ${:>12.6}", micros_to_usd(remaining));
            outln!("by model:");
            for (m, v) in &snap.by_model {
                outln!("  {m:<20} ${:>12.6}", micros_to_usd(*v));
            }
            outln!("by tenant:");
            for (t, v) in &snap.by_tenant {
                outln!("  {t:<20} ${:>12.6}", micros_to_usd(*v));
            }
        }
    }
    Ok(())
}
