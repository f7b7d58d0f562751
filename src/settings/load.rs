//! Loading one stage's settings: the layers, the seed's variables, `ATLAS__*`, unknown keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::isolation::{suggest_stage, valid_stage_name, KNOWN_STAGES};
use super::*;

/// Everything wrong with a configuration, listed at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid configuration for stage `{stage}`:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// The stage being loaded.
    pub stage: String,
    /// One line per problem.
    pub problems: Vec<String>,
}

/// Where settings come from; tests build this directly instead of touching the process env.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The stage (`--stage` or `STAGE`); `local` when absent.
    pub stage: Option<String>,
    /// Directory holding `default.toml` and `{stage}.toml`.
    pub config_dir: PathBuf,
    /// `--config FILE`.
    pub extra_file: Option<PathBuf>,
    /// Environment variables (seed switches and `ATLAS__*`).
    pub env: BTreeMap<String, String>,
}

impl Sources {
    /// Sources from the real process environment.
    pub fn from_env(stage: Option<String>, extra_file: Option<PathBuf>) -> Sources {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let config_dir = env.get("ATLAS_CONFIG_DIR").map(PathBuf::from).unwrap_or_else(default_config_dir);
        Sources { stage: stage.or_else(|| env.get("STAGE").cloned()), config_dir, extra_file, env }
    }
}

/// `./config` when it exists, else the directory next to the crate's sources (for `cargo run`
/// from elsewhere), else `/etc/atlas-codex`.
fn default_config_dir() -> PathBuf {
    let cwd = PathBuf::from("config");
    if cwd.join("default.toml").exists() {
        return cwd;
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    if built.join("default.toml").exists() {
        return built;
    }
    PathBuf::from("/etc/atlas-codex")
}

/// The seed's variables and the key each one sets.
const SEED: &[(&str, &str)] = &[
    ("GPT5_ENABLED", "routing.gpt5_enabled"),
    ("FORCE_GPT4", "routing.force_gpt4"),
    ("DEFAULT_MODEL_STRATEGY", "routing.strategy"),
    ("MONTHLY_BUDGET", "budget.monthly_usd"),
    ("OPENAI_BASE_URL", "llm.base_url"),
];

type Builder = config::ConfigBuilder<config::builder::DefaultState>;

impl Settings {
    /// Loads and validates one stage's settings.
    pub fn load(src: &Sources) -> Result<Settings, ConfigError> {
        let stage = src.stage.clone().unwrap_or_else(|| "local".into());
        let fail = |problems: Vec<String>| ConfigError { stage: stage.clone(), problems };
        let mut problems = Vec::new();
        if !valid_stage_name(&stage) {
            let hint = suggest_stage(&stage).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
            return Err(fail(vec![format!("stage `{stage}` must match [a-z0-9-]{{1,32}}{hint}")]));
        }
        // The built-in defaults are merged in after `config` has layered the files and the
        // environment (see `deep_merge`): fed to `config` as a source, their keys are split on
        // dots, so a model id such as `gpt-4.1` would become `gpt-4` → `1`.
        let b = file_layers(src, &stage, &mut problems);
        let b = seed_layer(b, src).map_err(|e| fail(vec![e]))?;
        let b = b.set_override("stage", stage.clone()).map_err(|e| fail(vec![e.to_string()]))?;
        let b = env_layer(b, src, &mut problems).map_err(|e| fail(vec![e]))?;
        let layered: Value = b.build().and_then(|c| c.try_deserialize::<Value>()).map_err(|e| fail(vec![e.to_string()]))?;
        let mut merged = serde_json::to_value(Settings::default()).map_err(|e| fail(vec![format!("defaults: {e}")]))?;
        deep_merge(&mut merged, layered);
        // Unknown keys, every one of them.
        let known = serde_json::to_value(Settings::default()).unwrap_or(Value::Null);
        unknown_keys(&merged, &known, "", &mut problems);
        let settings = if problems.is_empty() { parse_sections(&merged, src, &mut problems) } else { None };
        let Some(mut s) = settings else { return Err(fail(problems)) };
        s.llm.api_key = src.env.get("OPENAI_API_KEY").filter(|k| !k.is_empty()).map(Secret::new);
        s.webhooks.secret = src.env.get(WEBHOOK_SECRET_ENV).filter(|k| !k.is_empty()).map(Secret::new);
        problems.extend(s.problems());
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(fail(problems))
        }
    }
}

/// `default.toml`, `{stage}.toml` and `--config FILE`, in that order; missing files are problems.
fn file_layers(src: &Sources, stage: &str, problems: &mut Vec<String>) -> Builder {
    let mut b = config::Config::builder();
    let default_file = src.config_dir.join("default.toml");
    if default_file.exists() {
        b = b.add_source(config::File::from(default_file));
    }
    let stage_file = src.config_dir.join(format!("{stage}.toml"));
    if stage_file.exists() {
        b = b.add_source(config::File::from(stage_file.clone()));
    } else if !KNOWN_STAGES.contains(&stage) {
        let hint = suggest_stage(stage).map(|k| format!("; did you mean `{k}`?")).unwrap_or_default();
        problems.push(format!("no config file for stage `{stage}` ({}){hint}", stage_file.display()));
    }
    if let Some(f) = &src.extra_file {
        if !f.exists() {
            problems.push(format!("--config file {} does not exist", f.display()));
        } else {
            b = b.add_source(config::File::from(f.clone()));
        }
    }
    b
}

