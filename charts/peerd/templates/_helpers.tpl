{{/* Chart name, at most 63 characters. */}}
{{- define "peerd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: fullnameOverride, else the release name when it already
contains the chart name, else "<release>-<chart>". At most 50 characters, so that the longest derived name,
"<fullname>-cleanup-wait" (the Job, whose name the Job controller also copies into the
`job-name` label of its pods), still fits in 63.
*/}}
{{- define "peerd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
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
Labels of the peerd pod template: no chart version or app version, so that a chart bump
that changes nothing in the pods does not roll every node.
*/}}
{{- define "peerd.podTemplateLabels" -}}
{{ include "peerd.selectorLabels" . }}
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
The Secret `peerd.generate` owns, as YAML, or "" when none is to be rendered:
- the Secret found in the cluster (helm install/upgrade look it up): rendered with the same
  data, so an upgrade keeps the value every node holds;
- none found, and the cluster answered (listing Secrets in the namespace returned a list): a
  fresh install, so a new value (48 random alphanumerics), once;
- no cluster to ask (helm template, Argo CD, a client-side dry run: lookup returns nothing):
  no Secret at all, so that every render is identical and no tool ever replaces the value
  the nodes share.
The pods carry no checksum of it.
*/}}
{{- define "peerd.generatedSecret" -}}
{{- $ns := include "peerd.namespace" . }}
{{- $name := include "peerd.secretName" . }}
{{- $key := .Values.peerd.secret.key }}
{{- $value := "" }}
{{- $existing := lookup "v1" "Secret" $ns $name }}
{{- $data := dig "data" dict $existing }}
{{- if hasKey $data $key }}
{{- $value = index $data $key | b64dec }}
{{- else if hasKey (lookup "v1" "Secret" $ns "") "items" }}
{{- $value = randAlphaNum 48 }}
{{- end }}
{{- if $value }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ $name }}
  namespace: {{ $ns }}
  labels:
    {{- include "peerd.labels" . | nindent 4 }}
    app.kubernetes.io/component: node
type: Opaque
data:
  {{ $key | quote }}: {{ $value | b64enc | quote }}
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
{{- $hosts := .Values.peerd.hosts }}
{{- if kindIs "string" $hosts }}
{{- /* Azure/peerd's README: --set peerd.hosts="mcr.microsoft.com ghcr.io docker.io" */}}
{{- $hosts = regexSplit "\\s+" (trim $hosts) -1 | compact }}
{{- else if and $hosts (not (kindIs "slice" $hosts)) }}
{{- fail (printf "peerd.hosts must be a list of registries or one string of registries separated by spaces (got %v)" $hosts) }}
{{- end }}
{{- range $hosts }}
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

{{/* host:port for a listener on peerd.bindAddress (IPv6 in brackets). Call with (list $ port). */}}
{{- define "peerd.bindAddr" -}}
{{- $root := index . 0 }}
{{- $ip := $root.Values.peerd.bindAddress | default "0.0.0.0" | toString }}
{{- if contains ":" $ip }}
{{- printf "[%s]:%d" $ip (int (index . 1)) }}
{{- else }}
{{- printf "%s:%d" $ip (int (index . 1)) }}
{{- end }}
{{- end }}

{{/* The compat port when it is on (non-zero), else "". */}}
{{- define "peerd.compatPort" -}}
{{- with .Values.peerd.ports.compat }}{{ int . }}{{ end }}
{{- end }}

