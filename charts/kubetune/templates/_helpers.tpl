{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "kubetune.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.labels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does inside each namespace it watches: run studies as trials and Jobs, watch
their Pods, post events. kopf keeps its progress in annotations and a finalizer on studies
(patch on the main resource). No Secrets, no wildcards.
*/}}
{{- define "kubetune.namespacedRules" -}}
- apiGroups: [kubetune.io]
  resources: [hyperparameterstudies]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [hyperparameterstudies/status]
  verbs: [get, patch]
- apiGroups: [kubetune.io]
  resources: [hyperparametertrials]
  verbs: [get, list, watch, create, patch]
- apiGroups: [kubetune.io]
  resources: [hyperparametertrials/status]
  verbs: [get, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* kopf rescans the API when a CRD changes (resource discovery). */}}
{{- define "kubetune.discoveryRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}
