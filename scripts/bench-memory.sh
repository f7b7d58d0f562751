#!/usr/bin/env bash
# Peak RSS of the worker on large inputs (issue #15's memory bound), printed as numbers.
#
#   scripts/bench-memory.sh [LINKS] [JOBS] [CONCURRENCY...]
#
# Builds an HTML page of LINKS links (default 60,000: ~3.9 MB, under fetch.max_body_bytes), submits
# JOBS copies (default 8; the CLI claim-checks them into inputs/) to a scratch local stage, and runs
# `worker --exit-when-idle` under /usr/bin/time once per concurrency level (default 1 and 8), with
# the simulated model of the local stage. Also prints the peak of one tiny job for comparison.
# Needs a release build (target/release/atlas-codex) and GNU time (Debian package `time`).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ATLAS_BIN:-$PWD/target/release/atlas-codex}
LINKS=${1:-60000}
JOBS=${2:-8}
shift $(( $# > 2 ? 2 : $# ))
LEVELS=("${@:-1 8}")
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install time" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$LINKS" "$JOBS" "$WORK/jobs.jsonl" <<'PY'
import json, sys
links, jobs, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
html = "<html><head><title>Link farm</title></head><body><main><h1>Catalogue</h1>" + "".join(
    f'<p>Item {i} <a href="/item/{i}?ref=cat">Product {i}</a></p>' for i in range(links)) + "</main></body></html>"
schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
with open(out, "w") as f:
    for _ in range(jobs):
        f.write(json.dumps({"html": html, "instructions": "Extract the page title.", "schema": schema}) + "\n")
print(f"page: {len(html):,} bytes, {links:,} links; {jobs} jobs")
PY
peak() { # data-dir concurrency jobs-file -> prints "peak MiB, wall s"
  export ATLAS__STORAGE__DATA_DIR="$1" ATLAS__ADMIN__LISTEN= ATLAS__WORKER__CONCURRENCY="$2"
  "$BIN" submit "$3" >/dev/null
  /usr/bin/time -f '%M %e' -o "$WORK/time" "$BIN" worker --exit-when-idle >/dev/null 2>"$WORK/worker.log"
  read -r kib secs <"$WORK/time"
  awk -v k="$kib" -v s="$secs" 'BEGIN { printf "peak RSS %.0f MiB, %.1f s\n", k / 1024, s }'
}
printf '{"text":"Summit 45 Pack. Price $189.00.","instructions":"x","schema":{"type":"object","properties":{"t":{"type":"string"}}}}\n' >"$WORK/tiny.jsonl"
echo "one tiny job: $(peak "$WORK/tiny" 1 "$WORK/tiny.jsonl")"
for c in ${LEVELS[*]}; do
  echo "concurrency $c: $(peak "$WORK/c$c" "$c" "$WORK/jobs.jsonl")"
done
