//! A small parser for the Prometheus text exposition format, so tests can assert on metric values
//! (e.g. "after N jobs, `atlas_jobs_total{outcome="completed"}` equals the records' count").
//!
//! Only what `/metrics` produces is supported: `# HELP` / `# TYPE` comments and
//! `name{label="value",...} number [timestamp]` samples with escaped label values.

use std::collections::BTreeMap;

/// One sample line: metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name as exported (histograms give `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Label pairs, `stage` included.
    pub labels: BTreeMap<String, String>,
    /// The value (`+Inf`, `-Inf` and `NaN` understood).
    pub value: f64,
}

/// Why a line could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses every sample of an exposition text; comments and blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).map_err(|reason| ParseError { line: i + 1, reason })?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).ok_or("no value")?;
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return Err("empty metric name".into());
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut chars = rest.char_indices().skip(1).peekable();
        let end = loop {
            // skip separators
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.peek() {
                Some((j, '}')) => break *j,
                None => return Err("unterminated label set".into()),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            match chars.next() {
                Some((_, '"')) => {}
                _ => return Err(format!("label {key} has no quoted value")),
            }
            let mut val = String::new();
            let mut closed = false;
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, other)) => val.push(other),
                        None => return Err("dangling escape".into()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return Err(format!("label {key} value not closed"));
            }
            labels.insert(key.trim().to_string(), val);
        };
        rest = &rest[end + 1..];
    }
    let value_text = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("bad value {v:?}: {e}"))?,
    };
    Ok(Sample { name, labels, value })
}

fn matches(s: &Sample, name: &str, filter: &[(&str, &str)]) -> bool {
    s.name == name && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

/// The value of the one series named `name` whose labels include every pair of `labels`
/// (other labels, e.g. `stage`, may be present). 0.0 when no series matches (a counter that was
/// never incremented). Panics when the text does not parse or more than one series matches
/// (the test's filter is ambiguous).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = parse(text).unwrap_or_else(|e| panic!("metrics text does not parse: {e:?}"));
    let found: Vec<&Sample> = samples.iter().filter(|s| matches(s, name, labels)).collect();
    match found.as_slice() {
        [] => 0.0,
        [one] => one.value,
        many => panic!("{} series of {name} match {labels:?}: {many:?}", many.len()),
    }
}

/// The sum over every series named `name` whose labels include every pair of `label_filter`
/// (e.g. all `atlas_llm_tokens_total{kind="output"}` across models). 0.0 when none match.
pub fn sum_metric(text: &str, name: &str, label_filter: &[(&str, &str)]) -> f64 {
    let samples = parse(text).unwrap_or_else(|e| panic!("metrics text does not parse: {e:?}"));
    samples.iter().filter(|s| matches(s, name, label_filter)).map(|s| s.value).sum()
}

/// Whether the text has a `# HELP name ...` line with non-empty help and a `# TYPE name kind`.
pub fn has_help_and_type(text: &str, name: &str, kind: &str) -> bool {
    let help = format!("# HELP {name} ");
    let ty = format!("# TYPE {name} {kind}");
    text.lines().any(|l| l.starts_with(&help) && l.len() > help.len()) && text.lines().any(|l| l.trim_end() == ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a_total things\n# TYPE a_total counter\n\
        a_total{stage=\"t\",kind=\"x\"} 3\n\
        a_total{stage=\"t\",kind=\"y\"} 4.5\n\
        b{stage=\"t\",v=\"q\\\"uo,te}\"} 7 1700000000\n\
        c 2\n\
        h_bucket{le=\"+Inf\"} +Inf\n";

    #[test]
    fn parses_and_sums() {
        assert_eq!(metric_value(TEXT, "a_total", &[("kind", "x")]), 3.0);
        assert_eq!(sum_metric(TEXT, "a_total", &[]), 7.5);
        assert_eq!(sum_metric(TEXT, "a_total", &[("stage", "other")]), 0.0);
        assert_eq!(metric_value(TEXT, "b", &[("v", "q\"uo,te}")]), 7.0);
        assert_eq!(metric_value(TEXT, "c", &[]), 2.0);
        assert_eq!(metric_value(TEXT, "missing", &[]), 0.0);
        assert!(metric_value(TEXT, "h_bucket", &[]).is_infinite());
        assert!(has_help_and_type(TEXT, "a_total", "counter"));
        assert!(!has_help_and_type(TEXT, "b", "gauge"));
    }

    #[test]
    #[should_panic(expected = "2 series")]
    fn ambiguous_filter_panics() {
        metric_value(TEXT, "a_total", &[("stage", "t")]);
    }

    #[test]
    fn bad_lines_are_errors() {
        assert!(parse("x{a=\"1\" 2").is_err());
        assert!(parse("x{a=1} 2").is_err());
        assert!(parse("x notanumber").is_err());
    }
}
