{{/*
Names and labels of every resource come from here (63-character limit of DNS labels).
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "tuna-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: fullnameOverride, else <release>-<chart name>, or just <release> when it already contains the chart name.
*/}}
{{- define "tuna-serving.fullname" -}}
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

{{/* chart-version label value (helm.sh/chart). */}}
{{- define "tuna-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels the selectors use: stable across upgrades. */}}
{{- define "tuna-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuna-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: inference-server
{{- end }}

{{/* Standard labels of every resource. */}}
{{- define "tuna-serving.labels" -}}
helm.sh/chart: {{ include "tuna-serving.chart" . }}
{{ include "tuna-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tuna
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "tuna-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tuna-serving.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest of an image dict {repository, tag, digest}. */}}
{{- define "tuna-serving.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/* The real-inference probe (exec): one tiny question to the ensemble over the pod's own gRPC port, with a deadline. */}}
{{- define "tuna-serving.inferenceProbe" -}}
exec:
  command:
    {{- range .Values.probes.inference.command }}
    - {{ . | quote }}
    {{- end }}
    - --url
    - 127.0.0.1:8001
    - --model
    - {{ .Values.model.name | quote }}
    - --deadline
    - {{ .Values.probes.inference.deadlineSeconds | quote }}
{{- end }}

{{/* Readiness path: the model's own ready endpoint or the server's. */}}
{{- define "tuna-serving.readinessPath" -}}
{{- if .Values.probes.modelReady }}
{{- printf "/v2/models/%s/ready" .Values.model.name }}
{{- else }}
{{- print "/v2/health/ready" }}
{{- end }}
{{- end }}

{{/* The container security context (every container). */}}
{{- define "tuna-serving.securityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/*
Render-time checks that the schema cannot express (they depend on two keys at once).
*/}}
{{- define "tuna-serving.validate" -}}
{{- $src := .Values.modelRepository.source }}
{{- if and (eq $src "s3") (not .Values.modelRepository.s3.bucket) }}
{{- fail "modelRepository.s3.bucket is empty: set the bucket holding the model repository (source s3)" }}
{{- end }}
{{- if and (eq $src "mlflow") (not .Values.modelRepository.mlflow.trackingUri) }}
{{- fail "modelRepository.mlflow.trackingUri is empty: set the MLflow server URI (source mlflow)" }}
{{- end }}
{{- if and (eq $src "mlflow") (or (not .Values.modelRepository.mlflow.registeredModel) (not .Values.modelRepository.mlflow.alias)) }}
{{- fail "modelRepository.mlflow.registeredModel and .alias must both be set (models:/<name>@<alias>)" }}
{{- end }}
{{- if and (eq $src "pvc") (not .Values.modelRepository.pvc.claimName) }}
{{- fail "modelRepository.pvc.claimName is empty: name the PersistentVolumeClaim holding the model repository (source pvc)" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- $cpu := .Values.autoscaling.targetCPUUtilizationPercentage }}
{{- if and (not $cpu) (not .Values.autoscaling.customMetric.enabled) }}
{{- fail "autoscaling.enabled needs a metric: set autoscaling.targetCPUUtilizationPercentage or enable autoscaling.customMetric" }}
{{- end }}
{{- if and $cpu (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.targetCPUUtilizationPercentage needs resources.requests.cpu (utilisation is a share of the request)" }}
{{- end }}
{{- if and .Values.autoscaling.customMetric.enabled (not .Values.autoscaling.customMetric.name) }}
{{- fail "autoscaling.customMetric.enabled needs autoscaling.customMetric.name" }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) is above autoscaling.maxReplicas (%v)" .Values.autoscaling.minReplicas .Values.autoscaling.maxReplicas) }}
{{- end }}
{{- end }}
{{- if .Values.probes.inference.enabled }}
{{- range $name := list "readiness" "liveness" }}
{{- $timeout := int (index $.Values.probes $name).timeoutSeconds }}
{{- if ge (int $.Values.probes.inference.deadlineSeconds) $timeout }}
{{- fail (printf "probes.inference.deadlineSeconds (%v) must be below probes.%s.timeoutSeconds (%v): the kubelet would kill the probe before its own deadline" $.Values.probes.inference.deadlineSeconds $name $timeout) }}
{{- end }}
{{- end }}
{{- end }}
{{- if ge (int .Values.triton.exitTimeoutSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail (printf "triton.exitTimeoutSeconds (%v) must be below terminationGracePeriodSeconds (%v) so in-flight requests finish before the kill" .Values.triton.exitTimeoutSeconds .Values.terminationGracePeriodSeconds) }}
{{- end }}
{{- end }}

{{/* Environment shared by every fetch init container (read-only root: HOME on the /tmp emptyDir). */}}
{{- define "tuna-serving.fetchEnv" -}}
- name: HOME
  value: /tmp
- name: MODEL_NAME
  value: {{ .Values.model.name | quote }}
- name: VERIFY
  value: {{ .Values.modelRepository.verify | quote }}
- name: ENGINE
  value: {{ .Values.model.engine | quote }}
{{- end }}

{{/* Shell lines ending every fetch script: the ensemble's config.pbtxt must be there ($src names the source), and the
repository's LLM engine must be model.engine (an export with serve.engine=vllm carries tensorrt_llm/vllm_env.tar.gz). */}}
{{- define "tuna-serving.verifyScript" -}}
if [ "${VERIFY}" = "true" ] && [ ! -f "/models/${MODEL_NAME}/config.pbtxt" ]; then
  echo "error: the model repository from ${src} has no ${MODEL_NAME}/config.pbtxt (model.name); it holds: $(ls -A /models | tr '\n' ' ')" >&2
  exit 1
fi
exported=hf; [ ! -f /models/tensorrt_llm/vllm_env.tar.gz ] || exported=vllm
if [ "${VERIFY}" = "true" ] && { [ "${exported}" = vllm ] || [ "${ENGINE}" = vllm ]; } && [ "${exported}" != "${ENGINE}" ]; then
  echo "error: the model repository from ${src} was exported with serve.engine=${exported} but model.engine is ${ENGINE}; deploy an export for ${ENGINE} or set model.engine=${exported} (vllm needs the serving-vllm image)" >&2
  exit 1
fi
echo "model repository ready: $(ls /models | tr '\n' ' ')"
{{- end }}
