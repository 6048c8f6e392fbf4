{{/*
Identity, approvals and budget settings of the sidecar container (README "Identity", "Human approvals"),
and the volumes they need. Used by _inject.tpl; every template takes the chart's root context.

  auth.mode pod:    a downward API volume (namespace, labels) and env from spec.serviceAccountName; the
                    tenant from the namespace, a pod label or a value; the agent gets a placeholder key.
  auth.mode static: the caller keys Secret, mounted into the sidecar only.
  auth.mode jwt:    the issuer settings; with auth.jwt.kubernetesServiceAccount, a projected token for the
                    agent containers only (SIDECAR_TOKEN_FILE) and a token and CA for the sidecar's JWKS
                    fetches from the API server, mounted into the sidecar only.
*/}}

{{/* A number of seconds as the sidecar parses it: whole numbers as integers (never 1e+06), quoted. */}}
{{- define "openai-policy-sidecar.seconds" -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . | quote }}{{ else }}{{ . | quote }}{{ end }}
{{- end }}

{{/* "true" when the README's Kubernetes service-account recipe is on. */}}
{{- define "openai-policy-sidecar.kubernetesTokens" -}}
{{- if and (eq .Values.auth.mode "jwt") .Values.auth.jwt.kubernetesServiceAccount }}true{{ end }}
{{- end }}

{{/* The caller-token audience: auth.jwt.audience, or the chart name for the Kubernetes recipe. */}}
{{- define "openai-policy-sidecar.jwtAudience" -}}
{{- if .Values.auth.jwt.audience }}
{{- .Values.auth.jwt.audience }}
{{- else if include "openai-policy-sidecar.kubernetesTokens" . }}
{{- include "openai-policy-sidecar.name" . }}
{{- end }}
{{- end }}

{{/* SIDECAR_ADMIN_AUTH: admin.auth, else static in static mode, jwt with an issuer, off otherwise. */}}
{{- define "openai-policy-sidecar.adminAuth" -}}
{{- if .Values.admin.auth }}
{{- .Values.admin.auth }}
{{- else if eq .Values.auth.mode "static" }}static
{{- else if .Values.auth.jwt.issuer }}jwt
{{- else }}off
{{- end }}
{{- end }}

{{/* "true" when the sidecar reads the caller keys file: static mode, or static approvers. */}}
{{- define "openai-policy-sidecar.staticKeysUsed" -}}
{{- if or (eq .Values.auth.mode "static") (eq (include "openai-policy-sidecar.adminAuth" .) "static") }}true{{ end }}
{{- end }}

{{/* Settings that only fail at the sidecar's start-up (or leak a token), refused at render time instead. */}}
{{- define "openai-policy-sidecar.validateAuth" -}}
{{- $auth := .Values.auth }}
{{- $audience := include "openai-policy-sidecar.jwtAudience" . }}
{{- if and (eq $auth.mode "pod") (eq $auth.pod.tenantFrom "value") (not $auth.pod.tenant) }}
{{- fail "auth.pod.tenantFrom=value needs auth.pod.tenant" }}
{{- end }}
{{- if eq (include "openai-policy-sidecar.adminAuth" .) "jwt" }}
{{- if not (and $auth.jwt.issuer (or .Values.admin.jwtAudience $audience)) }}
{{- fail "admin.auth=jwt needs auth.jwt.issuer and admin.jwtAudience (or auth.jwt.audience)" }}
{{- end }}
{{- end }}
{{- with $auth.endUser }}
{{- if and (or .jwksUrl .audience .groupsClaim) (not (or .issuer $auth.jwt.issuer)) }}
{{- fail "auth.endUser needs auth.endUser.issuer (or auth.jwt.issuer)" }}
{{- end }}
{{- /* The sidecar verifies end-user tokens whenever it knows an issuer, and then needs their audience. */}}
{{- if and (or .issuer $auth.jwt.issuer) (not (or .audience $audience)) }}
{{- fail "an issuer (auth.jwt.issuer or auth.endUser.issuer) also verifies end-user tokens: set auth.endUser.audience (or auth.jwt.audience)" }}
{{- end }}
{{- if and .issuer (ne .issuer $auth.jwt.issuer) (include "openai-policy-sidecar.kubernetesTokens" $) }}
{{- fail "auth.endUser.issuer differs from the cluster's: with auth.jwt.kubernetesServiceAccount the sidecar would fetch its keys with the cluster CA and the pod's API token (SIDECAR_JWKS_CA_FILE / _TOKEN_FILE apply to every issuer); leave auth.endUser.issuer empty or use another auth.mode" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env of the sidecar container for identity, approvals and budgets. */}}
{{- define "openai-policy-sidecar.authEnv" -}}
{{- include "openai-policy-sidecar.validateAuth" . }}
{{- $v := .Values }}
{{- $auth := $v.auth }}
{{- $name := include "openai-policy-sidecar.name" . }}
{{- $k8s := include "openai-policy-sidecar.kubernetesTokens" . }}
{{- $audience := include "openai-policy-sidecar.jwtAudience" . -}}
- name: SIDECAR_AUTH_MODE
  value: {{ $auth.mode | quote }}
{{- if eq $auth.mode "pod" }}
- name: SIDECAR_POD_INFO_DIR
  value: /etc/{{ $name }}/pod
