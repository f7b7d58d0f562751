#!/usr/bin/env python3
"""Offline checks of the deployment artefacts: Helm chart, per-stage values, CloudFormation template.

Usage: deploy_checks.py [GROUP ...]   (default: every group, in order)

Groups:
  chart-files  the chart's copies (files/default.toml, files/alerts.yaml) equal their sources
  values       deploy/helm/values-{stage}.yaml agree with config/{stage}.toml
  lint         `helm lint --strict` with each stage's values
  render       each stage's render: kubernetes-validate --strict (built-in kinds), CRD schemas
               (KEDA, Prometheus Operator), and the pod's contract (probes, security, config, secret)
  isolation    the two stages' renders share no object or selector and name only their own stage
  assertions   render tests with changed values (monitoring, autoscaler exclusivity, grace period, ...)
  cfn          cfn-lint plus static checks of deploy/cloudformation/atlas-codex-stage.yaml
  names        `$ATLAS_BIN validate --all-stages --output json` is ok and the resource names it derives
               for each stage equal the rendered chart's (pod config and env, KEDA queue URL, IRSA
               role and ServiceAccount) and the template's (names with Stage substituted, role policy);
               needs ATLAS_BIN (skipped with a note without it, a failure when CI is set)
  irsa         each documented install line (the comment of deploy/helm/values-{stage}.yaml and
               docs/deploy.md's) renders, as written, the ServiceAccount (namespace and name) that the
               stage's stack trusts: the template's `:sub` condition resolved for the parameters
               docs/deploy.md deploys it with (Stage, the rest defaults)
  docker       the Dockerfile agrees with the crate (compiled-in dirs copied) and the chart (uid, port)

Needs `helm` on PATH and the repo's .venv (PyYAML, kubernetes-validate, jsonschema, cfn-lint).
Results go to stdout and, via checklib, to $DEPLOY_CHECK_RESULTS. Exit code 1 on any failure.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checklib import Results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "atlas-codex-worker"
STAGES = ("preview", "production")
ALL_KNOWN_STAGES = ("local", "preview", "production")
K8S_VERSIONS = ("1.30.0", "1.35.0")
CFN_TEMPLATE = ROOT / "deploy" / "cloudformation" / "atlas-codex-stage.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
R = Results()


# ----------------------------------------------------------------------------- helpers
def values_file(stage: str) -> Path:
    return ROOT / "deploy" / "helm" / f"values-{stage}.yaml"


def release(stage: str) -> str:
    """The release name docs/deploy.md uses for a stage."""
    return f"atlas-codex-worker-{stage}"


def namespace(stage: str) -> str:
    return f"atlas-codex-{stage}"


def load_values(stage: str) -> dict:
    with open(values_file(stage), encoding="utf-8") as f:
        return yaml.safe_load(f)


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def effective_config(stage: str) -> dict:
    """config/default.toml with config/{stage}.toml laid over it (the file layers of settings.rs)."""
    base = tomllib.loads((ROOT / "config" / "default.toml").read_text())
    layer = tomllib.loads((ROOT / "config" / f"{stage}.toml").read_text())
    return deep_merge(base, layer)


class Render:
    """The outcome of one `helm template`."""

    def __init__(self, rc: int, out: str, err: str):
        self.rc, self.out, self.err = rc, out, err
        self.docs: list[dict] = []
        if rc == 0:
            self.docs = [d for d in yaml.safe_load_all(out) if d]

    def kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict:
        found = self.kind(kind)
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]


def helm_template(stage: str, *, rel: str | None = None, ns: str | None = None,
                  sets: list[str] = (), values: dict | None = None,
                  skip_schema: bool = False, base_values: bool = True) -> Render:
    """Renders the chart for `stage` with its values file, plus `values` (a dict) and `--set`s."""
    cmd = ["helm", "template", rel or release(stage), str(CHART), "--namespace", ns or namespace(stage)]
    if base_values:
        cmd += ["-f", str(values_file(stage))]
    tmp = None
    if values is not None:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        yaml.safe_dump(values, tmp)
        tmp.close()
        cmd += ["-f", tmp.name]
    for s in sets:
        cmd += ["--set", s]
    if skip_schema:
        cmd.append("--skip-schema-validation")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        if tmp:
            os.unlink(tmp.name)
    return Render(p.returncode, p.stdout, p.stderr)


def alert_groups_for(groups: list[dict], stage: str) -> list[dict]:
    """alerts.yaml's groups as the chart ships them for `stage`: rules labelled with another stage
    dropped (templates/prometheusrule.yaml), empty groups left out."""
    out = []
    for g in groups:
        kept = [x for x in g.get("rules", []) if (x.get("labels") or {}).get("stage") in (None, "", stage)]
        if kept:
            out.append({**g, "rules": kept})
    return out


def container(dep: dict) -> dict:
    cs = dep["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1, f"expected one container, found {len(cs)}"
    return cs[0]


def env_map(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def expect_failure(r: Render, *needles: str) -> None:
    assert r.rc != 0, "render succeeded but should have failed"
    for n in needles:
        assert n in r.err, f"error does not mention {n!r}: {r.err.strip()[-400:]}"


# ----------------------------------------------------------------------------- chart-files
def group_chart_files() -> None:
    src, copy_ = ROOT / "config" / "default.toml", CHART / "files" / "default.toml"
    R.check("chart files/default.toml is identical to config/default.toml",
            copy_.is_file() and copy_.read_bytes() == src.read_bytes(),
            "differs or missing: run scripts/sync-chart-files.sh")
    acopy = CHART / "files" / "alerts.yaml"
    if ALERTS.is_file():
        R.check("chart files/alerts.yaml is identical to deploy/prometheus/alerts.yaml",
                acopy.is_file() and acopy.read_bytes() == ALERTS.read_bytes(),
                "differs or missing: run scripts/sync-chart-files.sh")
    else:
        R.note("deploy/prometheus/alerts.yaml does not exist yet: alerts copy not checked")
        R.check("chart carries no stale files/alerts.yaml when deploy/prometheus/alerts.yaml is absent",
                not acopy.exists(), "remove it: run scripts/sync-chart-files.sh")


# ----------------------------------------------------------------------------- values
def group_values() -> None:
    for stage in STAGES:
        def t(stage=stage):
            v = load_values(stage)
            assert v.get("stage") == stage, f"stage is {v.get('stage')!r}"
            chart_layer = tomllib.loads(v["config"]["stageToml"])
            repo_layer = tomllib.loads((ROOT / "config" / f"{stage}.toml").read_text())
            assert chart_layer == repo_layer, (
                f"config.stageToml differs from config/{stage}.toml: {chart_layer} != {repo_layer}")
        R.run(f"{stage}: values config.stageToml equals config/{stage}.toml", t)

        def w(stage=stage):
            v, cfg = load_values(stage), effective_config(stage)
            assert v["worker"]["concurrency"] == cfg["worker"]["concurrency"], (
                f"worker.concurrency {v['worker']['concurrency']} != config {cfg['worker']['concurrency']}")
            assert v["worker"]["drainTimeoutSeconds"] == cfg["worker"]["drain_timeout_secs"], (
                f"drainTimeoutSeconds {v['worker']['drainTimeoutSeconds']} != config "
                f"{cfg['worker']['drain_timeout_secs']}")
        R.run(f"{stage}: values worker.* equal the stage config (concurrency, drain timeout)", w)

        def names(stage=stage):
            v = load_values(stage)
            assert v["serviceAccount"]["roleArn"].endswith(f":role/atlas-codex-worker-{stage}"), \
                v["serviceAccount"]["roleArn"]
            assert v["autoscaling"]["keda"]["queueURL"].endswith(f"/atlas-codex-queue-{stage}"), \
                v["autoscaling"]["keda"]["queueURL"]
            assert v["openai"]["existingSecret"].endswith(f"-{stage}"), v["openai"]["existingSecret"]
        R.run(f"{stage}: values name the stage's role, queue and secret", names)

    def documented():
        # Every leaf value in the chart's values.yaml has a comment right above it (or on its line).
        lines = (CHART / "values.yaml").read_text().splitlines()
        undocumented = []
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9_]*):(.*)$", line)
            if not m:
                continue
            rest = m.group(3).strip()
            if rest == "" and i + 1 < len(lines) and re.match(rf"^{m.group(1)}\s+\S", lines[i + 1]) \
                    and not lines[i + 1].strip().startswith("- "):
                continue  # a mapping parent: its leaves carry the comments
            if "#" in rest:
                continue
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#") is False and lines[j].strip() == "":
                j -= 1
            if j < 0 or not lines[j].strip().startswith("#"):
                undocumented.append(m.group(2))
        assert not undocumented, f"values without a comment: {undocumented}"
    R.run("chart values.yaml: every value has a comment", documented)

    def policy():
        prod, prev = effective_config("production"), effective_config("preview")
        assert prod["routing"]["gpt5_enabled"] is False and prod["routing"]["force_gpt4"] is True
        assert prod["routing"]["strategy"] == "gpt4_stable" and prod["budget"]["monthly_usd"] == 2000
        assert prod["worker"]["concurrency"] == 128
        assert prev["routing"]["strategy"] == "gpt5_preview" and prev["budget"]["monthly_usd"] == 500
    R.run("stage policies: production GPT-4 only / 2000 USD / 128; preview gpt5_preview / 500 USD", policy)


# ----------------------------------------------------------------------------- lint
def group_lint() -> None:
    for stage in STAGES:
        p = subprocess.run(["helm", "lint", "--strict", str(CHART), "-f", str(values_file(stage)),
                            "--namespace", namespace(stage)], capture_output=True, text=True, timeout=120)
        R.check(f"{stage}: helm lint --strict", p.returncode == 0, (p.stdout + p.stderr)[-800:])


# ----------------------------------------------------------------------------- render
S = {"type": "string"}
I = {"type": "integer"}
STR_MAP = {"type": "object", "additionalProperties": S}
LABEL_SELECTOR = {"type": "object", "properties": {"matchLabels": STR_MAP, "matchExpressions": {"type": "array"}},
                  "additionalProperties": False}
META = {"type": "object", "required": ["name", "namespace"],
        "properties": {"name": S, "namespace": S, "labels": STR_MAP, "annotations": STR_MAP}}

# Subsets of the CRDs' OpenAPI schemas (KEDA 2.13+, Prometheus Operator v1): the fields this chart
# writes, strictly typed; unknown spec fields are rejected as the API server would prune/refuse them.
CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                                   "properties": {"apiVersion": S, "kind": S, "name": S,
                                                  "envSourceContainerName": S}},
                "pollingInterval": I, "cooldownPeriod": I, "initialCooldownPeriod": I,
                "idleReplicaCount": I, "minReplicaCount": I, "maxReplicaCount": I,
                "fallback": {"type": "object"}, "advanced": {"type": "object"},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                    "properties": {"type": S, "name": S, "metricType": S, "useCachedMetrics": {"type": "boolean"},
                                   "metadata": STR_MAP,
                                   "authenticationRef": {"type": "object", "additionalProperties": False,
                                                         "required": ["name"],
                                                         "properties": {"name": S, "kind": S}}}}}}}}},
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": META, "spec": {
            "type": "object", "additionalProperties": False,
            "properties": {"podIdentity": {
                "type": "object", "additionalProperties": False, "required": ["provider"],
                "properties": {"provider": {"enum": ["none", "azure-workload", "aws", "aws-eks", "gcp"]},
                               "identityOwner": {"enum": ["keda", "workload"]}, "roleArn": S,
                               "identityId": S}}}}}},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": LABEL_SELECTOR, "jobLabel": S,
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": S}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"port": S, "path": S, "interval": S, "scrapeTimeout": S, "scheme": S,
                                   "honorLabels": {"type": "boolean"},
                                   "relabelings": {"type": "array"},
                                   "metricRelabelings": {"type": "array"}}}}}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {"name": S, "interval": S, "limit": I, "partial_response_strategy": S,
                               "rules": {"type": "array", "minItems": 1, "items": {
                                   "type": "object", "additionalProperties": False, "required": ["expr"],
                                   "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                   "properties": {"alert": S, "record": S,
                                                  "expr": {"type": ["string", "integer"]},
                                                  "for": S, "keep_firing_for": S,
                                                  "labels": STR_MAP, "annotations": STR_MAP}}}}}}}}}},
}


def validate_docs(docs: list[dict]) -> list[str]:
    """Problems found validating each object (built-in kinds via kubernetes-validate, CRDs locally)."""
    problems = []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        label = f"{key[1]}/{d.get('metadata', {}).get('name')}"
        if key in CRD_SCHEMAS:
            try:
                jsonschema.validate(d, CRD_SCHEMAS[key])
            except jsonschema.ValidationError as e:
                problems.append(f"{label}: {e.message} at {list(e.absolute_path)}")
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(f"{label}: no schema for {key} in Kubernetes {v} (unknown kind)")
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{label} (k8s {v}): {e.message} at {list(e.path)}")
    return problems


def check_pod_contract(stage: str, r: Render) -> None:
    v = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), load_values(stage))
    dep = r.one("Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    env = env_map(c)
    drain = int(env["ATLAS__WORKER__DRAIN_TIMEOUT_SECS"]["value"])
    assert pod["terminationGracePeriodSeconds"] > drain, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= drain {drain}")
    assert drain == v["worker"]["drainTimeoutSeconds"]
    # Probes on the admin port, which is where ATLAS__ADMIN__LISTEN puts the server.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen_port = int(env["ATLAS__ADMIN__LISTEN"]["value"].rsplit(":", 1)[1])
    assert ports.get("admin") == listen_port == v["admin"]["port"], (ports, listen_port)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}, c["readinessProbe"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}, c["livenessProbe"]
    # Hardening.
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, psc
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, psc
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False, csc
    assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"], csc
    for part in ("requests", "limits"):
        assert set(c["resources"][part]) >= {"cpu", "memory"}, f"resources.{part}: {c['resources']}"
    vols = {vol["name"]: vol for vol in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "emptyDir" in vols[mounts["/tmp"]["name"]], "/tmp is not an emptyDir"
    # Config: ConfigMap mounted at ATLAS_CONFIG_DIR, holding default.toml + {stage}.toml.
    cfg_dir = env["ATLAS_CONFIG_DIR"]["value"]
    cm_name = vols[mounts[cfg_dir]["name"]]["configMap"]["name"]
    cms = [cm for cm in r.kind("ConfigMap") if cm["metadata"]["name"] == cm_name]
    assert len(cms) == 1, f"ConfigMap {cm_name} not rendered"
    data = cms[0]["data"]
    assert set(data) == {"default.toml", f"{stage}.toml"}, sorted(data)
    assert data["default.toml"].rstrip("\n") == (ROOT / "config/default.toml").read_text().rstrip("\n")
    assert tomllib.loads(data[f"{stage}.toml"]) == tomllib.loads((ROOT / f"config/{stage}.toml").read_text())
    # Stage and command line.
    assert env["STAGE"]["value"] == stage
    assert c["args"][:2] == ["--stage", stage] and c["args"][-1] == "worker", c["args"]
    # The API key only by reference to the stage's Secret.
    key = env["OPENAI_API_KEY"]
    assert "value" not in key, "OPENAI_API_KEY has a literal value"
    ref = key["valueFrom"]["secretKeyRef"]
    assert ref["name"] == v["openai"]["existingSecret"] and ref["key"] == v["openai"]["apiKeyKey"], ref
    # Restart on config change.
    ck = dep["spec"]["template"]["metadata"]["annotations"].get("checksum/config", "")
    assert re.fullmatch(r"[0-9a-f]{64}", ck), f"checksum/config annotation is {ck!r}"
    # IRSA.
    sa = r.one("ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == v["serviceAccount"]["roleArn"]


RENDERS: dict[str, Render] = {}


def stage_render(stage: str) -> Render:
    if stage not in RENDERS:
        RENDERS[stage] = helm_template(stage)
    return RENDERS[stage]


def group_render() -> None:
    for stage in STAGES:
        r = stage_render(stage)
        if not R.check(f"{stage}: helm template renders", r.rc == 0, r.err[-800:]):
            continue

        def kv(r=r):
            probs = validate_docs(r.docs)
            assert not probs, "; ".join(probs[:10])
        R.run(f"{stage}: every object validates (kubernetes-validate --strict {'/'.join(K8S_VERSIONS)}, "
              f"CRD schemas for KEDA/Prometheus Operator)", kv)
        R.run(f"{stage}: pod contract (probes, grace > drain, hardening, config mount, secret, IRSA)",
              lambda stage=stage, r=r: check_pod_contract(stage, r))

        def kinds(stage=stage, r=r):
            got = sorted({d["kind"] for d in r.docs})
            want = sorted({"ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule",
                           "ScaledObject", "Service", "ServiceAccount", "ServiceMonitor",
                           "TriggerAuthentication"})
            assert got == want, f"{got} != {want}"
        R.run(f"{stage}: the stage values render the expected kinds", kinds)

    # The standalone CLI as well, as the brief's tool of record (it knows no CRDs, so built-ins only).
    for stage in STAGES:
        r = stage_render(stage)
        if r.rc != 0:
            continue
        builtin = [d for d in r.docs if (d.get("apiVersion"), d.get("kind")) not in CRD_SCHEMAS]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(builtin, f)
        try:
            p = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet",
                                "-k", K8S_VERSIONS[-1], f.name], capture_output=True, text=True, timeout=120)
        finally:
            os.unlink(f.name)
        R.check(f"{stage}: kubernetes-validate CLI --strict on the built-in objects", p.returncode == 0,
                (p.stdout + p.stderr)[-800:])


# ----------------------------------------------------------------------------- isolation
def object_keys(r: Render) -> set[tuple[str, str, str]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in r.docs}


def selectors(r: Render) -> list[tuple[str, dict]]:
    out = []
    for d in r.docs:
        k, spec = d["kind"], d.get("spec", {})
        if k in ("Deployment", "PodDisruptionBudget", "ServiceMonitor"):
            out.append((k, spec["selector"]["matchLabels"]))
        elif k == "Service":
            out.append((k, spec["selector"]))
        elif k == "NetworkPolicy":
            out.append((k, spec["podSelector"]["matchLabels"]))
    return out


def scrubbed_text(r: Render) -> str:
    """The render as JSON with TOML and YAML comments dropped (comments may mention every stage)."""
    docs = copy.deepcopy(r.docs)
    for d in docs:
        if d["kind"] == "ConfigMap":
            d["data"] = {k: tomllib.loads(v) for k, v in d["data"].items()}
    return json.dumps(docs, sort_keys=True)


def other_stage_mentions(text: str, stage: str) -> list[str]:
    """Tokens that name another known stage as a `-`-separated word (like settings::names_other_stage)."""
    hits = set()
    for tok in re.split(r"[^A-Za-z0-9_-]+", text):
        for other in ALL_KNOWN_STAGES:
            if other == stage:
                continue
            if tok == other or tok.startswith(other + "-") or tok.endswith("-" + other) or f"-{other}-" in tok:
                hits.add(tok)
    return sorted(hits)


def group_isolation() -> None:
    a, b = stage_render("preview"), stage_render("production")
    if not R.check("isolation: both stages render", a.rc == 0 and b.rc == 0, (a.err + b.err)[-800:]):
        return
    R.check("isolation: no object (kind, namespace, name) is in both stages' renders",
            not (object_keys(a) & object_keys(b)), str(sorted(object_keys(a) & object_keys(b))))
    # Same namespace too: names must still differ (they carry the release name).
    a1 = helm_template("preview", ns="atlas-codex")
    b1 = helm_template("production", ns="atlas-codex")
    R.check("isolation: no shared object when both stages share one namespace",
            a1.rc == 0 and b1.rc == 0 and not (object_keys(a1) & object_keys(b1)),
            (a1.err + b1.err)[-400:] or str(sorted(object_keys(a1) & object_keys(b1))))

    def sels():
        for mine, theirs, name in ((a, b, "preview"), (b, a, "production")):
            my_pods = mine.one("Deployment")["spec"]["template"]["metadata"]["labels"]
            their_pods = theirs.one("Deployment")["spec"]["template"]["metadata"]["labels"]
            for kind, sel in selectors(mine):
                assert sel, f"{name} {kind} has an empty selector"
                assert selector_matches(sel, my_pods), f"{name} {kind} selector misses its own pods"
                assert not selector_matches(sel, their_pods), f"{name} {kind} selector {sel} matches the other stage's pods"
        so_a, so_b = a.one("ScaledObject"), b.one("ScaledObject")
        assert so_a["spec"]["scaleTargetRef"]["name"] == a.one("Deployment")["metadata"]["name"]
        assert so_b["spec"]["scaleTargetRef"]["name"] == b.one("Deployment")["metadata"]["name"]
    R.run("isolation: every selector (Deployment, PDB, Service, NetworkPolicy, ServiceMonitor) matches only its own stage's pods", sels)

    for stage, r in (("preview", a), ("production", b)):
        hits = other_stage_mentions(scrubbed_text(r), stage)
        R.check(f"isolation: the {stage} render names no other stage (queues, tables, buckets, roles, secrets)",
                not hits, str(hits[:20]))

        def own(stage=stage, r=r):
            text = scrubbed_text(r)
            for needle in (f"/atlas-codex-queue-{stage}\"", f":role/atlas-codex-worker-{stage}\"",
                           f"\"atlas-codex-openai-{stage}\"", f"\"{stage}.toml\""):
                assert needle in text, f"missing {needle}"
        R.run(f"isolation: the {stage} render names its own queue, role, secret and config layer", own)

    def grep_logic():
        # The detector must find what it is meant to find (a check that cannot fail proves nothing).
        assert other_stage_mentions('"https://sqs.x/1/atlas-codex-queue-production"', "preview")
        assert other_stage_mentions('"arn:aws:iam::1:role/atlas-codex-worker-preview"', "production")
        assert not other_stage_mentions('"production_model": "gpt-4o", "gpt5_preview"', "preview")
    R.run("isolation: the other-stage detector flags foreign names and ignores look-alikes", grep_logic)


# ----------------------------------------------------------------------------- assertions
def group_assertions() -> None:
    stage = "preview"
    v = load_values(stage)

    def monitoring():
        r = helm_template(stage, values={"monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
                                                        "prometheusRule": {"enabled": ALERTS.is_file()}}})
        assert r.rc == 0, r.err
        sm, svc = r.one("ServiceMonitor"), r.one("Service")
        assert sm["metadata"]["labels"]["release"] == "kps"
        assert selector_matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
        if ALERTS.is_file():
            for st in STAGES:
                rs = r if st == stage else helm_template(st, values={"monitoring": {"prometheusRule": {"enabled": True}}})
                assert rs.rc == 0, rs.err
                want = alert_groups_for(yaml.safe_load(ALERTS.read_text())["groups"], st)
                assert rs.one("PrometheusRule")["spec"]["groups"] == want, \
                    f"{st}: PrometheusRule groups differ from alerts.yaml without the other stages' rules"
    R.run("assert: monitoring on renders a ServiceMonitor on the metrics Service"
          + (" and a PrometheusRule equal to deploy/prometheus/alerts.yaml minus the rules labelled with "
             "another stage" if ALERTS.is_file() else ""), monitoring)

    def stage_rules():
        if not ALERTS.is_file():
            return
        rules = [x for g in yaml.safe_load(ALERTS.read_text())["groups"] for x in g["rules"]]
        for x in rules:
            named = set(re.findall(r'\bstage\s*=\s*"([^"]*)"', x["expr"]))
            own = (x.get("labels") or {}).get("stage")
            if own is None:
                assert not named, f"{x.get('alert')}: expr names stage(s) {sorted(named)} but the rule has no stage label"
            else:
                assert own in STAGES and named == {own}, \
                    f"{x.get('alert')}: labelled stage {own!r}, expr names {sorted(named)}"
        for st in STAGES:
            kept = [x for g in alert_groups_for(yaml.safe_load(ALERTS.read_text())["groups"], st) for x in g["rules"]]
            assert all((x.get("labels") or {}).get("stage") in (None, st) for x in kept), st
            assert len(kept) == len([x for x in rules if (x.get("labels") or {}).get("stage") in (None, st)])
    R.run("assert: alerts.yaml rules that name a stage carry exactly that `stage` label (the chart's filter key)",
          stage_rules)

    def monitoring_off():
        r = helm_template(stage, values={"monitoring": {"serviceMonitor": {"enabled": False},
                                                        "prometheusRule": {"enabled": False}}})
        assert r.rc == 0, r.err
        assert not r.kind("ServiceMonitor") and not r.kind("PrometheusRule")
    R.run("assert: monitoring objects are absent when disabled", monitoring_off)

    def chart_defaults_off():
        d = yaml.safe_load((CHART / "values.yaml").read_text())
        for path in (("monitoring", "serviceMonitor"), ("monitoring", "prometheusRule"), ("autoscaling", "keda"),
                     ("autoscaling", "hpa"), ("networkPolicy",)):
            node = d
            for p in path:
                node = node[p]
            assert node["enabled"] is False, f"{'.'.join(path)}.enabled defaults to {node['enabled']}"
    R.run("assert: optional objects (ServiceMonitor, PrometheusRule, KEDA, HPA, NetworkPolicy) are off by chart default", chart_defaults_off)

    both = {"autoscaling": {"keda": {"enabled": True}, "hpa": {"enabled": True}}}
    R.run("assert: KEDA and HPA together are refused by the schema",
          lambda: expect_failure(helm_template(stage, values=both), "/autoscaling"))
    R.run("assert: KEDA and HPA together are refused by the template too (schema skipped)",
          lambda: expect_failure(helm_template(stage, values=both, skip_schema=True), "mutually exclusive"))

    def hpa_only():
        r = helm_template(stage, values={"autoscaling": {"keda": {"enabled": False}, "hpa": {"enabled": True, "minReplicas": 3}}})
        assert r.rc == 0, r.err
        dep, hpa = r.one("Deployment"), r.one("HorizontalPodAutoscaler")
        assert "replicas" not in dep["spec"], "Deployment sets replicas while the HPA owns them"
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"] and hpa["spec"]["minReplicas"] == 3
        assert not r.kind("ScaledObject") and not r.kind("TriggerAuthentication")
        assert not validate_docs(r.docs), validate_docs(r.docs)
    R.run("assert: HPA alone targets the Deployment, which leaves replicas to it", hpa_only)

    def fixed():
        r = helm_template(stage, values={"replicaCount": 4, "autoscaling": {"keda": {"enabled": False}}})
        assert r.rc == 0, r.err
        assert r.one("Deployment")["spec"]["replicas"] == 4
        assert not r.kind("HorizontalPodAutoscaler") and not r.kind("ScaledObject")
    R.run("assert: without an autoscaler the Deployment has replicaCount replicas", fixed)

    def keda():
        for st in STAGES:
            r = stage_render(st)
            assert r.rc == 0, r.err
            so, ta = r.one("ScaledObject"), r.one("TriggerAuthentication")
            assert "replicas" not in r.one("Deployment")["spec"]
            trig = so["spec"]["triggers"][0]
            md = trig["metadata"]
            assert trig["type"] == "aws-sqs-queue"
            assert md["queueLength"] == str(load_values(st)["worker"]["concurrency"]), md
            assert md["scaleOnInFlight"] == "true" and md["queueURL"].endswith(f"/atlas-codex-queue-{st}")
            assert md["awsRegion"] == load_values(st)["aws"]["region"]
            assert trig["authenticationRef"]["name"] == ta["metadata"]["name"]
            assert ta["spec"]["podIdentity"] == {"provider": "aws", "identityOwner": "workload"}
        r = helm_template(stage, values={"autoscaling": {"keda": {"queueLength": 10, "identityOwner": "keda"}}})
        assert r.rc == 0, r.err
        assert r.one("ScaledObject")["spec"]["triggers"][0]["metadata"]["queueLength"] == "10"
        assert r.one("TriggerAuthentication")["spec"]["podIdentity"]["identityOwner"] == "keda"
    R.run("assert: KEDA scales on the stage queue with queueLength = worker concurrency (64 / 128) unless set", keda)

    def grace():
        r = helm_template(stage, values={"worker": {"drainTimeoutSeconds": 600, "terminationGraceMarginSeconds": 45}})
        assert r.rc == 0, r.err
        dep = r.one("Deployment")
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 645
        assert env_map(container(dep))["ATLAS__WORKER__DRAIN_TIMEOUT_SECS"]["value"] == "600"
    R.run("assert: terminationGracePeriodSeconds = drain timeout + margin (600 + 45 = 645)", grace)
    R.run("assert: a zero grace margin is refused by the schema",
          lambda: expect_failure(helm_template(stage, values={"worker": {"terminationGraceMarginSeconds": 0}}),
                                 "terminationGraceMarginSeconds"))
    R.run("assert: a zero grace margin is refused by the template too (schema skipped)",
          lambda: expect_failure(helm_template(stage, values={"worker": {"terminationGraceMarginSeconds": 0}},
                                               skip_schema=True), "must exceed"))

    R.run("assert: a KEDA queue URL of another stage is refused",
          lambda: expect_failure(helm_template(stage, values={"autoscaling": {"keda": {
              "queueURL": "https://sqs.us-east-1.amazonaws.com/123456789012/atlas-codex-queue-production"}}}),
              "atlas-codex-queue-preview"))
    R.run("assert: an IRSA role of another stage is refused",
          lambda: expect_failure(helm_template(stage, values={"serviceAccount": {
              "roleArn": "arn:aws:iam::123456789012:role/atlas-codex-worker-production"}}), "preview stage's role"))
    R.run("assert: an unknown top-level value is refused (strict schema)",
          lambda: expect_failure(helm_template(stage, values={"replicas": 3}), "additional properties 'replicas'"))
    R.run("assert: an unknown nested value is refused (strict schema)",
          lambda: expect_failure(helm_template(stage, values={"worker": {"concurency": 3}}), "additional properties 'concurency'"))
    R.run("assert: stage `local` cannot be deployed with the chart",
          lambda: expect_failure(helm_template(stage, sets=["stage=local"]), "/stage"))
    R.run("assert: the chart refuses to render without stage values (stage, role, secret, region required)",
          lambda: expect_failure(helm_template(stage, base_values=False), "/stage", "/serviceAccount/roleArn",
                                 "/openai/existingSecret", "/aws/region", "/config/stageToml"))
    R.run("assert: extraEnv cannot replace OPENAI_API_KEY with a literal",
          lambda: expect_failure(helm_template(stage, values={"extraEnv": [{"name": "OPENAI_API_KEY", "value": "sk-x"}]}),
                                 "/extraEnv/0/name"))

    def checksum():
        base = stage_render(stage)
        changed = helm_template(stage, values={"config": {"stageToml": v["config"]["stageToml"] + "\n[crawl]\nrespect_robots = true\n"}})
        assert base.rc == 0 and changed.rc == 0, changed.err
        a = base.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        b = changed.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        assert a != b, "config changed but the checksum did not"
        same = helm_template(stage)
        assert same.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == a
    R.run("assert: the config checksum annotation changes with the config and only with it", checksum)

    def netpol():
        r = stage_render(stage)
        np_ = r.one("NetworkPolicy")
        blocks = [t["ipBlock"] for e in np_["spec"]["egress"] for t in e.get("to", []) if "ipBlock" in t]
        v4 = [b for b in blocks if b["cidr"] == "0.0.0.0/0"]
        assert v4 and "169.254.169.254/32" in v4[0].get("except", []), blocks
        assert [p["port"] for p in np_["spec"]["ingress"][0]["ports"]] == ["admin"]
        off = helm_template(stage, values={"networkPolicy": {"enabled": False}})
        assert off.rc == 0 and not off.kind("NetworkPolicy")
    R.run("assert: NetworkPolicy admits only the admin port and blocks the metadata service", netpol)

    def two_releases():
        # The ServiceAccount is named per stage (IRSA trusts exactly one name), so a second release of
        # the stage in the same namespace reuses the first one's (serviceAccount.create=false); every
        # other object and every selector stays per release.
        a1 = helm_template(stage, rel="atlas-codex-worker-preview")
        a2 = helm_template(stage, rel="atlas-codex-worker-preview-canary", values={"serviceAccount": {"create": False}})
        assert a1.rc == 0 and a2.rc == 0, a1.err + a2.err
        assert not (object_keys(a1) & object_keys(a2)), sorted(object_keys(a1) & object_keys(a2))
        assert not a2.kind("ServiceAccount"), "serviceAccount.create=false still renders a ServiceAccount"
        sa = a1.one("ServiceAccount")["metadata"]["name"]
        assert a2.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa, \
            "the second release's pods do not use the stage's ServiceAccount"
        s1 = a1.one("Deployment")["spec"]["selector"]["matchLabels"]
        p2 = a2.one("Deployment")["spec"]["template"]["metadata"]["labels"]
        assert not selector_matches(s1, p2), "one release's selector matches the other's pods"
        both = helm_template(stage, rel="atlas-codex-worker-preview-canary")
        assert both.rc == 0, both.err
        assert object_keys(a1) & object_keys(both) == {("ServiceAccount", namespace(stage), sa)}, \
            sorted(object_keys(a1) & object_keys(both))
    R.run("assert: two releases of one stage in one namespace share only the stage's ServiceAccount "
          "(the second with serviceAccount.create=false), no other name and no selector", two_releases)

    def sa_name():
        # IRSA: the name is the stage's, never the release's (the trust policy knows no release names).
        for st in STAGES:
            for rel, extra in ((f"atlas-codex-{st}", None), ("x", None), ("atlas-codex-worker", None),
                               ("y", {"nameOverride": "other", "fullnameOverride": "renamed"})):
                r = helm_template(st, rel=rel, values=extra)
                assert r.rc == 0, r.err
                got = r.one("ServiceAccount")["metadata"]["name"]
                pod = r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
                assert got == pod == f"atlas-codex-worker-{st}", \
                    f"{st}, release {rel!r}, values {extra}: ServiceAccount {got!r}, pods use {pod!r}"
    R.run("assert: the ServiceAccount is atlas-codex-worker-<stage> whatever the release (and name overrides)", sa_name)

    def sa_override():
        r = helm_template(stage, values={"serviceAccount": {"name": "custom-sa"}})
        assert r.rc == 0, r.err
        assert r.one("ServiceAccount")["metadata"]["name"] == "custom-sa"
        assert r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "custom-sa"
        r = helm_template(stage, values={"serviceAccount": {"create": False, "name": "existing-sa"}})
        assert r.rc == 0, r.err
        assert not r.kind("ServiceAccount")
        assert r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "existing-sa"
    R.run("assert: serviceAccount.name overrides the name (created, or existing with create=false)", sa_override)
    R.run("assert: a serviceAccount.name that is no valid Kubernetes name is refused by the schema",
          lambda: expect_failure(helm_template(stage, values={"serviceAccount": {"name": "Bad_Name"}}),
                                 "/serviceAccount/name"))

    def digest():
        d = "sha256:" + hashlib.sha256(b"x").hexdigest()
        r = helm_template(stage, values={"image": {"digest": d}})
        assert r.rc == 0, r.err
        assert container(r.one("Deployment"))["image"].endswith("@" + d)
    R.run("assert: an image digest pins the image", digest)


# ----------------------------------------------------------------------------- cfn
class CfnLoader(yaml.SafeLoader):
    """YAML loader that turns CloudFormation short tags (!Ref, !Sub, ...) into their long forms."""


def _cfn_tag(loader: CfnLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        val: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            val = val.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        val = loader.construct_sequence(node, deep=True)
    else:
        val = loader.construct_mapping(node, deep=True)
    return {name: val}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def refs(node: Any) -> set[str]:
    """Logical ids and parameters referenced anywhere in `node`."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "Ref" and isinstance(v, str):
                out.add(v)
            elif k == "Fn::GetAtt":
                out.add(v[0] if isinstance(v, list) else str(v).split(".")[0])
            elif k == "Fn::Sub":
                s = v[0] if isinstance(v, list) else v
                out |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", s)}
                if isinstance(v, list):
                    out |= refs(v[1])
            else:
                out |= refs(v)
    elif isinstance(node, list):
        for x in node:
            out |= refs(x)
    return out


