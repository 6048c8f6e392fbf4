{{/*
What gets injected into an agent pod. One source of truth for the three ways in:
  - a user's chart:   initContainers: {{ include "openai-policy-sidecar.sidecarContainers" $ctx | nindent 8 }}
                      volumes:        {{ include "openai-policy-sidecar.volumes" $ctx | nindent 8 }}
                      env (agent):    {{ include "openai-policy-sidecar.agentEnv" $ctx | nindent 12 }}
                      volumeMounts (agent, may be empty):
                                      {{ include "openai-policy-sidecar.agentVolumeMounts" $ctx | nindent 12 }}
                      pod labels:     {{ include "openai-policy-sidecar.podLabels" $ctx | nindent 8 }}
                      pod annotations:{{ include "openai-policy-sidecar.podAnnotations" $ctx | nindent 8 }}
  ("openai-policy-sidecar.opaContainer" and "openai-policy-sidecar.sidecarContainer" give one container each)
  - agentDeployment:  templates/agent-deployment.yaml calls the same templates;
  - the webhook:      "openai-policy-sidecar.injectionConfig" serialises them into the ConfigMap it reads,
                      agentVolumeMounts included (added to app containers that do not mount that path).
Identity, approvals and budget settings come from templates/_auth.tpl.
*/}}

{{/* The native sidecars (init containers with restartPolicy: Always): OPA first, then the sidecar. */}}
{{- define "openai-policy-sidecar.sidecarContainers" -}}
{{- $containers := list }}
{{- if .Values.opa.enabled }}
{{- $containers = append $containers (include "openai-policy-sidecar.opaContainer" .) }}
{{- end }}
{{- $containers = append $containers (include "openai-policy-sidecar.sidecarContainer" .) }}
{{- join "\n" $containers }}
{{- end }}

{{/* The OPA daemon: the policy on 127.0.0.1 only; /health on the diagnostic port for the probes. */}}
{{- define "openai-policy-sidecar.opaContainer" -}}
{{- $v := .Values }}
{{- $name := include "openai-policy-sidecar.name" . -}}
- name: {{ $name }}-opa
  image: {{ printf "%s:%s" $v.opa.image.repository $v.opa.image.tag | quote }}
  imagePullPolicy: {{ $v.opa.image.pullPolicy }}
  restartPolicy: Always
  args:
    - run
    - --server
    - --addr=127.0.0.1:{{ $v.opa.port }}
    - --diagnostic-addr=0.0.0.0:{{ $v.opa.diagnosticPort }}
    - --log-level={{ $v.opa.logLevel }}
    - --log-format=json
    - --disable-telemetry
    {{- if eq $v.opa.bundle.source "configMap" }}
    # A ConfigMap volume holds ..data/ and timestamped hidden directories: load the visible files only,
    # and reload when the kubelet swaps in a new version.
    - --watch
    - --ignore=.*
    - /policy
    {{- else }}
    - --config-file=/config/opa.yaml
    {{- end }}
  ports:
    - name: opa-http
      containerPort: {{ $v.opa.port }}
    - name: opa-diag
      containerPort: {{ $v.opa.diagnosticPort }}
  startupProbe:
    httpGet:
      path: /health?bundles
      port: opa-diag
    periodSeconds: 2
    failureThreshold: 60
  readinessProbe:
    httpGet:
      path: /health?bundles
      port: opa-diag
    periodSeconds: 5
    failureThreshold: 3
  livenessProbe:
    httpGet:
      path: /health
      port: opa-diag
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  resources:
    {{- toYaml $v.opa.resources | nindent 4 }}
  securityContext:
    {{- include "openai-policy-sidecar.securityContext" (dict "uid" $v.opa.runAsUser) | nindent 4 }}
  volumeMounts:
    {{- if eq $v.opa.bundle.source "configMap" }}
    - name: {{ $name }}-policy
      mountPath: /policy
      readOnly: true
    {{- else }}
    - name: {{ $name }}-opa-config
      mountPath: /config
      readOnly: true
    {{- if $v.opa.bundle.service.tokenSecret.name }}
    - name: {{ $name }}-bundle-token
      mountPath: /var/run/secrets/{{ $name }}/bundle
      readOnly: true
    {{- end }}
    {{- end }}
{{- end }}

