#!/usr/bin/env bash
# The benchmark suite (a benchmark, not a test): builds the release binaries and runs one
# roomcast-bench scenario end to end, which starts its own Redis, cluster and load generators.
# See docs/benchmarks.md. Arguments go to roomcast-bench, e.g.
#   scripts/bench.sh fanout --target both            # Roomcast vs the Node reference, 10,000 clients
#   scripts/bench.sh idle --clients 100000 --gateways 6
#   scripts/bench.sh --help
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$ROOT"
ensure_cargo
ensure_redis
step "cargo build --release"
cargo build --release -p roomcast-gateway -p roomcast-fanout -p roomcast-bench
target="${CARGO_TARGET_DIR:-$ROOT/target}/release"
exec "$target/roomcast-bench" "$@"
