//! Stage names and the cross-stage isolation check behind `validate --all-stages`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Settings;

/// The stages this project ships config for.
pub const KNOWN_STAGES: &[&str] = &["local", "preview", "production"];

/// The known stage a mistyped or shortened name most likely meant (`prod` → `production`,
/// `preveiw` → `preview`), or `None` when nothing is close.
pub fn suggest_stage(stage: &str) -> Option<&'static str> {
    let s = stage.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    const ALIASES: &[(&str, &str)] =
        &[("prod", "production"), ("prd", "production"), ("dev", "local"), ("stg", "preview"), ("staging", "preview")];
    if let Some((_, k)) = ALIASES.iter().find(|(a, _)| *a == s) {
        return Some(k);
    }
    if let Some(k) = KNOWN_STAGES.iter().find(|k| k.starts_with(s.as_str()) && s.len() >= 3) {
        return Some(k);
    }
    KNOWN_STAGES.iter().map(|k| (edit_distance(&s, k), *k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

/// Levenshtein distance, for [`suggest_stage`].
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

pub(super) fn valid_stage_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// If `name` mentions a known stage other than `stage` as a `-`/`_`/`.` separated word, that stage.
pub fn names_other_stage(name: &str, stage: &str) -> Option<&'static str> {
    let words: Vec<&str> = name.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    KNOWN_STAGES.iter().copied().find(|s| *s != stage && words.contains(s))
}

/// A clash between two stages found by [`check_isolation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Clash {
    /// What is shared (`queue`, `bucket`, ...).
    pub what: String,
    /// The shared name.
    pub name: String,
    /// The stages that share it (or the stage whose resource names another stage).
    pub stages: Vec<String>,
}

/// The seed's isolation check: no two stages share a queue, DLQ, table, bucket or metrics
/// namespace, and no stage's resource names another stage.
pub fn check_isolation(all: &[Settings]) -> Vec<Clash> {
    let mut clashes = Vec::new();
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for s in all {
        for (what, name) in s.resource_names() {
            if let Some(other) = names_other_stage(&name, &s.stage) {
                clashes.push(Clash { what: what.into(), name: name.clone(), stages: vec![s.stage.clone(), other.to_string()] });
            }
            // Queues and DLQs live in one namespace, tables in another.
            let ns = match what {
                "queue" | "dlq" => "sqs",
                "jobs table" | "budget table" => "dynamodb",
                "bucket" => "s3",
                _ => "metrics",
            };
            let key = format!("{ns}:{name}");
            if let Some((stage0, what0)) = seen.get(&key) {
                if stage0 != &s.stage || what0 != what {
                    clashes.push(Clash {
                        what: if what0 == what { what.into() } else { format!("{what0}/{what}") },
                        name: name.clone(),
                        stages: vec![stage0.clone(), s.stage.clone()],
                    });
                }
            } else {
                seen.insert(key, (s.stage.clone(), what.to_string()));
            }
        }
    }
    clashes
}
