"""Manifest builders against golden YAML, and against the Kubernetes API's own schemas."""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from stagger.core.placement import plan
from stagger_operator import manifests
from stagger_operator.desired import desired_state
from stagger_operator.settings import ContainerResources, OperatorSettings
from tests.factories import cluster, stream

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
K8S_VERSION = "1.33.0"
NOW = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)

TEMPLATE = {
    "metadata": {"labels": {"app": "lobby"}},
    "spec": {
        "containers": [
            {
                "name": "triton",
                "image": "example/tritonserver:24.10",
                "args": ["tritonserver", "--model-repository=/models"],
            },
            {
                "name": "app",
                "image": "example/lobby-app:1.0",
                "env": [{"name": "TRITON_URL", "value": "127.0.0.1:8800"}],
            },
        ],
    },
}


TEMPLATE_APP = TEMPLATE["spec"]["containers"][1]


def placed_stream(**spec: Any):  # type: ignore[no-untyped-def]
    s = stream(
        "lobby-1",
        10,
        body=10.5,
        latency=18.5,
        namespace="retail",
        memoryMiB=2500,
        template=TEMPLATE,
        **spec,
    )
    s.metadata.uid = "0b7c6a9e-1111-4222-8333-444455556666"
    c = cluster(("h200-a", 2), product="NVIDIA-H200", memory=143771)
    return s, plan([s], c).shards[0]


def check_golden(name: str, obj: Any) -> None:
    text = yaml.safe_dump(obj, sort_keys=False, width=100)
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: create it with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs: rerun with UPDATE_GOLDEN=1 if intended"


@pytest.mark.parametrize("binding", ["visible-devices", "resource", "dra", "none"])
def test_shard_deployment_matches_golden_and_validates(binding: str) -> None:
    s, p = placed_stream()
    settings = OperatorSettings(gpu_binding=binding)  # type: ignore[arg-type]
    deployment = manifests.shard_deployment(s, p, settings)
    check_golden(f"deployment-{binding}.yaml", deployment)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["triton", "app", "stagger-sidecar"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    node_terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    assert node_terms["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchFields"
    ][0]["values"] == ["h200-a"]


def test_visible_devices_binding_pins_the_gpu_by_uuid_on_user_containers_only() -> None:
    s, p = placed_stream()
    d = manifests.shard_deployment(s, p, OperatorSettings())
    env = {
        c["name"]: {e["name"]: e.get("value") for e in c.get("env", [])}
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert env["triton"]["NVIDIA_VISIBLE_DEVICES"] == p.gpu_uuid
    assert env["app"]["NVIDIA_VISIBLE_DEVICES"] == p.gpu_uuid
    assert "NVIDIA_VISIBLE_DEVICES" not in env["stagger-sidecar"]
    assert env["stagger-sidecar"]["STAGGER_STREAM"] == "lobby-1"


def test_sidecar_runs_restricted() -> None:
    s, p = placed_stream()
    sidecar = manifests.sidecar_container(s, p, OperatorSettings())
    sc = sidecar["securityContext"]
    assert (
        sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    )
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_dra_claim_selects_the_planned_gpu() -> None:
    s, p = placed_stream()
    claim = manifests.resource_claim(s, p, OperatorSettings(gpu_binding="dra"))
    check_golden("resourceclaim.yaml", claim)
    expression = claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"][
        "expression"
    ]
    assert p.gpu_uuid and p.gpu_uuid in expression


def test_desired_state_configmap_and_schedule_match_golden() -> None:
    s, _ = placed_stream()
    c = cluster(("h200-a", 2), product="NVIDIA-H200", memory=143771)
    desired = desired_state([s], plan([s], c), {}, OperatorSettings(), NOW)
    kinds = [o["kind"] for o in desired.objects]
    assert kinds == ["ConfigMap", "Deployment"]
    check_golden("configmap.yaml", desired.objects[0])
    kubernetes_validate.validate(desired.objects[0], K8S_VERSION, strict=True)
    (schedule,) = desired.schedules
    check_golden("gpuschedule.yaml", schedule)
    assert schedule["spec"]["generation"] == 1
    assert schedule["spec"]["epoch"] == "2026-11-21T09:00:00Z"
    assert schedule["spec"]["effectiveAt"] == "2026-11-21T09:00:05Z"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (None, "spec.template is required"),
        ({"spec": {}}, "spec.template.spec.containers must list at least one container"),
        ({"spec": {"containers": [{"name": "x"}]}}, "containers[0] needs a name and an image"),
        ({"spec": {"containers": [{"name": "stagger-sidecar", "image": "i"}]}}, "is reserved"),
    ],
)
def test_bad_templates_get_a_specific_message(template: Any, message: str) -> None:
    s = stream("cam", 10, body=5, template=template)
    s.metadata.uid = "u"
    with pytest.raises(manifests.TemplateError, match=re.escape(message)):
        manifests.check_template(s, OperatorSettings())


