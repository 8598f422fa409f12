{{/* Chart name, at most 63 characters. */}}
{{- define "peerd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>". At most 55 characters, so that the
"-cleanup" suffix still fits in 63.
*/}}
{{- define "peerd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Namespace of every resource: peerd.namespace.k8s when set, else the release namespace. */}}
{{- define "peerd.namespace" -}}
{{- default .Release.Namespace .Values.peerd.namespace.k8s }}
{{- end }}

{{- define "peerd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every resource (without the component). */}}
{{- define "peerd.labels" -}}
helm.sh/chart: {{ include "peerd.chart" . }}
app.kubernetes.io/name: {{ include "peerd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of the peerd node pods. The component label keeps them apart from the
cleanup pods of the post-delete hook.
*/}}
{{- define "peerd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "peerd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{/* Selector labels of the cleanup pods. */}}
{{- define "peerd.cleanupSelectorLabels" -}}
app.kubernetes.io/name: {{ include "peerd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cleanup
{{- end }}

{{- define "peerd.serviceAccountName" -}}
{{- include "peerd.fullname" . }}
{{- end }}

{{/* Name of the Secret holding the cluster secret: the existing one, or the generated one. */}}
{{- define "peerd.secretName" -}}
{{- if .Values.peerd.secret.existingSecret }}
{{- .Values.peerd.secret.existingSecret }}
{{- else }}
{{- printf "%s-secret" (include "peerd.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The generated cluster secret (plain text): the value already stored in the cluster when there
is one (so upgrades keep it), else 48 random alphanumerics. Every call without a stored value
draws a new one: call it once per render (daemonset.yaml does).
*/}}
{{- define "peerd.generatedSecretValue" -}}
{{- $existing := lookup "v1" "Secret" (include "peerd.namespace" .) (include "peerd.secretName" .) }}
{{- $data := dig "data" dict $existing }}
{{- if hasKey $data .Values.peerd.secret.key }}
{{- index $data .Values.peerd.secret.key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}

{{- define "peerd.secretDir" -}}
/etc/peerd/secret
{{- end }}

{{/* DNS name and port of the headless Service, for --bootstrap-dns. */}}
{{- define "peerd.bootstrapDNS" -}}
{{- printf "%s.%s.svc.%s:%d" (include "peerd.fullname" .) (include "peerd.namespace" .) (trimSuffix "." .Values.clusterDomain) (int .Values.peerd.ports.p2p) }}
{{- end }}

{{/*
The mirrored registries as a JSON list of "host[:port]": an Azure/peerd-style "https://host"
loses its scheme and any trailing slash. Use with fromJsonArray.
*/}}
{{- define "peerd.registries" -}}
{{- $out := list }}
{{- range .Values.peerd.hosts }}
{{- $h := . | toString | trim | trimPrefix "https://" | trimPrefix "http://" | trimSuffix "/" }}
{{- if not $h }}
{{- fail "peerd.hosts: an entry is empty" }}
{{- end }}
{{- if contains "/" $h }}
{{- fail (printf "peerd.hosts: %q is not host[:port]" .) }}
{{- end }}
{{- $out = append $out $h }}
{{- end }}
{{- if not $out }}
{{- fail "peerd.hosts must list at least one registry (an empty list would make peerd an open pull proxy)" }}
{{- end }}
{{- $out | uniq | toJson }}
{{- end }}

{{/* The address containerd uses to reach the peerd of its own node. */}}
{{- define "peerd.mirrorURL" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.peerd.ports.http) }}
{{- end }}

{{- define "peerd.mirrorsEnabled" -}}
{{- if .Values.peerd.configureMirrors }}true{{ end }}
{{- end }}

{{- define "peerd.cleanupEnabled" -}}
{{- if and .Values.peerd.configureMirrors .Values.peerd.cleanup.enabled }}true{{ end }}
{{- end }}

{{/* The arguments of `peerd hosts install` / `uninstall` naming the registries. */}}
{{- define "peerd.registryArgs" -}}
{{- range (include "peerd.registries" . | fromJsonArray) }}
- --registry={{ . }}
{{- end }}
{{- end }}

{{/* Directory holding containerd's socket (mounted instead of the socket file). */}}
{{- define "peerd.containerdSocketDir" -}}
{{- dir .Values.peerd.containerd.socket }}
{{- end }}

{{/*
A non-negative integer value as plain decimal digits, for an environment variable. Call with
(list "name.of.value" value). Numbers from a values file arrive as float64 and would otherwise
print as 2.147483648e+10, which peerd would not read as an integer; --set gives int64 and
--set-string a string. Anything that is not a whole number >= 0 (a fraction, "20Gi", a
negative number) fails the render rather than reach peerd as 0 or garbage.
*/}}
{{- define "peerd.uint" -}}
{{- $name := index . 0 }}
{{- $v := index . 1 }}
{{- $s := toString $v }}
{{- if kindIs "float64" $v }}
{{- $s = printf "%.0f" $v }}
{{- if ne (float64 $s) $v }}
{{- fail (printf "%s must be a whole number of bytes (got %v)" $name $v) }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[0-9]+$" $s) }}
{{- fail (printf "%s must be a non-negative integer (got %v)" $name $v) }}
{{- end }}
{{- $s }}
{{- end }}

{{/* A boolean value as "true" or "false", for an environment variable. Call with (list "name" value). */}}
{{- define "peerd.bool" -}}
{{- $s := toString (index . 1) }}
{{- if not (has $s (list "true" "false")) }}
{{- fail (printf "%s must be true or false (got %v)" (index . 0) (index . 1)) }}
{{- end }}
{{- $s }}
{{- end }}
