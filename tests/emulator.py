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
    "resource.k8s.io/v1/resourceclaims": ("ResourceClaim", True, set()),
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
    writes_left: dict[str, int]
    """Operator token -> writes it may still make: after its last one the process is
    killed (``dead``), so nothing it sends later lands, as after a SIGKILL."""
    dead: set[str]
    planner_writes: list[tuple[str, str | None]] | None = None
    """When a list: (token, the Lease's holder then) for every write of a planner's output
    (Deployments, ConfigMaps, GpuSchedules), to check that only the leader plans."""

    async def __call__(self, raw_request: Any) -> Any:
        del self._requests[:-16]
        token = raw_request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token in getattr(self, "dead", ()):
            # A status nobody retries (not 401: kopf would log in again, as someone else),
            # so a killed operator's remaining work ends at once, as a process's would.
            return await self._failure(raw_request, 403, {})
        if (
            self.planner_writes is not None
            and raw_request.method in WRITES
            and any(kind in raw_request.path for kind in PLANNER_OUTPUTS)
        ):
            self.planner_writes.append((token, self.lease_holder()))
        if token == OBSERVER:  # the test's own eyes: never faulted
            return await self._serve(raw_request)
        for fault in getattr(self, "faults", []):
            if (
                raw_request.method == fault.method
                and fault.path in raw_request.path
                and (fault.times is None or fault.hits < fault.times)
                and self.fault_rng.random() < fault.rate
            ):
                fault.hits += 1
                return await self._failure(raw_request, fault.status, fault.headers)
        answer = await self._serve(raw_request)
        left = getattr(self, "writes_left", {})
        if token in left and raw_request.method in WRITES:
            left[token] -= 1
            if left[token] <= 0:
                self.dead.add(token)
        return answer

    def lease_spec(self, name: str = "stagger-operator") -> dict[str, Any]:
        for (resource, _, object_name), obj in self.objects.items():
            if resource.plural == "leases" and object_name == name:
                return dict(obj.last.get("spec", {}))
        return {}

    def lease_holder(self, name: str = "stagger-operator") -> str | None:
        holder: str | None = self.lease_spec(name).get("holderIdentity")
        return holder

    async def _failure(self, raw_request: Any, status: int, headers: dict[str, str]) -> Any:
        await raw_request.read()  # the request's body, read as a server would
        return aiohttp.web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Failure",
             "code": status, "message": "injected"},
            status=status,
            headers=headers,
        )  # fmt: skip

    async def _serve(self, raw_request: Any) -> Any:
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
"""Where kopf finds the emulator (set it before starting an operator in this process); each
operator's kopf presents the token in its memo."""
OBSERVER = "observer"
"""The token of the tests' own client: faults and kills are the operator's, not theirs."""
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PLANNER_OUTPUTS = ("/deployments", "/configmaps", "/gpuschedules")


@kopf.on.login()
def _login_to_the_emulator(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    url = EMULATOR_URL["url"]
    # The operator's own token: kopf may log in after the next operator has started.
    token = memo.get("token", "operator")
    return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token=token)


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


def ready_pod(deployment: dict[str, Any], *, ip: str = "127.0.0.1") -> dict[str, Any]:
    """What the Deployment controller and the kubelet would make of a shard's Deployment:
    its pod, Running and Ready at ``ip`` (kmock has neither)."""
    meta, template = deployment["metadata"], deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-pod",
            "namespace": meta["namespace"],
            "uid": f"uid-pod-{meta['name']}",
            "resourceVersion": "1",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


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
