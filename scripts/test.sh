#!/usr/bin/env bash
# Runs the whole test suite, on a fresh machine too:
#   format check, clippy (warnings are errors), build, Rust tests, fuzzing of the parsers
#   (scripts/fuzz.sh, about 6 minutes), then the end-to-end suite (tests/e2e: real
#   redis-server, 2 gateways, 2 fanout replicas, the official Node and Python clients),
#   then the container image and Helm chart checks (scripts/helm-check.sh).
# Installs what is missing first: redis-server (apt-get, when root), the e2e Node packages
# (npm ci), python-socketio (pip, into tests/e2e/.venv unless python3 already has it).
#
#   scripts/test.sh                 everything
#   scripts/test.sh --e2e-only      build + end-to-end suite only (quicker while iterating)
#   scripts/test.sh --e2e-only tests/e2e/test/rooms.test.js    ...only these test files
#
# Stops at the first failing step with a message naming it, and exits non-zero.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

e2e_only=0
if [ "${1:-}" = "--e2e-only" ]; then
  e2e_only=1
  shift
fi
e2e_files=()
for f in "$@"; do
  [ -e "$f" ] || die "no such test file: $f"
  e2e_files+=("$(cd "$(dirname "$f")" && pwd)/$(basename "$f")")
done
cd "$ROOT"

# Output of the test runners, to add up their counts at the end.
runner_log="$(mktemp)"
trap 'rm -f "$runner_log"' EXIT

run() {
  local what=$1
  shift
  step "$what"
  note "\$ $*"
  "$@" || die "$what (\`$*\` exited with $?)"
}

# Like run, keeping a copy of the output for the final count.
run_tests() {
  local what=$1 status
  shift
  step "$what"
  note "\$ $*"
  set +e
  "$@" 2>&1 | tee -a "$runner_log"
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] || die "$what (\`$*\` exited with $status)"
}

step "checking prerequisites"
ensure_cargo
ensure_redis
ensure_node_deps
ensure_python_deps
note "cargo: $(cargo --version)"
note "redis-server: $(redis-server --version | cut -d' ' -f3)"
note "node: $(node --version)"
note "python: $PYTHON ($("$PYTHON" -c 'import importlib.metadata as m; print("python-socketio", m.version("python-socketio"))'))"

if [ "$e2e_only" = 0 ]; then
  run "cargo fmt --check" cargo fmt --all -- --check
  run "cargo fmt --check (fuzz/, its own workspace)" cargo fmt --manifest-path fuzz/Cargo.toml -- --check
  run "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
fi
run "cargo build" cargo build --workspace
if [ "$e2e_only" = 0 ]; then
  run_tests "cargo test (Rust unit and integration tests)" cargo test --workspace
  # The parsers that take hostile input, 60 s per target (ROOMCAST_FUZZ_SECONDS to change it).
  run "fuzzing (scripts/fuzz.sh)" "$ROOT/scripts/fuzz.sh" "${ROOMCAST_FUZZ_SECONDS:-60}"
fi

export ROOMCAST_BIN_DIR="${ROOMCAST_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}"
# One test file at a time (each starts its own Redis + 4 services; the machine has 2 cores).
# --test-timeout is a safety net per test; --test-force-exit keeps a leaked handle from hanging CI.
cd "$E2E_DIR"
if [ ${#e2e_files[@]} -eq 0 ]; then e2e_files=(test/); fi
run_tests "end-to-end tests (tests/e2e, binaries from $ROOMCAST_BIN_DIR)" \
  node --test --test-concurrency=1 --test-timeout=300000 --test-force-exit "${e2e_files[@]}"

if [ "$e2e_only" = 0 ]; then
  # The Dockerfile's build stage replayed (a release build), lint, schema validation, checkov,
  # and the chart tests (pytest, tests/helm). Installs its tools into a cache on first use.
  cd "$ROOT"
  run_tests "container image and Helm chart checks (scripts/helm-check.sh)" scripts/helm-check.sh
fi

# cargo: "test result: ok. N passed; M failed; ..."; node: "# pass N" / "# fail M" (TAP);
# pytest: "N passed in 3.2s" / "M failed, N passed in 3.2s".
count() { { grep -oE "$1" "$runner_log" || true; } | { grep -oE '[0-9]+' || true; } | awk '{s += $1} END {print s + 0}'; }
passed=$(($(count 'test result: [a-zA-Z]+\. [0-9]+ passed') + $(count '^# pass [0-9]+') + $(count '(^|, )[0-9]+ passed(, | in )')))
failed=$(($(count '[0-9]+ failed;') + $(count '^# fail [0-9]+') + $(count '^[0-9]+ failed(, | in )')))
step "all tests passed"
echo "tests: $passed passed, $failed failed"
