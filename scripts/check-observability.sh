#!/usr/bin/env bash
# Checks the observability artifacts against each other and against the code:
#   - deploy/prometheus/alerts.yaml is a valid rule file (promtool check rules) and its unit tests
#     pass (promtool test rules deploy/prometheus/alerts.test.yaml); every alert has a test case
#     that expects it to fire and is documented in docs/metrics.md;
#   - deploy/grafana/atlas-codex.json is a valid dashboard: JSON, schemaVersion, unique panel ids,
#     a `stage` variable from label_values(atlas_worker_ready, stage), every atlas_ selector
#     filtered by that variable;
#   - every metric used by the dashboard or the alerts, and every metric defined in
#     src/telemetry/mod.rs, is in the docs/metrics.md catalogue, and the catalogue lists nothing the
#     code does not define; the documented histogram buckets equal the code's.
# Needs promtool (Debian package `prometheus`, installed by scripts/install-tools.sh) and python3.
# Prints `observability checks: N passed, M failed` and exits non-zero when M > 0.
set -uo pipefail
cd "$(dirname "$0")/.."

PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); printf 'ok   - %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL - %s\n' "$1"; [ -n "${2:-}" ] && printf '%s\n' "$2" | sed 's/^/       /'; }

ALERTS=deploy/prometheus/alerts.yaml
ALERT_TESTS=deploy/prometheus/alerts.test.yaml
DASHBOARD=deploy/grafana/atlas-codex.json
DOCS=docs/metrics.md
CODE=src/telemetry/mod.rs

for f in "$ALERTS" "$ALERT_TESTS" "$DASHBOARD" "$DOCS" "$CODE"; do
  if [ -f "$f" ]; then ok "$f exists"; else fail "$f is missing"; fi
done

if command -v promtool >/dev/null 2>&1; then
  if out=$(promtool check rules "$ALERTS" 2>&1); then ok "promtool check rules $ALERTS"; else fail "promtool check rules $ALERTS" "$out"; fi
  # promtool resolves rule_files relative to the test file.
  if out=$(promtool test rules "$ALERT_TESTS" 2>&1); then ok "promtool test rules $ALERT_TESTS"; else fail "promtool test rules $ALERT_TESTS" "$out"; fi
else
  fail "promtool not found (run scripts/install-tools.sh, or apt-get install prometheus)"
fi

