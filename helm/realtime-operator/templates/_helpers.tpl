{{- define "realtime-operator.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "realtime-operator.labels" -}}
app.kubernetes.io/name: realtime-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "realtime-operator.selector" -}}
app.kubernetes.io/name: realtime-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
