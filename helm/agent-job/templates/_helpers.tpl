{{/*
Names, labels and the pieces of environment the controller and task containers share.
Paths and names here are contracts with the binary: change them only together with src/.
*/}}

{{/* Base name: the `app.kubernetes.io/name` label and the default object name suffix. */}}
{{- define "agent-job.name" -}}
{{- default "scalr-agent" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: prefix of every object. */}}
{{- define "agent-job.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "agent-job.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-job.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that never change across upgrades: selectors use only these. */}}
{{- define "agent-job.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-job.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-job.labels" -}}
helm.sh/chart: {{ include "agent-job.chart" . }}
{{ include "agent-job.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "agent-job.controllerSelectorLabels" -}}
{{ include "agent-job.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "agent-job.taskSelectorLabels" -}}
{{ include "agent-job.selectorLabels" . }}
app.kubernetes.io/component: task
{{- end }}

{{- define "agent-job.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agent-job.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the ServiceAccount the controller runs as" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agent-job.taskTemplateName" -}}
{{- printf "%s-task-template" (include "agent-job.fullname" .) }}
{{- end }}

{{- define "agent-job.tokenSecretName" -}}
{{- default (printf "%s-token" (include "agent-job.fullname" .)) .Values.agent.tokenExistingSecret.name }}
{{- end }}

{{- define "agent-job.tokenSecretKey" -}}
{{- if .Values.agent.tokenExistingSecret.name }}
{{- required "agent.tokenExistingSecret.key must name the key of the token in Secret agent.tokenExistingSecret.name" .Values.agent.tokenExistingSecret.key }}
{{- else }}token{{- end }}
{{- end }}

{{- define "agent-job.agentImage" -}}
{{- printf "%s:%s" .Values.agent.image.repository (toString (default .Chart.AppVersion .Values.agent.image.tag)) }}
{{- end }}

{{- define "agent-job.runnerImage" -}}
{{- printf "%s:%s" .Values.task.runner.image.repository (toString .Values.task.runner.image.tag) }}
{{- end }}

{{/* Booleans as the agent reads them. `true`/`1` (bool, number or string) mean on. */}}
{{- define "agent-job.flag" -}}
{{- if has (toString .) (list "true" "1") }}1{{ else }}0{{ end }}
{{- end }}

{{- define "agent-job.providerCacheEnabled" -}}
{{- if eq (toString .Values.task.providerCache.enabled) "" }}
{{- include "agent-job.flag" .Values.persistence.enabled }}
{{- else }}
{{- include "agent-job.flag" .Values.task.providerCache.enabled }}
{{- end }}
{{- end }}

{{/* Custom CA bundle: one file at one path in every container that mounts it. */}}
{{- define "agent-job.caEnabled" -}}
{{- if or .Values.tls.caBundleSecret.name .Values.tls.caBundle }}true{{ end }}
{{- end }}

{{- define "agent-job.caFile" -}}/etc/scalr-agent/ca/ca.crt{{- end }}

{{- define "agent-job.caVolume" -}}
{{- if include "agent-job.caEnabled" . }}
- name: ca-bundle
{{- if .Values.tls.caBundleSecret.name }}
  secret:
    secretName: {{ .Values.tls.caBundleSecret.name }}
    items:
      - key: {{ .Values.tls.caBundleSecret.key }}
        path: ca.crt
{{- else }}
  configMap:
    name: {{ include "agent-job.fullname" . }}-ca
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{- define "agent-job.caMount" -}}
{{- if include "agent-job.caEnabled" . }}
- name: ca-bundle
  mountPath: /etc/scalr-agent/ca
  readOnly: true
{{- end }}
{{- end }}

{{/* SCALR_AGENT_CA_CERT for the agent's own TLS, SSL_CERT_FILE for everything else. */}}
{{- define "agent-job.caEnv" -}}
{{- if include "agent-job.caEnabled" . }}
- name: SCALR_AGENT_CA_CERT
  value: {{ include "agent-job.caFile" . }}
{{- include "agent-job.sslCertFileEnv" . }}
{{- end }}
{{- end }}

{{- define "agent-job.sslCertFileEnv" -}}
{{- if include "agent-job.caEnabled" . }}
- name: SSL_CERT_FILE
  value: {{ include "agent-job.caFile" . }}
{{- end }}
{{- end }}

{{- define "agent-job.proxyEnv" -}}
{{- with .Values.proxy.httpProxy }}
- name: HTTP_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.proxy.httpsProxy }}
- name: HTTPS_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with .Values.proxy.noProxy }}
- name: NO_PROXY
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The container hardening every container of ours gets. */}}
{{- define "agent-job.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}
