#!/usr/bin/env bash
# Fanout throughput with 1, 2 and 3 replicas on this machine (a benchmark, not a test): builds the
# release binaries and runs tests/src/bin/roomcast-bench-fanout.rs, which starts its own
# redis-server and fanout processes. Extra arguments go to it, e.g.
#   scripts/bench-fanout.sh --entries 200000 --rooms 1000 --replicas 1,2,3,4
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$ROOT"
ensure_cargo
ensure_redis
step "cargo build --release"
cargo build --release -p roomcast-fanout -p roomcast-tests --bin roomcast-fanout --bin roomcast-bench-fanout
step "fanout benchmark"
target="${CARGO_TARGET_DIR:-$ROOT/target}/release"
"$target/roomcast-bench-fanout" --fanout-bin "$target/roomcast-fanout" "$@"