# The downward API has the service account only as an env var.
- name: SIDECAR_POD_SERVICE_ACCOUNT
  valueFrom:
    fieldRef:
      fieldPath: spec.serviceAccountName
{{- if eq $auth.pod.tenantFrom "namespace" }}
- name: SIDECAR_POD_TENANT
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- else if eq $auth.pod.tenantFrom "label" }}
- name: SIDECAR_POD_TENANT_LABEL
  value: {{ $auth.pod.tenantLabel | quote }}
{{- else }}
- name: SIDECAR_POD_TENANT
  value: {{ $auth.pod.tenant | quote }}
{{- end }}
{{- with $auth.pod.groups }}
- name: SIDECAR_POD_GROUPS
  value: {{ join "," . | quote }}
{{- end }}
{{- end }}
{{- if include "openai-policy-sidecar.staticKeysUsed" . }}
- name: SIDECAR_STATIC_KEYS_FILE
  value: /var/run/secrets/{{ $name }}/callers/keys.json
{{- end }}
{{- if or (eq $auth.mode "jwt") $auth.jwt.issuer }}
- name: SIDECAR_OIDC_ISSUER
  value: {{ $auth.jwt.issuer | quote }}
{{- if or $auth.jwt.jwksUrl $k8s }}
- name: SIDECAR_JWKS_URL
  value: {{ $auth.jwt.jwksUrl | default "https://kubernetes.default.svc/openid/v1/jwks" | quote }}
{{- end }}
{{- if $audience }}
- name: SIDECAR_JWT_AUDIENCE
  value: {{ $audience | quote }}
{{- end }}
- name: SIDECAR_TENANT_CLAIM
  value: {{ $auth.jwt.tenantClaim | default (ternary "kubernetes.io.namespace" "tenant" (eq $k8s "true")) | quote }}
- name: SIDECAR_GROUPS_CLAIM
  value: {{ $auth.jwt.groupsClaim | quote }}
- name: SIDECAR_JWT_ALGORITHMS
  value: {{ join "," $auth.jwt.algorithms | quote }}
- name: SIDECAR_JWT_LEEWAY
  value: {{ include "openai-policy-sidecar.seconds" $auth.jwt.leeway }}
{{- if $k8s }}
# The API server serves its JWKS to service accounts (system:service-account-issuer-discovery).
- name: SIDECAR_JWKS_CA_FILE
  value: /var/run/secrets/{{ $name }}/kube-api/ca.crt
- name: SIDECAR_JWKS_TOKEN_FILE
  value: /var/run/secrets/{{ $name }}/kube-api/token
{{- end }}
{{- end }}
{{- with $auth.endUser.issuer }}
- name: SIDECAR_END_USER_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $auth.endUser.jwksUrl }}
- name: SIDECAR_END_USER_JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- with $auth.endUser.audience }}
- name: SIDECAR_END_USER_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- with $auth.endUser.groupsClaim }}
- name: SIDECAR_END_USER_GROUPS_CLAIM
  value: {{ . | quote }}
{{- end }}
- name: SIDECAR_APPROVAL_TTL
  value: {{ include "openai-policy-sidecar.seconds" $v.approvals.ttlSeconds }}
{{- with $v.approvals.webhook }}
{{- if .url }}
- name: SIDECAR_APPROVAL_WEBHOOK_URL
  value: {{ .url | quote }}
