#!/usr/bin/env bash
# Runs a Roomcast cluster locally: Redis on 6379 (started here unless one already answers there),
# two fanout replicas (admin on :9090, :9091) and two gateways (:3001, :3002), built with `cargo build` (debug:
# quick to build; pass --release for an optimised build). Prints the URLs, a ready-to-paste
# `redis-cli XADD` and a tiny client, then shows the logs until Ctrl-C, and stops what it started.
#
#   scripts/cluster.sh [--release]
#
# Env: HOST (127.0.0.1; 0.0.0.0 to listen on every interface), REDIS_PORT (6379), RUST_LOG (info),
#      ROOMCAST_BIN_DIR (use the binaries in this folder and skip the build).
# Logs: .run/*.log
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$ROOT"

profile=debug
cargo_flags=()
case "${1:-}" in
  --release) profile=release cargo_flags=(--release) ;;
  "") ;;
  -h | --help)
    sed -n '2,12p' "$0"
    exit 0
    ;;
  *) die "unknown argument $1 (usage: scripts/cluster.sh [--release])" ;;
esac

HOST="${HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
FANOUT_PORTS=(9090 9091)
GATEWAY_PORTS=(3001 3002)
RUN_DIR="$ROOT/.run"
BIN_DIR="${ROOMCAST_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/$profile}"
url_host=$HOST
[ "$url_host" = 0.0.0.0 ] && url_host=127.0.0.1
mkdir -p "$RUN_DIR"

pids=()
names=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -eq 0 ] && return 0
  printf '\nstopping: %s\n' "${names[*]}"
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME LOGFILE CMD...: runs CMD in the background with its output in LOGFILE.
start() {
  local name=$1 log=$2
  shift 2
  : >"$log"
  "$@" >>"$log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[ -n "${ROOMCAST_BIN_DIR:-}" ] || ensure_cargo
ensure_redis

step "Redis on port $REDIS_PORT"
if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
  note "already running: using it (its data is left alone)"
else
  port_busy "$REDIS_PORT" && die "port $REDIS_PORT is taken by something that is not Redis (set REDIS_PORT)"
  start redis "$RUN_DIR/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    kill -0 "${pids[-1]}" 2>/dev/null || die "redis-server exited: $(tail -5 "$RUN_DIR/redis.log")"
    sleep 0.1
  done
  note "started (pid ${pids[-1]}, log .run/redis.log)"
fi

if [ -n "${ROOMCAST_BIN_DIR:-}" ]; then
  step "using the binaries in $BIN_DIR (ROOMCAST_BIN_DIR; no build)"
else
  step "cargo build ${cargo_flags[*]:-(debug)}"
  cargo build "${cargo_flags[@]}" --bin roomcast-gateway --bin roomcast-fanout || die "cargo build failed"
fi
for bin in roomcast-gateway roomcast-fanout; do
  [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin is missing"
done

for port in "${FANOUT_PORTS[@]}" "${GATEWAY_PORTS[@]}"; do
  port_busy "$port" && die "port $port is already in use (another scripts/cluster.sh?)"
done

step "starting fanout and gateways"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT" RUST_LOG="${RUST_LOG:-info}"
# No load balancer to wait for locally: Ctrl-C stops the gateways within a second.
export DRAIN_DELAY_MS="${DRAIN_DELAY_MS:-0}" DRAIN_PERIOD_MS="${DRAIN_PERIOD_MS:-500}"
fanout_names=(fanout-1 fanout-2)
for i in 0 1; do
  start "${fanout_names[$i]}" "$RUN_DIR/${fanout_names[$i]}.log" \
    env ADMIN_ADDR="$HOST:${FANOUT_PORTS[$i]}" FANOUT_REPLICA_ID="${fanout_names[$i]}" "$BIN_DIR/roomcast-fanout"
done
gateway_names=(gw-1 gw-2)
for i in 0 1; do
  start "${gateway_names[$i]}" "$RUN_DIR/${gateway_names[$i]}.log" \
    env LISTEN_ADDR="$HOST:${GATEWAY_PORTS[$i]}" GATEWAY_ID="${gateway_names[$i]}" "$BIN_DIR/roomcast-gateway"
done

ready_urls=()
for port in "${FANOUT_PORTS[@]}"; do ready_urls+=("http://$url_host:$port/readyz"); done
for port in "${GATEWAY_PORTS[@]}"; do ready_urls+=("http://$url_host:$port/readyz"); done
for _ in $(seq 300); do
  all=1
  for u in "${ready_urls[@]}"; do [ "$(http_status "$u")" = 200 ] || all=0; done
  [ "$all" = 1 ] && break
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null ||
      die "${names[$i]} exited during startup; last lines of .run/${names[$i]}.log:
$(tail -20 "$RUN_DIR/${names[$i]}.log")"
  done
  sleep 0.2
done
[ "$all" = 1 ] || die "not ready after 60 s: $(for u in "${ready_urls[@]}"; do printf '%s=%s ' "$u" "$(http_status "$u")"; done)"

client_snippet='const s = require("socket.io-client").io("http://'"$url_host"':3001");
s.on("connect", () => s.emit("join", "chat:42", (ack) => console.log("joined", ack)));
s.onAny((event, ...args) => console.log(event, ...args));'

cat <<EOF

Roomcast is running ($profile build):
  gateway gw-1   http://$url_host:3001   (Socket.IO at /socket.io/, /healthz, /readyz)
  gateway gw-2   http://$url_host:3002
  fanout-1 admin http://$url_host:${FANOUT_PORTS[0]}/readyz   http://$url_host:${FANOUT_PORTS[0]}/stats
  fanout-2 admin http://$url_host:${FANOUT_PORTS[1]}/readyz   http://$url_host:${FANOUT_PORTS[1]}/stats
  redis          redis://127.0.0.1:$REDIS_PORT
  logs           .run/{fanout-1,fanout-2,gw-1,gw-2}.log

Listen as a client (another terminal; needs \`npm ci\` in tests/e2e once):
  cd tests/e2e && node -e '$client_snippet'

Publish to room chat:42 (any backend does this):
  redis-cli -p $REDIS_PORT XADD socket.io:publish '*' room chat:42 event message data '{"text":"hi"}'

Showing the logs; Ctrl-C stops everything this script started.

EOF

log_files=()
for n in "${names[@]}"; do [ "$n" = redis ] || log_files+=("$RUN_DIR/$n.log"); done
tail -n 0 -F "${log_files[@]}" &
tail_pid=$!
pids+=("$tail_pid")
names+=("tail")

# Until Ctrl-C, or until a service exits on its own.
service_pids=("${pids[@]:0:${#pids[@]}-1}")
set +e
wait -n "${service_pids[@]}"
status=$?
set -e
for i in "${!service_pids[@]}"; do
  if ! kill -0 "${service_pids[$i]}" 2>/dev/null; then
    printf '\n%s exited (status %s); see .run/%s.log\n' "${names[$i]}" "$status" "${names[$i]}" >&2
  fi
done
exit 1