{{/*
Affinity of the peerd and cleanup pods: peerd.affinity, plus (with excludeVirtualNodes) a
required node affinity keeping them off virtual-kubelet and Fargate nodes, added to every
nodeSelectorTerms entry of the user's own (the terms are ORed, so each needs it). As YAML, or
"" when empty.
*/}}
{{- define "peerd.affinity" -}}
{{- $aff := deepCopy (.Values.peerd.affinity | default dict) }}
{{- if .Values.peerd.excludeVirtualNodes }}
{{- $exprs := list (dict "key" "type" "operator" "NotIn" "values" (list "virtual-kubelet")) (dict "key" "eks.amazonaws.com/compute-type" "operator" "NotIn" "values" (list "fargate")) }}
{{- $na := get $aff "nodeAffinity" | default dict }}
{{- $req := get $na "requiredDuringSchedulingIgnoredDuringExecution" | default dict }}
{{- $terms := get $req "nodeSelectorTerms" | default (list dict) }}
{{- $out := list }}
{{- range $terms }}
{{- $t := deepCopy . }}
{{- $_ := set $t "matchExpressions" (concat (get $t "matchExpressions" | default list) $exprs) }}
{{- $out = append $out $t }}
{{- end }}
{{- $_ := set $req "nodeSelectorTerms" $out }}
{{- $_ := set $na "requiredDuringSchedulingIgnoredDuringExecution" $req }}
{{- $_ := set $aff "nodeAffinity" $na }}
{{- end }}
{{- if $aff }}{{ toYaml $aff }}{{ end }}
{{- end }}

{{/*
Environment of the peerd container: the chart's entries, with peerd.extraEnv merged by name
(an entry named like one of the chart's replaces it in place; of repeated names the last
wins; new names follow in their order). Call with (list $ chartEntries). As a YAML list.
*/}}
{{- define "peerd.env" -}}
{{- $root := index . 0 }}
{{- $base := index . 1 }}
{{- $extra := dict }}
{{- $order := list }}
{{- range $root.Values.peerd.extraEnv }}
{{- if not (and (kindIs "map" .) .name) }}
{{- fail (printf "peerd.extraEnv: every entry needs a name (got %v)" .) }}
{{- end }}
{{- if not (hasKey $extra .name) }}{{ $order = append $order .name }}{{ end }}
{{- $_ := set $extra .name . }}
{{- end }}
{{- $out := list }}
{{- $seen := dict }}
{{- range $base }}
{{- $_ := set $seen .name true }}
{{- $out = append $out (get $extra .name | default .) }}
{{- end }}
{{- range $order }}
{{- if not (hasKey $seen .) }}{{ $out = append $out (get $extra .) }}{{ end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* A probe on the metrics port: (list $ path timing). "" when timing is null. */}}
{{- define "peerd.probe" -}}
{{- $root := index . 0 }}
{{- $timing := index . 2 }}
{{- if $timing }}
{{- $probe := mustMergeOverwrite (dict "httpGet" (dict "path" (index . 1) "port" "metrics")) (deepCopy $timing) }}
{{- toYaml $probe }}
{{- end }}
{{- end }}

{{/*
A ResourceQuota scoped to peerd.priorityClassName, when that is one of the system-*-critical
classes GKE limits outside kube-system (see resourcequota.yaml). Call with
(list $ name component); component "" is the peerd node pods, "cleanup" the post-delete hook.
*/}}
{{- define "peerd.priorityQuota" -}}
{{- $root := index . 0 }}
{{- $class := $root.Values.peerd.priorityClassName | default "" }}
{{- $ns := include "peerd.namespace" $root }}
{{- if and $root.Values.peerd.priorityClassQuota.enabled (has $class (list "system-node-critical" "system-cluster-critical")) (ne $ns "kube-system") }}
apiVersion: v1
kind: ResourceQuota
metadata:
  name: {{ index . 1 }}
  namespace: {{ $ns }}
  labels:
    {{- include "peerd.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ index . 2 | default "node" }}
  {{- if index . 2 }}
  annotations:
    helm.sh/hook: post-delete
    helm.sh/hook-weight: "-1"
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded,hook-failed
  {{- end }}
spec:
  hard:
    pods: {{ int $root.Values.peerd.priorityClassQuota.pods | quote }}
  scopeSelector:
    matchExpressions:
      - scopeName: PriorityClass
        operator: In
        values:
          - {{ $class }}
{{- end }}
{{- end }}
