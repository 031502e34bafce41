"""Pure builders of the objects the operator writes, tested against golden YAML.

Every builder takes plain values and returns a Kubernetes object as a dict; nothing here
reads the cluster or the clock.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stagger.core.api import API_VERSION, InferenceStream, SharingMode
from stagger.core.calibration import profile_name
from stagger.core.contract import CONTRACT_FILE, SlotAssignment
from stagger.core.placement import ShardPlacement
from stagger_operator.settings import OperatorSettings

Obj = dict[str, Any]

LABEL_STREAM = "stagger.dev/stream"
LABEL_SHARD = "stagger.dev/shard"
LABEL_GPU = "stagger.dev/gpu"
MANAGED_BY = {"app.kubernetes.io/managed-by": "stagger", "app.kubernetes.io/part-of": "stagger"}
LABEL_CALIBRATION = "stagger.dev/calibration"
ANNOTATION_CALIBRATION_SERVERS = "stagger.dev/calibration-servers"
"""On a calibration Job: how many Triton servers it measures with, and why fewer."""
ANNOTATION_CALIBRATION_MODEL = "stagger.dev/calibration-model"
"""The model a calibration Job measures (the planner keeps streams off its GPU meanwhile,
and its model's streams calibrating there)."""
SLOT_DIR = "/etc/stagger/slot"
SIDECAR = "stagger-sidecar"
# Workload names get "-<replicaset hash>-<pod hash>" appended (17 characters) and must
# stay a valid 63-character hostname.
MAX_WORKLOAD_NAME = 46


# What Stagger's own containers run as: non-root, read-only, no privileges (the pod
# security "restricted" profile).
RESTRICTED: Obj = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class TemplateError(ValueError):
    """The stream's pod template cannot serve a shard; the message says why."""


def _copy(obj: Obj) -> Obj:
    """A deep copy of JSON-like data; several times faster than ``copy.deepcopy``, which
    matters when a reconcile builds a Deployment for each of ten thousand shards."""
    copied: Obj = pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
    return copied


def _short(name: str, limit: int) -> str:
    """``name`` if it fits, else a prefix and a stable hash: still unique, still valid."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def shard_name(stream: str, shard: int, node: str, gpu: int) -> str:
    """Named by placement as well: a shard that moves gets a new Deployment beside the old
    one (make-before-break), never a rollout of the old one onto another GPU."""
    where = hashlib.sha256(f"{node}/{gpu}".encode()).hexdigest()[:6]
    return f"{_short(f'{stream}-s{shard}', MAX_WORKLOAD_NAME - 7)}-{where}"


def gpu_label(node: str, gpu: int) -> str:
    return _short(f"{node}.{gpu}", 63)


def schedule_name(node: str, gpu: int) -> str:
    return _short(f"{node}-gpu{gpu}", 253)


def stream_label(stream: str) -> str:
    return _short(stream, 63)


def shard_labels(stream: str, shard: int, node: str, gpu: int) -> dict[str, str]:
    """The labels of everything one placed shard owns; together they select its pod."""
    return {
        **MANAGED_BY,
        LABEL_STREAM: stream_label(stream),
        LABEL_SHARD: str(shard),
        LABEL_GPU: gpu_label(node, gpu),
    }


def owned_metadata(stream: InferenceStream, name: str, labels: dict[str, str]) -> Obj:
    """Metadata of an object the stream owns: deleted with it by the garbage collector."""
    return {
        "name": name,
        "namespace": stream.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(stream)],
    }


def owner_reference(stream: InferenceStream) -> Obj:
    if not stream.metadata.uid:
        raise TemplateError("the stream has no metadata.uid (it was not read from the API server)")
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceStream",
        "name": stream.name,
        "uid": stream.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def slot_configmap_name(stream: str, shard: int, node: str, gpu: int) -> str:
    return f"{shard_name(stream, shard, node, gpu)}-slot"


def slot_configmap(stream: InferenceStream, contract: SlotAssignment) -> Obj:
    """The slot contract of one shard, mounted read-only into its pod."""
    where = (stream.name, contract.shard, contract.node, contract.gpu_index)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(stream, slot_configmap_name(*where), shard_labels(*where)),
        "data": {
            CONTRACT_FILE: contract.model_dump_json(by_alias=True, exclude_none=True, indent=2)
        },
    }


def check_template(stream: InferenceStream, s: OperatorSettings) -> Obj:
    """The stream's pod template, or a :class:`TemplateError` saying what is wrong."""
    template = stream.spec.template
    if not template:
        raise TemplateError(
            "spec.template is required to run the stream (a pod template with the "
            "Triton and app containers)"
        )
    spec = template.get("spec")
    if not isinstance(spec, dict):
        raise TemplateError("spec.template.spec must be a pod spec")
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    allowed = s.allowed_service_accounts
    if "*" not in allowed and account not in allowed:
        raise TemplateError(
            f"spec.template.spec.serviceAccountName {account!r} is not allowed for streams "
            f"(allowed: {', '.join(allowed) or 'none'}; the operator's "
            "STAGGER_ALLOWED_SERVICE_ACCOUNTS, Helm value operator.allowedServiceAccounts)"
        )
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise TemplateError("spec.template.spec.containers must list at least one container")
    for i, c in enumerate(containers):
        if not isinstance(c, dict) or not c.get("name") or not c.get("image"):
            raise TemplateError(f"spec.template.spec.containers[{i}] needs a name and an image")
        if c["name"] == SIDECAR:
            raise TemplateError(
                f"spec.template.spec.containers[{i}]: the name {SIDECAR} is reserved"
            )
    return template


def sidecar_container(stream: InferenceStream, p: ShardPlacement, s: OperatorSettings) -> Obj:
    def http_probe(path: str) -> Obj:
        return {"httpGet": {"path": path, "port": "gate-http"}, "periodSeconds": 5}

    return {
        "name": SIDECAR,
        "image": s.sidecar_image,
        "args": ["gate"],
        "ports": [
            {"name": "gate-http", "containerPort": s.sidecar_http_port},
            {"name": "gate-grpc", "containerPort": s.sidecar_grpc_port},
            {"name": "metrics", "containerPort": s.sidecar_metrics_port},
        ],
        "env": [
            {"name": "STAGGER_STREAM", "value": stream.name},
            {"name": "STAGGER_NAMESPACE", "value": stream.namespace},
            {"name": "STAGGER_SHARD", "value": str(p.shard)},
            {"name": "STAGGER_SHARDS", "value": str(p.shards)},
            {"name": "STAGGER_SLOT_FILE", "value": f"{SLOT_DIR}/{CONTRACT_FILE}"},
            {"name": "STAGGER_TRITON_HTTP", "value": f"127.0.0.1:{s.triton_http_port}"},
            {"name": "STAGGER_TRITON_GRPC", "value": f"127.0.0.1:{s.triton_grpc_port}"},
            {"name": "STAGGER_HTTP_ADDRESS", "value": f"0.0.0.0:{s.sidecar_http_port}"},
            {"name": "STAGGER_GRPC_ADDRESS", "value": f"0.0.0.0:{s.sidecar_grpc_port}"},
            {"name": "STAGGER_METRICS_ADDRESS", "value": f"0.0.0.0:{s.sidecar_metrics_port}"},
            {"name": "STAGGER_POLICY", "value": str(stream.spec.gate.policy)},
            *(
                [{"name": "STAGGER_MAX_WAIT_MS", "value": f"{stream.spec.gate.max_wait_ms:g}"}]
                if stream.spec.gate.max_wait_ms is not None
                else []
            ),
            *(
                [{"name": "STAGGER_SLOT_FEED", "value": slot_feed_url(stream, p, s.feed_url)}]
                if s.feed_url
                else []
            ),
        ],
        "resources": s.sidecar_resources.manifest(),
        "readinessProbe": http_probe("/readyz"),
        "livenessProbe": http_probe("/healthz"),
        "securityContext": _copy(RESTRICTED),
        "volumeMounts": [{"name": "stagger-slot", "mountPath": SLOT_DIR, "readOnly": True}],
    }


def slot_feed_url(stream: InferenceStream, p: ShardPlacement, base: str) -> str:
    """Where a shard's sidecar waits for its contract on the slot feed (feed.py)."""
    name = slot_configmap_name(stream.name, p.shard, p.node, p.gpu)
    return f"{base.rstrip('/')}/v1/slots/{stream.namespace}/{name}"


def resource_claim(stream: InferenceStream, p: ShardPlacement, s: OperatorSettings) -> Obj:
    """``dra`` binding: a ResourceClaim for exactly the planned GPU, by UUID."""
    if not p.gpu_uuid:
        raise TemplateError(f"GPU {p.gpu} on node {p.node} has no UUID: dra binding needs one")
    name = f"{shard_name(stream.name, p.shard, p.node, p.gpu)}-gpu"
    labels = shard_labels(stream.name, p.shard, p.node, p.gpu)
    return _gpu_claim(owned_metadata(stream, name, labels), p.gpu_uuid, s)


def _gpu_claim(metadata: Obj, gpu_uuid: str, s: OperatorSettings) -> Obj:
    selector = f'device.attributes["{s.dra_device_class}"].uuid == "{gpu_uuid}"'
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": metadata,
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {
                            "deviceClassName": s.dra_device_class,
                            "selectors": [{"cel": {"expression": selector}}],
                        },
                    }
                ]
            }
        },
    }


