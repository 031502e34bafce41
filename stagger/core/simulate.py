"""Discrete-event simulation of shards sharing GPUs: latency and drops by start phase.

Model (the study's, one process per camera): a frame arrives every frame period; if the
shard is still busy with its previous frame the new one is dropped. Otherwise it waits for
its slot (staggered mode only, when the slot period is shorter than the frame period),
runs pre-processing on the CPU, its body on the GPU, and post-processing on the CPU.
Bodies that run at once share the GPU (processor sharing): n of them progress at
1 / (n * (1 + contention)) each, where ``contention`` is the extra cost of switching
between contexts (0 is ideal sharing; see docs/simulator.md for its calibration).

Pure and deterministic: randomness comes from a seeded numpy Generator.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from stagger.core.placement import Plan

# Calibrated on the published study (4 SSD-ResNet streams at 4 fps on a T4, synchronized:
# mean 268 ms); see docs/simulator.md.
STUDY_CONTENTION = 0.32


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
    slot_period_s: float | None = None
    """When set, a frame waits for the next slot (phase + n * slot period) to start."""


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


_ARRIVE, _PRE_DONE, _POST_DONE = 0, 1, 2


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

    events: list[tuple[float, int, int, int]] = []  # time, order, kind, shard
    seq = 0

    def push(t: float, kind: int, i: int) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, i))
        seq += 1

    for i, s in enumerate(shards):
        push(s.phase_s, _ARRIVE, i)
    busy = [False] * len(shards)
    arrived_at = [0.0] * len(shards)
    frames = [0] * len(shards)
    dropped = [0] * len(shards)
    latencies: list[list[float]] = [[] for _ in shards]
    active: dict[int, float] = {}  # shard -> remaining body work (s of solo GPU time)
    now = 0.0

    def rate() -> float:
        n = len(active)
        return 1.0 if n <= 1 else 1.0 / (n * (1.0 + contention))

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
        _, _, kind, i = heapq.heappop(events)
        s = shards[i]
        if kind == _ARRIVE:
            if now < duration_s:
                push(now + s.frame_period_s, _ARRIVE, i)
                frames[i] += 1
                if busy[i]:
                    dropped[i] += 1
                    continue
                busy[i] = True
                arrived_at[i] = now
                start = now
                if s.slot_period_s:
                    n = -((s.phase_s - now) // s.slot_period_s)
                    start = max(now, s.phase_s + n * s.slot_period_s)
                push(start + jittered(s.pre_s, s.jitter_cv), _PRE_DONE, i)
        elif kind == _PRE_DONE:
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

    Staggered: each shard starts at its slot offset (its body then follows its own
    pre-processing, the same lead for shards of one model). Synchronized: all at 0.
    Random: uniform in the frame period, what pods get when nobody coordinates them."""
    rng = np.random.default_rng(seed)
    tick = 1.0 / plan.tick_hz
    out: dict[tuple[str, int], list[SimShard]] = {}
    for p in plan.shards:
        frame = p.frame_period_ticks * tick
        if phasing is Phasing.STAGGERED:
            phase = p.offset_ticks * tick
        elif phasing is Phasing.SYNCHRONIZED:
            phase = 0.0
        else:
            phase = float(rng.uniform(0, frame))
        body = p.body_ms / 1000
        rest = max(0.0, p.latency_ms / 1000 - body)
        slot_period = p.period_ticks * tick if (
            phasing is Phasing.STAGGERED and p.period_ticks != p.frame_period_ticks) else None
        out.setdefault((p.node, p.gpu), []).append(SimShard(
            key=p.key, frame_period_s=frame, phase_s=phase, body_s=body,
            pre_s=rest * pre_fraction, post_s=rest * (1 - pre_fraction),
            jitter_cv=jitter_cv, slot_period_s=slot_period,
        ))
    return out


def simulate_plan(
    plan: Plan,
    phasing: Phasing,
    duration_s: float = 60.0,
    *,
    contention: float = STUDY_CONTENTION,
    jitter_cv: float = 0.04,
    seed: int = 0,
) -> dict[tuple[str, str], ShardStats]:
    """Per stream (namespace, name), the simulated frames, drops and latencies."""
    per_shard: dict[Hashable, ShardStats] = {}
    for n, (_, shards) in enumerate(sorted(shards_from_plan(
            plan, phasing, jitter_cv=jitter_cv, seed=seed).items())):
        per_shard.update(simulate_gpu(shards, duration_s, contention=contention, seed=seed + n))
    by_stream: dict[tuple[str, str], list[ShardStats]] = {}
    for p in plan.shards:
        by_stream.setdefault((p.namespace, p.stream), []).append(per_shard[p.key])
    return {k: merge(v) for k, v in sorted(by_stream.items())}