{{/* The policy-enforcing sidecar: data path on 127.0.0.1, admin port open to the kubelet's probes. */}}
{{- define "openai-policy-sidecar.sidecarContainer" -}}
{{- $v := .Values }}
{{- $name := include "openai-policy-sidecar.name" . -}}
- name: {{ $name }}
  image: {{ include "openai-policy-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  restartPolicy: Always
  command: ["sidecar"]
  args: ["serve"]
  env:
    - name: SIDECAR_HOST
      value: "127.0.0.1"
    - name: SIDECAR_PORT
      value: {{ $v.sidecar.port | quote }}
    - name: SIDECAR_ADMIN_HOST
      value: "0.0.0.0"
    - name: SIDECAR_ADMIN_PORT
      value: {{ $v.sidecar.adminPort | quote }}
    - name: SIDECAR_UPSTREAM_URL
      value: {{ $v.sidecar.upstreamUrl | quote }}
    - name: SIDECAR_UPSTREAM_API_KEY_FILE
      value: /var/run/secrets/{{ $name }}/provider/api-key
    {{- include "openai-policy-sidecar.authEnv" . | nindent 4 }}
    {{- if $v.opa.enabled }}
    - name: SIDECAR_OPA_URL
      value: "http://127.0.0.1:{{ $v.opa.port }}"
    {{- end }}
    - name: SIDECAR_DECISION_PATH
      value: {{ $v.sidecar.decisionPath | quote }}
    - name: SIDECAR_FAIL_MODE
      value: {{ $v.sidecar.failMode | quote }}
    - name: SIDECAR_PII_MODE
      value: {{ $v.sidecar.piiMode | quote }}
    - name: SIDECAR_LOG_LEVEL
      value: {{ $v.sidecar.logLevel | quote }}
    - name: SIDECAR_AUDIT_LOG
      value: {{ $v.sidecar.auditLog | quote }}
    {{- if $v.redis.existingSecret }}
    - name: SIDECAR_REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ $v.redis.existingSecret }}
          key: {{ $v.redis.secretKey }}
    {{- else if $v.redis.url }}
    - name: SIDECAR_REDIS_URL
      value: {{ $v.redis.url | quote }}
    {{- end }}
    - name: OTEL_SERVICE_NAME
      value: {{ $v.otel.serviceName | quote }}
    {{- if $v.otel.endpoint }}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ $v.otel.endpoint | quote }}
    {{- end }}
    {{- if $v.otel.protocol }}
    - name: OTEL_EXPORTER_OTLP_PROTOCOL
      value: {{ $v.otel.protocol | quote }}
    {{- end }}
    - name: TMPDIR
      value: /tmp
    {{- with $v.sidecar.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    # The data port listens on 127.0.0.1 only; it is declared so a clashing app port is caught at injection.
    - name: sidecar-proxy
      containerPort: {{ $v.sidecar.port }}
    - name: sidecar-admin
      containerPort: {{ $v.sidecar.adminPort }}
  startupProbe:
    httpGet:
      path: /healthz
      port: sidecar-admin
    periodSeconds: 1
    failureThreshold: 120
  readinessProbe:
    httpGet:
      path: /readyz
      port: sidecar-admin
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 3
  livenessProbe:
    httpGet:
      path: /healthz
      port: sidecar-admin
    periodSeconds: 10
    timeoutSeconds: 3
    failureThreshold: 3
  resources:
    {{- toYaml $v.sidecar.resources | nindent 4 }}
  securityContext:
    {{- include "openai-policy-sidecar.securityContext" (dict "uid" $v.sidecar.runAsUser) | nindent 4 }}
  volumeMounts:
    - name: {{ $name }}-provider-key
      mountPath: /var/run/secrets/{{ $name }}/provider
      readOnly: true
    {{- with include "openai-policy-sidecar.authVolumeMounts" . | trim }}
    {{- . | nindent 4 }}
    {{- end }}
    - name: {{ $name }}-tmp
      mountPath: /tmp
{{- end }}

{{/* The pod volumes the sidecars mount. Secrets are mounted by the sidecar (or OPA) container only. */}}
{{- define "openai-policy-sidecar.volumes" -}}
{{- $v := .Values }}
{{- $name := include "openai-policy-sidecar.name" . -}}
- name: {{ $name }}-provider-key
  secret:
    secretName: {{ include "openai-policy-sidecar.providerKeySecret" . }}
    defaultMode: 0444
    items:
      - key: {{ $v.providerKey.secretKey }}
        path: api-key
{{- with include "openai-policy-sidecar.authVolumes" . | trim }}
{{ . }}
{{- end }}
- name: {{ $name }}-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if $v.opa.enabled }}
{{- if eq $v.opa.bundle.source "configMap" }}
- name: {{ $name }}-policy
  configMap:
    name: {{ include "openai-policy-sidecar.policyConfigMap" . }}
{{- else }}
- name: {{ $name }}-opa-config
  configMap:
    name: {{ include "openai-policy-sidecar.fullname" . }}-opa-config
{{- if $v.opa.bundle.service.tokenSecret.name }}
- name: {{ $name }}-bundle-token
  secret:
    secretName: {{ $v.opa.bundle.service.tokenSecret.name }}
    defaultMode: 0444
    items:
      - key: {{ $v.opa.bundle.service.tokenSecret.key }}
        path: token
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env for the agent's containers: the OpenAI SDK reads OPENAI_BASE_URL, so no code change is needed.
In pod mode the sidecar ignores the API key, but the SDK refuses to start without one: a placeholder, which
the webhook (like agentDeployment) only sets where the container does not set OPENAI_API_KEY itself. With the
Kubernetes service-account recipe, SIDECAR_TOKEN_FILE is the agent's rotating token (README "Identity"). */}}
{{- define "openai-policy-sidecar.agentEnv" -}}
- name: OPENAI_BASE_URL
  value: "http://127.0.0.1:{{ .Values.sidecar.port }}/v1"
{{- if eq .Values.auth.mode "pod" }}
- name: OPENAI_API_KEY
  value: sidecar-pod-identity
{{- end }}
{{- if include "openai-policy-sidecar.kubernetesTokens" . }}
- name: SIDECAR_TOKEN_FILE
  value: /var/run/secrets/{{ include "openai-policy-sidecar.name" . }}/agent/token
{{- end }}
{{- end }}

