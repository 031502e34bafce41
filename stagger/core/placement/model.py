"""What a plan is: the planner's settings, each shard's placement, each GPU's use, what
was left out and why, what moved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stagger.core.api import SharingMode
from stagger.core.timebase import TICK_HZ

Policy = Literal["binpack", "spread"]
ROUNDING = 0.02
"""A running GPU first takes a shard only at slot periods at most this much shorter than its
frame period (reserving at most 2 % more body time than it uses): mixing rate families on
one GPU rounds periods down and wastes capacity (a 25 fps stream among 30 fps ones reserves
20 % more), so a GPU of the shard's own family, or a new one, comes first."""
ShardKey = tuple[str, str, int]  # namespace, stream, shard index
GhostKey = tuple[str, str, str, int]  # "retiring", namespace, stream, shard: an old copy


MPS_CLIENT_CONTEXTS = 48
"""CUDA contexts one GPU's MPS server takes (Volta and later). A process past them gets
"CUDA-capable device(s) is/are busy or unavailable": on an H100 with 15 streams' Tritons
running, 9 and 11 of 15 more never loaded their model (runs 89-90, docs/benchmarks.md)."""
CONTEXTS_PER_SERVER = 2
"""CUDA contexts a Triton server holds: its own (the CUDA memory pool) and its model
instance's stub process (the Python backend); a backend that runs inside the server holds
none of its own."""


@dataclass(frozen=True)
class PlannerSettings:
    utilization_cap: float = 0.9
    """Largest reserved body time per second on one GPU: the safety margin."""
    throughput_cap: float = 1.0
    """Largest share of a GPU's measured saturation throughput that streams with a
    ``costMs`` may take on a time-sliced GPU (and any mode but MPS). All of it by default:
    the cost was measured under the contention it stands for, and ``stagger profile``
    charges an unsteady measurement a margin in its cost
    (:data:`stagger.core.calibration.UNSTEADY_SHARE`). On the GPUs measured, random phases
    held 8 time-sliced CUDA-graph streams at 0.966 of saturation with 0 drops, and the loop
    at 8 lost none and kept p99 at 1.23 x solo (run 73), where 0.95 admitted 7."""
    mps_throughput_cap: float = 1.0
    """The same share under MPS, a setting of its own so that one mode can keep a margin.
    MPS runs kernels of many servers side by side and the streams' bodies are evenly
    spaced; 16 CUDA-graph streams at 0.96 of an H200's saturation lost nothing in the loop
    (runs 16 and 22), and 14 eager ones at 1.003 of an H100's at random phases (run 77)."""
    charge_model_time: bool = False
    """Where bodies take turns (every sharing mode but MPS), charge a stream the larger of
    its cost and its model's own time alone (the profile's ``soloComputeMs``): a GPU then
    takes only the frames its models fit one after another, keeping the tail near solo on
    hosts whose models need more than the second (run 86: 7 streams at 1.12 x solo where
    the cost admits 8 at 2.29 x). Off by default: random phases hold that 8th stream too,
    and the product admits at least what they hold (issue 20)."""
    mps_servers_per_gpu: int = MPS_CLIENT_CONTEXTS // CONTEXTS_PER_SERVER
    """Most shards an MPS GPU takes, each one Triton server: past its MPS server's CUDA
    contexts a server cannot load its model (0: no limit). 48 suits backends that run
    inside the server (one context each)."""
    guard_ms: float = 0.0
    """Extra time reserved after every body (the cap already leaves room, so 0)."""
    policy: Policy = "binpack"
    max_extra_shards: int = 5
    """A stream gets up to this many shards beyond the fewest when they pack better."""
    memory_reserve_mib: int = 0
    """GPU memory kept free on every GPU (driver, CUDA context of other tenants)."""
    shard_grid_ms: float = 100.0
    """A stream that must split takes, where it can, a shard count whose slot period is a
    multiple of this: shards of 25, 30, 50 and 60 fps streams then share GPUs (0: off)."""
    max_repair_moves: int = 16
    """When streams that arrived one by one leave a stream unplaced that a plan made from
    scratch places, or use at least two GPUs more than it, the running shards may be moved
    to other GPUs to get there: at most this many moves (0: never move for that)."""
    tick_hz: int = TICK_HZ

    def __post_init__(self) -> None:
        if not 0 < self.utilization_cap <= 1:
            raise ValueError("utilization cap must be in (0, 1]")
        if not (0 < self.throughput_cap <= 1 and 0 < self.mps_throughput_cap <= 1):
            raise ValueError("throughput caps must be in (0, 1]")
        if (
            min(self.guard_ms, self.max_extra_shards, self.memory_reserve_mib, self.shard_grid_ms)
            < 0
        ):
            raise ValueError("guard, extra shards and memory reserve must not be negative")
        if self.max_repair_moves < 0:
            raise ValueError("max repair moves must not be negative")
        if self.mps_servers_per_gpu < 0:
            raise ValueError(
                f"MPS servers per GPU must not be negative (0: no limit), not "
                f"{self.mps_servers_per_gpu}"
            )

    def throughput_cap_under(self, mode: SharingMode) -> float:
        """The throughput cap for streams sharing a GPU in ``mode``."""
        return self.mps_throughput_cap if mode is SharingMode.MPS else self.throughput_cap


