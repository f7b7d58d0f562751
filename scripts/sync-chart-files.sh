#!/usr/bin/env bash
# Copies the files the Helm chart carries from elsewhere in the repo into helm/atlas-codex-worker/files/
# (Helm cannot read outside the chart directory):
#   config/default.toml           -> files/default.toml   (the shared config layer of every stage)
#   deploy/prometheus/alerts.yaml -> files/alerts.yaml    (rules of the optional PrometheusRule)
# scripts/check-deploy.sh fails when a copy differs from its source; run this after editing either.
set -euo pipefail
cd "$(dirname "$0")/.."
dst=helm/atlas-codex-worker/files
mkdir -p "$dst"
cp config/default.toml "$dst/default.toml"
if [ -f deploy/prometheus/alerts.yaml ]; then
  cp deploy/prometheus/alerts.yaml "$dst/alerts.yaml"
else
  rm -f "$dst/alerts.yaml"
fi
echo "chart files synced into $dst"
