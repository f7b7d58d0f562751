#!/usr/bin/env bash
# The one test command (README; `.ci/run` calls exactly this). Installs what the tests need
# (idempotently), starts a moto server on loopback, builds once in release mode (`cargo build
# --release --locked`; the Dockerfile runs the same build without the `testkit` feature) after
# `cargo fmt --check` and `cargo clippy -D warnings` (all targets, and the image's build), checks
# `cargo doc` with warnings as errors, then runs
# every test:
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

echo "== format and lints =="
# rustfmt.toml is the style; clippy warnings fail, tests included. Both ship with the toolchain
# (components rustfmt, clippy); a toolchain without them is reported, not silently passed.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check || { echo "unformatted code: run cargo fmt" >&2; exit 1; }
else
  echo "WARNING: rustfmt is not installed (rustup component add rustfmt); format not checked" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --release --locked --all-targets -- -D warnings
  # The image's build (no `testkit`: no OpenAI mock in the shipped binary) is lint-clean too.
  cargo clippy --release --locked --no-default-features -- -D warnings
else
  echo "WARNING: clippy is not installed (rustup component add clippy); lints not checked" >&2
fi

echo "== build (release) =="
cargo build --release --locked
export ATLAS_BIN="$ROOT/target/release/atlas-codex"

echo "== docs =="
# Doc warnings (broken or private intra-doc links) fail; after the build, whose artefacts it reuses.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --release --locked

echo "== rust tests =="
cargo nextest run --release --locked --no-fail-fast --profile ci

echo "== observability checks =="
./scripts/check-observability.sh

echo "== deployment checks =="
./scripts/check-deploy.sh

echo "all test stages passed"