- name: SIDECAR_APPROVAL_WEBHOOK_TIMEOUT
  value: {{ include "openai-policy-sidecar.seconds" .timeoutSeconds }}
{{- if .secret.existingSecret }}
- name: SIDECAR_APPROVAL_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .secret.existingSecret }}
      key: {{ .secret.key }}
{{- end }}
{{- end }}
{{- end }}
- name: SIDECAR_ADMIN_AUTH
  value: {{ include "openai-policy-sidecar.adminAuth" . | quote }}
{{- with $v.admin.jwtAudience }}
- name: SIDECAR_ADMIN_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
- name: SIDECAR_BUDGET_RESERVATION_TTL
  value: {{ $v.budget.reservationTtlSeconds | int64 | quote }}
{{- end }}

{{/* Volume mounts of the sidecar container for its identity settings (may be empty). */}}
{{- define "openai-policy-sidecar.authVolumeMounts" -}}
{{- $name := include "openai-policy-sidecar.name" . }}
{{- if include "openai-policy-sidecar.staticKeysUsed" . }}
- name: {{ $name }}-caller-keys
  mountPath: /var/run/secrets/{{ $name }}/callers
  readOnly: true
{{- end }}
{{- if eq .Values.auth.mode "pod" }}
- name: {{ $name }}-pod-info
  mountPath: /etc/{{ $name }}/pod
  readOnly: true
{{- end }}
{{- if include "openai-policy-sidecar.kubernetesTokens" . }}
- name: {{ $name }}-kube-api
  mountPath: /var/run/secrets/{{ $name }}/kube-api
  readOnly: true
{{- end }}
{{- end }}

{{/* The pod volumes for the identity settings (may be empty). */}}
{{- define "openai-policy-sidecar.authVolumes" -}}
{{- $v := .Values }}
{{- $name := include "openai-policy-sidecar.name" . }}
{{- if include "openai-policy-sidecar.staticKeysUsed" . }}
- name: {{ $name }}-caller-keys
  secret:
    secretName: {{ include "openai-policy-sidecar.callerKeysSecret" . }}
    defaultMode: 0444
    items:
      - key: {{ $v.auth.staticKeys.secretKey }}
        path: keys.json
{{- end }}
{{- if eq $v.auth.mode "pod" }}
- name: {{ $name }}-pod-info
  downwardAPI:
    defaultMode: 0444
    items:
      - path: namespace
        fieldRef:
          fieldPath: metadata.namespace
      - path: labels
        fieldRef:
          fieldPath: metadata.labels
{{- end }}
{{- if include "openai-policy-sidecar.kubernetesTokens" . }}
# The agent's token, for the sidecar's audience only (agent containers mount it; the kubelet rotates it).
- name: {{ $name }}-agent-token
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          audience: {{ include "openai-policy-sidecar.jwtAudience" . | quote }}
          expirationSeconds: {{ $v.auth.jwt.tokenExpirationSeconds | int64 }}
          path: token
# The sidecar's own token and the cluster CA, for fetching the JWKS from the API server.
- name: {{ $name }}-kube-api
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          expirationSeconds: 3600
          path: token
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
{{- end }}
{{- end }}

{{/* Volume mounts for the agent's containers (may be empty): the projected token of the Kubernetes recipe.
The webhook adds them too, to every app container that does not mount that path already. */}}
{{- define "openai-policy-sidecar.agentVolumeMounts" -}}
{{- if include "openai-policy-sidecar.kubernetesTokens" . }}
{{- $name := include "openai-policy-sidecar.name" . -}}
- name: {{ $name }}-agent-token
  mountPath: /var/run/secrets/{{ $name }}/agent
  readOnly: true
{{- end }}
{{- end }}
