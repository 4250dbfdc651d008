"""The chart against the binaries themselves (built as the image's build stage builds them):
every setting they accept is reachable from values, the chart sets nothing they do not know,
and each binary, started with exactly the environment the chart renders, accepts it, becomes
ready, answers its probes and stops cleanly on SIGTERM within the grace period."""

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chart import CHART, CI_VALUES, parse_help, render, tool

ALL_SETTINGS = CHART / "ci" / "all-settings-values.yaml"
DEFAULTS = CHART / "ci" / "defaults-values.yaml"
BINARIES = {"gateway": "ROOMCAST_GATEWAY_BIN", "fanout": "ROOMCAST_FANOUT_BIN"}
# Read by the binaries but not a flag (the log filter of tracing-subscriber).
NOT_FLAGS = {"RUST_LOG"}
# Where the chart's defaults differ from the binaries' on purpose (values.yaml says why).
INTENDED_DEFAULTS = {
    "LOG_FORMAT": "json",  # log collectors
    "TRUST_X_FORWARDED_FOR": "true",  # behind the ingress
}
HOST_SPECIFIC_DEFAULTS = {"FANOUT_REPLICA_ID"}  # the binary's default: hostname + random


def binary(component):
    path = tool(BINARIES[component])
    assert os.access(path, os.X_OK), path
    return path


@pytest.fixture(scope="module")
def help_settings():
    return {c: parse_help(binary(c)) for c in BINARIES}


@pytest.mark.parametrize("component", sorted(BINARIES))
def test_every_setting_of_the_binary_has_a_value(help_settings, component):
    """Fails when a flag is added to a binary without a typed value in the chart. The scenarios
    together set every setting (ci/all-settings-values.yaml nearly all; JWT_SECRET and
    JWT_PUBLIC_KEY_FILE exclude each other, so the public key is in external-redis)."""
    rendered = set()
    for values in CI_VALUES:
        rendered |= set(render(values).env(component))
    missing = sorted(set(help_settings[component]) - rendered)
    assert not missing, (
        f"roomcast-{component} --help lists settings that values.yaml cannot set: {missing}. "
        "Add a typed value (values.yaml, values.schema.json, templates/_helpers.tpl) and set it "
        "in ci/all-settings-values.yaml."
    )


@pytest.mark.parametrize("component", sorted(BINARIES))
def test_every_value_moves_its_setting(help_settings, component):
    """ci/all-settings-values.yaml changes each typed setting away from the chart's default, so
    a value that is not wired to its variable shows."""
    defaults = render(DEFAULTS).env(component)
    changed = render(ALL_SETTINGS).env(component)
    same = sorted(
        name
        for name in help_settings[component]
        if name in defaults and defaults[name] == changed.get(name) and not isinstance(defaults[name], dict)
    )
    assert not same, f"not changed by ci/all-settings-values.yaml: {same}"


@pytest.mark.parametrize("component", sorted(BINARIES))
def test_chart_sets_only_settings_the_binary_knows(help_settings, component):
    """A misspelt or removed variable would be ignored silently by the binary."""
    for values in CI_VALUES:
        unknown = sorted(set(render(values).env(component)) - set(help_settings[component]) - NOT_FLAGS)
        assert not unknown, f"{values.name}: roomcast-{component} has no setting {unknown}"


@pytest.mark.parametrize("component", sorted(BINARIES))
def test_chart_defaults_are_the_binarys_defaults(help_settings, component):
    rendered = render(DEFAULTS).env(component)
    differ = {}
    for name, default in help_settings[component].items():
        if default is None or name in HOST_SPECIFIC_DEFAULTS or not isinstance(rendered.get(name), str):
            continue  # no default, or set from a Secret or the pod (REDIS_URL, GATEWAY_ID)
        expected = INTENDED_DEFAULTS.get(name, default)
        if rendered[name] != expected:
            differ[name] = (rendered[name], default)
    assert not differ, f"chart default differs from roomcast-{component}'s (chart, binary): {differ}"


