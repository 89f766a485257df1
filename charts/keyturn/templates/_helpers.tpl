{{/* Labels on every object: deploy/'s, plus Helm's own. */}}
{{- define "keyturn.labels" -}}
app.kubernetes.io/name: keyturn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image reference. */}}
{{- define "keyturn.image" -}}
{{- with .Values.image.registry }}{{ . }}/{{ end -}}
{{ required "image.repository is required: the keyturn image you pushed (hack/image REGISTRY/keyturn:TAG)" .Values.image.repository }}
{{- if .Values.image.digest }}@{{ .Values.image.digest }}{{ else }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{ end }}
{{- end -}}
