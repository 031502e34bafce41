"""Builders for test inputs and an independent checker for slot tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from stagger.core.api import InferenceStream, ModelProfile
from stagger.core.calibration import CalibrationResult
from stagger.core.cluster import Cluster
from stagger.core.contract import SlotAssignment
from stagger.core.slots import Slot


def stream(
    name: str,
    fps: float,
    body: float | None = 10.0,
    latency: float | None = None,
    namespace: str = "default",
    **spec: Any,
) -> InferenceStream:
    body_spec: dict[str, Any] = {"model": spec.pop("model", "m"), "fps": fps, **spec}
    if body is not None:
        body_spec["bodyTimeMs"] = body
    if latency is not None:
        body_spec["latencyMs"] = latency
    return InferenceStream.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "InferenceStream",
            "metadata": {"name": name, "namespace": namespace},
            "spec": body_spec,
        }
    )


def profile(
    model: str,
    product: str,
    body: float,
    latency: float,
    sharing: str = "time-slicing",
    **spec: Any,
) -> ModelProfile:
    return ModelProfile.model_validate(
        {
            "apiVersion": "stagger.dev/v1alpha1",
            "kind": "ModelProfile",
            "metadata": {"name": f"{model}.{product}.{sharing}".lower()},
            "spec": {
                "model": model,
                "gpuProduct": product,
                "sharingMode": sharing,
                "bodyTimeMs": body,
                "latencyMs": latency,
                **spec,
            },
        }
    )


def cluster(
    *nodes: tuple[str, int],
    product: str = "T4",
    memory: int = 16000,
    labels: dict[str, str] | None = None,
    sharing: str = "time-slicing",
) -> Cluster:
    return Cluster.model_validate(
        {
            "nodes": [
                {
                    "name": name,
                    "labels": labels or {},
                    "gpus": [
                        {
                            "index": i,
                            "uuid": f"GPU-{name}-{i}",
                            "product": product,
                            "memoryMiB": memory,
                            "sharingMode": sharing,
                        }
                        for i in range(count)
                    ],
                }
                for name, count in nodes
            ]
        }
    )


def brute_force_overlaps(slots: Sequence[Slot]) -> bool:
    """True when any two bodies share a tick, by marking every tick of the hyperperiod."""
    if not slots:
        return False
    hyper = 1
    for s in slots:
        hyper = hyper * s.period // math.gcd(hyper, s.period)
    busy = bytearray(hyper)
    for s in slots:
        for n in range(hyper // s.period):
            start = s.offset + n * s.period
            for t in range(start, start + s.body):
                if busy[t % hyper]:
                    return True
                busy[t % hyper] = 1
    return False


def slot_contract(
    stream: str = "cam",
    *,
    period_ms: float = 100.0,
    offset_ms: float = 30.0,
    body_ms: float = 5.0,
    generation: int = 1,
    effective_at: float = 0.0,
    namespace: str = "ns",
    shard: int = 0,
) -> SlotAssignment:
    """A slot contract on a 1 MHz tick with its epoch at Unix time 0."""
    unix0 = datetime.fromtimestamp(0, UTC)
    return SlotAssignment(
        stream=stream,
        namespace=namespace,
        shard=shard,
        shards=shard + 1,
        node="node-a",
        gpu_index=0,
        tick_hz=1_000_000,
        epoch=unix0,
        period_ticks=round(period_ms * 1000),
        offset_ticks=round(offset_ms * 1000),
        body_ticks=round(body_ms * 1000),
        generation=generation,
        effective_at=datetime.fromtimestamp(effective_at, UTC),
    )


def calibration_result(model: str = "retinanet", **overrides: Any) -> CalibrationResult:
    """What a calibration run of an H200-class detector reports (10.5 ms knee, 15 % guard)."""
    fields: dict[str, Any] = {
        "model": model,
        "body_time_ms": 12.1,
        "knee_ms": 10.5,
        "knee_ci_ms": [10.2, 10.9],
        "solo_p50_ms": 18.5,
        "solo_p99_ms": 19.4,
        "effective_body_ms": 10.7,
        "sweep_pairs": 100,
    }
    return CalibrationResult(**{**fields, **overrides})
