{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "atlas-codex-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name prefix of every object: `<release>-<chart>`, or the release name when it already holds the
chart name. It always contains the release name, so two releases never share an object name (the
one exception is the ServiceAccount, named per stage for IRSA: see serviceAccountName below).
*/}}
{{- define "atlas-codex-worker.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Chart label value: name-version. */}}
{{- define "atlas-codex-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: stable for the release's lifetime (selectors are immutable). They hold the release
and the stage, so a preview object never selects production pods even in a shared namespace.
*/}}
{{- define "atlas-codex-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atlas-codex-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
atlas-codex.io/stage: {{ .Values.stage }}
{{- end -}}

{{/* Common labels: selector labels plus informative ones that may change between upgrades. */}}
{{- define "atlas-codex-worker.labels" -}}
helm.sh/chart: {{ include "atlas-codex-worker.chart" . }}
{{ include "atlas-codex-worker.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: atlas-codex
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The ServiceAccount's name: `serviceAccount.name`, else `atlas-codex-worker-<stage>`. Deliberately not
derived from the release name (nor from nameOverride/fullnameOverride): the IRSA trust policy of
deploy/cloudformation/atlas-codex-stage.yaml allows exactly
system:serviceaccount:atlas-codex-<stage>:atlas-codex-worker-<stage> by default, whatever the release is
called. With serviceAccount.create=false the pods use the existing ServiceAccount of that name.
*/}}
{{- define "atlas-codex-worker.serviceAccountName" -}}
{{- default (printf "atlas-codex-worker-%s" .Values.stage) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The container image reference: repository:tag, or repository@digest when a digest is set. */}}
{{- define "atlas-codex-worker.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Seconds Kubernetes waits after SIGTERM: the drain timeout plus a margin, always above the drain. */}}
{{- define "atlas-codex-worker.terminationGracePeriodSeconds" -}}
{{- add (int .Values.worker.drainTimeoutSeconds) (int .Values.worker.terminationGraceMarginSeconds) -}}
{{- end -}}

{{/* Target messages per pod for KEDA: queueLength, or the worker's concurrency when 0. */}}
{{- define "atlas-codex-worker.kedaQueueLength" -}}
{{- $q := int (default 0 .Values.autoscaling.keda.queueLength) -}}
{{- if gt $q 0 -}}{{ $q }}{{- else -}}{{ int .Values.worker.concurrency }}{{- end -}}
{{- end -}}

{{/*
Cross-value checks the JSON schema cannot express; included by every manifest so that any render
fails early with a clear message.
*/}}
{{- define "atlas-codex-worker.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.stage (list "preview" "production")) -}}
{{- fail (printf "stage must be `preview` or `production`, got %q" $v.stage) -}}
{{- end -}}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled -}}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are mutually exclusive: enable one" -}}
{{- end -}}
{{- $grace := int (include "atlas-codex-worker.terminationGracePeriodSeconds" .) -}}
{{- if le $grace (int $v.worker.drainTimeoutSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed worker.drainTimeoutSeconds (%d)" $grace (int $v.worker.drainTimeoutSeconds)) -}}
{{- end -}}
{{- if $v.autoscaling.keda.enabled -}}
{{- $suffix := printf "/atlas-codex-queue-%s" $v.stage -}}
{{- if not (hasSuffix $suffix $v.autoscaling.keda.queueURL) -}}
{{- fail (printf "autoscaling.keda.queueURL must be the %s stage's queue (ending in %s), got %q" $v.stage $suffix $v.autoscaling.keda.queueURL) -}}
{{- end -}}
{{- if lt (int $v.autoscaling.keda.maxReplicaCount) (int $v.autoscaling.keda.minReplicaCount) -}}
{{- fail "autoscaling.keda.maxReplicaCount must be >= minReplicaCount" -}}
{{- end -}}
{{- end -}}
{{- if and $v.autoscaling.hpa.enabled (lt (int $v.autoscaling.hpa.maxReplicas) (int $v.autoscaling.hpa.minReplicas)) -}}
{{- fail "autoscaling.hpa.maxReplicas must be >= minReplicas" -}}
{{- end -}}
{{- if not (contains (printf "-%s" $v.stage) $v.serviceAccount.roleArn) -}}
{{- fail (printf "serviceAccount.roleArn %q must be the %s stage's role (its name contains -%s)" $v.serviceAccount.roleArn $v.stage $v.stage) -}}
{{- end -}}
{{- if and $v.monitoring.prometheusRule.enabled (not (.Files.Get "files/alerts.yaml")) -}}
{{- fail "monitoring.prometheusRule.enabled needs files/alerts.yaml in the chart (copy of deploy/prometheus/alerts.yaml; run scripts/sync-chart-files.sh)" -}}
{{- end -}}
{{- if not (.Files.Get "files/default.toml") -}}
{{- fail "files/default.toml is missing from the chart (copy of config/default.toml; run scripts/sync-chart-files.sh)" -}}
{{- end -}}
{{- end -}}

{{/*
The most worker pods the release can run: KEDA's maxReplicaCount, the HPA's maxReplicas, or
replicaCount. Each pod's fallback share of the key's rate limits is 1/this.
*/}}
{{- define "atlas-codex-worker.maxPods" -}}
{{- if .Values.autoscaling.keda.enabled -}}
{{- .Values.autoscaling.keda.maxReplicaCount -}}
{{- else if .Values.autoscaling.hpa.enabled -}}
{{- .Values.autoscaling.hpa.maxReplicas -}}
{{- else -}}
{{- .Values.replicaCount -}}
{{- end -}}
{{- end -}}
