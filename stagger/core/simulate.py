"""Discrete-event simulation of shards sharing GPUs: latency and drops by start phase.

Model (the study's, one process per camera): a frame arrives every frame period; if the
shard is still busy with its previous frame the new one is dropped. Otherwise it runs
pre-processing on the CPU, its body on the GPU, and post-processing on the CPU. Staggered
shards go through the sidecar's gate, which holds each inference (the body) until its slot;
the app captures each frame one pre-processing time ahead of the slot it will use
(slot-clock mode), so when the slot period was rounded below the frame period a frame is
taken for the first slot at or after its nominal time, and never waits in the gate.
A body alone takes its model's own time where the profile measured it (``soloComputeMs``),
else its ``bodyTimeMs`` (what a slot reserves). On slow hosts the model alone needs more
than its cost (run 86: 13.86 ms against 12.12), so bodies kept one after another cannot
fit the period and must overlap (docs/architecture.md, "The models' own time").
Bodies that run at once share the GPU (processor sharing). A body kept apart (no cost, or
the stream's own ``exclusiveBody``: a lock) is worth its whole body of GPU time, times (1 +
``contention``) when others run beside it, the extra cost of switching between contexts (0
is ideal sharing; see docs/simulator.md for its calibration). A body with a cost (measured
at saturation as deployed, whatever its profile's exclusive label) is worth its cost: the
contention is in the measurement. Running bodies each progress at min(1, 1 / the sum of
their worths per unit of body), so n equal bodies kept apart each run at 1 / (n * (1 +
contention)) and n equal costed ones at body / (n * cost): the GPU then serves one frame
per cost, the throughput the cost was measured as (docs/architecture.md, "Capacity").

Pure and deterministic: randomness comes from a seeded numpy Generator.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from stagger.core.placement import Plan

# Extra cost of concurrent bodies, by sharing mode. Time-slicing: calibrated on the
# published study (4 SSD-ResNet streams at 4 fps on a T4, synchronized: mean 268 ms; see
# docs/simulator.md). MPS runs kernels of several processes at once without context
# switches: ideal sharing is assumed (not calibrated).
STUDY_CONTENTION = 0.32
CONTENTION = {
    "time-slicing": STUDY_CONTENTION,
    "mps": 0.0,
    "mig": 0.0,
    "exclusive": STUDY_CONTENTION,
}


class Phasing(StrEnum):
    STAGGERED = "staggered"
    SYNCHRONIZED = "synchronized"
    RANDOM = "random"


@dataclass(frozen=True)
class SimShard:
    key: Hashable
    frame_period_s: float
    phase_s: float
    body_s: float
    pre_s: float
    post_s: float
    jitter_cv: float = 0.04
    slot: tuple[float, float] | None = None
    """(offset, period) of the shard's slot: when set, the gate starts each body at the
    first slot at or after the frame's nominal time plus its pre-processing."""
    cost_s: float | None = None
    """GPU time one frame costs when shared (None: the body is exclusive)."""


@dataclass(frozen=True)
class ShardStats:
    frames: int
    completed: int
    dropped: int
    latencies_ms: tuple[float, ...]

    @property
    def drop_rate(self) -> float:
        return self.dropped / self.frames if self.frames else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else float("nan")


def merge(stats: Sequence[ShardStats]) -> ShardStats:
    return ShardStats(
        frames=sum(s.frames for s in stats),
        completed=sum(s.completed for s in stats),
        dropped=sum(s.dropped for s in stats),
        latencies_ms=tuple(x for s in stats for x in s.latencies_ms),
    )


_ARRIVE, _CAPTURE, _PRE_DONE, _BODY_START, _POST_DONE = range(5)