def test_a_stream_runs_only_as_an_allowed_service_account() -> None:
    """The operator creates pods for the stream's author: not as any account they name."""
    powerful = {**TEMPLATE, "spec": {**TEMPLATE["spec"], "serviceAccountName": "ci-admin"}}
    s = stream("cam", 10, body=5, template=powerful)
    s.metadata.uid = "u"
    with pytest.raises(manifests.TemplateError, match="'ci-admin' is not allowed") as e:
        manifests.check_template(s, OperatorSettings())
    assert "allowed: default" in str(e.value) and "allowedServiceAccounts" in str(e.value)
    for allowed in (["default", "ci-admin"], ["*"]):
        settings = OperatorSettings(allowed_service_accounts=allowed)
        assert manifests.check_template(s, settings)["spec"]["serviceAccountName"] == "ci-admin"
    assert manifests.check_template(stream("x", 10, body=5, template=TEMPLATE), OperatorSettings())


def test_long_names_stay_valid_and_distinct() -> None:
    a = manifests.shard_name("x" * 200, 0, "node-a", 0)
    b = manifests.shard_name("x" * 199 + "y", 0, "node-a", 0)
    assert len(a) <= manifests.MAX_WORKLOAD_NAME and a != b
    assert manifests.shard_name("cam", 1, "node-a", 0).startswith("cam-s1-")
    # Another GPU, another name: a moved shard's new copy starts beside the old one.
    assert manifests.shard_name("cam", 1, "node-a", 0) != manifests.shard_name(
        "cam", 1, "node-a", 1
    )
    label = manifests.gpu_label("n" * 300, 7)
    assert len(label) <= 63 and label[-1].isalnum()


def test_the_injected_sidecar_reads_the_streams_gate_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator writes the env; the sidecar's own settings parse it (both sides of it)."""
    from stagger.core.api import GatePolicy
    from stagger_sidecar.settings import GateSettings

    s, p = placed_stream(gate={"policy": "drop", "maxWaitMs": 40})
    sidecar = manifests.sidecar_container(s, p, OperatorSettings())
    for var in sidecar["env"]:
        monkeypatch.setenv(var["name"], var["value"])
    settings = GateSettings()
    assert (settings.stream, settings.policy, settings.max_wait_ms) == (
        "lobby-1",
        GatePolicy.DROP,
        40.0,
    )
    assert str(settings.slot_file) == f"{manifests.SLOT_DIR}/slot.json"
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert (settings.http_address, settings.grpc_address, settings.metrics_address) == (
        f"0.0.0.0:{ports['gate-http']}",
        f"0.0.0.0:{ports['gate-grpc']}",
        f"0.0.0.0:{ports['metrics']}",
    )