def shard_deployment(stream: InferenceStream, p: ShardPlacement, s: OperatorSettings) -> Obj:
    """One shard's workload: the stream's pod template pinned to its node and GPU, with the
    sidecar injected and the slot contract mounted. Recreate: two copies of a shard must
    never share the GPU, not even during a rollout."""
    template = _copy(check_template(stream, s))
    name = shard_name(stream.name, p.shard, p.node, p.gpu)
    labels = shard_labels(stream.name, p.shard, p.node, p.gpu)
    meta = template.setdefault("metadata", {})
    meta["labels"] = {**meta.get("labels", {}), **labels}
    spec = template["spec"]
    _pin_to_node(spec, p.node)
    for c in spec["containers"]:
        _bind_gpu(c, p.gpu, p.gpu_uuid, s)
    if s.gpu_binding == "dra":
        spec["resourceClaims"] = [
            *spec.get("resourceClaims", []),
            {"name": GPU_CLAIM, "resourceClaimName": f"{name}-gpu"},
        ]
    spec["containers"] = [*spec["containers"], sidecar_container(stream, p, s)]
    spec["volumes"] = [
        *spec.get("volumes", []),
        {
            "name": "stagger-slot",
            "configMap": {"name": slot_configmap_name(stream.name, p.shard, p.node, p.gpu)},
        },
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owned_metadata(stream, name, labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {
                "matchLabels": {k: labels[k] for k in (LABEL_STREAM, LABEL_SHARD, LABEL_GPU)}
            },
            "template": template,
        },
    }


