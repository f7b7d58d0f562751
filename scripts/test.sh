#!/usr/bin/env bash
# The one test command (README; `.ci/run` calls exactly this). Installs what the tests need
# (idempotently), starts a moto server on loopback, builds once in release mode (the same
# `cargo build --release --locked` the Dockerfile runs), then runs every test:
#   1. the Rust suite (unit, conformance on SQLite and moto, engine, extraction, cost, AWS end to
#      end, observability, chaos, bad input) with cargo-nextest;
#   2. the observability checks (promtool check/test rules, dashboard vs metrics catalogue);
#   3. the deployment checks (helm lint/template/kubernetes-validate for both stages, cfn-lint,
#      the CloudFormation stack deployed into moto and a worker run against it).
# Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

./scripts/install-tools.sh
export PATH="$ROOT/.tools/bin:$ROOT/.venv/bin:$HOME/.cargo/bin:$PATH"

eval "$(./scripts/moto.sh start)"
trap './scripts/moto.sh stop >/dev/null 2>&1 || true' EXIT
export ATLAS_TEST_MOTO_ENDPOINT

echo "== build (release) =="
cargo build --release --locked
export ATLAS_BIN="$ROOT/target/release/atlas-codex"

echo "== rust tests =="
cargo nextest run --release --locked --no-fail-fast --profile ci

echo "== observability checks =="
./scripts/check-observability.sh

echo "== deployment checks =="
./scripts/check-deploy.sh

echo "all test stages passed"