def test_a_guaranteed_pod_stays_guaranteed_where_the_sidecar_is_given_equal_limits() -> None:
    """The QoS class is the pod's: every container's cpu and memory requests equal to its
    limits. The default sidecar (no CPU limit) makes such a pod Burstable; the chart's
    ``sidecar.resources`` keeps it Guaranteed (docs/operations.md)."""

    def qos(deployment: dict[str, Any]) -> str:
        guaranteed = all(
            (r := c.get("resources") or {}).get("limits", {}).get(k) is not None
            and r.get("requests", {}).get(k, r["limits"][k]) == r["limits"][k]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for k in ("cpu", "memory")
        )
        return "Guaranteed" if guaranteed else "Burstable"

    fixed = {"cpu": "4", "memory": "16Gi"}
    s, p = placed_stream()
    template = copy.deepcopy(s.spec.template)  # the module's TEMPLATE is shared
    for container in template["spec"]["containers"]:  # Triton and the app
        container["resources"] = {"requests": dict(fixed), "limits": dict(fixed)}
    s = s.model_copy(update={"spec": s.spec.model_copy(update={"template": template})})
    assert qos(manifests.shard_deployment(s, p, OperatorSettings())) == "Burstable"
    equal = ContainerResources(
        requests={"cpu": "100m", "memory": "128Mi"}, limits={"cpu": "100m", "memory": "128Mi"}
    )
    deployment = manifests.shard_deployment(s, p, OperatorSettings(sidecar_resources=equal))
    assert qos(deployment) == "Guaranteed"
    sidecar = deployment["spec"]["template"]["spec"]["containers"][-1]
    assert sidecar["name"] == "stagger-sidecar" and sidecar["resources"] == equal.manifest()
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_sidecar_waits_on_the_slot_feed_for_the_configmap_its_pod_mounts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stagger_sidecar.settings import GateSettings

    s, p = placed_stream()
    assert "STAGGER_SLOT_FEED" not in str(manifests.sidecar_container(s, p, OperatorSettings()))
    settings = OperatorSettings(feed_url="http://stagger-feed.stagger-system.svc:8082/")
    deployment = manifests.shard_deployment(s, p, settings)
    (sidecar,) = [
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == "stagger-sidecar"
    ]
    for var in sidecar["env"]:
        monkeypatch.setenv(var["name"], var["value"])
    (mounted,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    configmap = mounted["configMap"]["name"]
    assert GateSettings().slot_feed == (
        f"http://stagger-feed.stagger-system.svc:8082/v1/slots/{s.namespace}/{configmap}"
    )


def _calibration_target(
    memory_free_mib: int | None = None,
    sharing_mode: str = "time-slicing",
    servers_running: int = 0,
) -> manifests.CalibrationTarget:
    from stagger.core.api import SharingMode

    return manifests.CalibrationTarget(
        node="h200-a",
        gpu=1,
        gpu_uuid="GPU-1b2c",
        product="NVIDIA-H200",
        sharing_mode=SharingMode(sharing_mode),
        memory_free_mib=memory_free_mib,
        servers_running=servers_running,
    )


TRITON_WITH_LIMITS = {
    **TEMPLATE["spec"]["containers"][0],
    "ports": [{"containerPort": 8000}],
    "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8000}},
    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "12Gi"}},
}


