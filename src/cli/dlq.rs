//! `dlq`: list the dead-letter queue, or redrive (some of) its messages to the queue.

use serde_json::json;

use crate::app;
use crate::backend::{RedrivePlan, RedriveReport, RedriveSelect};
use crate::job;
use crate::settings::Settings;

use super::{fail, Cli, CliError, DlqAction, Output};

/// `dlq list` and `dlq redrive` (a dry run only counts what would move).
pub(super) async fn dlq(cli: &Cli, settings: Settings, action: &DlqAction) -> Result<(), CliError> {
    let backends = app::open_backends(&settings).await.map_err(fail)?;
    match action {
        DlqAction::List { max } => {
            let items = backends.queue.dlq_peek(*max).await.map_err(fail)?;
            match cli.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&items).map_err(fail)?),
                Output::Table => {
                    if items.is_empty() {
                        outln!("the DLQ {} is empty", settings.dlq_name());
                    }
                    for d in &items {
                        let id = job::salvage_job_id(&d.body).map(|j| j.to_string()).unwrap_or_else(|| "-".into());
                        outln!(
                            "{:<36} job {:<24} receives {:<3} {}",
                            d.message_id,
                            id,
                            d.receive_count,
                            d.reason.as_deref().unwrap_or("(redrive policy)")
                        );
                    }
                }
            }
        }
        DlqAction::Redrive { max, reasons, all, dry_run } => {
            let select = if *all {
                RedriveSelect::All
            } else if reasons.is_empty() {
                RedriveSelect::Retryable
            } else {
                RedriveSelect::Kinds(reasons.iter().cloned().collect())
            };
            let held = backends.queue.depth().await.map_err(fail)?.dead_letters;
            let plan = RedrivePlan { examine: held, max_moved: max.unwrap_or(u64::MAX), select };
            let report = if *dry_run {
                let mut r = RedriveReport::default();
                for d in backends.queue.dlq_peek(usize::try_from(held).unwrap_or(usize::MAX)).await.map_err(fail)? {
                    let take = plan.admits(r.moved_total(), d.kind());
                    r.count(d.kind(), take);
                }
                r
            } else {
                backends.queue.dlq_redrive(&plan).await.map_err(fail)?
            };
            print_redrive(cli.output, &settings, &report, *dry_run);
        }
    }
    Ok(())
}

/// Prints what a redrive moved (or would move) and what it left, by failure kind.
fn print_redrive(output: Output, settings: &Settings, report: &RedriveReport, dry_run: bool) {
    let by_kind = |m: &std::collections::BTreeMap<String, u64>| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    match output {
        Output::Json => outln!(
            "{}",
            json!({"dry_run": dry_run, "moved": report.moved_total(), "examined": report.examined(), "moved_by_kind": report.moved, "left_by_kind": report.left})
        ),
        Output::Table => {
            let verb = if dry_run { "would move" } else { "moved" };
            let n = report.moved_total();
            let detail = if n > 0 { format!(" ({})", by_kind(&report.moved)) } else { String::new() };
            outln!("{verb} {n} message(s) from {} back to {}{detail}", settings.dlq_name(), settings.queue_name());
            if !report.left.is_empty() {
                let left: u64 = report.left.values().sum();
                outln!("left {left} in the DLQ ({}); name a kind with --reason KIND, or --all, to move them", by_kind(&report.left));
            }
        }
    }
}