def group_cfn() -> None:
    p = subprocess.run([str(Path(sys.executable).parent / "cfn-lint"), str(CFN_TEMPLATE)],
                       capture_output=True, text=True, timeout=300)
    R.check("cfn: cfn-lint passes", p.returncode == 0, (p.stdout + p.stderr)[-1500:])
    t = yaml.load(CFN_TEMPLATE.read_text(), Loader=CfnLoader)
    res, params = t["Resources"], t["Parameters"]
    cfg = effective_config("production")  # the shared defaults (default.toml) are what the template mirrors

    def params_match_config():
        assert params["Stage"]["AllowedValues"] == list(ALL_KNOWN_STAGES)
        assert int(params["JobTimeoutSeconds"]["Default"]) == cfg["worker"]["job_timeout_secs"]
        assert params["MaxReceiveCount"]["Default"] == cfg["queue"]["max_receive_count"]
        assert params["ArtifactRetentionDays"]["Default"] == cfg["storage"]["retention_days"]
        for k, m in t["Mappings"]["VisibilityTimeout"].items():
            assert m["Seconds"] == 6 * int(k), f"visibility for job timeout {k} is {m['Seconds']}, not 6x"
        assert set(t["Mappings"]["VisibilityTimeout"]) == set(params["JobTimeoutSeconds"]["AllowedValues"])
    R.run("cfn: parameter defaults mirror config/default.toml (job timeout, max receives, retention); visibility = 6x job timeout", params_match_config)

    def names():
        want = {"Queue": "atlas-codex-queue-${Stage}", "DeadLetterQueue": "atlas-codex-dlq-${Stage}",
                "JobsTable": "atlas-codex-jobs-${Stage}", "BudgetTable": "atlas-codex-budget-${Stage}",
                "EventTopic": "atlas-codex-events-${Stage}", "WorkerRole": "atlas-codex-worker-${Stage}"}
        for lid, name in want.items():
            props = res[lid]["Properties"]
            got = props.get("QueueName") or props.get("TableName") or props.get("TopicName") or props.get("RoleName")
            assert got == {"Fn::Sub": name}, f"{lid} name is {got}"
        b = res["ArtifactsBucket"]["Properties"]["BucketName"]
        assert b == {"Fn::If": ["DefaultBucketName", {"Fn::Sub": "atlas-codex-artifacts-${Stage}"}, {"Ref": "BucketName"}]}, b
    R.run("cfn: every resource name is the worker's default for the stage", names)

    def queues():
        q, d = res["Queue"]["Properties"], res["DeadLetterQueue"]["Properties"]
        assert q["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
        assert q["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
        assert d["MessageRetentionPeriod"] == 14 * 24 * 3600
        assert q["SqsManagedSseEnabled"] is True and d["SqsManagedSseEnabled"] is True
    R.run("cfn: queue dead-letters into its own DLQ; DLQ keeps 14 days; both encrypted", queues)

    def tables():
        j, b = res["JobsTable"]["Properties"], res["BudgetTable"]["Properties"]
        assert j["BillingMode"] == b["BillingMode"] == "PAY_PER_REQUEST"
        assert j["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
        assert b["KeySchema"] == [{"AttributeName": "period", "KeyType": "HASH"}]
        gsi = {g["IndexName"]: g for g in j["GlobalSecondaryIndexes"]}
        assert gsi["status-created_at-index"]["KeySchema"] == [
            {"AttributeName": "status", "KeyType": "HASH"}, {"AttributeName": "created_at", "KeyType": "RANGE"}]
        types = {a["AttributeName"]: a["AttributeType"] for a in j["AttributeDefinitions"]}
        assert types == {"id": "S", "status": "S", "created_at": "S"}, types
        assert j["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
        for x in (j, b):
            assert x["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert res["JobsTable"]["DeletionPolicy"] == res["BudgetTable"]["DeletionPolicy"] == "Retain"
    R.run("cfn: job table (id, GSI status-created_at-index, TTL expires_at, PITR) and budget table (period, PITR)", tables)

    def bucket():
        b = res["ArtifactsBucket"]["Properties"]
        assert all(b["PublicAccessBlockConfiguration"].values()) and len(b["PublicAccessBlockConfiguration"]) == 4
        assert b["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        rules = {r.get("Prefix"): r for r in b["LifecycleConfiguration"]["Rules"]}
        for prefix in ("jobs/", "inputs/"):
            assert rules[prefix]["ExpirationInDays"] == {"Ref": "ArtifactRetentionDays"}, prefix
        pol = res["ArtifactsBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in pol)
    R.run("cfn: bucket encrypted, never public, TLS-only, jobs/ and inputs/ expire", bucket)

    def iam():
        role = res["WorkerRole"]["Properties"]
        trust = role["AssumeRolePolicyDocument"]["Fn::Sub"][0]
        assert "sts:AssumeRoleWithWebIdentity" in trust and ":sub" in trust and ":aud" in trust
        assert "system:serviceaccount:${Namespace}:${ServiceAccount}" in trust
        stmts = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
        own = set(res)
        for s in stmts:
            assert s["Effect"] == "Allow"
            acts = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            assert not any(a == "*" or a.endswith(":*") for a in acts), f"{s['Sid']}: wildcard action"
            rs = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            for r_ in rs:
                assert r_ != "*" and isinstance(r_, dict), f"{s['Sid']}: resource {r_!r} is not one of this stack's"
                used = refs(r_)
                assert used and used <= own, f"{s['Sid']}: resource refers to {used - own or used}"
    R.run("cfn: worker role trusts only the stage's ServiceAccount and reaches only this stack's resources", iam)

    def outputs():
        want = {"QueueUrl", "DeadLetterQueueUrl", "JobsTableName", "BudgetTableName", "ArtifactsBucketName", "EventTopicArn",
                "WorkerRoleArn"}
        assert want <= set(t["Outputs"]), want - set(t["Outputs"])
    R.run("cfn: outputs give queue and DLQ URLs, table names, bucket, event topic and role ARN", outputs)

    def topic():
        role = res["WorkerRole"]["Properties"]
        stmts = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
        publishers = [s for s in stmts if "sns:Publish" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])]
        assert [s["Resource"] for s in publishers] == [{"Ref": "EventTopic"}], publishers
        assert res["EventTopic"]["Properties"].get("KmsMasterKeyId"), "the topic is encrypted"
    R.run("cfn: the worker role may publish to the stage's event topic, and to nothing else; the topic is encrypted", topic)


# ----------------------------------------------------------------------------- names
RESOURCE_KINDS = ("queue", "dlq", "jobs_table", "budget_table", "bucket", "event_topic")
# Where the template creates each resource the binary names, and the property holding its name.
CFN_NAMED = {"queue": ("Queue", "QueueName"), "dlq": ("DeadLetterQueue", "QueueName"),
             "jobs_table": ("JobsTable", "TableName"), "budget_table": ("BudgetTable", "TableName"),
             "bucket": ("ArtifactsBucket", "BucketName"), "event_topic": ("EventTopic", "TopicName")}
# Env variables that would rename a resource in a pod (ATLAS__SECTION__KEY overrides).
RESOURCE_ENV = {"ATLAS__QUEUE__NAME": "queue", "ATLAS__QUEUE__DLQ_NAME": "dlq",
                "ATLAS__STORAGE__JOBS_TABLE": "jobs_table", "ATLAS__STORAGE__BUDGET_TABLE": "budget_table",
                "ATLAS__STORAGE__BUCKET": "bucket", "ATLAS__EVENTS__TOPIC": "event_topic"}


def ci() -> bool:
    """True on a CI runner (`CI` set to anything but empty/0/false), where nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def atlas_bin(what: str) -> str | None:
    """$ATLAS_BIN, or None after a loud note (locally) or a failed check (in CI). Never builds."""
    path = os.environ.get("ATLAS_BIN", "").strip()
    if not path:
        if ci():
            R.check(f"{what}: ATLAS_BIN names the worker binary (required in CI)", False,
                    "ATLAS_BIN is not set; scripts/test.sh exports it after `cargo build --release`")
        else:
            R.note(f"!!! ATLAS_BIN is not set: {what} SKIPPED (set ATLAS_BIN=target/debug/atlas-codex after `cargo build`)")
        return None
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        R.check(f"{what}: ATLAS_BIN is an executable file", False, f"ATLAS_BIN={path} is not an executable file")
        return None
    return str(Path(path).resolve())


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that reconfigures the binary, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("ATLAS_", "AWS_", "OPENAI_")) or k in ("STAGE", "MONTHLY_BUDGET", "GPT5_ENABLED",
                                                                        "FORCE_GPT4", "DEFAULT_MODEL_STRATEGY"))}
    env.update(extra)
    return env


def run_validate(binary: str, args: list[str], env: dict[str, str]) -> dict:
    """Runs `atlas-codex ARGS` (a validate command with --output json) and returns its JSON."""
    with tempfile.TemporaryDirectory() as cwd:  # no ./config to fall back on: ATLAS_CONFIG_DIR decides
        p = subprocess.run([binary, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    try:
        doc = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"`{' '.join(args)}` exited {p.returncode} without JSON: {(p.stdout + p.stderr)[-600:]}")
    assert isinstance(doc, dict) and {"ok", "stages", "problems", "resources"} <= set(doc), f"unexpected output {doc}"
    return doc


def names_by_stage(doc: dict) -> dict[str, dict[str, str]]:
    return {e["stage"]: e["resources"] for e in doc["resources"]}


def cfn_resolve(node: Any, t: dict, params: dict[str, str]) -> Any:
    """Evaluates the intrinsic functions this template uses in names (Ref to parameters, Fn::Sub,
    Fn::If, Fn::Equals, Fn::Not) for the given parameter values; anything else is an error."""
    if isinstance(node, (str, int, bool)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            if arg not in params:
                raise AssertionError(f"name refers to {arg}, not a parameter")
            return params[arg]
        if fn == "Fn::Sub":
            text, local = (arg[0], {k: cfn_resolve(v, t, params) for k, v in arg[1].items()}) \
                if isinstance(arg, list) else (arg, {})
            def sub(m: re.Match) -> str:
                key = m.group(1)
                if key in local:
                    return str(local[key])
                if key in params:
                    return str(params[key])
                raise AssertionError(f"Fn::Sub variable ${{{key}}} is not a parameter")
            return re.sub(r"\$\{([^}!]+)\}", sub, text)
        if fn == "Fn::If":
            cond, yes, no = arg
            return cfn_resolve(yes if cfn_condition(cond, t, params) else no, t, params)
    raise AssertionError(f"cannot resolve {node!r} statically")


def cfn_condition(name: str, t: dict, params: dict[str, str]) -> bool:
    def ev(c: Any) -> Any:
        if isinstance(c, dict) and len(c) == 1:
            (fn, arg), = c.items()
            if fn == "Fn::Equals":
                return str(ev(arg[0])) == str(ev(arg[1]))
            if fn == "Fn::Not":
                return not ev(arg[0])
            if fn == "Condition":
                return cfn_condition(arg, t, params)
        return cfn_resolve(c, t, params)
    return bool(ev(t["Conditions"][name]))


def cfn_params(t: dict, stage: str) -> dict[str, str]:
    """Parameter values of a stack deployed as docs/deploy.md says: Stage set, the rest defaults."""
    p = {k: str(v.get("Default", "")) for k, v in t["Parameters"].items()}
    p.update({"Stage": stage, "AWS::Partition": "aws", "AWS::Region": "us-east-1", "AWS::AccountId": "123456789012"})
    return p


def group_names() -> None:
    """`validate --all-stages` (the binary's own naming) agrees with the chart and the template."""
    binary = atlas_bin("names: validate --all-stages vs chart and template")
    if not binary:
        return
    t = yaml.load(CFN_TEMPLATE.read_text(), Loader=CfnLoader)
    res = t["Resources"]
    views: dict[str, dict[str, dict[str, str]]] = {}

    def repo_view():
        doc = run_validate(binary, ["validate", "--all-stages", "--output", "json"],
                           clean_env(ATLAS_CONFIG_DIR=str(ROOT / "config")))
        assert doc["ok"] is True and not doc["problems"], f"ok={doc['ok']} problems={doc['problems']}"
        assert set(STAGES) <= set(doc["stages"]), doc["stages"]
        views["repo"] = names_by_stage(doc)
        for stage in STAGES:
            assert set(RESOURCE_KINDS) <= set(views["repo"].get(stage, {})), f"{stage}: {views['repo'].get(stage)}"
    R.run("names: `validate --all-stages --output json` on config/ is ok and names every stage's resources", repo_view)
    if "repo" not in views:
        return

    def chart_view():
        # The config exactly as the pods get it: the ConfigMaps of both stage renders in one dir
        # (plus config/local.toml, which no chart carries), so the binary's clash check sees both.
        with tempfile.TemporaryDirectory() as d:
            for stage in STAGES:
                r = stage_render(stage)
                assert r.rc == 0, f"{stage} render failed: {r.err[-400:]}"
                for cm in r.kind("ConfigMap"):
                    for k, v in cm.get("data", {}).items():
                        f = Path(d) / k
                        assert not f.exists() or f.read_text() == v, f"the stages' charts carry different {k}"
                        f.write_text(v)
            (Path(d) / "local.toml").write_text((ROOT / "config" / "local.toml").read_text())
            doc = run_validate(binary, ["validate", "--all-stages", "--output", "json"], clean_env(ATLAS_CONFIG_DIR=d))
        assert doc["ok"] is True and not doc["problems"], f"ok={doc['ok']} problems={doc['problems']}"
        views["chart"] = names_by_stage(doc)
        for stage in STAGES:
            assert views["chart"][stage] == views["repo"][stage], \
                f"{stage}: chart config names {views['chart'][stage]}, config/ names {views['repo'][stage]}"
    R.run("names: `validate --all-stages` on the charts' ConfigMaps is ok and names what config/ names", chart_view)

    for stage in STAGES:
        want = views["repo"][stage]

        def pod_view(stage=stage, want=want):
            # One pod as rendered: its ConfigMap as ATLAS_CONFIG_DIR, its literal env, its args.
            r = stage_render(stage)
            dep = r.one("Deployment")
            c = container(dep)
            env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
            for var, kind in RESOURCE_ENV.items():
                if var in env:
                    assert env[var] == want[kind], f"pod env {var}={env[var]} but the binary names {want[kind]}"
            with tempfile.TemporaryDirectory() as d:
                for cm in r.kind("ConfigMap"):
                    for k, v in cm.get("data", {}).items():
                        (Path(d) / k).write_text(v)
                env["ATLAS_CONFIG_DIR"] = d
                args = c["args"]
                assert args[-1] == "worker", args
                doc = run_validate(binary, [*args[:-1], "--output", "json", "validate"], clean_env(**env))
            assert doc["ok"] is True and doc["stages"] == [stage], f"ok={doc['ok']} stages={doc['stages']} {doc['problems']}"
            got = names_by_stage(doc)[stage]
            assert got == want, f"the pod's config names {got}, validate --all-stages {want}"
        R.run(f"names {stage}: the rendered pod (ConfigMap, env, args) validates ok and names the same resources", pod_view)

        def chart_refs(stage=stage, want=want):
            r = stage_render(stage)
            v = load_values(stage)
            so = r.one("ScaledObject")
            trig = [x for x in so["spec"]["triggers"] if x["type"] == "aws-sqs-queue"]
            assert len(trig) == 1, so["spec"]["triggers"]
            url = trig[0]["metadata"]["queueURL"]
            m = re.fullmatch(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/([0-9]{12})/([A-Za-z0-9_-]+)", url)
            assert m, f"KEDA queueURL {url} is not an SQS queue URL"
            region, account, queue = m.groups()
            assert queue == want["queue"], f"KEDA scales on queue {queue}; the worker reads {want['queue']}"
            env = env_map(container(r.one("Deployment")))
            assert trig[0]["metadata"]["awsRegion"] == region == env["ATLAS__AWS__REGION"]["value"] == v["aws"]["region"], \
                f"regions: KEDA {trig[0]['metadata']['awsRegion']}, URL {region}, pod {env['ATLAS__AWS__REGION']}"
            arn = r.one("ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
            am = re.fullmatch(r"arn:aws:iam::([0-9]{12}):role/(.+)", arn)
            assert am and am.group(1) == account, f"role {arn} is not in the queue's account {account}"
            assert want["metrics_namespace"] == stage == dep_stage_label(r), \
                f"metrics namespace {want['metrics_namespace']} / pod label {dep_stage_label(r)} != {stage}"
        R.run(f"names {stage}: the chart's KEDA queue URL names the worker's queue; region, account, role and "
              f"stage label agree", chart_refs)

        def template(stage=stage, want=want):
            params = cfn_params(t, stage)
            created = {kind: cfn_resolve(res[lid]["Properties"][prop], t, params) for kind, (lid, prop) in CFN_NAMED.items()}
            assert created == {k: want[k] for k in RESOURCE_KINDS}, f"template creates {created}, binary names " \
                f"{ {k: want[k] for k in RESOURCE_KINDS} }"
            # IRSA: the role the chart annotates is the template's, it trusts the rendered
            # ServiceAccount, and its policy grants exactly the resources the binary uses.
            role = res["WorkerRole"]["Properties"]
            role_name = cfn_resolve(role["RoleName"], t, params)
            r = stage_render(stage)
            assert r.rc == 0, f"{stage} render failed: {r.err[-400:]}"
            sa = r.one("ServiceAccount")["metadata"]
            chart_role = sa["annotations"]["eks.amazonaws.com/role-arn"].rsplit(":role/", 1)[-1]
            assert chart_role == role_name, f"chart annotates role {chart_role}, template creates {role_name}"
            sub_vars = {k: cfn_resolve(x, t, params) for k, x in role["AssumeRolePolicyDocument"]["Fn::Sub"][1].items()}
            assert (sub_vars["Namespace"], sub_vars["ServiceAccount"]) == (sa["namespace"], sa["name"]), \
                f"trust allows {sub_vars['Namespace']}/{sub_vars['ServiceAccount']}, chart runs {sa['namespace']}/{sa['name']}"
            by_lid = {lid: created[kind] for kind, (lid, _) in CFN_NAMED.items()}
            granted = set()
            for pol in role["Policies"]:
                for st in pol["PolicyDocument"]["Statement"]:
                    rs = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
                    for r_ in rs:
                        for lid in refs(r_):
                            assert lid in by_lid, f"{st.get('Sid')}: grants {lid}, which the worker does not use"
                            granted.add(by_lid[lid])
            assert granted == {want[k] for k in RESOURCE_KINDS}, \
                f"role grants {sorted(granted)}; the binary uses {sorted(want[k] for k in RESOURCE_KINDS)}"
        R.run(f"names {stage}: the template (Stage={stage}) creates exactly those names and its IRSA role, "
              f"trusting the chart's ServiceAccount, grants exactly them", template)


# ----------------------------------------------------------------------------- irsa
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
# Stand-ins for the placeholders of documented commands (`<git sha>`, `$OIDC`).
PLACEHOLDER_TAG = "0123456789abcdef0123456789abcdef01234567"
SAMPLE_OIDC = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"


def shell_commands(text: str, program: str) -> list[str]:
    """The shell commands in `text` (a file's `#` comments or a markdown code block) starting with
    `program`, continuation lines (`\\` at the end) joined into one line."""
    lines = [re.sub(r"^\s*#?\s?", "", l) if l.lstrip().startswith("#") else l for l in text.splitlines()]
    out = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith(program):
            cmd = line
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
            out.append(cmd)
        i += 1
    return out


def parse_helm_install(cmd: str, stage: str) -> dict:
    """`helm upgrade --install REL CHART [-n NS] [-f FILE]... [--set K=V]...` as a dict; `$S` is the stage,
    `<...>` placeholders get sample values. Options that do not change the render (--wait, ...) are ignored."""
    import shlex
    cmd = cmd.replace("$S", stage).replace("${S}", stage)
    cmd = re.sub(r"<[^>]*>", PLACEHOLDER_TAG, cmd)
    argv = shlex.split(cmd)
    assert argv[:3] == ["helm", "upgrade", "--install"], f"not a `helm upgrade --install` line: {cmd}"
    pos, got = [], {"namespace": None, "values": [], "set": []}
    it = iter(argv[3:])
    for a in it:
        key, _, inline = a.partition("=") if a.startswith("--") else (a, "", "")
        val = (lambda: inline if inline else next(it))
        if key in ("-n", "--namespace"):
            got["namespace"] = val()
        elif key in ("-f", "--values"):
            got["values"].append(val())
        elif key in ("--set", "--set-string"):
            got["set"].append(val())
        elif key in ("--timeout", "--version", "--kube-context"):
            val()
        elif key.startswith("-"):
            assert key in ("--wait", "--atomic", "--create-namespace", "--rollback-on-failure"), \
                f"option {a} of the documented install line is not understood by this check"
        else:
            pos.append(a)
    assert len(pos) == 2, f"expected RELEASE CHART, got {pos} in: {cmd}"
    got["release"], got["chart"] = pos
    assert got["namespace"], f"the install line sets no namespace: {cmd}"
    return got


def documented_installs(stage: str) -> list[tuple[str, dict]]:
    """Every documented install of `stage`: the comment of deploy/helm/values-{stage}.yaml, and
    docs/deploy.md's "Install or upgrade" command with S=stage."""
    found = []
    vf = values_file(stage)
    lines = shell_commands("\n".join(l for l in vf.read_text().splitlines() if l.lstrip().startswith("#")),
                           "helm upgrade --install")
    assert len(lines) == 1, f"{vf.relative_to(ROOT)} documents {len(lines)} install lines, expected one"
    found.append((str(vf.relative_to(ROOT)), parse_helm_install(lines[0], stage)))
    lines = shell_commands(DEPLOY_DOC.read_text(), "helm upgrade --install")
    assert len(lines) == 1, f"docs/deploy.md documents {len(lines)} install lines, expected one"
    found.append(("docs/deploy.md", parse_helm_install(lines[0], stage)))
    return found


def documented_stack_params(t: dict, stage: str) -> dict[str, str]:
    """The stack's parameters as docs/deploy.md deploys it: the template's defaults, plus the
    `--parameter-overrides` of its `aws cloudformation deploy` command that name a parameter (with
    S=stage; a placeholder value such as `$OIDC` gets a sample value)."""
    p = cfn_params(t, stage)
    cmds = shell_commands(DEPLOY_DOC.read_text(), "aws cloudformation deploy")
    assert len(cmds) == 1, f"docs/deploy.md documents {len(cmds)} `aws cloudformation deploy` commands, expected one"
    over = cmds[0].split("--parameter-overrides", 1)
    assert len(over) == 2, "the documented stack deploy passes no --parameter-overrides (Stage is required)"
    for k, v in re.findall(r"(?:^|\s)([A-Za-z0-9]+)=(\S*)", over[1]):
        if k not in t["Parameters"]:
            continue
        v = v.replace("${S}", stage).replace("$S", stage)
        if "$" in v or v.startswith("<"):
            v = SAMPLE_OIDC if k == "OidcProvider" else ""   # a value to fill in: only OidcProvider must be set
        p[k] = v
    assert p["Stage"] == stage, f"the documented stack deploy sets Stage={p['Stage']}"
    if not p.get("OidcProvider"):
        p["OidcProvider"] = SAMPLE_OIDC
    return p


def trusted_subjects(t: dict, params: dict[str, str]) -> list[str]:
    """The `<provider>:sub` values of the worker role's web-identity trust, resolved as CloudFormation would."""
    role = t["Resources"]["WorkerRole"]["Properties"]
    doc = json.loads(cfn_resolve(role["AssumeRolePolicyDocument"], t, params))
    subs = []
    for st in doc["Statement"]:
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if st.get("Effect") != "Allow" or "sts:AssumeRoleWithWebIdentity" not in acts:
            continue
        for op, conds in st.get("Condition", {}).items():
            for key, val in conds.items():
                if key == f"{params['OidcProvider']}:sub":
                    assert op == "StringEquals", f"the :sub condition uses {op}, not StringEquals"
                    subs += val if isinstance(val, list) else [val]
    return subs


def group_irsa() -> None:
    """The ServiceAccount each documented install line renders is the one the stage's stack trusts."""
    t = yaml.load(CFN_TEMPLATE.read_text(), Loader=CfnLoader)
    for stage in STAGES:
        def one(stage=stage):
            params = documented_stack_params(t, stage)
            subs = trusted_subjects(t, params)
            assert len(subs) == 1, f"the worker role trusts {len(subs)} :sub values: {subs}"
            m = re.fullmatch(r"system:serviceaccount:([^:]+):([^:]+)", subs[0])
            assert m, f"trusted subject {subs[0]!r} is not a ServiceAccount"
            role_name = cfn_resolve(t["Resources"]["WorkerRole"]["Properties"]["RoleName"], t, params)
            problems = []
            for where, inst in documented_installs(stage):
                chart = (ROOT / inst["chart"]).resolve()
                assert chart == CHART.resolve(), f"{where}: installs chart {inst['chart']}, not {CHART.relative_to(ROOT)}"
                assert [(ROOT / f).resolve() for f in inst["values"]] == [values_file(stage).resolve()], \
                    f"{where}: values files {inst['values']}, expected only {values_file(stage).relative_to(ROOT)}"
                cmd = ["helm", "template", inst["release"], str(chart), "--namespace", inst["namespace"]]
                for f in inst["values"]:
                    cmd += ["-f", str((ROOT / f).resolve())]
                for x in inst["set"]:
                    cmd += ["--set", x]
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                r = Render(p.returncode, p.stdout, p.stderr)
                assert r.rc == 0, f"{where}: `helm template` of the install line failed: {r.err[-400:]}"
                sa = r.one("ServiceAccount")["metadata"]
                pod_sa = r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
                got = f"system:serviceaccount:{sa.get('namespace', inst['namespace'])}:{sa['name']}"
                if got != subs[0] or pod_sa != sa["name"]:
                    problems.append(f"{where} (release {inst['release']}, namespace {inst['namespace']}) renders "
                                    f"ServiceAccount {got} (pods use {pod_sa}), but stack atlas-codex-{stage} trusts "
                                    f"only {subs[0]}")
                arn = sa["annotations"]["eks.amazonaws.com/role-arn"]
                if arn.rsplit(":role/", 1)[-1] != role_name:
                    problems.append(f"{where}: the ServiceAccount annotates role {arn}; the stack creates {role_name}")
            assert not problems, "; ".join(problems)
        R.run(f"irsa {stage}: each documented install (values-{stage}.yaml comment, docs/deploy.md) renders the "
              f"ServiceAccount the stack's trust policy allows (:sub) and annotates the stack's role", one)

    def detector():
        # The check must be able to fail: a ServiceAccount named after the release is not trusted.
        params = documented_stack_params(t, "preview")
        subs = trusted_subjects(t, params)
        assert subs == ["system:serviceaccount:atlas-codex-preview:atlas-codex-worker-preview"], subs
        assert trusted_subjects(t, {**params, "ServiceAccountName": "custom"}) == \
            ["system:serviceaccount:atlas-codex-preview:custom"]
        lines = shell_commands("# Stage:\n#   helm upgrade --install rel-$S helm/atlas-codex-worker -n ns-$S \\\n"
                               "#     -f deploy/helm/values-$S.yaml --set image.tag=<git sha> --wait --timeout 10m\n"
                               "# helm upgrade --install is the only command here", "helm upgrade --install")
        assert len(lines) == 2, lines
        inst = parse_helm_install(lines[0], "preview")
        assert inst == {"release": "rel-preview", "chart": "helm/atlas-codex-worker", "namespace": "ns-preview",
                        "values": ["deploy/helm/values-preview.yaml"], "set": [f"image.tag={PLACEHOLDER_TAG}"]}, inst
        r = helm_template("preview", rel="atlas-codex-preview", values={"serviceAccount": {"name": "atlas-codex-preview-atlas-codex-worker"}})
        assert r.rc == 0, r.err
        sa = r.one("ServiceAccount")["metadata"]
        assert f"system:serviceaccount:{sa['namespace']}:{sa['name']}" not in subs
    R.run("irsa: the parsers resolve the trust policy and install lines, and a release-named ServiceAccount "
          "would not be trusted", detector)


def dep_stage_label(r: Render) -> str | None:
    return r.one("Deployment")["spec"]["template"]["metadata"]["labels"].get("atlas-codex.io/stage")


# ----------------------------------------------------------------------------- docker
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args.strip()))
    return stages


def group_docker() -> None:
    """The image can't be built offline here (no base images); these checks keep the Dockerfile
    consistent with the crate and the chart."""
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    stages = dockerfile_stages()

    def shape():
        assert len(stages) == 2, f"{len(stages)} stages"
        assert stages[0][0][1].startswith("rust:1.95-bookworm"), stages[0][0]
        assert stages[1][0][1].startswith("debian:bookworm-slim"), stages[1][0]
        build_runs = [a for i, a in stages[0] if i == "RUN"]
        assert "--locked" in build_runs[0] and "src/main.rs" in build_runs[0], "first RUN is not the dependency build"
        copies = [a for i, a in stages[0] if i == "COPY"]
        assert copies[0].split()[:2] == ["Cargo.toml", "Cargo.lock"], "Cargo.toml/Cargo.lock are not copied first"
        assert any("cargo build --release --locked" in a for a in build_runs[1:]), "no real release build"
    R.run("docker: two stages; deps cached by a placeholder build of Cargo.toml + Cargo.lock, then --locked release build", shape)

    def sources_copied():
        copies = " ".join(a for i, a in stages[0] if i == "COPY")
        needed = {"src"}
        for f in (ROOT / "src").rglob("*.rs"):
            for m in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', f.read_text()):
                target = (f.parent / m).resolve().relative_to(ROOT)
                needed.add(target.parts[0])
        missing = [d for d in sorted(needed) if not re.search(rf"(^|\s){re.escape(d)}/?(\s|$)", copies)]
        assert not missing, f"build stage does not COPY {missing} (needed by include_str!/include_bytes!)"
        ignored = {l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()
                   if l.strip() and not l.startswith("#")}
        assert not (needed | {"config", "Cargo.toml", "Cargo.lock"}) & ignored, "a needed path is in .dockerignore"
        assert {"target", ".venv", ".tools", "atlas-data", ".git"} <= ignored, ignored
        manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
        extra = [k for k in ("test", "bench", "example") if manifest.get(k)] + (["build"] if "build" in manifest.get("package", {}) else [])
        assert not extra, f"Cargo.toml declares {extra}: the placeholder dependency build must create them too"
    R.run("docker: build stage copies every source dir the crate compiles in; .dockerignore keeps state out", sources_copied)

    def runtime():
        rt = dict()
        for i, a in stages[1]:
            rt.setdefault(i, []).append(a)
        user = rt["USER"][-1].split(":")[0]
        assert user == str(chart["podSecurityContext"]["runAsUser"]), f"USER {user} != chart runAsUser"
        assert "ca-certificates" in " ".join(rt["RUN"])
        env = " ".join(rt["ENV"])
        assert "ATLAS_CONFIG_DIR=/etc/atlas-codex" in env, env
        assert any(a.split()[-1].rstrip("/") == "/etc/atlas-codex" and a.split()[0].rstrip("/") == "config" for a in rt["COPY"] if not a.startswith("--from")), rt["COPY"]
        assert rt["EXPOSE"] == [str(chart["admin"]["port"])], rt["EXPOSE"]
        assert json.loads(rt["ENTRYPOINT"][-1]) == ["/usr/local/bin/atlas-codex"]
        assert json.loads(rt["CMD"][-1]) == ["worker"]
    R.run("docker: runtime is non-root uid 10001 (= chart), config in /etc/atlas-codex (= ATLAS_CONFIG_DIR), EXPOSE 10090, CMD worker", runtime)


GROUPS = {
    "chart-files": group_chart_files,
    "values": group_values,
    "lint": group_lint,
    "render": group_render,
    "isolation": group_isolation,
    "assertions": group_assertions,
    "cfn": group_cfn,
    "names": group_names,
    "irsa": group_irsa,
    "docker": group_docker,
}


def main(argv: list[str]) -> None:
    wanted = argv or list(GROUPS)
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        print(f"unknown group(s) {unknown}; known: {list(GROUPS)}", file=sys.stderr)
        sys.exit(2)
    for g in wanted:
        print(f"# {g}", flush=True)
        try:
            GROUPS[g]()
        except Exception as e:  # a crashed group is a failure, not a pass
            R.check(f"{g}: group ran to completion", False, f"{type(e).__name__}: {e}")
    R.exit()


if __name__ == "__main__":
    main(sys.argv[1:])