def test_calibration_job_matches_golden_and_validates() -> None:
    """Three copies of the stream's Triton where the GPU's free memory holds three at its
    2,500 MiB (the operator asks for 16), each on its own port, and the profiler against
    all three."""
    s, _ = placed_stream()
    template = {
        **TEMPLATE,
        "spec": {**TEMPLATE["spec"], "containers": [TRITON_WITH_LIMITS, TEMPLATE_APP]},
    }
    s.spec.template = template
    job = manifests.calibration_job(s, _calibration_target(8000), OperatorSettings())
    check_golden("calibration-job.yaml", job)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    tritons = pod["initContainers"]
    assert [c["name"] for c in tritons] == ["triton", "triton-copy-1", "triton-copy-2"]
    for c in tritons:
        assert c["restartPolicy"] == "Always"
        assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "GPU-1b2c"} in c["env"]
        # a startup probe would make the kubelet start each copy only once the one before
        # it had loaded the model: they load side by side, the profiler waits for them
        assert "startupProbe" not in c
    assert [c["ports"][0]["containerPort"] for c in tritons] == [8000, 8100, 8200]
    assert tritons[1]["args"][-3:] == [
        "--http-port=8100",
        "--allow-grpc=false",
        "--allow-metrics=false",
    ]
    assert "readinessProbe" not in tritons[1]  # it would probe the first server's port
    # the first server's requests schedule the pod; the copies stay within the limits
    assert tritons[0]["resources"] == TRITON_WITH_LIMITS["resources"]
    assert tritons[2]["resources"] == {"requests": {"memory": "0"}, "limits": {"memory": "12Gi"}}
    assert job["metadata"]["annotations"] == {
        manifests.ANNOTATION_CALIBRATION_SERVERS: (
            "3 Triton servers (8000 MiB of GPU memory free, 2500 MiB a server)"
        ),
        manifests.ANNOTATION_CALIBRATION_MODEL: "m",
    }
    # the GPU it measures is the Job's label (the planner keeps streams off it), not its
    # pod's, which is no stream's shard
    assert job["metadata"]["labels"][manifests.LABEL_GPU] == manifests.gpu_label("h200-a", 1)
    assert manifests.LABEL_GPU not in job["spec"]["template"]["metadata"]["labels"]
    assert [c["name"] for c in pod["containers"]] == ["stagger-profile"]  # no app
    profiler = pod["containers"][0]
    urls = [profiler["command"][i + 1] for i, a in enumerate(profiler["command"]) if a == "--url"]
    assert urls == ["http://127.0.0.1:8000", "http://127.0.0.1:8100", "http://127.0.0.1:8200"]
    wait = profiler["command"].index("--wait-ready")
    assert profiler["command"][wait + 1] == "720"  # the Job's deadline less the profile's 3 min
    assert profiler["command"][-4:] == ["--result-file", "/dev/termination-log", "-o", "json"]
    assert profiler["securityContext"]["runAsNonRoot"] is True
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("triton", "settings", "memory_free", "servers"),
    [
        # as many as the operator asks for where memory allows, or is not known
        (TEMPLATE["spec"]["containers"][0], OperatorSettings(), 143_000, "16 Triton servers"),
        (TEMPLATE["spec"]["containers"][0], OperatorSettings(), None, "16 Triton servers"),
        (
            TEMPLATE["spec"]["containers"][0],
            OperatorSettings(),
            "no memoryMiB",
            "one Triton server (the stream declares no memoryMiB, so how many copies fit the "
            "GPU is not known)",
        ),
        (
            TEMPLATE["spec"]["containers"][0],
            OperatorSettings(calibration_servers=1),
            None,
            "one Triton server",
        ),
        (
            TEMPLATE["spec"]["containers"][0],
            OperatorSettings(),
            1000,
            "one Triton server (1000 MiB of GPU memory free, 2500 MiB a server)",
        ),
        # tritonserver as the command, with flags after it, works as well as in args
        (
            {"name": "triton", "image": "t", "command": ["/opt/tritonserver/bin/tritonserver"]},
            OperatorSettings(calibration_servers=4),
            None,
            "4 Triton servers",
        ),
        (
            {"name": "triton", "image": "t", "command": ["sh", "-c", "tritonserver --x"]},
            OperatorSettings(),
            None,
            "one Triton server (the Triton container does not run tritonserver as its "
            "command or first argument, so a copy's port cannot be set)",
        ),
        (
            TEMPLATE["spec"]["containers"][0],
            OperatorSettings(gpu_binding="resource"),
            None,
            "one Triton server (gpuBinding resource: a second container would get a GPU of "
            "its own)",
        ),
    ],
)
def test_a_calibration_job_runs_as_many_servers_as_it_can_and_says_why_fewer(
    triton: dict[str, Any], settings: OperatorSettings, memory_free: int | str | None, servers: str
) -> None:
    _assert_job_servers(triton, settings, memory_free, servers, _calibration_target)


@pytest.mark.parametrize(
    ("mode", "running", "servers"),
    [
        # runs 89-90: 15 streams' servers under MPS on an H100, and 15 copies beside them,
        # of which 9 and 11 never loaded; 9 fit the 48 contexts at 2 a server
        (
            "mps",
            15,
            "9 Triton servers (an MPS GPU takes 24 model servers (mpsServersPerGpu) and 15 "
            "streams' servers run there)",
        ),
        ("mps", 0, "16 Triton servers"),  # 24 fit an idle GPU
        ("mps", 8, "16 Triton servers"),
        (
            "mps",
            30,
            "one Triton server (an MPS GPU takes 24 model servers (mpsServersPerGpu) and 30 "
            "streams' servers run there)",
        ),
        ("time-slicing", 30, "16 Triton servers"),  # each context its own: no such limit
    ],
)
def test_a_calibration_job_under_mps_keeps_the_gpu_within_its_cuda_contexts(
    mode: str, running: int, servers: str
) -> None:
    _assert_job_servers(
        TEMPLATE["spec"]["containers"][0],
        OperatorSettings(),
        143_000,
        servers,
        lambda free: _calibration_target(free, mode, running),
    )


