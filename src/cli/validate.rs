//! `validate`: check the stage's configuration, or every shipped stage's and their isolation.

use serde_json::{json, Value};

use crate::settings::{check_isolation, Settings, Sources, KNOWN_STAGES};

use super::{fail, Cli, CliError, Output, EXIT_USAGE};

/// `validate`: loads the stage (or every shipped stage, and checks their isolation); problems fail with exit 2.
pub(super) fn validate(cli: &Cli, all_stages: bool) -> Result<(), CliError> {
    let stages: Vec<String> = if all_stages {
        KNOWN_STAGES.iter().map(|s| s.to_string()).collect()
    } else {
        vec![cli.stage.clone().unwrap_or_else(|| "local".into())]
    };
    let (loaded, mut problems) = load_stages(cli, &stages, all_stages);
    let clashes = if all_stages { check_isolation(&loaded) } else { Vec::new() };
    for c in &clashes {
        problems.push(json!({"stage": c.stages.join(","), "problem": format!("{} `{}` is shared by or names stages {}", c.what, c.name, c.stages.join(" and "))}));
    }
    let ok = problems.is_empty();
    // What would stop a worker here but not the configuration (the provider key lives in a Secret
    // a deploy pipeline does not have): reported, not failed.
    let warnings: Vec<Value> = loaded
        .iter()
        .flat_map(|s| {
            s.worker_problems().into_iter().map(|p| json!({"stage": s.stage, "problem": format!("the worker would refuse to start: {p}")}))
        })
        .collect();
    match cli.output {
        Output::Json => {
            let resources: Vec<Value> = loaded
                .iter()
                .map(|s| json!({"stage": s.stage, "resources": s.resource_names().into_iter().map(|(k, v)| (k.replace(' ', "_"), Value::String(v))).collect::<serde_json::Map<_, _>>()}))
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"ok": ok, "stages": stages, "problems": problems, "warnings": warnings, "resources": resources})
                )
                .map_err(fail)?
            );
        }
        Output::Table => {
            for s in &loaded {
                outln!("stage {}: ok", s.stage);
                for (k, v) in s.resource_names() {
                    outln!("  {k:<18} {v}");
                }
            }
            for w in &warnings {
                eprintln!("warning [{}]: {}", w["stage"].as_str().unwrap_or(""), w["problem"].as_str().unwrap_or(""));
            }
            for p in &problems {
                eprintln!("error [{}]: {}", p["stage"].as_str().unwrap_or(""), p["problem"].as_str().unwrap_or(""));
            }
        }
    }
    if ok {
        Ok(())
    } else {
        Err(CliError::new(EXIT_USAGE, format!("{} problem(s) found", problems.len())))
    }
}

/// Loads each of `stages`: the settings of those that load, and a `{stage, problem}` object for
/// every problem of those that do not.
fn load_stages(cli: &Cli, stages: &[String], all_stages: bool) -> (Vec<Settings>, Vec<Value>) {
    let mut loaded = Vec::new();
    let mut problems: Vec<Value> = Vec::new();
    for st in stages {
        let mut src = Sources::from_env(Some(st.clone()), cli.config.clone());
        if all_stages {
            // Each stage as its own deployment would see it: no process-wide seed overrides.
            for v in ["STAGE", "GPT5_ENABLED", "FORCE_GPT4", "DEFAULT_MODEL_STRATEGY", "MONTHLY_BUDGET"] {
                src.env.remove(v);
            }
        }
        match Settings::load(&src) {
            Ok(s) => loaded.push(s),
            Err(e) => problems.extend(e.problems.iter().map(|p| json!({"stage": st, "problem": p}))),
        }
    }
    (loaded, problems)
}
