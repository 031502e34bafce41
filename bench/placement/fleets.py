"""Generated fleets for the placement benchmark: realistic fps mixes, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagger.core.api import InferenceStream
from stagger.core.cluster import Cluster

# Share of streams per frame rate, as camera fleets are configured: most at 5-30 fps.
FPS_MIX = {1: 0.04, 2: 0.04, 5: 0.14, 7.5: 0.04, 10: 0.26, 12.5: 0.04, 15: 0.18, 25: 0.08, 30: 0.18}
MEMORY_MIB = [512, 1024, 2048, 4096, 8192]


@dataclass(frozen=True)
class FleetSpec:
    name: str
    streams: int
    body_median_ms: float
    body_sigma: float
    fps_mix: dict[float, float]
    gpu_memory_mib: int
    description: str


def streams(spec: FleetSpec, seed: int = 0) -> list[InferenceStream]:
    rng = np.random.default_rng(seed)
    rates = list(spec.fps_mix)
    fps = rng.choice(rates, size=spec.streams, p=np.array(list(spec.fps_mix.values())))
    body = np.clip(rng.lognormal(math.log(spec.body_median_ms), spec.body_sigma, spec.streams), 2, 60)
    latency = body * rng.uniform(1.3, 2.5, spec.streams)
    memory = rng.choice(MEMORY_MIB, size=spec.streams, p=[0.25, 0.3, 0.25, 0.15, 0.05])
    out = []
    for i in range(spec.streams):
        out.append(InferenceStream.model_construct(
            api_version="stagger.dev/v1alpha1", kind="InferenceStream",
            metadata=_meta(f"s{i:06d}", f"ns{i % 50:02d}"),
            spec=_spec(float(fps[i]), round(float(body[i]), 2), round(float(latency[i]), 2), int(memory[i])),
        ))
    return out


def _meta(name: str, namespace: str):  # type: ignore[no-untyped-def]
    from stagger.core.api import ObjectMeta

    return ObjectMeta(name=name, namespace=namespace)


def _spec(fps: float, body: float, latency: float, memory: int):  # type: ignore[no-untyped-def]
    from stagger.core.api import InferenceStreamSpec

    return InferenceStreamSpec(model="det", fps=fps, body_time_ms=body, latency_ms=latency, memory_mib=memory)


def cluster(gpus: int, memory_mib: int, per_node: int = 8) -> Cluster:
    nodes = []
    for n in range(math.ceil(gpus / per_node)):
        count = min(per_node, gpus - n * per_node)
        nodes.append({"name": f"node-{n:05d}", "labels": {}, "gpus": [
            {"index": i, "product": "GPU", "memoryMiB": memory_mib} for i in range(count)]})
    return Cluster.model_validate({"nodes": nodes})


def lower_bound(fleet: list[InferenceStream], gpu_memory_mib: int, cap: float) -> int:
    """max(ceil(sum body x fps / cap), ceil(sum memory / GPU memory)): ignores slot waste and
    indivisibility, so no placement can beat it."""
    load = sum((s.spec.body_time_ms or 0) * s.spec.fps / 1000 for s in fleet)
    memory = sum(s.spec.memory_mib for s in fleet)
    return max(math.ceil(load / cap - 1e-9), math.ceil(memory / gpu_memory_mib))