GPU_CLAIM = "stagger-gpu"
"""The pod's name for its GPU's ResourceClaim (``dra`` binding), in each GPU container."""


def _pin_to_node(pod_spec: Obj, node: str) -> None:
    affinity = pod_spec.setdefault("affinity", {})
    affinity["nodeAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ],
        }
    }


def _bind_gpu(container: Obj, gpu: int, gpu_uuid: str | None, s: OperatorSettings) -> None:
    if s.gpu_binding == "visible-devices":
        env = [e for e in container.get("env", []) if e.get("name") != "NVIDIA_VISIBLE_DEVICES"]
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": gpu_uuid or str(gpu)})
        container["env"] = env
    elif s.gpu_binding == "resource":
        limits = container.setdefault("resources", {}).setdefault("limits", {})
        limits.setdefault("nvidia.com/gpu", 1)
    elif s.gpu_binding == "dra":
        claims = container.setdefault("resources", {}).setdefault("claims", [])
        claims.append({"name": GPU_CLAIM})


def gpu_schedule(
    node: str,
    gpu: int,
    shards: list[ShardPlacement],
    *,
    epoch: datetime,
    generation: int,
    effective_at: datetime,
    tick_hz: int,
    sharing_mode: str,
    retimed_at: Mapping[tuple[str, str, int], datetime] | None = None,
    since: Mapping[tuple[str, str, int], datetime] | None = None,
) -> Obj:
    """The slot table of one GPU (cluster-scoped: deleted by the operator, not by owners).
    ``retimed_at``: when a re-timing last changed a shard's slot here; ``since``: when its
    slots here began."""
    first = shards[0]
    retimed_at, since = retimed_at or {}, since or {}
    return {
        "apiVersion": API_VERSION,
        "kind": "GpuSchedule",
        "metadata": {
            "name": schedule_name(node, gpu),
            "labels": {**MANAGED_BY, LABEL_GPU: gpu_label(node, gpu)},
        },
        "spec": {
            "node": node,
            "gpuIndex": gpu,
            **({"gpuUuid": first.gpu_uuid} if first.gpu_uuid else {}),
            "gpuProduct": first.product,
            "sharingMode": sharing_mode,
            "tickHz": tick_hz,
            "epoch": _timestamp(epoch),
            "generation": generation,
            "effectiveAt": _timestamp(effective_at),
            "slots": [
                {
                    "stream": x.stream,
                    "namespace": x.namespace,
                    "shard": x.shard,
                    "shards": x.shards,
                    "periodTicks": x.period_ticks,
                    "offsetTicks": x.offset_ticks,
                    "bodyTicks": x.body_ticks,
                    "memoryMiB": x.memory_mib,
                    **({"retimedAt": _timestamp(retimed_at[x.key])} if x.key in retimed_at else {}),
                    **({"since": _timestamp(since[x.key])} if x.key in since else {}),
                    **({"arrivalTicks": x.arrival_ticks} if x.arrival_ticks is not None else {}),
                }
                for x in sorted(
                    shards, key=lambda x: (x.offset_ticks, x.namespace, x.stream, x.shard)
                )
            ],
        },
    }


