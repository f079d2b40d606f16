{{/* The namespace of every namespaced object: the system namespace. */}}
{{- define "peerd.namespace" -}}
{{- default .Release.Namespace .Values.systemNamespace -}}
{{- end -}}

{{- define "peerd.labels" -}}
app.kubernetes.io/name: peerd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selects the pods of this release; never changes across upgrades. */}}
{{- define "peerd.selectorLabels" -}}
app.kubernetes.io/name: peerd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The SNI names the TLSRoute sends to peerd. */}}
{{- define "peerd.routeHostnames" -}}
{{- if .Values.eastWestGateway.hostnames -}}
{{- toYaml .Values.eastWestGateway.hostnames -}}
{{- else -}}
- {{ printf "peerd.%s.svc" (include "peerd.namespace" .) }}
{{- end -}}
{{- end -}}

{{/* The pods' annotations: Prometheus's scrape hints, then the user's. */}}
{{- define "peerd.podAnnotations" -}}
{{- $a := dict -}}
{{- if .Values.prometheus.scrape -}}
{{- $_ := set $a "prometheus.io/scrape" "true" -}}
{{- $_ := set $a "prometheus.io/port" "15014" -}}
{{- $_ := set $a "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.podAnnotations) $a) -}}
{{- end -}}

{{/*
The state Secrets (internal/kubestate): list by label to load the links,
get/create/update to save, delete when a link is removed. Their names follow
the linked clusters, so they cannot be listed by name.
*/}}
{{- define "peerd.stateSecretsRule" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, create, update, delete]
{{- end -}}
