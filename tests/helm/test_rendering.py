"""Chart semantics that schemas cannot see, for every ci/*-values.yaml and for chosen values."""

import base64
import subprocess

import pytest
import yaml

from chart import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    RenderError,
    render,
    selector_matches,
    tool,
)

DEFAULTS = CHART / "ci" / "defaults-values.yaml"
SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}
RENDERED = {}


def scenario(name):
    if name not in RENDERED:
        RENDERED[name] = render(SCENARIOS[name])
    return RENDERED[name]


def values_of(name):
    """The chart's values.yaml with the scenario's file over it (a plain recursive merge)."""

    def merge(base, over):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out

    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(base, yaml.safe_load(SCENARIOS[name].read_text()))


all_scenarios = pytest.mark.parametrize("name", sorted(SCENARIOS))


def pod_spec(m, component):
    return m.workload(component)["spec"]["template"]["spec"]


def port_number(container, port):
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    assert len(matches) == 1, f"port {port} is not a port of container {container['name']}"
    return matches[0]


# --- Shutdown: the preStop sleep and the binaries' drain fit in the grace period -----------


@all_scenarios
def test_gateway_drain_fits_in_the_grace_period(name):
    """preStop sleep, then after SIGTERM: serve on (DRAIN_DELAY_MS), close the connections
    (DRAIN_PERIOD_MS), save the sessions (SHUTDOWN_TIMEOUT_MS); all before the kill."""
    m = scenario(name)
    spec = pod_spec(m, "gateway")
    sleep = spec["containers"][0].get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    env = m.env("gateway")
    drain_s = sum(int(env[v]) for v in ("DRAIN_DELAY_MS", "DRAIN_PERIOD_MS", "SHUTDOWN_TIMEOUT_MS")) / 1000
    grace = spec["terminationGracePeriodSeconds"]
    assert int(env["DRAIN_DELAY_MS"]) > 0 or sleep > 0, "nothing keeps serving while the endpoints update"
    assert sleep + drain_s < grace, (sleep, drain_s, grace)


def test_a_pre_stop_sleep_is_rendered_only_when_asked_for(tmp_path):
    assert "lifecycle" not in scenario("defaults").container("gateway")
    m = render(DEFAULTS, values={"gateway": {"preStopSleepSeconds": 3}}, tmp_path=tmp_path)
    assert m.container("gateway")["lifecycle"] == {"preStop": {"sleep": {"seconds": 3}}}


@all_scenarios
def test_fanout_shutdown_fits_in_the_grace_period(name):
    m = scenario(name)
    shutdown_s = int(m.env("fanout")["SHUTDOWN_TIMEOUT_MS"]) / 1000
    assert shutdown_s < pod_spec(m, "fanout")["terminationGracePeriodSeconds"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"gateway": {"terminationGracePeriodSeconds": 25}}, "gateway.terminationGracePeriodSeconds (25)"),
        ({"gateway": {"preStopSleepSeconds": 15}}, "gateway.terminationGracePeriodSeconds (40)"),
        ({"gateway": {"config": {"drainPeriodMs": 30000}}}, "(45 s in all)"),
        ({"gateway": {"config": {"shutdownTimeoutMs": 29000}}}, "gateway.terminationGracePeriodSeconds"),
        ({"fanout": {"terminationGracePeriodSeconds": 10}}, "fanout.terminationGracePeriodSeconds (10)"),
    ],
)
def test_a_grace_period_too_short_is_refused(tmp_path, values, message):
    with pytest.raises(RenderError) as err:
        render(DEFAULTS, values=values, tmp_path=tmp_path)
    assert message in str(err.value)


# --- Probes, ports, Services, Ingress ------------------------------------------------------


@all_scenarios
def test_probes_point_at_the_health_endpoints_on_the_listen_port(name):
    m = scenario(name)
    for component, addr_var, probes in (
        ("gateway", "LISTEN_ADDR", {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}),
        ("fanout", "ADMIN_ADDR", {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}),
    ):
        container = m.container(component)
        listen_port = int(m.env(component)[addr_var].rsplit(":", 1)[1])
        for probe, path in probes.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path, (component, probe)
            assert port_number(container, get["port"]) == listen_port, (component, probe)


