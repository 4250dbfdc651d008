#!/usr/bin/env bash
# Fuzzes the parsers that take hostile input (fuzz/, see docs/fuzzing.md), each target for a
# bounded time, and fails if any target crashes or breaks one of its properties.
#
#   scripts/fuzz.sh                      every target, 60 s each
#   scripts/fuzz.sh 600                  every target, 10 minutes each
#   scripts/fuzz.sh 600 sio_packet       only these targets
#
# Needs only the stable toolchain: cargo-fuzz's instrumentation flags are stable, and we build
# without a sanitizer (-s none; AddressSanitizer needs nightly, and the workspace forbids
# unsafe code). Installs cargo-fuzz (pinned) if it is missing. Each target starts from the
# committed seeds (fuzz/corpus/<target>, read only) plus what earlier local runs found
# (fuzz/target/corpus/<target>, not committed). A failing input is written to
# fuzz/artifacts/<target>/; reproduce with `cd fuzz && cargo fuzz run -s none <target> <file>`.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

CARGO_FUZZ_VERSION=0.13.2

seconds=${1:-60}
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "usage: scripts/fuzz.sh [SECONDS] [TARGET...] (SECONDS: a positive whole number)"
shift || true

ensure_cargo
# libfuzzer-sys compiles libFuzzer (C++) with the cc crate.
if [ -z "${CXX:-}" ] && ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  step "installing g++ (apt-get), to build libFuzzer"
  apt_install g++ || die "a C++ compiler is needed to build libFuzzer (Debian/Ubuntu: sudo apt-get install g++)"
fi
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  step "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked ||
    die "cargo install cargo-fuzz $CARGO_FUZZ_VERSION failed"
fi

cd "$ROOT/fuzz"
mapfile -t all < <(cargo fuzz list)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx "$t" || die "no fuzz target $t (targets: ${all[*]})"
done

step "building the fuzz targets (cargo fuzz build -s none)"
cargo fuzz build -s none || die "cargo fuzz build failed"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  step "fuzzing $t for ${seconds}s"
  mkdir -p "target/corpus/$t"
  dict=()
  [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
  # -timeout: an input that takes seconds is a finding too (a parser must stay linear).
  set +e
  cargo fuzz run -s none "$t" "target/corpus/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dict[@]}" >"$log" 2>&1
  status=$?
  set -e
  # libFuzzer prints a status line per new input; keep the output short unless it failed.
  grep -E '^#[0-9]+\s+(INITED|DONE)' "$log" | sed 's/^/    /' || true
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
  if [ "$status" != 0 ]; then
    tail -n 60 "$log"
    failed+=("$t")
    summary+=("$t: FAILED after $runs runs (input in fuzz/artifacts/$t/)")
  else
    summary+=("$t: $runs runs, $rate/s, no failure")
  fi
done

step "fuzzing summary (${seconds}s per target)"
for line in "${summary[@]}"; do note "$line"; done
[ ${#failed[@]} -eq 0 ] || die "fuzz targets failed: ${failed[*]} (see above; reproduce: cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/<file>)"
