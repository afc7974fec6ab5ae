{{/*
Chart name, truncated to the 63 characters Kubernetes allows in names and label values.
*/}}
{{- define "trafficshift.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the release name, plus the chart name unless the release name already contains it.
*/}}
{{- define "trafficshift.fullname" -}}
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

{{/*
Chart label value: name-version.
*/}}
{{- define "trafficshift.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels of every object.
*/}}
{{- define "trafficshift.labels" -}}
helm.sh/chart: {{ include "trafficshift.chart" . }}
{{ include "trafficshift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "trafficshift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trafficshift.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "trafficshift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trafficshift.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Controller image reference: a digest wins over a tag; the tag defaults to appVersion.
*/}}
{{- define "trafficshift.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the ConfigMap holding the TrafficSplit documents (the chart's or an existing one).
*/}}
{{- define "trafficshift.configMapName" -}}
{{- default (printf "%s-config" (include "trafficshift.fullname" .)) .Values.existingConfigMap }}
{{- end }}

{{/*
What the controller's --config points at: the git-sync checkout (through git-sync's atomic
symlink, so a commit is seen whole) or the ConfigMap mount.
*/}}
{{- define "trafficshift.configPath" -}}
{{- if .Values.gitSync.enabled }}
{{- $root := trimSuffix "/" .Values.gitSync.root }}
{{- $path := trimPrefix "/" (trimSuffix "/" .Values.gitSync.path) }}
{{- if $path }}
{{- printf "%s/%s/%s" $root .Values.gitSync.link $path }}
{{- else }}
{{- printf "%s/%s" $root .Values.gitSync.link }}
{{- end }}
{{- else }}
{{- print "/etc/trafficshift" }}
{{- end }}
{{- end }}

{{/*
The hardened container securityContext shared by every container of the pod.
*/}}
{{- define "trafficshift.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
git-sync container environment (v4 GITSYNC_* variables). Argument: the root context.
*/}}
{{- define "trafficshift.gitSyncEnv" -}}
- name: GITSYNC_REPO
  value: {{ required "gitSync.repo is required when gitSync.enabled is true" .Values.gitSync.repo | quote }}
- name: GITSYNC_REF
  value: {{ .Values.gitSync.ref | quote }}
- name: GITSYNC_ROOT
  value: {{ .Values.gitSync.root | quote }}
- name: GITSYNC_LINK
  value: {{ .Values.gitSync.link | quote }}
- name: GITSYNC_PERIOD
  value: {{ .Values.gitSync.period | quote }}
- name: GITSYNC_DEPTH
  value: {{ .Values.gitSync.depth | quote }}
# git writes its config and temporary files under HOME; the root filesystem is read-only.
- name: HOME
  value: /tmp
{{- with .Values.gitSync.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
