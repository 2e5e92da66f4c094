{{/* The release's name, which names every object. */}}
{{- define "keeper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The workload's name: the worker Deployment's in sidecar mode. */}}
{{- define "keeper.workloadName" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- .Values.sidecar.name -}}
{{- else -}}
{{- include "keeper.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "keeper.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keeper.labels" -}}
{{ include "keeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Where secrets and the config are mounted: siblings, never nested. */}}
{{- define "keeper.configDir" -}}/etc/keeper/config{{- end -}}
{{- define "keeper.etcdTLSDir" -}}/etc/keeper/etcd-tls{{- end -}}
{{- define "keeper.etcdPasswordDir" -}}/etc/keeper/etcd-password{{- end -}}
{{- define "keeper.redisTLSDir" -}}/etc/keeper/redis-tls{{- end -}}
{{- define "keeper.redisPasswordDir" -}}/etc/keeper/redis-password{{- end -}}
{{- define "keeper.sentinelPasswordDir" -}}/etc/keeper/redis-sentinel-password{{- end -}}

{{/*
keeper.yaml, built as a dict so that `config` merges over it key by key.
Secrets appear as file paths only.
*/}}
{{- define "keeper.config" -}}
{{- $v := .Values -}}
{{- $etcd := dict "endpoints" $v.etcd.endpoints "prefix" $v.etcd.prefix "session_ttl" $v.etcd.sessionTTL -}}
{{- with $v.etcd.username }}{{ $_ := set $etcd "username" . }}{{ end -}}
{{- if $v.etcd.password.secretName -}}
{{- $_ := set $etcd "password_file" (printf "%s/password" (include "keeper.etcdPasswordDir" .)) -}}
{{- end -}}
{{- if $v.etcd.tls.enabled -}}
{{- if not $v.etcd.tls.secretName -}}{{- fail "etcd.tls.enabled needs etcd.tls.secretName (a Secret with the CA bundle)" -}}{{- end -}}
{{- $dir := include "keeper.etcdTLSDir" . -}}
{{- $_ := set $etcd "ca_file" (printf "%s/%s" $dir $v.etcd.tls.caKey) -}}
{{- if $v.etcd.tls.clientCert -}}
{{- $_ := set $etcd "cert_file" (printf "%s/%s" $dir $v.etcd.tls.certKey) -}}
{{- $_ := set $etcd "key_file" (printf "%s/%s" $dir $v.etcd.tls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- $sentinel := $v.redis.sentinel | default dict -}}
{{- $redis := dict -}}
{{- with $v.redis.prefix }}{{ $_ := set $redis "prefix" . }}{{ end -}}
{{- if $sentinel.master -}}
{{- if $v.redis.addr -}}{{- fail "redis.addr and redis.sentinel.master are exclusive: set redis.addr to \"\" when the sentinels name the primary" -}}{{- end -}}
{{- if not $sentinel.addrs -}}{{- fail "redis.sentinel.master needs redis.sentinel.addrs (host:port of one or more sentinels)" -}}{{- end -}}
{{- $s := dict "master" $sentinel.master "addrs" $sentinel.addrs -}}
{{- with $sentinel.username }}{{ $_ := set $s "username" . }}{{ end -}}
{{- if and $sentinel.password $sentinel.password.secretName -}}
{{- $_ := set $s "password_file" (printf "%s/password" (include "keeper.sentinelPasswordDir" .)) -}}
{{- end -}}
{{- $_ := set $redis "sentinel" $s -}}
{{- else if or $sentinel.addrs $sentinel.username (and $sentinel.password $sentinel.password.secretName) -}}
{{- fail "redis.sentinel.addrs, username and password need redis.sentinel.master (the name the sentinels monitor the primary under)" -}}
{{- else if $v.redis.addr -}}
{{- $_ := set $redis "addr" $v.redis.addr -}}
{{- else -}}
{{- fail "redis.addr (or redis.sentinel) is required: keeper in a pod does not start its own redis-server" -}}
{{- end -}}
{{- with $v.redis.layout }}{{ $_ := set $redis "layout" . }}{{ end -}}
{{- with $v.redis.username }}{{ $_ := set $redis "username" . }}{{ end -}}
{{- if $v.redis.password.secretName -}}
{{- $_ := set $redis "password_file" (printf "%s/password" (include "keeper.redisPasswordDir" .)) -}}
{{- end -}}
{{- if $v.redis.tls.enabled -}}
{{- $_ := set $redis "tls" true -}}
{{- if $v.redis.tls.secretName -}}
{{- $dir := include "keeper.redisTLSDir" . -}}
{{- $_ := set $redis "ca_file" (printf "%s/%s" $dir $v.redis.tls.caKey) -}}
{{- if $v.redis.tls.clientCert -}}
{{- $_ := set $redis "cert_file" (printf "%s/%s" $dir $v.redis.tls.certKey) -}}
{{- $_ := set $redis "key_file" (printf "%s/%s" $dir $v.redis.tls.keyKey) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if not $v.etcd.endpoints -}}{{- fail "etcd.endpoints is required: an embedded etcd per pod is not a fleet" -}}{{- end -}}
{{- $cfg := dict "log_level" $v.logLevel "health_addr" (printf ":%d" (int $v.health.port)) "etcd" $etcd "redis" $redis -}}
{{- $dk := $v.deckard | default dict -}}
{{- $deckard := dict -}}
{{- with $dk.keyspaceEvents }}{{ $_ := set $deckard "keyspace_events" . }}{{ end -}}
{{- with $dk.discoveryInterval }}{{ $_ := set $deckard "discovery_interval" . }}{{ end -}}
{{- with $dk.pollMin }}{{ $_ := set $deckard "poll_min" . }}{{ end -}}
{{- with $dk.pollMax }}{{ $_ := set $deckard "poll_max" . }}{{ end -}}
{{- if $deckard -}}
{{- if ne $v.redis.layout "deckard" -}}{{- fail "deckard.* settings need redis.layout=deckard" -}}{{- end -}}
{{- $_ := set $cfg "deckard" $deckard -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $cfg (deepCopy $v.config)) -}}
{{- end -}}

{{/* The keeper container, the same in every mode. */}}
{{- define "keeper.container" -}}
{{- $v := .Values -}}
- name: keeper
  image: {{ printf "%s:%s" $v.image.repository ($v.image.tag | default .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args: ["run", "--config", "{{ include "keeper.configDir" . }}/keeper.yaml"]
  env:
    # The member id in etcd and service.instance.id in metrics.
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    {{- if and (eq $v.mode "daemonset") $v.metrics.nodeCollector.enabled }}
    # The collector on this pod's node; defined before its use below.
    - name: HOST_IP
      valueFrom: {fieldRef: {fieldPath: status.hostIP}}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ printf "%s://$(HOST_IP):%d" $v.metrics.nodeCollector.scheme (int $v.metrics.nodeCollector.port) | quote }}
    {{- else if $v.metrics.otlpEndpoint }}
    - name: OTEL_EXPORTER_OTLP_ENDPOINT
      value: {{ $v.metrics.otlpEndpoint | quote }}
    {{- end }}
    - name: OTEL_RESOURCE_ATTRIBUTES
      value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE),k8s.node.name=$(NODE_NAME)%s" (ternary (printf ",%s" $v.metrics.resourceAttributes) "" (ne $v.metrics.resourceAttributes "")) | quote }}
  ports:
    - name: health
      containerPort: {{ $v.health.port }}
      protocol: TCP
  livenessProbe:
    httpGet: {path: /healthz, port: health}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /readyz, port: health}
    periodSeconds: 5
    failureThreshold: 2
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: keeper-config
      mountPath: {{ include "keeper.configDir" . }}
      readOnly: true
    {{- if $v.etcd.password.secretName }}
    - name: etcd-password
      mountPath: {{ include "keeper.etcdPasswordDir" . }}
      readOnly: true
    {{- end }}
    {{- if $v.etcd.tls.enabled }}
    - name: etcd-tls
      mountPath: {{ include "keeper.etcdTLSDir" . }}
      readOnly: true
    {{- end }}
    {{- if $v.redis.password.secretName }}
    - name: redis-password
      mountPath: {{ include "keeper.redisPasswordDir" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.redis.tls.enabled $v.redis.tls.secretName }}
    - name: redis-tls
      mountPath: {{ include "keeper.redisTLSDir" . }}
      readOnly: true
    {{- end }}
    {{- if and $v.redis.sentinel $v.redis.sentinel.master $v.redis.sentinel.password $v.redis.sentinel.password.secretName }}
    - name: redis-sentinel-password
      mountPath: {{ include "keeper.sentinelPasswordDir" . }}
      readOnly: true
    {{- end }}
{{- end -}}

{{/* The keeper's volumes: its config and only the secrets it reads. */}}
{{- define "keeper.volumes" -}}
{{- $v := .Values -}}
- name: keeper-config
  configMap:
    name: {{ include "keeper.fullname" . }}
{{- if $v.etcd.password.secretName }}
- name: etcd-password
  secret:
    secretName: {{ $v.etcd.password.secretName }}
    defaultMode: 0440
    items:
      - {key: {{ $v.etcd.password.key }}, path: password}
{{- end }}
{{- if $v.etcd.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ $v.etcd.tls.secretName }}
    defaultMode: 0440
    items:
      - {key: {{ $v.etcd.tls.caKey }}, path: {{ $v.etcd.tls.caKey }}}
      {{- if $v.etcd.tls.clientCert }}
      - {key: {{ $v.etcd.tls.certKey }}, path: {{ $v.etcd.tls.certKey }}}
      - {key: {{ $v.etcd.tls.keyKey }}, path: {{ $v.etcd.tls.keyKey }}}
      {{- end }}
{{- end }}
{{- if $v.redis.password.secretName }}
- name: redis-password
  secret:
    secretName: {{ $v.redis.password.secretName }}
    defaultMode: 0440
    items:
      - {key: {{ $v.redis.password.key }}, path: password}
{{- end }}
{{- if and $v.redis.tls.enabled $v.redis.tls.secretName }}
- name: redis-tls
  secret:
    secretName: {{ $v.redis.tls.secretName }}
    defaultMode: 0440
    items:
      - {key: {{ $v.redis.tls.caKey }}, path: {{ $v.redis.tls.caKey }}}
      {{- if $v.redis.tls.clientCert }}
      - {key: {{ $v.redis.tls.certKey }}, path: {{ $v.redis.tls.certKey }}}
      - {key: {{ $v.redis.tls.keyKey }}, path: {{ $v.redis.tls.keyKey }}}
      {{- end }}
{{- end }}
{{- if and $v.redis.sentinel $v.redis.sentinel.master $v.redis.sentinel.password $v.redis.sentinel.password.secretName }}
- name: redis-sentinel-password
  secret:
    secretName: {{ $v.redis.sentinel.password.secretName }}
    defaultMode: 0440
    items:
      - {key: {{ $v.redis.sentinel.password.key }}, path: password}
{{- end }}
{{- end -}}

{{/* Pod template metadata and the scheduling settings shared by every mode. */}}
{{- define "keeper.podMeta" -}}
labels:
  {{- include "keeper.selectorLabels" . | nindent 2 }}
  {{- with .Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  # Pods roll when keeper.yaml changes.
  checksum/config: {{ include "keeper.config" . | sha256sum }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "keeper.podScheduling" -}}
{{- $v := .Values -}}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
# keeper does not talk to the Kubernetes API.
automountServiceAccountToken: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
