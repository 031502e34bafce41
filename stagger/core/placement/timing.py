"""What a stream costs on a GPU: its body, its cost when shared, its solo latency, from
the stream's own figures or its model's profile."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from stagger.core.api import InferenceStream, ModelProfile
from stagger.core.cluster import Gpu
from stagger.core.placement.model import PlannerSettings


@dataclass(frozen=True)
class Timing:
    """A stream's timing on one GPU product and sharing mode. ``body_ms`` is how long one
    inference holds the GPU alone; ``cost_ms`` (None: the body is exclusive) is what one
    frame really costs when streams share the GPU as deployed."""

    body_ms: float
    latency_ms: float
    source: str
    cost_ms: float | None = None

    def reserved_ms(self, settings: PlannerSettings) -> float:
        """The slot's reserved time, one currency for both kinds of stream: an exclusive
        body in full under the utilisation cap; a shared stream its cost scaled so that a
        GPU of them admits ``throughput_cap`` of its saturation throughput. The reserved
        time is the slot's width, so the table spaces shared streams evenly over the period
        and their longer bodies overlap as little as it allows."""
        if self.cost_ms is None:
            return self.body_ms
        scaled = self.cost_ms * settings.utilization_cap / settings.throughput_cap
        return min(self.body_ms, scaled)


class ProfileBook:
    """ModelProfiles by (model, product, sharing mode); a versioned profile wins."""

    def __init__(self, profiles: Iterable[ModelProfile]) -> None:
        self._by_key: dict[tuple[str, str, str], dict[str | None, ModelProfile]] = defaultdict(dict)
        for p in sorted(profiles, key=lambda p: p.name):
            key = (p.spec.model, p.spec.gpu_product, str(p.spec.sharing_mode))
            self._by_key[key].setdefault(p.spec.model_version, p)

    def find(
        self, model: str, version: str | None, product: str, sharing: str
    ) -> ModelProfile | None:
        versions = self._by_key.get((model, product, sharing), {})
        return versions.get(version) or versions.get(None)


def stream_timing(stream: InferenceStream, gpu: Gpu, book: ProfileBook) -> Timing | None:
    """Body, cost and solo latency of ``stream`` on ``gpu``: the stream's own figures
    override the profile; a missing latency is taken as the body (the stream then never
    splits for it). A cost comes from the stream, or from the profile that gave the body (a
    profile's cost belongs to its own body), and never exceeds the body."""
    spec = stream.spec
    profile = book.find(spec.model, spec.model_version, gpu.product, str(gpu.sharing_mode))
    body = (
        spec.body_time_ms
        if spec.body_time_ms is not None
        else (profile.spec.body_time_ms if profile else None)
    )
    if body is None:
        return None
    latency = (
        spec.latency_ms
        if spec.latency_ms is not None
        else (profile.spec.latency_ms if profile else body)
    )
    source = (
        "spec"
        if spec.body_time_ms is not None
        else f"ModelProfile/{profile.name if profile else ''}"
    )
    cost = (
        spec.cost_ms
        if spec.cost_ms is not None
        else (profile.spec.cost_ms if profile and spec.body_time_ms is None else None)
    )
    return Timing(body, max(latency, body), source, None if cost is None else min(cost, body))


# ------------------------------------------------------------------ GPU state