{{/* Labels for an injected pod (the NetworkPolicy example selects on them). */}}
{{- define "openai-policy-sidecar.podLabels" -}}
{{ include "openai-policy-sidecar.name" . }}/injected: "true"
{{- end }}

{{/* Annotations for an injected pod: the webhook leaves pods carrying them alone. */}}
{{- define "openai-policy-sidecar.podAnnotations" -}}
{{ include "openai-policy-sidecar.name" . }}/status: injected
{{- end }}

{{/* The webhook's injection config (sidecar/inject/config.py), built from the templates above. */}}
{{- define "openai-policy-sidecar.injectionConfig" -}}
{{- $config := dict
  "prefix" (include "openai-policy-sidecar.name" .)
  "initContainers" (include "openai-policy-sidecar.sidecarContainers" . | fromYamlArray)
  "volumes" (include "openai-policy-sidecar.volumes" . | fromYamlArray)
  "env" (include "openai-policy-sidecar.agentEnv" . | fromYamlArray)
  "volumeMounts" (include "openai-policy-sidecar.agentVolumeMounts" . | fromYamlArray)
  "imagePullSecrets" (.Values.imagePullSecrets | default list)
  "labels" (include "openai-policy-sidecar.podLabels" . | fromYaml)
  "annotations" (include "openai-policy-sidecar.podAnnotations" . | fromYaml)
}}
{{- toYaml $config }}
{{- end }}
