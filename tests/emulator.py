"""kmock, kopf's Kubernetes API emulator, set up as the operator needs it, and factories of
the objects the tests and the operator benchmark create."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import kmock
import kopf

VERBS = {"list", "watch", "get", "create", "patch", "delete"}
RESOURCES = {
    "stagger.dev/v1alpha1/inferencestreams": ("InferenceStream", True, {"status"}),
    "stagger.dev/v1alpha1/modelprofiles": ("ModelProfile", False, {"status"}),
    "stagger.dev/v1alpha1/gpuschedules": ("GpuSchedule", False, {"status"}),
    "stagger.dev/v1alpha1/gpunodes": ("GpuNode", False, {"status"}),
    "v1/nodes": ("Node", False, set()),
    "v1/namespaces": ("Namespace", False, set()),
    "v1/events": ("Event", True, set()),
    "v1/configmaps": ("ConfigMap", True, set()),
    "v1/pods": ("Pod", True, {"status"}),
    "apps/v1/deployments": ("Deployment", True, set()),
    "batch/v1/jobs": ("Job", True, {"status"}),
    "coordination.k8s.io/v1/leases": ("Lease", True, set()),
}
TEMPLATE = {"spec": {"containers": [{"name": "triton", "image": "example/tritonserver:24.10"}]}}


@dataclass
class Fault:
    """Answer matching requests with ``status`` (and ``headers``) instead of serving them:
    ``method`` and a ``path`` substring select them, ``times`` bounds how many (None: until
    removed), ``rate`` answers that share of them (seeded)."""

    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None
    rate: float = 1.0
    hits: int = 0


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, forgetting the requests it has served.

    kmock keeps every request for assertions and, to dispatch a new one, scans that history
    from the start until it finds the request itself: each request costs time proportional
    to all requests before it (0.1 s per request after a few thousand). These tests assert
    on objects, not on requests; dispatch never awaits between logging a request and
    finding it, so a short tail of the history is enough.
    """

    faults: list[Fault]
    fault_rng = random.Random(5)

    async def __call__(self, raw_request: Any) -> Any:
        del self._requests[:-16]
        for fault in getattr(self, "faults", []):
            if (
                raw_request.method == fault.method
                and fault.path in raw_request.path
                and (fault.times is None or fault.hits < fault.times)
                and self.fault_rng.random() < fault.rate
            ):
                fault.hits += 1
                await raw_request.read()  # the request's body, read as a server would
                return aiohttp.web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "code": fault.status, "message": "injected"},
                    status=fault.status,
                    headers=fault.headers,
                )  # fmt: skip
        try:
            return await super().__call__(raw_request)
        except kmock.KubernetesObjectNotFoundError:
            # kmock 0.8 lets a GET of a missing object escape as a 500; the API server
            # answers 404 with a Status, and callers (the Lease's read) rely on it
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                 "reason": "NotFound", "message": "not found"},
                status=404,
            )  # fmt: skip


EMULATOR_URL: dict[str, str] = {}
"""Where kopf finds the emulator (set it before starting an operator in this process)."""


@kopf.on.login()
def _login_to_the_emulator(**_: Any) -> kopf.ConnectionInfo:
    url = EMULATOR_URL["url"]
    return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token="x")


@kopf.on.startup()
def _no_namespace_scan(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.scanning.disabled = True  # kmock 0.8 answers namespace listing with 500


def declare(emulator: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    """Declare the resources the operator reads and writes."""
    for key, (kind, namespaced, sub) in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=VERBS, subresources=sub
        )
    return emulator


def node(name: str, gpus: int = 2, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "stagger.dev/managed": "true",
                "nvidia.com/gpu.product": "NVIDIA-H200",
                "nvidia.com/gpu.memory": "143771",
                "nvidia.com/gpu.count": str(gpus),
            },
        },
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "capacity": {"nvidia.com/gpu": str(gpus)},
        },
    }


def stream(
    name: str, fps: float = 10, body: float = 10.5, namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "stagger.dev/v1alpha1",
        "kind": "InferenceStream",
        # kmock assigns neither uid nor resourceVersion; kopf needs both (owners, finalizers).
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "resourceVersion": "1",
        },
        "spec": {
            "model": "retinanet",
            "fps": fps,
            "bodyTimeMs": body,
            "latencyMs": 18.5,
            "template": TEMPLATE,
            **spec,
        },
    }
