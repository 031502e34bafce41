"""The Helm chart with a real helm: lint, render for default and other values, every
object valid for the Kubernetes API (kubernetes-validate) or for our CRDs, the default
render against golden YAML, the RBAC against what the operator calls, bad values refused
by the schema."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stagger import __version__
from stagger_operator.kube import KINDS
from tests.unit.operator.test_manifests import K8S_VERSION, check_golden

CHART = Path(__file__).resolve().parents[2] / "charts" / "stagger"
HELM = os.environ.get("STAGGER_HELM") or str(
    Path.home() / ".cache" / "stagger" / "helm-4.1.4/helm"
)  # where `make helm` puts it
NAMESPACE = "stagger-system"


@pytest.fixture(autouse=True)
def _helm_is_there() -> None:
    # A real helm is part of the suite: missing, the tests fail rather than skip.
    assert os.access(HELM, os.X_OK), f"no helm at {HELM}: run `make helm`"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def render(*values: str) -> list[dict[str, Any]]:
    sets = [a for v in values for a in ("--set", v)]
    done = helm("template", "stagger", str(CHART), "-n", NAMESPACE, *sets)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_lint_strict() -> None:
    done = helm("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_render_matches_golden_and_validates() -> None:
    objects = render()
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # The dashboard has tests of its own (test_dashboard.py); here only where it goes.
    (dashboard,) = [o for o in objects if o["metadata"]["name"] == "stagger-dashboard"]
    dashboard["data"]["stagger.json"] = "<charts/stagger/dashboards/stagger.json>"
    check_golden("chart-default.yaml", objects)


def test_images_default_to_what_make_images_builds() -> None:
    """The operator, the sidecar it injects and the agent: images/build's names, tagged
    with the chart's appVersion (which tests/unit/test_version.py ties to the package)."""
    objects = render()
    images = pod_images(objects)
    assert images == {
        ("Deployment", "operator"): f"stagger/operator:{__version__}",
        ("DaemonSet", "agent"): f"stagger/sidecar:{__version__}",
        ("Deployment", "STAGGER_SIDECAR_IMAGE"): f"stagger/sidecar:{__version__}",
    }


def test_a_registry_and_pull_secrets_reach_every_image_and_pod() -> None:
    values = [
        "global.imageRegistry=registry.example.com/mirror/",
        "global.imagePullSecrets[0].name=regcred",
        "operator.imagePullSecrets[0].name=operator-cred",
        "sidecar.image.tag=0.1.0-rc.1",
        "operator.image.registry=registry.example.com/ops",
    ]
    objects = render(*values)
    for obj in objects:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pods = [o for o in objects if o["kind"] in {"Deployment", "DaemonSet"}]
    check_golden("chart-images.yaml", pods)
    assert pod_images(objects) == {
        ("Deployment", "operator"): f"registry.example.com/ops/stagger/operator:{__version__}",
        ("DaemonSet", "agent"): "registry.example.com/mirror/stagger/sidecar:0.1.0-rc.1",
        ("Deployment", "STAGGER_SIDECAR_IMAGE"): (
            "registry.example.com/mirror/stagger/sidecar:0.1.0-rc.1"
        ),
    }
    secrets = {o["kind"]: o["spec"]["template"]["spec"]["imagePullSecrets"] for o in pods}
    assert secrets == {
        "Deployment": [{"name": "regcred"}, {"name": "operator-cred"}],
        "DaemonSet": [{"name": "regcred"}],
    }


