//! `provision`: create the stage's queue, DLQ, tables and bucket (AWS stages; idempotent).

use crate::app;
use crate::settings::Settings;

use super::{fail, Cli, CliError, Output};

/// `provision`: creates the stage's AWS resources; the embedded backend only opens its files.
pub(super) async fn provision(cli: &Cli, settings: Settings) -> Result<(), CliError> {
    if settings.storage.backend == crate::settings::BackendKind::Sqlite {
        let _ = app::open_backends(&settings).await.map_err(fail)?;
        outln!("stage {} uses the embedded backend under {}; nothing to provision", settings.stage, settings.storage.data_dir.display());
        return Ok(());
    }
    let report = crate::backend::aws::provision::provision(&settings).await.map_err(fail)?;
    match cli.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&report).map_err(fail)?),
        Output::Table => outln!("{report}"),
    }
    Ok(())
}
