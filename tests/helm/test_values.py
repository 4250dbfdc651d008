"""values.yaml and values.schema.json: what a values file may say, and that each value is
documented."""

import json
import re

import pytest
import yaml

from chart import CHART, CI_VALUES, RenderError, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
REQUIRED = CHART / "ci" / "defaults-values.yaml"


def schema_node(path):
    """The schema of a values path (list of keys), or None past a free-form Kubernetes object."""
    node = SCHEMA
    for key in path:
        if "$ref" in node:
            node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
        props = node.get("properties")
        if props is None:
            return None
        assert key in props, f"values.yaml key {'.'.join(path)} is not in values.schema.json"
        node = props[key]
    return node


def values_keys():
    """(line number, key path, has a comment right above, is a leaf) for each key of values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack, out = [], []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k in stack] + [key]
        stack.append((indent, key))
        above = lines[i - 1].strip() if i > 0 else ""
        out.append((i + 1, path, above.startswith("#"), rest != ""))
    return out


def test_every_value_is_documented():
    undocumented = []
    for number, path, commented, leaf in values_keys():
        parent = schema_node(path[:-1])
        if parent is None or "properties" not in parent:
            continue  # inside a Kubernetes object (resources, securityContext...): its docs apply
        if leaf and not commented:
            undocumented.append(f"line {number}: {'.'.join(path)}")
    assert not undocumented, "values without a comment right above them:\n" + "\n".join(undocumented)


def test_every_schema_property_is_in_values_yaml():
    """The schema has no key values.yaml lacks (each would be an undocumented setting)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = []

    def walk(node, value, path):
        if "$ref" in node:
            node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
        for key, sub in node.get("properties", {}).items():
            if not isinstance(value, dict) or key not in value:
                missing.append(".".join(path + [key]))
            else:
                walk(sub, value[key], path + [key])

    walk(SCHEMA, defaults, [])
    assert not missing, missing


def test_schema_closes_every_chart_object():
    """Every object of the chart's own values rejects unknown keys (Kubernetes objects passed
    through, such as resources, are left to the API server)."""
    open_objects = []

    def walk(node, path):
        if "$ref" in node:
            return
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                open_objects.append(".".join(path) or "<root>")
            for key, sub in node["properties"].items():
                walk(sub, path + [key])

    walk(SCHEMA, [])
    assert not open_objects, open_objects


@pytest.mark.parametrize(
    "values, message",
    [
        ({"replicaCount": 3}, "replicaCount"),
        ({"gateway": {"config": {"pingInterval": 1000}}}, "pingInterval"),
        ({"redis": {"external": {"password": "x"}}}, "password"),
        ({"ingress": {"nginx": {"timeout": 10}}}, "timeout"),
    ],
    ids=["top-level", "gateway.config", "redis.external", "ingress.nginx"],
)
def test_schema_rejects_unknown_keys(tmp_path, values, message):
    with pytest.raises(RenderError) as err:
        render(REQUIRED, values=values, tmp_path=tmp_path)
    assert message in str(err.value) and "additional properties" in str(err.value).lower()


@pytest.mark.parametrize(
    "values",
    [
        {"gateway": {"config": {"maxConnections": "many"}}},
        {"gateway": {"replicas": "2"}},
        {"gateway": {"websocketOnly": "yes"}},
        {"gateway": {"config": {"namespaces": "/"}}},
        {"gateway": {"config": {"pingIntervalMs": 0}}},
        {"gateway": {"config": {"eventRatePerSecond": 0}}},
        {"fanout": {"config": {"batchSize": 1.5}}},
        {"fanout": {"config": {"partitions": 2000}}},
        {"tracing": {"otlpProtocol": "grpc"}},
        {"recovery": {"maxDisconnectionMs": -1}},
        {"logging": {"format": "xml"}},
        {"redis": {"appendfsync": "no"}},
        {"redis": {"keyPrefix": "a{b}"}},
        {"redis": {"external": {"url": "rediss://r:6379"}}},  # the binaries refuse TLS URLs
        {"auth": {"type": "hs256"}},
        {"gateway": {"extraEnv": {"FOO": 1}}},
        {"gateway": {"image": {"digest": "latest"}}},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_schema_rejects_wrong_types_and_values(tmp_path, values):
    with pytest.raises(RenderError) as err:
        render(REQUIRED, values=values, tmp_path=tmp_path)
    assert "schema" in str(err.value).lower(), str(err.value)


def test_ci_scenarios_cover_the_issue():
    names = {p.name for p in CI_VALUES}
    for scenario in ("defaults", "external-redis", "websocket-only", "autoscaling", "monitoring"):
        assert f"{scenario}-values.yaml" in names