def pod_images(objects: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """Each container's image, and the sidecar image the operator is told to inject."""
    out = {}
    for o in objects:
        if o["kind"] not in {"Deployment", "DaemonSet"}:
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            out[(o["kind"], c["name"])] = c["image"]
            for e in c.get("env", []):
                if e["name"] == "STAGGER_SIDECAR_IMAGE":
                    out[(o["kind"], e["name"])] = e["value"]
    return out


@pytest.mark.parametrize(
    "values",
    [
        ["operator.gpuBinding=dra", "operator.watchNamespaces={retail,lobby}"],
        [
            "operator.replicas=1",
            "operator.leaderElection=false",
            "rbac.aggregateToBuiltinRoles=false",
        ],
        ["serviceAccount.create=false", "serviceAccount.name=platform-sa"],
        ["operator.extraEnv.STAGGER_DRIFT_PERCENT=30", "operator.image.tag=0.2.0"],
        ["operator.allowedServiceAccounts={default,camera-app}"],
        ["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"],
        ["metrics.podMonitor.enabled=true", "dashboards.enabled=false"],
        ["sidecar.resources.requests.cpu=100m", "sidecar.resources.limits.cpu=100m"],
    ],
)
def test_other_values_render_valid_objects(values: list[str]) -> None:
    objects = render(*values)
    for obj in objects:
        if obj["apiVersion"] != "monitoring.coreos.com/v1":  # the Prometheus Operator's
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    if "operator.gpuBinding=dra" in values:
        assert env["STAGGER_GPU_BINDING"] == "dra"
        assert env["STAGGER_NAMESPACES"] == '["retail","lobby"]'
    if "serviceAccount.create=false" in values:
        accounts = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"]
        assert accounts == ["stagger-agent"]  # the operator's is the platform's own
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"
    if "rbac.aggregateToBuiltinRoles=false" in values:
        roles = [o["metadata"]["name"] for o in objects if o["kind"] == "ClusterRole"]
        assert sorted(roles) == ["stagger-agent", "stagger-operator"]
    accounts = '["default","camera-app"]' if "camera-app" in str(values) else '["default"]'
    assert env["STAGGER_ALLOWED_SERVICE_ACCOUNTS"] == accounts
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    if "metrics.serviceMonitor.enabled=true" in values:
        (monitor,) = monitors
        assert monitor["metadata"]["labels"]["release"] == "prom"
        selected = monitor["spec"]["selector"]["matchLabels"]
        services = [
            o
            for o in objects
            if o["kind"] == "Service" and selected.items() <= o["metadata"]["labels"].items()
        ]
        assert len(services) == 2  # the operator's and the agents'
    else:
        assert monitors == []
    pod_monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    if "metrics.podMonitor.enabled=true" in values:
        (monitor,) = pod_monitors  # every stream pod's sidecar, in every namespace
        assert monitor["spec"]["namespaceSelector"] == {"any": True}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
        assert not [o for o in objects if o["kind"] == "ConfigMap"]
    else:
        assert pod_monitors == []
    if "operator.extraEnv.STAGGER_DRIFT_PERCENT=30" in values:
        assert env["STAGGER_DRIFT_PERCENT"] == "30"
    if "sidecar.resources.limits.cpu=100m" in values:  # what the operator injects, parsed
        from stagger_operator.settings import ContainerResources

        injected = ContainerResources.model_validate_json(env["STAGGER_SIDECAR_RESOURCES"])
        assert injected.manifest() == {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "100m", "memory": "128Mi"},
        }


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (["operator.replicas=0"], "/operator/replicas"),
        (["operator.gpuBinding=magic"], "/operator/gpuBinding"),
        (["operator.utilizationCap=1.5"], "/operator/utilizationCap"),
        (["operator.replicass=2"], "replicass"),  # a typo is refused, not ignored
        (["operator.extraEnv.PATH=/x"], "'PATH' does not match pattern '^STAGGER_"),
        (["operator.replicas=2", "operator.leaderElection=false"], "two planners would fight"),
        (["serviceAccount.create=false"], "name an existing ServiceAccount"),
        (["dashboards.namespace=Monitoring"], "/dashboards/namespace"),
        (["sidecar.resources.requests.nvidia\\.com/gpu=1"], "/sidecar/resources/requests"),
    ],
)
def test_bad_values_fail_with_the_key(values: list[str], says: str) -> None:
    sets = [a for v in values for a in ("--set", v)]
    done = helm("template", "stagger", str(CHART), "-n", NAMESPACE, *sets)
    assert done.returncode != 0 and says in done.stderr, done.stderr


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet"])
def test_the_operator_and_the_agent_run_locked_down(kind: str) -> None:
    (workload,) = [o for o in render() if o["kind"] == kind]
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _granted(objects: list[dict[str, Any]], kind: str) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for role in (
        o
        for o in objects
        if o["kind"] == kind and o["metadata"]["name"].endswith(("-operator", "-leader-election"))
    ):
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_covers_every_kind_the_operator_calls_and_nothing_wide() -> None:
    objects = render()
    granted = _granted(objects, "ClusterRole") | _granted(objects, "Role")
    for kind in KINDS.values():
        group = "" if kind.group_version == "v1" else kind.group_version.split("/")[0]
        assert (group, kind.plural) in granted, f"no rule for {kind.plural}"
    for (group, resource), verbs in granted.items():
        assert "*" not in verbs and resource != "*" and group != "*"
        assert resource not in ("secrets", "serviceaccounts/token", "pods/exec")
        assert not verbs & {"escalate", "bind", "impersonate"}
    assert granted[("coordination.k8s.io", "leases")] == {"list", "create", "patch"}
    for role in (o for o in objects if o["kind"] in ("ClusterRole", "Role")):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert "secrets" not in rule["resources"], role["metadata"]["name"]
    (lease_role,) = [o for o in objects if o["kind"] == "Role"]
    assert lease_role["metadata"]["namespace"] == NAMESPACE  # not cluster-wide


def test_namespace_users_get_streams_through_the_builtin_roles() -> None:
    roles = {o["metadata"]["name"]: o for o in render() if o["kind"] == "ClusterRole"}
    view, edit = roles["stagger-view"], roles["stagger-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert (
        "create" in edit["rules"][0]["verbs"]
        and "inferencestreams" in edit["rules"][0]["resources"]
    )
    assert "aggregate-to-view" not in str(edit["metadata"]["labels"])  # view stays read-only