@dataclass(frozen=True)
class ShardPlacement:
    namespace: str
    stream: str
    shard: int
    shards: int
    node: str
    gpu: int
    gpu_uuid: str | None
    product: str
    fps: float
    frame_period_ticks: int
    period_ticks: int
    offset_ticks: int
    body_ticks: int
    body_ms: float
    latency_ms: float
    memory_mib: int
    priority: int
    cost_ms: float | None = None
    """What a frame costs as deployed (None: not measured); ``body_ticks`` is the time
    reserved for it (:meth:`Timing.reserved_ms`)."""
    exclusive: bool = False
    """Kept exactly apart from every other body: a body without a cost, or a stream that
    declares ``exclusiveBody`` itself (a lock, a FIFO). The simulator runs it as a whole
    body; any other body with a cost is worth its cost, whatever its profile's label (the
    cost was measured under the contention it stands for)."""
    solo_compute_ms: float | None = None
    """The model's own time per request alone (None: its profile does not say)."""
    arrival_ticks: int | None = None
    """The arrival phase (ticks from the GPU's epoch, within the frame period) its slot was
    re-timed to follow (:func:`stagger.core.phase.follow_plan`); kept while the slot stays
    where it is. None: the slot was placed without its stream's arrivals."""
    max_wait_ms: float | None = None
    """Its stream's ``gate.maxWaitMs``: its gate sends a request whose slot is further away
    at once, ungated (None: unset)."""

    @property
    def key(self) -> ShardKey:
        return (self.namespace, self.stream, self.shard)

    @property
    def slot_wait_ticks(self) -> int | None:
        """How long each frame of a followed shard waits for its slot: the slot's start
        less the arrival phase it follows (None: not followed)."""
        if self.arrival_ticks is None:
            return None
        return (self.offset_ticks - self.arrival_ticks) % self.period_ticks


@dataclass(frozen=True)
class GpuUsage:
    node: str
    gpu: int
    uuid: str | None
    product: str
    sharing_mode: str
    utilization: float
    memory_mib: int
    memory_total_mib: int
    shards: int
    overlap_ms_per_s: float = 0.0
    """Of each second, the ms in which two calibrated bodies run at once (summed over
    pairs; :mod:`stagger.core.placement.overlap`). Zero: every body has the GPU alone."""
    model_time_share: float | None = None
    """Where bodies take turns (every sharing mode but MPS), the share of each second the
    shards' models need one at a time: Σ solo compute × fps (:func:`model_time_share`)."""


@dataclass(frozen=True)
class CalibrationSite:
    """A GPU on which a stream's model could be measured: one per (product, sharing mode)
    the stream may run on and that has no ModelProfile for it."""

    node: str
    gpu: int
    gpu_uuid: str | None
    product: str
    sharing_mode: str
    memory_free_mib: int | None = None
    """GPU memory free there (None: not known): how many copies of the model's server a
    calibration may load to measure its cost as deployed."""
    servers: int = 0
    """Shards placed there, each a model server already running: under MPS, how many
    more CUDA clients the GPU takes."""


@dataclass(frozen=True)
class RunningCalibration:
    """A calibration Job running on a GPU, until it ends (about a minute). It measures the
    GPU's saturation with copies of its model's server, so no stream joins that GPU
    meanwhile (a stream there would be measured too, disturbed, and under MPS could be a
    server past what the GPU takes), and a stream of its model keeps calibrating there."""

    node: str
    gpu: int
    model: str


@dataclass(frozen=True)
class Unplaced:
    namespace: str
    stream: str
    reason: str
    calibrate_on: tuple[CalibrationSite, ...] = ()
    """Set when the stream only lacks a body time: where it could be calibrated."""


@dataclass(frozen=True)
class Move:
    namespace: str
    stream: str
    shard: int
    from_node: str
    from_gpu: int
    to_node: str
    to_gpu: int


@dataclass(frozen=True)
class Plan:
    shards: tuple[ShardPlacement, ...]
    gpus: tuple[GpuUsage, ...]
    unplaced: tuple[Unplaced, ...]
    moves: tuple[Move, ...] = ()
    offsets_changed: tuple[ShardKey, ...] = ()
    tick_hz: int = TICK_HZ

    def for_stream(self, namespace: str, name: str) -> list[ShardPlacement]:
        return [s for s in self.shards if (s.namespace, s.stream) == (namespace, name)]


# ------------------------------------------------------------------ inputs
