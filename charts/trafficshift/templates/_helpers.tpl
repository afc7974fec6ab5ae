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
git-sync image: pulled by digest when one is given (the tag stays in the reference for readers;
the kubelet resolves the digest alone), else by tag.
*/}}
{{- define "trafficshift.gitSyncImage" -}}
{{- with .Values.gitSync.image }}
{{- if .digest }}
{{- printf "%s:%s@%s" .repository .tag .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Owner id (--owner-id). Empty derives `<namespace>.<release>`, unique per cluster, so two releases
never write as the same owner. It must pass the binary's own rule, 1-63 characters of
[A-Za-z0-9._-] (src/cli.rs parse_owner): namespaces and release names use only [a-z0-9.-], and
a longer id is cut to 54 characters plus `-` and 8 hex digits of its sha256, so two long names
that share a prefix still differ.
*/}}
{{- define "trafficshift.ownerId" -}}
{{- if .Values.ownerId }}
{{- .Values.ownerId }}
{{- else }}
{{- $id := printf "%s.%s" .Release.Namespace .Release.Name }}
{{- if gt (len $id) 63 }}
{{- $id = printf "%s-%s" (trunc 54 $id) (trunc 8 (sha256sum $id)) }}
{{- end }}
{{- $id }}
{{- end }}
{{- end }}

{{/*
"true" when the IPv4 CIDR given contains 169.254.169.254 (instance metadata), so the
NetworkPolicy can except it: Kubernetes refuses an `except` outside its `cidr`.
*/}}
{{- define "trafficshift.containsMetadataIp" -}}
{{- $parts := splitList "/" . }}
{{- $o := splitList "." (first $parts) }}
{{- $net := add (mul (atoi (index $o 0)) 16777216) (mul (atoi (index $o 1)) 65536) (mul (atoi (index $o 2)) 256) (atoi (index $o 3)) }}
{{- $size := 1 }}
{{- range until (sub 32 (atoi (last $parts)) | int) }}
{{- $size = mul $size 2 }}
{{- end }}
{{- /* 169.254.169.254 = 2852039166 */}}
{{- if eq (div $net $size) (div 2852039166 $size) }}true{{ end }}
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

{{/*
Any address but the instance metadata service: a gate URL or a compromised dependency must
not reach the node's IAM credentials, whatever the gate validation lets through. In-cluster
pods are listed separately because some CNIs (Cilium) never match pod IPs by ipBlock.
*/}}
{{- define "trafficshift.anyButMetadata" -}}
- namespaceSelector: {}
- ipBlock:
    cidr: 0.0.0.0/0
    except:
      - 169.254.169.254/32
- ipBlock:
    cidr: ::/0
    except:
      - fd00:ec2::254/128
{{- end }}