def test_the_crd_chart_renders_the_generated_crds_kept_on_uninstall() -> None:
    """charts/stagger-crds: the same CRDs as templates, so `helm upgrade` upgrades them."""
    crd_chart = CHART.parent / "stagger-crds"
    lint = helm("lint", "--strict", str(crd_chart))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    done = helm("template", "stagger-crds", str(crd_chart))
    assert done.returncode == 0, done.stderr
    rendered = {d["metadata"]["name"]: d for d in yaml.safe_load_all(done.stdout) if d}
    generated = [yaml.safe_load(p.read_text()) for p in (CHART.parents[1] / "crds").glob("*.yaml")]
    assert sorted(rendered) == sorted(c["metadata"]["name"] for c in generated)
    for crd in generated:
        got = rendered[crd["metadata"]["name"]]
        meta = got["metadata"]
        assert meta.pop("annotations") == {"helm.sh/resource-policy": "keep"}
        labels = meta.pop("labels")
        assert labels.pop("app.kubernetes.io/managed-by") == "Helm"
        assert labels.pop("app.kubernetes.io/instance") == "stagger-crds"
        assert labels.pop("helm.sh/chart") == "stagger-crds-0.1.0"
        if labels:
            meta["labels"] = labels
        assert got == crd  # exactly, types too: a round trip must not turn 253 into 253.0


def test_the_chart_carries_the_generated_crds() -> None:
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == sorted(p.name for p in (CHART.parents[1] / "crds").glob("*.yaml"))
    for name in chart:
        assert (CHART / "crds" / name).read_text() == (CHART.parents[1] / "crds" / name).read_text()


def test_the_agent_runs_on_gpu_nodes_and_can_be_turned_off() -> None:
    (daemonset,) = [o for o in render() if o["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["hostPID"] is True
    assert pod["containers"][0]["command"] == ["stagger-sidecar", "agent"]
    custom = render("agent.nodeSelector.pool=gpu", "agent.runtimeClassName=nvidia")
    (daemonset,) = [o for o in custom if o["kind"] == "DaemonSet"]
    assert daemonset["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"
    assert daemonset["spec"]["template"]["spec"]["nodeSelector"]["pool"] == "gpu"
    assert not [o for o in render("agent.enabled=false") if o["kind"] == "DaemonSet"]


def test_sidecars_reach_the_operator_s_slot_feed_through_its_service_unless_turned_off() -> None:
    objects = render()
    (operator,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (service,) = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-feed")
    ]
    port = service["spec"]["ports"][0]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert env["STAGGER_FEED_URL"] == f"http://{host}:{port['port']}"
    assert env["STAGGER_FEED_ADDRESS"] == f"0.0.0.0:{port['port']}"
    assert {"name": "feed", "containerPort": port["port"]} in container["ports"]
    assert service["spec"]["selector"] == operator["spec"]["selector"]["matchLabels"]
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == service["spec"]["selector"]
    feed_rule, open_rule = policy["spec"]["ingress"]
    assert feed_rule["ports"] == [{"port": "feed"}]
    (source,) = feed_rule["from"]
    assert source["podSelector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "stagger"}
    assert {p["port"] for p in open_rule["ports"]} == {"metrics", "health"}
    assert "from" not in open_rule  # Prometheus and the kubelet, as before
    names = {p["name"] for p in container["ports"]}
    assert names >= {"feed", "metrics", "health"}
    assert not [
        o for o in render("operator.slotFeed.networkPolicy=false") if o["kind"] == "NetworkPolicy"
    ]
    off = render("operator.slotFeed.enabled=false")
    assert not [o for o in off if o["metadata"]["name"].endswith("-feed")]
    assert "STAGGER_FEED" not in str([o for o in off if o["kind"] == "Deployment"])


def test_the_chart_s_defaults_are_the_operator_s_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `helm install` with no values runs the operator as its own defaults do (the caps,
    the calibration's servers, the policy, the binding...), so a default changed in the code
    and not in values.yaml, or the other way round, fails here. Only what the chart sets on
    purpose differs: the pod's own name as identity, and the slot feed it turns on."""
    from stagger_operator.settings import OperatorSettings

    (operator,) = [
        c
        for o in render()
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
        if c["name"] == "operator"
    ]
    for name in [k for k in os.environ if k.startswith("STAGGER_")]:
        monkeypatch.delenv(name)
    defaults = OperatorSettings()
    for e in operator["env"]:
        if "value" in e:  # a fieldRef is the pod's own, not a default
            monkeypatch.setenv(e["name"], e["value"])
    installed = OperatorSettings()
    differ = {
        f for f in OperatorSettings.model_fields if getattr(defaults, f) != getattr(installed, f)
    }
    assert differ <= {"identity", "feed_address", "feed_url"}, {
        f: (getattr(defaults, f), getattr(installed, f)) for f in differ
    }
    assert (installed.throughput_cap, installed.mps_throughput_cap) == (1.0, 1.0)
