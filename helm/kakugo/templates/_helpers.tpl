{{/* Names and labels. */}}
{{- define "kakugo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kakugo.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kakugo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kakugo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kakugo
{{- end -}}

{{- define "kakugo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kakugo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kakugo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kakugo.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches (namespaced mode): a list, never empty. */}}
{{- define "kakugo.watchNamespaces" -}}
{{- $ns := .Values.watch.namespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $ns) -}}
{{- end -}}

{{/* repository:tag (tag default: appVersion). Args: dict "image" <values> "root" $ */}}
{{- define "kakugo.image" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The operator's settings file (operator/kakugo_operator/settings.py, camelCase keys). */}}
{{- define "kakugo.settings" -}}
images:
  stages: {{ include "kakugo.image" (dict "image" .Values.images.stages "root" .) | quote }}
  trainer: {{ include "kakugo.image" (dict "image" .Values.images.trainer "root" .) | quote }}
  eval: {{ include "kakugo.image" (dict "image" .Values.images.eval "root" .) | quote }}
  teacher: {{ include "kakugo.image" (dict "image" .Values.images.teacher "root" .) | quote }}
imagePullPolicy: {{ .Values.stages.imagePullPolicy | quote }}
{{- with .Values.stages.serviceAccount }}
serviceAccount: {{ . | quote }}
{{- end }}
{{- with .Values.stages.storageUri }}
storageUri: {{ . | quote }}
{{- end }}
gpuPrices:
{{- range $product, $byCapacity := .Values.gpuPrices.products }}
  {{ $product | quote }}:
  {{- range $capacity, $price := $byCapacity }}
    {{ $capacity | quote }}: {{ $price | toString | quote }}
  {{- end }}
{{- end }}
defaultGpuProduct: {{ .Values.gpuPrices.defaultProduct | quote }}
defaultCapacityType: {{ .Values.gpuPrices.defaultCapacityType | quote }}
backoffBaseSeconds: {{ .Values.stages.backoffBaseSeconds }}
backoffMaxSeconds: {{ .Values.stages.backoffMaxSeconds }}
retryBudget: {{ .Values.stages.retryBudget }}
specChanges: {{ .Values.stages.specChanges | quote }}
{{- if not (kindIs "invalid" .Values.teacher.idleSeconds) }}
teacherIdleSeconds: {{ .Values.teacher.idleSeconds }}
{{- end }}
resyncSeconds: {{ .Values.operator.resyncSeconds }}
metricsPort: {{ .Values.metrics.port }}
livenessEndpoint: {{ printf "http://0.0.0.0:%d/healthz" (int .Values.operator.healthPort) | quote }}
logTailLines: {{ .Values.stages.logTailLines }}
jobTtlSecondsAfterFinished: {{ if kindIs "invalid" .Values.stages.ttlSecondsAfterFinished }}null{{ else }}{{ .Values.stages.ttlSecondsAfterFinished | int }}{{ end }}
webhookPort: {{ .Values.webhook.port }}
webhookHosts: {{ include "kakugo.webhookHosts" . }}
{{- if .Values.webhook.certManager.enabled }}
webhookCertDir: {{ include "kakugo.webhookCertDir" . | quote }}
{{- else }}
webhookConfiguration: {{ include "kakugo.webhookConfiguration" . | quote }}
webhookCertLifetimeSeconds: {{ .Values.webhook.certificateLifetimeSeconds | int }}
{{- end }}
webhookCheckSeconds: {{ .Values.webhook.checkSeconds }}
admissionTrustedUsers:
  - {{ printf "system:serviceaccount:%s:%s" .Release.Namespace (include "kakugo.serviceAccountName" .) | quote }}
allowedImages: {{ toJson .Values.webhook.allowedImages }}
allowedExtraArgs: {{ toJson .Values.webhook.allowedExtraArgs }}
teacherNetworkPolicy: {{ .Values.teacher.networkPolicy.enabled }}
teacherIngressFrom: {{ toJson .Values.teacher.networkPolicy.ingressFrom }}
{{- end -}}

{{/* A Prometheus duration (1h30m, 12h, 2d) in seconds, for comparisons with time(). */}}
{{- define "kakugo.durationSeconds" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 -}}
{{- $total := 0 -}}
{{- range regexFindAll "[0-9]+[smhdw]" . -1 -}}
{{- $n := regexFind "[0-9]+" . | int -}}
{{- $unit := regexFind "[smhdw]$" . -}}
{{- $total = add $total (mul $n (get $units $unit)) -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* The admission webhook: its configuration (cluster-scoped: one per release and
namespace), its Service, the names its certificate is for. */}}
{{- define "kakugo.webhookConfiguration" -}}
{{- printf "%s-%s" (include "kakugo.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "kakugo.webhookService" -}}
{{- printf "%s-webhook" (include "kakugo.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "kakugo.webhookCertDir" -}}
/etc/kakugo-webhook-tls
{{- end -}}

{{- define "kakugo.webhookServiceHosts" -}}
{{- $svc := include "kakugo.webhookService" . -}}
{{- $ns := .Release.Namespace -}}
{{- toJson (list (printf "%s.%s.svc" $svc $ns) $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns)) -}}
{{- end -}}

{{/* The names of the operator's own certificate: the Service's, and webhook.url's host. */}}
{{- define "kakugo.webhookHosts" -}}
{{- $hosts := include "kakugo.webhookServiceHosts" . | fromJsonArray -}}
{{- with .Values.webhook.url -}}
{{- $hosts = append $hosts (regexReplaceAll ":[0-9]+$" (urlParse .).host "" | trimPrefix "[" | trimSuffix "]") -}}
{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{/* RBAC rules of the operator, from files/rbac/operator-rules.yaml. */}}
{{- define "kakugo.rules" -}}
{{- $rules := .Files.Get "files/rbac/operator-rules.yaml" | fromYaml -}}
{{- toYaml $rules.namespaced -}}
{{- end -}}

{{- define "kakugo.clusterRules" -}}
{{- $rules := .Files.Get "files/rbac/operator-rules.yaml" | fromYaml -}}
{{- toYaml (concat $rules.namespaced $rules.clusterWideOnly) -}}
{{- end -}}

{{/* The webhook configuration's rules, narrowed to this release's configuration. */}}
{{- define "kakugo.webhookRules" -}}
{{- $rules := .Files.Get "files/rbac/operator-rules.yaml" | fromYaml -}}
{{- $name := include "kakugo.webhookConfiguration" . -}}
{{- $out := list -}}
{{- range $rules.webhookConfiguration -}}
{{- $out = append $out (merge (dict "resourceNames" (list $name)) .) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
