{{/* Chart name, cut to 63 characters (the DNS label limit). */}}
{{- define "uplion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; a component suffix is added by "uplion.componentName". */}}
{{- define "uplion.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of one component's objects: (dict "root" $ "component" "gateway"). */}}
{{- define "uplion.componentName" -}}
{{- $base := include "uplion.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .component }}
{{- end }}

{{- define "uplion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "uplion.labels" -}}
helm.sh/chart: {{ include "uplion.chart" . }}
app.kubernetes.io/name: {{ include "uplion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: uplion
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "uplion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "uplion.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. */}}
{{- define "uplion.componentLabels" -}}
{{ include "uplion.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "uplion.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The image's CUDA variant (UPLION_GPU_WORKER_IMAGE): GPU models' workers run it. Its tags are
the CPU variant's with `-cuda` appended (.github/workflows/image.yml). */}}
{{- define "uplion.gpuImage" -}}
{{- $tag := default (printf "%s-cuda" (default .Chart.AppVersion .Values.image.tag)) .Values.gpuImage.tag }}
{{- printf "%s:%s" (default .Values.image.repository .Values.gpuImage.repository) $tag }}
{{- end }}

{{- define "uplion.configName" -}}
{{- include "uplion.componentName" (dict "root" . "component" "config") }}
{{- end }}

{{/* The Secret holding the URLs with credentials: created here or provided from outside. */}}
{{- define "uplion.secretName" -}}
{{- if .Values.secrets.create }}
{{- include "uplion.componentName" (dict "root" . "component" "secrets") }}
{{- else }}
{{- required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{/* The workers' broker URL: given, or the broker's as the redisAcl worker user. */}}
{{- define "uplion.workerBrokerUrl" -}}
{{- if .Values.secrets.workerBrokerUrl }}
{{- .Values.secrets.workerBrokerUrl }}
{{- else if .Values.redisAcl.enabled }}
{{- $url := urlParse .Values.secrets.brokerUrl }}
{{- $user := printf "%s:%s" .Values.redisAcl.workerUser (required "redisAcl.workerPassword is required when redisAcl.enabled" .Values.redisAcl.workerPassword) }}
{{- urlJoin (dict "scheme" $url.scheme "host" $url.host "path" $url.path "query" $url.query "userinfo" $user) }}
{{- else }}
{{- .Values.secrets.brokerUrl }}
{{- end }}
{{- end }}

{{- define "uplion.operatorServiceAccountName" -}}
{{- default (include "uplion.componentName" (dict "root" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* Settings shared by every uplion container: the ConfigMap and the Secret. */}}
{{- define "uplion.envFrom" -}}
- configMapRef:
    name: {{ include "uplion.configName" . }}
- secretRef:
    name: {{ include "uplion.secretName" . }}
{{- end }}

{{- define "uplion.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "uplion.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "uplion.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{- define "uplion.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "uplion.modelsVolume" -}}
- name: models
  configMap:
    name: {{ include "uplion.configName" . }}
    items:
      - key: models.yaml
        path: models.yaml
{{- end }}

{{- define "uplion.modelsMount" -}}
- name: models
  mountPath: /etc/uplion
  readOnly: true
{{- end }}

{{/* Whether the migrate Job bootstraps the first admin (and so writes its token Secret). */}}
{{- define "uplion.bootstraps" -}}
{{- if and .Values.migrate.enabled (eq .Values.migrate.command "bootstrap") }}true{{- end }}
{{- end }}

{{/* The Secret the bootstrap Job writes the first admin's token to. */}}
{{- define "uplion.tokenSecretName" -}}
{{- default (include "uplion.componentName" (dict "root" . "component" "admin-token")) .Values.migrate.tokenSecret }}
{{- end }}

{{/* Argo CD's order for what a hook Job reads: before the Job's own wave (-1). */}}
{{- define "uplion.beforeJobs" -}}
argocd.argoproj.io/sync-wave: "-2"
{{- end }}

{{/* OpenTelemetry: the standard OTEL_* variables of a component (ctx: root, component), when
tracing.enabled. The operator passes all but OTEL_SERVICE_NAME on to the workers it creates. */}}
{{- define "uplion.tracingEnv" -}}
{{- $tracing := .root.Values.tracing -}}
{{- if $tracing.enabled }}
{{- $attributes := list (printf "k8s.namespace.name=%s" .root.Release.Namespace) }}
{{- range $key, $value := $tracing.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) }}
{{- end -}}
- name: OTEL_SERVICE_NAME
  value: {{ printf "uplion-%s" .component | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "tracing.otlpEndpoint is required when tracing.enabled" $tracing.otlpEndpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $tracing.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $tracing.sampler | quote }}
{{- with $tracing.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- end }}
{{- end }}
