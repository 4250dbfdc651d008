#!/usr/bin/env bash
# Runs the official protocol test suites (Engine.IO v4 and Socket.IO v5) against
# roomcast-conformance and prints their pass/fail counts.
#
# NOT run in CI: CI has no access to the socketio/socket.io repository, and we never commit the
# suites' code into this repository. Run it locally after fetching them yourself.
#
# Usage: tests/conformance/run.sh [SUITES_DIR]        (or CONFORMANCE_SUITES=SUITES_DIR)
#
# SUITES_DIR holds the two suites copied from a checkout of the socketio/socket.io repository
# (at /tmp/socket.io below), either under the names eio-v4/ and sio-v5/ or under their paths in
# that repository:
#   mkdir -p /tmp/conformance-suites
#   cp -r /tmp/socket.io/docs/engine.io-protocol/v4-test-suite /tmp/conformance-suites/eio-v4
#   cp -r /tmp/socket.io/docs/socket.io-protocol/v5-test-suite /tmp/conformance-suites/sio-v5
#   tests/conformance/run.sh /tmp/conformance-suites
# Their npm dependencies are installed (npm ci) on first use.
#
# Env:
#   SERVER_CMD  run the suites against another server instead of building roomcast-conformance,
#               e.g. the Node reference: SERVER_CMD="node /path/to/conformance-server.js"
#   HOST        address the server listens on (default 127.0.0.1; the suites call localhost:3000)
#   RUST_LOG    log filter of roomcast-conformance (default warn); its log is printed on failure
#
# Exit status: 0 when both suites pass, 1 when a test fails, 2 on a usage or set-up error.
set -euo pipefail

# Both suites hard-code http://localhost:3000.
export PORT=3000
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
suites="${1:-${CONFORMANCE_SUITES:-}}"

die() { echo "run.sh: $*" >&2; exit 2; }

[[ -n "$suites" ]] || die "give the directory holding the suites as an argument or CONFORMANCE_SUITES (see the header of this script)"
[[ -d "$suites" ]] || die "$suites is not a directory"
command -v npm >/dev/null || die "npm is required"
command -v curl >/dev/null || die "curl is required"

# find_suite <short name> <path in socketio/socket.io>
find_suite() {
  local candidate
  for candidate in "$suites/$1" "$suites/$2" "$suites/$(basename "$2")"; do
    if [[ -f "$candidate/test-suite.js" ]]; then
      echo "$candidate"
      return
    fi
  done
  die "no $1 suite (test-suite.js) under $suites"
}
eio_suite="$(find_suite eio-v4 docs/engine.io-protocol/v4-test-suite)"
sio_suite="$(find_suite sio-v5 docs/socket.io-protocol/v5-test-suite)"

for dir in "$eio_suite" "$sio_suite"; do
  if [[ ! -d "$dir/node_modules" ]]; then
    echo "installing the npm dependencies of $dir"
    (cd "$dir" && npm ci --no-audit --no-fund >/dev/null)
  fi
done

if curl -s -o /dev/null "http://localhost:$PORT/"; then
  die "something already listens on port $PORT; stop it first"
fi

if [[ -n "${SERVER_CMD:-}" ]]; then
  server_cmd=(bash -c "exec $SERVER_CMD")
else
  echo "building roomcast-conformance"
  (cd "$repo_root" && cargo build --quiet -p roomcast-tests --bin roomcast-conformance)
  target_dir="$(cd "$repo_root" && cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  server_cmd=("$target_dir/debug/roomcast-conformance")
fi

server_log="$(mktemp -t roomcast-conformance.XXXXXX.log)"
RUST_LOG="${RUST_LOG:-warn}" "${server_cmd[@]}" >"$server_log" 2>&1 &
server_pid=$!
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

# Both servers answer /healthz once they listen.
for _ in $(seq 1 100); do
  curl -sf -o /dev/null "http://localhost:$PORT/healthz" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; die "the server exited at start-up"; }
  sleep 0.1
done
curl -sf -o /dev/null "http://localhost:$PORT/healthz" || die "the server did not answer on port $PORT"

summary=()
failed=0
# run_suite <label> <dir>
run_suite() {
  local out passing failing status=0
  out="$(mktemp -t conformance-mocha.XXXXXX.log)"
  echo "== $1 ($2)"
  (cd "$2" && npx mocha --reporter spec test-suite.js) >"$out" 2>&1 || status=$?
  cat "$out"
  passing="$(grep -Eo '[0-9]+ passing' "$out" | grep -Eo '[0-9]+' || echo 0)"
  failing="$(grep -Eo '[0-9]+ failing' "$out" | grep -Eo '[0-9]+' || echo 0)"
  summary+=("$1: $passing passing, $failing failing")
  if [[ $status -ne 0 || $failing -ne 0 ]]; then
    failed=1
  fi
  rm -f "$out"
}
run_suite "Engine.IO v4" "$eio_suite"
run_suite "Socket.IO v5" "$sio_suite"

echo
echo "== summary (server: ${SERVER_CMD:-roomcast-conformance})"
printf '%s\n' "${summary[@]}"
if [[ $failed -ne 0 ]]; then
  echo
  echo "== server log: $server_log (last lines)"
  tail -n 50 "$server_log"
else
  rm -f "$server_log"
fi
exit "$failed"
