{{- define "agent.name" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agent.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The agent's own namespace first, then the additional target namespaces, each once. */}}
{{- define "agent.targetNamespaces" -}}
{{- uniq (prepend (.Values.additionalTargetNamespaces | default list) .Values.namespace) | toJson -}}
{{- end -}}
