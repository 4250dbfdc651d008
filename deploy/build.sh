#!/bin/sh
# How the release binaries are built: the one definition used by deploy/Dockerfile and, outside
# Docker, by scripts/helm-check.sh (which replays the Dockerfile's build stage with it), so the
# images and CI's checks get the same binaries from the same flags.
#
#   deploy/build.sh deps   with only the Cargo manifests and Cargo.lock present: compiles every
#                          dependency (the image's cached layer), then removes what it made up
#   deploy/build.sh app    with the sources present: compiles the binaries into target/release/
#
# Run from the workspace root. POSIX sh: the build image needs no bash.
set -eu

# The flags of both steps must be the same, or the dependency layer would not be reused.
BUILD="cargo build --release --locked -p roomcast-gateway -p roomcast-fanout"
# Workspace members, as the root manifest lists them (`members = [...]`).
MEMBERS=$(awk '/^members *= *\[/,/\]/' Cargo.toml | sed 's/members *=//' | tr -d '[],"')
[ -n "$MEMBERS" ] || { echo "deploy/build.sh: no workspace members in Cargo.toml" >&2; exit 1; }

# Creates an empty stand-in for each target of a member whose source is missing: src/lib.rs and
# every explicit `path = "..."` of the manifest ([[bin]] targets). Prints what it created.
stub_missing() {
  for member in $MEMBERS; do
    paths="src/lib.rs $(sed -n 's/^path *= *"\(.*\)"/\1/p' "$member/Cargo.toml")"
    for p in $paths; do
      f="$member/$p"
      [ -e "$f" ] && continue
      mkdir -p "$(dirname "$f")"
      case "$p" in
        src/lib.rs) : >"$f" ;;
        *) echo 'fn main() {}' >"$f" ;;
      esac
      echo "$f"
    done
  done
}

case "${1:-}" in
  deps)
    stubs=$(stub_missing)
    $BUILD
    # Forget the stand-ins' artifacts: Docker's COPY keeps the sources' modification times, which
    # can be older than this build, and cargo would then keep the empty binaries.
    cargo clean --release --locked -p roomcast-shared -p roomcast-gateway -p roomcast-fanout
    # shellcheck disable=SC2086 # one path per word
    rm -f $stubs
    ;;
  app)
    # The image copies only what the binaries are built from; the tests member still needs
    # targets for the workspace to load.
    stub_missing >/dev/null
    $BUILD
    ;;
  *)
    echo "usage: deploy/build.sh deps|app" >&2
    exit 64
    ;;
esac
