{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "roomcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart name. */}}
{{- define "roomcast.fullname" -}}
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

{{/* Component names leave room for the ReplicaSet and pod suffixes (63 characters in all). */}}
{{- define "roomcast.gateway.fullname" -}}
{{- printf "%s-gateway" (include "roomcast.fullname" . | trunc 45 | trimSuffix "-") -}}
{{- end -}}
{{- define "roomcast.fanout.fullname" -}}
{{- printf "%s-fanout" (include "roomcast.fullname" . | trunc 45 | trimSuffix "-") -}}
{{- end -}}
{{- define "roomcast.redis.fullname" -}}
{{- printf "%s-redis" (include "roomcast.fullname" . | trunc 45 | trimSuffix "-") -}}
{{- end -}}

{{- define "roomcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "roomcast.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "roomcast.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "roomcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "gateway"). */}}
{{- define "roomcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "roomcast.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "roomcast.componentLabels" -}}
{{ include "roomcast.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Images ------------------------------------------------------------------------------ */}}

{{/* Call with (dict "root" $ "image" .Values.gateway.image). */}}
{{- define "roomcast.image" -}}
{{- $repository := .image.repository -}}
{{- with .root.Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) $repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Environment ------------------------------------------------------------------------- */}}

{{/* A whole number as an env value: Helm reads YAML numbers as floats (1000000 would print as
     1e+06), and the binaries want digits. */}}
{{- define "roomcast.int" -}}
{{- printf "%d" (int64 .) | quote -}}
{{- end -}}

{{/* A number that may have a fraction (rates); whole numbers print without one. */}}
{{- define "roomcast.number" -}}
{{- if eq (float64 .) (float64 (int64 .)) -}}
{{- printf "%d" (int64 .) | quote -}}
{{- else -}}
{{- printf "%v" . | quote -}}
{{- end -}}
{{- end -}}

{{/* Settings both binaries read; one value each so gateways and fanouts always agree. */}}
{{- define "roomcast.sharedEnv" -}}
REDIS_KEY_PREFIX: {{ .Values.redis.keyPrefix | quote }}
RECOVERY_MAX_DISCONNECTION_MS: {{ include "roomcast.int" .Values.recovery.maxDisconnectionMs }}
HISTORY_MAX_LEN: {{ include "roomcast.int" .Values.recovery.historyMaxLen }}
LOG_FORMAT: {{ .Values.logging.format | quote }}
RUST_LOG: {{ .Values.logging.level | quote }}
{{- with .Values.tracing.otlpEndpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ .Values.tracing.otlpProtocol | quote }}
{{- end -}}

{{/* The gateway's typed settings, NAME: "value" (the ConfigMap's data). */}}
{{- define "roomcast.gateway.env" -}}
{{- $c := .Values.gateway.config -}}
{{ include "roomcast.sharedEnv" . }}
{{- with .Values.tracing.gatewayServiceName }}
OTEL_SERVICE_NAME: {{ . | quote }}
{{- end }}
LISTEN_ADDR: {{ printf "0.0.0.0:%d" (int64 .Values.gateway.port) | quote }}
TRANSPORTS: {{ ternary "websocket" "websocket,polling" .Values.gateway.websocketOnly | quote }}
RECOVERY_SKIP_MIDDLEWARES: {{ .Values.recovery.skipMiddlewares | toString | quote }}
WEBSOCKET_PING_INTERVAL: {{ include "roomcast.int" $c.pingIntervalMs }}
WEBSOCKET_PING_TIMEOUT: {{ include "roomcast.int" $c.pingTimeoutMs }}
WEBSOCKET_UPGRADE_TIMEOUT: {{ include "roomcast.int" $c.upgradeTimeoutMs }}
MAX_PAYLOAD: {{ include "roomcast.int" $c.maxPayload }}
MAX_CONNECTIONS: {{ include "roomcast.int" $c.maxConnections }}
LISTEN_BACKLOG: {{ include "roomcast.int" $c.listenBacklog }}
CONNECT_TIMEOUT: {{ include "roomcast.int" $c.connectTimeoutMs }}
MAX_BUFFERED_BYTES: {{ include "roomcast.int" $c.maxBufferedBytes }}
NAMESPACES: {{ join "," $c.namespaces | quote }}
HEARTBEAT_INTERVAL_MS: {{ include "roomcast.int" $c.heartbeatIntervalMs }}
GATEWAY_TTL_MS: {{ include "roomcast.int" $c.gatewayTtlMs }}
REQUEST_TIMEOUT_MS: {{ include "roomcast.int" $c.requestTimeoutMs }}
SUBSCRIPTION_PROBE_INTERVAL_MS: {{ include "roomcast.int" $c.subscriptionProbeIntervalMs }}
MAX_ROOMS_PER_SOCKET: {{ include "roomcast.int" $c.maxRoomsPerSocket }}
DELIVERY_ORDER_WAIT_MS: {{ include "roomcast.int" $c.deliveryOrderWaitMs }}
DELIVERY_ORDER_MAX_HELD: {{ include "roomcast.int" $c.deliveryOrderMaxHeld }}
DRAIN_DELAY_MS: {{ include "roomcast.int" $c.drainDelayMs }}
DRAIN_PERIOD_MS: {{ include "roomcast.int" $c.drainPeriodMs }}
SHUTDOWN_TIMEOUT_MS: {{ include "roomcast.int" $c.shutdownTimeoutMs }}
{{- with $c.corsAllowedOrigins }}
CORS_ALLOWED_ORIGINS: {{ join "," . | quote }}
{{- end }}
EVENT_RATE_PER_SECOND: {{ include "roomcast.number" $c.eventRatePerSecond }}
EVENT_BURST: {{ include "roomcast.int" $c.eventBurst }}
CONNECT_RATE_PER_IP: {{ include "roomcast.number" $c.connectRatePerIp }}
CONNECT_BURST_PER_IP: {{ include "roomcast.int" $c.connectBurstPerIp }}
{{- $trust := $c.trustXForwardedFor }}
{{- if kindIs "invalid" $trust }}{{ $trust = .Values.ingress.enabled }}{{ end }}
TRUST_X_FORWARDED_FOR: {{ $trust | toString | quote }}
{{- if .Values.auth.enabled }}
{{- with .Values.auth.issuer }}
JWT_ISSUER: {{ . | quote }}
{{- end }}
{{- with .Values.auth.audience }}
JWT_AUDIENCE: {{ . | quote }}
{{- end }}
JWT_LEEWAY_SECONDS: {{ include "roomcast.int" .Values.auth.leewaySeconds }}
{{- end }}
{{- end -}}

{{/* The fanout's typed settings, NAME: "value" (the ConfigMap's data). */}}
{{- define "roomcast.fanout.env" -}}
{{- $c := .Values.fanout.config -}}
{{ include "roomcast.sharedEnv" . }}
{{- with .Values.tracing.fanoutServiceName }}
OTEL_SERVICE_NAME: {{ . | quote }}
{{- end }}
ADMIN_ADDR: {{ printf "0.0.0.0:%d" (int64 .Values.fanout.adminPort) | quote }}
FANOUT_PARTITIONS: {{ include "roomcast.int" $c.partitions }}
FANOUT_LEASE_TTL_MS: {{ include "roomcast.int" $c.leaseTtlMs }}
FANOUT_LEASE_RENEW_MS: {{ include "roomcast.int" $c.leaseRenewMs }}
FANOUT_BATCH_SIZE: {{ include "roomcast.int" $c.batchSize }}
FANOUT_BLOCK_MS: {{ include "roomcast.int" $c.blockMs }}
MAX_PUBLISH_BYTES: {{ include "roomcast.int" $c.maxPublishBytes }}
MAX_PUBLISH_ROOMS: {{ include "roomcast.int" $c.maxPublishRooms }}
DEAD_LETTER_MAXLEN: {{ include "roomcast.int" $c.deadLetterMaxlen }}
FANOUT_TRIM_INTERVAL_MS: {{ include "roomcast.int" $c.trimIntervalMs }}
SHUTDOWN_TIMEOUT_MS: {{ include "roomcast.int" $c.shutdownTimeoutMs }}
{{- end -}}

{{/* Env vars the Deployments set themselves (from Secrets or the pod): not in the ConfigMap. */}}
{{- define "roomcast.gateway.podEnvNames" -}}
[REDIS_URL, JWT_SECRET, JWT_PUBLIC_KEY_FILE, GATEWAY_ID]
{{- end -}}
{{- define "roomcast.fanout.podEnvNames" -}}
[REDIS_URL, FANOUT_REPLICA_ID]
{{- end -}}

{{/* ConfigMap data of a component: typed settings plus extraEnv, which may only add names.
     Call with (dict "root" $ "component" "gateway"). */}}
{{- define "roomcast.configData" -}}
{{- $values := index .root.Values .component -}}
{{- $typed := include (printf "roomcast.%s.env" .component) .root | fromYaml -}}
{{- $reserved := include (printf "roomcast.%s.podEnvNames" .component) .root | fromYamlArray -}}
{{- range $name, $value := $values.extraEnv -}}
{{- if or (hasKey $typed $name) (has $name $reserved) -}}
{{- fail (printf "%s.extraEnv.%s: the chart sets %s itself; use its typed value (see values.yaml)" $.component $name $name) -}}
{{- end -}}
{{- end -}}
{{- toYaml (merge (dict) $typed $values.extraEnv) -}}
{{- end -}}

{{/* REDIS_URL as an env var entry: the bundled Redis, or the Secret that holds the URL. */}}
{{- define "roomcast.redisUrlEnv" -}}
- name: REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:6379" (include "roomcast.redis.fullname" .) | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret | default (printf "%s-redis-url" (include "roomcast.fullname" .)) }}
      key: {{ ternary .Values.redis.external.existingSecretKey "redis-url" (ne .Values.redis.external.existingSecret "") }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when their settings change (ConfigMap, REDIS_URL
     Secret). Secrets made outside the chart are not seen: restart after changing them. */}}
{{- define "roomcast.checksum" -}}
{{- $root := .root -}}
{{- $config := include "roomcast.configData" . -}}
{{- $secret := include (print $root.Template.BasePath "/redis-url-secret.yaml") $root -}}
checksum/config: {{ print $config $secret | sha256sum }}
{{- end -}}

