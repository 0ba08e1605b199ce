{{/* Name of the AIModel: nameOverride or the release name, cut to 63 characters. */}}
{{- define "uplion-model.name" -}}
{{- default .Release.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "uplion-model.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: uplion
uplion.ai/model: {{ .Values.spec.name | quote }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}
