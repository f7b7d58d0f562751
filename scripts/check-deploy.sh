#!/usr/bin/env bash
# Checks the deployment artefacts offline: Helm chart (lint, render, schema, isolation between
# stages, render assertions), per-stage values against config/, CloudFormation (cfn-lint + static
# checks), `atlas-codex validate --all-stages` against the chart and the template and, when a moto
# server is available, a real create_stack of both stages into it with the worker run against each.
#
#   scripts/check-deploy.sh          offline checks; plus the moto step when ATLAS_TEST_MOTO_ENDPOINT is set
#   scripts/check-deploy.sh --moto   also start a moto server (scripts/moto.sh) if none is given, stop it after
#
# ATLAS_BIN=path/to/atlas-codex (scripts/test.sh exports the release build; locally `cargo build` and
# use target/debug/atlas-codex) enables the checks that run the binary. Nothing is built here: without
# ATLAS_BIN they are skipped with a loud note, except in CI (`CI` set), where that is a failure.
#
# Needs the tools of scripts/install-tools.sh (.venv, .tools/bin). Prints one line per check and a
# closing `deploy-checks: N passed, M failed`; exits non-zero on any failure.
#
# Adding a step: write a function `step_NAME` that records its checks (call `record NAME CMD...` for a
# command whose exit code is the verdict, or run a python script that uses scripts/checklib.py), then
# list it in STEPS below.
set -uo pipefail
# A relative ATLAS_BIN means relative to where the caller stands, not to the repo root.
case "${ATLAS_BIN:-}" in "" | /*) ;; *) ATLAS_BIN="$PWD/$ATLAS_BIN"; export ATLAS_BIN ;; esac
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PWD/.venv/bin:$PATH"

WITH_MOTO=0
for arg in "$@"; do
  case "$arg" in
    --moto) WITH_MOTO=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

DEPLOY_CHECK_RESULTS=$(mktemp "${TMPDIR:-/tmp}/deploy-checks.XXXXXX")
export DEPLOY_CHECK_RESULTS
STARTED_MOTO=0
finish() {
  if [ "$STARTED_MOTO" = 1 ]; then ./scripts/moto.sh stop >/dev/null 2>&1 || true; fi
  rm -f "$DEPLOY_CHECK_RESULTS"
}
trap finish EXIT

# record NAME CMD... : runs CMD; exit status 0 is a pass. Output is shown only on failure.
record() {
  local name=$1 out rc
  shift
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" = 0 ]; then
    echo "ok   - $name"
    printf 'PASS\t%s\n' "$name" >>"$DEPLOY_CHECK_RESULTS"
  else
    echo "FAIL - $name (exit $rc)"
    printf '%s\n' "$out" | tail -40 | sed 's/^/       /'
    printf 'FAIL\t%s\texit %s\n' "$name" "$rc" >>"$DEPLOY_CHECK_RESULTS"
  fi
  return "$rc"
}

# run_py NAME SCRIPT ARGS... : a checklib script records its own checks; a crash that recorded no
# failure is recorded as one.
run_py() {
  local name=$1 before after rc
  shift
  before=$(grep -c '^FAIL' "$DEPLOY_CHECK_RESULTS" || true)
  .venv/bin/python "$@"
  rc=$?
  after=$(grep -c '^FAIL' "$DEPLOY_CHECK_RESULTS" || true)
  if [ "$rc" != 0 ] && [ "$after" = "$before" ]; then
    echo "FAIL - $name exited $rc without reporting a failed check"
    printf 'FAIL\t%s\texit %s\n' "$name" "$rc" >>"$DEPLOY_CHECK_RESULTS"
  fi
}

step_tools() {
  echo "# tools"
  record "tools: helm 4 on PATH (.tools/bin)" bash -c 'helm version --short | grep -q "^v4\."' &&
  record "tools: .venv with PyYAML, kubernetes-validate, jsonschema, cfn-lint, boto3" \
    .venv/bin/python -c 'import yaml, kubernetes_validate, jsonschema, cfnlint, boto3'
}

step_offline() {
  run_py "deploy_checks.py" scripts/deploy_checks.py
}

step_moto() {
  echo "# moto"
  if [ -z "${ATLAS_TEST_MOTO_ENDPOINT:-}" ] && [ "$WITH_MOTO" = 1 ]; then
    local line
    if ! ./scripts/moto.sh status >/dev/null 2>&1; then STARTED_MOTO=1; fi
    line=$(./scripts/moto.sh start) || { record "moto: server starts" false; return; }
    eval "$line"
    export ATLAS_TEST_MOTO_ENDPOINT
  fi
  if [ -z "${ATLAS_TEST_MOTO_ENDPOINT:-}" ]; then
    echo "note - ATLAS_TEST_MOTO_ENDPOINT not set: CloudFormation-into-moto step skipped (use --moto)"
    return
  fi
  run_py "cfn_moto_check.py" scripts/cfn_moto_check.py
}

STEPS=(step_tools step_offline step_moto)

if step_tools; then
  for s in "${STEPS[@]:1}"; do "$s"; done
else
  echo "run scripts/install-tools.sh first"
fi

passed=$(grep -c '^PASS' "$DEPLOY_CHECK_RESULTS" || true)
failed=$(grep -c '^FAIL' "$DEPLOY_CHECK_RESULTS" || true)
if [ "$failed" != 0 ]; then
  echo
  echo "failed checks:"
  grep '^FAIL' "$DEPLOY_CHECK_RESULTS" | cut -f2 | sed 's/^/  - /'
fi
echo "deploy-checks: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