{{/* Checks that values.schema.json cannot express; run by every template that needs them. */}}
{{- define "roomcast.validate" -}}
{{- $redis := .Values.redis -}}
{{- if not $redis.enabled -}}
{{- if and (not $redis.external.url) (not $redis.external.existingSecret) -}}
{{- fail "Redis: set redis.external.url or redis.external.existingSecret (a Secret with the REDIS_URL), or redis.enabled=true for a bundled single-node Redis" -}}
{{- end -}}
{{- if and $redis.external.url $redis.external.existingSecret -}}
{{- fail "Redis: set only one of redis.external.url and redis.external.existingSecret" -}}
{{- end -}}
{{- else if or $redis.external.url $redis.external.existingSecret -}}
{{- fail "Redis: redis.enabled=true runs a bundled Redis; leave redis.external.* empty (or set redis.enabled=false)" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) -}}
{{- fail "auth.enabled is true (the default): set auth.existingSecret to a Secret with the JWT key (key jwt-secret for HS256, or public.pem with auth.type=publicKey); auth.enabled=false only for local trials" -}}
{{- end -}}
{{- $gw := .Values.gateway -}}
{{- $drainMs := add $gw.config.drainDelayMs $gw.config.drainPeriodMs $gw.config.shutdownTimeoutMs -}}
{{- $drain := add $gw.preStopSleepSeconds (divf $drainMs 1000.0 | ceil | int64) -}}
{{- if le (int64 $gw.terminationGracePeriodSeconds) (int64 $drain) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed gateway.preStopSleepSeconds plus gateway.config.drainDelayMs, drainPeriodMs and shutdownTimeoutMs (%d s in all), or pods are killed mid-drain" (int64 $gw.terminationGracePeriodSeconds) (int64 $drain)) -}}
{{- end -}}
{{- $fo := .Values.fanout -}}
{{- if le (int64 $fo.terminationGracePeriodSeconds) (divf $fo.config.shutdownTimeoutMs 1000.0 | ceil | int64) -}}
{{- fail (printf "fanout.terminationGracePeriodSeconds (%d) must exceed fanout.config.shutdownTimeoutMs (%d ms)" (int64 $fo.terminationGracePeriodSeconds) (int64 $fo.config.shutdownTimeoutMs)) -}}
{{- end -}}
{{- if ge (int64 $fo.config.leaseRenewMs) (int64 $fo.config.leaseTtlMs) -}}
{{- fail (printf "fanout.config.leaseRenewMs (%d) must be below fanout.config.leaseTtlMs (%d), or leases expire between renewals" (int64 $fo.config.leaseRenewMs) (int64 $fo.config.leaseTtlMs)) -}}
{{- end -}}
{{- if and .Values.ingress.enabled .Values.ingress.nginx.enabled -}}
{{- $idle := divf (add $gw.config.pingIntervalMs $gw.config.pingTimeoutMs) 1000.0 | ceil | int64 -}}
{{- if le (int64 .Values.ingress.nginx.proxyTimeoutSeconds) $idle -}}
{{- fail (printf "ingress.nginx.proxyTimeoutSeconds (%d) must exceed the ping interval plus ping timeout (%d s), or nginx cuts idle connections" (int64 .Values.ingress.nginx.proxyTimeoutSeconds) $idle) -}}
{{- end -}}
{{- end -}}
{{- if and $gw.autoscaling.enabled (gt (int64 $gw.autoscaling.minReplicas) (int64 $gw.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas must not exceed gateway.autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
