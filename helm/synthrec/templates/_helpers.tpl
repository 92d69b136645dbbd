{{/* Names. */}}
{{- define "synthrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "synthrec.fullname" -}}
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

{{- define "synthrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels. */}}
{{- define "synthrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "synthrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "synthrec.labels" -}}
helm.sh/chart: {{ include "synthrec.chart" . }}
app.kubernetes.io/name: {{ include "synthrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: synthrec
{{- end }}

{{/* ServiceAccounts. */}}
{{- define "synthrec.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "synthrec.fullname" .)) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* The leader election Lease (in the release namespace). */}}
{{- define "synthrec.leaseName" -}}
{{- printf "%s-operator" (include "synthrec.fullname" .) }}
{{- end }}

{{- define "synthrec.workerServiceAccount" -}}
{{- default (printf "%s-worker" (include "synthrec.fullname" .)) .Values.workers.serviceAccount.name }}
{{- end }}

{{/* Images: repository[:tag][@digest]. */}}
{{- define "synthrec.imageRef" -}}
{{- $ref := .repository }}
{{- if .digest }}
{{- $ref = printf "%s@%s" $ref .digest }}
{{- else }}
{{- $ref = printf "%s:%s" $ref .tag }}
{{- end }}
{{- $ref }}
{{- end }}

{{- define "synthrec.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- include "synthrec.imageRef" (dict "repository" .Values.image.repository "tag" $tag "digest" .Values.image.digest) }}
{{- end }}

{{- define "synthrec.workerImage" -}}
{{- $w := .Values.workers.image }}
{{- if or $w.repository $w.tag $w.digest }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $w.tag }}
{{- include "synthrec.imageRef" (dict "repository" (default .Values.image.repository $w.repository) "tag" $tag "digest" $w.digest) }}
{{- else }}
{{- include "synthrec.image" . }}
{{- end }}
{{- end }}

{{/*
Watched namespaces as a JSON list: namespaced scope -> watchNamespaces (default: the release namespace);
cluster scope -> [] (every namespace). Callers use `include ... | fromJsonArray`.
*/}}
{{- define "synthrec.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "namespaced" }}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- else }}
{{- if .Values.watchNamespaces }}
{{- fail (printf "watchNamespaces (%s) is only for rbac.scope=namespaced: with rbac.scope=cluster the operator watches every namespace. Set rbac.scope=namespaced or remove watchNamespaces." (join ", " .Values.watchNamespaces)) }}
{{- end }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/* Namespaces that get the worker ServiceAccount, as a JSON list. */}}
{{- define "synthrec.workerNamespaces" -}}
{{- $ns := include "synthrec.watchNamespaces" . | fromJsonArray }}
{{- if eq .Values.rbac.scope "cluster" }}
{{- $ns = list .Release.Namespace }}
{{- end }}
{{- concat $ns .Values.workers.serviceAccount.namespaces | uniq | toJson }}
{{- end }}

{{/*
The operator's API permissions (the same rules for a ClusterRole and for each namespaced Role): exactly the
calls its tests record (tests/operator_api_calls.json; tests/integration/test_helm_chart.py compares).
Reads come from watches (list + watch); single GETs only fetch fresh state for a decision (whose Job holds a
name, a resource after a 409). Writes are create, merge-patch, conditional update and delete.
*/}}
{{- define "synthrec.operatorRules" -}}
# The two custom resources: watched; read afresh after a conflicting status write (409); patched only for
# the finalizer (never spec); status via /status.
- apiGroups: ["synthrec.io"]
  resources: ["syntheticdatasets", "recognitionexperiments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["synthrec.io"]
  resources: ["syntheticdatasets/status", "recognitionexperiments/status"]
  verbs: ["patch"]
# Children set blockOwnerDeletion on their ownerReference; with OwnerReferencesPermissionEnforcement
# (OpenShift, hardened clusters) that needs update on the owner's finalizers subresource.
- apiGroups: ["synthrec.io"]
  resources: ["syntheticdatasets/finalizers", "recognitionexperiments/finalizers"]
  verbs: ["update"]
# Worker Jobs (watched for progress, patched for TTL after results are folded, deleted on suspend; read
# when a create finds the name taken, to tell our Job from somebody else's).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The ConfigMaps holding the task JSON of each Job (read and replaced, conditionally, only when a stale one
# of the name exists and no Job uses it).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "update", "delete"]
# The headless Service of a multi-node (torchrun) Job: its pods' stable DNS names for the rendezvous.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "delete"]
# Pods are only watched: scheduling problems and the workers' termination messages.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Kubernetes Events on the resources.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
