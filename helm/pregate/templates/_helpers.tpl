{{/*
Names. Every object is <fullname>-<component>; the coordinators' and stores' headless Services give
their pods stable DNS names: <fullname>-coordinator-0.<fullname>-coordinator-headless, ….
*/}}
{{- define "pregate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pregate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pregate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass (list $ "component"). */}}
{{- define "pregate.labels" -}}
{{- $top := index . 0 -}}
helm.sh/chart: {{ include "pregate.chart" $top }}
{{ include "pregate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "pregate.tag" $top | quote }}
app.kubernetes.io/managed-by: {{ $top.Release.Service }}
app.kubernetes.io/part-of: pregate
{{- end }}

{{/* Selector labels of one component: name, instance, component. */}}
{{- define "pregate.selectorLabels" -}}
{{- $top := index . 0 -}}
app.kubernetes.io/name: {{ include "pregate.name" $top }}
app.kubernetes.io/instance: {{ $top.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "pregate.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "pregate.image" -}}
image: {{ printf "%s:%s" .Values.image.repository (include "pregate.tag" .) | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end }}

{{/* The coordinators' headless Service and each pod's DNS names. */}}
{{- define "pregate.coordinator.headless" -}}
{{- include "pregate.fullname" . }}-coordinator-headless
{{- end }}

{{- define "pregate.store.headless" -}}
{{- include "pregate.fullname" . }}-store
{{- end }}

{{/* "<pod>.<headless>" for every coordinator, one per line. */}}
{{- define "pregate.coordinator.hosts" -}}
{{- $full := include "pregate.fullname" . }}
{{- $hl := include "pregate.coordinator.headless" . }}
{{- range $i := until (int .Values.coordinator.replicas) }}
{{ printf "%s-coordinator-%d.%s" $full $i $hl }}
{{- end }}
{{- end }}

{{/* The coordinators' gossip addresses, <pod>.<headless>:7946,… (every daemon's --join). */}}
{{- define "pregate.coordinator.gossip" -}}
{{- $out := list }}
{{- range (include "pregate.coordinator.hosts" . | trim | splitList "\n") }}
{{- $out = append $out (printf "%s:7946" .) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/* The coordinators' HTTP addresses, <pod>.<headless>:7080,… (PREGATE_COORDINATOR). */}}
{{- define "pregate.coordinator.http" -}}
{{- $out := list }}
{{- range (include "pregate.coordinator.hosts" . | trim | splitList "\n") }}
{{- $out = append $out (printf "%s:7080" .) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/* --etcd-initial-cluster: <pod>=http://<pod>.<headless>.<ns>.svc.<domain>:2380,… */}}
{{- define "pregate.coordinator.initialCluster" -}}
{{- $out := list }}
{{- $suffix := printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain }}
{{- range (include "pregate.coordinator.hosts" . | trim | splitList "\n") }}
{{- $out = append $out (printf "%s=http://%s.%s:2380" (index (splitList "." .) 0) . $suffix) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{- define "pregate.etcd.embedded" -}}
{{- if not .Values.etcd.external.endpoints }}true{{ end }}
{{- end }}

{{/*
pregate.bytes: (list "values.path" "8Gi") → the byte count as a string ("8589934592"). The schema
allows only <digits><Ki|Mi|Gi|Ti>, which both Kubernetes and pregate's byte flags read.
*/}}
{{- define "pregate.bytes" -}}
{{- $name := index . 0 }}
{{- $v := toString (index . 1) }}
{{- $re := "^([0-9]+)(Ki|Mi|Gi|Ti)$" }}
{{- if not (regexMatch $re $v) }}
{{- fail (printf "%s: %q is not a size like 512Mi or 8Gi" $name $v) }}
{{- end }}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- mul (int64 (regexReplaceAll $re $v "${1}")) (get $units (regexReplaceAll $re $v "${2}")) }}
{{- end }}

{{/*
pregate.store.memory: the store container's memory request and limit. A store keeps up to
--memory-limit of blobs in RAM, up to --max-inflight bytes in transfers, and the Go runtime's own:
    memory = memoryLimit × 1.25 + maxInflight + 512Mi   (rounded up to Mi)
so 8Gi of blobs with 1Gi in flight ask for 11776Mi. Request = limit: a store is not evicted first.
*/}}
{{- define "pregate.store.memory" -}}
{{- $mem := int64 (include "pregate.bytes" (list "store.memoryLimit" .Values.store.memoryLimit)) }}
{{- $inflight := int64 (include "pregate.bytes" (list "store.maxInflight" .Values.store.maxInflight)) }}
{{- $total := add (div (mul $mem 5) 4) $inflight 536870912 }}
{{- printf "%dMi" (div (add $total 1048575) 1048576) }}
{{- end }}

{{- define "pregate.gossip.enabled" -}}
{{- if or .Values.gossip.key .Values.gossip.existingSecret }}true{{ end }}
{{- end }}

{{- define "pregate.gossip.secretName" -}}
{{- default (printf "%s-gossip" (include "pregate.fullname" .)) .Values.gossip.existingSecret }}
{{- end }}

{{- define "pregate.gossip.secretKey" -}}
{{- if .Values.gossip.existingSecret }}{{ .Values.gossip.existingSecretKey }}{{ else }}key{{ end }}
{{- end }}

{{/* Flags every daemon takes for gossip: the key file when a key is set. */}}
{{- define "pregate.gossip.args" -}}
{{- if include "pregate.gossip.enabled" . }}
- --gossip-key-file=/etc/pregate/gossip/key
{{- end }}
{{- end }}

{{/* Environment every daemon gets: its pod's name and namespace, and its node name. */}}
{{- define "pregate.env.pod" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: PREGATE_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}

{{/* The pod IP as the advertised host (stores and workers: nothing keeps their IPs). */}}
{{- define "pregate.env.podIP" -}}
- name: PREGATE_ADVERTISE_HOST
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}

{{/* Mounts every daemon has: /tmp, the gossip key and the TLS material when set. */}}
{{- define "pregate.mounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "pregate.gossip.enabled" . }}
- name: gossip-key
  mountPath: /etc/pregate/gossip
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/pregate/tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
Mutual TLS (tls.enabled): each pod's init container "certs" issues the pod a certificate of its
role, named after the pod, on its IP and the hosts given, from the CA in tls.existingSecret (ca.crt,
ca.key), into the pod's "tls" emptyDir; the CA key is mounted in that init container alone. Call
with (list . role hosts), hosts a comma-separated list that may use the container's variables.
*/}}
{{- define "pregate.tls.init" -}}
{{- $ := index . 0 }}
{{- if $.Values.tls.enabled }}
- name: certs
  {{- include "pregate.image" $ | nindent 2 }}
  command: ["/usr/local/bin/pregate"]
  args:
    - certs
    - issue
    - --ca-dir=/etc/pregate/ca
    - --dir=/etc/pregate/tls
    - --file=node
    - --role={{ index . 1 }}
    - --name=$(POD_NAME)
    - --host=$(POD_IP){{ with index . 2 }},{{ . }}{{ end }}
    - --days={{ $.Values.tls.days }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: tls-ca
      mountPath: /etc/pregate/ca
      readOnly: true
    - name: tls
      mountPath: /etc/pregate/tls
{{- end }}
{{- end }}

{{/* The TLS flags of a container whose pod has the "certs" init container. */}}
{{- define "pregate.tls.args" -}}
{{- if .Values.tls.enabled }}
- --tls-ca=/etc/pregate/tls/ca.crt
- --tls-cert=/etc/pregate/tls/node.crt
- --tls-key=/etc/pregate/tls/node.key
{{- end }}
{{- end }}

{{- define "pregate.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if include "pregate.gossip.enabled" . }}
- name: gossip-key
  secret:
    secretName: {{ include "pregate.gossip.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "pregate.gossip.secretKey" . }}
        path: key
{{- end }}
{{- with include "pregate.tls.volumes" . }}
{{ . }}
{{- end }}
{{- end }}

{{/* The CA Secret (for the "certs" init container) and the pod's certificate (an emptyDir). */}}
{{- define "pregate.tls.volumes" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
      - key: ca.key
        path: ca.key
- name: tls
  emptyDir:
    medium: Memory
{{- end }}
{{- end }}

{{/* The worker's API keys (worker.apiKeys.existingSecret): the flag, the mount, the volume. */}}
{{- define "pregate.apiKeys.args" -}}
{{- if .Values.worker.apiKeys.existingSecret }}
- --api-key-file=/etc/pregate/api-keys/keys
{{- end }}
{{- end }}

{{- define "pregate.apiKeys.mounts" -}}
{{- if .Values.worker.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/pregate/api-keys
  readOnly: true
{{- end }}
{{- end }}

{{- define "pregate.apiKeys.volumes" -}}
{{- if .Values.worker.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ .Values.worker.apiKeys.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.worker.apiKeys.existingSecretKey }}
        path: keys
{{- end }}
{{- end }}

{{/* Pod-level settings every pod shares. */}}
{{- define "pregate.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Probes on a daemon's HTTP port (named http): startup and liveness /health, readiness /ready. */}}
{{/* Probes on the "http" port; call with (list . scheme) for HTTPS (the coordinator with TLS). */}}
{{- define "pregate.probes" -}}
{{- $scheme := "HTTP" }}
{{- if kindIs "slice" . }}{{ $scheme = index . 1 }}{{ end }}
startupProbe:
  httpGet:
    path: /health
    port: http
    scheme: {{ $scheme }}
  periodSeconds: 5
  failureThreshold: 120
livenessProbe:
  httpGet:
    path: /health
    port: http
    scheme: {{ $scheme }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /ready
    port: http
    scheme: {{ $scheme }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}

{{- define "pregate.gossipPorts" -}}
- name: gossip-tcp
  containerPort: 7946
  protocol: TCP
- name: gossip-udp
  containerPort: 7946
  protocol: UDP
{{- end }}