def _assert_job_servers(
    triton: dict[str, Any],
    settings: OperatorSettings,
    memory_free: int | str | None,
    servers: str,
    target: Any,
) -> None:
    s, _ = placed_stream()
    if memory_free == "no memoryMiB":
        s.spec.memory_mib, memory_free = 0, 143_000
    assert not isinstance(memory_free, str)
    s.spec.template = {"spec": {"containers": [triton, TEMPLATE_APP]}}
    job = manifests.calibration_job(s, target(memory_free), settings)
    assert job["metadata"]["annotations"][manifests.ANNOTATION_CALIBRATION_SERVERS] == servers
    count = int(servers.split(maxsplit=1)[0]) if servers[0].isdigit() else 1
    pod = job["spec"]["template"]["spec"]
    assert len(pod["initContainers"]) == count
    assert pod["containers"][0]["command"].count("--url") == count
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_calibration_inputs_reach_the_profiler_with_triton_s_volumes_read_only() -> None:
    """A model that decodes its frames cannot take zeros: the stream names a file the
    Triton container sees, and the Job's profiler sends it, reading it through Triton's
    own volume mounts, read-only. Without inputs the profiler mounts nothing."""
    s, _ = placed_stream(calibrationInputs={"IMAGE": "/models/detector/frame.jpg"})
    mount = {"name": "models", "mountPath": "/models"}
    triton = {**TEMPLATE["spec"]["containers"][0], "volumeMounts": [mount]}
    s.spec.template = {
        "spec": {
            "containers": [triton, TEMPLATE_APP],
            "volumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "m"}}],
        }
    }
    job = manifests.calibration_job(s, _calibration_target(), OperatorSettings())
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    profiler = job["spec"]["template"]["spec"]["containers"][0]
    i = profiler["command"].index("--input")
    assert profiler["command"][i : i + 2] == ["--input", "IMAGE=/models/detector/frame.jpg"]
    assert profiler["volumeMounts"] == [{**mount, "readOnly": True}]
    assert job["spec"]["template"]["spec"]["initContainers"][0]["volumeMounts"] == [mount]
    s.spec.calibration_inputs = {}
    plain = manifests.calibration_job(s, _calibration_target(), OperatorSettings())
    assert "volumeMounts" not in plain["spec"]["template"]["spec"]["containers"][0]
    assert "--input" not in plain["spec"]["template"]["spec"]["containers"][0]["command"]


def test_calibration_needs_to_find_triton_in_the_template() -> None:
    s, _ = placed_stream()  # TEMPLATE's Triton is named "triton": found by name
    job = manifests.calibration_job(s, _calibration_target(), OperatorSettings())
    assert job["spec"]["template"]["spec"]["initContainers"][0]["name"] == "triton"
    s.spec.template = {
        "spec": {"containers": [{"name": "server", "image": "x"}, {"name": "app", "image": "y"}]}
    }
    with pytest.raises(manifests.TemplateError, match="no container serves Triton"):
        manifests.calibration_job(s, _calibration_target(), OperatorSettings())


def test_a_dra_calibration_job_claims_its_gpu_once_for_every_copy() -> None:
    """Under the dra binding the Job's pod claims exactly the GPU it measures (by UUID),
    and the Triton and each copy share that one claim, as the streams' servers share the
    GPU: the copies run, not one server alone."""
    s, _ = placed_stream()
    s.spec.template = {
        **TEMPLATE,
        "spec": {**TEMPLATE["spec"], "containers": [TRITON_WITH_LIMITS, TEMPLATE_APP]},
    }
    settings = OperatorSettings(gpu_binding="dra")
    target = _calibration_target(8000)
    job = manifests.calibration_job(s, target, settings)
    claim = manifests.calibration_claim(s, target, settings)
    check_golden("calibration-job-dra.yaml", [claim, job])
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    assert pod["resourceClaims"] == [
        {"name": "stagger-gpu", "resourceClaimName": claim["metadata"]["name"]}
    ]
    servers = pod["initContainers"]
    assert len(servers) == 3  # as many as the free memory holds, as with visible-devices
    assert all(c["resources"]["claims"] == [{"name": "stagger-gpu"}] for c in servers)
    assert "GPU-1b2c" in str(claim["spec"])
    assert claim["metadata"]["labels"] == {
        k: v for k, v in job["metadata"]["labels"].items() if k in claim["metadata"]["labels"]
    }
    no_uuid = dataclasses.replace(target, gpu_uuid=None)
    for build in (manifests.calibration_job, manifests.calibration_claim):
        with pytest.raises(manifests.TemplateError, match="has no UUID: dra binding needs one"):
            build(s, no_uuid, settings)
