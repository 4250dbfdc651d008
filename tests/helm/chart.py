"""Helpers of the chart tests: rendering helm/roomcast and reading what it rendered.

The tests get their tools from the environment (scripts/helm-check.sh sets them):
  HELM                  the helm binary
  ROOMCAST_GATEWAY_BIN  roomcast-gateway, as the image's build stage builds it
  ROOMCAST_FANOUT_BIN   roomcast-fanout, likewise
"""

import os
import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "roomcast"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "rc"
NAMESPACE = "roomcast"


def tool(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the chart tests through scripts/helm-check.sh")
    return value


class RenderError(Exception):
    pass


def helm_template(*value_files, values=None, tmp_path=None, extra_args=()):
    """Runs `helm template` and returns its stdout; raises RenderError with stderr on failure."""
    args = [tool("HELM"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in value_files:
        args += ["-f", str(f)]
    if values is not None:
        if tmp_path is None:
            raise ValueError("values= needs tmp_path=")
        path = Path(tmp_path) / f"values-{len(list(Path(tmp_path).glob('values-*')))}.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    args += list(extra_args)
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return result.stdout


class Manifests:
    """The documents of one rendering, looked up by kind and name."""

    def __init__(self, text):
        self.docs = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind, name=None):
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            names = [d["metadata"]["name"] for d in self.all(kind)]
            raise AssertionError(f"expected one {kind} {name or ''}, found {names}")
        return found[0]

    def maybe(self, kind, name=None):
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        return found[0] if found else None

    def workload(self, component):
        """The Deployment or StatefulSet whose pods have app.kubernetes.io/component=component."""
        for d in self.docs:
            if d["kind"] in ("Deployment", "StatefulSet"):
                labels = d["spec"]["template"]["metadata"]["labels"]
                if labels.get("app.kubernetes.io/component") == component:
                    return d
        raise AssertionError(f"no workload for component {component}")

    def container(self, component):
        containers = self.workload(component)["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1, containers
        return containers[0]

    def env(self, component):
        """{NAME: value or the env entry's valueFrom} of a component's container: the ConfigMaps
        of envFrom first, then env (which wins, as in Kubernetes)."""
        container = self.container(component)
        out = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref:
                out.update(self.get("ConfigMap", ref["name"])["data"])
        for entry in container.get("env", []):
            out[entry["name"]] = entry["value"] if "value" in entry else entry["valueFrom"]
        return out


def render(*value_files, **kwargs):
    return Manifests(helm_template(*value_files, **kwargs))


def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def parse_help(binary):
    """{ENV_NAME: default or None} from a binary's --help, run with an empty environment so
    that no variable of ours shows up as a default."""
    text = subprocess.run(
        [binary, "--help"], capture_output=True, text=True, check=True, env={}
    ).stdout
    names = {}
    for m in re.finditer(r"\[env: ([A-Z0-9_]+)[^\]]*\](?: \[default: ([^\]]*)\])?", text):
        names[m.group(1)] = m.group(2)
    if not names:
        raise AssertionError(f"{binary} --help lists no [env: ...] settings:\n{text}")
    return names


def probe_ms_to_seconds(ms):
    return -(-int(ms) // 1000)