# The cross-checks, in python (stdlib only). Each line it prints is `ok <text>` or `FAIL <text>`.
py_out=$(python3 - "$ALERTS" "$ALERT_TESTS" "$DASHBOARD" "$DOCS" "$CODE" <<'PY'
import json, re, sys

alerts_path, tests_path, dash_path, docs_path, code_path = sys.argv[1:]

def read(p):
    try:
        with open(p, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        print(f"FAIL cannot read {p}: {e}")
        return ""

def check(cond, text, detail=""):
    print(("ok " if cond else "FAIL ") + text + ("" if cond or not detail else f" :: {detail}"))

METRIC = re.compile(r"\batlas_[a-z0-9_]+")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")

docs = read(docs_path)
code = read(code_path)
alerts = read(alerts_path)
tests = read(tests_path)

# The catalogue: table rows whose first cell is a backticked atlas_ name.
catalogue = {}
for line in docs.splitlines():
    m = re.match(r"\|\s*`(atlas_[a-z0-9_]+)`\s*\|\s*(counter|gauge|histogram)\s*\|", line)
    if m:
        catalogue[m.group(1)] = m.group(2)
check(len(catalogue) >= 20, f"docs catalogue lists {len(catalogue)} metrics")

def known(name):
    if name in catalogue:
        return True
    for s in HIST_SUFFIXES:
        if name.endswith(s) and catalogue.get(name[: -len(s)]) == "histogram":
            return True
    return False

# Code <-> docs.
defined = set(re.findall(r'pub const [A-Z_]+: &str = "(atlas_[a-z0-9_]+)";', code))
check(len(defined) >= 20, f"{code_path} defines {len(defined)} metric names")
missing = sorted(defined - set(catalogue))
check(not missing, "every metric defined in code is documented", ", ".join(missing))
stale = sorted(set(catalogue) - defined)
check(not stale, "every documented metric is defined in code", ", ".join(stale))
for n in sorted(defined):
    if n.endswith("_total"):
        check(catalogue.get(n) == "counter", f"{n} ends in _total and is documented as a counter")

# Histogram buckets: code constants == docs table.
bucket_consts = {
    "JOB_DURATION_BUCKETS": "atlas_job_duration_seconds",
    "QUEUE_WAIT_BUCKETS": "atlas_job_queue_wait_seconds",
    "LLM_LATENCY_BUCKETS": "atlas_llm_request_duration_seconds",
}
for const, metric in bucket_consts.items():
    m = re.search(r"pub const " + const + r": &\[f64\] =\s*&\[([^\]]*)\]", code)
    d = re.search(r"\|\s*`" + metric + r"`\s*\|\s*([0-9., ]+)\|", docs)
    if not m or not d:
        check(False, f"buckets of {metric} found in code and docs")
        continue
    in_code = [float(x) for x in m.group(1).replace("\n", " ").split(",") if x.strip()]
    in_docs = [float(x) for x in d.group(1).split(",") if x.strip()]
    check(in_code == in_docs, f"documented buckets of {metric} match the code", f"code {in_code} docs {in_docs}")
    check(catalogue.get(metric) == "histogram", f"{metric} is documented as a histogram")

# Alerts: metrics documented, each alert tested (firing case) and documented.
alert_names = re.findall(r"^\s*- alert:\s*(\S+)", alerts, re.M)
check(len(alert_names) >= 7, f"{alerts_path} has {len(alert_names)} alerts")
used = set()
for expr_block in re.findall(r"expr:\s*(\|[^\n]*\n(?:\s{10,}.*\n)+|[^\n]+)", alerts):
    used.update(METRIC.findall(expr_block))
unknown = sorted(n for n in used if not known(n))
check(used and not unknown, f"all {len(used)} metrics used by the alerts are documented", ", ".join(unknown))
# Per-test-case split, then: alertname with a non-empty exp_alerts.
tested_firing = set()
for case in re.split(r"\n\s*- eval_time:", tests)[1:]:
    m = re.search(r"alertname:\s*(\S+)", case)
    if m and re.search(r"exp_alerts:\s*\n\s*- exp_labels:", case):
        tested_firing.add(m.group(1))
for a in alert_names:
    check(a in tested_firing, f"alert {a} has a unit test where it fires")
    check(f"`{a}`" in docs, f"alert {a} is documented in {docs_path}")
for a in sorted(tested_firing - set(alert_names)):
    check(False, f"test names alert {a}, which alerts.yaml does not define")
check(all("{{ $labels.stage }}" in blk for blk in re.split(r"\n\s*- alert:", alerts)[1:]),
      "every alert's annotations name the stage")

# Dashboard.
try:
    dash = json.loads(read(dash_path) or "null")
except json.JSONDecodeError as e:
    dash = None
    check(False, f"{dash_path} is valid JSON", str(e))
if isinstance(dash, dict):
    check(True, f"{dash_path} is valid JSON")
    sv = dash.get("schemaVersion")
    check(isinstance(sv, int) and 36 <= sv <= 41, f"schemaVersion is about 39 ({sv})")
    check(bool(dash.get("title")) and bool(dash.get("uid")), "dashboard has a title and a uid")
    tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    stage = tvars.get("stage")
    q = stage.get("query") if stage else None
    q = q.get("query") if isinstance(q, dict) else q
    check(q == "label_values(atlas_worker_ready, stage)", "stage variable is label_values(atlas_worker_ready, stage)", repr(q))
    check("datasource" in tvars, "dashboard has a datasource variable")

    def walk(ps):
        for p in ps:
            yield p
            yield from walk(p.get("panels", []))

    panels = list(walk(dash.get("panels", [])))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)) and None not in ids, f"{len(panels)} panels with unique ids")
    exprs = []
    for p in panels:
        if p.get("type") == "row":
            continue
        gp = p.get("gridPos", {})
        check(all(isinstance(gp.get(k), int) for k in "hwxy") and gp.get("x", 0) + gp.get("w", 0) <= 24,
              f"panel {p.get('title')!r} has a valid gridPos")
        targets = p.get("targets") or []
        check(bool(targets) and all(t.get("expr") for t in targets), f"panel {p.get('title')!r} has queries")
        exprs += [t.get("expr", "") for t in targets]
    dused = set()
    unfiltered = []
    for e in exprs:
        for m in re.finditer(r"\b(atlas_[a-z0-9_]+)(\{[^}]*\})?", e):
            dused.add(m.group(1))
            if not m.group(2) or 'stage=~"$stage"' not in m.group(2):
                unfiltered.append(m.group(0))
    unknown = sorted(n for n in dused if not known(n))
    check(dused and not unknown, f"all {len(dused)} metrics used by the dashboard are documented", ", ".join(unknown))
    check(not unfiltered, "every dashboard selector is filtered by $stage", ", ".join(unfiltered))
    check(any("histogram_quantile" in e for e in exprs), "dashboard shows latency quantiles from histograms")
    text = " ".join(p.get("title", "") for p in panels).lower()
    for topic in ["throughput", "latency", "cost", "budget", "model", "error", "queue", "rate-limit"]:
        check(topic in text, f"dashboard covers {topic}")
PY
)
py_rc=$?
while IFS= read -r line; do
  case "$line" in
    ok\ *) ok "${line#ok }" ;;
    FAIL\ *) fail "${line#FAIL }" ;;
    "") ;;
    *) fail "unexpected checker output: $line" ;;
  esac
done <<<"$py_out"
[ "$py_rc" = 0 ] || fail "python checker exited $py_rc"

echo "observability checks: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