def _timestamp(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class CalibrationTarget:
    """The GPU a calibration runs on, and what its result will be a profile of."""

    node: str
    gpu: int
    gpu_uuid: str | None
    product: str
    sharing_mode: SharingMode
    memory_free_mib: int | None = None
    """GPU memory free there (None: not known)."""
    servers_running: int = 0
    """Triton servers of streams placed there (one a shard), each already a CUDA client."""


@dataclass(frozen=True)
class CalibrationServers:
    """How many copies of the stream's Triton a calibration Job runs on its GPU, and why
    fewer than the operator's ``calibration_servers`` where that is so."""

    count: int
    fewer_because: str | None = None

    def describe(self) -> str:
        """For the stream's status message."""
        servers = "one Triton server" if self.count == 1 else f"{self.count} Triton servers"
        return servers + (f" ({self.fewer_because})" if self.fewer_because else "")


COPY_PORT_STRIDE = 100
"""Copy i of Triton in a calibration Job serves HTTP on the Triton HTTP port + i x this."""


def calibration_servers(
    stream: InferenceStream, triton: Obj, t: CalibrationTarget, s: OperatorSettings
) -> CalibrationServers:
    """A stream's cost is 1 / the GPU's saturation throughput with one server per stream,
    as streams are deployed; one server measures what its own instances sustain (77 against
    88 frames/s time-sliced, 118 against 167/s under MPS on an H200: issue 20). So a Job
    runs ``calibration_servers`` copies of the stream's Triton, as many as the GPU's free
    memory holds at the stream's ``memoryMiB``; one where the stream declares none, or
    where a copy cannot get its own port
    (its container does not run tritonserver itself) or its own share of the same GPU (the
    ``resource`` binding gives each container a GPU of its own; under ``dra`` the copies
    share the pod's claim, and with it the one GPU)."""
    wanted = s.calibration_servers
    if wanted == 1:
        return CalibrationServers(1)
    if s.gpu_binding not in ("visible-devices", "dra"):
        return CalibrationServers(
            1, f"gpuBinding {s.gpu_binding}: a second container would get a GPU of its own"
        )
    argv = [*(triton.get("command") or []), *(triton.get("args") or [])]
    if not argv or str(argv[0]).rsplit("/", 1)[-1] != "tritonserver":
        return CalibrationServers(
            1,
            "the Triton container does not run tritonserver as its command or first "
            "argument, so a copy's port cannot be set",
        )
    memory = stream.spec.memory_mib
    if not memory:
        # copies that do not fit would fail to load, and the Job would wait out its deadline
        return CalibrationServers(
            1, "the stream declares no memoryMiB, so how many copies fit the GPU is not known"
        )
    if t.memory_free_mib is not None and t.memory_free_mib // memory < wanted:
        fits = max(1, t.memory_free_mib // memory)
        return CalibrationServers(
            fits, f"{t.memory_free_mib} MiB of GPU memory free, {memory} MiB a server"
        )
    most = s.mps_servers_per_gpu
    if t.sharing_mode is SharingMode.MPS and most and most - t.servers_running < wanted:
        # a copy past the MPS server's CUDA contexts never loads its model, and the Job
        # would wait out its deadline (runs 89-90)
        return CalibrationServers(
            max(1, most - t.servers_running),
            f"an MPS GPU takes {most} model servers (mpsServersPerGpu) and "
            f"{t.servers_running} streams' servers run there",
        )
    return CalibrationServers(wanted)


def _triton_copy(triton: Obj, i: int, s: OperatorSettings) -> Obj:
    """Copy ``i`` of the Job's Triton: its own HTTP port (a later flag wins in tritonserver),
    no gRPC or metrics port to collide with the first's, no probes of the first's port. It
    requests no CPU or memory (the first server's requests schedule the pod, as a
    one-server Job's do) within the template's limits: a calibration's minutes."""
    port = s.triton_http_port + COPY_PORT_STRIDE * i
    copy = _copy(triton)
    copy["name"] = f"{triton['name'][:55]}-copy-{i}"
    copy["args"] = [
        *(copy.get("args") or []),
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
    ]
    copy["ports"] = [{"containerPort": port}]
    for probe in ("livenessProbe", "readinessProbe"):
        copy.pop(probe, None)
    resources = triton.get("resources") or {}
    kept = {k: v for k, v in (resources.get("limits") or {}).items() if k in ("cpu", "memory")}
    copy.pop("resources", None)  # no GPU of its own, but the pod's GPU claim where it has one
    if kept:
        copy["resources"] = {"requests": dict.fromkeys(kept, "0"), "limits": kept}
    if resources.get("claims"):
        copy.setdefault("resources", {})["claims"] = _copy(resources["claims"])
    return copy


PROFILE_S = 180
"""What a calibration Job leaves its profiler after waiting for the servers: the wait ends
this long before the Job's deadline, so a server that never came up is named by the
profiler, not lost in a DeadlineExceeded."""


def calibration_wait_s(s: OperatorSettings) -> int:
    """How long a calibration Job's profiler waits for every server to have the model."""
    return max(30, s.calibration_timeout_s - PROFILE_S)


def calibration_job(stream: InferenceStream, t: CalibrationTarget, s: OperatorSettings) -> Obj:
    """A Job that measures the stream's model on one GPU: the stream's Triton container as
    a native sidecar (an init container that keeps running, so the pod completes when the
    profiler does), in as many copies as :func:`calibration_servers` says, and ``stagger
    profile`` against all of them (the sweep on the first two, saturation over all), whose
    result is the container's termination message. No startup probe gates the copies: the
    kubelet would start each only once the one before it had loaded the model. They load
    side by side, and the profiler waits until every one is ready (``--wait-ready``: the
    Job's deadline less ``PROFILE_S``). The app containers stay out: their frames would
    disturb the measurement. The Job needs no API access; the operator reads the message.
    Under ``dra`` its pod claims the GPU through :func:`calibration_claim`."""
    if s.gpu_binding == "dra" and not t.gpu_uuid:
        raise TemplateError(f"GPU {t.gpu} on node {t.node} has no UUID: dra binding needs one")
    template = _copy(check_template(stream, s))
    spec = template["spec"]
    triton = _triton_container(spec["containers"], s)
    triton["restartPolicy"] = "Always"  # native sidecar
    triton.pop("startupProbe", None)
    _bind_gpu(triton, t.gpu, t.gpu_uuid, s)
    servers = calibration_servers(stream, triton, t, s)
    tritons = [triton, *(_triton_copy(triton, i, s) for i in range(1, servers.count))]
    urls = [
        f"http://127.0.0.1:{s.triton_http_port + COPY_PORT_STRIDE * i}"
        for i in range(servers.count)
    ]
    model = stream.spec.model
    version = stream.spec.model_version
    profiler: Obj = {
        "name": "stagger-profile",
        "image": s.sidecar_image,
        "command": [
            "stagger",
            "profile",
            *(arg for url in urls for arg in ("--url", url)),
            "--wait-ready",
            str(calibration_wait_s(s)),
            "--model",
            model,
            *(["--model-version", version] if version else []),
            *(
                arg
                for name, path in sorted(stream.spec.calibration_inputs.items())
                for arg in ("--input", f"{name}={path}")
            ),
            "--result-file",
            "/dev/termination-log",
            "-o",
            "json",
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "1", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _copy(RESTRICTED),
    }
    if stream.spec.calibration_inputs and triton.get("volumeMounts"):
        # the inputs are files the Triton container sees: the profiler reads them there
        profiler["volumeMounts"] = [
            {**mount, "readOnly": True} for mount in _copy(triton)["volumeMounts"]
        ]
    name = calibration_job_name(model, t)
    labels = {
        **MANAGED_BY,
        LABEL_CALIBRATION: _short(profile_name(model, t.product, t.sharing_mode), 63),
        LABEL_STREAM: stream_label(stream.name),
    }
    pod_spec = {
        **{k: v for k, v in spec.items() if k not in ("containers", "initContainers")},
        "restartPolicy": "Never",
        "initContainers": [*spec.get("initContainers", []), *tritons],
        "containers": [profiler],
    }
    if s.gpu_binding == "dra":
        pod_spec["resourceClaims"] = [
            *spec.get("resourceClaims", []),
            {"name": GPU_CLAIM, "resourceClaimName": calibration_claim_name(name)},
        ]
    _pin_to_node(pod_spec, t.node)
    # the GPU it measures, on the Job alone: its pod is no stream's shard
    metadata = owned_metadata(stream, name, labels | {LABEL_GPU: gpu_label(t.node, t.gpu)})
    metadata["annotations"] = {
        ANNOTATION_CALIBRATION_SERVERS: servers.describe(),
        ANNOTATION_CALIBRATION_MODEL: model,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": s.calibration_timeout_s,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def calibration_claim(stream: InferenceStream, t: CalibrationTarget, s: OperatorSettings) -> Obj:
    """``dra`` binding: the ResourceClaim of a calibration Job's pod, for exactly the GPU it
    measures, by UUID. The Job's Triton and its copies share it (a pod's containers may
    share a claim), as the streams' servers share the GPU. Labelled as its Job is, so the
    operator deletes it with the Job."""
    if not t.gpu_uuid:
        raise TemplateError(f"GPU {t.gpu} on node {t.node} has no UUID: dra binding needs one")
    job = calibration_job_name(stream.spec.model, t)
    labels = {
        **MANAGED_BY,
        LABEL_CALIBRATION: _short(profile_name(stream.spec.model, t.product, t.sharing_mode), 63),
        LABEL_STREAM: stream_label(stream.name),
        LABEL_GPU: gpu_label(t.node, t.gpu),
    }
    return _gpu_claim(owned_metadata(stream, calibration_claim_name(job), labels), t.gpu_uuid, s)


def calibration_claim_name(job_name: str) -> str:
    return f"{job_name}-gpu"


def calibration_job_name(model: str, t: CalibrationTarget) -> str:
    key = f"{model}/{t.product}/{t.sharing_mode}/{t.node}/{t.gpu}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:6]
    return f"calibrate-{_short(profile_name(model, t.product, t.sharing_mode), 45)}-{digest}"


def _triton_container(containers: list[Obj], s: OperatorSettings) -> Obj:
    """The template's Triton: the container that serves Triton's HTTP port, or one named
    triton."""
    for c in containers:
        if any(p.get("containerPort") == s.triton_http_port for p in c.get("ports", [])):
            return c
    for c in containers:
        if c.get("name") == "triton":
            return c
    raise TemplateError(
        "spec.template: no container serves Triton: name it triton or declare "
        f"containerPort {s.triton_http_port}"
    )
