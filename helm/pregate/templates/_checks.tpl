{{/*
pregate.checks: what values.schema.json cannot express, each failing with the values to change.
Included by templates/checks.yaml, so that every render (install, upgrade, template, lint) runs it.
*/}}
{{- define "pregate.checks" -}}
{{- $v := .Values }}
{{- if lt (int $v.store.replicas) (int $v.replicationFactor) }}
{{- fail (printf "store.replicas (%d) is below replicationFactor (%d): every blob is kept on replicationFactor stores, so run at least that many stores or lower replicationFactor" (int $v.store.replicas) (int $v.replicationFactor)) }}
{{- end }}
{{- if $v.model.blockExpertBytes }}
{{- $cache := int64 (include "pregate.bytes" (list "worker.expertCache" $v.worker.expertCache)) }}
{{- $block := int64 (include "pregate.bytes" (list "model.blockExpertBytes" $v.model.blockExpertBytes)) }}
{{- if lt $cache $block }}
{{- fail (printf "worker.expertCache (%s) is smaller than one block of experts (model.blockExpertBytes %s): a worker must hold every expert of one MoE block at once; raise worker.expertCache" $v.worker.expertCache $v.model.blockExpertBytes) }}
{{- end }}
{{- end }}
{{- if and $v.gossip.key $v.gossip.existingSecret }}
{{- fail "gossip.key and gossip.existingSecret are both set: give the key one way" }}
{{- end }}
{{- with $v.gossip.key }}
{{- $raw := len . }}
{{- $b64 := 0 }}
{{- if regexMatch "^[A-Za-z0-9+/]+={0,2}$" . }}{{ if eq (mod (len .) 4) 0 }}{{ $b64 = len (b64dec .) }}{{ end }}{{ end }}
{{- if not (or (has $raw (list 16 24 32)) (has $b64 (list 16 24 32))) }}
{{- fail (printf "gossip.key must be 16, 24 or 32 bytes, raw or base64 (e.g. head -c 32 /dev/urandom | base64); it is %d bytes and not base64 of such a key" $raw) }}
{{- end }}
{{- end }}
{{- if and $v.tls.enabled (not $v.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: the name of a Secret holding the cluster CA as ca.crt and ca.key (pregate certs ca)" }}
{{- end }}
{{- if and $v.tls.enabled (not (include "pregate.gossip.enabled" .)) }}
{{- fail "tls.enabled needs the gossip key (gossip.key or gossip.existingSecret): with TLS, gossip must be encrypted too" }}
{{- end }}
{{- if and $v.import.enabled (not $v.import.existingClaim) }}
{{- fail "import.enabled needs import.existingClaim: the PVC holding the checkpoint directory import.modelDir" }}
{{- end }}
{{- if and (eq $v.worker.device "cuda") (lt (int $v.worker.gpus) 1) }}
{{- fail "worker.device cuda needs worker.gpus of at least 1" }}
{{- end }}
{{- end }}
