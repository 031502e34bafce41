"""Generated fleets for the placement benchmark: realistic fps mixes, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stagger.core.api import InferenceStream, InferenceStreamSpec, ObjectMeta
from stagger.core.cluster import Cluster

# Share of streams per frame rate, as camera fleets are configured: most at 5-30 fps.
CAMERA_FPS: dict[float, float] = {
    1: 0.04,
    2: 0.04,
    5: 0.14,
    7.5: 0.04,
    10: 0.26,
    12.5: 0.04,
    15: 0.18,
    25: 0.08,
    30: 0.18,
}
# Heavy analytics at high rates: most streams need more than one GPU.
HEAVY_FPS: dict[float, float] = {15: 0.2, 20: 0.2, 25: 0.2, 30: 0.4}
# Heavy bodies at broadcast rates: every stream splits, periods from four rate families.
SPLIT_FPS: dict[float, float] = {25: 0.25, 30: 0.25, 50: 0.25, 60: 0.25}
MEMORY_MIB = [512, 1024, 2048, 4096, 8192]
MEMORY_SHARE = [0.25, 0.3, 0.25, 0.15, 0.05]


@dataclass(frozen=True)
class FleetKind:
    name: str
    body_median_ms: float
    body_sigma: float
    fps_mix: dict[float, float]
    gpu_memory_mib: int
    description: str
    body_range_ms: tuple[float, float] | None = None
    """Bodies uniform in this range instead of log-normal around the median."""
    latency_factor: float | None = None
    """Solo latency = this x body, instead of uniform 1.3-2.5 x body."""
    memory_mib: int | None = None
    """Every stream's memory, instead of the 0.5-8 GiB mix."""


KINDS = {
    k.name: k
    for k in (
        FleetKind(
            "light-80g", 6, 0.6, CAMERA_FPS, 81920, "camera fleet, median 0.07 GPU, 80 GiB GPUs"
        ),
        FleetKind("light-16g", 6, 0.6, CAMERA_FPS, 16384, "same streams on 16 GiB GPUs"),
        FleetKind("heavy-80g", 45, 0.25, HEAVY_FPS, 81920, "most streams exceed one GPU, 80 GiB"),
        FleetKind("heavy-40g", 45, 0.25, HEAVY_FPS, 40960, "most streams exceed one GPU, 40 GiB"),
        FleetKind(
            "split-24g",
            45,
            0,
            SPLIT_FPS,
            24576,
            "25-60 fps, 20-70 ms bodies: every stream splits, 24 GiB GPUs",
            body_range_ms=(20, 70),
            latency_factor=1.4,
            memory_mib=2048,
        ),
    )
}


def streams(kind: FleetKind, count: int, seed: int = 0) -> list[InferenceStream]:
    rng = np.random.default_rng(seed)
    rates = np.array(list(kind.fps_mix), dtype=float)
    fps = rng.choice(rates, size=count, p=np.array(list(kind.fps_mix.values())))
    if kind.body_range_ms is not None:
        body = rng.uniform(*kind.body_range_ms, count)
    else:
        body = np.clip(rng.lognormal(math.log(kind.body_median_ms), kind.body_sigma, count), 2, 60)
    if kind.latency_factor is not None:
        latency = body * kind.latency_factor
    else:
        latency = body * rng.uniform(1.3, 2.5, count)
    if kind.memory_mib is not None:
        memory = np.full(count, kind.memory_mib)
    else:
        memory = rng.choice(MEMORY_MIB, size=count, p=MEMORY_SHARE)
    return [
        # model_construct: these inputs are valid by construction, and validating 100k
        # objects would time pydantic, not placement.
        InferenceStream.model_construct(
            api_version="stagger.dev/v1alpha1",
            kind="InferenceStream",
            metadata=ObjectMeta(name=f"s{i:06d}", namespace=f"ns{i % 50:02d}"),
            spec=InferenceStreamSpec(
                model="det",
                fps=float(fps[i]),
                body_time_ms=round(float(body[i]), 2),
                latency_ms=round(float(latency[i]), 2),
                memory_mib=int(memory[i]),
            ),
        )
        for i in range(count)
    ]


def cluster(gpus: int, memory_mib: int, per_node: int = 8) -> Cluster:
    nodes = []
    for n in range(math.ceil(gpus / per_node)):
        count = min(per_node, gpus - n * per_node)
        gpu_list = [{"index": i, "product": "GPU", "memoryMiB": memory_mib} for i in range(count)]
        nodes.append({"name": f"node-{n:05d}", "labels": {}, "gpus": gpu_list})
    return Cluster.model_validate({"nodes": nodes})


def load(s: InferenceStream) -> float:
    """GPU-seconds of body per second."""
    return (s.spec.body_time_ms or 0) * s.spec.fps / 1000


def lower_bound(fleet: list[InferenceStream], gpu_memory_mib: int, cap: float) -> int:
    """max(ceil(sum body x fps / cap), ceil(sum memory / GPU memory)): ignores slot waste
    and indivisibility, so no placement can use fewer GPUs."""
    body = sum(load(s) for s in fleet)
    memory = sum(s.spec.memory_mib for s in fleet)
    return max(math.ceil(body / cap - 1e-9), math.ceil(memory / gpu_memory_mib))
