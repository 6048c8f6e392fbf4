{{/*
Helpers. Every template here works with this chart's root context, or, from a parent chart, with
  (dict "Values" (index .Values "openai-policy-sidecar") "Release" .Release)
so they never read .Chart (a parent's .Chart would be the wrong one).
*/}}

{{/* The chart's appVersion: the default image tag. tests/test_chart.py keeps it equal to Chart.yaml's. */}}
{{- define "openai-policy-sidecar.appVersion" -}}
0.1.0
{{- end }}

{{/* Chart name; also the injection prefix (<name>-injection=enabled, <name>/inject, <name>/status). */}}
{{- define "openai-policy-sidecar.name" -}}
{{- default "openai-policy-sidecar" .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix, kept to 45 characters so "<fullname>-webhook-tls" and the like stay valid names. */}}
{{- define "openai-policy-sidecar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := include "openai-policy-sidecar.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "openai-policy-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openai-policy-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openai-policy-sidecar.labels" -}}
{{ include "openai-policy-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ include "openai-policy-sidecar.appVersion" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
helm.sh/chart: openai-policy-sidecar-{{ include "openai-policy-sidecar.appVersion" . }}
{{- end }}

{{- define "openai-policy-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (include "openai-policy-sidecar.appVersion" .)) }}
{{- end }}

{{- define "openai-policy-sidecar.providerKeySecret" -}}
{{- .Values.providerKey.existingSecret | default (printf "%s-provider-key" (include "openai-policy-sidecar.fullname" .)) }}
{{- end }}

{{- define "openai-policy-sidecar.callerKeysSecret" -}}
{{- .Values.auth.staticKeys.existingSecret | default (printf "%s-caller-keys" (include "openai-policy-sidecar.fullname" .)) }}
{{- end }}

{{- define "openai-policy-sidecar.policyConfigMap" -}}
{{- .Values.opa.bundle.configMap.existingConfigMap | default (printf "%s-policy" (include "openai-policy-sidecar.fullname" .)) }}
{{- end }}

{{- define "openai-policy-sidecar.webhookName" -}}
{{- printf "%s-webhook" (include "openai-policy-sidecar.fullname" .) }}
{{- end }}

{{/* The release namespace plus injection.namespaces, as a JSON list (use with fromJsonArray). */}}
{{- define "openai-policy-sidecar.namespaces" -}}
{{- prepend .Values.injection.namespaces .Release.Namespace | uniq | toJson }}
{{- end }}

{{/* securityContext for the injected containers: non-root, read-only root, no escalation, no capabilities. */}}
{{- define "openai-policy-sidecar.securityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