@all_scenarios
def test_services_reach_the_right_pods_and_ports(name):
    m = scenario(name)
    workloads = {
        c: m.workload(c)
        for c in ("gateway", "fanout", "redis")
        if any(
            d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == c
            for d in m.all("Deployment") + m.all("StatefulSet")
        )
    }
    for service in m.all("Service"):
        selected = [
            c
            for c, w in workloads.items()
            if selector_matches(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {selected}"
        container = workloads[selected[0]]["spec"]["template"]["spec"]["containers"][0]
        for port in service["spec"]["ports"]:
            port_number(container, port["targetPort"])


@all_scenarios
def test_selectors_of_deployments_pdbs_and_hpa_match_their_pods(name):
    m = scenario(name)
    for kind in ("Deployment", "StatefulSet"):
        for w in m.all(kind):
            assert selector_matches(
                w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]
            )
    for pdb in m.all("PodDisruptionBudget"):
        component = pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        labels = m.workload(component)["spec"]["template"]["metadata"]["labels"]
        assert selector_matches(pdb["spec"]["selector"]["matchLabels"], labels)
        other = {"gateway": "fanout", "fanout": "gateway"}[component]
        other_labels = m.workload(other)["spec"]["template"]["metadata"]["labels"]
        assert not selector_matches(pdb["spec"]["selector"]["matchLabels"], other_labels)
    for hpa in m.all("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert m.get(target["kind"], target["name"])["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"


@all_scenarios
def test_ingress_serves_only_socket_io_from_the_gateway_service(name):
    m = scenario(name)
    ingress = m.maybe("Ingress")
    if ingress is None:
        return
    service = m.get("Service", m.workload("gateway")["metadata"]["name"])
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert (path["path"], path["pathType"]) == ("/socket.io", "Prefix")
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports


@all_scenarios
def test_ingress_timeouts_exceed_the_ping_interval_and_body_limit_fits_max_payload(name):
    m = scenario(name)
    ingress = m.maybe("Ingress")
    if ingress is None:
        return
    env = m.env("gateway")
    idle_s = (int(env["WEBSOCKET_PING_INTERVAL"]) + int(env["WEBSOCKET_PING_TIMEOUT"])) / 1000
    a = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(a[f"nginx.ingress.kubernetes.io/{key}"]) > idle_s, key
    assert int(a["nginx.ingress.kubernetes.io/proxy-body-size"]) >= int(env["MAX_PAYLOAD"])


def test_ingress_timeouts_shorter_than_a_ping_are_refused(tmp_path):
    with pytest.raises(RenderError) as err:
        render(DEFAULTS, values={"ingress": {"nginx": {"proxyTimeoutSeconds": 60}}}, tmp_path=tmp_path)
    assert "ingress.nginx.proxyTimeoutSeconds (60)" in str(err.value)


def test_polling_gets_cookie_affinity_and_websocket_only_does_without():
    polling = scenario("defaults")
    assert polling.env("gateway")["TRANSPORTS"] == "websocket,polling"
    a = polling.get("Ingress")["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert a["nginx.ingress.kubernetes.io/affinity-mode"] == "persistent"
    assert a["nginx.ingress.kubernetes.io/session-cookie-name"]

    ws = scenario("websocket-only")
    assert ws.env("gateway")["TRANSPORTS"] == "websocket"
    a = ws.get("Ingress")["metadata"]["annotations"]
    assert not [k for k in a if "affinity" in k or "session-cookie" in k]
    assert "nginx.ingress.kubernetes.io/proxy-read-timeout" in a


def test_user_annotations_override_the_charts(tmp_path):
    m = render(
        DEFAULTS,
        values={"ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"}}},
        tmp_path=tmp_path,
    )
    assert m.get("Ingress")["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"


def test_trust_x_forwarded_for_follows_the_ingress(tmp_path):
    assert scenario("defaults").env("gateway")["TRUST_X_FORWARDED_FOR"] == "true"
    m = render(DEFAULTS, values={"ingress": {"enabled": False}}, tmp_path=tmp_path)
    assert m.env("gateway")["TRUST_X_FORWARDED_FOR"] == "false"
    assert m.maybe("Ingress") is None


# --- Authentication -------------------------------------------------------------------------


def test_auth_is_on_by_default_with_the_secret_from_an_existing_secret():
    env = scenario("defaults").env("gateway")
    ref = env["JWT_SECRET"]["secretKeyRef"]
    assert ref == {"name": "roomcast-jwt", "key": "jwt-secret"}
    assert "JWT_PUBLIC_KEY_FILE" not in env


def test_auth_without_a_secret_is_refused(tmp_path):
    with pytest.raises(RenderError) as err:
        render(values={"redis": {"external": {"url": "redis://r:6379"}}}, tmp_path=tmp_path)
    assert "auth.existingSecret" in str(err.value)


def test_auth_off_sets_no_jwt_setting(tmp_path):
    m = render(
        values={"redis": {"external": {"url": "redis://r:6379"}}, "auth": {"enabled": False}},
        tmp_path=tmp_path,
    )
    assert not [k for k in m.env("gateway") if k.startswith("JWT_")]


def test_public_key_auth_mounts_the_key_file():
    m = scenario("external-redis")
    env = m.env("gateway")
    assert "JWT_SECRET" not in env
    path = env["JWT_PUBLIC_KEY_FILE"]
    spec = pod_spec(m, "gateway")
    mount = [v for v in spec["containers"][0]["volumeMounts"] if path.startswith(v["mountPath"] + "/")]
    assert len(mount) == 1 and mount[0]["readOnly"]
    volume = [v for v in spec["volumes"] if v["name"] == mount[0]["name"]][0]["secret"]
    assert volume["secretName"] == "roomcast-jwt-public"
    assert {"key": "jwt.pem", "path": path.rsplit("/", 1)[1]} in volume["items"]


# --- Redis ----------------------------------------------------------------------------------


def test_redis_url_from_a_value_is_kept_in_a_secret():
    m = scenario("defaults")
    for component in ("gateway", "fanout"):
        ref = m.env(component)["REDIS_URL"]["secretKeyRef"]
        secret = m.get("Secret", ref["name"])
        assert base64.b64decode(secret["data"][ref["key"]]).decode() == "redis://redis.example.svc:6379"


def test_redis_url_from_an_existing_secret():
    m = scenario("external-redis")
    for component in ("gateway", "fanout"):
        assert m.env(component)["REDIS_URL"]["secretKeyRef"] == {"name": "roomcast-redis", "key": "url"}
    assert not m.all("Secret"), "no Secret of the chart's own"


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "redis.external.url or redis.external.existingSecret"),
        ({"redis": {"external": {"url": "redis://a:6379", "existingSecret": "s"}}}, "only one of"),
        ({"redis": {"enabled": True, "external": {"url": "redis://a:6379"}}}, "leave redis.external"),
    ],
    ids=["none", "both", "bundled-and-external"],
)
def test_redis_must_be_said_once(tmp_path, values, message):
    values = {**values, "auth": {"existingSecret": "jwt"}}
    with pytest.raises(RenderError) as err:
        render(values=values, tmp_path=tmp_path)
    assert message in str(err.value)