def simulate_gpu(
    shards: Sequence[SimShard],
    duration_s: float,
    *,
    contention: float = STUDY_CONTENTION,
    seed: int = 0,
) -> dict[Hashable, ShardStats]:
    """Simulate shards that share one GPU for ``duration_s`` seconds."""
    rng = np.random.default_rng(seed)

    def jittered(mean: float, cv: float) -> float:
        return mean * max(0.2, 1.0 + cv * float(rng.standard_normal())) if mean > 0 else 0.0

    events: list[tuple[float, int, int, int, float]] = []  # time, order, kind, shard, slot
    seq = 0

    def push(t: float, kind: int, i: int, slot_at: float = 0.0) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, i, slot_at))
        seq += 1

    for i, s in enumerate(shards):
        push(s.phase_s, _ARRIVE, i)
    busy = [False] * len(shards)
    arrived_at = [0.0] * len(shards)
    slot_at = [0.0] * len(shards)
    frames = [0] * len(shards)
    dropped = [0] * len(shards)
    latencies: list[list[float]] = [[] for _ in shards]
    active: dict[int, float] = {}  # shard -> remaining body work (s of solo GPU time)
    now = 0.0

    def capture(i: int, t: float, slot: float) -> None:
        frames[i] += 1
        if busy[i]:
            dropped[i] += 1
            return
        busy[i] = True
        arrived_at[i] = t
        slot_at[i] = slot
        push(t + jittered(shards[i].pre_s, shards[i].jitter_cv), _PRE_DONE, i)

    # GPU time per unit of body, when others run beside it (see the module's docstring).
    worth = [
        (1.0 + contention)
        if s.cost_s is None or s.body_s <= 0
        else min(1.0 + contention, s.cost_s / s.body_s)
        for s in shards
    ]

    def rate() -> float:
        if len(active) <= 1:
            return 1.0
        return min(1.0, 1.0 / sum(worth[k] for k in active))

    while True:
        gpu_done_at = now + min(active.values()) / rate() if active else float("inf")
        next_event = events[0][0] if events else float("inf")
        t = min(gpu_done_at, next_event)
        if t == float("inf") or t > duration_s + 10.0:
            break
        progressed = (t - now) * rate()
        for k in active:
            active[k] -= progressed
        now = t
        if gpu_done_at <= next_event:
            i = min(active, key=lambda k: (active[k], k))
            del active[i]
            push(now + jittered(shards[i].post_s, shards[i].jitter_cv), _POST_DONE, i)
            continue
        _, _, kind, i, slot = heapq.heappop(events)
        s = shards[i]
        if kind == _ARRIVE:
            if now < duration_s:
                push(now + s.frame_period_s, _ARRIVE, i)
                if s.slot:
                    offset, period = s.slot
                    # 1 ns of tolerance: float error must not push a frame a slot later.
                    m = math.ceil((now + s.pre_s - offset) / period - 1e-9 / period)
                    target = offset + m * period
                    push(target - s.pre_s, _CAPTURE, i, target)
                else:
                    capture(i, now, now)
        elif kind == _CAPTURE:
            capture(i, now, slot)
        elif kind == _PRE_DONE and s.slot and slot_at[i] > now:
            push(slot_at[i], _BODY_START, i)
        elif kind in (_PRE_DONE, _BODY_START):
            active[i] = jittered(s.body_s, s.jitter_cv)
        else:
            busy[i] = False
            latencies[i].append((now - arrived_at[i]) * 1000.0)
    return {
        s.key: ShardStats(frames[i], len(latencies[i]), dropped[i], tuple(latencies[i]))
        for i, s in enumerate(shards)
    }


def shards_from_plan(
    plan: Plan,
    phasing: Phasing,
    *,
    pre_fraction: float = 0.5,
    jitter_cv: float = 0.04,
    seed: int = 0,
) -> dict[tuple[str, int], list[SimShard]]:
    """Simulation inputs per GPU for a plan under one phasing of the start times.

    Staggered: the gate starts each body at its slot; frames are captured one
    pre-processing time ahead of it. Synchronized: every frame clock starts at 0. Random:
    uniform in the frame period, what pods get when nobody coordinates them."""
    rng = np.random.default_rng(seed)
    tick = 1.0 / plan.tick_hz
    out: dict[tuple[str, int], list[SimShard]] = {}
    for p in plan.shards:
        frame = p.frame_period_ticks * tick
        body = (p.solo_compute_ms or p.body_ms) / 1000
        rest = max(0.0, p.latency_ms / 1000 - body)
        pre, post = rest * pre_fraction, rest * (1 - pre_fraction)
        slot = None
        if phasing is Phasing.STAGGERED:
            slot = (p.offset_ticks * tick, p.period_ticks * tick)
            phase = (slot[0] - pre) % frame
        elif phasing is Phasing.SYNCHRONIZED:
            phase = 0.0
        else:
            phase = float(rng.uniform(0, frame))
        out.setdefault((p.node, p.gpu), []).append(
            SimShard(
                key=p.key,
                frame_period_s=frame,
                phase_s=phase,
                body_s=body,
                pre_s=pre,
                post_s=post,
                jitter_cv=jitter_cv,
                slot=slot,
                cost_s=None if p.cost_ms is None or p.exclusive else p.cost_ms / 1000,
            )
        )
    return out


def simulate_plan(
    plan: Plan,
    phasing: Phasing,
    duration_s: float = 60.0,
    *,
    contention: Mapping[str, float] | None = None,
    jitter_cv: float = 0.04,
    seed: int = 0,
) -> dict[tuple[str, str], ShardStats]:
    """Per stream (namespace, name), the simulated frames, drops and latencies.
    ``contention`` overrides entries of :data:`CONTENTION` (by sharing mode)."""
    per_shard: dict[Hashable, ShardStats] = {}
    modes = {(g.node, g.gpu): g.sharing_mode for g in plan.gpus}
    table = {**CONTENTION, **(contention or {})}
    per_gpu = shards_from_plan(plan, phasing, jitter_cv=jitter_cv, seed=seed)
    for n, (gpu, shards) in enumerate(sorted(per_gpu.items())):
        alpha = table.get(modes[gpu], STUDY_CONTENTION)
        per_shard.update(simulate_gpu(shards, duration_s, contention=alpha, seed=seed + n))
    by_stream: dict[tuple[str, str], list[ShardStats]] = {}
    for p in plan.shards:
        by_stream.setdefault((p.namespace, p.stream), []).append(per_shard[p.key])
    return {k: merge(v) for k, v in sorted(by_stream.items())}
