# shellcheck shell=bash
# Shared helpers of scripts/cluster.sh, scripts/test.sh and .ci/run: messages, and installing
# what the cluster and the test suite need (redis-server, the e2e Node packages, the Python
# client). Source it; it sets ROOT to the repository root.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E_DIR="$ROOT/tests/e2e"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
  printf '\n\033[31mFAILED: %s\033[0m\n' "$*" >&2
  exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

# apt-get install, as root only (never sudo behind the user's back).
apt_install() {
  if ! is_root || ! command -v apt-get >/dev/null; then
    return 1
  fi
  if [ -z "${ROOMCAST_APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
    ROOMCAST_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

ensure_redis() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    return 0
  fi
  step "installing redis-server (apt-get)"
  apt_install redis-server ||
    die "redis-server is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) and run again."
}

ensure_node() {
  command -v node >/dev/null && command -v npm >/dev/null ||
    die "node and npm are needed for the end-to-end tests (Node.js 20 or newer)."
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 20 ] || die "Node.js 20 or newer is needed (found $(node --version))."
}

# npm ci in tests/e2e when node_modules is missing or was installed from another package-lock.json.
ensure_node_deps() {
  ensure_node
  local stamp="$E2E_DIR/node_modules/.roomcast-package-lock"
  if [ -d "$E2E_DIR/node_modules" ] && cmp -s "$E2E_DIR/package-lock.json" "$stamp"; then
    return 0
  fi
  step "npm ci (tests/e2e)"
  (cd "$E2E_DIR" && npm ci --no-audit --no-fund) || die "npm ci in tests/e2e failed"
  cp "$E2E_DIR/package-lock.json" "$stamp"
}

# Exports PYTHON: an interpreter that can import python-socketio's AsyncClient. Uses python3 if it
# already can; otherwise installs tests/e2e/python/requirements.txt into tests/e2e/.venv (a venv
# works on systems whose Python refuses global pip installs).
ensure_python_deps() {
  local req="$E2E_DIR/python/requirements.txt" venv="$E2E_DIR/.venv"
  local probe='import socketio, aiohttp'
  PYTHON="${PYTHON:-python3}"
  if "$PYTHON" -c "$probe" 2>/dev/null; then
    export PYTHON
    return 0
  fi
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/.roomcast-requirements" && "$venv/bin/python" -c "$probe" 2>/dev/null; then
    export PYTHON="$venv/bin/python"
    return 0
  fi
  command -v python3 >/dev/null || apt_install python3 python3-venv ||
    die "python3 is needed for the python-socketio test (Debian/Ubuntu: sudo apt-get install python3 python3-venv)."
  if [ ! -x "$venv/bin/python" ]; then
    step "creating tests/e2e/.venv"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; } ||
      die "python3 -m venv failed (Debian/Ubuntu: sudo apt-get install python3-venv)"
  fi
  step "pip install -r tests/e2e/python/requirements.txt (into tests/e2e/.venv)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" || die "pip install -r $req failed"
  cp "$req" "$venv/.roomcast-requirements"
  export PYTHON="$venv/bin/python"
}

ensure_cargo() {
  command -v cargo >/dev/null || die "cargo is not installed: install Rust (https://rustup.rs), then run again."
}

# HTTP status of a local URL, 000 when nothing answers (curl if present, else bash's /dev/tcp).
http_status() {
  local url=$1
  if command -v curl >/dev/null; then
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true
    return 0
  fi
  local hostport=${url#http://}
  hostport=${hostport%%/*}
  local path="/${url#http://*/}"
  local host=${hostport%:*} port=${hostport##*:}
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
    read -r _ code _ <&3 && printf '%s' "$code"
  ) 2>/dev/null || printf '000'
}