# --- Running the binaries with the rendered environment ------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    assert server, "redis-server is needed (scripts/helm-check.sh installs it)"
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def public_key(tmp_path_factory):
    """An EC P-256 public key (PEM), as a Secret would hold for auth.type=publicKey."""
    path = tmp_path_factory.mktemp("jwt") / "public.pem"
    script = (
        "const c=require('crypto');"
        "const {publicKey}=c.generateKeyPairSync('ec',{namedCurve:'P-256'});"
        "process.stdout.write(publicKey.export({type:'spki',format:'pem'}))"
    )
    path.write_text(subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True).stdout)
    return path


def resolve_env(manifests, component, redis_url, public_key, files_dir):
    """The container's environment as the kubelet would build it, with stand-ins for what lives
    outside the chart: the Redis of this test, a JWT secret, a public key file, a pod name. Also
    returns the files the container would see (mounted Secrets), mapped into files_dir."""
    workload = manifests.workload(component)
    spec = workload["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {}
    for name, value in manifests.env(component).items():
        if isinstance(value, str):
            env[name] = value
        elif "fieldRef" in value:
            assert value["fieldRef"]["fieldPath"] == "metadata.name"
            env[name] = f"{workload['metadata']['name']}-5d8f7c9b4-x2x7q"
        elif "secretKeyRef" in value:
            ref = value["secretKeyRef"]
            own = manifests.maybe("Secret", ref["name"])
            if own is not None:
                env[name] = base64.b64decode(own["data"][ref["key"]]).decode()
            elif name == "JWT_SECRET":
                env[name] = "an HS256 secret of at least 32 bytes, for the test"
            elif name == "REDIS_URL":
                env[name] = redis_url
            else:
                raise AssertionError(f"{component}: no stand-in for {name} from Secret {ref['name']}")
        else:
            raise AssertionError(f"{component}: unexpected env source for {name}: {value}")
    # Files: every mounted Secret volume, with the public key as each item's content.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]]["secret"]
        for item in secret["items"]:
            target = files_dir / mount["mountPath"].lstrip("/") / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(public_key, target)
    if "JWT_PUBLIC_KEY_FILE" in env:
        mapped = files_dir / env["JWT_PUBLIC_KEY_FILE"].lstrip("/")
        assert mapped.is_file(), f"JWT_PUBLIC_KEY_FILE {env['JWT_PUBLIC_KEY_FILE']} is on no mounted volume"
        env["JWT_PUBLIC_KEY_FILE"] = str(mapped)
    # This test's Redis, whatever the chart points at (a Service name or an outside host).
    env["REDIS_URL"] = redis_url
    return env


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
@pytest.mark.parametrize("component", sorted(BINARIES))
def test_binary_runs_with_the_rendered_environment(component, values, redis_url, public_key, tmp_path):
    manifests = render(values)
    env = resolve_env(manifests, component, redis_url, public_key, tmp_path)
    container = manifests.container(component)
    spec = manifests.workload(component)["spec"]["template"]["spec"]
    addr_var = {"gateway": "LISTEN_ADDR", "fanout": "ADMIN_ADDR"}[component]
    # The probes' port, as the kubelet resolves it, must be the port the binary listens on.
    host, rendered_port = env[addr_var].rsplit(":", 1)
    assert host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in container}
    for name, get in probes.items():
        assert ports[get["port"]] == int(rendered_port), f"{name} port {get['port']} is not {addr_var}"
    # Then listen on a free loopback port instead of the fixed one (tests run side by side).
    port = free_port()
    env[addr_var] = f"127.0.0.1:{port}"

    log = tmp_path / f"{component}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary(component)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            status = proc.poll()
            assert status is None, f"exited with {status} (64: a setting was refused):\n{log.read_text()}"
            if http_status(port, probes["readinessProbe"]["path"]) == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"not ready within 30 s:\n{log.read_text()}")
        for name, get in probes.items():
            assert http_status(port, get["path"]) == 200, f"{name} {get['path']}"
        proc.send_signal(signal.SIGTERM)
        grace = spec["terminationGracePeriodSeconds"] - container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        status = proc.wait(timeout=grace)
        assert status == 0, f"exit status {status} after SIGTERM:\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