def test_bundled_redis_has_aof_on_and_the_binaries_point_at_it():
    m = scenario("bundled-redis")
    sts = m.get("StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    opts = dict(zip(args[::2], args[1::2]))
    assert opts["--appendonly"] == "yes"
    assert opts["--appendfsync"] == values_of("bundled-redis")["redis"]["appendfsync"]
    assert opts["--maxmemory-policy"] == "noeviction"
    assert opts["--dir"] == "/data"
    assert any(v["mountPath"] == "/data" for v in container["volumeMounts"])
    claims = sts["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    service = m.get("Service", sts["spec"]["serviceName"])
    url = f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for component in ("gateway", "fanout"):
        assert m.env(component)["REDIS_URL"] == url


def test_bundled_redis_without_persistence_uses_an_empty_dir(tmp_path):
    m = render(
        values={"redis": {"enabled": True, "persistence": {"enabled": False}}, "auth": {"existingSecret": "jwt"}},
        tmp_path=tmp_path,
    )
    sts = m.get("StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    assert sts["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_bundled_redis_maxmemory_is_below_its_memory_limit():
    m = scenario("bundled-redis")
    container = m.get("StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    maxmemory = args[args.index("--maxmemory") + 1]
    units = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}
    number = int("".join(c for c in maxmemory if c.isdigit()))
    maxmemory_bytes = number * units[maxmemory.lstrip("0123456789") or "b"]
    limit = container["resources"]["limits"]["memory"]
    k8s = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    limit_bytes = int(limit[:-2]) * k8s[limit[-2:]]
    assert maxmemory_bytes < limit_bytes


def test_bundled_redis_is_fenced_to_the_charts_pods_and_backends():
    m = scenario("bundled-redis")
    policy = [p for p in m.all("NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"]
    assert len(policy) == 1
    peers = policy[0]["spec"]["ingress"][0]["from"]
    for component in ("gateway", "fanout"):
        labels = m.workload(component)["spec"]["template"]["metadata"]["labels"]
        assert any(selector_matches(p.get("podSelector", {}).get("matchLabels", {"x": "y"}), labels) for p in peers), component
    assert {"podSelector": {"matchLabels": {"role": "backend"}}} in peers


def test_no_redis_workload_unless_enabled():
    m = scenario("defaults")
    assert not m.all("StatefulSet")


# --- Settings shared by both binaries, and per-pod ones ------------------------------------


@all_scenarios
def test_gateways_and_fanouts_agree_on_shared_settings(name):
    m = scenario(name)
    gateway, fanout = m.env("gateway"), m.env("fanout")
    for var in ("REDIS_URL", "REDIS_KEY_PREFIX", "RECOVERY_MAX_DISCONNECTION_MS", "HISTORY_MAX_LEN", "LOG_FORMAT", "RUST_LOG"):
        assert gateway[var] == fanout[var], var


@all_scenarios
def test_per_pod_ids_come_from_the_pod_name(name):
    """A fixed id in a ConfigMap would be shared by every replica: ids come from the pod."""
    m = scenario(name)
    pod_name = {"fieldRef": {"fieldPath": "metadata.name"}}
    assert m.env("gateway")["GATEWAY_ID"] == pod_name
    wanted = values_of(name)["fanout"]["podNameAsReplicaId"]
    assert m.env("fanout").get("FANOUT_REPLICA_ID") == (pod_name if wanted else None)


def test_lease_renewal_must_be_below_the_lease_ttl(tmp_path):
    with pytest.raises(RenderError) as err:
        render(DEFAULTS, values={"fanout": {"config": {"leaseRenewMs": 3000}}}, tmp_path=tmp_path)
    assert "fanout.config.leaseRenewMs (3000) must be below fanout.config.leaseTtlMs (3000)" in str(err.value)


def test_extra_env_adds_settings_but_cannot_shadow_the_charts(tmp_path):
    m = render(DEFAULTS, values={"gateway": {"extraEnv": {"OTEL_SERVICE_NAME": "gw"}}}, tmp_path=tmp_path)
    assert m.env("gateway")["OTEL_SERVICE_NAME"] == "gw"
    for component, name in (("gateway", "WEBSOCKET_PING_INTERVAL"), ("gateway", "JWT_SECRET"), ("fanout", "FANOUT_REPLICA_ID"), ("fanout", "FANOUT_PARTITIONS"), ("fanout", "REDIS_URL")):
        with pytest.raises(RenderError) as err:
            render(DEFAULTS, values={component: {"extraEnv": {name: "1"}}}, tmp_path=tmp_path)
        assert f"{component}.extraEnv.{name}" in str(err.value)


def test_checksum_changes_with_the_settings_of_its_component(tmp_path):
    def checksums(values):
        m = render(DEFAULTS, values=values, tmp_path=tmp_path)
        return {
            c: m.workload(c)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for c in ("gateway", "fanout")
        }

    base = checksums({})
    assert checksums({}) == base, "stable across renderings"
    gw = checksums({"gateway": {"config": {"maxConnections": 5}}})
    assert gw["gateway"] != base["gateway"] and gw["fanout"] == base["fanout"]
    fo = checksums({"fanout": {"config": {"batchSize": 5}}})
    assert fo["fanout"] != base["fanout"] and fo["gateway"] == base["gateway"]
    url = checksums({"redis": {"external": {"url": "redis://other:6379"}}})
    assert url["gateway"] != base["gateway"] and url["fanout"] != base["fanout"]


# --- Security ---------------------------------------------------------------------------------


@all_scenarios
def test_every_container_is_locked_down(name):
    m = scenario(name)
    for w in m.all("Deployment") + m.all("StatefulSet"):
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "memory" in c["resources"]["limits"], c["name"]
            assert "cpu" in c["resources"]["requests"], c["name"]


@all_scenarios
def test_everything_is_in_the_release_namespace(name):
    for d in scenario(name).docs:
        assert d["metadata"]["namespace"] == NAMESPACE, (d["kind"], d["metadata"]["name"])


# --- Scaling and availability ---------------------------------------------------------------


def test_autoscaling_leaves_replicas_to_the_hpa():
    m = scenario("autoscaling")
    assert "replicas" not in m.workload("gateway")["spec"]
    hpa = m.get("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)
    resources = {x["resource"]["name"] for x in hpa["spec"]["metrics"]}
    assert resources == {"cpu", "memory"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    assert m.workload("fanout")["spec"]["replicas"] == 3


def test_gateways_spread_over_zones_and_nodes():
    m = scenario("defaults")
    spread = pod_spec(m, "gateway")["topologySpreadConstraints"]
    labels = m.workload("gateway")["spec"]["template"]["metadata"]["labels"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(selector_matches(c["labelSelector"]["matchLabels"], labels) for c in spread)


def test_rolling_updates_keep_capacity():
    m = scenario("defaults")
    for component in ("gateway", "fanout"):
        strategy = m.workload(component)["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1, component
    assert m.workload("fanout")["spec"]["replicas"] >= 2, "a fanout crash must not stop delivery"


# --- Monitoring -------------------------------------------------------------------------------


def test_service_monitors_scrape_metrics_on_a_service_port():
    m = scenario("monitoring")
    monitors = m.all("ServiceMonitor")
    assert len(monitors) == 2
    for sm in monitors:
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        services = [s for s in m.all("Service") if selector_matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert len(services) == 1, sm["metadata"]["name"]
        for endpoint in sm["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}


def test_network_policies_admit_the_ingress_controller_and_prometheus():
    m = scenario("monitoring")
    by_component = {
        p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: p for p in m.all("NetworkPolicy")
    }
    assert set(by_component) == {"gateway", "fanout"}
    gw_rule = by_component["gateway"]["spec"]["ingress"][0]
    assert gw_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(gw_rule["from"]) == 2
    fo_rule = by_component["fanout"]["spec"]["ingress"][0]
    assert fo_rule["ports"] == [{"port": "admin", "protocol": "TCP"}]


# --- NOTES.txt ----------------------------------------------------------------------------------


def notes(*value_files):
    out = subprocess.run(
        [tool("HELM"), "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
        + [a for f in value_files for a in ("-f", str(f))],
        capture_output=True,
        text=True,
        check=True,
        env={"KUBECONFIG": "/nonexistent", "HOME": "/nonexistent"},
    ).stdout
    return out.split("NOTES:", 1)[1]


def test_notes_tell_how_to_publish_and_connect():
    text = notes(SCENARIOS["external-redis"])
    assert "XADD chat:publish '*' room chat:42 event message data '{\"text\":\"hi\"}'" in text
    assert 'io("https://rt.example.com"' in text
    assert "auth: { token }" in text
    ws = notes(SCENARIOS["websocket-only"])
    assert 'transports: ["websocket"]' in ws
    bundled = notes(SCENARIOS["bundled-redis"])
    assert f"exec -it statefulset/{RELEASE}-roomcast-redis" in bundled
