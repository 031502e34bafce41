"""What a stream costs on a GPU: its body, its cost when shared, its solo latency, from
the stream's own figures or its model's profile."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from stagger.core.api import (
    InferenceStream,
    InferenceStreamSpec,
    ModelProfile,
    ModelProfileSpec,
    SharingMode,
)
from stagger.core.cluster import Gpu
from stagger.core.placement.model import PlannerSettings


@dataclass(frozen=True)
class Timing:
    """A stream's timing on one GPU product and sharing mode. ``body_ms`` is how long one
    inference holds the GPU alone; ``cost_ms`` (None: not measured) is what one frame
    really costs when streams share the GPU as deployed; an ``exclusive`` body gains nothing
    from running beside another (always so without a cost; how the planner spaces it is
    ``Demands.of``'s question); ``sharing`` is how the GPU is shared."""

    body_ms: float
    latency_ms: float
    source: str
    cost_ms: float | None = None
    exclusive: bool = False
    sharing: SharingMode = SharingMode.TIME_SLICING
    solo_compute_ms: float | None = None
    """The model's own time per request alone (its profile's ``soloComputeMs``; None: not
    measured): what the GPU's ``model_time_share`` adds up."""

    def __post_init__(self) -> None:
        if self.cost_ms is None:
            object.__setattr__(self, "exclusive", True)

    def reserved_ms(self, settings: PlannerSettings) -> float:
        """The slot's reserved time, one currency for every stream. A measured cost is
        scaled so that a GPU of such streams admits its sharing mode's throughput cap of its
        saturation throughput, exclusive or not: the cost was measured under the contention
        it stands for. Without one, the body in full under the utilisation cap. The reserved time is
        the slot's width, so the table spaces streams evenly over the period; a shared
        stream's longer body overlaps others as little as it allows, an exclusive one's
        slot is never overlapped. ``charge_model_time``: the model's own time alone where it
        is the larger, on GPUs whose bodies take turns, even past the body (the slot is
        then wider than the body): what must fit the second is the models' time, and an
        unsteady profile's body can be shorter than it (run 94: 14.9 ms against 18.47)."""
        if self.cost_ms is None:
            return self.body_ms
        scale = settings.utilization_cap / settings.throughput_cap_under(self.sharing)
        reserved = min(self.body_ms, self.cost_ms * scale)
        if settings.charge_model_time and self.sharing is not SharingMode.MPS:
            reserved = max(reserved, (self.solo_compute_ms or 0.0) * scale)
        return reserved


class ProfileBook:
    """ModelProfiles by (model, product, sharing mode); a versioned profile wins."""

    def __init__(self, profiles: Iterable[ModelProfile]) -> None:
        self._by_key: dict[tuple[str, str, str], dict[str | None, ModelProfile]] = defaultdict(dict)
        self._longest: dict[tuple[str, str], float] = {}
        for p in sorted(profiles, key=lambda p: p.name):
            key = (p.spec.model, p.spec.gpu_product, str(p.spec.sharing_mode))
            self._by_key[key].setdefault(p.spec.model_version, p)
            pool = (p.spec.gpu_product, str(p.spec.sharing_mode))
            self._longest[pool] = max(self._longest.get(pool, 0.0), p.spec.body_time_ms)

    def find(
        self, model: str, version: str | None, product: str, sharing: str
    ) -> ModelProfile | None:
        versions = self._by_key.get((model, product, sharing), {})
        return versions.get(version) or versions.get(None)

    def longest_body_ms(self, product: str, sharing: str) -> float:
        """The longest body any profile names for GPUs of this product and sharing mode
        (0 without one): the most one more body can add to a frame there."""
        return self._longest.get((product, sharing), 0.0)


def stream_timing(stream: InferenceStream, gpu: Gpu, book: ProfileBook) -> Timing | None:
    """Body, cost and solo latency of ``stream`` on ``gpu``: the stream's own figures
    override the profile; a missing latency is taken as the body (the stream then never
    splits for it). A cost comes from the stream, or from the profile that gave the body (a
    profile's cost belongs to its own body), and never exceeds the body. Whether the body is
    exclusive comes with the cost, unless the stream says so itself (``exclusiveBody``)."""
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
    # the cost comes from the stream or from the profile that gave the body (a profile's
    # cost belongs to its own body)
    costed: InferenceStreamSpec | ModelProfileSpec | None = (
        spec if spec.cost_ms is not None else None
    )
    if costed is None and profile and spec.body_time_ms is None:
        costed = profile.spec
    cost = costed.cost_ms if costed else None
    # whether the body may be overlapped is about spacing, not about what it costs: the
    # stream's own word wins over its profile's (a label measured a few per cent either way)
    labelled = costed.exclusive_body if costed else None
    exclusive = spec.exclusive_body if spec.exclusive_body is not None else labelled
    return Timing(
        body,
        max(latency, body),
        source,
        None if cost is None else min(cost, body),
        exclusive=bool(exclusive),
        sharing=gpu.sharing_mode,
        # the model's own time on this GPU product, whoever set the body
        solo_compute_ms=profile.spec.solo_compute_ms if profile else None,
    )


# ------------------------------------------------------------------ GPU state