/// The seed's switches (`GPT5_ENABLED`, `MONTHLY_BUDGET`, ...) over the files.
fn seed_layer(mut b: Builder, src: &Sources) -> Result<Builder, String> {
    for (var, key) in SEED {
        if let Some(v) = src.env.get(*var) {
            b = match parse_scalar(v) {
                Scalar::Bool(x) => b.set_override(*key, x),
                Scalar::Float(x) => b.set_override(*key, x),
                Scalar::Str(x) => b.set_override(*key, x),
            }
            .map_err(|e| format!("{var}: {e}"))?;
        }
    }
    Ok(b)
}

/// `ATLAS__SECTION__KEY` overrides, last.
fn env_layer(mut b: Builder, src: &Sources, problems: &mut Vec<String>) -> Result<Builder, String> {
    for (k, v) in &src.env {
        let Some(rest) = k.strip_prefix("ATLAS__") else { continue };
        let key = rest.split("__").map(|p| p.to_ascii_lowercase()).collect::<Vec<_>>().join(".");
        if key == "stage" {
            // The stage chose the files already loaded; changing it here would mix stages.
            problems.push(format!("{k} cannot set the stage; use --stage or STAGE"));
            continue;
        }
        // A string key keeps the text as it is, even when it looks like a number or a bool.
        let string_key = default_at(&key).is_some_and(|d| d.is_string());
        b = match parse_scalar(v) {
            _ if string_key => b.set_override(&key, v.clone()),
            Scalar::Bool(x) => b.set_override(&key, x),
            Scalar::Float(x) if !v.contains('.') && x.fract() == 0.0 && x.abs() < 9e15 => b.set_override(&key, x as i64),
            Scalar::Float(x) => b.set_override(&key, x),
            Scalar::Str(x) => b.set_override(&key, x),
        }
        .map_err(|e| format!("{k}: {e}"))?;
    }
    Ok(b)
}

/// The merged tree as [`Settings`]; when it does not fit, one problem per bad section rather than
/// the first error only, naming the key (and the seed variable that set it, if one did).
fn parse_sections(merged: &Value, src: &Sources, problems: &mut Vec<String>) -> Option<Settings> {
    if let Ok(s) = serde_json::from_value::<Settings>(merged.clone()) {
        return Some(s);
    }
    if let Value::Object(m) = merged {
        for (section, v) in m {
            let mut probe = serde_json::Map::new();
            probe.insert(section.clone(), v.clone());
            if let Err(e) = serde_path_to_error::deserialize::<_, Settings>(Value::Object(probe)) {
                let path = e.path().to_string();
                let via = SEED
                    .iter()
                    .find(|(_, k)| *k == path)
                    .filter(|(var, _)| src.env.contains_key(*var))
                    .map(|(var, _)| format!(" (from {var})"))
                    .unwrap_or_default();
                problems.push(format!("{path}{via}: {}", e.inner()));
            }
        }
    }
    None
}

/// The built-in default at a dotted key path (`worker.concurrency`, `models.gpt-4o.family`), if any.
fn default_at(path: &str) -> Option<Value> {
    let parts: Vec<&str> = path.split('.').collect();
    let (mut cur, rest) = match parts.as_slice() {
        ["models", _id, rest @ ..] => (serde_json::to_value(ModelSettings::default()).ok()?, rest),
        all => (serde_json::to_value(Settings::default()).ok()?, all),
    };
    for p in rest {
        cur = cur.get(*p)?.clone();
    }
    Some(cur)
}

/// Lays `over` onto `base` the way `config` layers sources: tables merge key by key, anything else
/// (scalars, arrays) replaces.
fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => deep_merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

enum Scalar {
    Bool(bool),
    Float(f64),
    Str(String),
}

fn parse_scalar(v: &str) -> Scalar {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => return Scalar::Bool(true),
        "false" => return Scalar::Bool(false),
        _ => {}
    }
    match v.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => Scalar::Float(f),
        _ => Scalar::Str(v.to_string()),
    }
}

fn unknown_keys(v: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(m), Value::Object(k)) = (v, known) else { return };
    for (key, val) in m {
        let p = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        if path == "models" {
            // Model ids are free; their fields are checked against a default model.
            let proto = serde_json::to_value(ModelSettings::default()).unwrap_or(Value::Null);
            unknown_keys(val, &proto, &p, out);
            continue;
        }
        if path == "routing.fallbacks" {
            continue;
        }
        match k.get(key) {
            None => out.push(format!("unknown key `{p}`")),
            Some(kv) => unknown_keys(val, kv, &p, out),
        }
    }
}
